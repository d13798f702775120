// The spectral map on the CPU: float32 / float64 (half types computed in float32).
//
// Planes are processed in chunks that stay in cache, one chunk per task of at::parallel_for.
// The transforms of a chunk are BLAS calls over all its planes at once. A basis side whose
// vectors are even or odd (even_odd.h: the project's Gaussian and DCT bases) is applied as two
// half-size products after a fold (sums and differences of mirrored rows or columns), half the
// multiply-adds of the dense product; both sides' folds take one pass (fold_planes), and the
// inverse's unfolds another. Between the transforms a spectrum is kept in the split order (even
// frequencies first) and, for an even/odd U_h, row-interleaved (Layout), so the tables' rows are
// gathered into that order once per sample and the noise per row. A side without the structure
// keeps the dense product, and the identity none. The coefficient products, the sum over inputs,
// the Philox noise and a single output's coefficients take one pass per input after the first
// (one for a single input), row by row so the operands stay in L1. Temporaries are chunk-sized
// buffers per task, never full-size tensors (ChunkScratch, which says which step uses which).
//
// The steps, in order: noise_row (the Philox normals of one row), forward_transform and
// inverse_transform (of a chunk), combine_plane (one pass over a plane); CpuMap plans a call and
// runs them chunk by chunk.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../spectral_map.h"
#include "cpu_noise_key.h"
#include "row_major_gemm.h"
#include "avx512.h"
#include "small_gemm.h"
#pragma GCC diagnostic ignored "-Wpsabi"  // vec.h
#include "vec.h"

// Compiled for the best vector unit at hand, chosen when the library loads (x86, GCC/Clang).
// Clang takes target_clones on plain functions only, not on templates (llvm-project#116501).
#if defined(__x86_64__) && defined(__GNUC__)
#define BLURDIFF_VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define BLURDIFF_VECTOR_CLONES
#endif
#if defined(__clang__)
#define BLURDIFF_VECTOR_CLONES_TEMPLATE
#else
#define BLURDIFF_VECTOR_CLONES_TEMPLATE BLURDIFF_VECTOR_CLONES
#endif

namespace blurdiff {
namespace {

// Elements per chunk buffer: four buffers of 16 Ki values and a sample's tables stay within a
// core's L2 (measured: 32 Ki and 64 Ki were no faster at 64 x 64).
constexpr int64_t kChunkElems = 16384;
// Quads of a row drawn at once: the arrays below live on the stack. A multiple of 16 (the
// AVX-512 Philox fills whole registers).
constexpr int64_t kQuadBatch = 64;

// Philox4x32-10 exactly as at::philox_engine computes it, for the `count` (<= kQuadBatch)
// consecutive counters from `base` of subsequence (c2, c3), over arrays so that the compiler
// vectorises it (the engine's per-call state machine does not): x[j][i] is output j of counter i.
[[gnu::always_inline]] inline void philox_quads(uint64_t seed, uint64_t base, uint32_t c2, uint32_t c3, int64_t count,
                                                uint32_t (*x)[kQuadBatch]) {
  for (int64_t i = 0; i < count; ++i) {
    const uint64_t ctr = base + static_cast<uint64_t>(i);
    uint32_t v0 = static_cast<uint32_t>(ctr), v1 = static_cast<uint32_t>(ctr >> 32), v2 = c2, v3 = c3;
    uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
    for (int round = 0; round < 10; ++round) {
      const uint64_t p0 = static_cast<uint64_t>(0xD2511F53u) * v0;
      const uint64_t p1 = static_cast<uint64_t>(0xCD9E8D57u) * v2;
      const uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ v1 ^ k0;
      const uint32_t n2 = static_cast<uint32_t>(p0 >> 32) ^ v3 ^ k1;
      v1 = static_cast<uint32_t>(p1);
      v3 = static_cast<uint32_t>(p0);
      v0 = n0;
      v2 = n2;
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
    x[0][i] = v0;
    x[1][i] = v1;
    x[2][i] = v2;
    x[3][i] = v3;
  }
}

#if BLURDIFF_HAVE_AVX512_CODE
// The high halves of the 32 x 32-bit products a * m, lane by lane, m the same in every lane
// (AVX-512F multiplies only the even 32-bit lanes, into 64-bit products).
BLURDIFF_AVX512 inline __m512i mulhi_epu32(__m512i a, __m512i m) {
  const __m512i even = _mm512_srli_epi64(_mm512_mul_epu32(a, m), 32);
  const __m512i odd = _mm512_mul_epu32(_mm512_srli_epi64(a, 32), m);
  return _mm512_mask_blend_epi32(0xAAAA, even, odd);
}

// philox_quads, 16 counters per register: GCC's vectorisation of the scalar loop widens every
// product to 64-bit lanes and shuffles them back (two thirds of the noise's time, perf).
BLURDIFF_AVX512 void philox_quads_avx512(uint64_t seed, uint64_t base, uint32_t c2, uint32_t c3, int64_t count,
                                         uint32_t (*x)[kQuadBatch]) {
  const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i m0 = _mm512_set1_epi32(static_cast<int>(0xD2511F53u));
  const __m512i m1 = _mm512_set1_epi32(static_cast<int>(0xCD9E8D57u));
  for (int64_t i = 0; i < count; i += 16) {
    const uint64_t first = base + static_cast<uint64_t>(i);
    const __m512i first_lo = _mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(first)));
    const __m512i first_hi = _mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(first >> 32)));
    __m512i v0 = _mm512_add_epi32(first_lo, iota);
    const __mmask16 carry = _mm512_cmplt_epu32_mask(v0, first_lo);  // the low word wrapped
    __m512i v1 = _mm512_mask_add_epi32(first_hi, carry, first_hi, _mm512_set1_epi32(1));
    __m512i v2 = _mm512_set1_epi32(static_cast<int>(c2)), v3 = _mm512_set1_epi32(static_cast<int>(c3));
    uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
    for (int round = 0; round < 10; ++round) {
      const __m512i lo0 = _mm512_mullo_epi32(v0, m0), hi0 = mulhi_epu32(v0, m0);
      const __m512i lo1 = _mm512_mullo_epi32(v2, m1), hi1 = mulhi_epu32(v2, m1);
      v0 = _mm512_ternarylogic_epi32(hi1, v1, _mm512_set1_epi32(static_cast<int>(k0)), 0x96);  // a ^ b ^ c
      v2 = _mm512_ternarylogic_epi32(hi0, v3, _mm512_set1_epi32(static_cast<int>(k1)), 0x96);
      v1 = lo1;
      v3 = lo0;
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
    _mm512_storeu_si512(x[0] + i, v0);
    _mm512_storeu_si512(x[1] + i, v1);
    _mm512_storeu_si512(x[2] + i, v2);
    _mm512_storeu_si512(x[3] + i, v3);
  }
}
#endif

// The noise of one row (DESIGN of spectral_common.h's noise_block), 4 * Wq values into z: the
// Philox outputs of the row's quads, then Box-Muller. The CUDA kernels and their CPU emulation
// use at::philox_engine itself, and the tests check both give the same numbers.
BLURDIFF_VECTOR_CLONES
void noise_row(uint64_t seed, uint64_t offset, int64_t plane, int64_t row, int64_t Wq, float* z) {
  const uint32_t c2 = static_cast<uint32_t>(plane), c3 = static_cast<uint32_t>(static_cast<uint64_t>(plane) >> 32);
  for (int64_t q0 = 0; q0 < Wq; q0 += kQuadBatch) {
    const int64_t count = std::min(kQuadBatch, Wq - q0);
    alignas(64) uint32_t x[4][kQuadBatch];
    const uint64_t base = offset / 4 + static_cast<uint64_t>(row * Wq + q0);
#if BLURDIFF_HAVE_AVX512_CODE
    if (avx512_enabled()) {
      philox_quads_avx512(seed, base, c2, c3, count, x);
    } else {
      philox_quads(seed, base, c2, c3, count, x);
    }
#else
    philox_quads(seed, base, c2, c3, count, x);
#endif
    float n[4][kQuadBatch];
    for (int64_t i = 0; i < count; ++i) {
      box_muller(x[0][i], x[1][i], &n[0][i], &n[1][i]);
      box_muller(x[2][i], x[3][i], &n[2][i], &n[3][i]);
    }
    for (int64_t i = 0; i < count; ++i)
      for (int j = 0; j < 4; ++j) z[4 * (q0 + i) + j] = n[j][i];
  }
}

// Buffer `slot` of this thread, at least `count` elements, 64-byte aligned; valid until the next
// call for the same slot on this thread.
template <typename T>
T* thread_scratch(int slot, int64_t count) {
  thread_local std::vector<unsigned char> buffers[6];
  std::vector<unsigned char>& buf = buffers[slot];
  const size_t bytes = static_cast<size_t>(count) * sizeof(T) + 64;
  if (buf.size() < bytes) buf.resize(bytes);
  const auto addr = reinterpret_cast<uintptr_t>(buf.data());
  return reinterpret_cast<T*>((addr + 63) & ~static_cast<uintptr_t>(63));
}

// The per-thread scratch of the map, in one place: four chunk-sized buffers (a chunk's planes in
// acc_t), the tables of one sample in split order and one row of noise. Kept per thread across
// calls (thread_scratch): freeing and re-mapping buffers this size on every call costs page faults and cross-core TLB
// shootdowns that undo the parallelism. The steps of CpuMap below use them on one chunk as follows
// ("converting": scalar_t is a half type, computed in acc_t; otherwise inputs are read in place):
//
//   step                        reads                                 writes
//   load input 0                x_0                                   converting: work without a
//                                                                     forward transform, else spec
//   load input i > 0            x_i                                   converting: spec
//   forward_transform input 0   spec or x_0 (work, fold: its           acc (passing through: the
//                               intermediates)                        output, or spec, or acc to
//                                                                     leave the split order)
//   forward_transform i > 0     spec or x_i (work, fold)              spec
//   combine_pass                input 0's chunk (acc, work or x_0)    acc (noise: a row of normals
//                               or acc; spec or x_i; the tables       at a time, noise_row)
//   scale_output (unfused d_m)  acc                                   work
//   inverse_transform           acc, work or the input passed         converting: work, else the
//                               through (spec, fold: intermediates)   output itself
//   store_output                the result where it is not in the     the output (converting)
//                               output: work, or spec (to_spectral)
//
// Input 0's chunk must live until the combine pass of input 1: it lies in acc, work or the input
// itself, which loading input 1 and transforming it leave alone.
template <typename acc_t>
struct ChunkScratch {
  acc_t* spec;    // an input's chunk on its way into the sum: converted, then transformed
  acc_t* work;    // transform intermediates and conversions (see the table)
  acc_t* acc;     // the running sum; passing through, a spectrum in split order
  acc_t* fold;    // the folds and half products of the even/odd transforms
  acc_t* tables;  // four table planes [H, W] gathered into split order
  float* noise;   // one row of normals, 4 * ceil(W / 4) floats, and its gathered copy (W more)

  ChunkScratch(int64_t chunk_elems, int64_t H, int64_t W, int64_t Wq)
      : spec(thread_scratch<acc_t>(0, chunk_elems)),
        work(thread_scratch<acc_t>(1, chunk_elems)),
        acc(thread_scratch<acc_t>(2, chunk_elems)),
        fold(thread_scratch<acc_t>(4, chunk_elems)),
        tables(thread_scratch<acc_t>(5, 4 * H * W)),
        noise(thread_scratch<float>(3, 4 * Wq + W)) {}
};

// One side of the separable basis as the transforms use it (even_odd.h): a dense U, the
// half-size blocks E and O of an even/odd U, or nothing for the identity, each also transposed
// (Ut, Et, Ot), so that every product reads its right operand by rows. Spectra are kept in the
// side's split order (even frequencies first) between the transforms; `order` maps back.
template <typename acc_t>
struct Side {
  SideSplit::Kind kind;
  int64_t ne, no;
  const acc_t* U;        // kDense
  const acc_t* E;        // kEvenOdd: [ne, ne]
  const acc_t* O;        // kEvenOdd: [no, no]
  const int32_t* order;  // kEvenOdd: slot -> frequency; nullptr otherwise (the identity map)
  std::vector<acc_t> transposed;
  const acc_t *Ut = nullptr, *Et = nullptr, *Ot = nullptr;

  Side(const SideSplit& s, const at::Tensor& U_dense)
      : kind(s.kind),
        ne(s.ne),
        no(s.no()),
        U(U_dense.data_ptr<acc_t>()),
        E(s.even_odd() ? s.blocks.data_ptr<acc_t>() : nullptr),
        O(s.even_odd() ? E + ne * ne : nullptr),
        order(s.even_odd() ? s.order.data() : nullptr) {
    if (kind == SideSplit::kDense) {
      const int64_t n = U_dense.size(0);
      transposed = transpose(U, n);
      Ut = transposed.data();
    } else if (kind == SideSplit::kEvenOdd) {
      transposed = transpose(E, ne);
      const std::vector<acc_t> odd = transpose(O, no);
      transposed.insert(transposed.end(), odd.begin(), odd.end());
      Et = transposed.data();
      Ot = Et + ne * ne;
    }
  }
  Side(const Side& other) = delete;
  Side& operator=(const Side&) = delete;

 private:
  static std::vector<acc_t> transpose(const acc_t* M, int64_t n) {
    std::vector<acc_t> t(n * n);
    for (int64_t r = 0; r < n; ++r)
      for (int64_t c = 0; c < n; ++c) t[c * n + r] = M[r * n + c];
    return t;
  }
};

// C = op(A) · B (op(A) = A^T when ta), skipping empty products (an odd half of size 0 when
// n = 1): small_gemm where it serves, else the BLAS.
template <typename T>
void gemm(bool ta, int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, const T* B, int64_t ldb, T* C,
          int64_t ldc) {
  if (M <= 0 || N <= 0 || K <= 0) return;
#if BLURDIFF_HAVE_AVX512_CODE
  if (small_gemm_fits<T>(N)) return small_gemm(M, N, K, A, ta ? 1 : lda, ta ? lda : 1, B, ldb, C, ldc);
#endif
  gemm_row_major(ta, false, M, N, K, A, lda, B, ldb, C, ldc);
}

// f = [x[l] + x[n-1-l] (l < no), x[middle] | x[l] - x[n-1-l] (l < no)] for one row of n values.
// The mirrored reads are a vector load reversed (vec.h): compilers leave this loop scalar.
template <typename acc_t>
[[gnu::always_inline]] inline void fold_row(const acc_t* __restrict__ x, acc_t* __restrict__ f, int64_t n, int64_t ne) {
  constexpr int64_t V = Vec<acc_t>::kSize;
  const int64_t no = n - ne;
  int64_t l = 0;
  for (; l + V <= no; l += V) {
    const vec_t<acc_t> a = vload(x + l), b = vreverse(vload(x + n - l - V));
    vstore(f + l, a + b);
    vstore(f + ne + l, a - b);
  }
  for (; l < no; ++l) {
    f[l] = x[l] + x[n - 1 - l];
    f[ne + l] = x[l] - x[n - 1 - l];
  }
  if (ne > no) f[no] = x[no];
}

// The inverse pairing: x[l] = f[l] + f[ne+l], x[n-1-l] = f[l] - f[ne+l].
template <typename acc_t>
[[gnu::always_inline]] inline void unfold_row(const acc_t* __restrict__ f, acc_t* __restrict__ x, int64_t n,
                                              int64_t ne) {
  constexpr int64_t V = Vec<acc_t>::kSize;
  const int64_t no = n - ne;
  int64_t l = 0;
  for (; l + V <= no; l += V) {
    const vec_t<acc_t> e = vload(f + l), o = vload(f + ne + l);
    vstore(x + l, e + o);
    vstore(x + n - l - V, vreverse(e - o));
  }
  for (; l < no; ++l) {
    x[l] = f[l] + f[ne + l];
    x[n - 1 - l] = f[l] - f[ne + l];
  }
  if (ne > no) x[no] = f[no];
}

// Both folds of the mirrored rows a and b (n values each, ne even columns): s = fold_row(a + b),
// d = fold_row(a - b), in one pass.
template <typename acc_t>
[[gnu::always_inline]] inline void fold_row_pair(const acc_t* __restrict__ a, const acc_t* __restrict__ b,
                                                 acc_t* __restrict__ s, acc_t* __restrict__ d, int64_t n, int64_t ne) {
  constexpr int64_t V = Vec<acc_t>::kSize;
  const int64_t no = n - ne;
  int64_t l = 0;
  for (; l + V <= no; l += V) {
    const vec_t<acc_t> a1 = vload(a + l), b1 = vload(b + l);
    const vec_t<acc_t> a2 = vreverse(vload(a + n - l - V)), b2 = vreverse(vload(b + n - l - V));
    const vec_t<acc_t> p = a1 + b1, q = a2 + b2, r = a1 - b1, t = a2 - b2;
    vstore(s + l, p + q);
    vstore(s + ne + l, p - q);
    vstore(d + l, r + t);
    vstore(d + ne + l, r - t);
  }
  for (; l < no; ++l) {
    const acc_t p = a[l] + b[l], q = a[n - 1 - l] + b[n - 1 - l];
    const acc_t r = a[l] - b[l], t = a[n - 1 - l] - b[n - 1 - l];
    s[l] = p + q;
    s[ne + l] = p - q;
    d[l] = r + t;
    d[ne + l] = r - t;
  }
  if (ne > no) {
    s[no] = a[no] + b[no];
    d[no] = a[no] - b[no];
  }
}

// The inverse of fold_row_pair: a and b from s and d.
template <typename acc_t>
[[gnu::always_inline]] inline void unfold_row_pair(const acc_t* __restrict__ s, const acc_t* __restrict__ d,
                                                   acc_t* __restrict__ a, acc_t* __restrict__ b, int64_t n,
                                                   int64_t ne) {
  constexpr int64_t V = Vec<acc_t>::kSize;
  const int64_t no = n - ne;
  int64_t l = 0;
  for (; l + V <= no; l += V) {
    const vec_t<acc_t> se = vload(s + l), so = vload(s + ne + l), de = vload(d + l), dO = vload(d + ne + l);
    const vec_t<acc_t> sum_lo = se + so, sum_hi = se - so, dif_lo = de + dO, dif_hi = de - dO;
    vstore(a + l, sum_lo + dif_lo);
    vstore(b + l, sum_lo - dif_lo);
    vstore(a + n - l - V, vreverse(sum_hi + dif_hi));
    vstore(b + n - l - V, vreverse(sum_hi - dif_hi));
  }
  for (; l < no; ++l) {
    const acc_t sum_lo = s[l] + s[ne + l], sum_hi = s[l] - s[ne + l];
    const acc_t dif_lo = d[l] + d[ne + l], dif_hi = d[l] - d[ne + l];
    a[l] = sum_lo + dif_lo;
    b[l] = sum_lo - dif_lo;
    a[n - 1 - l] = sum_hi + dif_hi;
    b[n - 1 - l] = sum_hi - dif_hi;
  }
  if (ne > no) {
    a[no] = s[no] + d[no];
    b[no] = s[no] - d[no];
  }
}

// s = a + b, d = a - b over n values (the rows' fold, or with s, d swapped for a, b, its inverse).
template <typename acc_t>
[[gnu::always_inline]] inline void sum_diff(const acc_t* __restrict__ a, const acc_t* __restrict__ b,
                                            acc_t* __restrict__ s, acc_t* __restrict__ d, int64_t n) {
  for (int64_t c = 0; c < n; ++c) {
    s[c] = a[c] + b[c];
    d[c] = a[c] - b[c];
  }
}

// fold_row over `rows` rows of n.
template <typename acc_t>
BLURDIFF_VECTOR_CLONES_TEMPLATE void fold_columns(const acc_t* x, acc_t* f, int64_t rows, int64_t n, int64_t ne) {
  for (int64_t r = 0; r < rows; ++r) fold_row(x + r * n, f + r * n, n, ne);
}

template <typename acc_t>
BLURDIFF_VECTOR_CLONES_TEMPLATE void unfold_columns(const acc_t* f, acc_t* x, int64_t rows, int64_t n, int64_t ne) {
  for (int64_t r = 0; r < rows; ++r) unfold_row(f + r * n, x + r * n, n, ne);
}

// Where element (plane q, row i, column j) of a chunk's spectrum lies: q * plane + i * row + j.
// Plane-major (plane = H W, row = W) or, between the transforms of an even/odd U_h, row-interleaved
// (plane = W, row = pc W): row i of every plane of the chunk in one run, so that each half
// product over the rows is one GEMM for the whole chunk rather than two small ones per plane.
struct Layout {
  int64_t plane, row;
};

// Both folds of an even/odd U_h (and U_w) in one pass: f (row-interleaved) holds, for every plane
// of x (plane-major [H, W]), its rows folded (the even-row half, then the odd one) and, when
// fold_cols, each row's columns folded too. Folding commutes with the products, so the W side's
// product can follow and the H side's needs no fold of its own.
template <typename acc_t>
BLURDIFF_VECTOR_CLONES_TEMPLATE void fold_planes(const acc_t* x, acc_t* f, int64_t pc, int64_t H, int64_t neh,
                                                 int64_t W, int64_t new_, bool fold_cols) {
  const int64_t noh = H - neh;
  for (int64_t l = 0; l < neh; ++l) {
    for (int64_t q = 0; q < pc; ++q) {
      const acc_t* a = x + (q * H + l) * W;
      acc_t* s = f + (l * pc + q) * W;
      if (l == noh) {  // the middle row of an odd H
        if (fold_cols) {
          fold_row(a, s, W, new_);
        } else {
          std::copy(a, a + W, s);
        }
        continue;
      }
      const acc_t* b = x + (q * H + H - 1 - l) * W;
      acc_t* d = f + ((neh + l) * pc + q) * W;
      if (fold_cols) {
        fold_row_pair(a, b, s, d, W, new_);
      } else {
        sum_diff(a, b, s, d, W);
      }
    }
  }
}

// The inverse of fold_planes: x (plane-major) from the row-interleaved half products f.
template <typename acc_t>
BLURDIFF_VECTOR_CLONES_TEMPLATE void unfold_planes(const acc_t* f, acc_t* x, int64_t pc, int64_t H, int64_t neh,
                                                   int64_t W, int64_t new_, bool fold_cols) {
  const int64_t noh = H - neh;
  for (int64_t l = 0; l < neh; ++l) {
    for (int64_t q = 0; q < pc; ++q) {
      const acc_t* s = f + (l * pc + q) * W;
      acc_t* a = x + (q * H + l) * W;
      if (l == noh) {
        if (fold_cols) {
          unfold_row(s, a, W, new_);
        } else {
          std::copy(s, s + W, a);
        }
        continue;
      }
      const acc_t* d = f + ((neh + l) * pc + q) * W;
      acc_t* b = x + (q * H + H - 1 - l) * W;
      if (fold_cols) {
        unfold_row_pair(s, d, a, b, W, new_);
      } else {
        sum_diff(s, d, a, b, W);
      }
    }
  }
}

// y = x U_w for `rows` rows: returns y (x itself for the identity, else tmp). x may hold folded
// columns (folded: an even/odd U_w's product without its own fold).
template <typename acc_t>
const acc_t* right_product(const acc_t* x, acc_t* tmp, acc_t* fold, int64_t rows, int64_t W, const Side<acc_t>& sw,
                           bool folded) {
  if (sw.kind == SideSplit::kIdentity) return x;
  if (sw.kind == SideSplit::kDense) {
    gemm(false, rows, W, W, x, W, sw.U, W, tmp, W);
    return tmp;
  }
  if (!folded) {
    fold_columns(x, fold, rows, W, sw.ne);
    x = fold;
  }
  gemm(false, rows, sw.ne, sw.ne, x, W, sw.E, sw.ne, tmp, W);
  gemm(false, rows, sw.no, sw.no, x + sw.ne, W, sw.O, sw.no, tmp + sw.ne, W);
  return tmp;
}

// out = U_h^T (x_p U_w) for the pc planes of a chunk (x plane-major), in the split order of both
// sides and the chunk's layout (row-interleaved for an even/odd U_h). tmp and fold are chunk-sized
// scratch; out may be x, never tmp or fold.
template <typename acc_t>
void forward_transform(const acc_t* x, acc_t* tmp, acc_t* fold, acc_t* out, int64_t pc, int64_t H, int64_t W,
                       const Side<acc_t>& sh, const Side<acc_t>& sw) {
  const int64_t rows = pc * H, n = H * W;
  if (sh.kind == SideSplit::kEvenOdd) {
    const bool fold_cols = sw.kind == SideSplit::kEvenOdd;
    fold_planes(x, fold, pc, H, sh.ne, W, sw.ne, fold_cols);
    const acc_t* y = right_product<acc_t>(fold, tmp, nullptr, rows, W, sw, true);
    const int64_t ld = pc * W;  // every plane's row l in one run
    gemm(true, sh.ne, ld, sh.ne, sh.E, sh.ne, y, ld, out, ld);
    gemm(true, sh.no, ld, sh.no, sh.O, sh.no, y + sh.ne * ld, ld, out + sh.ne * ld, ld);
    return;
  }
  const acc_t* y = right_product(x, tmp, fold, rows, W, sw, false);
  if (sh.kind == SideSplit::kIdentity) {
    if (y != out) std::copy(y, y + pc * n, out);
    return;
  }
  if (y == out) {  // a product cannot run in place
    std::copy(y, y + pc * n, tmp);
    y = tmp;
  }
  for (int64_t q = 0; q < pc; ++q) gemm(true, H, W, H, sh.U, H, y + q * n, W, out + q * n, W);
}

// out_p = (U_h s_p) U_w^T (out plane-major) from s in the split order of both sides and the
// chunk's layout. out may be s, never tmp or fold.
template <typename acc_t>
void inverse_transform(const acc_t* s, acc_t* tmp, acc_t* fold, acc_t* out, int64_t pc, int64_t H, int64_t W,
                       const Side<acc_t>& sh, const Side<acc_t>& sw) {
  const int64_t rows = pc * H, n = H * W;
  if (sh.kind == SideSplit::kEvenOdd) {
    const int64_t ld = pc * W;
    gemm(false, sh.ne, ld, sh.ne, sh.E, sh.ne, s, ld, tmp, ld);
    gemm(false, sh.no, ld, sh.no, sh.O, sh.no, s + sh.ne * ld, ld, tmp + sh.ne * ld, ld);
    // The W side's product without its unfold, which unfold_planes does with the rows'.
    const acc_t* y = tmp;
    if (sw.kind == SideSplit::kDense) {
      gemm(false, rows, W, W, tmp, W, sw.Ut, W, fold, W);
      y = fold;
    } else if (sw.kind == SideSplit::kEvenOdd) {
      gemm(false, rows, sw.ne, sw.ne, tmp, W, sw.Et, sw.ne, fold, W);
      gemm(false, rows, sw.no, sw.no, tmp + sw.ne, W, sw.Ot, sw.no, fold + sw.ne, W);
      y = fold;
    }
    unfold_planes(y, out, pc, H, sh.ne, W, sw.ne, sw.kind == SideSplit::kEvenOdd);
    return;
  }
  // y = U_h s per plane.
  const acc_t* y = s;
  if (sh.kind == SideSplit::kDense) {
    for (int64_t q = 0; q < pc; ++q) gemm(false, H, W, H, sh.U, H, s + q * n, W, tmp + q * n, W);
    y = tmp;
  }
  // out = y U_w^T, all rows at once.
  if (sw.kind == SideSplit::kIdentity) {
    if (y != out) std::copy(y, y + pc * n, out);
  } else if (sw.kind == SideSplit::kDense) {
    if (y == out) {  // identity U_h and s == out: a product cannot run in place
      std::copy(y, y + pc * n, tmp);
      y = tmp;
    }
    gemm(false, rows, W, W, y, W, sw.Ut, W, out, W);
  } else {
    gemm(false, rows, sw.ne, sw.ne, y, W, sw.Et, sw.ne, fold, W);
    gemm(false, rows, sw.no, sw.no, y + sw.ne, W, sw.Ot, sw.no, fold + sw.ne, W);
    unfold_columns(fold, out, rows, W, sw.ne);
  }
}

// The row and column orders of spectra between the transforms (Side::order of each side):
// split-order row i holds frequency row rows[i], split-order column j frequency column cols[j];
// nullptr is the identity map. The project's bases alternate even and odd frequencies
// (cols = 0, 2, 4, ..., 1, 3, 5, ...), where moving a row between the orders is a de-interleave
// that vectorises, unlike a gather through cols.
struct SplitOrder {
  const int32_t* rows = nullptr;
  const int32_t* cols = nullptr;
  int64_t cols_even = 0;     // even columns (the first slots)
  bool alternating = false;  // cols[k] = 2k for even slots, 2k + 1 for odd ones

  bool permuted() const { return rows != nullptr || cols != nullptr; }
  int64_t row(int64_t i) const { return rows ? rows[i] : i; }
};

inline bool alternates(const std::vector<int32_t>& order, int64_t ne) {
  for (int64_t s = 0; s < static_cast<int64_t>(order.size()); ++s)
    if (order[s] != (s < ne ? 2 * s : 2 * (s - ne) + 1)) return false;
  return true;
}

// One row of W values: dst[j] = src[cols[j]] (into split order) or dst[cols[j]] = src[j] (out of it).
template <typename T>
BLURDIFF_VECTOR_CLONES_TEMPLATE void cols_to_split(const T* src, T* dst, int64_t W, const SplitOrder& ord) {
  if (ord.cols == nullptr) {
    std::copy(src, src + W, dst);
  } else if (ord.alternating) {  // one loop, so the pair of loads is one interleaved group
    const int64_t ne = ord.cols_even, no = W - ne;
    const T* __restrict__ a = src;
    T* __restrict__ e = dst;
    T* __restrict__ o = dst + ne;
    for (int64_t k = 0; k < no; ++k) {
      e[k] = a[2 * k];
      o[k] = a[2 * k + 1];
    }
    if (ne > no) e[no] = a[2 * no];
  } else {
    for (int64_t c = 0; c < W; ++c) dst[c] = src[ord.cols[c]];
  }
}

template <typename T>
BLURDIFF_VECTOR_CLONES_TEMPLATE void cols_from_split(const T* src, T* dst, int64_t W, const SplitOrder& ord) {
  if (ord.cols == nullptr) {
    std::copy(src, src + W, dst);
  } else if (ord.alternating) {
    const int64_t ne = ord.cols_even, no = W - ne;
    const T* __restrict__ e = src;
    const T* __restrict__ o = src + ne;
    T* __restrict__ a = dst;
    for (int64_t k = 0; k < no; ++k) {
      a[2 * k] = e[k];
      a[2 * k + 1] = o[k];
    }
    if (ne > no) a[2 * no] = e[no];
  } else {
    for (int64_t c = 0; c < W; ++c) dst[ord.cols[c]] = src[c];
  }
}

// pc planes of x (plane-major, frequency order) into s (split order, layout L).
template <typename acc_t>
void to_split_order(const acc_t* x, acc_t* s, int64_t pc, int64_t H, int64_t W, const SplitOrder& ord,
                    const Layout& L) {
  for (int64_t q = 0; q < pc; ++q)
    for (int64_t i = 0; i < H; ++i) cols_to_split(x + (q * H + ord.row(i)) * W, s + q * L.plane + i * L.row, W, ord);
}

// The inverse: pc planes of s (split order, layout L) into x (plane-major, frequency order).
template <typename acc_t>
void from_split_order(const acc_t* s, acc_t* x, int64_t pc, int64_t H, int64_t W, const SplitOrder& ord,
                      const Layout& L) {
  for (int64_t q = 0; q < pc; ++q)
    for (int64_t i = 0; i < H; ++i) cols_from_split(s + q * L.plane + i * L.row, x + (q * H + ord.row(i)) * W, W, ord);
}

// dst = sp ⊙ prev + sc ⊙ cur + nc ⊙ noise, times d, for one plane, a row at a time so every
// operand row stays in L1. dst, prev and cur are planes of the chunk (rows `row` apart); the
// tables sp, sc, nc, d are [H, W] planes in the same (split) order. The noise of split row y is
// drawn for its frequency row and its columns gathered. A null table means ones; a null cur or nc
// drops that term; dst may be prev.
template <typename acc_t>
BLURDIFF_VECTOR_CLONES_TEMPLATE void combine_plane(acc_t* dst, const acc_t* prev, const acc_t* sp, const acc_t* cur,
                                                   const acc_t* sc, const acc_t* nc, const acc_t* d, int64_t row,
                                                   const NoiseKey& key, int64_t plane, int64_t H, int64_t W, float* z,
                                                   const SplitOrder& ord) {
  const int64_t Wq = quads_per_row(W);
  for (int64_t y = 0; y < H; ++y) {
    const int64_t o = y * W;
    acc_t* out = dst + y * row;
    const acc_t* pv = prev + y * row;
    if (sp) {
      for (int64_t x = 0; x < W; ++x) out[x] = sp[o + x] * pv[x];
    } else if (out != pv) {
      for (int64_t x = 0; x < W; ++x) out[x] = pv[x];
    }
    if (cur) {
      const acc_t* cu = cur + y * row;
      if (sc) {
        for (int64_t x = 0; x < W; ++x) out[x] += sc[o + x] * cu[x];
      } else {
        for (int64_t x = 0; x < W; ++x) out[x] += cu[x];
      }
    }
    if (nc) {
      noise_row(key.seed, key.offset, plane, ord.row(y), Wq, z);
      const float* zr = z;
      if (ord.cols) {
        cols_to_split(z, z + 4 * Wq, W, ord);
        zr = z + 4 * Wq;
      }
      for (int64_t x = 0; x < W; ++x) out[x] += nc[o + x] * static_cast<acc_t>(zr[x]);
    }
    if (d) {
      for (int64_t x = 0; x < W; ++x) out[x] *= d[o + x];
    }
  }
}

// The spectral map of one request, for data of scalar_t: what the call computes is fixed here,
// before the planes are split into chunks among the threads (run); each chunk then goes through
// accumulate (load, forward transform, combine passes with the noise) and write_output (output
// coefficients, inverse transform, store) for every output.
template <typename scalar_t>
class CpuMap {
 public:
  using acc_t = at::opmath_type<scalar_t>;
  static constexpr bool kConvert = !std::is_same<scalar_t, acc_t>::value;

  CpuMap(const MapRequest& r, std::vector<at::Tensor>& outs)
      : H_(r.H()),
        W_(r.W()),
        n_(H_ * W_),
        P_(r.planes()),
        C_(r.planes_per_sample()),
        Wq_(quads_per_row(W_)),
        sh_(*r.split_h, r.U_h),
        sw_(*r.split_w, r.U_w),
        ord_{sh_.order, sw_.order, sw_.ne, r.split_w->even_odd() && alternates(r.split_w->order, sw_.ne)},
        forward_(r.forward),
        inverse_(r.inverse) {
    for (const auto& x : r.inputs) inputs_.push_back(x.data_ptr<scalar_t>());
    for (auto& y : outs) outs_.push_back(y.data_ptr<scalar_t>());
    for (const auto& c : r.in_coefs) in_coefs_.push_back(table_ptr<acc_t>(c));
    for (const auto& c : r.out_coefs) out_coefs_.push_back(table_ptr<acc_t>(c));
    noise_coef_ = table_ptr<acc_t>(r.noise_coef);
    t_ = r.t.defined() ? r.t.data_ptr<int64_t>() : nullptr;
    key_ = noise_coef_ ? next_cpu_noise_key(r.generator) : NoiseKey{};
    // The plain transforms (one input, one output, one direction, no coefficients or noise) skip
    // the accumulator: their sum is the input itself.
    passthrough_ = inputs_.size() == 1 && outs_.size() == 1 && !in_coefs_[0] && !noise_coef_ && forward_ != inverse_;
    // A single output's coefficients join the last combine pass.
    fuse_out_ = !passthrough_ && outs_.size() == 1 && out_coefs_[0];

    const int64_t threads = at::get_num_threads();
    chunk_ = std::max<int64_t>(1, kChunkElems / std::max<int64_t>(n_, 1));
    chunk_ = std::min(chunk_, std::max<int64_t>(1, (P_ + 2 * threads - 1) / (2 * threads)));
  }

  void run() const {
    const int64_t num_chunks = (P_ + chunk_ - 1) / chunk_;
    at::parallel_for(0, num_chunks, 1, [&](int64_t begin, int64_t end) {
      const SingleThreadedBlas one_thread;
      const ChunkScratch<acc_t> scratch(chunk_ * n_, H_, W_, Wq_);
      for (int64_t c = begin; c < end; ++c) {
        const Chunk ch{c * chunk_, std::min(chunk_, P_ - c * chunk_)};
        const acc_t* acc = accumulate(ch, scratch);
        for (size_t m = 0; m < outs_.size(); ++m) write_output(m, acc, ch, scratch);
      }
    });
  }

 private:
  // The planes [p0, p0 + pc) of one task.
  struct Chunk {
    int64_t p0, pc;
  };

  // The chunk's layout between the transforms (Layout).
  Layout layout(const Chunk& ch) const {
    return sh_.kind == SideSplit::kEvenOdd ? Layout{W_, ch.pc * W_} : Layout{n_, W_};
  }

  // The sample of plane q of the chunk: its planes share the rows t[b] of the tables.
  int64_t sample(const Chunk& ch, int64_t q) const { return (ch.p0 + q) / C_; }

  // Row t[b] of a table, an [H, W] plane in the split order: the table's own row, or gathered
  // into scratch plane `slot` of ChunkScratch::tables. nullptr stays nullptr (coefficient 1).
  const acc_t* table_plane(const acc_t* table, int64_t b, const ChunkScratch<acc_t>& s, int slot) const {
    if (table == nullptr) return nullptr;
    const acc_t* plane = table_row(table, t_ ? t_[b] : 0, n_);
    if (!ord_.permuted()) return plane;
    acc_t* into = s.tables + slot * n_;
    to_split_order(plane, into, 1, H_, W_, ord_, Layout{n_, W_});
    return into;
  }

  // Step: input i's chunk in acc_t, converted into `into` if scalar_t is a half type.
  const acc_t* load_input(size_t i, const Chunk& ch, acc_t* into) const {
    const scalar_t* src = inputs_[i] + ch.p0 * n_;
    if constexpr (kConvert) {
      const int64_t count = ch.pc * n_;
      for (int64_t e = 0; e < count; ++e) into[e] = static_cast<acc_t>(src[e]);
      return into;
    } else {
      return src;
    }
  }

  // Where the forward transform of input i goes.
  acc_t* spectrum_target(size_t i, const Chunk& ch, const ChunkScratch<acc_t>& s) const {
    if (!passthrough_ || ord_.permuted()) return i == 0 ? s.acc : s.spec;
    // to_spectral of acc_t data in frequency order writes straight into the output chunk.
    if constexpr (!kConvert) {
      if (!inverse_) return outs_[0] + ch.p0 * n_;
    }
    return s.spec;
  }

  // Step: one combine pass over the chunk's planes, acc = sp ⊙ prev + c_i ⊙ x_i (+ the noise and
  // a fused output's coefficients in the last pass). Pass i = 1 scales input 0 (raw0) as it adds
  // input 1; with K = 1, pass 0 scales input 0 alone.
  // The tables' rows are gathered once per sample (its planes are consecutive).
  void combine_pass(size_t i, const acc_t* raw0, const acc_t* x, const Chunk& ch, const ChunkScratch<acc_t>& s) const {
    const bool last = i + 1 == inputs_.size();
    const Layout L = layout(ch);
    const acc_t *sp = nullptr, *sc = nullptr, *nc = nullptr, *d = nullptr;
    for (int64_t q = 0, b = -1; q < ch.pc; ++q) {
      if (sample(ch, q) != b) {
        b = sample(ch, q);
        sp = i <= 1 ? table_plane(in_coefs_[0], b, s, 0) : nullptr;
        sc = i > 0 ? table_plane(in_coefs_[i], b, s, 1) : nullptr;
        nc = last ? table_plane(noise_coef_, b, s, 2) : nullptr;
        d = last && fuse_out_ ? table_plane(out_coefs_[0], b, s, 3) : nullptr;
      }
      const acc_t* prev = (i <= 1 ? raw0 : s.acc) + q * L.plane;
      const acc_t* cur = i > 0 ? x + q * L.plane : nullptr;
      combine_plane(s.acc + q * L.plane, prev, sp, cur, sc, nc, d, L.row, key_, ch.p0 + q, H_, W_, s.noise, ord_);
    }
  }

  // acc = Σ_i c_i ⊙ F(x_i) + σ ⊙ z for one chunk, in one combine pass per input after the first
  // (one pass for K = 1): input 0's transform is scaled by the pass that adds input 1, and the
  // noise (and a single output's coefficients) join the last pass. Passing through, the result
  // is F(x) itself in frequency order (to_spectral), or x in split order (from_spectral).
  const acc_t* accumulate(const Chunk& ch, const ChunkScratch<acc_t>& s) const {
    const size_t K = inputs_.size();
    const acc_t* raw0 = nullptr;
    for (size_t i = 0; i < K; ++i) {
      const acc_t* x = load_input(i, ch, i == 0 && !forward_ ? s.work : s.spec);
      if (forward_) {
        acc_t* into = spectrum_target(i, ch, s);
        forward_transform(x, s.work, s.fold, into, ch.pc, H_, W_, sh_, sw_);
        x = into;
      } else if (ord_.permuted()) {  // from_spectral: its input into split order
        to_split_order(x, s.acc, ch.pc, H_, W_, ord_, layout(ch));
        x = s.acc;
      }
      if (passthrough_) {
        if (!forward_ || !ord_.permuted()) return x;
        acc_t* out = kConvert ? s.work : reinterpret_cast<acc_t*>(outs_[0] + ch.p0 * n_);
        from_split_order(x, out, ch.pc, H_, W_, ord_, layout(ch));
        return out;
      }
      if (i == 0) {
        raw0 = x;
        if (K > 1) continue;
      }
      combine_pass(i, raw0, x, ch, s);
    }
    return s.acc;
  }

  // Step: work = d_m ⊙ acc, for an output whose coefficients did not join the last pass.
  const acc_t* scale_output(size_t m, const acc_t* acc, const Chunk& ch, const ChunkScratch<acc_t>& s) const {
    const Layout L = layout(ch);
    const acc_t* cf = nullptr;
    for (int64_t q = 0, b = -1; q < ch.pc; ++q) {
      if (sample(ch, q) != b) {
        b = sample(ch, q);
        cf = table_plane(out_coefs_[m], b, s, 0);
      }
      for (int64_t i = 0; i < H_; ++i) {
        const acc_t* c = cf + i * W_;
        const acc_t* a = acc + q * L.plane + i * L.row;
        acc_t* y = s.work + q * L.plane + i * L.row;
        for (int64_t e = 0; e < W_; ++e) y[e] = c[e] * a[e];
      }
    }
    return s.work;
  }

  // Step: the output chunk from a result in acc_t (a copy, or a conversion), unless it is there.
  void store_output(const acc_t* result, scalar_t* dst, const Chunk& ch) const {
    if (static_cast<const void*>(result) == static_cast<const void*>(dst)) return;
    const int64_t count = ch.pc * n_;
    for (int64_t e = 0; e < count; ++e) dst[e] = static_cast<scalar_t>(result[e]);
  }

  // out_m = G(d_m ⊙ acc) for one chunk.
  void write_output(size_t m, const acc_t* acc, const Chunk& ch, const ChunkScratch<acc_t>& s) const {
    const acc_t* src = out_coefs_[m] && !fuse_out_ ? scale_output(m, acc, ch, s) : acc;
    scalar_t* dst = outs_[m] + ch.p0 * n_;
    const acc_t* result = src;
    if (inverse_) {
      // src is acc, work, or (passing through) an input chunk or work; spec and fold are free.
      acc_t* into = kConvert ? s.work : reinterpret_cast<acc_t*>(dst);
      inverse_transform(src, s.spec, s.fold, into, ch.pc, H_, W_, sh_, sw_);
      result = into;
    }
    store_output(result, dst, ch);
  }

  int64_t H_, W_, n_, P_, C_, Wq_;
  Side<acc_t> sh_, sw_;  // the bases' sides: dense, even/odd halves or identity
  SplitOrder ord_;       // the order of spectra between the transforms
  bool forward_, inverse_;
  std::vector<const scalar_t*> inputs_;
  std::vector<scalar_t*> outs_;
  std::vector<const acc_t*> in_coefs_, out_coefs_;  // nullptr: coefficient 1
  const acc_t* noise_coef_ = nullptr;               // nullptr: no drawn noise
  const int64_t* t_ = nullptr;                      // nullptr: no tables
  NoiseKey key_;
  bool passthrough_ = false, fuse_out_ = false;
  int64_t chunk_ = 1;  // planes per chunk
};

std::vector<at::Tensor> map_cpu(const MapRequest& r) {
  std::vector<at::Tensor> outs;
  const at::Tensor& x = r.inputs[0];
  for (size_t m = 0; m < r.out_coefs.size(); ++m) {
    outs.push_back(at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous)));
  }
  if (r.planes() == 0) return outs;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "blurdiff_spectral_map_cpu",
                                  [&] { CpuMap<scalar_t>(r, outs).run(); });
  return outs;
}

using CpuOps = SpectralOps<map_cpu>;

}  // namespace
}  // namespace blurdiff

TORCH_LIBRARY_IMPL(blurdiff_ops, CPU, m) { BLURDIFF_REGISTER_SPECTRAL_OPS(m, blurdiff::CpuOps); }
