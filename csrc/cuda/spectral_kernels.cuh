// The CUDA kernels of the spectral map, and the host code that plans and launches them.
//
// Written as plain SIMT code (no warp intrinsics, no tensor cores) so that it compiles both
// with nvcc and with g++ under the host emulation of emulation/simt_host.h, which runs these
// very kernels on the CPU in the test suite. The host code is a template over a Launcher
// (CUDA launches, or emulated ones) and is likewise shared.
//
// Two paths:
// - fused: one block of kThreads threads per plane (H x W <= 128 x 128 and the plane fits in
//   shared memory): load, transform, scale and sum every input, add the noise, transform
//   back and write, all in one launch. The plane lives in shared memory with rows padded to a
//   multiple of 4; each thread owns "quads" of 4 adjacent columns of one row, keeps the
//   running sum for its quads in registers, and does the in-place transforms through registers.
// - GEMM: larger planes use batched matmuls for the transforms and one combine kernel for
//   the coefficients and the noise.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/matmul.h>
#include <c10/macros/Macros.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <vector>

#include "../spectral_common.h"
#include "../spectral_map.h"

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

constexpr int kThreads = 256;
// Quads per thread of the fused kernel: planes up to kThreads * 4 * 16 = 128 x 128 elements.
constexpr int kMaxQuadsPerThread = 16;

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
  const acc_t* U_h;
  const acc_t* U_w;
  bool forward, inverse;
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

// Every thread has computed its quads into v; once all have read buf, write v back.
template <int QPT, typename acc_t>
C10_DEVICE inline void store_quads(acc_t* buf, int64_t H, int64_t W, const acc_t (&v)[QPT][4]) {
  const int64_t W4 = 4 * quads_per_row(W);
  __syncthreads();
  for_my_quads<QPT>(H, W, [&](int k, const Quad& d) {
#pragma unroll
    for (int j = 0; j < 4; ++j) buf[d.r * W4 + d.c0 + j] = v[k][j];
  });
  __syncthreads();
}

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
    if (prm.forward) {
      right_multiply<false>(buf, prm.U_w, H, W, v);
      store_quads(buf, H, W, v);
      left_multiply<true>(buf, prm.U_h, H, W, v);
      store_quads(buf, H, W, v);
    }
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
    if (prm.inverse) {
      store_quads(buf, H, W, v);
      left_multiply<false>(buf, prm.U_h, H, W, v);
      store_quads(buf, H, W, v);
      right_multiply<true>(buf, prm.U_w, H, W, v);
    }
    scalar_t* y = prm.out[m] + p * n;
    for_my_quads<QPT>(H, W, [&](int k, const Quad& d) {
#pragma unroll
      for (int j = 0; j < 4; ++j)
        if (j < d.lanes) y[d.r * W + d.c0 + j] = static_cast<scalar_t>(v[k][j]);
    });
    // The next output's store_quads synchronises before it overwrites buf.
  }
}

// The GEMM path's middle: out = Σ_i c_i[t] ⊙ in_i (+ n[t] ⊙ z̄), planes of acc_t, one thread a quad.
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

// ---------------------------------------------------------------------------------------------
// Host side, shared by the CUDA build and the emulation. A Launcher provides:
//   int64_t max_shared_memory();                         bytes of dynamic shared memory per block
//   RngState philox(const std::optional<at::Generator>&, uint64_t values_per_subsequence);
//   template <class K, class P> void launch(K kernel, int64_t grid, int64_t smem, const P& params);

inline int quads_per_thread(int64_t H, int64_t W) {
  const int64_t per_thread = (H * quads_per_row(W) + kThreads - 1) / kThreads;
  return per_thread <= 1 ? 1 : per_thread <= 4 ? 4 : per_thread <= kMaxQuadsPerThread ? kMaxQuadsPerThread : 0;
}

template <typename scalar_t, class Launcher>
void map_fused(const MapRequest& r, const std::vector<at::Tensor>& inputs, std::vector<at::Tensor>& outs,
               Launcher& launcher) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t H = r.H(), W = r.W();
  MapParams<scalar_t, acc_t> prm{};
  prm.num_in = static_cast<int>(inputs.size());
  prm.num_out = static_cast<int>(outs.size());
  for (int i = 0; i < prm.num_in; ++i) {
    prm.in[i] = inputs[i].data_ptr<scalar_t>();
    prm.in_coef[i] = table_ptr<acc_t>(r.in_coefs[i]);
  }
  for (int m = 0; m < prm.num_out; ++m) {
    prm.out[m] = outs[m].data_ptr<scalar_t>();
    prm.out_coef[m] = table_ptr<acc_t>(r.out_coefs[m]);
  }
  prm.noise_coef = table_ptr<acc_t>(r.noise_coef);
  prm.t = r.t.defined() ? r.t.data_ptr<int64_t>() : nullptr;
  prm.T = r.T;
  prm.planes_per_sample = r.planes_per_sample();
  prm.H = H;
  prm.W = W;
  prm.U_h = r.U_h.data_ptr<acc_t>();
  prm.U_w = r.U_w.data_ptr<acc_t>();
  prm.forward = r.forward;
  prm.inverse = r.inverse;
  if (prm.noise_coef != nullptr) prm.rng = launcher.philox(r.generator, noise_values_per_plane(H, W));
  const int64_t smem = H * 4 * quads_per_row(W) * static_cast<int64_t>(sizeof(acc_t));
  switch (quads_per_thread(H, W)) {
    case 1:
      launcher.launch(spectral_map_fused_kernel<scalar_t, acc_t, 1>, r.planes(), smem, prm);
      break;
    case 4:
      launcher.launch(spectral_map_fused_kernel<scalar_t, acc_t, 4>, r.planes(), smem, prm);
      break;
    default:
      launcher.launch(spectral_map_fused_kernel<scalar_t, acc_t, kMaxQuadsPerThread>, r.planes(), smem, prm);
  }
}

// Transforms by matmul, middle by spectral_combine_kernel: for planes too large for one block.
template <typename acc_t, class Launcher>
void map_gemm(const MapRequest& r, const std::vector<at::Tensor>& inputs, std::vector<at::Tensor>& outs,
              Launcher& launcher) {
  const int64_t H = r.H(), W = r.W(), P = r.planes();
  const auto acc_type = r.U_h.scalar_type();
  auto combine = [&](const std::vector<at::Tensor>& xs, const std::vector<at::Tensor>& cfs, const at::Tensor& nc) {
    at::Tensor out = at::empty({P, H, W}, r.U_h.options());
    CombineParams<acc_t> prm{};
    prm.num_in = static_cast<int>(xs.size());
    for (int i = 0; i < prm.num_in; ++i) {
      prm.in[i] = xs[i].data_ptr<acc_t>();
      prm.coef[i] = table_ptr<acc_t>(cfs[i]);
    }
    prm.noise_coef = table_ptr<acc_t>(nc);
    prm.out = out.data_ptr<acc_t>();
    prm.t = r.t.defined() ? r.t.data_ptr<int64_t>() : nullptr;
    prm.T = r.T;
    prm.planes = P;
    prm.planes_per_sample = r.planes_per_sample();
    prm.H = H;
    prm.W = W;
    if (prm.noise_coef != nullptr) prm.rng = launcher.philox(r.generator, noise_values_per_plane(H, W));
    const int64_t quads = P * H * quads_per_row(W);
    const int64_t grid = std::min<int64_t>((quads + kThreads - 1) / kThreads, 65535);
    launcher.launch(spectral_combine_kernel<acc_t>, grid, 0, prm);
    return out;
  };
  std::vector<at::Tensor> spectra;
  for (const auto& x : inputs) {
    at::Tensor s = x.to(acc_type);
    if (r.forward) s = at::matmul(at::matmul(r.U_h.t(), s), r.U_w).contiguous();
    spectra.push_back(s.contiguous());
  }
  const at::Tensor acc = combine(spectra, r.in_coefs, r.noise_coef);
  for (size_t m = 0; m < outs.size(); ++m) {
    at::Tensor y = r.out_coefs[m].defined() ? combine({acc}, {r.out_coefs[m]}, at::Tensor()) : acc;
    if (r.inverse) y = at::matmul(at::matmul(r.U_h, y), r.U_w.t());
    outs[m].view({P, H, W}).copy_(y);
  }
}

// The whole spectral map on one device, through the given Launcher.
template <class Launcher>
std::vector<at::Tensor> run_spectral_map(const MapRequest& r, Launcher& launcher) {
  const at::Tensor& x = r.inputs[0];
  const int64_t H = r.H(), W = r.W(), P = r.planes();
  std::vector<at::Tensor> outs;
  for (size_t m = 0; m < r.out_coefs.size(); ++m) {
    outs.push_back(at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous)));
  }
  if (P == 0) return outs;
  TORCH_CHECK_VALUE(r.inputs.size() <= static_cast<size_t>(kMaxIO) && outs.size() <= static_cast<size_t>(kMaxIO), r.op,
                    ": at most ", kMaxIO, " inputs (noise included) and outputs per call on this device, got ",
                    r.inputs.size(), " and ", outs.size());
  std::vector<at::Tensor> inputs;
  for (const auto& in : r.inputs) inputs.push_back(in.view({P, H, W}));

  const int64_t acc_size = x.scalar_type() == at::kDouble ? 8 : 4;
  const bool fused = quads_per_thread(H, W) != 0 && H * 4 * quads_per_row(W) * acc_size <= launcher.max_shared_memory();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "blurdiff_spectral_map", [&] {
    if (fused) {
      map_fused<scalar_t>(r, inputs, outs, launcher);
    } else {
      map_gemm<at::opmath_type<scalar_t>>(r, inputs, outs, launcher);
    }
  });
  return outs;
}

}  // namespace blurdiff
