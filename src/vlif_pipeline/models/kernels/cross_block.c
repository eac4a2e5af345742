/*
 * CrossModalBlock (models/fusion.py) forward and backward on the CPU, one tile of nodes at a time.
 *
 * Why: the block is ~25 small PyTorch ops per direction, each a pass over (n, T, d) tensors that
 * this memory-bound CPU reads at ~3 G floats/s. Here a tile of NT nodes goes through the whole
 * block in L1/L2 cache, with register-blocked products; the backward recomputes the tile's forward
 * instead of storing it. Same maths as the module (tests compare both, values and gradients).
 *
 * Shapes are compile-time constants, given by the loader (models/native.py) with -D:
 * D = embedding width, T = tokens per node, H = heads, F = feed-forward width; D and F multiples
 * of 64, D of H. All arrays are float32, row-major and contiguous. Parameters come as one array of
 * pointers in the order of enum Param; weights "_T" are transposed to (in, out), the others in
 * PyTorch's (out, in). Nodes are split evenly over `threads` OpenMP threads (static schedule), so
 * results are deterministic for a given thread count.
 */
#include <omp.h>

#if D % 64 || F % 64 || D % H
#error "D and F must be multiples of 64 and D of H"
#endif

#include "common.h"

#define C (D / H)
#define NT 16 /* nodes per tile, a multiple of 4 */

enum Param {
  LN_G, LN_B, WQ_T, BQ, WK_T, BK, WV_T, BV, WO_T, BO, LN2_G, LN2_B, W1_T, B1, W2_T, B2, N_GRAD,
  WQ = N_GRAD, WK, WV, WO, W1, W2, N_PARAM
};
static const long GRAD_SIZE[N_GRAD] = {D, D, D * D, D, D * D, D, D * D, D, D * D, D, D, D, D * F, F, F * D, D};

/* Floats of one thread's gradient buffer: the N_GRAD parameters' gradients back to back. */
long cross_block_grad_size(void) {
  long size = 0;
  for (int i = 0; i < N_GRAD; i++) size += GRAD_SIZE[i];
  return size;
}

/* One tile's forward intermediates; rows past the tile's node count hold zero inputs. */
typedef struct {
  float x[NT][D], X[NT][T][D];
  float x_hat[NT][D], x_norm[NT][D], x_rstd[NT], q[NT][D];
  float X_hat[NT][T][D], X_norm[NT][T][D], X_rstd[NT][T], K[NT][T][D], V[NT][T][D], attn[NT][H][T];
  float attended[NT][D], y[NT][D], y_hat[NT][D], y_norm[NT][D], y_rstd[NT], hidden[NT][F], act[NT][F];
  float ffn[NT][D];
} Tile;

/* The backward's per-tile gradients. */
typedef struct {
  float d_out[NT][D], d_act[NT][F], d_norm[NT][D], d_y[NT][D], d_att[NT][D], d_q[NT][D];
  float d_K[NT][T][D], d_V[NT][T][D], d_xn[NT][D], d_Xn[NT][T][D], d_Xv[NT][T][D];
} Scratch;

static __thread Buffer tile_buffer, scratch_buffer; /* see thread_buffer */

/* Forward of `rows` nodes from x (rows, D), X (rows, T, D); writes out (rows, D) unless NULL. */
static void tile_forward(int rows, const float *x, const float *X, const float *const *p, Tile *s, float *out) {
  memset(s->x, 0, sizeof s->x);
  memset(s->X, 0, sizeof s->X);
  memcpy(s->x, x, sizeof(float) * rows * D);
  memcpy(s->X, X, sizeof(float) * rows * T * D);
  for (int r = 0; r < NT; r++) {
    s->x_rstd[r] = layer_norm(s->x[r], p[LN_G], p[LN_B], s->x_hat[r], s->x_norm[r]);
    for (int t = 0; t < T; t++)
      s->X_rstd[r][t] = layer_norm(s->X[r][t], p[LN_G], p[LN_B], s->X_hat[r][t], s->X_norm[r][t]);
  }
  matmul(NT, s->x_norm[0], D, p[WQ_T], p[BQ], D, s->q[0]);
  matmul(NT * T, s->X_norm[0][0], D, p[WK_T], p[BK], D, s->K[0][0]);
  matmul(NT * T, s->X_norm[0][0], D, p[WV_T], p[BV], D, s->V[0][0]);
  const float scale = 1.0f / sqrtf((float)C);
  for (int r = 0; r < NT; r++)
    for (int h = 0; h < H; h++) {
      float score[T], top = 0, total = 0;
      for (int t = 0; t < T; t++) {
        float dot = 0;
        for (int j = 0; j < C; j++) dot += s->q[r][h * C + j] * s->K[r][t][h * C + j];
        score[t] = dot * scale;
        top = t == 0 || score[t] > top ? score[t] : top;
      }
      for (int t = 0; t < T; t++) {
        score[t] = expf(score[t] - top);
        total += score[t];
      }
      for (int t = 0; t < T; t++) s->attn[r][h][t] = score[t] / total;
      for (int j = 0; j < C; j++) {
        float mixed = 0;
        for (int t = 0; t < T; t++) mixed += s->attn[r][h][t] * s->V[r][t][h * C + j];
        s->attended[r][h * C + j] = mixed;
      }
    }
  matmul(NT, s->attended[0], D, p[WO_T], p[BO], D, s->y[0]);
  for (int r = 0; r < NT; r++) {
    for (int i = 0; i < D; i++) s->y[r][i] += s->x[r][i];
    s->y_rstd[r] = layer_norm(s->y[r], p[LN2_G], p[LN2_B], s->y_hat[r], s->y_norm[r]);
  }
  matmul(NT, s->y_norm[0], D, p[W1_T], p[B1], F, s->hidden[0]);
  for (int r = 0; r < NT; r++)
    for (int i = 0; i < F; i++) s->act[r][i] = gelu(s->hidden[r][i]);
  if (out) {
    matmul(NT, s->act[0], F, p[W2_T], p[B2], D, s->ffn[0]);
    for (int r = 0; r < rows; r++)
      for (int i = 0; i < D; i++) out[r * D + i] = s->y[r][i] + s->ffn[r][i];
  }
}

/* out (n, D) = block(x (n, D), X (n, T, D)); inputs = {x, X}. Returns 0, or 1 when out of memory. */
int cross_block_forward(long n, int threads, const float *const *inputs, const float *const *p, float *out) {
  const float *x = inputs[0], *X = inputs[1];
  int failed = 0;
  #pragma omp parallel num_threads(threads)
  {
    Tile *s = thread_buffer(&tile_buffer, sizeof(Tile));
    if (!s) {
      #pragma omp atomic write
      failed = 1;
    }
    #pragma omp for schedule(static)
    for (long start = 0; start < n; start += NT) {
      if (!s) continue;
      const int rows = n - start < NT ? (int)(n - start) : NT;
      tile_forward(rows, x + start * D, X + start * T * D, p, s, out + start * D);
    }
  }
  return failed;
}

/*
 * Gradients for d(loss)/d(out) = dout (n, D): d_inputs = {dx (n, D), dX (n, T, D)}, and the
 * parameters' gradients, which thread k adds to row k of grads (threads, cross_block_grad_size()),
 * zeroed by the caller, who sums the rows. Returns 0, or 1 when out of memory.
 */
int cross_block_backward(long n, int threads, const float *const *inputs, const float *const *p,
                         const float *dout, float *const *d_inputs, float *grads) {
  const float *x = inputs[0], *X = inputs[1];
  float *dx = d_inputs[0], *dX = d_inputs[1];
  int failed = 0;
  #pragma omp parallel num_threads(threads)
  {
    Tile *s = thread_buffer(&tile_buffer, sizeof(Tile));
    Scratch *z = thread_buffer(&scratch_buffer, sizeof(Scratch));
    if (!s || !z) {
      #pragma omp atomic write
      failed = 1;
    }
    float *g[N_GRAD];
    g[0] = grads + omp_get_thread_num() * cross_block_grad_size();
    for (int i = 1; i < N_GRAD; i++) g[i] = g[i - 1] + GRAD_SIZE[i - 1];
    const float scale = 1.0f / sqrtf((float)C);
    #pragma omp for schedule(static)
    for (long start = 0; start < n; start += NT) {
      if (!s || !z) continue;
      const int rows = n - start < NT ? (int)(n - start) : NT;
      float(*const d_out)[D] = z->d_out, (*const d_act)[F] = z->d_act, (*const d_norm)[D] = z->d_norm;
      float(*const d_y)[D] = z->d_y, (*const d_att)[D] = z->d_att, (*const d_q)[D] = z->d_q;
      float(*const d_K)[T][D] = z->d_K, (*const d_V)[T][D] = z->d_V, (*const d_xn)[D] = z->d_xn;
      float(*const d_Xn)[T][D] = z->d_Xn, (*const d_Xv)[T][D] = z->d_Xv;
      memset(z->d_out, 0, sizeof z->d_out);
      tile_forward(rows, x + start * D, X + start * T * D, p, s, NULL);
      memcpy(d_out, dout + start * D, sizeof(float) * rows * D);
      /* feed-forward branch: out = y + act @ W2_T + b2, act = gelu(y_norm @ W1_T + b1) */
      add_outer(NT, s->act[0], F, d_out[0], D, g[W2_T]);
      add_colsum(NT, d_out[0], D, g[B2]);
      matmul(NT, d_out[0], D, p[W2], NULL, F, d_act[0]);
      for (int r = 0; r < NT; r++)
        for (int i = 0; i < F; i++) d_act[r][i] *= gelu_grad(s->hidden[r][i]);
      add_outer(NT, s->y_norm[0], D, d_act[0], F, g[W1_T]);
      add_colsum(NT, d_act[0], F, g[B1]);
      matmul(NT, d_act[0], F, p[W1], NULL, D, d_norm[0]);
      for (int r = 0; r < NT; r++) {
        memcpy(d_y[r], d_out[r], sizeof(float) * D);
        layer_norm_backward(d_norm[r], s->y_hat[r], s->y_rstd[r], p[LN2_G], g[LN2_G], g[LN2_B], d_y[r]);
      }
      /* attention branch: y = x + attended @ WO_T + bo */
      add_outer(NT, s->attended[0], D, d_y[0], D, g[WO_T]);
      add_colsum(NT, d_y[0], D, g[BO]);
      matmul(NT, d_y[0], D, p[WO], NULL, D, d_att[0]);
      for (int r = 0; r < NT; r++)
        for (int h = 0; h < H; h++) {
          float d_attn[T], expected = 0;
          for (int t = 0; t < T; t++) {
            float dot = 0;
            for (int j = 0; j < C; j++) {
              dot += d_att[r][h * C + j] * s->V[r][t][h * C + j];
              d_V[r][t][h * C + j] = s->attn[r][h][t] * d_att[r][h * C + j];
            }
            d_attn[t] = dot;
            expected += s->attn[r][h][t] * dot;
          }
          for (int j = 0; j < C; j++) d_q[r][h * C + j] = 0;
          for (int t = 0; t < T; t++) {
            const float d_score = s->attn[r][h][t] * (d_attn[t] - expected) * scale;
            for (int j = 0; j < C; j++) {
              d_q[r][h * C + j] += d_score * s->K[r][t][h * C + j];
              d_K[r][t][h * C + j] = d_score * s->q[r][h * C + j];
            }
          }
        }
      add_outer(NT, s->x_norm[0], D, d_q[0], D, g[WQ_T]);
      add_colsum(NT, d_q[0], D, g[BQ]);
      add_outer(NT * T, s->X_norm[0][0], D, d_K[0][0], D, g[WK_T]);
      add_colsum(NT * T, d_K[0][0], D, g[BK]);
      add_outer(NT * T, s->X_norm[0][0], D, d_V[0][0], D, g[WV_T]);
      add_colsum(NT * T, d_V[0][0], D, g[BV]);
      matmul(NT, d_q[0], D, p[WQ], NULL, D, d_xn[0]);
      matmul(NT * T, d_K[0][0], D, p[WK], NULL, D, d_Xn[0][0]);
      matmul(NT * T, d_V[0][0], D, p[WV], NULL, D, d_Xv[0][0]);
      /* the query and the tokens share the first LayerNorm; x is also the residual stream */
      for (int r = 0; r < NT; r++) {
        layer_norm_backward(d_xn[r], s->x_hat[r], s->x_rstd[r], p[LN_G], g[LN_G], g[LN_B], d_y[r]);
        for (int t = 0; t < T; t++) {
          float d_tok[D] = {0};
          for (int i = 0; i < D; i++) d_Xn[r][t][i] += d_Xv[r][t][i];
          layer_norm_backward(d_Xn[r][t], s->X_hat[r][t], s->X_rstd[r][t], p[LN_G], g[LN_G], g[LN_B], d_tok);
          if (r < rows) memcpy(dX + ((start + r) * T + t) * D, d_tok, sizeof d_tok);
        }
      }
      memcpy(dx + start * D, d_y, sizeof(float) * rows * D);
    }
  }
  return failed;
}
