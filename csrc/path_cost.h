// The fused CUDA kernel's shared-memory plan, and the cost model that chooses the CUDA path of a
// spectral map: the fused kernel (one block per plane, cuda/spectral_kernels.cuh) or the GEMM path
// (batched matmuls around the combine kernel), by estimated time in microseconds.
//
// Host and device arithmetic only, no CUDA: the CPU build registers the model as the test op
// blurdiff_ops::_path_costs, so it is tested without a GPU. docs/design.md ("Which CUDA path")
// derives the formulas; the constants come from scripts/gpu_static_report.py's reading of the
// compiled kernels and from the GPUs' published figures, and scripts/gpu_check.sh prints these
// estimates beside measured times so that a GPU can correct them.
#pragma once

#include <c10/macros/Macros.h>

#include <c10/util/Exception.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <string>
#include <vector>

namespace blurdiff {

// How the fused kernel multiplies by one side's basis: the dense U, the even/odd halves of
// even_odd.h, or nothing (U = I).
enum SideKind : int { kSideDense, kSideEvenOdd, kSideIdentity };

// ---------------------------------------------------------------------------------------------
// The fused kernel's layout. One side of length n in "padded order": even/odd sides hold the
// even half's ne slots at [0, ne) and the odd half's no slots at [e4, e4 + no), e4 = ne rounded
// up to a multiple of 4; dense and identity sides hold the n positions in their own order
// (ne = n, no = 0). Everything else is zero padding, so every block of positions starts on a
// multiple of 4 and the products can read 4-vectors. A plane is rows x columns of padded order,
// row-major with row stride ld; the spectrum stays in padded order between the transforms.

C10_HOST_DEVICE inline int round4(int x) { return (x + 3) & ~3; }

struct SideShape {
  int n, ne, no, e4, o4;  // ne + no = n; e4, o4 rounded up to multiples of 4
  bool identity, even_odd;

  C10_HOST_DEVICE SideShape(int kind, int64_t length, int64_t even) {
    n = static_cast<int>(length);
    even_odd = kind == kSideEvenOdd;
    identity = kind == kSideIdentity;
    ne = even_odd ? static_cast<int>(even) : n;
    no = n - ne;
    e4 = round4(ne);
    o4 = round4(no);
  }
  C10_HOST_DEVICE int padded() const { return e4 + o4; }
  // Basis values staged in shared memory: E and O padded to e4 x e4 and o4 x o4 (dense: U as E).
  C10_HOST_DEVICE int64_t basis_size() const {
    return identity ? 0 : static_cast<int64_t>(e4) * e4 + static_cast<int64_t>(o4) * o4;
  }
  // Multiply-adds of one product of this side over `other` lines: of the halves (or dense U), or
  // of their padded blocks as the fused kernel runs them.
  C10_HOST_DEVICE int64_t macs(int64_t other, bool padded_blocks) const {
    const int64_t a = padded_blocks ? e4 : ne, b = padded_blocks ? o4 : no;
    return identity ? 0 : other * (a * a + b * b);
  }
};

// Offsets (in elements) of the fused kernel's shared memory: three planes X, T, A of rows x ld
// acc_t, the staged bases of both sides, then int32 maps: padded -> original position (-1 on a
// pad) and original -> padded, for rows and for columns.
struct FusedPlan {
  SideShape h, w;
  int rows, ld, plane;  // plane: only meaningful where the plan fits a block

  C10_HOST_DEVICE FusedPlan(int h_kind, int64_t H, int64_t h_ne, int w_kind, int64_t W, int64_t w_ne)
      : h(h_kind, H, h_ne),
        w(w_kind, W, w_ne),
        rows(h.padded()),
        ld(w.padded()),
        plane(static_cast<int>(static_cast<int64_t>(rows) * ld)) {}
  C10_HOST_DEVICE int64_t acc_values() const {
    return 3 * static_cast<int64_t>(rows) * ld + h.basis_size() + w.basis_size();
  }
  C10_HOST_DEVICE int64_t index_values() const { return static_cast<int64_t>(rows) + ld + h.n + w.n; }
  C10_HOST_DEVICE int64_t shared_bytes(int64_t acc_size) const { return acc_values() * acc_size + index_values() * 4; }
  // The units the split stages divide among a plane's blocks: 4-row tiles of the spectrum's padded
  // rows (kStageToSpectrum), and 4-row tiles of the first half's rows, each with the mirrored
  // rows it unfolds into on an even/odd side (kStageFromSpectrum).
  C10_HOST_DEVICE int gather_units() const { return rows / 4; }
  C10_HOST_DEVICE int emit_units() const { return (h.even_odd ? h.e4 : rows) / 4; }
  C10_HOST_DEVICE int max_bands() const { return gather_units() < emit_units() ? gather_units() : emit_units(); }
};

// Units [first, last) of band b of `bands`: as even as whole units allow.
struct Band {
  int first, last;
};
C10_HOST_DEVICE inline Band band_of(int units, int bands, int b) {
  return {units * b / bands, units * (b + 1) / bands};
}

// ---------------------------------------------------------------------------------------------
// The cost model.

// What the model knows of a device: counted on the device (SMs, shared memory), the rest the
// published figures of its architecture by compute capability major: 7 a V100, 8 an A100, 9 and
// later an H100 SXM (the GPUs of scripts/gpu_static_report.py).
struct DeviceModel {
  int64_t sms = 132;
  int64_t smem_per_block = 227 * 1024;  // the opt-in limit of one block
  int64_t smem_per_sm = 228 * 1024;
  int64_t smem_reserved = 1024;  // per block, by the runtime
  double clock_ghz = 1.98;
  double fp32_lanes = 128, fp64_lanes = 64;  // multiply-adds per SM per clock
  double bandwidth_gbs = 3350;
};

inline DeviceModel device_model(int64_t major, int64_t sms, int64_t smem_per_block, int64_t smem_per_sm) {
  DeviceModel d;
  if (major <= 7) {
    d.smem_reserved = 0, d.clock_ghz = 1.53, d.fp32_lanes = 64, d.fp64_lanes = 32, d.bandwidth_gbs = 900;
  } else if (major == 8) {
    d.clock_ghz = 1.41, d.fp32_lanes = 64, d.fp64_lanes = 32, d.bandwidth_gbs = 1555;
  }
  d.sms = sms;
  d.smem_per_block = smem_per_block;
  d.smem_per_sm = smem_per_sm;
  return d;
}

// The work of one call.
struct MapWork {
  int64_t planes;
  FusedPlan plan;
  int64_t acc_size, data_size;              // bytes of the accumulator (4, 8) and of the data (2, 4, 8)
  int64_t inputs, outputs, scaled_outputs;  // scaled: outputs with a coefficient table
  bool forward, inverse;
};

struct PathCosts {
  double fused_us, split_us, gemm_us;
  int64_t blocks_per_sm;  // of the fused kernel; 0: its plan does not fit a block
  int split_bands;        // the split stages' blocks per plane
  bool fused_fits() const { return blocks_per_sm > 0; }
};

// The static report's figures of the fused kernel (alike on sm_70, sm_80 and sm_90): the FMA
// share of its product loops, and resident blocks of kFusedThreads by registers (118-123
// registers float32, 160-164 float64).
constexpr double kFusedLoopFmaShare32 = 0.75, kFusedLoopFmaShare64 = 0.69;
constexpr int64_t kFusedBlocksByRegisters32 = 2, kFusedBlocksByRegisters64 = 1;
constexpr int64_t kFusedThreads = 256;
// Instructions per element (a warp's lane each) of each of the fused kernel's elementwise passes:
// load and fold, fold, combine per input; scale, unfold, write per output. An estimate.
constexpr double kPassInstructions = 12;
// cuBLAS on these skinny batched GEMMs, of the FP32 (FP64) peak; the time of one small launch.
constexpr double kGemmEfficiency = 0.6, kLaunchUs = 4;

// The fused kernel with `bands` blocks per plane: split (two launches, the spectrum through
// global memory) or not (one launch, bands = 1). The busiest SM runs its blocks one after another
// (those resident at once share its issue slots and FMA lanes), each its share of the products'
// padded multiply-adds at the loops' FMA share, four warp instructions issued a clock, plus its
// elementwise passes; or DRAM when slower; plus the launches. A band's share is that of the
// largest band; the passes that need the whole plane (the row fold of each input, loading the
// spectrum, scaling it for an output) are every band's.
inline double fused_time(const DeviceModel& d, const MapWork& m, bool split, int bands) {
  const FusedPlan& p = m.plan;
  const bool wide = m.acc_size == 8;
  const double lanes = wide ? d.fp64_lanes : d.fp32_lanes;
  const double in = static_cast<double>(m.inputs), out = static_cast<double>(m.outputs);
  const double gather = static_cast<double>((p.gather_units() + bands - 1) / bands) / p.gather_units();
  const double emit = static_cast<double>((p.emit_units() + bands - 1) / bands) / p.emit_units();
  const double pair = static_cast<double>(p.w.macs(p.rows, true) + p.h.macs(p.ld, true));
  const double macs = pair * ((m.forward ? in * gather : 0) + (m.inverse ? out * emit : 0));
  const double passes = split ? in * (1 + 2 * gather) + out * (1 + 2 * emit) + 1 + gather : 3 * (in + out);
  const double warp_insns = macs / 32 / (wide ? kFusedLoopFmaShare64 : kFusedLoopFmaShare32) +
                            (passes + static_cast<double>(m.scaled_outputs)) * p.plane * kPassInstructions / 32;
  const double block_clocks = std::max(warp_insns / 4, macs / lanes);
  const int64_t busiest = (m.planes * bands + d.sms - 1) / d.sms;
  // Each band reads its plane's inputs and (split) the whole spectrum; L2 may spare DRAM some.
  const double n = static_cast<double>(p.h.n) * p.w.n, planes = static_cast<double>(m.planes);
  double bytes = (in * bands + out) * planes * n * static_cast<double>(m.data_size);
  if (split) bytes += (1.0 + bands) * planes * p.plane * static_cast<double>(m.acc_size);
  return std::max(static_cast<double>(busiest) * block_clocks / (d.clock_ghz * 1e3), bytes / (d.bandwidth_gbs * 1e3)) +
         (split ? 2 : 1) * kLaunchUs;
}

inline PathCosts estimate_paths(const DeviceModel& d, const MapWork& m) {
  PathCosts c{};
  const FusedPlan& p = m.plan;
  const double bw = d.bandwidth_gbs * 1e3;  // bytes per microsecond
  const bool wide = m.acc_size == 8;
  const double lanes = wide ? d.fp64_lanes : d.fp32_lanes;
  const int64_t n = static_cast<int64_t>(p.h.n) * p.w.n;
  const int64_t sides_in = m.forward ? m.inputs : 0, sides_out = m.inverse ? m.outputs : 0;
  const double io_bytes = static_cast<double>((m.inputs + m.outputs) * m.planes * n * m.data_size);

  // Fused, in one launch or split over the bands that cost least.
  const int64_t smem = p.shared_bytes(m.acc_size);
  if (smem <= d.smem_per_block) {
    const int64_t per_block = (smem + d.smem_reserved + 127) / 128 * 128;
    c.blocks_per_sm = std::min({d.smem_per_sm / per_block, 2048 / kFusedThreads,
                                wide ? kFusedBlocksByRegisters64 : kFusedBlocksByRegisters32});
  }
  c.fused_us = fused_time(d, m, false, 1);
  c.split_bands = 1;
  c.split_us = fused_time(d, m, true, 1);
  for (int bands = 2; bands <= p.max_bands(); ++bands) {
    const double t = fused_time(d, m, true, bands);
    if (t < c.split_us) c.split_us = t, c.split_bands = bands;
  }

  // GEMM path: per side transform a batched GEMM of the halves (or the dense U) at
  // kGemmEfficiency of the peak, or reading and writing the tensor at the bandwidth when slower,
  // plus the even/odd sides' fold and reorder kernels (8 launches, 3 more passes over the
  // tensor); the combine kernel and one per scaled output; the conversions to and from the
  // accumulator's type.
  const double tensor = static_cast<double>(m.planes * n * m.acc_size);
  const double flops_us = 2 * lanes * static_cast<double>(d.sms) * d.clock_ghz * 1e3;
  double gemm = 0;
  for (const SideShape* s : {&p.h, &p.w}) {
    if (s->identity) continue;
    const double flops = 2.0 * static_cast<double>(s->macs(s == &p.h ? p.w.n : p.h.n, false) * m.planes);
    const double one = std::max(flops / (kGemmEfficiency * flops_us), 2 * tensor / bw) +
                       (s->even_odd ? 8 * kLaunchUs + 6 * tensor / bw : kLaunchUs);
    gemm += one * static_cast<double>(sides_in + sides_out);
  }
  gemm += kLaunchUs + static_cast<double>(m.inputs + 1) * tensor / bw;
  gemm += static_cast<double>(m.scaled_outputs) * (kLaunchUs + 2 * tensor / bw);
  gemm += static_cast<double>(m.inputs + m.outputs) * (kLaunchUs + tensor / bw) + io_bytes / bw;
  c.gemm_us = gemm;
  return c;
}

// Which path the CUDA backend takes: the cost model's choice, or one forced by the op
// blurdiff_ops::_set_map_path (tests and benchmarks). The CPU backend has one path and ignores it.
enum MapPath : int { kPathAuto, kPathFused, kPathSplit, kPathGemm };

inline std::atomic<int>& map_path_forced() {
  static std::atomic<int> path{kPathAuto};
  return path;
}

// The cheapest path, the fused kernel's two only where its plan fits a block.
inline MapPath cheapest_path(const PathCosts& c) {
  if (!c.fused_fits()) return kPathGemm;
  if (c.fused_us <= c.split_us && c.fused_us <= c.gemm_us) return kPathFused;
  return c.split_us <= c.gemm_us ? kPathSplit : kPathGemm;
}

// The op _set_map_path: forces "fused" (one block per plane), "split" (the fused kernel over
// several blocks per plane) or "gemm", or back to "auto"; returns the path before.
inline std::string set_map_path(const std::string& path) {
  static const char* const names[] = {"auto", "fused", "split", "gemm"};
  int want = -1;
  for (int i = 0; i < 4; ++i)
    if (path == names[i]) want = i;
  TORCH_CHECK_VALUE(want >= 0, "_set_map_path: path must be 'auto', 'fused', 'split' or 'gemm', got '", path, "'");
  return names[map_path_forced().exchange(want)];
}

// The op _path_costs: the model's [fused µs, GEMM µs, fused blocks per SM, fused shared-memory
// bytes, split µs, split blocks per plane, the path auto takes (a MapPath)] for a device (compute capability major,
// SMs, shared memory per block and per SM) and a call on `planes` H x W planes whose sides are both "even_odd" (halves
// of ceil(n/2) and floor(n/2)), "dense" or "identity".
inline std::vector<double> path_costs(int64_t major, int64_t sms, int64_t smem_per_block, int64_t smem_per_sm,
                                      int64_t planes, int64_t H, int64_t W, const std::string& sides, int64_t acc_size,
                                      int64_t data_size, int64_t inputs, int64_t outputs, int64_t scaled_outputs,
                                      bool forward, bool inverse) {
  const int kind = sides == "even_odd" ? kSideEvenOdd : sides == "dense" ? kSideDense : kSideIdentity;
  TORCH_CHECK_VALUE(sides == "even_odd" || sides == "dense" || sides == "identity",
                    "_path_costs: sides must be 'even_odd', 'dense' or 'identity', got '", sides, "'");
  TORCH_CHECK_VALUE(sms > 0 && planes > 0 && H > 0 && W > 0 && inputs > 0 && outputs > 0,
                    "_path_costs: sms, planes, H, W, inputs and outputs must be positive");
  TORCH_CHECK_VALUE(acc_size == 4 || acc_size == 8, "_path_costs: acc_size must be 4 or 8, got ", acc_size);
  const MapWork work{planes,         FusedPlan(kind, H, (H + 1) / 2, kind, W, (W + 1) / 2),
                     acc_size,       data_size,
                     inputs,         outputs,
                     scaled_outputs, forward,
                     inverse};
  const PathCosts c = estimate_paths(device_model(major, sms, smem_per_block, smem_per_sm), work);
  return {c.fused_us,
          c.gemm_us,
          static_cast<double>(c.blocks_per_sm),
          static_cast<double>(work.plan.shared_bytes(acc_size)),
          c.split_us,
          static_cast<double>(c.split_bands),
          static_cast<double>(cheapest_path(c))};
}

}  // namespace blurdiff
