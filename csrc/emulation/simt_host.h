// A host emulation of a CUDA launch, so the kernels of cuda/spectral_kernels.cuh run on the CPU
// unchanged (compiled by g++) in the test suite, where no GPU is present.
//
// One std::thread per CUDA thread, blocks one after another, a std::barrier for __syncthreads,
// and for each block a buffer of exactly the launch's dynamic shared memory, filled with NaN bytes
// so a kernel that reads shared memory it never wrote shows it in the results. Exactly sized and
// allocated afresh, so that under AddressSanitizer a read one past its end lands in a redzone
// (scripts/sanitize_emulation.py). Not covered: warp-level behaviour (the kernels use none),
// memory-model races between blocks (blocks run in sequence), and device code paths behind
// __CUDA_ARCH__ (the Philox unpacking and __ldg).
//
// Include after ATen's headers and before the kernels.
#pragma once

#include <barrier>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

struct dim3 {
  unsigned int x = 1, y = 1, z = 1;
};

inline thread_local dim3 threadIdx;
inline thread_local dim3 blockIdx;
inline dim3 blockDim;
inline dim3 gridDim;

#define __global__
#define __launch_bounds__(...)

namespace blurdiff::emu {

inline std::barrier<>* current_barrier = nullptr;
inline std::vector<unsigned char> shared_memory;

inline unsigned char* dynamic_smem() { return shared_memory.data(); }

inline void sync_threads() { current_barrier->arrive_and_wait(); }

template <class Kernel, class Params>
void launch(Kernel kernel, int64_t grid, int64_t threads, int64_t smem_bytes, const Params& params) {
  gridDim = dim3{static_cast<unsigned int>(grid), 1, 1};
  blockDim = dim3{static_cast<unsigned int>(threads), 1, 1};
  for (int64_t b = 0; b < grid; ++b) {
    shared_memory = std::vector<unsigned char>(static_cast<size_t>(smem_bytes), 0xff);
    std::barrier<> barrier(threads);
    current_barrier = &barrier;
    std::vector<std::thread> pool;
    pool.reserve(threads);
    for (int64_t t = 0; t < threads; ++t) {
      pool.emplace_back([&, t] {
        threadIdx = dim3{static_cast<unsigned int>(t), 1, 1};
        blockIdx = dim3{static_cast<unsigned int>(b), 1, 1};
        kernel(params);
      });
    }
    for (auto& th : pool) th.join();
    current_barrier = nullptr;
  }
}

}  // namespace blurdiff::emu

#define __syncthreads() ::blurdiff::emu::sync_threads()
