/*
 * flatscan_impl.h - qd_flatscan internals that its tests check against plain loops.
 */
#ifndef QDUP_FLATSCAN_IMPL_H
#define QDUP_FLATSCAN_IMPL_H

#include "qdup/flatscan.h"

/* Quantizes x (dim) to codes (dim rounded up to a multiple of 4; the padding is zero):
 * x[i] is about *scale * codes[i], codes in -127..127, *scale = max |x[i]| / 127 (0 for
 * a zero vector, whose codes are all 0). */
void qd_flatscan_quantize(const float *x, int dim, int8_t *codes, float *scale);

/* The codes and scale stored for the vector at position pos (< count). */
void qd_flatscan_code(const qd_flatscan *fs, size_t pos, int8_t *codes, float *scale);

/* The candidate score of every stored vector for one query q (dim), computed by the
 * kernel in use: (float)(integer dot product of the codes) * the vector's scale. out
 * has count entries. QD_ERR_NOMEM. */
int qd_flatscan_approx(const qd_flatscan *fs, const float *q, float *out);

/* The exact scores of the stored vectors at positions pos (m, each < count) for one
 * query q (dim), computed by the kernel in use as a search re-scores its candidates: the
 * float of the inner product summed in double, components i with i % 4 = t into sum t
 * in order (those past the last multiple of 4 into sum 0), then (sum 0 + sum 1) + (sum
 * 2 + sum 3). xb (count, dim) are the float vectors. QD_ERR_NOMEM. */
int qd_flatscan_exact(const qd_flatscan *fs, const float *xb, const float *q,
                      const int64_t *pos, size_t m, float *out);

/* How many queries were searched, and how many of them needed the second pass. */
void qd_flatscan_stats(const qd_flatscan *fs, size_t *searched, size_t *second);

#endif
