// The even/odd structure of a 1-D basis, found once per matrix and shared by every backend.
//
// The bases the project builds are centrosymmetric: every column v of U is even (J v = v) or odd
// (J v = -v), J the exchange matrix (the Gaussian blur matrix is symmetric Toeplitz, hence
// J T J = T; DCT-II vectors alternate). Then U^T x needs only half the multiply-adds:
//   even columns see   fold+(x)[l] = x[l] + x[n-1-l]   (l < n/2; for odd n, the middle x[m] once)
//   odd columns see    fold-(x)[l] = x[l] - x[n-1-l]   (l < n/2)
// so U^T x = [E^T fold+(x); O^T fold-(x)] with the half-size blocks E [ne, ne] and O [no, no]
// (E[l][k] = U[l][order[k]], O[l][k] = U[l][order[ne + k]]), ne = ceil(n/2), no = floor(n/2).
// The result is in the "split order" of frequencies: slot s holds column order[s], the even
// columns first, each kind in ascending column order. The inverse U y reads the split order:
//   e = E y[:ne], o = O y[ne:],  x[l] = e[l] + o[l],  x[n-1-l] = e[l] - o[l]  (l < no; x[m] = e[m]).
//
// A basis without the structure (a random orthogonal U) keeps the dense product; the identity
// basis needs no product at all.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <list>
#include <memory>
#include <mutex>
#include <vector>

namespace blurdiff {

struct SideSplit {
  enum Kind { kDense, kEvenOdd, kIdentity };
  Kind kind = kDense;
  int64_t n = 0;
  int64_t ne = 0;              // even columns (kEvenOdd), ceil(n / 2)
  std::vector<int32_t> order;  // kEvenOdd: slot -> column of U
  at::Tensor blocks;           // kEvenOdd: E then O, row-major, U's dtype and device, ne² + no² values
  at::Tensor indices;          // kEvenOdd: int32 [2 n] on U's device: column -> slot, then order

  int64_t no() const { return n - ne; }
  bool even_odd() const { return kind == kEvenOdd; }
};

// Off for tests and benchmarks that compare with the dense product (every backend honours it).
inline std::atomic<bool>& even_odd_enabled() {
  static std::atomic<bool> enabled{true};
  return enabled;
}

// A column is even (odd) when |v[l] - v[n-1-l]| (|v[l] + v[n-1-l]|) <= tol * max|v| for every l.
// float64: 1e-10, above the rounding of a float64 eigensolver (Gaussian bases measure <= 1.1e-11
// at n = 256) and far below any structure a user could have meant to break; float32: 4 ulps,
// since rounding a float64 pair that agrees to 1e-11 can split it by one ulp.
inline double even_odd_tolerance(at::ScalarType dtype) { return dtype == at::kDouble ? 1e-10 : 4 * 1.1920929e-7; }

// +1 even, -1 odd, 0 neither, per column of a dense row-major [n, n] matrix.
template <typename T>
std::vector<int> column_parity(const T* U, int64_t n, double tol) {
  std::vector<int> parity(n, 0);
  for (int64_t c = 0; c < n; ++c) {
    double peak = 0, sym = 0, anti = 0;
    for (int64_t l = 0; l < n; ++l) {
      const double a = U[l * n + c], b = U[(n - 1 - l) * n + c];
      peak = std::max(peak, std::abs(a));
      sym = std::max(sym, std::abs(a - b));
      anti = std::max(anti, std::abs(a + b));
    }
    if (peak > 0) parity[c] = sym <= tol * peak ? 1 : anti <= tol * peak ? -1 : 0;
  }
  return parity;
}

template <typename T>
bool is_identity(const T* U, int64_t n) {
  for (int64_t r = 0; r < n; ++r)
    for (int64_t c = 0; c < n; ++c)
      if (U[r * n + c] != (r == c ? T(1) : T(0))) return false;
  return true;
}

// The structure of U [n, n] (float32 or float64, any device), computed from its values.
inline SideSplit find_side_split(const at::Tensor& U) {
  const at::Tensor host = U.to(at::kCPU).contiguous();
  SideSplit s;
  s.n = U.size(0);
  const int64_t n = s.n;
  std::vector<int> parity;
  bool identity = false;
  if (host.scalar_type() == at::kDouble) {
    identity = is_identity(host.data_ptr<double>(), n);
    parity = column_parity(host.data_ptr<double>(), n, even_odd_tolerance(at::kDouble));
  } else {
    identity = is_identity(host.data_ptr<float>(), n);
    parity = column_parity(host.data_ptr<float>(), n, even_odd_tolerance(at::kFloat));
  }
  if (identity) {
    s.kind = SideSplit::kIdentity;
    return s;
  }
  const int64_t evens = std::count(parity.begin(), parity.end(), 1);
  const int64_t odds = std::count(parity.begin(), parity.end(), -1);
  // An orthogonal U has exactly ceil(n/2) even and floor(n/2) odd columns; anything else is not
  // a basis the folds can serve.
  if (evens != (n + 1) / 2 || odds != n / 2) return s;
  s.kind = SideSplit::kEvenOdd;
  s.ne = evens;
  for (int sign : {1, -1})
    for (int64_t c = 0; c < n; ++c)
      if (parity[c] == sign) s.order.push_back(static_cast<int32_t>(c));
  const int64_t ne = s.ne, no = s.no();
  at::Tensor blocks = at::empty({ne * ne + no * no}, host.options());
  AT_DISPATCH_FLOATING_TYPES(host.scalar_type(), "blurdiff_even_odd_blocks", [&] {
    const scalar_t* u = host.data_ptr<scalar_t>();
    scalar_t* E = blocks.data_ptr<scalar_t>();
    scalar_t* O = E + ne * ne;
    for (int64_t l = 0; l < ne; ++l)
      for (int64_t k = 0; k < ne; ++k) E[l * ne + k] = u[l * n + s.order[k]];
    for (int64_t l = 0; l < no; ++l)
      for (int64_t k = 0; k < no; ++k) O[l * no + k] = u[l * n + s.order[ne + k]];
  });
  s.blocks = blocks.to(U.device());
  at::Tensor indices = at::empty({2 * n}, at::TensorOptions().dtype(at::kInt));
  int32_t* slot = indices.data_ptr<int32_t>();
  for (int64_t k = 0; k < n; ++k) {
    slot[s.order[k]] = static_cast<int32_t>(k);
    slot[n + k] = s.order[k];
  }
  s.indices = indices.to(U.device());
  return s;
}

// find_side_split, remembered for the last few matrices seen (the process passes the same U_h and
// U_w on every call; on a GPU the values are read back only once). An entry holds the tensor
// itself, so its TensorImpl cannot be freed and reused by another matrix while cached, and its
// version counter catches in-place writes. Inference tensors have no version counter: not cached.
// The cache is never destroyed: at exit its CUDA tensors would be freed after the CUDA runtime.
inline std::shared_ptr<const SideSplit> side_split(const at::Tensor& U) {
  if (U.is_inference()) return std::make_shared<const SideSplit>(find_side_split(U));
  struct Entry {
    at::Tensor U;
    int64_t version;
    std::shared_ptr<const SideSplit> split;
  };
  static std::mutex& mutex = *new std::mutex;
  static std::list<Entry>& entries = *new std::list<Entry>;  // most recent first
  constexpr size_t kCapacity = 8;
  const int64_t version = U._version();
  {
    std::lock_guard<std::mutex> lock(mutex);
    for (auto it = entries.begin(); it != entries.end(); ++it) {
      if (it->U.unsafeGetTensorImpl() == U.unsafeGetTensorImpl() && it->version == version) {
        entries.splice(entries.begin(), entries, it);
        return entries.front().split;
      }
    }
  }
  auto split = std::make_shared<const SideSplit>(find_side_split(U));
  std::lock_guard<std::mutex> lock(mutex);
  entries.push_front(Entry{U, version, split});
  if (entries.size() > kCapacity) entries.pop_back();
  return split;
}

// The split a backend must use for U: its structure, or dense when the switch is off.
inline std::shared_ptr<const SideSplit> side_split_for_map(const at::Tensor& U) {
  if (!even_odd_enabled().load()) {
    auto dense = std::make_shared<SideSplit>();
    dense->n = U.size(0);
    return dense;
  }
  return side_split(U);
}

// The layout a backend would use for U: -1 identity, 0 dense, else the number of even columns
// (the op blurdiff_ops::_basis_layout, for tests; the switch above is blurdiff_ops::_set_even_odd).
inline int64_t basis_layout(const at::Tensor& U) {
  TORCH_CHECK_VALUE(U.dim() == 2 && U.size(0) == U.size(1), "_basis_layout: U must be square, got ", U.sizes());
  TORCH_CHECK_VALUE(U.scalar_type() == at::kFloat || U.scalar_type() == at::kDouble,
                    "_basis_layout: U must be float32 or float64, got ", U.scalar_type());
  const auto split = side_split_for_map(U);
  return split->kind == SideSplit::kIdentity ? -1 : split->ne;
}

inline bool set_even_odd(bool enabled) { return even_odd_enabled().exchange(enabled); }

}  // namespace blurdiff
