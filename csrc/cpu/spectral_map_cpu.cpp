// The spectral map on the CPU: float32 / float64 (half types computed in float32).
//
// Planes are processed in chunks that stay in cache, one chunk per task of at::parallel_for.
// The transforms of a chunk are two BLAS calls (x·U_w for all planes at once, then U_h^T·(·)
// batched), which beat any hand-written loop; the coefficient products, the sum over inputs and
// the Philox noise are fused into one pass over the chunk. Temporaries are three chunk-sized
// buffers per task, never full-size tensors.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/bmm_cpu_dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm_cpu_dispatch.h>
#include <torch/library.h>

#include "../spectral_map.h"
#include "cpu_noise_key.h"

namespace blurdiff {
namespace {

// Elements per chunk buffer: 3 buffers of 32 Ki floats stay within a core's L2.
constexpr int64_t kChunkElems = 32768;

template <typename scalar_t>
void map_typed(const MapRequest& r, std::vector<at::Tensor>& outs) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr bool kConvert = !std::is_same<scalar_t, acc_t>::value;
  const int64_t H = r.H(), W = r.W(), n = H * W, P = r.planes(), C = r.planes_per_sample();
  const at::Tensor U_h = r.U_h.contiguous(), U_w = r.U_w.contiguous();
  const at::Tensor U_hT = U_h.t(), U_wT = U_w.t();

  std::vector<at::Tensor> inputs;
  for (const auto& x : r.inputs) inputs.push_back(x.contiguous().view({P, H, W}));
  auto table = [](const at::Tensor& x) { return x.defined() ? x.contiguous() : x; };
  std::vector<at::Tensor> in_coefs, out_coefs;
  for (const auto& c : r.in_coefs) in_coefs.push_back(table(c));
  for (const auto& c : r.out_coefs) out_coefs.push_back(table(c));
  const at::Tensor noise_coef = table(r.noise_coef);
  const int64_t* t = r.t.defined() ? r.t.data_ptr<int64_t>() : nullptr;
  const NoiseKey key = noise_coef.defined() ? next_cpu_noise_key(r.generator) : NoiseKey{};

  std::vector<at::Tensor> out_planes;
  for (auto& o : outs) out_planes.push_back(o.view({P, H, W}));

  const int64_t threads = at::get_num_threads();
  int64_t chunk = std::max<int64_t>(1, kChunkElems / std::max<int64_t>(n, 1));
  chunk = std::min(chunk, std::max<int64_t>(1, (P + 2 * threads - 1) / (2 * threads)));
  const int64_t num_chunks = (P + chunk - 1) / chunk;
  const auto acc_options = U_h.options();

  at::parallel_for(0, num_chunks, 1, [&](int64_t begin, int64_t end) {
    at::Tensor A = at::empty({chunk, H, W}, acc_options);
    at::Tensor B = at::empty({chunk, H, W}, acc_options);
    at::Tensor Acc = at::empty({chunk, H, W}, acc_options);
    for (int64_t c = begin; c < end; ++c) {
      const int64_t p0 = c * chunk, pc = std::min(chunk, P - p0);
      at::Tensor a = A.narrow(0, 0, pc), b = B.narrow(0, 0, pc), acc = Acc.narrow(0, 0, pc);
      acc_t* acc_p = acc.data_ptr<acc_t>();
      auto row = [&](const at::Tensor& tab, int64_t q) -> const acc_t* {
        const int64_t tb = t ? t[(p0 + q) / C] : 0;
        return table_row(tab.data_ptr<acc_t>(), tb, n);
      };

      for (size_t i = 0; i < inputs.size(); ++i) {
        at::Tensor x = inputs[i].narrow(0, p0, pc);
        if (kConvert) {
          a.copy_(x);
          x = a;
        }
        at::Tensor s = x;
        if (r.forward) {
          at::Tensor b2 = b.view({pc * H, W});
          at::cpu::mm_out(b2, x.view({pc * H, W}), U_w);
          at::cpu::bmm_out(a, U_hT.expand({pc, H, H}), b);
          s = a;
        }
        const acc_t* s_p = s.data_ptr<acc_t>();
        const bool first = i == 0;
        for (int64_t q = 0; q < pc; ++q) {
          acc_t* dst = acc_p + q * n;
          const acc_t* src = s_p + q * n;
          if (in_coefs[i].defined()) {
            const acc_t* cf = row(in_coefs[i], q);
            if (first) {
              for (int64_t e = 0; e < n; ++e) dst[e] = cf[e] * src[e];
            } else {
              for (int64_t e = 0; e < n; ++e) dst[e] += cf[e] * src[e];
            }
          } else if (first) {
            for (int64_t e = 0; e < n; ++e) dst[e] = src[e];
          } else {
            for (int64_t e = 0; e < n; ++e) dst[e] += src[e];
          }
        }
      }

      if (noise_coef.defined()) {
        const int64_t Wq = quads_per_row(W);
        for (int64_t q = 0; q < pc; ++q) {
          const acc_t* nc = row(noise_coef, q);
          acc_t* dst = acc_p + q * n;
          for (int64_t y = 0; y < H; ++y) {
            for (int64_t cq = 0; cq < Wq; ++cq) {
              float z[4];
              noise_block(key.seed, key.offset, p0 + q, y, cq, W, z);
              const int64_t lanes = std::min<int64_t>(4, W - 4 * cq);
              for (int64_t j = 0; j < lanes; ++j) {
                const int64_t e = y * W + 4 * cq + j;
                dst[e] += nc[e] * static_cast<acc_t>(z[j]);
              }
            }
          }
        }
      }

      for (size_t m = 0; m < outs.size(); ++m) {
        at::Tensor src = acc;
        if (out_coefs[m].defined()) {
          acc_t* b_p = b.data_ptr<acc_t>();
          for (int64_t q = 0; q < pc; ++q) {
            const acc_t* cf = row(out_coefs[m], q);
            for (int64_t e = 0; e < n; ++e) b_p[q * n + e] = cf[e] * acc_p[q * n + e];
          }
          src = b;
        }
        at::Tensor dst = out_planes[m].narrow(0, p0, pc);
        if (r.inverse) {
          at::cpu::bmm_out(a, U_h.expand({pc, H, H}), src);
          at::Tensor rows = (kConvert ? b : dst).view({pc * H, W});
          at::cpu::mm_out(rows, a.view({pc * H, W}), U_wT);
          if (kConvert) dst.copy_(b);
        } else {
          dst.copy_(src);
        }
      }
    }
  });
}

std::vector<at::Tensor> map_cpu(const MapRequest& r) {
  std::vector<at::Tensor> outs;
  const at::Tensor& x = r.inputs[0];
  for (size_t m = 0; m < r.out_coefs.size(); ++m) {
    outs.push_back(at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous)));
  }
  if (r.planes() == 0) return outs;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "blurdiff_spectral_map_cpu",
                                  [&] { map_typed<scalar_t>(r, outs); });
  return outs;
}

using CpuOps = SpectralOps<map_cpu>;

}  // namespace
}  // namespace blurdiff

TORCH_LIBRARY_IMPL(blurdiff_ops, CPU, m) {
  m.impl("to_spectral", &blurdiff::CpuOps::to_spectral);
  m.impl("from_spectral", &blurdiff::CpuOps::from_spectral);
  m.impl("spectral_lincomb", &blurdiff::CpuOps::spectral_lincomb);
  m.impl("spectral_lincomb_backward", &blurdiff::CpuOps::spectral_lincomb_backward);
}
