// The CUDA kernels of the spectral map: device code only (the __global__ kernels, their
// parameter blocks and __device__ helpers). The host code that plans and launches them is in
// spectral_launch.cuh.
//
// Written as plain SIMT code (no warp intrinsics, no tensor cores) so that it compiles both
// with nvcc and with g++ under the host emulation of emulation/simt_host.h, which runs these
// very kernels on the CPU in the test suite.
//
// Two kernels:
// - spectral_map_fused_kernel: the whole map of a plane in shared memory (load, transform, scale
//   and sum every input, add the noise, transform back, write). Shared memory holds the plane's
//   three working buffers, the basis blocks of both sides (staged once per block) and four small
//   index maps (FusedPlan). Each side of the transform is two passes: a fold (or copy) that lays
//   the data out in the side's padded order, then a product by the side's blocks (going back: the
//   product, then the unfold). Products are register-tiled: each thread computes 4 x 4 outputs at
//   a time from 4 x 4 fragments of both operands, read as 16-byte vectors, so each shared-memory
//   load feeds 8 multiply-adds (tile_product). One launch with a block per plane (kStageWhole),
//   or, where planes are too few to fill the GPU, two launches with `bands` blocks per plane: the
//   spectrum's row bands to a global buffer (kStageToSpectrum), then the outputs' row bands from
//   it (kStageFromSpectrum). No band computes a product another band also computes.
// - spectral_combine_kernel: the middle of the GEMM path (the transforms are batched matmuls, on
//   the host side): the coefficients, the sum and the noise, a quad per thread.
#pragma once

#include <c10/macros/Macros.h>

#include <cstdint>

#include "../path_cost.h"
#include "../spectral_common.h"

#if defined(__CUDACC__)
#include <ATen/cuda/PhiloxUtils.cuh>
#define BLURDIFF_DYNAMIC_SMEM(type, name)                            \
  extern __shared__ __align__(16) unsigned char blurdiff_smem_raw[]; \
  type* name = reinterpret_cast<type*>(blurdiff_smem_raw)
#define BLURDIFF_LDG(ptr) __ldg(ptr)
#else
#define BLURDIFF_DYNAMIC_SMEM(type, name) type* name = reinterpret_cast<type*>(::blurdiff::emu::dynamic_smem())
#define BLURDIFF_LDG(ptr) (*(ptr))
#endif

namespace blurdiff {

// Threads per block of both kernels.
constexpr int kThreads = 256;

// The Philox (seed, offset) of a launch: the CUDA generator's state, unpacked on the device
// (so CUDA graphs capture it), or plain numbers in the emulation.
#if defined(__CUDACC__)
using RngState = at::PhiloxCudaState;
__device__ inline void unpack_rng(const RngState& s, uint64_t* seed, uint64_t* offset) {
  auto unpacked = at::cuda::philox::unpack(s);
  *seed = std::get<0>(unpacked);
  *offset = std::get<1>(unpacked);
}
#else
struct RngState {
  uint64_t seed = 0, offset = 0;
};
inline void unpack_rng(const RngState& s, uint64_t* seed, uint64_t* offset) {
  *seed = s.seed;
  *offset = s.offset;
}
#endif

// How the fused kernel multiplies by one side's basis U [n, n] (even_odd.h's SideSplit, on the
// device; the kinds are path_cost.h's SideKind): the dense U; nothing (U = I); or the even/odd
// halves, E [ne, ne] then O [no, no] row-major in `blocks`, and `slot` [2 n]: column -> slot,
// then slot -> column (SideSplit::indices). The layout of its shared memory is path_cost.h's
// FusedPlan.

template <typename acc_t>
struct SideOperator {
  int kind;
  int64_t ne;
  const acc_t* U;
  const acc_t* blocks;
  const int32_t* slot;
};

// What a launch of the fused kernel does: the whole map, or one of its halves over row bands
// (path_cost.h's FusedPlan::gather_units and emit_units).
enum FusedStage : int { kStageWhole, kStageToSpectrum, kStageFromSpectrum };

// The fused kernel's arguments (by value, so at most kMaxIO inputs and outputs).
template <typename scalar_t, typename acc_t>
struct MapParams {
  const scalar_t* in[kMaxIO];
  const acc_t* in_coef[kMaxIO];  // nullptr: coefficient 1
  scalar_t* out[kMaxIO];
  const acc_t* out_coef[kMaxIO];
  int num_in, num_out;
  const acc_t* noise_coef;  // nullptr: no drawn noise
  const int64_t* t;         // nullptr: no tables
  int64_t T, planes_per_sample, H, W;
  SideOperator<acc_t> h, w;
  bool forward, inverse;
  RngState rng;
  int stage, bands;  // FusedStage; blocks per plane (1 for kStageWhole)
  acc_t* spectrum;   // split stages: [planes, rows, ld], the summed spectrum in padded order
};

// The combine kernel's arguments: out = Σ_i c_i[t] ⊙ in_i (+ n[t] ⊙ z̄), planes of acc_t.
template <typename acc_t>
struct CombineParams {
  const acc_t* in[kMaxIO];
  const acc_t* coef[kMaxIO];
  int num_in;
  const acc_t* noise_coef;
  acc_t* out;
  const int64_t* t;
  int64_t T, planes, planes_per_sample, H, W;
  RngState rng;
};

// A quad of the combine kernel: row r, columns c0 .. c0 + 3, of which `lanes` (those < W) exist.
struct Quad {
  int64_t r, c0;
  int lanes;
};

C10_HOST_DEVICE inline Quad quad_at(int64_t q, int64_t W) {
  const int64_t Wq = quads_per_row(W);
  Quad d;
  d.r = q / Wq;
  d.c0 = 4 * (q % Wq);
  d.lanes = static_cast<int>(W - d.c0 < 4 ? W - d.c0 : 4);
  return d;
}

C10_HOST_DEVICE inline int64_t row_at(int64_t p, int64_t planes_per_sample, const int64_t* t, int64_t T) {
  if (t == nullptr) return 0;
  const int64_t tb = t[p / planes_per_sample];
  CUDA_KERNEL_ASSERT_MSG(tb >= 0 && tb < T, "blurdiff_ops: t out of range of the coefficient tables");
  return tb;
}

// 4 consecutive values at a 16-byte aligned address: one 16-byte load on the GPU (LDS.128), or
// two for float64. The emulation checks the alignment the GPU's vector loads need.
template <typename T>
C10_DEVICE inline void load4(const T* p, T (&v)[4]) {
#if defined(__CUDACC__)
  if constexpr (sizeof(T) == 4) {
    const float4 q = *reinterpret_cast<const float4*>(p);
    v[0] = q.x, v[1] = q.y, v[2] = q.z, v[3] = q.w;
  } else {
    const double2 a = reinterpret_cast<const double2*>(p)[0], b = reinterpret_cast<const double2*>(p)[1];
    v[0] = a.x, v[1] = a.y, v[2] = b.x, v[3] = b.y;
  }
#else
  CUDA_KERNEL_ASSERT_MSG(reinterpret_cast<uintptr_t>(p) % 16 == 0, "blurdiff_ops: misaligned vector load");
#pragma unroll
  for (int j = 0; j < 4; ++j) v[j] = p[j];
#endif
}

template <typename T>
C10_DEVICE inline void store4(T* p, const T (&v)[4]) {
#if defined(__CUDACC__)
  if constexpr (sizeof(T) == 4) {
    *reinterpret_cast<float4*>(p) = make_float4(v[0], v[1], v[2], v[3]);
  } else {
    reinterpret_cast<double2*>(p)[0] = make_double2(v[0], v[1]);
    reinterpret_cast<double2*>(p)[1] = make_double2(v[2], v[3]);
  }
#else
  CUDA_KERNEL_ASSERT_MSG(reinterpret_cast<uintptr_t>(p) % 16 == 0, "blurdiff_ops: misaligned vector store");
#pragma unroll
  for (int j = 0; j < 4; ++j) p[j] = v[j];
#endif
}

// c[i][j] += Σ_k A(i, k) B(k, j) for i, j < 4 and k < K (a multiple of 4), every operand in shared
// memory: A(i, k) = A[k * lda + i] (A_KMAJOR) or A[i * lda + k]; B(k, j) = B[k * ldb + j]
// (B_KMAJOR) or B[j * ldb + k]. Per 4 values of k: 8 vector loads, 64 multiply-adds.
template <bool A_KMAJOR, bool B_KMAJOR, typename acc_t>
C10_DEVICE inline void tile_product(const acc_t* A, int lda, const acc_t* B, int ldb, int K, acc_t (&c)[4][4]) {
  for (int k = 0; k < K; k += 4) {
    acc_t a[4][4], b[4][4];  // a[i][q] = A(i, k + q), b[q][j] = B(k + q, j)
#pragma unroll
    for (int x = 0; x < 4; ++x) {
      acc_t v[4];
      load4(A_KMAJOR ? A + (k + x) * lda : A + x * lda + k, v);
#pragma unroll
      for (int y = 0; y < 4; ++y) a[A_KMAJOR ? y : x][A_KMAJOR ? x : y] = v[y];
      load4(B_KMAJOR ? B + (k + x) * ldb : B + x * ldb + k, v);
#pragma unroll
      for (int y = 0; y < 4; ++y) b[B_KMAJOR ? x : y][B_KMAJOR ? y : x] = v[y];
    }
#pragma unroll
    for (int q = 0; q < 4; ++q)
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) c[i][j] += a[i][q] * b[q][j];
  }
}

// The product of one side over rows [r0, r0 + rows) of src -> the same rows of dst (row stride
// ld, the fused layout): each 4 x 4 output tile takes the basis block (E or O) its transformed
// position falls in.
//   ROWS, forward:   dst[q][c] = Σ_p B[p][q] src[p][c]   (U_h^T ·, the halves' E^T and O^T)
//   ROWS, inverse:   dst[l][c] = Σ_s B[l][s] src[s][c]   (U_h ·)
//   columns, forward: dst[r][q] = Σ_p src[r][p] B[p][q]  (· U_w)
//   columns, inverse: dst[r][l] = Σ_s src[r][s] B[l][s]  (· U_w^T)
// with p, q, s, l relative to the block's first position. A ROWS product reads every row of its
// block, whatever rows it writes.
template <bool ROWS, bool FORWARD, typename acc_t>
C10_DEVICE inline void side_product(const acc_t* src, acc_t* dst, const acc_t* basis, const SideShape& S, int r0,
                                    int rows, int ld) {
  const int tiles_n = ld / 4, tiles = rows / 4 * tiles_n;
  for (int tile = threadIdx.x; tile < tiles; tile += kThreads) {
    const int i0 = r0 + tile / tiles_n * 4, j0 = tile % tiles_n * 4;
    const int pos = ROWS ? i0 : j0;  // on the transformed side
    const bool even = pos < S.e4;
    const int first = even ? 0 : S.e4, len = even ? S.e4 : S.o4;
    const acc_t* block = even ? basis : basis + S.e4 * S.e4;
    acc_t c[4][4] = {};
    if (ROWS) {
      const acc_t* b = src + first * ld + j0;
      if (FORWARD) {
        tile_product<true, true>(block + (i0 - first), len, b, ld, len, c);
      } else {
        tile_product<false, true>(block + (i0 - first) * len, len, b, ld, len, c);
      }
    } else {
      const acc_t* a = src + i0 * ld + first;
      if (FORWARD) {
        tile_product<false, true>(a, ld, block + (j0 - first), len, len, c);
      } else {
        tile_product<false, false>(a, ld, block + (j0 - first) * len, len, len, c);
      }
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) store4(dst + (i0 + i) * ld + j0, c[i]);
  }
}

// Position p of a side's padded order from a line x of its original order (x(l), l < n): the
// even/odd folds fold+(x)[p] = x[p] + x[n-1-p] (p < no; the middle x[no] of an odd n at p = no)
// and fold-(x)[p - e4] = x[..] - x[n-1-..]; dense and identity sides copy; pads are zero.
template <typename acc_t, class Line>
C10_DEVICE inline acc_t fold_at(const SideShape& S, int p, const Line& x) {
  if (!S.even_odd) return p < S.n ? x(p) : acc_t(0);
  if (p < S.no) return x(p) + x(S.n - 1 - p);
  if (p < S.ne) return x(p);  // the middle element of an odd n
  const int i = p - S.e4;
  return i >= 0 && i < S.no ? x(i) - x(S.n - 1 - i) : acc_t(0);
}

// Position l < n of the original order from a line y of padded order holding e at [0, ne) and o
// at [e4, e4 + no): y(l) + y(e4 + l) for l < no, y(no) for the middle of an odd n, and
// e - o mirrored for l >= ne; dense and identity sides copy.
template <typename acc_t, class Line>
C10_DEVICE inline acc_t unfold_at(const SideShape& S, int l, const Line& y) {
  if (!S.even_odd) return y(l);
  const int i = l < S.ne ? l : S.n - 1 - l;
  if (i == S.no) return y(i);
  return l < S.ne ? y(i) + y(S.e4 + i) : y(i) - y(S.e4 + i);
}

// Copies the basis blocks of a side into shared memory, zero-padded (E then O; dense U as E),
// and writes its maps: to_orig[p] (padded -> original, -1 on pads) and to_padded[l].
template <typename acc_t>
C10_DEVICE inline void stage_side(const SideOperator<acc_t>& op, const SideShape& S, acc_t* basis, int32_t* to_orig,
                                  int32_t* to_padded) {
  for (int v = threadIdx.x; v < S.basis_size(); v += kThreads) {
    const bool even = v < S.e4 * S.e4;
    const int len = even ? S.e4 : S.o4, valid = even ? S.ne : S.no, k = even ? v : v - S.e4 * S.e4;
    const int r = k / len, c = k % len;
    const acc_t* block = S.even_odd ? (even ? op.blocks : op.blocks + S.ne * S.ne) : op.U;
    basis[v] = r < valid && c < valid ? BLURDIFF_LDG(block + r * valid + c) : acc_t(0);
  }
  const int32_t* order = S.even_odd ? op.slot + S.n : nullptr;
  for (int p = threadIdx.x; p < S.padded(); p += kThreads) {
    const int i = p < S.e4 ? p : S.ne + p - S.e4;  // slot
    const bool valid = p < S.e4 ? p < S.ne : p - S.e4 < S.no;
    to_orig[p] = !valid ? -1 : S.even_odd ? BLURDIFF_LDG(order + i) : i;
  }
  for (int l = threadIdx.x; l < S.n; l += kThreads) {
    const int s = S.even_odd ? BLURDIFF_LDG(op.slot + l) : l;
    to_padded[l] = s < S.ne ? s : S.e4 + s - S.ne;
  }
}

// The original row of row j of an output band (rows 4 u0 + j of the first half for j < R, then
// their mirrors n - 1 - (4 u0 + j - R) on an even/odd side), or -1 on a pad.
C10_DEVICE inline int band_row(const SideShape& S, int u0, int R, int j) {
  const int i = 4 * u0 + (j < R ? j : j - R);
  if (j < R) return i < S.ne ? i : -1;
  return i < S.no ? S.n - 1 - i : -1;
}

// ---------------------------------------------------------------------------------------------
// Kernels.

// Block b of plane p is blockIdx.x = p * bands + b; dynamic shared memory as FusedPlan lays it
// out. At least one block per SM is all the launch bounds ask: without it ptxas held the float64
// kernel to 128 registers and spilled.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads, 1) spectral_map_fused_kernel(const MapParams<scalar_t, acc_t> prm) {
  BLURDIFF_DYNAMIC_SMEM(acc_t, X);
  const FusedPlan plan(prm.h.kind, prm.H, prm.h.ne, prm.w.kind, prm.W, prm.w.ne);
  const SideShape &sh = plan.h, &sw = plan.w;
  const int H = sh.n, W = sw.n, n = H * W, rows = plan.rows, ld = plan.ld, plane = plan.plane;
  acc_t* T = X + plane;
  acc_t* A = T + plane;
  acc_t* basis_h = A + plane;
  acc_t* basis_w = basis_h + sh.basis_size();
  int32_t* row_orig = reinterpret_cast<int32_t*>(basis_w + sw.basis_size());
  int32_t* col_orig = row_orig + rows;
  int32_t* row_padded = col_orig + ld;
  int32_t* col_padded = row_padded + H;
  const int64_t p = blockIdx.x / prm.bands;
  const int b = static_cast<int>(blockIdx.x % prm.bands);
  const int64_t tb = row_at(p, prm.planes_per_sample, prm.t, prm.T);
  const bool forward = prm.forward && !(sh.identity && sw.identity);
  const bool inverse = prm.inverse && !(sh.identity && sw.identity);
  acc_t* spectrum = prm.spectrum == nullptr ? nullptr : prm.spectrum + p * plane;

  stage_side(prm.h, sh, basis_h, row_orig, row_padded);
  stage_side(prm.w, sw, basis_w, col_orig, col_padded);
  for (int e = threadIdx.x; e < plane; e += kThreads) {
    A[e] = prm.stage == kStageFromSpectrum ? spectrum[e] : acc_t(0);
  }
  __syncthreads();

  if (prm.stage != kStageFromSpectrum) {
    // Rows [g0, g0 + G) of A = Σ_i c_i[t] ⊙ F(x_i), in padded order
    const Band band = band_of(plan.gather_units(), prm.bands, b);
    const int g0 = 4 * band.first, G = 4 * (band.last - band.first);
    for (int i = 0; i < prm.num_in; ++i) {
      const scalar_t* x = prm.in[i] + p * n;
      acc_t* cur = T;
      if (forward) {  // rows first, as the band's products need every row: T = x folded along the rows
        for (int e = threadIdx.x; e < plane; e += kThreads) {
          const int c = e % ld;
          T[e] = c < W ? fold_at<acc_t>(sh, e / ld, [&](int l) { return static_cast<acc_t>(x[l * W + c]); }) : acc_t(0);
        }
        __syncthreads();
      }
      if (forward && !sh.identity) {
        side_product<true, true>(T, X, basis_h, sh, g0, G, ld);
        __syncthreads();
        cur = X;
      }
      if (forward && !sw.identity) {
        acc_t* other = cur == X ? T : X;
        for (int e = threadIdx.x; e < G * ld; e += kThreads) {
          const int r = g0 + e / ld;
          other[r * ld + e % ld] = fold_at<acc_t>(sw, e % ld, [&](int l) { return cur[r * ld + l]; });
        }
        __syncthreads();
        side_product<false, true>(other, cur, basis_w, sw, g0, G, ld);
        __syncthreads();
      }
      const acc_t* cf = prm.in_coef[i] == nullptr ? nullptr : table_row(prm.in_coef[i], tb, n);
      for (int e = threadIdx.x; e < G * W; e += kThreads) {
        const int q = g0 + e / W, c = e % W, r = row_orig[q];
        if (r < 0) continue;
        const int at = q * ld + col_padded[c];
        // Without a forward transform x is a spectrum in the original order.
        const acc_t s = forward ? cur[at] : static_cast<acc_t>(x[r * W + c]);
        A[at] += cf == nullptr ? s : BLURDIFF_LDG(cf + r * W + c) * s;
      }
      __syncthreads();  // cur is overwritten by the next input
    }

    // + n[t] ⊙ z̄, each thread drawing the Philox blocks of quads of the original order
    if (prm.noise_coef != nullptr) {
      uint64_t seed, offset;
      unpack_rng(prm.rng, &seed, &offset);
      const acc_t* nc = table_row(prm.noise_coef, tb, n);
      const int wq = static_cast<int>(quads_per_row(W));
      for (int e = threadIdx.x; e < G * wq; e += kThreads) {
        const int q = g0 + e / wq, c0 = e % wq * 4, r = row_orig[q];
        if (r < 0) continue;
        float z[4];
        noise_block(seed, offset, p, r, c0 / 4, W, z);
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          if (c0 + j < W)
            A[q * ld + col_padded[c0 + j]] += BLURDIFF_LDG(nc + r * W + c0 + j) * static_cast<acc_t>(z[j]);
        }
      }
      __syncthreads();
    }
    if (prm.stage == kStageToSpectrum) {
      for (int e = threadIdx.x; e < G * ld; e += kThreads) spectrum[g0 * ld + e] = A[g0 * ld + e];
      return;
    }
  }

  // out_m = G(d_m[t] ⊙ A), on the output band's R + R2 rows
  const Band band = band_of(plan.emit_units(), prm.bands, b);
  const int u0 = band.first, R = 4 * (band.last - band.first);
  const int mirrored = sh.even_odd && sh.o4 > 4 * u0 ? sh.o4 - 4 * u0 : 0;  // rows of the odd half's block
  const int R2 = mirrored < R ? mirrored : R;
  for (int m = 0; m < prm.num_out; ++m) {
    const acc_t* cf = prm.out_coef[m] == nullptr ? nullptr : table_row(prm.out_coef[m], tb, n);
    const acc_t* cur = A;
    if (cf != nullptr) {
      for (int e = threadIdx.x; e < plane; e += kThreads) {
        const int r = row_orig[e / ld], c = col_orig[e % ld];
        X[e] = r < 0 || c < 0 ? acc_t(0) : BLURDIFF_LDG(cf + r * W + c) * A[e];
      }
      __syncthreads();
      cur = X;
    }
    scalar_t* y = prm.out[m] + p * n;
    if (!inverse) {  // the spectrum in the original order
      for (int e = threadIdx.x; e < (R + R2) * W; e += kThreads) {
        const int r = band_row(sh, u0, R, e / W), c = e % W;
        if (r >= 0) y[r * W + c] = static_cast<scalar_t>(cur[row_padded[r] * ld + col_padded[c]]);
      }
      __syncthreads();  // the next output overwrites X
      continue;
    }
    // The band's rows transformed back along the columns, in band order
    const acc_t* lines = cur + 4 * u0 * ld;
    if (!sh.identity) {
      side_product<true, false>(cur, T, basis_h, sh, 4 * u0, R, ld);
      if (R2 > 0) side_product<true, false>(cur, T, basis_h, sh, sh.e4 + 4 * u0, R2, ld);
      __syncthreads();
      for (int e = threadIdx.x; e < (R + R2) * ld; e += kThreads) {
        const int r = band_row(sh, u0, R, e / ld), c = e % ld;
        X[e] = r < 0 ? acc_t(0) : unfold_at<acc_t>(sh, r, [&](int l) { return T[l * ld + c]; });
      }
      __syncthreads();
      lines = X;
    }
    if (!sw.identity) {
      side_product<false, false>(lines, T, basis_w, sw, 0, R + R2, ld);
      __syncthreads();
      lines = T;
    }
    for (int e = threadIdx.x; e < (R + R2) * W; e += kThreads) {
      const int j = e / W, r = band_row(sh, u0, R, j);
      if (r >= 0)
        y[r * W + e % W] = static_cast<scalar_t>(unfold_at<acc_t>(sw, e % W, [&](int l) { return lines[j * ld + l]; }));
    }
    __syncthreads();  // the next output overwrites X and T
  }
}

// The GEMM path's middle: a grid-stride loop over all quads of all planes, one thread a quad.
template <typename acc_t>
__global__ void __launch_bounds__(kThreads) spectral_combine_kernel(const CombineParams<acc_t> prm) {
  const int64_t nq_plane = prm.H * quads_per_row(prm.W), n = prm.H * prm.W;
  const int64_t total = prm.planes * nq_plane;
  uint64_t seed = 0, offset = 0;
  if (prm.noise_coef != nullptr) unpack_rng(prm.rng, &seed, &offset);
  for (int64_t g = blockIdx.x * static_cast<int64_t>(kThreads) + threadIdx.x; g < total;
       g += static_cast<int64_t>(gridDim.x) * kThreads) {
    const int64_t p = g / nq_plane;
    const Quad d = quad_at(g % nq_plane, prm.W);
    const int64_t tb = row_at(p, prm.planes_per_sample, prm.t, prm.T);
    const int64_t e0 = d.r * prm.W + d.c0;
    acc_t s[4] = {0, 0, 0, 0};
    for (int i = 0; i < prm.num_in; ++i) {
      const acc_t* x = prm.in[i] + p * n + e0;
      const acc_t* cf = prm.coef[i] == nullptr ? nullptr : table_row(prm.coef[i], tb, n) + e0;
#pragma unroll
      for (int j = 0; j < 4; ++j)
        if (j < d.lanes) s[j] += cf == nullptr ? x[j] : cf[j] * x[j];
    }
    if (prm.noise_coef != nullptr) {
      float z[4];
      noise_block(seed, offset, p, d.r, d.c0 / 4, prm.W, z);
      const acc_t* nc = table_row(prm.noise_coef, tb, n) + e0;
#pragma unroll
      for (int j = 0; j < 4; ++j)
        if (j < d.lanes) s[j] += nc[j] * static_cast<acc_t>(z[j]);
    }
#pragma unroll
    for (int j = 0; j < 4; ++j)
      if (j < d.lanes) prm.out[p * n + e0 + j] = s[j];
  }
}

}  // namespace blurdiff
