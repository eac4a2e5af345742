/*
 * Helpers shared by the fused CPU kernels: register-blocked small products, LayerNorm and GELU
 * with their backwards, included by each kernel (which defines D first).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* glibc's vector maths library (libmvec) has erff and expf for every vector width, but math.h
 * declares them only under -ffinite-math-only, which the loader does not use (NaN must stay NaN) */
__attribute__((simd("notinbranch"))) float erff(float);
__attribute__((simd("notinbranch"))) float expf(float);

#define EPS 1e-5f /* PyTorch's LayerNorm default */
#define VL 16     /* floats per AVX-512 vector */

typedef float vf __attribute__((vector_size(64), aligned(4)));

/* The calling thread's buffer in *slot (a __thread pointer), allocated on its first call and kept
 * for the next: on the heap, as a wide block's tile state outgrows a thread's stack, and aligned
 * to cache lines like the vectors read from it (malloc's 16-byte alignment split those loads: 6%
 * of a training step). NULL when out of memory. */
static inline void *thread_buffer(void **slot, size_t size) {
  if (!*slot) *slot = aligned_alloc(64, (size + 63) / 64 * 64);
  return *slot;
}

/* out[r] = b + in[r] @ M for r < rows (a multiple of 4): in (rows, K), M (K, O); b may be NULL. */
static inline void matmul(long rows, const float *restrict in, long K, const float *restrict M,
                          const float *restrict b, long O, float *restrict out) {
  for (long r0 = 0; r0 < rows; r0 += 4)
    for (long o0 = 0; o0 < O; o0 += 4 * VL) {
      vf acc[4][4];
      for (int j = 0; j < 4; j++) {
        vf init = {0};
        if (b) init = *(const vf *)(b + o0 + j * VL);
        for (int r = 0; r < 4; r++) acc[r][j] = init;
      }
      for (long i = 0; i < K; i++) {
        const float *w = M + i * O + o0;
        const vf w0 = *(const vf *)w, w1 = *(const vf *)(w + VL), w2 = *(const vf *)(w + 2 * VL),
                 w3 = *(const vf *)(w + 3 * VL);
        for (int r = 0; r < 4; r++) {
          const float a = in[(r0 + r) * K + i];
          acc[r][0] += a * w0; acc[r][1] += a * w1; acc[r][2] += a * w2; acc[r][3] += a * w3;
        }
      }
      for (int r = 0; r < 4; r++)
        for (int j = 0; j < 4; j++) *(vf *)(out + (r0 + r) * O + o0 + j * VL) = acc[r][j];
    }
}

/* G += in^T @ dy, the weight gradient of matmul: in (rows, K) with rows ld floats apart, dy (rows, O),
 * G (K, O); K a multiple of 4, O of 64. */
static inline void add_outer_ld(long rows, const float *restrict in, long ld, long K, const float *restrict dy,
                                long O, float *restrict G) {
  for (long i0 = 0; i0 < K; i0 += 4)
    for (long o0 = 0; o0 < O; o0 += 4 * VL) {
      vf acc[4][4] = {{{0}}};
      for (long r = 0; r < rows; r++) {
        const float *y = dy + r * O + o0;
        const vf y0 = *(const vf *)y, y1 = *(const vf *)(y + VL), y2 = *(const vf *)(y + 2 * VL),
                 y3 = *(const vf *)(y + 3 * VL);
        for (int k = 0; k < 4; k++) {
          const float a = in[r * ld + i0 + k];
          acc[k][0] += a * y0; acc[k][1] += a * y1; acc[k][2] += a * y2; acc[k][3] += a * y3;
        }
      }
      for (int k = 0; k < 4; k++)
        for (int j = 0; j < 4; j++) *(vf *)(G + (i0 + k) * O + o0 + j * VL) += acc[k][j];
    }
}

/* G += in^T @ dy for in (rows, K) contiguous. */
static inline void add_outer(long rows, const float *restrict in, long K, const float *restrict dy, long O,
                             float *restrict G) {
  add_outer_ld(rows, in, K, K, dy, O, G);
}

/* g += column sums of dy (rows, O): a bias gradient. */
static inline void add_colsum(long rows, const float *restrict dy, long O, float *restrict g) {
  for (long r = 0; r < rows; r++)
    for (long o = 0; o < O; o++) g[o] += dy[r * O + o];
}

/* LayerNorm of one row x (D): xhat = (x - mean) * rstd, y = xhat * g + b; returns rstd. */
static inline float layer_norm(const float *restrict x, const float *restrict g, const float *restrict b,
                               float *restrict xhat, float *restrict y) {
  float mean = 0, var = 0;
  for (int i = 0; i < D; i++) mean += x[i];
  mean *= 1.0f / D;
  for (int i = 0; i < D; i++) var += (x[i] - mean) * (x[i] - mean);
  const float rstd = 1.0f / sqrtf(var * (1.0f / D) + EPS);
  for (int i = 0; i < D; i++) {
    xhat[i] = (x[i] - mean) * rstd;
    y[i] = xhat[i] * g[i] + b[i];
  }
  return rstd;
}

/* LayerNorm backward of one row: dx += d(loss)/dx for dy = d(loss)/dy; dg, db accumulate. */
static inline void layer_norm_backward(const float *restrict dy, const float *restrict xhat, float rstd,
                                       const float *restrict g, float *restrict dg, float *restrict db,
                                       float *restrict dx) {
  float dxhat[D], mean = 0, mean_x = 0;
  for (int i = 0; i < D; i++) {
    dg[i] += dy[i] * xhat[i];
    db[i] += dy[i];
    dxhat[i] = dy[i] * g[i];
    mean += dxhat[i];
    mean_x += dxhat[i] * xhat[i];
  }
  mean *= 1.0f / D;
  mean_x *= 1.0f / D;
  for (int i = 0; i < D; i++) dx[i] += rstd * (dxhat[i] - mean - xhat[i] * mean_x);
}

static inline float gelu(float x) { return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f)); }

static inline float gelu_grad(float x) {
  return 0.5f * (1.0f + erff(x * 0.70710678118654752f)) + x * 0.39894228040143268f * expf(-0.5f * x * x);
}

