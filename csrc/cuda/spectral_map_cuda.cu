// The spectral map on CUDA, the one CUDA translation unit: the kernels (spectral_kernels.cuh)
// planned by spectral_launch.cuh, launched here on the current stream of the data's device, with
// Philox state from the CUDA generator.
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAGeneratorImpl.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <mutex>

#include "spectral_kernels.cuh"
#include "spectral_launch.cuh"

namespace blurdiff {
namespace {

struct CudaLauncher {
  DeviceModel device_model() const {
    // Not ATen's device-properties cache: its header pulls in cuBLAS and cuSPARSE.
    int device = 0, major = 0, sms = 0, per_block = 0, per_sm = 0;
    C10_CUDA_CHECK(cudaGetDevice(&device));
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&per_block, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&per_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, device));
    return blurdiff::device_model(major, sms, per_block, per_sm);
  }

  RngState philox(const std::optional<at::Generator>& generator, uint64_t values_per_subsequence) {
    auto* gen =
        at::get_generator_or_default<at::CUDAGeneratorImpl>(generator, at::cuda::detail::getDefaultCUDAGenerator());
    std::lock_guard<std::mutex> lock(gen->mutex_);
    return gen->philox_cuda_state(values_per_subsequence);
  }

  template <class Kernel, class Params>
  void launch(Kernel kernel, int64_t grid, int64_t smem, const Params& params) {
    if (smem > 48 * 1024) {
      C10_CUDA_CHECK(cudaFuncSetAttribute(reinterpret_cast<const void*>(kernel),
                                          cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
    }
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    kernel<<<static_cast<unsigned int>(grid), kThreads, static_cast<size_t>(smem), stream>>>(params);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
};

std::vector<at::Tensor> map_cuda(const MapRequest& r) {
  const c10::cuda::CUDAGuard guard(r.inputs[0].device());
  CudaLauncher launcher;
  return run_spectral_map(r, launcher);
}

using CudaOps = SpectralOps<map_cuda>;

}  // namespace
}  // namespace blurdiff

TORCH_LIBRARY_IMPL(blurdiff_ops, CUDA, m) { BLURDIFF_REGISTER_SPECTRAL_OPS(m, blurdiff::CudaOps); }
