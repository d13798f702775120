// The CUDA kernels of the spectral map: device code only (the __global__ kernels, their
// parameter blocks and __device__ helpers). The host code that plans and launches them is in
// spectral_launch.cuh.
//
// Written as plain SIMT code (no warp intrinsics, no tensor cores) so that it compiles both
// with nvcc and with g++ under the host emulation of emulation/simt_host.h, which runs these
// very kernels on the CPU in the test suite.
//
// Two kernels:
// - spectral_map_fused_kernel: one block of kThreads threads per plane (H x W <= 128 x 128 and
//   the plane fits in shared memory): load, transform, scale and sum every input, add the
//   noise, transform back and write, all in one launch. The plane lives in shared memory with
//   rows padded to a multiple of 4; each thread owns "quads" of 4 adjacent columns of one row,
//   keeps the running sum for its quads in registers, and does the in-place transforms through
//   registers. Each side of the transform is a SideOperator: a dense product, none (the identity
//   basis), or the even/odd halves of even_odd.h at half the multiply-adds. Between the
//   transforms the plane is in the original frequency order (the tables and the noise keys are);
//   the split order of the halves exists only inside one side's inverse.
// - spectral_combine_kernel: the middle of the GEMM path for larger planes (the transforms are
//   batched matmuls, on the host side): the coefficients, the sum and the noise, a quad per thread.
#pragma once

#include <c10/macros/Macros.h>

#include <cstdint>

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
// Quads per thread of the fused kernel: planes up to kThreads * 4 * 16 = 128 x 128 elements.
constexpr int kMaxQuadsPerThread = 16;

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
// device): the dense U; nothing (U = I); or the even/odd halves, E [ne, ne] then O [no, no]
// row-major in `blocks`, and `slot` [n], the inverse of SideSplit::order: column c of U is
// column slot[c] of E when slot[c] < ne, else column slot[c] - ne of O.
enum SideKind : int { kSideDense, kSideEvenOdd, kSideIdentity };

template <typename acc_t>
struct SideOperator {
  int kind;
  int64_t ne;
  const acc_t* U;
  const acc_t* blocks;
  const int32_t* slot;
};

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

// ---------------------------------------------------------------------------------------------
// Device helpers. A quad is (row r, first column c0 = 4 * cq); its 4 lanes are columns c0 .. c0+3,
// of which only those < W exist. In shared memory, row r starts at r * W4 with W4 = 4 * ceil(W/4).

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

// Calls f(k, quad) for the quads this thread owns: q = threadIdx.x + k * kThreads, k < QPT.
template <int QPT, class F>
C10_DEVICE inline void for_my_quads(int64_t H, int64_t W, F&& f) {
  const int64_t nq = H * quads_per_row(W);
#pragma unroll
  for (int k = 0; k < QPT; ++k) {
    const int64_t q = threadIdx.x + static_cast<int64_t>(k) * kThreads;
    if (q >= nq) break;
    f(k, quad_at(q, W));
  }
}

C10_HOST_DEVICE inline int64_t row_at(int64_t p, int64_t planes_per_sample, const int64_t* t, int64_t T) {
  if (t == nullptr) return 0;
  const int64_t tb = t[p / planes_per_sample];
  CUDA_KERNEL_ASSERT_MSG(tb >= 0 && tb < T, "blurdiff_ops: t out of range of the coefficient tables");
  return tb;
}

// buf <- buf · M, M = U_w (TRANSPOSED = false) or U_w^T: out[r][c] = Σ_l buf[r][l] M[l][c].
template <bool TRANSPOSED, int QPT, typename acc_t>
C10_DEVICE inline void right_multiply(acc_t* buf, const acc_t* U, int64_t H, int64_t W, acc_t (&v)[QPT][4]) {
  const int64_t W4 = 4 * quads_per_row(W);
  for_my_quads<QPT>(H, W, [&](int k, const Quad& d) {
    acc_t s[4] = {0, 0, 0, 0};
    const acc_t* row = buf + d.r * W4;
    for (int64_t l = 0; l < W; ++l) {
      const acc_t x = row[l];
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int64_t c = d.c0 + j < W ? d.c0 + j : W - 1;  // padding lanes: any valid column
        s[j] += x * BLURDIFF_LDG(TRANSPOSED ? U + c * W + l : U + l * W + c);
      }
    }
#pragma unroll
    for (int j = 0; j < 4; ++j) v[k][j] = s[j];
  });
}

// buf <- M · buf, M = U_h^T (TRANSPOSED = true) or U_h: out[r][c] = Σ_l M[r][l] buf[l][c].
template <bool TRANSPOSED, int QPT, typename acc_t>
C10_DEVICE inline void left_multiply(acc_t* buf, const acc_t* U, int64_t H, int64_t W, acc_t (&v)[QPT][4]) {
  const int64_t W4 = 4 * quads_per_row(W);
  for_my_quads<QPT>(H, W, [&](int k, const Quad& d) {
    acc_t s[4] = {0, 0, 0, 0};
    for (int64_t l = 0; l < H; ++l) {
      const acc_t m = BLURDIFF_LDG(TRANSPOSED ? U + l * H + d.r : U + d.r * H + l);
      const acc_t* col = buf + l * W4 + d.c0;
#pragma unroll
      for (int j = 0; j < 4; ++j) s[j] += m * col[j];
    }
#pragma unroll
    for (int j = 0; j < 4; ++j) v[k][j] = s[j];
  });
}

// Every thread has computed its quads into v; once all have read buf, write v back: in place, or
// with the rows (row_slot) or the columns (col_slot) moved to their slots of the split order.
template <int QPT, typename acc_t>
C10_DEVICE inline void store_quads(acc_t* buf, int64_t H, int64_t W, const acc_t (&v)[QPT][4],
                                   const int32_t* row_slot = nullptr, const int32_t* col_slot = nullptr) {
  const int64_t W4 = 4 * quads_per_row(W);
  __syncthreads();
  for_my_quads<QPT>(H, W, [&](int k, const Quad& d) {
    acc_t* row = buf + (row_slot == nullptr ? d.r : BLURDIFF_LDG(row_slot + d.r)) * W4;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      if (col_slot == nullptr) {
        row[d.c0 + j] = v[k][j];
      } else if (j < d.lanes) {  // padding lanes have no slot
        row[BLURDIFF_LDG(col_slot + d.c0 + j)] = v[k][j];
      }
    }
  });
  __syncthreads();
}

// The even/odd products (even_odd.h). The forward ones fold on the fly and write each slot to
// its column, so they read and write the original order; the inverse ones read and write the
// split order, and unfold_rows / unfold_columns then combine e and o into the original order.

// Offsets into E and O are int: a side of a fused plane (H * quads_per_row(W) <= 4096) has at most
// 16384 elements, so ne * ne < 2^31.

// buf · U_w through the folds: column c is slot s = slot[c], E's column s against
// fold+(row)[l] = row[l] + row[W-1-l], or O's column s - ne against fold-(row)[l].
template <int QPT, typename acc_t>
C10_DEVICE inline void right_fold(const acc_t* buf, const SideOperator<acc_t>& S, int64_t H, int64_t W,
                                  acc_t (&v)[QPT][4]) {
  const int64_t W4 = 4 * quads_per_row(W);
  const int ne = static_cast<int>(S.ne), no = static_cast<int>(W) - ne;
  for_my_quads<QPT>(H, W, [&](int k, const Quad& d) {
    int off[4];  // lane j's column of E (row stride ne) or O (row stride no) in S.blocks
    bool even[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int s = BLURDIFF_LDG(S.slot + (d.c0 + j < W ? d.c0 + j : W - 1));  // padding lanes: any column
      even[j] = s < ne;
      off[j] = even[j] ? s : ne * ne + (s - ne);
    }
    const acc_t* row = buf + d.r * W4;
    acc_t s[4] = {0, 0, 0, 0};
    for (int l = 0; l < no; ++l) {
      const acc_t a = row[l], b = row[W - 1 - l], plus = a + b, minus = a - b;
#pragma unroll
      for (int j = 0; j < 4; ++j)
        s[j] += (even[j] ? plus : minus) * BLURDIFF_LDG(S.blocks + off[j] + l * (even[j] ? ne : no));
    }
    if (ne > no) {  // odd W: the middle element, in fold+ only
      const acc_t m = row[no];
#pragma unroll
      for (int j = 0; j < 4; ++j)
        if (even[j]) s[j] += m * BLURDIFF_LDG(S.blocks + off[j] + no * ne);
    }
#pragma unroll
    for (int j = 0; j < 4; ++j) v[k][j] = s[j];
  });
}

// U_h^T · buf through the folds: row r is slot s = slot[r], E's column s against
// fold+(buf)[l] = buf[l] + buf[H-1-l] (rows), or O's column s - ne against fold-(buf)[l].
template <int QPT, typename acc_t>
C10_DEVICE inline void left_fold(const acc_t* buf, const SideOperator<acc_t>& S, int64_t H, int64_t W,
                                 acc_t (&v)[QPT][4]) {
  const int64_t W4 = 4 * quads_per_row(W);
  const int ne = static_cast<int>(S.ne), no = static_cast<int>(H) - ne;
  for_my_quads<QPT>(H, W, [&](int k, const Quad& d) {
    const int slot = BLURDIFF_LDG(S.slot + d.r);
    const bool even = slot < ne;
    const acc_t* u = S.blocks + (even ? slot : ne * ne + (slot - ne));
    const int stride = even ? ne : no;
    const acc_t sign = even ? acc_t(1) : acc_t(-1);
    acc_t s[4] = {0, 0, 0, 0};
    for (int l = 0; l < no; ++l) {
      const acc_t m = BLURDIFF_LDG(u + l * stride);
      const acc_t* top = buf + l * W4 + d.c0;
      const acc_t* bottom = buf + (H - 1 - l) * W4 + d.c0;
#pragma unroll
      for (int j = 0; j < 4; ++j) s[j] += m * (top[j] + sign * bottom[j]);
    }
    if (even && ne > no) {  // odd H: the middle row, in fold+ only
      const acc_t m = BLURDIFF_LDG(u + no * ne);
      const acc_t* middle = buf + no * W4 + d.c0;
#pragma unroll
      for (int j = 0; j < 4; ++j) s[j] += m * middle[j];
    }
#pragma unroll
    for (int j = 0; j < 4; ++j) v[k][j] = s[j];
  });
}

// The halves of U_h · buf, rows in split order on both sides: row s < ne is e[s] = E[s] · buf[0, ne),
// row ne + i is o[i] = O[i] · buf[ne, H).
template <int QPT, typename acc_t>
C10_DEVICE inline void left_halves(const acc_t* buf, const SideOperator<acc_t>& S, int64_t H, int64_t W,
                                   acc_t (&v)[QPT][4]) {
  const int64_t W4 = 4 * quads_per_row(W);
  const int ne = static_cast<int>(S.ne), no = static_cast<int>(H) - ne;
  for_my_quads<QPT>(H, W, [&](int k, const Quad& d) {
    const int r = static_cast<int>(d.r);
    const bool even = r < ne;
    const acc_t* u = S.blocks + (even ? r * ne : ne * ne + (r - ne) * no);
    const int len = even ? ne : no;
    const acc_t* first = buf + (even ? 0 : ne) * W4 + d.c0;
    acc_t s[4] = {0, 0, 0, 0};
    for (int l = 0; l < len; ++l) {
      const acc_t m = BLURDIFF_LDG(u + l);
      const acc_t* col = first + l * W4;
#pragma unroll
      for (int j = 0; j < 4; ++j) s[j] += m * col[j];
    }
#pragma unroll
    for (int j = 0; j < 4; ++j) v[k][j] = s[j];
  });
}

// The halves of buf · U_w^T, columns in split order on both sides: column s < ne is
// e[s] = row[0, ne) · E[s], column ne + i is o[i] = row[ne, W) · O[i].
template <int QPT, typename acc_t>
C10_DEVICE inline void right_halves(const acc_t* buf, const SideOperator<acc_t>& S, int64_t H, int64_t W,
                                    acc_t (&v)[QPT][4]) {
  const int64_t W4 = 4 * quads_per_row(W);
  const int ne = static_cast<int>(S.ne), no = static_cast<int>(W) - ne;
  for_my_quads<QPT>(H, W, [&](int k, const Quad& d) {
    int off[4];  // lane j's row of E (against the row's first ne) or O (its last no) in S.blocks
    bool even[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int s = static_cast<int>(d.c0 + j < W ? d.c0 + j : W - 1);
      even[j] = s < ne;
      off[j] = even[j] ? s * ne : ne * ne + (s - ne) * no;
    }
    const acc_t* row = buf + d.r * W4;
    acc_t s[4] = {0, 0, 0, 0};
    for (int l = 0; l < no; ++l) {
#pragma unroll
      for (int j = 0; j < 4; ++j) s[j] += BLURDIFF_LDG(S.blocks + off[j] + l) * row[(even[j] ? 0 : ne) + l];
    }
    if (ne > no) {  // odd W: E's last column
#pragma unroll
      for (int j = 0; j < 4; ++j)
        if (even[j]) s[j] += BLURDIFF_LDG(S.blocks + off[j] + no) * row[no];
    }
#pragma unroll
    for (int j = 0; j < 4; ++j) v[k][j] = s[j];
  });
}

// From e (rows [0, ne)) and o (rows [ne, H)) to the original order:
// x[i] = e[i] + o[i], x[H-1-i] = e[i] - o[i] for i < no, and the middle row x[no] = e[no] of an odd H.
template <int QPT, typename acc_t>
C10_DEVICE inline void unfold_rows(const acc_t* buf, int64_t ne, int64_t H, int64_t W, acc_t (&v)[QPT][4]) {
  const int64_t W4 = 4 * quads_per_row(W), no = H - ne;
  for_my_quads<QPT>(H, W, [&](int k, const Quad& d) {
    const bool top = d.r < ne;
    const int64_t i = top ? d.r : H - 1 - d.r;
    const acc_t* e = buf + i * W4 + d.c0;
    const acc_t* o = buf + (ne + (i < no ? i : 0)) * W4 + d.c0;  // the middle row has no o
#pragma unroll
    for (int j = 0; j < 4; ++j) v[k][j] = i == no ? e[j] : top ? e[j] + o[j] : e[j] - o[j];
  });
}

// unfold_rows along the columns: e in columns [0, ne), o in [ne, W).
template <int QPT, typename acc_t>
C10_DEVICE inline void unfold_columns(const acc_t* buf, int64_t ne, int64_t H, int64_t W, acc_t (&v)[QPT][4]) {
  const int64_t W4 = 4 * quads_per_row(W), no = W - ne;
  for_my_quads<QPT>(H, W, [&](int k, const Quad& d) {
    const acc_t* row = buf + d.r * W4;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t c = d.c0 + j < W ? d.c0 + j : W - 1;
      const bool top = c < ne;
      const int64_t i = top ? c : W - 1 - c;
      v[k][j] = i == no ? row[i] : top ? row[i] + row[ne + i] : row[i] - row[ne + i];
    }
  });
}

// buf <- U_h^T · buf · U_w (to_spectral of the plane), a side at a time; the identity is skipped.
template <int QPT, typename acc_t>
C10_DEVICE inline void forward_transform(acc_t* buf, const SideOperator<acc_t>& Sh, const SideOperator<acc_t>& Sw,
                                         int64_t H, int64_t W, acc_t (&v)[QPT][4]) {
  if (Sw.kind != kSideIdentity) {
    if (Sw.kind == kSideEvenOdd) {
      right_fold(buf, Sw, H, W, v);
    } else {
      right_multiply<false>(buf, Sw.U, H, W, v);
    }
    store_quads(buf, H, W, v);
  }
  if (Sh.kind != kSideIdentity) {
    if (Sh.kind == kSideEvenOdd) {
      left_fold(buf, Sh, H, W, v);
    } else {
      left_multiply<true>(buf, Sh.U, H, W, v);
    }
    store_quads(buf, H, W, v);
  }
}

// v <- U_h · v · U_w^T (from_spectral of the plane each thread holds its quads of), through buf.
// Every write to buf starts with store_quads' barrier, so buf may still be read when this starts.
template <int QPT, typename acc_t>
C10_DEVICE inline void inverse_transform(acc_t* buf, const SideOperator<acc_t>& Sh, const SideOperator<acc_t>& Sw,
                                         int64_t H, int64_t W, acc_t (&v)[QPT][4]) {
  if (Sh.kind == kSideEvenOdd) {
    store_quads(buf, H, W, v, Sh.slot, nullptr);
    left_halves(buf, Sh, H, W, v);
    store_quads(buf, H, W, v);
    unfold_rows(buf, Sh.ne, H, W, v);
  } else if (Sh.kind == kSideDense) {
    store_quads(buf, H, W, v);
    left_multiply<false>(buf, Sh.U, H, W, v);
  }
  if (Sw.kind == kSideEvenOdd) {
    store_quads(buf, H, W, v, nullptr, Sw.slot);
    right_halves(buf, Sw, H, W, v);
    store_quads(buf, H, W, v);
    unfold_columns(buf, Sw.ne, H, W, v);
  } else if (Sw.kind == kSideDense) {
    store_quads(buf, H, W, v);
    right_multiply<true>(buf, Sw.U, H, W, v);
  }
}

// ---------------------------------------------------------------------------------------------
// Kernels.

// One block per plane p (blockIdx.x); dynamic shared memory: the plane, H rows of W4 acc_t.
template <typename scalar_t, typename acc_t, int QPT>
__global__ void __launch_bounds__(kThreads) spectral_map_fused_kernel(const MapParams<scalar_t, acc_t> prm) {
  BLURDIFF_DYNAMIC_SMEM(acc_t, buf);
  const int64_t p = blockIdx.x;
  const int64_t H = prm.H, W = prm.W, n = H * W, W4 = 4 * quads_per_row(W);
  const int64_t tb = row_at(p, prm.planes_per_sample, prm.t, prm.T);
  acc_t acc[QPT][4];
  acc_t v[QPT][4];
#pragma unroll
  for (int k = 0; k < QPT; ++k)
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[k][j] = 0;

  // acc = Σ_i c_i[t] ⊙ F(x_i)
  for (int i = 0; i < prm.num_in; ++i) {
    const scalar_t* x = prm.in[i] + p * n;
    for_my_quads<QPT>(H, W, [&](int, const Quad& d) {
#pragma unroll
      for (int j = 0; j < 4; ++j)
        buf[d.r * W4 + d.c0 + j] = j < d.lanes ? static_cast<acc_t>(x[d.r * W + d.c0 + j]) : acc_t(0);
    });
    __syncthreads();
    if (prm.forward) forward_transform(buf, prm.h, prm.w, H, W, v);
    const acc_t* cf = prm.in_coef[i] == nullptr ? nullptr : table_row(prm.in_coef[i], tb, n);
    for_my_quads<QPT>(H, W, [&](int k, const Quad& d) {
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        if (j < d.lanes) {
          const acc_t s = buf[d.r * W4 + d.c0 + j];
          acc[k][j] += cf == nullptr ? s : BLURDIFF_LDG(cf + d.r * W + d.c0 + j) * s;
        }
      }
    });
    __syncthreads();  // buf is reloaded by the next input
  }

  // + n[t] ⊙ z̄, each thread drawing the Philox blocks of its own quads
  if (prm.noise_coef != nullptr) {
    uint64_t seed, offset;
    unpack_rng(prm.rng, &seed, &offset);
    const acc_t* nc = table_row(prm.noise_coef, tb, n);
    for_my_quads<QPT>(H, W, [&](int k, const Quad& d) {
      float z[4];
      noise_block(seed, offset, p, d.r, d.c0 / 4, W, z);
#pragma unroll
      for (int j = 0; j < 4; ++j)
        if (j < d.lanes) acc[k][j] += BLURDIFF_LDG(nc + d.r * W + d.c0 + j) * static_cast<acc_t>(z[j]);
    });
  }

  // out_m = G(d_m[t] ⊙ acc)
  for (int m = 0; m < prm.num_out; ++m) {
    const acc_t* cf = prm.out_coef[m] == nullptr ? nullptr : table_row(prm.out_coef[m], tb, n);
    for_my_quads<QPT>(H, W, [&](int k, const Quad& d) {
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const acc_t c = (cf == nullptr || j >= d.lanes) ? acc_t(1) : BLURDIFF_LDG(cf + d.r * W + d.c0 + j);
        v[k][j] = c * acc[k][j];
      }
    });
    if (prm.inverse) inverse_transform(buf, prm.h, prm.w, H, W, v);
    scalar_t* y = prm.out[m] + p * n;
    for_my_quads<QPT>(H, W, [&](int k, const Quad& d) {
#pragma unroll
      for (int j = 0; j < 4; ++j)
        if (j < d.lanes) y[d.r * W + d.c0 + j] = static_cast<scalar_t>(v[k][j]);
    });
    // The next output's store_quads synchronises before it overwrites buf.
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
