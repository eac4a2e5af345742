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

/* S (n4, np), r (n4) and thread k's column sums in row k of c_parts (threads, np), zeroed by the
 * caller. a (n4, D), bT (D, np) = b transposed, w (np). */
void info_nce_forward(long n4, long np, int threads, const float *a, const float *bT, const float *w, float alpha,
                      float *S, float *r, float *c_parts) {
  #pragma omp parallel num_threads(threads)
  {
    float *c = c_parts + omp_get_thread_num() * np;
    #pragma omp for schedule(static)
    for (long i0 = 0; i0 < n4; i0 += 4) {
      float *rows = S + i0 * np;
      matmul(4, a + i0 * D, D, bT, NULL, np, rows);
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

/* Given S from the forward (overwritten), d(loss)/dr = gr (n4) and d(loss)/dc = gc (np): da (n4, D)
 * and db (np, D). a (n4, D), b (np, D). */
void info_nce_backward(long n4, long np, int threads, float *S, const float *gr, const float *gc, const float *w,
                       float alpha, const float *a, const float *b, float *da, float *db) {
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
    /* db = G^T a, each thread its own block of columns of G (rows of db) */
    #pragma omp for schedule(static)
    for (long j0 = 0; j0 < np; j0 += 64) {
      memset(db + j0 * D, 0, sizeof(float) * 64 * D);
      add_outer_ld(n4, S + j0, np, 64, a, D, db + j0 * D);
    }
  }
}
