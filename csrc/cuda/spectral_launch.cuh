// The host side of the CUDA spectral map: plans and launches the kernels of spectral_kernels.cuh.
//
// Chooses the path (the fused kernel in one launch or split over several blocks per plane, or the
// GEMM path, by path_cost.h's cost model unless _set_map_path forces one), sizes grids and dynamic shared memory, runs
// the GEMM path's transforms as batched matmuls (cuBLAS through ATen), and takes the Philox state for the noise from
// the generator. Everything goes through a Launcher, so the same planning runs in the CUDA build (spectral_map_cuda.cu)
// and in the host emulation (emulation/emulated_ops.cpp). A Launcher provides:
//   DeviceModel device_model();                          what the cost model knows of the device
//   RngState philox(const std::optional<at::Generator>&, uint64_t values_per_subsequence);
//   template <class K, class P> void launch(K kernel, int64_t grid, int64_t smem, const P& params);
//
// It names (and so instantiates) the kernels: include it in a CUDA translation unit, or in the
// emulation after emulation/simt_host.h.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/flip.h>
#include <ATen/ops/index_select.h>
#include <ATen/ops/matmul.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <memory>
#include <optional>
#include <utility>
#include <vector>

#include "../path_cost.h"
#include "../spectral_common.h"
#include "../spectral_map.h"
#include "spectral_kernels.cuh"

namespace blurdiff {

// E [ne, ne] and O [no, no] of an even/odd side.
inline std::pair<at::Tensor, at::Tensor> split_blocks(const SideSplit& s) {
  const int64_t ne = s.ne, no = s.no();
  return {s.blocks.narrow(0, 0, ne * ne).view({ne, ne}), s.blocks.narrow(0, ne * ne, no * no).view({no, no})};
}

template <typename acc_t>
SideOperator<acc_t> side_operator(const std::shared_ptr<const SideSplit>& split, const at::Tensor& U) {
  SideOperator<acc_t> S{};
  if (split->kind == SideSplit::kIdentity) {
    S.kind = kSideIdentity;
  } else if (split->kind == SideSplit::kEvenOdd) {
    S.kind = kSideEvenOdd;
    S.ne = split->ne;
    S.blocks = split->blocks.data_ptr<acc_t>();
    S.slot = split->indices.data_ptr<int32_t>();
  } else {
    S.kind = kSideDense;
    S.U = U.data_ptr<acc_t>();
  }
  return S;
}

// The GEMM path's transform of one side, along dim (-1: the columns, by U_w; -2: the rows, by
// U_h) of [P, H, W]: x U_w or U_h^T x forward, y U_w^T or U_h y inverse. Even/odd sides fold
// (x[:no] ± flip(x[n-no:]), the middle element of an odd n with the even half), multiply the
// halves, and move the slots to their columns (forward); or gather the slots (inverse), multiply
// the halves and unfold (e[:no] + o, the middle e[no], flip(e[:no] - o)).
inline at::Tensor transform_side(const at::Tensor& x, const std::shared_ptr<const SideSplit>& split,
                                 const at::Tensor& U, int64_t dim, bool forward) {
  if (split->kind == SideSplit::kIdentity) return x;
  const bool rows = dim == -2;
  if (split->kind == SideSplit::kDense) {
    if (forward) return rows ? at::matmul(U.t(), x) : at::matmul(x, U);
    return rows ? at::matmul(U, x) : at::matmul(x, U.t());
  }
  const int64_t n = split->n, ne = split->ne, no = split->no();
  const auto [E, O] = split_blocks(*split);
  const at::Tensor& indices = split->indices;
  if (forward) {
    const at::Tensor top = x.narrow(dim, 0, no), bottom = x.narrow(dim, n - no, no).flip(dim);
    const at::Tensor plus = at::cat(at::TensorList{top.add(bottom), x.narrow(dim, no, ne - no)}, dim);
    const at::Tensor minus = top.sub(bottom);
    const at::Tensor split_order = rows
                                       ? at::cat(at::TensorList{at::matmul(E.t(), plus), at::matmul(O.t(), minus)}, dim)
                                       : at::cat(at::TensorList{at::matmul(plus, E), at::matmul(minus, O)}, dim);
    return split_order.index_select(dim, indices.narrow(0, 0, n));
  }
  const at::Tensor y = x.index_select(dim, indices.narrow(0, n, n));
  const at::Tensor ye = y.narrow(dim, 0, ne), yo = y.narrow(dim, ne, no);
  const at::Tensor e = rows ? at::matmul(E, ye) : at::matmul(ye, E.t());
  const at::Tensor o = rows ? at::matmul(O, yo) : at::matmul(yo, O.t());
  const at::Tensor top = e.narrow(dim, 0, no);
  return at::cat(at::TensorList{top.add(o), e.narrow(dim, no, ne - no), top.sub(o).flip(dim)}, dim);
}

// The fused kernel's plan of an H x W plane with these sides (its shared memory).
inline FusedPlan fused_plan(const MapRequest& r) {
  auto kind = [](const SideSplit& s) {
    return s.kind == SideSplit::kIdentity ? kSideIdentity : s.kind == SideSplit::kEvenOdd ? kSideEvenOdd : kSideDense;
  };
  return FusedPlan(kind(*r.split_h), r.H(), r.split_h->ne, kind(*r.split_w), r.W(), r.split_w->ne);
}

// A request as the cost model sees it.
inline MapWork map_work(const MapRequest& r, int64_t acc_size) {
  int64_t scaled = 0;
  for (const auto& c : r.out_coefs) scaled += c.defined() ? 1 : 0;
  return MapWork{r.planes(),
                 fused_plan(r),
                 acc_size,
                 static_cast<int64_t>(r.inputs[0].element_size()),
                 static_cast<int64_t>(r.inputs.size()),
                 static_cast<int64_t>(r.out_coefs.size()),
                 scaled,
                 r.forward,
                 r.inverse};
}

// The fused kernel: one launch of kStageWhole (bands = 1), or with `bands` blocks per plane the
// two launches of the split stages, the spectrum between them in a buffer of acc_t.
template <typename scalar_t, class Launcher>
void map_fused(const MapRequest& r, const std::vector<at::Tensor>& inputs, std::vector<at::Tensor>& outs,
               Launcher& launcher, bool split, int bands) {
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
  prm.h = side_operator<acc_t>(r.split_h, r.U_h);
  prm.w = side_operator<acc_t>(r.split_w, r.U_w);
  prm.forward = r.forward;
  prm.inverse = r.inverse;
  if (prm.noise_coef != nullptr) prm.rng = launcher.philox(r.generator, noise_values_per_plane(H, W));
  const FusedPlan plan = fused_plan(r);
  const int64_t smem = plan.shared_bytes(static_cast<int64_t>(sizeof(acc_t)));
  if (!split) {
    prm.stage = kStageWhole;
    prm.bands = 1;
    launcher.launch(spectral_map_fused_kernel<scalar_t, acc_t>, r.planes(), smem, prm);
    return;
  }
  const at::Tensor spectrum = at::empty({r.planes(), plan.plane}, r.U_h.options());
  prm.spectrum = spectrum.data_ptr<acc_t>();
  prm.bands = bands;
  prm.stage = kStageToSpectrum;
  launcher.launch(spectral_map_fused_kernel<scalar_t, acc_t>, r.planes() * bands, smem, prm);
  prm.stage = kStageFromSpectrum;
  launcher.launch(spectral_map_fused_kernel<scalar_t, acc_t>, r.planes() * bands, smem, prm);
}

// Transforms by matmul, middle by spectral_combine_kernel.
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
    if (r.forward) s = transform_side(transform_side(s, r.split_h, r.U_h, -2, true), r.split_w, r.U_w, -1, true);
    spectra.push_back(s.contiguous());
  }
  const at::Tensor acc = combine(spectra, r.in_coefs, r.noise_coef);
  for (size_t m = 0; m < outs.size(); ++m) {
    at::Tensor y = r.out_coefs[m].defined() ? combine({acc}, {r.out_coefs[m]}, at::Tensor()) : acc;
    if (r.inverse) y = transform_side(transform_side(y, r.split_h, r.U_h, -2, false), r.split_w, r.U_w, -1, false);
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
  const DeviceModel device = launcher.device_model();
  const MapWork work = map_work(r, acc_size);
  const PathCosts costs = estimate_paths(device, work);
  const int forced = map_path_forced().load();
  TORCH_CHECK_VALUE(forced == kPathAuto || forced == kPathGemm || costs.fused_fits(), r.op,
                    ": the fused CUDA kernel needs ", work.plan.shared_bytes(acc_size),
                    " bytes of shared memory for a ", H, "x", W, " plane of ", x.scalar_type(), ", the device allows ",
                    device.smem_per_block, " per block (the fused path was forced by _set_map_path)");
  const MapPath path = forced == kPathAuto ? cheapest_path(costs) : static_cast<MapPath>(forced);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "blurdiff_spectral_map", [&] {
    if (path == kPathGemm) {
      map_gemm<at::opmath_type<scalar_t>>(r, inputs, outs, launcher);
    } else {
      map_fused<scalar_t>(r, inputs, outs, launcher, path == kPathSplit, costs.split_bands);
    }
  });
  return outs;
}

}  // namespace blurdiff
