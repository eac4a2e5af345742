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

#include "simd.h"

#define EPS 1e-5f /* PyTorch's LayerNorm default */

/* A thread's buffer (a __thread Buffer), kept from call to call and replaced by a larger one when a
 * call needs more: on the heap, as a wide block's tile state outgrows a thread's stack, and aligned
 * to cache lines like the vectors read from it (malloc's 16-byte alignment split those loads: 6%
 * of a training step). */
typedef struct {
  void *data;
  size_t bytes;
} Buffer;

/* buffer's memory, at least `size` bytes; NULL when out of memory. */
static inline void *thread_buffer(Buffer *buffer, size_t size) {
  if (buffer->data && buffer->bytes >= size) return buffer->data;
  free(buffer->data);
  buffer->bytes = (size + 63) / 64 * 64;
  buffer->data = aligned_alloc(64, buffer->bytes);
  if (!buffer->data) buffer->bytes = 0;
  return buffer->data;
}

/* out[r] = b + in[r] @ M for r < rows (a multiple of RB): in (rows, K), M (K, O), O a multiple of
 * BW; b may be NULL. */
static inline void matmul(long rows, const float *restrict in, long K, const float *restrict M,
                          const float *restrict b, long O, float *restrict out) {
  for (long r0 = 0; r0 < rows; r0 += RB)
    for (long o0 = 0; o0 < O; o0 += BW) {
      vf acc[RB][NB];
      for (int j = 0; j < NB; j++) {
        vf init = {0};
        if (b) init = *(const vf *)(b + o0 + j * VL);
        for (int r = 0; r < RB; r++) acc[r][j] = init;
      }
      for (long i = 0; i < K; i++) {
        const float *w = M + i * O + o0;
        vf wj[NB];
        for (int j = 0; j < NB; j++) wj[j] = *(const vf *)(w + j * VL);
        for (int r = 0; r < RB; r++) {
          const float a = in[(r0 + r) * K + i];
          for (int j = 0; j < NB; j++) acc[r][j] += a * wj[j];
        }
      }
      for (int r = 0; r < RB; r++)
        for (int j = 0; j < NB; j++) *(vf *)(out + (r0 + r) * O + o0 + j * VL) = acc[r][j];
    }
}

/* G += in^T @ dy, the weight gradient of matmul: in (rows, K) with rows ld floats apart, dy (rows, O),
 * G (K, O); K a multiple of RB, O of BW. */
static inline void add_outer_ld(long rows, const float *restrict in, long ld, long K, const float *restrict dy,
                                long O, float *restrict G) {
  for (long i0 = 0; i0 < K; i0 += RB)
    for (long o0 = 0; o0 < O; o0 += BW) {
      vf acc[RB][NB] = {{{0}}};
      for (long r = 0; r < rows; r++) {
        const float *y = dy + r * O + o0;
        vf yj[NB];
        for (int j = 0; j < NB; j++) yj[j] = *(const vf *)(y + j * VL);
        for (int k = 0; k < RB; k++) {
          const float a = in[r * ld + i0 + k];
          for (int j = 0; j < NB; j++) acc[k][j] += a * yj[j];
        }
      }
      for (int k = 0; k < RB; k++)
        for (int j = 0; j < NB; j++) *(vf *)(G + (i0 + k) * O + o0 + j * VL) += acc[k][j];
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

