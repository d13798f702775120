// C[M, N] = A[M, K] · B[K, N] for the transforms' small products, on AVX-512 machines.
//
// The products of a chunk are small (64 x 64 planes: K = 32 after the even/odd fold), and a BLAS
// call spends a fifth of its time on them outside the multiply-adds: packing both operands into
// its panel format and scaling C by beta = 0 before accumulating (MKL on this project's AMD EPYC:
// sgemm_scopy_* and sgemm_mscale, 11 % of q_sample against 45 % in its kernel). Here B's rows
// are read in place (the basis blocks and the chunk's rows are already contiguous and in cache),
// A is read by strides (rsa, csa), so op(A) = A^T costs nothing, and C is written once.
//
// Register blocking: an 8 x 2V tile of C (V lanes per vector: 16 floats or 8 doubles) lives in
// 16 zmm registers; each step of k loads two vectors of B's row k and broadcasts 8 values of A:
// 16 FMAs for 10 loads (each B vector feeds 8, each broadcast 2). Columns come in whole vectors
// only (N % V == 0); callers take the BLAS otherwise, and where avx512_enabled() is false.
#pragma once

#include <cstdint>

#include "avx512.h"

namespace blurdiff {

#if BLURDIFF_HAVE_AVX512_CODE

// One MR x NV·V tile of C, accumulated over all of K in registers.
template <typename T, int MR, int NV>
BLURDIFF_AVX512 inline void small_gemm_tile(int64_t K, const T* A, int64_t rsa, int64_t csa, const T* B, int64_t ldb,
                                            T* C, int64_t ldc) {
  using Z = Zmm<T>;
  typename Z::reg acc[MR][NV];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) acc[r][v] = Z::zero();
  for (int64_t k = 0; k < K; ++k) {
    typename Z::reg b[NV];
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) b[v] = Z::load(B + k * ldb + v * Z::kLanes);
    const T* a = A + k * csa;
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const typename Z::reg ar = Z::broadcast(a + r * rsa);
#pragma GCC unroll 2
      for (int v = 0; v < NV; ++v) acc[r][v] = Z::fma(ar, b[v], acc[r][v]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) Z::store(C + r * ldc + v * Z::kLanes, acc[r][v]);
}

// The tiles of rows [m0, m0 + mr) (mr <= 8) and columns [n0, n0 + NV·V).
template <typename T, int NV>
BLURDIFF_AVX512 inline void small_gemm_rows(int64_t mr, int64_t K, const T* A, int64_t rsa, int64_t csa, const T* B,
                                            int64_t ldb, T* C, int64_t ldc) {
  switch (mr) {
    case 8:
      return small_gemm_tile<T, 8, NV>(K, A, rsa, csa, B, ldb, C, ldc);
    case 7:
      return small_gemm_tile<T, 7, NV>(K, A, rsa, csa, B, ldb, C, ldc);
    case 6:
      return small_gemm_tile<T, 6, NV>(K, A, rsa, csa, B, ldb, C, ldc);
    case 5:
      return small_gemm_tile<T, 5, NV>(K, A, rsa, csa, B, ldb, C, ldc);
    case 4:
      return small_gemm_tile<T, 4, NV>(K, A, rsa, csa, B, ldb, C, ldc);
    case 3:
      return small_gemm_tile<T, 3, NV>(K, A, rsa, csa, B, ldb, C, ldc);
    case 2:
      return small_gemm_tile<T, 2, NV>(K, A, rsa, csa, B, ldb, C, ldc);
    default:
      return small_gemm_tile<T, 1, NV>(K, A, rsa, csa, B, ldb, C, ldc);
  }
}

// C = A · B with A[m, k] at A[m rsa + k csa], B and C row-major (ldb, ldc); N % V == 0. Column
// panels outermost, so a panel of B (K x 2V) stays in L1 while every row block of A passes.
template <typename T>
BLURDIFF_AVX512 void small_gemm(int64_t M, int64_t N, int64_t K, const T* A, int64_t rsa, int64_t csa, const T* B,
                                int64_t ldb, T* C, int64_t ldc) {
  constexpr int64_t V = Zmm<T>::kLanes;
  for (int64_t n0 = 0; n0 < N; n0 += 2 * V) {
    for (int64_t m0 = 0; m0 < M; m0 += 8) {
      const int64_t mr = M - m0 < 8 ? M - m0 : 8;
      const T* a = A + m0 * rsa;
      T* c = C + m0 * ldc + n0;
      if (n0 + 2 * V <= N) {
        small_gemm_rows<T, 2>(mr, K, a, rsa, csa, B + n0, ldb, c, ldc);
      } else {
        small_gemm_rows<T, 1>(mr, K, a, rsa, csa, B + n0, ldb, c, ldc);
      }
    }
  }
}

// Whether small_gemm serves a product with N columns of T on this CPU.
template <typename T>
inline bool small_gemm_fits(int64_t N) {
  return avx512_enabled() && N % Zmm<T>::kLanes == 0;
}

#endif  // BLURDIFF_HAVE_AVX512_CODE

}  // namespace blurdiff
