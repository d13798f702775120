// 64-byte vectors of float or double in GCC's generic vector extension: one zmm register in a
// function compiled for AVX-512, two ymm or four xmm in the AVX2 and default clones, so the same
// source serves every clone of BLURDIFF_VECTOR_CLONES. Used where the compiler does not vectorise
// a loop by itself: the folds' mirrored reads. The vectors never cross a call (every helper is always_inline), so the
// ABI note GCC prints for 64-byte vectors in the non-AVX-512 clones does not apply: a translation unit including this
// silences it (-Wpsabi) where the templates are instantiated.
#pragma once

#include <cstdint>
#include <cstring>

namespace blurdiff {

template <typename T>
struct Vec;
template <>
struct Vec<float> {
  typedef float type __attribute__((vector_size(64)));
  static constexpr int64_t kSize = 16;
};
template <>
struct Vec<double> {
  typedef double type __attribute__((vector_size(64)));
  static constexpr int64_t kSize = 8;
};
template <typename T>
using vec_t = typename Vec<T>::type;

template <typename T>
[[gnu::always_inline]] inline vec_t<T> vload(const T* p) {
  vec_t<T> v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

template <typename T>
[[gnu::always_inline]] inline void vstore(T* p, vec_t<T> v) {
  std::memcpy(p, &v, sizeof v);
}

template <typename T>
[[gnu::always_inline]] inline vec_t<T> vbroadcast(T x) {
  return vec_t<T>{} + x;
}

// The lanes in reverse order: the mirrored half of a fold.
[[gnu::always_inline]] inline vec_t<float> vreverse(vec_t<float> v) {
  return __builtin_shufflevector(v, v, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
}
[[gnu::always_inline]] inline vec_t<double> vreverse(vec_t<double> v) {
  return __builtin_shufflevector(v, v, 7, 6, 5, 4, 3, 2, 1, 0);
}

}  // namespace blurdiff
