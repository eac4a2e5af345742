/*
 * The (n, n) part of InfoNCE (models/fusion.py, info_nce) on the CPU: for row-normalised a, b (n, D)
 * and column weights w, S = exp(alpha (a b^T - 1)), r = S w and c = w^T S, and the backward from
 * the gradients of r and c. PyTorch needs a product, an exponential, two matrix-vector products
 * and, backward, two outer products, their sum and a product with S before its two products;
 * here the forward is one pass and the backward two, with the products register-blocked.
 *
 * Sizes are padded by the caller: rows to n4 (a multiple of 4), columns to np (a multiple of 64,
 * np >= n4), pads zero in a, b and w, so they add nothing to r, c or any gradient. -D: D, a
 * multiple of 64.
 */
#include <omp.h>

#if D % 64
#error "D must be a multiple of 64"
#endif

#include "common.h"

/* Rows i0..i0+3 of a b^T: a4 (4, D), panels (np / BW, D, BW) = b^T in BW-column panels, each
 * contiguous. Read in order, a panel stays in the L1 cache; the rows of b^T itself, np floats apart,
 * share one cache set when np is a multiple of 1024, and the AVX2 build ran 1.4x slower on them. */
static inline void panel_rows(long np, const float *restrict a4, const float *restrict panels, float *restrict out) {
  for (long o0 = 0; o0 < np; o0 += BW) {
    const float *p = panels + o0 * D;
    vf acc[RB][NB] = {{{0}}};
    for (int i = 0; i < D; i++) {
      vf pj[NB];
      for (int j = 0; j < NB; j++) pj[j] = *(const vf *)(p + i * BW + j * VL);
      for (int r = 0; r < RB; r++) {
        const float x = a4[r * D + i];
        for (int j = 0; j < NB; j++) acc[r][j] += x * pj[j];
      }
    }
    for (int r = 0; r < RB; r++)
      for (int j = 0; j < NB; j++) *(vf *)(out + r * np + o0 + j * VL) = acc[r][j];
  }
}

/* S (n4, np), r (n4) and thread k's column sums in row k of c_parts (threads, np), zeroed by the
 * caller. a (n4, D), b (np, D), w (np); panels (np * D floats) is scratch for b^T in panels. */
void info_nce_forward(long n4, long np, int threads, const float *a, const float *b, float *panels, const float *w,
                      float alpha, float *S, float *r, float *c_parts) {
  #pragma omp parallel num_threads(threads)
  {
    #pragma omp for schedule(static)
    for (long o0 = 0; o0 < np; o0 += BW)
      for (int i = 0; i < D; i++)
        for (int j = 0; j < BW; j++) panels[o0 * D + i * BW + j] = b[(o0 + j) * D + i];
    float *c = c_parts + omp_get_thread_num() * np;
    #pragma omp for schedule(static)
    for (long i0 = 0; i0 < n4; i0 += 4) {
      float *rows = S + i0 * np;
      panel_rows(np, a + i0 * D, panels, rows);
      for (int k = 0; k < 4; k++) {
        float row_sum = 0;
        const float wi = w[i0 + k];
        float *s = rows + k * np;
        for (long j = 0; j < np; j++) {
          s[j] = expf(alpha * (s[j] - 1.0f));
          row_sum += s[j] * w[j];
          c[j] += wi * s[j];
        }
        r[i0 + k] = row_sum;
      }
    }
  }
}

/* gt (64, n4) = columns j0..j0+63 of G (n4, np), transposed: 16 rows at a time, so that the rows
 * read stay in the L1 cache while their 64 columns are written out */
static inline void transpose_block(long n4, long np, const float *restrict G, float *restrict gt) {
  long i0 = 0;
  for (; i0 + 16 <= n4; i0 += 16)
    for (int j = 0; j < 64; j++)
      for (int i = 0; i < 16; i++) gt[j * n4 + i0 + i] = G[(i0 + i) * np + j];
  for (; i0 < n4; i0++)
    for (int j = 0; j < 64; j++) gt[j * n4 + i0] = G[i0 * np + j];
}

static __thread Buffer transposed; /* a thread's (64, n4) block of G^T, kept for its next call */

/* Given S from the forward (overwritten), d(loss)/dr = gr (n4) and d(loss)/dc = gc (np): da (n4, D)
 * and db (np, D). a (n4, D), b (np, D). Returns 0, or 1 when out of memory. */
int info_nce_backward(long n4, long np, int threads, float *S, const float *gr, const float *gc, const float *w,
                      float alpha, const float *a, const float *b, float *da, float *db) {
  int failed = 0;
  #pragma omp parallel num_threads(threads)
  {
    /* d(loss)/d(a_i . b_j) = alpha S_ij (gr_i w_j + gc_j w_i), then da = G b */
    #pragma omp for schedule(static)
    for (long i0 = 0; i0 < n4; i0 += 4) {
      for (int k = 0; k < 4; k++) {
        float *s = S + (i0 + k) * np;
        const float gi = alpha * gr[i0 + k], wi = alpha * w[i0 + k];
        for (long j = 0; j < np; j++) s[j] *= gi * w[j] + gc[j] * wi;
      }
      matmul(4, S + i0 * np, np, b, NULL, D, da + i0 * D);
    }
    /* db = G^T a, each thread its own 64-column blocks of G (rows of db), transposed first: read in
     * place, a block's column of 4 floats per row of G took 2.2x as long (AVX2 build) */
    float *gt = thread_buffer(&transposed, sizeof(float) * 64 * n4);
    if (!gt) {
      #pragma omp atomic write
      failed = 1;
    }
    #pragma omp for schedule(static)
    for (long j0 = 0; j0 < np; j0 += 64) {
      if (!gt) continue;
      transpose_block(n4, np, S + j0, gt);
      matmul(64, gt, n4, a, NULL, D, db + j0 * D);
    }
  }
  return failed;
}
