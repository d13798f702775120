// A test build: the CUDA path of blurdiff_ops (the kernels of cuda/spectral_kernels.cuh and the
// host code of cuda/spectral_launch.cuh that plans and launches them) compiled by g++ over the
// SIMT emulation, registered for CPU tensors as blurdiff_emu::*.
// tests/test_cuda_emulation.py builds it with torch.utils.cpp_extension and compares it with
// the CPU kernels and the reference.
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <algorithm>

#include "../cpu/cpu_noise_key.h"
#include "../schemas.h"
#include "simt_host.h"
#include "../cuda/spectral_kernels.cuh"
#include "../cuda/spectral_launch.cuh"

namespace blurdiff {
namespace {

// An H100 SXM as the cost model knows it; tests change its shared memory per block.
DeviceModel g_device = device_model(9, 132, 227 * 1024, 228 * 1024);

struct EmulatedLauncher {
  DeviceModel device_model() const { return g_device; }

  RngState philox(const std::optional<at::Generator>& generator, uint64_t /*values_per_subsequence*/) {
    const NoiseKey key = next_cpu_noise_key(generator);
    return RngState{key.seed, key.offset};
  }

  template <class Kernel, class Params>
  void launch(Kernel kernel, int64_t grid, int64_t smem, const Params& params) {
    emu::launch(kernel, grid, kThreads, smem, params);
  }
};

std::vector<at::Tensor> map_emulated(const MapRequest& r) {
  EmulatedLauncher launcher;
  return run_spectral_map(r, launcher);
}

using EmulatedOps = SpectralOps<map_emulated>;

void set_max_shared_memory(int64_t bytes) {
  g_device.smem_per_block = bytes;
  g_device.smem_per_sm = std::max<int64_t>(228 * 1024, bytes + g_device.smem_reserved);
}

}  // namespace
}  // namespace blurdiff

TORCH_LIBRARY(blurdiff_emu, m) {
  BLURDIFF_SPECTRAL_SCHEMAS(m);
  BLURDIFF_EVEN_ODD_SCHEMAS(m);
  BLURDIFF_MAP_PATH_SCHEMAS(m);
  m.def("set_max_shared_memory(int bytes) -> ()", &blurdiff::set_max_shared_memory);
}

TORCH_LIBRARY_IMPL(blurdiff_emu, CPU, m) { BLURDIFF_REGISTER_SPECTRAL_OPS(m, blurdiff::EmulatedOps); }
