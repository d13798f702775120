// The CPU kernels' own AVX-512 code: the switch that says whether it runs, and the register types
// it is written in. Such code is compiled for AVX-512 alone (BLURDIFF_AVX512, a function target)
// and called only where avx512_enabled(): the CPU has AVX-512F and BLURDIFF_NO_AVX512 was not
// set when the library loaded (tests set it to cover the code that runs instead).
#pragma once

#include <cstdint>
#include <cstdlib>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
// GCC 12's own AVX-512 intrinsics pass an undefined register as the unused mask source, which
// its -Wmaybe-uninitialized reports at every use (GCC bug 105593).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#define BLURDIFF_HAVE_AVX512_CODE 1
#define BLURDIFF_AVX512 __attribute__((target("avx512f")))
#else
#define BLURDIFF_HAVE_AVX512_CODE 0
#endif

namespace blurdiff {

inline bool avx512_enabled() {
#if BLURDIFF_HAVE_AVX512_CODE
  static const bool enabled = __builtin_cpu_supports("avx512f") && std::getenv("BLURDIFF_NO_AVX512") == nullptr;
  return enabled;
#else
  return false;
#endif
}

#if BLURDIFF_HAVE_AVX512_CODE

// One zmm register of T and the operations the kernels use on it.
template <typename T>
struct Zmm;
template <>
struct Zmm<float> {
  using reg = __m512;
  static constexpr int64_t kLanes = 16;
  BLURDIFF_AVX512 static reg zero() { return _mm512_setzero_ps(); }
  BLURDIFF_AVX512 static reg load(const float* p) { return _mm512_loadu_ps(p); }
  BLURDIFF_AVX512 static reg broadcast(const float* p) { return _mm512_set1_ps(*p); }
  BLURDIFF_AVX512 static reg fma(reg a, reg b, reg c) { return _mm512_fmadd_ps(a, b, c); }
  BLURDIFF_AVX512 static void store(float* p, reg v) { _mm512_storeu_ps(p, v); }
};
template <>
struct Zmm<double> {
  using reg = __m512d;
  static constexpr int64_t kLanes = 8;
  BLURDIFF_AVX512 static reg zero() { return _mm512_setzero_pd(); }
  BLURDIFF_AVX512 static reg load(const double* p) { return _mm512_loadu_pd(p); }
  BLURDIFF_AVX512 static reg broadcast(const double* p) { return _mm512_set1_pd(*p); }
  BLURDIFF_AVX512 static reg fma(reg a, reg b, reg c) { return _mm512_fmadd_pd(a, b, c); }
  BLURDIFF_AVX512 static void store(double* p, reg v) { _mm512_storeu_pd(p, v); }
};

#endif  // BLURDIFF_HAVE_AVX512_CODE

}  // namespace blurdiff
