// The Philox key of the noise drawn on the CPU, shared by the CPU kernels and the emulated
// CUDA kernels so that both draw the same numbers from the same generator state.
#pragma once

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/Generator.h>

#include <mutex>
#include <optional>

namespace blurdiff {

struct NoiseKey {
  uint64_t seed = 0, offset = 0;
};

// The CPU generator is a Mersenne Twister with no Philox offset: each call takes a fresh 64-bit
// Philox seed from it (offset 0), so a seeded generator reproduces its sequence of draws.
inline NoiseKey next_cpu_noise_key(const std::optional<at::Generator>& generator) {
  auto* gen = at::get_generator_or_default<at::CPUGeneratorImpl>(generator, at::detail::getDefaultCPUGenerator());
  std::lock_guard<std::mutex> lock(gen->mutex_);
  return NoiseKey{gen->random64(), 0};
}

}  // namespace blurdiff
