// The program of the sanitizer builds of the emulation (scripts/sanitize_emulation.py): linked with
// emulated_ops.cpp, it calls the blurdiff_emu ops through the dispatcher in every configuration the
// CUDA planning can choose: one and several product tiles a thread, float32/float64/float16/bfloat16,
// 1 to 4 inputs, no, given and drawn noise, even/odd/dense/identity sides, the fused kernel in one
// launch and split over several blocks per plane, and the GEMM path.
//
// A program of its own rather than a Python extension: the sanitizer runtime is then the
// program's, with no LD_PRELOAD into an interpreter that was not built for it.
//
//   sanitize_driver            every configuration, each call on every path, which must agree
//                              (the split kernel with the fused one bitwise)
//   sanitize_driver --races    for ThreadSanitizer, where starting a thread costs about a
//                              millisecond: one plane a call, and the split and GEMM paths and
//                              the half types at fewer sizes
//   sanitize_driver --quick    a few small configurations (the planted-bug builds)
//   --thread-stack-kb N        the emulated CUDA threads' stack size
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/eye.h>
#include <ATen/ops/randn.h>

#include <pthread.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

namespace {

using Stack = std::vector<c10::IValue>;

Stack call(const char* name, Stack args) {
  const auto op = c10::Dispatcher::singleton().findSchemaOrThrow(name, "");
  op.callBoxed(&args);
  return args;
}

const char* const kPaths[] = {"fused", "split", "gemm"};

void set_path(const char* path) {
  // Forced, at any plane size: the shared memory per block is unlimited here (the CUDA planning
  // would send 128 x 128 to the GEMM path), so every product shape of the kernel is checked.
  call("blurdiff_emu::set_max_shared_memory", {c10::IValue(static_cast<int64_t>(1) << 30)});
  call("blurdiff_emu::_set_map_path", {c10::IValue(std::string(path))});
}

bool set_even_odd(bool enabled) { return call("blurdiff_emu::_set_even_odd", {c10::IValue(enabled)})[0].toBool(); }

int64_t basis_layout(const at::Tensor& U) { return call("blurdiff_emu::_basis_layout", {c10::IValue(U)})[0].toInt(); }

// The orthonormal DCT-II basis as U = C^T (as blurdiff.bases.make_basis("dct")): column k is even
// about the centre for even k and odd for odd k, so even_odd.h splits it.
at::Tensor dct_basis(int64_t n, at::ScalarType dtype) {
  at::Tensor U = at::empty({n, n}, at::kDouble);
  double* u = U.data_ptr<double>();
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t k = 0; k < n; ++k) {
      const double scale = std::sqrt((k == 0 ? 1.0 : 2.0) / static_cast<double>(n));
      u[i * n + k] = scale * std::cos(M_PI * (static_cast<double>(i) + 0.5) * static_cast<double>(k) / n);
    }
  }
  return U.to(dtype);
}

struct Config {
  int64_t H, W;
  at::ScalarType dtype;
  const char* basis;  // "even/odd", "dense" (the DCT with the halves switched off) or "mixed"
  int64_t planes;     // per sample, of 2 samples (--races: 1 plane in all)
  bool split, gemm;   // the split kernel and the GEMM path too, compared with the fused kernel
  bool lean;          // two input counts and one backward call, not all (--races)
};

struct Failure {};

void expect(bool ok, const std::string& what) {
  if (!ok) {
    std::fprintf(stderr, "sanitize_driver: FAILED: %s\n", what.c_str());
    throw Failure{};
  }
}

std::string describe(const Config& c, const std::string& call) {
  return std::to_string(c.H) + "x" + std::to_string(c.W) + " " + c10::toString(c.dtype) + " " + c.basis + ": " + call;
}

// Another path agrees with the fused kernel: the split kernel bitwise, the GEMM path to the output
// type's rounding.
void compare(const std::vector<at::Tensor>& fused, const std::vector<at::Tensor>& other, const char* path,
             const Config& c, const std::string& name) {
  expect(fused.size() == other.size(), describe(c, name) + ": output counts differ");
  const bool exact = std::strcmp(path, "split") == 0;
  const double tol = exact ? 0 : c.dtype == at::kDouble ? 1e-9 : c.dtype == at::kFloat ? 1e-4 : 2e-2;
  for (size_t i = 0; i < fused.size(); ++i) {
    const at::Tensor a = fused[i].to(at::kDouble), b = other[i].to(at::kDouble);
    const double err = a.sub(b).abs().max().item<double>(), scale = b.abs().max().item<double>();
    expect(std::isfinite(err) && err <= tol * (scale + 1e-30),
           describe(c, name) + ": the fused kernel and the " + path + " path differ by " + std::to_string(err) +
               " (output " + std::to_string(i) + ", largest " + std::to_string(scale) + ")");
  }
}

std::vector<at::Tensor> outputs(const Stack& s) {
  if (s[0].isTensor()) return {s[0].toTensor()};
  return s[0].toTensorVector();
}

// Runs the call on the fused kernel and on the split kernel and the GEMM path where c asks for
// them, and compares each with the first; a generator argument is made fresh, with the same seed,
// for each path so all draw the same noise.
int run_paths(const Config& c, const std::string& name, const char* op, const std::function<Stack()>& args) {
  std::vector<at::Tensor> fused;
  int calls = 0;
  for (const char* path : kPaths) {
    if ((std::strcmp(path, "split") == 0 && !c.split) || (std::strcmp(path, "gemm") == 0 && !c.gemm)) continue;
    set_path(path);
    const std::vector<at::Tensor> got = outputs(call(op, args()));
    if (calls++ == 0) {
      fused = got;
    } else {
      compare(fused, got, path, c, name);
    }
  }
  return calls;
}

// Each configuration runs both transforms, spectral_lincomb with 1 to 4 inputs and the backward op
// with 1 and 4 (5 outputs with the noise's); the noise (none, given, drawn) turns with `turn` so
// that every size meets every pairing of inputs and noise across its types. Lean: spectral_lincomb
// with 4 inputs and with 1, 2 or 3 (by turn), the backward op with 4: the kernel's loops over
// inputs and outputs once and several times, which is what a race between their passes needs.
int run_config(const Config& c, int turn) {
  const bool wide = c.dtype == at::kDouble;
  const at::ScalarType table = wide ? at::kDouble : at::kFloat;
  const bool mixed = std::strcmp(c.basis, "mixed") == 0;
  const at::Tensor U_h = dct_basis(c.H, table);
  const at::Tensor U_w = mixed ? at::eye(c.W, at::TensorOptions().dtype(table)) : dct_basis(c.W, table);
  const bool even_odd = std::strcmp(c.basis, "dense") != 0;
  const bool before = set_even_odd(even_odd);
  if (even_odd) {
    // Otherwise this configuration would test the dense product twice.
    expect(basis_layout(U_h) == (c.H + 1) / 2, describe(c, "U_h is not split into even/odd halves"));
  }

  const int64_t B = c.planes == 0 ? 1 : 2, C = std::max<int64_t>(c.planes, 1), T = 5;
  auto g = at::make_generator<at::CPUGeneratorImpl>(1234 + c.H * 1000 + c.W);
  auto randn = [&](at::IntArrayRef shape, at::ScalarType dtype) {
    return at::randn(shape, g, at::TensorOptions().dtype(at::kDouble)).to(dtype);
  };
  std::vector<at::Tensor> xs;
  for (int k = 0; k < 4; ++k) xs.push_back(randn({B, C, c.H, c.W}, c.dtype));
  const at::Tensor coefs = randn({4, T, c.H, c.W}, table);
  const at::Tensor nc = randn({T, c.H, c.W}, table).abs();
  const at::Tensor noise = randn({B, C, c.H, c.W}, c.dtype);
  const at::Tensor t = at::arange(B, at::TensorOptions().dtype(at::kLong)).mul(3).remainder(T);

  int calls = 0;
  calls += run_paths(c, "to_spectral", "blurdiff_emu::to_spectral", [&] { return Stack{xs[0], U_h, U_w}; });
  calls += run_paths(c, "from_spectral", "blurdiff_emu::from_spectral", [&] { return Stack{xs[1], U_h, U_w}; });
  for (int K = 1; K <= 4; ++K) {
    if (c.lean && K != 4 && K != 1 + turn % 3) continue;
    const std::vector<at::Tensor> in(xs.begin(), xs.begin() + K);
    const at::Tensor cf = coefs.narrow(0, 0, K).contiguous();
    const int noise_kind = (K + turn) % 3;
    const char* noise_name[] = {"no noise", "given noise", "drawn noise"};
    const std::string name = "spectral_lincomb K=" + std::to_string(K) + " " + noise_name[noise_kind];
    calls += run_paths(c, name, "blurdiff_emu::spectral_lincomb", [&] {
      const c10::IValue none;
      if (noise_kind == 0) return Stack{in, cf, t, U_h, U_w, none, none, none};
      if (noise_kind == 1) return Stack{in, cf, t, U_h, U_w, nc, noise, none};
      return Stack{in, cf, t, U_h, U_w, nc, none, c10::IValue(at::make_generator<at::CPUGeneratorImpl>(K))};
    });
  }
  for (const int K : {1, 4}) {
    if (c.lean && K == 1) continue;
    const at::Tensor cf = coefs.narrow(0, 0, K).contiguous();
    const bool with_noise = (K + turn) % 2 == 0 || K == 4;
    calls += run_paths(c, "spectral_lincomb_backward K=" + std::to_string(K), "blurdiff_emu::spectral_lincomb_backward",
                       [&] { return Stack{xs[K - 1], cf, t, U_h, U_w, with_noise ? c10::IValue(nc) : c10::IValue()}; });
  }
  set_even_odd(before);
  return calls;
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false, races = false;
  for (int i = 1; i < argc; ++i) {
    quick |= std::strcmp(argv[i], "--quick") == 0;
    races |= std::strcmp(argv[i], "--races") == 0;
    if (std::strcmp(argv[i], "--thread-stack-kb") == 0 && i + 1 < argc) {
      // Smaller stacks for the emulation's threads (a kernel needs a few KB): AddressSanitizer
      // poisons and clears each new thread's whole stack, and the run starts about a million.
      pthread_attr_t attr;
      pthread_attr_init(&attr);
      pthread_attr_setstacksize(&attr, static_cast<size_t>(std::atoi(argv[++i])) * 1024);
      pthread_setattr_default_np(&attr);
      pthread_attr_destroy(&attr);
    }
  }
  // The emulation runs its own threads; ATen's intra-op pool (the GEMM path's matmuls) is not
  // under test.
  at::set_num_threads(1);
  // Fewer product tiles than threads (16x16, 31x16), one a thread (64x64, 48x80) and several
  // (65x65, 128x128); even, odd and non-square sides.
  std::vector<std::pair<int64_t, int64_t>> sizes = {{16, 16}, {31, 16}, {64, 64}, {48, 80}, {65, 65}, {128, 128}};
  std::vector<at::ScalarType> dtypes = {at::kFloat, at::kDouble, at::kHalf, at::kBFloat16};
  if (quick) {
    sizes = {{16, 16}, {31, 16}};
    dtypes = {at::kFloat, at::kDouble};
  }
  int configs = 0, calls = 0;
  try {
    for (const auto& [H, W] : sizes) {
      for (const at::ScalarType dtype : dtypes) {
        const bool half = dtype == at::kHalf || dtype == at::kBFloat16;
        // 128 x 128 is the slowest case by far: float32 and float64 only (65 x 65 runs the same
        // code for the half types). Under --races the half types, whose shared memory is
        // float32's, at one size of each tiling.
        if (H == 128 && half) continue;
        if (races && half && !(H == 16 || H == 48 || H == 65)) continue;
        for (const char* basis : {"even/odd", "dense", "mixed"}) {
          const bool mixed = std::strcmp(basis, "mixed") == 0;
          if (mixed && (H == 128 || dtype != at::kFloat)) continue;
          const int64_t planes = races ? 0 : H * W > 48 * 80 ? 1 : 2;
          // The GEMM path's own code is the combine kernel, the same for the half types as for
          // float32 (their accumulator), and free of shared memory and barriers: under --races,
          // float32 at a few sizes (a ragged row among them), since each of its blocks costs
          // 256 threads.
          const bool gemm = races ? dtype == at::kFloat && !mixed && (H * W <= 31 * 16 || H == 65) : !half;
          // The split kernel's own code is its bands' bounds and the spectrum's store and load,
          // the same for every product shape: at the small sizes in every type and basis, and at
          // 64 x 64 and 65 x 65 (9 blocks a plane, bands of unequal length) in float32 and float64
          // without the dense product; under --races at 31 x 16 (4 blocks a plane) and 65 x 65 in
          // float32 with the halves.
          const bool dense = std::strcmp(basis, "dense") == 0;
          const bool split = races
                                 ? (H == 31 && !half && !mixed) || (H == 65 && dtype == at::kFloat && !dense && !mixed)
                                 : H <= 31 || ((H == 64 || H == 65) && !half && !dense);
          const auto start = std::chrono::steady_clock::now();
          calls += run_config(Config{H, W, dtype, basis, planes, split, gemm, races}, configs);
          ++configs;
          const std::chrono::duration<double> took = std::chrono::steady_clock::now() - start;
          std::printf("sanitize_driver: %lldx%lld %s %s: fused%s%s clean (%.1f s)\n", static_cast<long long>(H),
                      static_cast<long long>(W), c10::toString(dtype), basis, split ? ", split" : "",
                      gemm ? ", gemm" : "", took.count());
          std::fflush(stdout);
        }
      }
    }
  } catch (const Failure&) {
    return 1;
  }
  std::printf("sanitize_driver: %d configurations, %d calls%s\n", configs, calls, races ? "" : ", the paths agree");
  return 0;
}
