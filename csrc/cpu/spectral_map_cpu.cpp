// The spectral map on the CPU: float32 / float64 (half types computed in float32).
//
// Planes are processed in chunks that stay in cache, one chunk per task of at::parallel_for.
// The transforms of a chunk are two BLAS calls (x·U_w for all planes at once, then U_h^T·(·)
// batched), which beat any hand-written loop. The coefficient products, the sum over inputs, the
// Philox noise and a single output's coefficients take one pass per input after the first (one
// for a single input), row by row so the operands stay in L1. Temporaries are three chunk-sized
// buffers per task, never full-size tensors.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../spectral_map.h"
#include "cpu_noise_key.h"
#include "row_major_gemm.h"

// Compiled for the best vector unit at hand, chosen when the library loads (x86, GCC/Clang).
// Clang takes target_clones on plain functions only, not on templates (llvm-project#116501).
#if defined(__x86_64__) && defined(__GNUC__)
#define BLURDIFF_VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define BLURDIFF_VECTOR_CLONES
#endif
#if defined(__clang__)
#define BLURDIFF_VECTOR_CLONES_TEMPLATE
#else
#define BLURDIFF_VECTOR_CLONES_TEMPLATE BLURDIFF_VECTOR_CLONES
#endif

namespace blurdiff {
namespace {

// Elements per chunk buffer: 3 buffers of 32 Ki floats stay within a core's L2.
constexpr int64_t kChunkElems = 32768;
// Quads of a row drawn at once: the arrays below live on the stack.
constexpr int64_t kQuadBatch = 64;

// The noise of one row (DESIGN of spectral_common.h's noise_block), 4 * Wq values into z.
// Philox4x32-10 exactly as at::philox_engine computes it, but over arrays of counters so the
// compiler vectorises it (the engine's per-call state machine does not); the CUDA kernels and
// their CPU emulation use the engine itself, and the tests check both give the same numbers.
BLURDIFF_VECTOR_CLONES
void noise_row(uint64_t seed, uint64_t offset, int64_t plane, int64_t row, int64_t Wq, float* z) {
  const uint32_t c2 = static_cast<uint32_t>(plane), c3 = static_cast<uint32_t>(static_cast<uint64_t>(plane) >> 32);
  for (int64_t q0 = 0; q0 < Wq; q0 += kQuadBatch) {
    const int64_t count = std::min(kQuadBatch, Wq - q0);
    uint32_t x[4][kQuadBatch];
    const uint64_t base = offset / 4 + static_cast<uint64_t>(row * Wq + q0);
    for (int64_t i = 0; i < count; ++i) {
      const uint64_t ctr = base + static_cast<uint64_t>(i);
      uint32_t v0 = static_cast<uint32_t>(ctr), v1 = static_cast<uint32_t>(ctr >> 32), v2 = c2, v3 = c3;
      uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
      for (int round = 0; round < 10; ++round) {
        const uint64_t p0 = static_cast<uint64_t>(0xD2511F53u) * v0;
        const uint64_t p1 = static_cast<uint64_t>(0xCD9E8D57u) * v2;
        const uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ v1 ^ k0;
        const uint32_t n2 = static_cast<uint32_t>(p0 >> 32) ^ v3 ^ k1;
        v1 = static_cast<uint32_t>(p1);
        v3 = static_cast<uint32_t>(p0);
        v0 = n0;
        v2 = n2;
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
      }
      x[0][i] = v0;
      x[1][i] = v1;
      x[2][i] = v2;
      x[3][i] = v3;
    }
    float n[4][kQuadBatch];
    for (int64_t i = 0; i < count; ++i) {
      box_muller(x[0][i], x[1][i], &n[0][i], &n[1][i]);
      box_muller(x[2][i], x[3][i], &n[2][i], &n[3][i]);
    }
    for (int64_t i = 0; i < count; ++i)
      for (int j = 0; j < 4; ++j) z[4 * (q0 + i) + j] = n[j][i];
  }
}

// Buffer `slot` of this thread, at least `count` elements, 64-byte aligned; valid until the next
// call for the same slot on this thread.
template <typename T>
T* thread_scratch(int slot, int64_t count) {
  thread_local std::vector<unsigned char> buffers[4];
  std::vector<unsigned char>& buf = buffers[slot];
  const size_t bytes = static_cast<size_t>(count) * sizeof(T) + 64;
  if (buf.size() < bytes) buf.resize(bytes);
  const auto addr = reinterpret_cast<uintptr_t>(buf.data());
  return reinterpret_cast<T*>((addr + 63) & ~static_cast<uintptr_t>(63));
}

// out_p = U_h^T (x_p U_w) for the pc planes of a chunk; tmp is chunk-sized scratch.
template <typename acc_t>
void forward_transform(const acc_t* x, acc_t* tmp, acc_t* out, int64_t pc, int64_t H, int64_t W, const acc_t* U_h,
                       const acc_t* U_w) {
  gemm_row_major(false, false, pc * H, W, W, x, W, U_w, W, tmp, W);  // all rows at once
  for (int64_t q = 0; q < pc; ++q) gemm_row_major(true, false, H, W, H, U_h, H, tmp + q * H * W, W, out + q * H * W, W);
}

// out_p = (U_h s_p) U_w^T.
template <typename acc_t>
void inverse_transform(const acc_t* s, acc_t* tmp, acc_t* out, int64_t pc, int64_t H, int64_t W, const acc_t* U_h,
                       const acc_t* U_w) {
  for (int64_t q = 0; q < pc; ++q) gemm_row_major(false, false, H, W, H, U_h, H, s + q * H * W, W, tmp + q * H * W, W);
  gemm_row_major(false, true, pc * H, W, W, tmp, W, U_w, W, out, W);
}

// dst = sp ⊙ prev + sc ⊙ cur + nc ⊙ noise, times d, for one plane, a row at a time so every
// operand row stays in L1. A null coefficient row means ones; a null cur or nc drops that term;
// dst may be prev.
template <typename acc_t>
BLURDIFF_VECTOR_CLONES_TEMPLATE void combine_plane(acc_t* dst, const acc_t* prev, const acc_t* sp, const acc_t* cur,
                                                   const acc_t* sc, const acc_t* nc, const acc_t* d,
                                                   const NoiseKey& key, int64_t plane, int64_t H, int64_t W, float* z) {
  const int64_t Wq = quads_per_row(W);
  for (int64_t y = 0; y < H; ++y) {
    const int64_t o = y * W;
    acc_t* out = dst + o;
    if (sp) {
      for (int64_t x = 0; x < W; ++x) out[x] = sp[o + x] * prev[o + x];
    } else if (out != prev + o) {
      for (int64_t x = 0; x < W; ++x) out[x] = prev[o + x];
    }
    if (cur && sc) {
      for (int64_t x = 0; x < W; ++x) out[x] += sc[o + x] * cur[o + x];
    } else if (cur) {
      for (int64_t x = 0; x < W; ++x) out[x] += cur[o + x];
    }
    if (nc) {
      noise_row(key.seed, key.offset, plane, y, Wq, z);
      for (int64_t x = 0; x < W; ++x) out[x] += nc[o + x] * static_cast<acc_t>(z[x]);
    }
    if (d) {
      for (int64_t x = 0; x < W; ++x) out[x] *= d[o + x];
    }
  }
}

template <typename scalar_t>
void map_typed(const MapRequest& r, std::vector<at::Tensor>& outs) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr bool kConvert = !std::is_same<scalar_t, acc_t>::value;
  const int64_t H = r.H(), W = r.W(), n = H * W, P = r.planes(), C = r.planes_per_sample();
  const int64_t Wq = quads_per_row(W);
  const acc_t* U_h = r.U_h.data_ptr<acc_t>();
  const acc_t* U_w = r.U_w.data_ptr<acc_t>();

  const std::vector<at::Tensor>& inputs = r.inputs;
  std::vector<const acc_t*> in_coefs, out_coefs;
  for (const auto& c : r.in_coefs) in_coefs.push_back(table_ptr<acc_t>(c));
  for (const auto& c : r.out_coefs) out_coefs.push_back(table_ptr<acc_t>(c));
  const acc_t* noise_coef = table_ptr<acc_t>(r.noise_coef);
  const int64_t* t = r.t.defined() ? r.t.data_ptr<int64_t>() : nullptr;
  const NoiseKey key = noise_coef ? next_cpu_noise_key(r.generator) : NoiseKey{};
  // The plain transforms (one input, one output, one direction, no coefficients or noise) skip
  // the accumulator: their sum is the input itself.
  const bool passthrough =
      inputs.size() == 1 && outs.size() == 1 && !in_coefs[0] && !noise_coef && r.forward != r.inverse;

  const size_t K = inputs.size();
  const bool fuse_out = !passthrough && outs.size() == 1 && out_coefs[0];

  const int64_t threads = at::get_num_threads();
  int64_t chunk = std::max<int64_t>(1, kChunkElems / std::max<int64_t>(n, 1));
  chunk = std::min(chunk, std::max<int64_t>(1, (P + 2 * threads - 1) / (2 * threads)));
  const int64_t num_chunks = (P + chunk - 1) / chunk;

  at::parallel_for(0, num_chunks, 1, [&](int64_t begin, int64_t end) {
    const SingleThreadedBlas one_thread;
    // Scratch: a (transform results), b (transform intermediates, conversions), acc (the sum).
    // Kept per thread across calls: freeing and re-mapping buffers this size on every call
    // costs page faults and cross-core TLB shootdowns that undo the parallelism.
    acc_t* a = thread_scratch<acc_t>(0, chunk * n);
    acc_t* b = thread_scratch<acc_t>(1, chunk * n);
    acc_t* acc_buf = passthrough ? nullptr : thread_scratch<acc_t>(2, chunk * n);
    float* z = noise_coef ? thread_scratch<float>(3, 4 * Wq) : nullptr;
    for (int64_t c = begin; c < end; ++c) {
      const int64_t p0 = c * chunk, pc = std::min(chunk, P - p0);
      auto row = [&](const acc_t* tab, int64_t q) { return table_row(tab, t ? t[(p0 + q) / C] : 0, n); };
      // A chunk of an input (or the output) of scalar_t, in acc_t: converted into `into` if needed.
      auto load = [&](const at::Tensor& x, acc_t* into) -> const acc_t* {
        const scalar_t* src = x.data_ptr<scalar_t>() + p0 * n;
        if constexpr (kConvert) {
          for (int64_t e = 0; e < pc * n; ++e) into[e] = static_cast<acc_t>(src[e]);
          return into;
        } else {
          return src;
        }
      };

      // Where a result of acc_t can go straight into the output chunk.
      acc_t* out_direct = nullptr;
      if constexpr (!kConvert) out_direct = outs[0].data_ptr<acc_t>() + p0 * n;

      // acc = Σ_i c_i ⊙ F(x_i) + σ ⊙ z, in one combine pass per input after the first (one pass
      // for K = 1): input 0's transform is scaled by the pass that adds input 1, and the noise
      // (and a single output's coefficients) join the last pass. Passing through, acc is F(x)
      // itself (to_spectral writes it in place).
      const acc_t* acc = nullptr;
      const acc_t* raw0 = nullptr;
      for (size_t i = 0; i < K; ++i) {
        const acc_t* s = load(inputs[i], i == 0 && !r.forward ? b : a);
        if (r.forward) {
          acc_t* into = passthrough ? (!r.inverse && out_direct ? out_direct : a) : (i == 0 ? acc_buf : a);
          forward_transform(s, b, into, pc, H, W, U_h, U_w);
          s = into;
        }
        if (passthrough) {
          acc = s;
          break;
        }
        if (i == 0) {
          raw0 = s;
          if (K > 1) continue;
        }
        const bool last = i + 1 == K;
        for (int64_t q = 0; q < pc; ++q) {
          const acc_t* prev = (i <= 1 ? raw0 : acc_buf) + q * n;
          const acc_t* sp = i <= 1 && in_coefs[0] ? row(in_coefs[0], q) : nullptr;
          const acc_t* cur = i > 0 ? s + q * n : nullptr;
          const acc_t* sc = i > 0 && in_coefs[i] ? row(in_coefs[i], q) : nullptr;
          const acc_t* nc = last && noise_coef ? row(noise_coef, q) : nullptr;
          const acc_t* d = last && fuse_out ? row(out_coefs[0], q) : nullptr;
          combine_plane(acc_buf + q * n, prev, sp, cur, sc, nc, d, key, p0 + q, H, W, z);
        }
        acc = acc_buf;
      }

      // out_m = G(d_m ⊙ acc).
      for (size_t m = 0; m < outs.size(); ++m) {
        const acc_t* src = acc;
        if (out_coefs[m] && !fuse_out) {
          for (int64_t q = 0; q < pc; ++q) {
            const acc_t* cf = row(out_coefs[m], q);
            for (int64_t e = 0; e < n; ++e) b[q * n + e] = cf[e] * acc[q * n + e];
          }
          src = b;
        }
        scalar_t* dst = outs[m].data_ptr<scalar_t>() + p0 * n;
        const acc_t* result = src;
        if (r.inverse) {
          // src is acc, b, or (passing through) an input chunk or b; a is free.
          acc_t* into = kConvert ? b : reinterpret_cast<acc_t*>(dst);
          inverse_transform(src, a, into, pc, H, W, U_h, U_w);
          result = into;
        }
        if (static_cast<const void*>(result) != static_cast<const void*>(dst)) {
          for (int64_t e = 0; e < pc * n; ++e) dst[e] = static_cast<scalar_t>(result[e]);
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

TORCH_LIBRARY_IMPL(blurdiff_ops, CPU, m) { BLURDIFF_REGISTER_SPECTRAL_OPS(m, blurdiff::CpuOps); }
