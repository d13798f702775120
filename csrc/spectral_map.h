// One operator family, one description: every op of blurdiff_ops is a "spectral map"
//
//   acc    = Σ_i  c_i[t] ⊙ F(x_i)   (+ n[t] ⊙ z̄, z̄ drawn from Philox)
//   out_m  = G(d_m[t] ⊙ acc)
//
// with F = to_spectral (or the identity) and G = from_spectral (or the identity):
//   to_spectral               one input, F, no G
//   from_spectral             one input, no F, G
//   spectral_lincomb          K inputs (+ the given noise, with coefficient n), F and G
//   spectral_lincomb_backward one input (the gradient), K (+1) outputs with coefficients c_k (n)
//
// Each backend implements `std::vector<at::Tensor> map(const MapRequest&)` once; the ops below
// only build requests, so the CPU, CUDA and emulated builds check and shape arguments alike.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/core/Generator.h>
#include <c10/util/Exception.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "even_odd.h"
#include "spectral_common.h"

namespace blurdiff {

// By the time a backend's map sees a request (SpectralOps::run), every defined tensor in it is
// contiguous: backends index raw data pointers as dense row-major arrays.
struct MapRequest {
  const char* op;                     // for error messages
  std::vector<at::Tensor> inputs;     // same shape [..., H, W], dtype and device
  std::vector<at::Tensor> in_coefs;   // one per input: a table [T, H, W], or undefined (= 1)
  at::Tensor noise_coef;              // defined: add noise_coef[t] ⊙ z̄ with z̄ drawn here
  std::vector<at::Tensor> out_coefs;  // one per output: a table [T, H, W], or undefined (= 1)
  at::Tensor t;                       // int64 [B], or undefined when no table is used
  int64_t T = 0;                      // rows of the tables
  at::Tensor U_h, U_w;                // [H, H], [W, W] in the accumulation dtype
  bool forward = true, inverse = true;
  std::optional<at::Generator> generator;
  // The structure of U_h and U_w (even_odd.h), set by SpectralOps::run for every request.
  std::shared_ptr<const SideSplit> split_h, split_w;

  int64_t H() const { return inputs[0].size(-2); }
  int64_t W() const { return inputs[0].size(-1); }
  int64_t planes() const { return H() * W() == 0 ? 0 : inputs[0].numel() / (H() * W()); }
  // Planes per sample: t[b] applies to planes [b * C, (b + 1) * C).
  int64_t planes_per_sample() const { return t.defined() && t.size(0) > 0 ? planes() / t.size(0) : 1; }
};

// The data of a table (or any dense tensor) of T, or nullptr where it is undefined (coefficient 1,
// or no term).
template <typename T>
const T* table_ptr(const at::Tensor& x) {
  return x.defined() ? x.data_ptr<T>() : nullptr;
}

inline at::ScalarType accumulate_type(at::ScalarType data) { return data == at::kDouble ? at::kDouble : at::kFloat; }

inline bool is_data_type(at::ScalarType s) {
  return s == at::kFloat || s == at::kDouble || s == at::kHalf || s == at::kBFloat16;
}

inline void check_table(const char* op, const char* name, const at::Tensor& x, int64_t dim, at::ScalarType dtype,
                        const at::Device& device) {
  TORCH_CHECK_VALUE(x.dim() == dim, op, ": ", name, " must have ", dim, " dimensions, got ", x.sizes());
  TORCH_CHECK_VALUE(x.scalar_type() == dtype, op, ": ", name, " must have dtype ", dtype, ", got ", x.scalar_type());
  TORCH_CHECK_VALUE(x.device() == device, op, ": ", name, " is on ", x.device(), " but the data is on ", device);
}

inline void check_basis(const char* op, const at::Tensor& U_h, const at::Tensor& U_w, int64_t H, int64_t W,
                        at::ScalarType dtype, const at::Device& device) {
  check_table(op, "U_h", U_h, 2, dtype, device);
  check_table(op, "U_w", U_w, 2, dtype, device);
  TORCH_CHECK_VALUE(U_h.size(0) == H && U_h.size(1) == H, op, ": U_h must have shape (", H, ", ", H, "), got ",
                    U_h.sizes());
  TORCH_CHECK_VALUE(U_w.size(0) == W && U_w.size(1) == W, op, ": U_w must have shape (", W, ", ", W, "), got ",
                    U_w.sizes());
}

inline MapRequest transform_request(const char* op, const at::Tensor& x, const at::Tensor& U_h, const at::Tensor& U_w,
                                    bool to_spectral) {
  TORCH_CHECK_VALUE(x.dim() >= 2, op, ": x must have at least 2 dimensions [..., H, W], got ", x.sizes());
  TORCH_CHECK_VALUE(is_data_type(x.scalar_type()), op, ": x must be float32, float64, float16 or bfloat16, got ",
                    x.scalar_type());
  check_basis(op, U_h, U_w, x.size(-2), x.size(-1), accumulate_type(x.scalar_type()), x.device());
  MapRequest r;
  r.op = op;
  r.inputs = {x};
  r.in_coefs = {at::Tensor()};
  r.out_coefs = {at::Tensor()};
  r.U_h = U_h;
  r.U_w = U_w;
  r.forward = to_spectral;
  r.inverse = !to_spectral;
  return r;
}

inline void check_samples(MapRequest& r, const at::Tensor& coefs, const at::Tensor& t) {
  const at::Tensor& x = r.inputs[0];
  TORCH_CHECK_VALUE(x.dim() == 4, r.op, ": the data must be [B, C, H, W], got ", x.sizes());
  TORCH_CHECK_VALUE(is_data_type(x.scalar_type()), r.op,
                    ": the data must be float32, float64, float16 or bfloat16, got ", x.scalar_type());
  const auto acc = accumulate_type(x.scalar_type());
  check_table(r.op, "coefs", coefs, 4, acc, x.device());
  TORCH_CHECK_VALUE(coefs.size(2) == x.size(2) && coefs.size(3) == x.size(3), r.op, ": coefs must have shape [K, T, ",
                    x.size(2), ", ", x.size(3), "], got ", coefs.sizes());
  TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == x.size(0), r.op, ": t must have shape [B=", x.size(0), "], got ",
                    t.sizes());
  TORCH_CHECK_VALUE(t.scalar_type() == at::kLong, r.op, ": t must be int64, got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.device() == x.device(), r.op, ": t is on ", t.device(), " but the data is on ", x.device());
  check_basis(r.op, r.U_h, r.U_w, x.size(2), x.size(3), acc, x.device());
  r.t = t;
  r.T = coefs.size(1);
}

inline void check_noise_coef(const MapRequest& r, const at::Tensor& noise_coef) {
  const at::Tensor& x = r.inputs[0];
  check_table(r.op, "noise_coef", noise_coef, 3, accumulate_type(x.scalar_type()), x.device());
  TORCH_CHECK_VALUE(noise_coef.size(0) == r.T && noise_coef.size(1) == x.size(2) && noise_coef.size(2) == x.size(3),
                    r.op, ": noise_coef must have shape [T=", r.T, ", ", x.size(2), ", ", x.size(3), "], got ",
                    noise_coef.sizes());
}

inline MapRequest lincomb_request(at::TensorList inputs, const at::Tensor& coefs, const at::Tensor& t,
                                  const at::Tensor& U_h, const at::Tensor& U_w,
                                  const std::optional<at::Tensor>& noise_coef, const std::optional<at::Tensor>& noise,
                                  std::optional<at::Generator> generator) {
  MapRequest r;
  r.op = "spectral_lincomb";
  TORCH_CHECK_VALUE(!inputs.empty(), r.op, ": inputs must hold at least one tensor");
  r.U_h = U_h;
  r.U_w = U_w;
  r.inputs = inputs.vec();
  check_samples(r, coefs, t);
  TORCH_CHECK_VALUE(coefs.size(0) == static_cast<int64_t>(inputs.size()), r.op,
                    ": coefs must have shape [K=", inputs.size(), ", T, H, W], got ", coefs.sizes());
  for (size_t k = 0; k < inputs.size(); ++k) {
    const at::Tensor& x = inputs[k];
    TORCH_CHECK_VALUE(x.sizes() == inputs[0].sizes(), r.op, ": inputs[", k, "] has shape ", x.sizes(),
                      " but inputs[0] has ", inputs[0].sizes());
    TORCH_CHECK_VALUE(x.scalar_type() == inputs[0].scalar_type(), r.op, ": inputs[", k, "] has dtype ", x.scalar_type(),
                      " but inputs[0] has ", inputs[0].scalar_type());
    TORCH_CHECK_VALUE(x.device() == inputs[0].device(), r.op, ": inputs[", k, "] is on ", x.device(),
                      " but inputs[0] is on ", inputs[0].device());
    r.in_coefs.push_back(coefs.select(0, k));
  }
  const bool has_noise = noise.has_value() && noise->defined();
  const bool has_noise_coef = noise_coef.has_value() && noise_coef->defined();
  TORCH_CHECK_VALUE(!has_noise || has_noise_coef, r.op, ": noise was given but noise_coef is None");
  if (has_noise_coef) {
    check_noise_coef(r, *noise_coef);
    if (has_noise) {
      TORCH_CHECK_VALUE(noise->sizes() == inputs[0].sizes() && noise->scalar_type() == inputs[0].scalar_type() &&
                            noise->device() == inputs[0].device(),
                        r.op, ": noise must match the inputs' shape, dtype and device");
      r.inputs.push_back(*noise);
      r.in_coefs.push_back(*noise_coef);
    } else {
      r.noise_coef = *noise_coef;
      r.generator = std::move(generator);
    }
  }
  r.out_coefs = {at::Tensor()};
  return r;
}

inline MapRequest lincomb_backward_request(const at::Tensor& grad, const at::Tensor& coefs, const at::Tensor& t,
                                           const at::Tensor& U_h, const at::Tensor& U_w,
                                           const std::optional<at::Tensor>& noise_coef) {
  MapRequest r;
  r.op = "spectral_lincomb_backward";
  r.U_h = U_h;
  r.U_w = U_w;
  r.inputs = {grad};
  r.in_coefs = {at::Tensor()};
  check_samples(r, coefs, t);
  for (int64_t k = 0; k < coefs.size(0); ++k) r.out_coefs.push_back(coefs.select(0, k));
  if (noise_coef.has_value() && noise_coef->defined()) {
    check_noise_coef(r, *noise_coef);
    r.out_coefs.push_back(*noise_coef);
  }
  return r;
}

// Any view (strided, expanded, offset, transposed) is a valid argument, but the backends read
// raw pointers as dense arrays: every tensor is made contiguous here, once for all backends and
// ops (free for tensors that already are).
inline MapRequest make_dense(const MapRequest& r) {
  MapRequest d = r;
  auto dense = [](at::Tensor& x) {
    if (x.defined()) x = x.contiguous();
  };
  for (auto& x : d.inputs) dense(x);
  for (auto& c : d.in_coefs) dense(c);
  for (auto& c : d.out_coefs) dense(c);
  dense(d.noise_coef);
  dense(d.t);
  dense(d.U_h);
  dense(d.U_w);
  return d;
}

// t indexes table rows; CPU tensors are checked here with a clear error (CUDA kernels assert,
// rather than synchronise to read t back).
inline void check_t_range(const MapRequest& r) {
  if (!r.t.defined() || !r.t.device().is_cpu()) return;
  const int64_t* v = r.t.data_ptr<int64_t>();
  for (int64_t b = 0; b < r.t.numel(); ++b) {
    TORCH_CHECK_VALUE(v[b] >= 0 && v[b] < r.T, r.op, ": t must lie in [0, ", r.T - 1, "] (the rows of coefs), got ",
                      v[b], " at index ", b);
  }
}

// The four ops of the library over one backend's map function.
template <std::vector<at::Tensor> (*Map)(const MapRequest&)>
struct SpectralOps {
  static std::vector<at::Tensor> run(const MapRequest& r) {
    MapRequest d = make_dense(r);
    check_t_range(d);
    d.split_h = side_split_for_map(d.U_h);
    d.split_w = side_split_for_map(d.U_w);
    return Map(d);
  }
  static at::Tensor to_spectral(const at::Tensor& x, const at::Tensor& U_h, const at::Tensor& U_w) {
    return run(transform_request("to_spectral", x, U_h, U_w, true))[0];
  }
  static at::Tensor from_spectral(const at::Tensor& x_bar, const at::Tensor& U_h, const at::Tensor& U_w) {
    return run(transform_request("from_spectral", x_bar, U_h, U_w, false))[0];
  }
  static at::Tensor spectral_lincomb(at::TensorList inputs, const at::Tensor& coefs, const at::Tensor& t,
                                     const at::Tensor& U_h, const at::Tensor& U_w,
                                     const std::optional<at::Tensor>& noise_coef,
                                     const std::optional<at::Tensor>& noise, std::optional<at::Generator> generator) {
    return run(lincomb_request(inputs, coefs, t, U_h, U_w, noise_coef, noise, std::move(generator)))[0];
  }
  static std::vector<at::Tensor> spectral_lincomb_backward(const at::Tensor& grad, const at::Tensor& coefs,
                                                           const at::Tensor& t, const at::Tensor& U_h,
                                                           const at::Tensor& U_w,
                                                           const std::optional<at::Tensor>& noise_coef) {
    return run(lincomb_backward_request(grad, coefs, t, U_h, U_w, noise_coef));
  }
};

}  // namespace blurdiff

// The four ops' kernels of one backend, inside a TORCH_LIBRARY_IMPL block.
#define BLURDIFF_REGISTER_SPECTRAL_OPS(m, Ops)        \
  m.impl("to_spectral", &Ops::to_spectral);           \
  m.impl("from_spectral", &Ops::from_spectral);       \
  m.impl("spectral_lincomb", &Ops::spectral_lincomb); \
  m.impl("spectral_lincomb_backward", &Ops::spectral_lincomb_backward)
