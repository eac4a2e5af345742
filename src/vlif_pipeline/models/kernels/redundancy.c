/*
 * RedundancyEncoder.encode (models/fusion.py) forward and backward on the CPU, a tile of nodes at
 * a time, for the same reason and in the same way as cross_block.c.
 *
 * Per node: two real tokens (vision, text; modality embeddings already added) go through the
 * shared LayerNorm and the key and value products; CLS's query attends, per head, over three
 * slots in each of three variants: [CLS, vision, text], [CLS, vision, MASK_t], [CLS, MASK_v, text].
 * Everything that is the same for every node (the query, CLS's and the masks' scaled scores and
 * values) is computed by PyTorch and comes in as inputs, whose gradients the backward sums over
 * the nodes. Then the block's finish: x = attended @ WO_T + BO (BO includes the CLS stream row),
 * out = x + gelu(LayerNorm(x) @ W1_T + B1) @ W2_T + B2, for each variant: out is (3, n, D).
 *
 * -D: D = width, H = heads, F = feed-forward width (D and F multiples of 64, D of H).
 */
#include <omp.h>

#if D % 64 || F % 64 || D % H
#error "D and F must be multiples of 64 and D of H"
#endif

#include "common.h"

#define C (D / H)
#define NT 16 /* nodes per tile, a multiple of 4 */
#define VARIANTS 3

enum Param {
  LN_G, LN_B, WK_T, BK, WV_T, BV, Q, FIXED_SCORES, FIXED_VALUES, WO_T, BO, LN2_G, LN2_B, W1_T, B1, W2_T, B2,
  N_GRAD, WK = N_GRAD, WV, WO, W1, W2, N_PARAM
};
static const long GRAD_SIZE[N_GRAD] = {D, D, D * D, D, D * D, D, D, 3 * H, 3 * D, D * D, D, D, D, D * F, F, F * D, D};

/* Floats of one thread's gradient buffer: the N_GRAD inputs' gradients back to back. */
long redundancy_grad_size(void) {
  long size = 0;
  for (int i = 0; i < N_GRAD; i++) size += GRAD_SIZE[i];
  return size;
}

/* Slot k of variant v reads the node's real token k - 1 (1 vision, 2 text) or the fixed row k. */
static inline int is_real(int variant, int slot) {
  return slot == 1 ? variant != 2 : slot == 2 ? variant != 1 : 0;
}

/* One tile's forward intermediates; rows past the tile's node count hold zero inputs. */
typedef struct {
  float in[NT][2][D], hat[NT][2][D], norm[NT][2][D], rstd[NT][2], K[NT][2][D], V[NT][2][D];
  float score[NT][2][H], weight[NT][VARIANTS][3][H], attended[NT][VARIANTS][D];
  float x[NT][VARIANTS][D], x_hat[NT][VARIANTS][D], x_norm[NT][VARIANTS][D], x_rstd[NT][VARIANTS];
  float hidden[NT][VARIANTS][F], act[NT][VARIANTS][F], ffn[NT][VARIANTS][D];
} Tile;

/* The backward's per-tile gradients. */
typedef struct {
  float d_out[NT][VARIANTS][D], d_act[NT][VARIANTS][F], d_norm[NT][VARIANTS][D];
  float d_x[NT][VARIANTS][D], d_att[NT][VARIANTS][D];
  float d_score[NT][2][H], d_K[NT][2][D], d_V[NT][2][D], d_tok[NT][2][D], d_val[NT][2][D];
} Scratch;

static __thread Buffer tile_buffer, scratch_buffer; /* see thread_buffer */

/* Forward of `rows` nodes from in (rows, 2, D); writes out rows [start, start + rows) of each of
 * the three (n, D) variant planes unless out is NULL. */
static void tile_forward(int rows, long start, long n, const float *in, const float *const *p, Tile *s, float *out) {
  const float *fixed_scores = p[FIXED_SCORES], *fixed_values = p[FIXED_VALUES], *q = p[Q];
  const float scale = 1.0f / sqrtf((float)C);
  memset(s->in, 0, sizeof s->in);
  memcpy(s->in, in, sizeof(float) * rows * 2 * D);
  for (int r = 0; r < NT; r++)
    for (int j = 0; j < 2; j++) s->rstd[r][j] = layer_norm(s->in[r][j], p[LN_G], p[LN_B], s->hat[r][j], s->norm[r][j]);
  matmul(NT * 2, s->norm[0][0], D, p[WK_T], p[BK], D, s->K[0][0]);
  matmul(NT * 2, s->norm[0][0], D, p[WV_T], p[BV], D, s->V[0][0]);
  for (int r = 0; r < NT; r++)
    for (int j = 0; j < 2; j++)
      for (int h = 0; h < H; h++) {
        float dot = 0;
        for (int c = 0; c < C; c++) dot += s->K[r][j][h * C + c] * q[h * C + c];
        s->score[r][j][h] = dot * scale;
      }
  for (int r = 0; r < NT; r++)
    for (int v = 0; v < VARIANTS; v++)
      for (int h = 0; h < H; h++) {
        float e[3], top = 0, total = 0;
        for (int k = 0; k < 3; k++) {
          e[k] = is_real(v, k) ? s->score[r][k - 1][h] : fixed_scores[k * H + h];
          top = k == 0 || e[k] > top ? e[k] : top;
        }
        for (int k = 0; k < 3; k++) {
          e[k] = expf(e[k] - top);
          total += e[k];
        }
        for (int k = 0; k < 3; k++) s->weight[r][v][k][h] = e[k] / total;
        for (int c = 0; c < C; c++) {
          float mixed = 0;
          for (int k = 0; k < 3; k++) {
            const float value = is_real(v, k) ? s->V[r][k - 1][h * C + c] : fixed_values[k * D + h * C + c];
            mixed += s->weight[r][v][k][h] * value;
          }
          s->attended[r][v][h * C + c] = mixed;
        }
      }
  matmul(NT * VARIANTS, s->attended[0][0], D, p[WO_T], p[BO], D, s->x[0][0]);
  for (int r = 0; r < NT; r++)
    for (int v = 0; v < VARIANTS; v++)
      s->x_rstd[r][v] = layer_norm(s->x[r][v], p[LN2_G], p[LN2_B], s->x_hat[r][v], s->x_norm[r][v]);
  matmul(NT * VARIANTS, s->x_norm[0][0], D, p[W1_T], p[B1], F, s->hidden[0][0]);
  for (int r = 0; r < NT; r++)
    for (int v = 0; v < VARIANTS; v++)
      for (int i = 0; i < F; i++) s->act[r][v][i] = gelu(s->hidden[r][v][i]);
  if (out) {
    matmul(NT * VARIANTS, s->act[0][0], F, p[W2_T], p[B2], D, s->ffn[0][0]);
    for (int r = 0; r < rows; r++)
      for (int v = 0; v < VARIANTS; v++)
        for (int i = 0; i < D; i++) out[(v * n + start + r) * D + i] = s->x[r][v][i] + s->ffn[r][v][i];
  }
}

/* out (3, n, D) = the encoder's CLS outputs for inputs = {in (n, 2, D)}. Returns 0, or 1 when out
 * of memory. */
int redundancy_forward(long n, int threads, const float *const *inputs, const float *const *p, float *out) {
  const float *in = inputs[0];
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
      tile_forward(rows, start, n, in + start * 2 * D, p, s, out);
    }
  }
  return failed;
}

/*
 * Gradients for d(loss)/d(out) = dout (3, n, D): d_inputs = {d_in (n, 2, D)}, and the gradients
 * of enum Param's inputs, which thread k adds to row k of grads (threads, redundancy_grad_size()),
 * zeroed by the caller, who sums the rows. Returns 0, or 1 when out of memory.
 */
int redundancy_backward(long n, int threads, const float *const *inputs, const float *const *p,
                        const float *dout, float *const *d_inputs, float *grads) {
  const float *in = inputs[0];
  float *d_in = d_inputs[0];
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
    g[0] = grads + omp_get_thread_num() * redundancy_grad_size();
    for (int i = 1; i < N_GRAD; i++) g[i] = g[i - 1] + GRAD_SIZE[i - 1];
    const float *q = p[Q], *fixed_values = p[FIXED_VALUES];
    const float scale = 1.0f / sqrtf((float)C);
    #pragma omp for schedule(static)
    for (long start = 0; start < n; start += NT) {
      if (!s || !z) continue;
      const int rows = n - start < NT ? (int)(n - start) : NT;
      float(*const d_out)[VARIANTS][D] = z->d_out, (*const d_act)[VARIANTS][F] = z->d_act;
      float(*const d_norm)[VARIANTS][D] = z->d_norm, (*const d_x)[VARIANTS][D] = z->d_x;
      float(*const d_att)[VARIANTS][D] = z->d_att, (*const d_score)[2][H] = z->d_score;
      float(*const d_K)[2][D] = z->d_K, (*const d_V)[2][D] = z->d_V, (*const d_tok)[2][D] = z->d_tok;
      float(*const d_val)[2][D] = z->d_val;
      memset(z->d_out, 0, sizeof z->d_out);
      memset(z->d_score, 0, sizeof z->d_score);
      memset(z->d_V, 0, sizeof z->d_V);
      tile_forward(rows, start, n, in + start * 2 * D, p, s, NULL);
      for (int r = 0; r < rows; r++)
        for (int v = 0; v < VARIANTS; v++) memcpy(d_out[r][v], dout + (v * n + start + r) * D, sizeof(float) * D);
      /* feed-forward: out = x + act @ W2_T + B2, act = gelu(LayerNorm(x) @ W1_T + B1) */
      add_outer(NT * VARIANTS, s->act[0][0], F, d_out[0][0], D, g[W2_T]);
      add_colsum(NT * VARIANTS, d_out[0][0], D, g[B2]);
      matmul(NT * VARIANTS, d_out[0][0], D, p[W2], NULL, F, d_act[0][0]);
      for (int r = 0; r < NT; r++)
        for (int v = 0; v < VARIANTS; v++)
          for (int i = 0; i < F; i++) d_act[r][v][i] *= gelu_grad(s->hidden[r][v][i]);
      add_outer(NT * VARIANTS, s->x_norm[0][0], D, d_act[0][0], F, g[W1_T]);
      add_colsum(NT * VARIANTS, d_act[0][0], F, g[B1]);
      matmul(NT * VARIANTS, d_act[0][0], F, p[W1], NULL, D, d_norm[0][0]);
      for (int r = 0; r < NT; r++)
        for (int v = 0; v < VARIANTS; v++) {
          memcpy(d_x[r][v], d_out[r][v], sizeof(float) * D);
          layer_norm_backward(d_norm[r][v], s->x_hat[r][v], s->x_rstd[r][v], p[LN2_G], g[LN2_G], g[LN2_B], d_x[r][v]);
        }
      /* attention output: x = attended @ WO_T + BO */
      add_outer(NT * VARIANTS, s->attended[0][0], D, d_x[0][0], D, g[WO_T]);
      add_colsum(NT * VARIANTS, d_x[0][0], D, g[BO]);
      matmul(NT * VARIANTS, d_x[0][0], D, p[WO], NULL, D, d_att[0][0]);
      for (int r = 0; r < NT; r++)
        for (int v = 0; v < VARIANTS; v++)
          for (int h = 0; h < H; h++) {
            float d_weight[3], expected = 0;
            for (int k = 0; k < 3; k++) {
              const float w = s->weight[r][v][k][h];
              const int real = is_real(v, k);
              float dot = 0;
              for (int c = 0; c < C; c++) {
                const float da = d_att[r][v][h * C + c];
                if (real) {
                  dot += da * s->V[r][k - 1][h * C + c];
                  d_V[r][k - 1][h * C + c] += w * da;
                } else {
                  dot += da * fixed_values[k * D + h * C + c];
                  g[FIXED_VALUES][k * D + h * C + c] += w * da;
                }
              }
              d_weight[k] = dot;
              expected += w * dot;
            }
            for (int k = 0; k < 3; k++) {
              const float ds = s->weight[r][v][k][h] * (d_weight[k] - expected);
              if (is_real(v, k))
                d_score[r][k - 1][h] += ds;
              else
                g[FIXED_SCORES][k * H + h] += ds;
            }
          }
      /* scores: score[j][h] = scale * K[j][h] . q[h] */
      for (int r = 0; r < NT; r++)
        for (int j = 0; j < 2; j++)
          for (int h = 0; h < H; h++) {
            const float ds = d_score[r][j][h] * scale;
            for (int c = 0; c < C; c++) {
              d_K[r][j][h * C + c] = ds * q[h * C + c];
              g[Q][h * C + c] += ds * s->K[r][j][h * C + c];
            }
          }
      add_outer(NT * 2, s->norm[0][0], D, d_K[0][0], D, g[WK_T]);
      add_colsum(NT * 2, d_K[0][0], D, g[BK]);
      add_outer(NT * 2, s->norm[0][0], D, d_V[0][0], D, g[WV_T]);
      add_colsum(NT * 2, d_V[0][0], D, g[BV]);
      matmul(NT * 2, d_K[0][0], D, p[WK], NULL, D, d_tok[0][0]);
      matmul(NT * 2, d_V[0][0], D, p[WV], NULL, D, d_val[0][0]);
      for (int r = 0; r < rows; r++)
        for (int j = 0; j < 2; j++) {
          float *dst = d_in + ((start + r) * 2 + j) * D;
          for (int i = 0; i < D; i++) {
            d_tok[r][j][i] += d_val[r][j][i];
            dst[i] = 0;
          }
          layer_norm_backward(d_tok[r][j], s->hat[r][j], s->rstd[r][j], p[LN_G], g[LN_G], g[LN_B], dst);
        }
    }
  }
  return failed;
}
