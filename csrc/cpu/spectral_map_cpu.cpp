// The spectral map on the CPU: float32 / float64 (half types computed in float32).
//
// Planes are processed in chunks that stay in cache, one chunk per task of at::parallel_for.
// The transforms of a chunk are two BLAS calls (x·U_w for all planes at once, then U_h^T·(·)
// batched), which beat any hand-written loop. The coefficient products, the sum over inputs, the
// Philox noise and a single output's coefficients take one pass per input after the first (one
// for a single input), row by row so the operands stay in L1. Temporaries are three chunk-sized
// buffers per task, never full-size tensors (ChunkScratch, which says which step uses which).
//
// The steps, in order: noise_row (the Philox normals of one row), forward_transform and
// inverse_transform (of a chunk), combine_plane (one pass over a plane); CpuMap plans a call and
// runs them chunk by chunk.
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

// The per-thread scratch of the map, in one place: three chunk-sized buffers (a chunk's planes in
// acc_t) and one row of noise. Kept per thread across calls (thread_scratch): freeing and
// re-mapping buffers this size on every call costs page faults and cross-core TLB shootdowns
// that undo the parallelism. The steps of CpuMap below use them on one chunk as follows
// ("converting": scalar_t is a half type, computed in acc_t; otherwise inputs are read in place):
//
//   step                        reads                                 writes
//   load input 0                x_0                                   converting: work without a
//                                                                     forward transform, else spec
//   load input i > 0            x_i                                   converting: spec
//   forward_transform input 0   spec or x_0 (work: its intermediate)  acc (passing through: the
//                                                                     output, or spec)
//   forward_transform i > 0     spec or x_i (work: its intermediate)  spec
//   combine_pass                input 0's chunk (acc, work or x_0)    acc (noise: a row of normals
//                               or acc; spec or x_i; the tables       at a time, noise_row)
//   scale_output (unfused d_m)  acc                                   work
//   inverse_transform           acc, work or the input passed         converting: work, else the
//                               through (spec: its intermediate)      output itself
//   store_output                the result where it is not in the     the output (converting)
//                               output: work, or spec (to_spectral)
//
// Input 0's chunk must live until the combine pass of input 1: it lies in acc, work or the input
// itself, which loading input 1 and transforming it leave alone.
template <typename acc_t>
struct ChunkScratch {
  acc_t* spec;   // an input's chunk on its way into the sum: converted, then transformed
  acc_t* work;   // transform intermediates and conversions (see the table)
  acc_t* acc;    // the running sum; nullptr when passing through
  float* noise;  // one row of normals, 4 * ceil(W / 4) floats; nullptr without drawn noise

  ChunkScratch(int64_t chunk_elems, bool with_acc, bool with_noise, int64_t Wq)
      : spec(thread_scratch<acc_t>(0, chunk_elems)),
        work(thread_scratch<acc_t>(1, chunk_elems)),
        acc(with_acc ? thread_scratch<acc_t>(2, chunk_elems) : nullptr),
        noise(with_noise ? thread_scratch<float>(3, 4 * Wq) : nullptr) {}
};

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

// The spectral map of one request, for data of scalar_t: what the call computes is fixed here,
// before the planes are split into chunks among the threads (run); each chunk then goes through
// accumulate (load, forward transform, combine passes with the noise) and write_output (output
// coefficients, inverse transform, store) for every output.
template <typename scalar_t>
class CpuMap {
 public:
  using acc_t = at::opmath_type<scalar_t>;
  static constexpr bool kConvert = !std::is_same<scalar_t, acc_t>::value;

  CpuMap(const MapRequest& r, std::vector<at::Tensor>& outs)
      : H_(r.H()),
        W_(r.W()),
        n_(H_ * W_),
        P_(r.planes()),
        C_(r.planes_per_sample()),
        Wq_(quads_per_row(W_)),
        U_h_(r.U_h.data_ptr<acc_t>()),
        U_w_(r.U_w.data_ptr<acc_t>()),
        forward_(r.forward),
        inverse_(r.inverse) {
    for (const auto& x : r.inputs) inputs_.push_back(x.data_ptr<scalar_t>());
    for (auto& y : outs) outs_.push_back(y.data_ptr<scalar_t>());
    for (const auto& c : r.in_coefs) in_coefs_.push_back(table_ptr<acc_t>(c));
    for (const auto& c : r.out_coefs) out_coefs_.push_back(table_ptr<acc_t>(c));
    noise_coef_ = table_ptr<acc_t>(r.noise_coef);
    t_ = r.t.defined() ? r.t.data_ptr<int64_t>() : nullptr;
    key_ = noise_coef_ ? next_cpu_noise_key(r.generator) : NoiseKey{};
    // The plain transforms (one input, one output, one direction, no coefficients or noise) skip
    // the accumulator: their sum is the input itself.
    passthrough_ = inputs_.size() == 1 && outs_.size() == 1 && !in_coefs_[0] && !noise_coef_ && forward_ != inverse_;
    // A single output's coefficients join the last combine pass.
    fuse_out_ = !passthrough_ && outs_.size() == 1 && out_coefs_[0];

    const int64_t threads = at::get_num_threads();
    chunk_ = std::max<int64_t>(1, kChunkElems / std::max<int64_t>(n_, 1));
    chunk_ = std::min(chunk_, std::max<int64_t>(1, (P_ + 2 * threads - 1) / (2 * threads)));
  }

  void run() const {
    const int64_t num_chunks = (P_ + chunk_ - 1) / chunk_;
    at::parallel_for(0, num_chunks, 1, [&](int64_t begin, int64_t end) {
      const SingleThreadedBlas one_thread;
      const ChunkScratch<acc_t> scratch(chunk_ * n_, !passthrough_, noise_coef_ != nullptr, Wq_);
      for (int64_t c = begin; c < end; ++c) {
        const Chunk ch{c * chunk_, std::min(chunk_, P_ - c * chunk_)};
        const acc_t* acc = accumulate(ch, scratch);
        for (size_t m = 0; m < outs_.size(); ++m) write_output(m, acc, ch, scratch);
      }
    });
  }

 private:
  // The planes [p0, p0 + pc) of one task.
  struct Chunk {
    int64_t p0, pc;
  };

  // Row t[b] of a table for plane q of the chunk.
  const acc_t* row(const acc_t* table, const Chunk& ch, int64_t q) const {
    return table_row(table, t_ ? t_[(ch.p0 + q) / C_] : 0, n_);
  }

  // Step: input i's chunk in acc_t, converted into `into` if scalar_t is a half type.
  const acc_t* load_input(size_t i, const Chunk& ch, acc_t* into) const {
    const scalar_t* src = inputs_[i] + ch.p0 * n_;
    if constexpr (kConvert) {
      const int64_t count = ch.pc * n_;
      for (int64_t e = 0; e < count; ++e) into[e] = static_cast<acc_t>(src[e]);
      return into;
    } else {
      return src;
    }
  }

  // Where the forward transform of input i goes.
  acc_t* spectrum_target(size_t i, const Chunk& ch, const ChunkScratch<acc_t>& s) const {
    if (!passthrough_) return i == 0 ? s.acc : s.spec;
    // to_spectral of acc_t data writes straight into the output chunk.
    if constexpr (!kConvert) {
      if (!inverse_) return outs_[0] + ch.p0 * n_;
    }
    return s.spec;
  }

  // Step: one combine pass over the chunk's planes, acc = sp ⊙ prev + c_i ⊙ x_i (+ the noise and
  // a fused output's coefficients in the last pass). Pass i = 1 scales input 0 (raw0) as it adds
  // input 1; with K = 1, pass 0 scales input 0 alone.
  void combine_pass(size_t i, const acc_t* raw0, const acc_t* x, const Chunk& ch, const ChunkScratch<acc_t>& s) const {
    const bool last = i + 1 == inputs_.size();
    for (int64_t q = 0; q < ch.pc; ++q) {
      const acc_t* prev = (i <= 1 ? raw0 : s.acc) + q * n_;
      const acc_t* sp = i <= 1 && in_coefs_[0] ? row(in_coefs_[0], ch, q) : nullptr;
      const acc_t* cur = i > 0 ? x + q * n_ : nullptr;
      const acc_t* sc = i > 0 && in_coefs_[i] ? row(in_coefs_[i], ch, q) : nullptr;
      const acc_t* nc = last && noise_coef_ ? row(noise_coef_, ch, q) : nullptr;
      const acc_t* d = last && fuse_out_ ? row(out_coefs_[0], ch, q) : nullptr;
      combine_plane(s.acc + q * n_, prev, sp, cur, sc, nc, d, key_, ch.p0 + q, H_, W_, s.noise);
    }
  }

  // acc = Σ_i c_i ⊙ F(x_i) + σ ⊙ z for one chunk, in one combine pass per input after the first
  // (one pass for K = 1): input 0's transform is scaled by the pass that adds input 1, and the
  // noise (and a single output's coefficients) join the last pass. Passing through, the result
  // is F(x) itself (or x).
  const acc_t* accumulate(const Chunk& ch, const ChunkScratch<acc_t>& s) const {
    const size_t K = inputs_.size();
    const acc_t* raw0 = nullptr;
    for (size_t i = 0; i < K; ++i) {
      const acc_t* x = load_input(i, ch, i == 0 && !forward_ ? s.work : s.spec);
      if (forward_) {
        acc_t* into = spectrum_target(i, ch, s);
        forward_transform(x, s.work, into, ch.pc, H_, W_, U_h_, U_w_);
        x = into;
      }
      if (passthrough_) return x;
      if (i == 0) {
        raw0 = x;
        if (K > 1) continue;
      }
      combine_pass(i, raw0, x, ch, s);
    }
    return s.acc;
  }

  // Step: work = d_m ⊙ acc, for an output whose coefficients did not join the last pass.
  const acc_t* scale_output(size_t m, const acc_t* acc, const Chunk& ch, const ChunkScratch<acc_t>& s) const {
    for (int64_t q = 0; q < ch.pc; ++q) {
      const acc_t* cf = row(out_coefs_[m], ch, q);
      const acc_t* a = acc + q * n_;
      acc_t* y = s.work + q * n_;
      for (int64_t e = 0; e < n_; ++e) y[e] = cf[e] * a[e];
    }
    return s.work;
  }

  // Step: the output chunk from a result in acc_t (a copy, or a conversion), unless it is there.
  void store_output(const acc_t* result, scalar_t* dst, const Chunk& ch) const {
    if (static_cast<const void*>(result) == static_cast<const void*>(dst)) return;
    const int64_t count = ch.pc * n_;
    for (int64_t e = 0; e < count; ++e) dst[e] = static_cast<scalar_t>(result[e]);
  }

  // out_m = G(d_m ⊙ acc) for one chunk.
  void write_output(size_t m, const acc_t* acc, const Chunk& ch, const ChunkScratch<acc_t>& s) const {
    const acc_t* src = out_coefs_[m] && !fuse_out_ ? scale_output(m, acc, ch, s) : acc;
    scalar_t* dst = outs_[m] + ch.p0 * n_;
    const acc_t* result = src;
    if (inverse_) {
      // src is acc, work, or (passing through) an input chunk or work; spec is free.
      acc_t* into = kConvert ? s.work : reinterpret_cast<acc_t*>(dst);
      inverse_transform(src, s.spec, into, ch.pc, H_, W_, U_h_, U_w_);
      result = into;
    }
    store_output(result, dst, ch);
  }

  int64_t H_, W_, n_, P_, C_, Wq_;
  const acc_t* U_h_;
  const acc_t* U_w_;
  bool forward_, inverse_;
  std::vector<const scalar_t*> inputs_;
  std::vector<scalar_t*> outs_;
  std::vector<const acc_t*> in_coefs_, out_coefs_;  // nullptr: coefficient 1
  const acc_t* noise_coef_ = nullptr;               // nullptr: no drawn noise
  const int64_t* t_ = nullptr;                      // nullptr: no tables
  NoiseKey key_;
  bool passthrough_ = false, fuse_out_ = false;
  int64_t chunk_ = 1;  // planes per chunk
};

std::vector<at::Tensor> map_cpu(const MapRequest& r) {
  std::vector<at::Tensor> outs;
  const at::Tensor& x = r.inputs[0];
  for (size_t m = 0; m < r.out_coefs.size(); ++m) {
    outs.push_back(at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous)));
  }
  if (r.planes() == 0) return outs;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "blurdiff_spectral_map_cpu",
                                  [&] { CpuMap<scalar_t>(r, outs).run(); });
  return outs;
}

using CpuOps = SpectralOps<map_cpu>;

}  // namespace
}  // namespace blurdiff

TORCH_LIBRARY_IMPL(blurdiff_ops, CPU, m) { BLURDIFF_REGISTER_SPECTRAL_OPS(m, blurdiff::CpuOps); }
