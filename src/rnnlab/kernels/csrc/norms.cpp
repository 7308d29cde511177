// Euclidean norms of the rows of a (T, N) tensor, accumulated in double: ||dL/dh_t|| of every step for the
// gradient profile (rnnlab.diagnostics), from the per-step gradients the fused backward hands over.
//
// Why not x.norm(dim=1): torch squares float32 elements in float32. Vanishing gradients are what the profile is
// for, and a tanh RNN's ||dL/dh_t|| reaches 1e-20 within ~100 steps: squares below 1.2e-38 are subnormal (each a
// slow microcode assist, ~8x the time of the whole reduction, measured) and below 1.4e-45 they are 0, so rows
// of ~1e-23 came out as norm 0. x.double().norm() or vector_norm(dtype=float64) is exact but ~4x the time of
// this (a converting pass). Here each float is widened to double before it is squared: exact for every float
// (subnormal inputs included), one pass, vectorised.
#include "common.h"

namespace {

using namespace rnnlab_kernels;

// sqrt(sum_j x_j^2) of one row, in double, four independent partial sums (one would chain n/8 dependent adds).
template <typename T>
double row_norm(const T* __restrict x, int64_t n) {
  V8d a0 = {}, a1 = {}, a2 = {}, a3 = {};
  int64_t j = 0;
  for (; j + 32 <= n; j += 32) {
    const V8d v0 = load8<T>(x + j), v1 = load8<T>(x + j + 8), v2 = load8<T>(x + j + 16), v3 = load8<T>(x + j + 24);
    a0 += v0 * v0;
    a1 += v1 * v1;
    a2 += v2 * v2;
    a3 += v3 * v3;
  }
  for (; j + 8 <= n; j += 8) {
    const V8d v = load8<T>(x + j);
    a0 += v * v;
  }
  double s = hsum((a0 + a1) + (a2 + a3));
  for (; j < n; ++j) s += double(x[j]) * double(x[j]);
  return std::sqrt(s);
}

// x (T, ...) float32/float64 -> (T,) float64: the norm of each x[t] over all its elements.
Tensor step_norms(const Tensor& x) {
  TORCH_CHECK(x.dim() >= 1, "rnnlab step_norms: expected a tensor with a leading step dimension, got a scalar");
  const Tensor c = x.contiguous();
  const int64_t Tn = c.size(0), n = Tn > 0 ? c.numel() / Tn : 0;
  Tensor out = at::empty({Tn}, c.options().dtype(at::kDouble));
  double* o = out.data_ptr<double>();
  AT_DISPATCH_FLOATING_TYPES(c.scalar_type(), "rnnlab step_norms", [&] {
    const scalar_t* p = c.data_ptr<scalar_t>();
    for (int64_t t = 0; t < Tn; ++t) o[t] = row_norm<scalar_t>(p + t * n, n);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(rnnlab_fused, m) { m.def("step_norms(Tensor x) -> Tensor"); }

TORCH_LIBRARY_IMPL(rnnlab_fused, CPU, m) { m.impl("step_norms", &step_norms); }
