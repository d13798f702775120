// C = op(A) · op(B) for row-major matrices, on the BLAS that torch itself links.
//
// A 64 x 64 plane is too small for ATen's mm/bmm: their per-call tensor bookkeeping costs about
// as much as the product. So call the Fortran BLAS symbols torch exports (MKL in the x86 wheels)
// directly. They are weak references: where a torch build does not export them, the call goes
// through at::cpu::mm_out instead, slower but the same numbers.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/mm_cpu_dispatch.h>

#include <cstdlib>
#include <type_traits>

extern "C" {
void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k, const float* alpha,
            const float* a, const int* lda, const float* b, const int* ldb, const float* beta, float* c, const int* ldc)
    __attribute__((weak));
void dgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k, const double* alpha,
            const double* a, const int* lda, const double* b, const int* ldb, const double* beta, double* c,
            const int* ldc) __attribute__((weak));
// MKL's C entry point (the lower-case symbols are its Fortran interface, taking int*).
int MKL_Set_Num_Threads_Local(int nt) __attribute__((weak));
}

namespace blurdiff {

// BLURDIFF_NO_DIRECT_BLAS=1 takes the ATen route (tests use it to cover the fallback).
inline bool have_direct_blas() {
  static const bool direct =
      sgemm_ != nullptr && dgemm_ != nullptr && std::getenv("BLURDIFF_NO_DIRECT_BLAS") == nullptr;
  return direct;
}

// Inside our own parallel tasks every BLAS call must run on the calling thread: MKL otherwise
// tries to fan out again, and its waiting threads stall the whole region whenever the machine
// has other work (measured: 10x slower on a loaded two-core machine). A no-op without MKL.
class SingleThreadedBlas {
 public:
  SingleThreadedBlas() : previous_(MKL_Set_Num_Threads_Local ? MKL_Set_Num_Threads_Local(1) : 0) {}
  ~SingleThreadedBlas() {
    if (MKL_Set_Num_Threads_Local) MKL_Set_Num_Threads_Local(previous_);
  }
  SingleThreadedBlas(const SingleThreadedBlas&) = delete;
  SingleThreadedBlas& operator=(const SingleThreadedBlas&) = delete;

 private:
  int previous_;
};

// Row-major C[M, N] = op(A)[M, K] · op(B)[K, N]; A, B, C with leading dimensions lda, ldb, ldc.
// In column-major terms that is C^T = op(B)^T · op(A)^T, hence the swapped operands.
template <typename T>
void gemm_row_major(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, const T* B,
                    int64_t ldb, T* C, int64_t ldc) {
  if (have_direct_blas()) {
    const char ta = trans_a ? 'T' : 'N', tb = trans_b ? 'T' : 'N';
    const int m = static_cast<int>(N), n = static_cast<int>(M), k = static_cast<int>(K);
    const int la = static_cast<int>(lda), lb = static_cast<int>(ldb), lc = static_cast<int>(ldc);
    const T one = 1, zero = 0;
    if constexpr (std::is_same_v<T, float>) {
      sgemm_(&tb, &ta, &m, &n, &k, &one, B, &lb, A, &la, &zero, C, &lc);
    } else {
      dgemm_(&tb, &ta, &m, &n, &k, &one, B, &lb, A, &la, &zero, C, &lc);
    }
    return;
  }
  const auto options = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
  auto view = [&](const T* p, int64_t rows, int64_t cols, int64_t ld, bool trans) {
    at::Tensor x = at::from_blob(const_cast<T*>(p), {trans ? cols : rows, trans ? rows : cols}, {ld, 1}, options);
    return trans ? x.t() : x;
  };
  at::Tensor c = at::from_blob(C, {M, N}, {ldc, 1}, options);
  at::cpu::mm_out(c, view(A, M, K, lda, trans_a), view(B, K, N, ldb, trans_b));
}

}  // namespace blurdiff
