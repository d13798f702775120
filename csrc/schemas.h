// The schemas of the spectral ops, written once: blurdiff_ops.cpp declares them for
// blurdiff_ops, the emulation test build for its own namespace.
#pragma once

#include <torch/library.h>

#include "even_odd.h"
#include "path_cost.h"

#define BLURDIFF_SPECTRAL_SCHEMAS(m)                                                                 \
  m.def("to_spectral(Tensor x, Tensor U_h, Tensor U_w) -> Tensor");                                  \
  m.def("from_spectral(Tensor x_bar, Tensor U_h, Tensor U_w) -> Tensor");                            \
  /* Draws from the generator when noise_coef is given without noise. */                             \
  m.def(                                                                                             \
      "spectral_lincomb(Tensor[] inputs, Tensor coefs, Tensor t, Tensor U_h, Tensor U_w, "           \
      "Tensor? noise_coef=None, Tensor? noise=None, Generator? generator=None) -> Tensor",           \
      {at::Tag::nondeterministic_seeded});                                                           \
  /* The gradients of spectral_lincomb for all K inputs (and the noise, when noise_coef is given) */ \
  /* from one transform of grad. */                                                                  \
  m.def(                                                                                             \
      "spectral_lincomb_backward(Tensor grad, Tensor coefs, Tensor t, Tensor U_h, Tensor U_w, "      \
      "Tensor? noise_coef=None) -> Tensor[]")

// Test hooks of the even/odd structure (even_odd.h): which layout a basis gets, and a switch that
// forces the dense product.
#define BLURDIFF_EVEN_ODD_SCHEMAS(m)                                  \
  m.def("_basis_layout(Tensor U) -> int", &::blurdiff::basis_layout); \
  m.def("_set_even_odd(bool enabled) -> bool", &::blurdiff::set_even_odd)

// Test hooks of the CUDA path (path_cost.h): a switch that forces the fused kernel or the GEMM
// path, and the cost model's estimates.
#define BLURDIFF_MAP_PATH_SCHEMAS(m)                                                                        \
  m.def("_set_map_path(str path) -> str", &::blurdiff::set_map_path);                                       \
  m.def(                                                                                                    \
      "_path_costs(int major, int sms, int smem_per_block, int smem_per_sm, int planes, int H, int W, "     \
      "str sides, int acc_size, int data_size, int inputs, int outputs, int scaled_outputs, bool forward, " \
      "bool inverse) -> float[]",                                                                           \
      &::blurdiff::path_costs)
