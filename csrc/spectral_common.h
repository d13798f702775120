// Arithmetic shared by the CPU kernels, the CUDA kernels and their host emulation.
//
// Everything here is C10_HOST_DEVICE and free of CUDA-only intrinsics, so the same code runs
// in all three builds and a seeded (seed, offset) gives the same noise on every device.
#pragma once

#include <ATen/core/PhiloxRNGEngine.h>
#include <c10/macros/Macros.h>

#include <cstdint>
#include <cstring>

namespace blurdiff {

// At most this many inputs (noise included) and outputs per CUDA launch: their pointers
// travel as kernel parameters.
constexpr int kMaxIO = 16;

// Noise is keyed per element (plane p, row r, column c) as lane c % 4 of the Philox4x32-10
// block at counter offset / 4 + r * quads_per_row(W) + c / 4 in subsequence p. A plane thus
// consumes 4 * H * quads_per_row(W) values of the generator's stream per subsequence.
C10_HOST_DEVICE inline int64_t quads_per_row(int64_t W) { return (W + 3) / 4; }

C10_HOST_DEVICE inline uint64_t noise_values_per_plane(int64_t H, int64_t W) {
  return 4 * static_cast<uint64_t>(H) * static_cast<uint64_t>(quads_per_row(W));
}

C10_HOST_DEVICE inline float bits_to_float(uint32_t b) {
#ifdef __CUDA_ARCH__
  return __uint_as_float(b);
#else
  float f;
  std::memcpy(&f, &b, sizeof f);
  return f;
#endif
}

C10_HOST_DEVICE inline uint32_t float_to_bits(float f) {
#ifdef __CUDA_ARCH__
  return __float_as_uint(f);
#else
  uint32_t b;
  std::memcpy(&b, &f, sizeof b);
  return b;
#endif
}

// ln(x) for x in (0, 1], plain float arithmetic (no library call, so loops over it vectorise
// on the CPU and give the same bits everywhere the compiler does not reassociate).
// x = m 2^k with m in [sqrt(1/2), sqrt(2)); ln m = 2 atanh(s), s = (m - 1)/(m + 1), |s| < 0.172.
C10_HOST_DEVICE inline float log_unit(float x) {
  uint32_t b = float_to_bits(x);
  int32_t k = static_cast<int32_t>((b >> 23) & 0xff) - 127;
  float m = bits_to_float((b & 0x007fffffu) | 0x3f800000u);  // [1, 2)
  if (m > 1.41421356f) {
    m *= 0.5f;
    k += 1;
  }
  float s = (m - 1.0f) / (m + 1.0f);
  float s2 = s * s;
  // atanh series to s^11: truncation error below 1e-9 on |s| < 0.172.
  float p = 1.0f / 11.0f;
  p = p * s2 + 1.0f / 9.0f;
  p = p * s2 + 1.0f / 7.0f;
  p = p * s2 + 1.0f / 5.0f;
  p = p * s2 + 1.0f / 3.0f;
  p = p * s2 + 1.0f;
  return 2.0f * s * p + static_cast<float>(k) * 0.693147180559945f;
}

// sin and cos of 2π u for u in [0, 1): the quarter turn q = round(4u) is exact in binary,
// the remainder a = 2π (u - q/4) lies in [-π/4, π/4] where short Taylor series suffice.
C10_HOST_DEVICE inline void sincos_turns(float u, float* s, float* c) {
  float q = static_cast<float>(static_cast<int32_t>(u * 4.0f + 0.5f));
  float a = (u - 0.25f * q) * 6.28318530717959f;
  float a2 = a * a;
  float sa = a * (1.0f + a2 * (-1.0f / 6 + a2 * (1.0f / 120 + a2 * (-1.0f / 5040 + a2 * (1.0f / 362880)))));
  float ca = 1.0f + a2 * (-0.5f + a2 * (1.0f / 24 + a2 * (-1.0f / 720 + a2 * (1.0f / 40320))));
  int32_t quarter = static_cast<int32_t>(q) & 3;
  // Rotate (ca, sa) by quarter * 90 degrees.
  float rs = quarter == 0 ? sa : quarter == 1 ? ca : quarter == 2 ? -sa : -ca;
  float rc = quarter == 0 ? ca : quarter == 1 ? -sa : quarter == 2 ? -ca : sa;
  *s = rs;
  *c = rc;
}

// Two standard normals from two uint32 (Box-Muller). u1 in (0, 1] so the log is finite.
C10_HOST_DEVICE inline void box_muller(uint32_t a, uint32_t b, float* n0, float* n1) {
  float u1 = (static_cast<float>(a >> 8) + 1.0f) * (1.0f / 16777216.0f);
  float u2 = static_cast<float>(b >> 8) * (1.0f / 16777216.0f);
  float r = sqrtf(-2.0f * log_unit(u1));
  float s, c;
  sincos_turns(u2, &s, &c);
  *n0 = r * c;
  *n1 = r * s;
}

// The four raw Philox outputs of one noise block.
struct Philox4 {
  uint32_t x[4];
};

C10_HOST_DEVICE inline Philox4 philox_block(uint64_t seed, uint64_t subsequence, uint64_t counter) {
  at::Philox4_32 engine(seed, subsequence, counter);
  Philox4 out;
  for (int i = 0; i < 4; ++i) out.x[i] = engine();
  return out;
}

// The four normals of the noise block at (plane p, row r, quad column cq).
C10_HOST_DEVICE inline void noise_block(uint64_t seed, uint64_t offset, int64_t p, int64_t r, int64_t cq, int64_t W,
                                        float n[4]) {
  uint64_t counter = offset / 4 + static_cast<uint64_t>(r * quads_per_row(W) + cq);
  Philox4 raw = philox_block(seed, static_cast<uint64_t>(p), counter);
  box_muller(raw.x[0], raw.x[1], &n[0], &n[1]);
  box_muller(raw.x[2], raw.x[3], &n[2], &n[3]);
}

// Row t of a per-frequency table [T, H, W], for one plane of n = H * W frequencies.
template <typename acc_t>
C10_HOST_DEVICE inline const acc_t* table_row(const acc_t* table, int64_t t, int64_t n) {
  return table + t * n;
}

}  // namespace blurdiff
