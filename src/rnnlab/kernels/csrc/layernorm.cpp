// Compiled step loops of the layer-normalised LSTM and GRU (Ba, Kiros & Hinton 2016), see
// rnnlab/kernels/layernorm.py for the maths and the autograd glue.
//
// Python hands over the input projection of every step, xw = x W_ih^T (T, B, G) (one GEMM over all T*B rows,
// G = 4H LSTM, 3H GRU), and gets back d(xw) for the big input GEMMs, exactly like fused.cpp. Per step here:
// hw = (h_{t-1} * mask) W_hh^T (one GEMM into the step's rows of NHW), then per batch row the layer norms of xw
// and hw over their G features (normalised in place: xw becomes n_x, NHW holds n_hw; their 1/std go to RX, RH),
// the gates, the cell update and, for the LSTM, the layer norm of the new cell (NC, RC). The activated gates (GS)
// and the LSTM's tanh(y_c) (TY) are stored only when asked to (`gates`: layernorm.py asks for small runs and
// for return_gates); otherwise the backward recomputes them from n_x and n_hw (an exp and a division per gate
// instead of one more (T, B, G) buffer; for large runs the fresh buffer costs the forward more than the
// recompute costs the backward, see KEEP_GATES_BYTES in layernorm.py). At small sizes most of these loops' cost
// is first writes to memory that is not in cache, so the backward writes d(xw) over the kept gates (dxw_buffer).
//
// Backward per step: the gates (kept or recomputed), the pointwise derivative through the cell (and the cell's
// layer norm), the layer-norm derivatives of both halves to d(xw) (kept for all steps: dX and dW_ih are GEMMs in
// Python) and d(hw),
// then dh_{t-1} += (d(hw)_t W_hh) * mask (one GEMM); dW_hh += d(hw)^T (h_{t-1} * mask) is summed here, one GEMM
// per chunk of steps (RecurrentWeightGrad). Gains, shifts and biases are summed per step while
// the rows are in cache. The row-wise layer-norm derivative, with y = n g + shift, n = (x - mean) rstd:
//   dx = rstd (dn - mean(dn) - n mean(dn n)),  dn = dy g,  dg += dy n,  dshift += dy.
//
// Layout, lengths and reverse as in fused.cpp: row-major, time-major, gate blocks LSTM i,f,g,o and GRU r,z,n;
// steps t >= lengths[b] keep row b's state and output zeros. Zoneout keep tensors (T, B, H) mix the old and the
// new state: s_t = k_t s_{t-1} + (1 - k_t) new_t.
#include "common.h"

namespace {

using namespace rnnlab_kernels;

constexpr double kEps = 1e-5;  // torch.nn.LayerNorm's default, as cellspec._ln

// The row reductions (means over G = 4H or 3H features, several per row and step) accumulate in double, also
// for float rows: the layer-norm derivative subtracts means of terms of both signs, and float partial sums there
// left the float32 gradients 2-4x further from float64 than the reference loop's (measured on the tests' cases).
// The backward of both 4H-wide halves adds short float blocks (4 vectors) into the double totals: kFloatBlock.
// The vector types and sums (V8d, load8, widen, hsum) are common.h's.

// mean and 1/sqrt(var + eps) of one row x (n), var the biased variance about the mean.
// float rows: one pass of sum and sum of squares in double, var = E[x^2] - mean^2. A float has 24 bits, so the
// double sums are all but exact and the difference loses nothing that matters unless |mean| exceeds the
// spread by ~1e6; one pass instead of two over each of the three normalised rows per step (measured in
// benchmarks/ab_layernorm.py). double rows: two passes (about the mean), like torch, since there the one-pass
// difference would cancel the digits that float64 callers (gradcheck) rely on.
// Four independent partial sums per pass: one would make each pass a chain of n/8 dependent adds.
template <typename T>
inline void row_stats(const T* __restrict x, int n, T& mean, T& rstd) {
  if constexpr (sizeof(T) == sizeof(float)) {
    V8d a0 = {}, a1 = {}, q0 = {}, q1 = {};
    int j = 0;
    for (; j + 16 <= n; j += 16) {
      const V8d v0 = load8<T>(x + j), v1 = load8<T>(x + j + 8);
      a0 += v0;
      a1 += v1;
      q0 += v0 * v0;
      q1 += v1 * v1;
    }
    for (; j + 8 <= n; j += 8) {
      const V8d v = load8<T>(x + j);
      a0 += v;
      q0 += v * v;
    }
    double s = hsum(a0 + a1), q = hsum(q0 + q1);
    for (; j < n; ++j) {
      s += x[j];
      q += double(x[j]) * x[j];
    }
    const double m = s / n;
    const double v = std::max(q / n - m * m, 0.0);
    mean = T(m);
    rstd = T(1.0 / std::sqrt(v + kEps));
    return;
  }
  V8d a0 = {}, a1 = {}, a2 = {}, a3 = {};
  int j = 0;
  for (; j + 32 <= n; j += 32) {
    a0 += load8<T>(x + j);
    a1 += load8<T>(x + j + 8);
    a2 += load8<T>(x + j + 16);
    a3 += load8<T>(x + j + 24);
  }
  for (; j + 8 <= n; j += 8) a0 += load8<T>(x + j);
  double s = hsum((a0 + a1) + (a2 + a3));
  for (; j < n; ++j) s += x[j];
  const double m = s / n;
  V8d b0 = {}, b1 = {}, b2 = {}, b3 = {};
  j = 0;
  for (; j + 32 <= n; j += 32) {
    const V8d d0 = load8<T>(x + j) - m, d1 = load8<T>(x + j + 8) - m;
    const V8d d2 = load8<T>(x + j + 16) - m, d3 = load8<T>(x + j + 24) - m;
    b0 += d0 * d0;
    b1 += d1 * d1;
    b2 += d2 * d2;
    b3 += d3 * d3;
  }
  for (; j + 8 <= n; j += 8) {
    const V8d d = load8<T>(x + j) - m;
    b0 += d * d;
  }
  double v = hsum((b0 + b1) + (b2 + b3));
  for (; j < n; ++j) v += (x[j] - m) * (x[j] - m);
  mean = T(m);
  rstd = T(1.0 / std::sqrt(v / n + kEps));
}

// row_stats of two rows of the same length at once (the forward's n_x and n_hw halves): for float rows one loop
// with four independent double chains, whose tree sums, square roots and divisions overlap, instead of two calls
// each waiting on its own; double rows as row_stats (two passes each).
template <typename T>
inline void row_stats2(const T* __restrict x, const T* __restrict y, int n, T& mx, T& rx, T& my, T& ry) {
  if constexpr (sizeof(T) == sizeof(float)) {
    V8d ax = {}, qx = {}, ay = {}, qy = {};
    int j = 0;
    for (; j + 8 <= n; j += 8) {
      const V8d u = load8<T>(x + j), v = load8<T>(y + j);
      ax += u;
      qx += u * u;
      ay += v;
      qy += v * v;
    }
    double sx = hsum(ax), sqx = hsum(qx), sy = hsum(ay), sqy = hsum(qy);
    for (; j < n; ++j) {
      sx += x[j];
      sqx += double(x[j]) * x[j];
      sy += y[j];
      sqy += double(y[j]) * y[j];
    }
    const double mxd = sx / n, myd = sy / n;
    mx = T(mxd);
    my = T(myd);
    rx = T(1.0 / std::sqrt(std::max(sqx / n - mxd * mxd, 0.0) + kEps));
    ry = T(1.0 / std::sqrt(std::max(sqy / n - myd * myd, 0.0) + kEps));
    return;
  }
  row_stats<T>(x, n, mx, rx);
  row_stats<T>(y, n, my, ry);
}

// Layer-normalise one row in place (x <- (x - mean) rstd) and return its rstd.
template <typename T>
inline T normalise_row(T* __restrict x, int n) {
  T mean, rstd;
  row_stats<T>(x, n, mean, rstd);
  for (int j = 0; j < n; ++j) x[j] = (x[j] - mean) * rstd;
  return rstd;
}

// The layer-norm derivative of one row, in place: d holds dn = dy g on entry, dx on exit.
template <typename T>
inline void ln_backward_row(T* __restrict d, const T* __restrict nrm, T rstd, int n) {
  V8d a1 = {}, a2 = {};
  int j = 0;
  for (; j + 8 <= n; j += 8) {
    const V8d v = load8<T>(d + j);
    a1 += v;
    a2 += v * load8<T>(nrm + j);
  }
  double s1 = hsum(a1), s2 = hsum(a2);
  for (; j < n; ++j) {
    s1 += d[j];
    s2 += double(d[j]) * nrm[j];
  }
  const T m1 = T(s1 / n), m2 = T(s2 / n);
  for (j = 0; j < n; ++j) d[j] = rstd * (d[j] - m1 - nrm[j] * m2);
}

// 8 elements of a float or double row as one vector (gcc/clang vector extensions; see load8).
template <typename T>
struct Vec8 {
  typedef T V __attribute__((vector_size(8 * sizeof(T))));
  static V load(const T* p) {
    V v;
    std::memcpy(&v, p, sizeof(V));
    return v;
  }
  static void store(T* p, V v) { std::memcpy(p, &v, sizeof(V)); }
};

// 16 floats (one AVX-512 register; two AVX2 ones on narrower ISAs).
typedef float V16f __attribute__((vector_size(64)));
// The two 8-lane halves of v widened to double and added (the add rounds in double, far below float's rounding).
inline V8d widen_sum(V16f v) {
  return widen(V8f(__builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7))) +
         widen(V8f(__builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15)));
}

// The end of both_halves_backward (both versions): the elements j.. G-1 that the vector loop left, added to the
// double sums t (of dn and dn * n per half), then dx = rstd (dn - mean(dn) - n mean(dn n)) over the whole row.
template <typename T, bool BH>
inline void halves_backward_finish(int j, double t1x, double t2x, double t1h, double t2h, const T* __restrict da,
                                   const T* __restrict du, const T* __restrict nx, T rx, const T* __restrict nhw,
                                   T rh, const T* __restrict gx, const T* __restrict gh, T* __restrict dbx,
                                   T* __restrict dbh, T* __restrict dgx, T* __restrict dgh, T* __restrict dxw,
                                   T* __restrict dhw, int G) {
  for (; j < G; ++j) {
    dbx[j] += da[j];
    dgx[j] += da[j] * nx[j];
    if constexpr (BH) dbh[j] += du[j];
    dgh[j] += du[j] * nhw[j];
    dxw[j] = da[j] * gx[j];
    dhw[j] = du[j] * gh[j];
    t1x += dxw[j];
    t2x += double(dxw[j]) * nx[j];
    t1h += dhw[j];
    t2h += double(dhw[j]) * nhw[j];
  }
  const T m1x = T(t1x / G), m2x = T(t2x / G), m1h = T(t1h / G), m2h = T(t2h / G);
  for (j = 0; j < G; ++j) {
    dxw[j] = rx * (dxw[j] - m1x - nx[j] * m2x);
    dhw[j] = rh * (dhw[j] - m1h - nhw[j] * m2h);
  }
}

// Float rows: how many 16-wide vectors of terms are summed in float before the block sum is added, in double, to
// the row's total (used by both_halves_backward_float). Each lane then adds at most 4 terms in float, so a mean
// gains a few float roundings of its terms; the widening per vector (two converts and adds per sum) was the
// hottest part of that loop. On the float32 cases of the tests and rows up to H=256, the worst gradient's error
// against float64 stayed within 0.8-1.2x of the all-double sums' (both measured against the reference loop's).
constexpr int kFloatBlock = 4;

// From a row's pre-activation gradient da (G): the sums db += da, dg_x += da n_x, dg_h += du n_hw, and the
// layer-norm derivatives of both halves, dxw = LN'(da g_x), dhw = LN'(du g_h). (LSTM: du = da; GRU: du differs
// in the n block, where the reset gate scales the recurrent half.) One pass forms dn = da g and, in double, the
// two means each derivative needs; a second applies dx = rstd (dn - mean(dn) - n mean(dn n)). BH: also sum
// dbh += du (the GRU's b_hh; the LSTM's one bias is summed once, in dbx).
template <bool BH>
inline void both_halves_backward_float(const float* __restrict da, const float* __restrict du,
                                       const float* __restrict nx, float rx, const float* __restrict nhw, float rh,
                                       const float* __restrict gx, const float* __restrict gh,
                                       float* __restrict dbx, float* __restrict dbh, float* __restrict dgx,
                                       float* __restrict dgh, float* __restrict dxw, float* __restrict dhw, int G) {
  V8d s1x = {}, s2x = {}, s1h = {}, s2h = {};
  V16f f1x = {}, f2x = {}, f1h = {}, f2h = {};
  int j = 0, k = 0;
  for (; j + 16 <= G; j += 16) {
    const V16f a = loadu<V16f>(da + j), u = loadu<V16f>(du + j), n1 = loadu<V16f>(nx + j), n2 = loadu<V16f>(nhw + j);
    storeu(dbx + j, loadu<V16f>(dbx + j) + a);
    storeu(dgx + j, loadu<V16f>(dgx + j) + a * n1);
    if constexpr (BH) storeu(dbh + j, loadu<V16f>(dbh + j) + u);
    storeu(dgh + j, loadu<V16f>(dgh + j) + u * n2);
    const V16f d1 = a * loadu<V16f>(gx + j), d2 = u * loadu<V16f>(gh + j);
    storeu(dxw + j, d1);
    storeu(dhw + j, d2);
    f1x += d1;
    f2x += d1 * n1;
    f1h += d2;
    f2h += d2 * n2;
    if (++k == kFloatBlock) {
      s1x += widen_sum(f1x);
      s2x += widen_sum(f2x);
      s1h += widen_sum(f1h);
      s2h += widen_sum(f2h);
      f1x = f2x = f1h = f2h = V16f{};
      k = 0;
    }
  }
  s1x += widen_sum(f1x);
  s2x += widen_sum(f2x);
  s1h += widen_sum(f1h);
  s2h += widen_sum(f2h);
  halves_backward_finish<float, BH>(j, hsum(s1x), hsum(s2x), hsum(s1h), hsum(s2h), da, du, nx, rx, nhw, rh, gx, gh,
                                     dbx, dbh, dgx, dgh, dxw, dhw, G);
}

template <typename T, bool BH>
inline void both_halves_backward(const T* __restrict da, const T* __restrict du, const T* __restrict nx, T rx,
                                 const T* __restrict nhw, T rh, const T* __restrict gx, const T* __restrict gh,
                                 T* __restrict dbx, T* __restrict dbh, T* __restrict dgx, T* __restrict dgh,
                                 T* __restrict dxw, T* __restrict dhw, int G) {
  if constexpr (sizeof(T) == sizeof(float)) {
    both_halves_backward_float<BH>(da, du, nx, rx, nhw, rh, gx, gh, dbx, dbh, dgx, dgh, dxw, dhw, G);
    return;
  }
  using L = Vec8<T>;
  typedef typename L::V V;
  V8d s1x = {}, s2x = {}, s1h = {}, s2h = {};
  int j = 0;
  for (; j + 8 <= G; j += 8) {
    const V a = L::load(da + j), u = L::load(du + j), n1 = L::load(nx + j), n2 = L::load(nhw + j);
    L::store(dbx + j, L::load(dbx + j) + a);
    L::store(dgx + j, L::load(dgx + j) + a * n1);
    if constexpr (BH) L::store(dbh + j, L::load(dbh + j) + u);
    L::store(dgh + j, L::load(dgh + j) + u * n2);
    const V d1 = a * L::load(gx + j), d2 = u * L::load(gh + j);
    L::store(dxw + j, d1);
    L::store(dhw + j, d2);
    const V8d e1 = widen(d1), e2 = widen(d2);
    s1x += e1;
    s2x += e1 * widen(n1);
    s1h += e2;
    s2h += e2 * widen(n2);
  }
  halves_backward_finish<T, BH>(j, hsum(s1x), hsum(s2x), hsum(s1h), hsum(s2h), da, du, nx, rx, nhw, rh, gx, gh,
                                 dbx, dbh, dgx, dgh, dxw, dhw, G);
}


// The backward's dXW (T, B, G): written over the kept gates A when into_gates (each row of A is read before the
// same row of dXW is written), which saves a fresh (T, B, G) buffer: at small sizes the cost of these loops is
// mostly first writes to memory that is not in cache, not arithmetic. Only for gates the forward kept for the
// backward alone (never ones returned to the caller), and only once: layernorm.py passes A = None, recomputing
// the gates, if the same graph runs backward again (retain_graph).
Tensor dxw_buffer(const Tensor& NX, const std::optional<Tensor>& A, bool into_gates) {
  if (into_gates && A.has_value() && A->defined()) return *A;
  return workspace(NX.sizes(), NX.options());
}

// A final state's incoming gradient as a fresh contiguous (B, H) buffer (the backward accumulates into it), zeros
// when that output was unused (None: autograd does not materialise it, and this saves a zeros tensor in Python).
Tensor grad_or_zeros(const std::optional<Tensor>& g, int B, int H, const Tensor& like) {
  if (!g.has_value() || !g->defined()) return at::zeros({B, H}, like.options());
  return at::empty({B, H}, like.options()).copy_(*g);
}

// Activations. common.h's float tanh, 2 sigmoid(2x) - 1, has an absolute error of ~1e-7, i.e. a large relative
// error near 0; fine for the plain cells, but here a layer norm follows (c' is normalised by its row's spread),
// which amplifies it: measured on one of the tests' cases, the float32 results were 5-10x further from float64
// than the reference loop's. So float tanh uses Cephes' tanhf: an odd polynomial for |x| < 0.625 (relative error
// ~1e-7), else 1 - 2 / (e^{2|x|} + 1). Both are computed and one is selected, which keeps the loops branch-free
// (vectorized).
template <typename T>
struct LnAct {
  static inline T sigmoid(T x) { return Act<T>::sigmoid(x); }
  static inline T tanh(T x) { return Act<T>::tanh(x); }
};
template <>
struct LnAct<float> {
  static inline float sigmoid(float x) { return Act<float>::sigmoid(x); }
  static inline float tanh(float x) {
    const float a = x < 0.0f ? -x : x;
    const float s = x * x;
    const float small = ((((-5.70498872745e-3f * s + 2.06390887954e-2f) * s - 5.37397155531e-2f) * s +
                          1.33314422036e-1f) * s - 3.33332819422e-1f) * s * x + x;
    const float large = 1.0f - 2.0f / (exp_approx(2.0f * a) + 1.0f);
    return a < 0.625f ? small : (x < 0.0f ? -large : large);
  }
};

// dW_hh = sum_t d(hw)_t^T (h_{t-1} * mask), accumulated inside the backward loop: each step's d(hw) (B, G) goes
// into a small chunk buffer (about 256 rows, reused, so in cache), the matching h_{t-1} * mask rows next to it,
// and every few steps one GEMM dW_hh (G, P) += D^T Hp over the chunk's rows. This replaces a (T, B, G) d(hw)
// buffer written here, page-faulted on first touch and read back by one big GEMM in Python (measured in
// benchmarks/ab_layernorm.py). Rows of padding steps hold zeros in both, so they add nothing.
//
// The two chunk buffers are per-thread scratch kept between calls (grown, never shrunk; about 256 rows of G + P
// values, 320 KB at B=8, H=64): fresh std::vectors were zero-filled and, being over malloc's mmap threshold,
// page-faulted on every call (__memset and page faults in the profile of a small layer). Every row is written
// before it is read (padding rows get explicit zeros), so stale contents never matter. One backward runs at a
// time per thread, and the buffers are only touched inside it.
template <typename T>
class RecurrentWeightGrad {
 public:
  RecurrentWeightGrad(int Tn, int B, int G, int P, T* dw)
      : B_(B), G_(G), P_(P), K_(std::max(1, std::min(Tn, (256 + B - 1) / B))), dw_(dw),
        d_(scratch(0, static_cast<size_t>(K_) * B * G)), hp_(scratch(1, dw ? static_cast<size_t>(K_) * B * P : 0)) {}

  T* step_rows() { return d_ + static_cast<int64_t>(n_) * B_ * G_; }  // (B, G) of the current step

  // Row b of the current step's h_{t-1} * mask (hp = nullptr: a padding row, zeros).
  void set_prev(int b, const T* hp, const T* mask) {
    if (dw_ == nullptr) return;
    T* dst = hp_ + (static_cast<int64_t>(n_) * B_ + b) * P_;
    if (hp == nullptr) std::memset(dst, 0, sizeof(T) * P_);
    else if (mask == nullptr) std::memcpy(dst, hp, sizeof(T) * P_);
    else for (int j = 0; j < P_; ++j) dst[j] = hp[j] * mask[static_cast<int64_t>(b) * P_ + j];
  }

  void end_step() {
    if (++n_ == K_) flush();
  }

  // dW_hh (G, P) += D^T Hp: row-major C^T = Hp^T D in column-major BLAS terms. The first flush overwrites
  // (beta 0), so dW_hh needs no zero fill; finish() zeroes it if no step was ever flushed (T = 0).
  void flush() {
    if (n_ > 0 && dw_ != nullptr) {
      blas('N', 'T', P_, G_, n_ * B_, written_ ? T(1) : T(0), hp_, P_, d_, G_, dw_, P_);
      written_ = true;
    }
    n_ = 0;
  }
  void finish() {
    flush();
    if (!written_ && dw_ != nullptr) std::memset(dw_, 0, sizeof(T) * G_ * P_);
  }

 private:
  // This thread's scratch buffer `slot` with room for n values (contents unspecified).
  static T* scratch(int slot, size_t n) {
    thread_local std::vector<T> buffers[2];
    std::vector<T>& v = buffers[slot];
    if (v.size() < n) v.resize(n);
    return v.data();
  }

  int B_, G_, P_, K_;
  T* dw_;
  int n_ = 0;
  bool written_ = false;
  T* d_;
  T* hp_;
};

// ---- the time loops of both cells -----------------------------------------------------------------------------

// The forward's walk over the steps (in the direction's order): per step one GEMM hw = (h_{t-1} * mask) W_hh^T
// into the step's rows of NHW (train: kept for the backward) or into a reused step buffer, then row(b, tb, hw_b)
// for every row b of the step that is not padding (tb = t * B + b; hw_b the row's G values of hw), and
// end_step(t * B) after the step's rows. A padding row outputs zeros (and zero gates, when they are recorded).
template <typename T, typename Row, typename EndStep>
inline void ln_forward_steps(const T* whh, const T* mask, const int64_t* len, bool reverse, int Tn, int B, int H,
                             int G, bool train, T* NHW, const T* h, T* Y, T* GS, Row row, EndStep end_step) {
  const StepGemm<T> rec(whh, true, B, G, H, Tn);
  std::vector<T> nhw_step(train ? 0 : static_cast<size_t>(B) * G), hm(mask ? static_cast<size_t>(B) * H : 0);
  for (int s = 0; s < Tn; ++s) {
    const int t = reverse ? Tn - 1 - s : s;
    const int64_t tB = static_cast<int64_t>(t) * B;
    T* nhw = train ? NHW + tB * G : nhw_step.data();                            // (B, G)
    rec(masked_h<T>(h, mask, static_cast<int64_t>(B) * H, hm.data()), T(0), nhw);  // (h_{t-1} * mask) W_hh^T
    for (int b = 0; b < B; ++b) {
      const int64_t tb = tB + b;
      if (is_valid(len, t, b)) {
        row(b, tb, nhw + static_cast<int64_t>(b) * G);
        continue;
      }
      std::memset(Y + tb * H, 0, sizeof(T) * H);
      if (GS) std::memset(GS + tb * G, 0, sizeof(T) * G);
    }
    end_step(tB);
  }
}

// The backward's walk: the steps in the reverse of the forward's order; for every row b of a step that is not
// padding row(b, tb, tp, hp, dxw_b, dhw_b), with tp the step processed before (-1: the initial state) and hp the
// row's h_{t-1} (of Y at tp, or of h0), which writes the row's d(xw) and d(hw) (G each) and its direct part of
// dh_{t-1} into dh. A padding row's d(xw) and d(hw) are zeros (its state was carried: dh, dc pass through). After
// each step dh_{t-1} += (d(hw)_t W_hh) * mask (one GEMM), and the step's rows join dW_hh (RecurrentWeightGrad).
template <typename T, typename Row>
inline void ln_backward_steps(const T* whh, const T* mask, const int64_t* len, bool reverse, int Tn, int B, int H,
                              int G, const T* Y, const T* h0, T* dXW, T* dWhh, T* dh, Row row) {
  const StepGemm<T> rec(whh, false, B, H, G, Tn);
  RecurrentWeightGrad<T> wgrad(Tn, B, G, H, dWhh);
  std::vector<T> scratch(mask ? static_cast<size_t>(B) * H : 0);
  for (int s = 0; s < Tn; ++s) {
    const int t = reverse ? s : Tn - 1 - s;                // the forward order, backwards
    const int64_t tB = static_cast<int64_t>(t) * B;
    T* dhw = wgrad.step_rows();                            // (B, G)
    for (int b = 0; b < B; ++b) {
      const int64_t tb = tB + b;
      T* dxwb = dXW + tb * G;
      T* dhwb = dhw + static_cast<int64_t>(b) * G;
      if (!is_valid(len, t, b)) {
        std::memset(dxwb, 0, sizeof(T) * G);
        std::memset(dhwb, 0, sizeof(T) * G);
        wgrad.set_prev(b, nullptr, mask);
        continue;
      }
      const int tp = prev_step(len, reverse, Tn, t, b);
      const T* hp = tp >= 0 ? Y + (static_cast<int64_t>(tp) * B + b) * H : h0 + static_cast<int64_t>(b) * H;
      wgrad.set_prev(b, hp, mask);
      row(b, tb, tp, hp, dxwb, dhwb);
    }
    recurrent_grad<T>(rec, dhw, mask, scratch.data(), static_cast<int64_t>(B) * H, dh);
    wgrad.end_step();
  }
  wgrad.finish();
}

// ---- LSTM -----------------------------------------------------------------------------------------------------

// i, f, g, o = sigma, sigma, tanh, sigma(a) in place, a (4H) a row's pre-activations. A separate function with
// __restrict arguments (as the other row loops), so that gcc vectorizes it.
template <typename T>
inline void lstm_activate(T* __restrict gates, int H) {
  for (int j = 0; j < H; ++j) {
    gates[j] = LnAct<T>::sigmoid(gates[j]);
    gates[H + j] = LnAct<T>::sigmoid(gates[H + j]);
    gates[2 * H + j] = LnAct<T>::tanh(gates[2 * H + j]);
    gates[3 * H + j] = LnAct<T>::sigmoid(gates[3 * H + j]);
  }
}

// The backward's activated gates of one row from the saved normalised halves: a = g_x n_x + b + g_h n_hw.
template <typename T>
inline void ln_lstm_gates(const T* __restrict nx, const T* __restrict nhw, const T* __restrict gx,
                          const T* __restrict gh, const T* __restrict b, T* __restrict gates, int H) {
  for (int j = 0; j < 4 * H; ++j) gates[j] = gx[j] * nx[j] + b[j] + gh[j] * nhw[j];
  lstm_activate<T>(gates, H);
}

// The forward's: both halves normalised in place (kept for the backward) in the same pass that forms a.
template <typename T>
inline void ln_lstm_gates_forward(T* __restrict x, T mx, T rx, T* __restrict hw, T mh, T rh,
                                  const T* __restrict gx, const T* __restrict gh, const T* __restrict b,
                                  T* __restrict gates, int H) {
  for (int j = 0; j < 4 * H; ++j) {
    const T nx = (x[j] - mx) * rx, nh = (hw[j] - mh) * rh;
    x[j] = nx;
    hw[j] = nh;
    gates[j] = gx[j] * nx + b[j] + gh[j] * nh;
  }
  lstm_activate<T>(gates, H);
}

template <typename T>
inline void ln_lstm_cell(const T* __restrict gates, const T* __restrict c, T* __restrict cn, int H) {
  for (int j = 0; j < H; ++j) cn[j] = gates[H + j] * c[j] + gates[j] * gates[2 * H + j];  // f c + i g
}

// The end of a row: n_c = (c' - mean) rstd (saved), h' = o tanh(n_c g_c + b_c) (the tanh saved in ty), then
// zoneout s = k s + (1-k) s'.
template <typename T, bool Z>
inline void ln_lstm_output(const T* __restrict cn, T cmean, T crstd, const T* __restrict o, const T* __restrict gc,
                           const T* __restrict bc, const T* __restrict kh, const T* __restrict kc,
                           T* __restrict nc, T* __restrict ty, T* __restrict h, T* __restrict c, T* __restrict y,
                           int H) {
  for (int j = 0; j < H; ++j) {
    const T n = (cn[j] - cmean) * crstd;
    nc[j] = n;
    const T t = LnAct<T>::tanh(n * gc[j] + bc[j]);
    ty[j] = t;
    const T hn = o[j] * t;
    const T hv = Z ? kh[j] * h[j] + (T(1) - kh[j]) * hn : hn;
    c[j] = Z ? kc[j] * c[j] + (T(1) - kc[j]) * cn[j] : cn[j];
    h[j] = hv;
    y[j] = hv;
  }
}

template <typename T>
void ln_lstm_forward_impl(T* xw, const T* whh, const T* bias, const T* gx, const T* gh, const T* gc, const T* bc,
                          const T* mask, const T* kh, const T* kc, const int64_t* len, bool reverse, int Tn, int B,
                          int H, bool train, T* Y, T* h, T* c, T* NHW, T* RX, T* RH, T* NC, T* RC, T* Cs,
                          T* GS, T* TY) {
  const int G = 4 * H;
  // A row's n_c and tanh(y_c) when they are not kept.
  std::vector<T> nc_step(train ? 0 : H), ty_step(TY ? 0 : H), gates(G), cn(H);
  const bool zone = kh != nullptr || kc != nullptr;
  const std::vector<T> zeros(zone ? H : 0);
  auto row = [&](int b, int64_t tb, T* nb) {               // nb: the row's hw, normalised in place
    T* hb = h + static_cast<int64_t>(b) * H;
    T* cb = c + static_cast<int64_t>(b) * H;
    T* nx = xw + tb * G;
    T* ncb = train ? NC + tb * H : nc_step.data();
    T* tyb = TY ? TY + tb * H : ty_step.data();
    T mx, rx, mh, rh;
    row_stats2<T>(nx, nb, G, mx, rx, mh, rh);
    ln_lstm_gates_forward<T>(nx, mx, rx, nb, mh, rh, gx, gh, bias, gates.data(), H);
    if (GS) std::memcpy(GS + tb * G, gates.data(), sizeof(T) * G);  // return_gates: i, f, g, o
    ln_lstm_cell<T>(gates.data(), cb, cn.data(), H);
    T cmean, crstd;
    row_stats<T>(cn.data(), H, cmean, crstd);
    if (train) {
      RX[tb] = rx;
      RH[tb] = rh;
      RC[tb] = crstd;
    }
    const T* o = gates.data() + 3 * H;
    if (zone)
      ln_lstm_output<T, true>(cn.data(), cmean, crstd, o, gc, bc, keep_row(kh, tb, H, zeros),
                              keep_row(kc, tb, H, zeros), ncb, tyb, hb, cb, Y + tb * H, H);
    else
      ln_lstm_output<T, false>(cn.data(), cmean, crstd, o, gc, bc, nullptr, nullptr, ncb, tyb, hb, cb, Y + tb * H,
                               H);
  };
  auto keep_cells = [&](int64_t tB) {                      // every step's c_t (padding rows: the carried state)
    if (train) std::memcpy(Cs + tB * H, c, sizeof(T) * B * H);
  };
  ln_forward_steps<T>(whh, mask, len, reverse, Tn, B, H, G, train, NHW, h, Y, GS, row, keep_cells);
}

// xw (T,B,4H) = x W_ih^T, normalised in place (becomes n_x); bias (4H) (zeros without one); mask (B,H) recurrent
// dropout; keep_h, keep_c (T,B,H) zoneout. Returns Y (T,B,H), h_n, c_n and, when train, NHW (T,B,4H) the
// normalised (h_{t-1} * mask) W_hh^T, RX, RH (T,B) the two 1/std, NC (T,B,H) the normalised new cell, RC (T,B)
// its 1/std, C (T,B,H) the cell states (padding steps hold the carried state), and, when gates, GS (T,B,4H) the
// activated gates i, f, g, o (zeros at padding steps) and, when also train, TY (T,B,H) tanh(y_c) of each step's
// output (both for the backward, which then reads them instead of recomputing them; TY's padding rows unset).
std::vector<Tensor> ln_lstm_forward(Tensor xw, const Tensor& h0, const Tensor& c0, const Tensor& w_hh,
                                    const Tensor& bias, const Tensor& g_ih, const Tensor& g_hh, const Tensor& g_c,
                                    const Tensor& b_c, const std::optional<Tensor>& mask,
                                    const std::optional<Tensor>& keep_h, const std::optional<Tensor>& keep_c,
                                    const std::optional<Tensor>& lengths, bool reverse, bool train,
                                    bool gates) {
  const int Tn = xw.size(0), B = xw.size(1), H = xw.size(2) / 4;
  Tensor GS = workspace({gates ? Tn : 0, B, 4 * H}, xw.options());
  const int Ts = train ? Tn : 0;
  Tensor Y = workspace({Tn, B, H}, xw.options());
  Tensor h = h0.clone(), c = c0.clone();
  Tensor NHW = workspace({Ts, B, 4 * H}, xw.options());
  Tensor RX = at::empty({Ts, B}, xw.options()), RH = at::empty({Ts, B}, xw.options());
  Tensor NC = workspace({Ts, B, H}, xw.options()), RC = at::empty({Ts, B}, xw.options());
  Tensor Cs = workspace({Ts, B, H}, xw.options());
  Tensor TY = workspace({train && gates ? Tn : 0, B, H}, xw.options());
  AT_DISPATCH_FLOATING_TYPES(xw.scalar_type(), "rnnlab ln_lstm_forward", [&] {
    ln_lstm_forward_impl<scalar_t>(
        xw.data_ptr<scalar_t>(), w_hh.data_ptr<scalar_t>(), bias.data_ptr<scalar_t>(), g_ih.data_ptr<scalar_t>(),
        g_hh.data_ptr<scalar_t>(), g_c.data_ptr<scalar_t>(), b_c.data_ptr<scalar_t>(), opt_ptr<scalar_t>(mask),
        opt_ptr<scalar_t>(keep_h), opt_ptr<scalar_t>(keep_c), lengths_ptr(lengths), reverse, Tn, B, H,
        train, Y.data_ptr<scalar_t>(), h.data_ptr<scalar_t>(), c.data_ptr<scalar_t>(), NHW.data_ptr<scalar_t>(),
        RX.data_ptr<scalar_t>(), RH.data_ptr<scalar_t>(), NC.data_ptr<scalar_t>(), RC.data_ptr<scalar_t>(),
        Cs.data_ptr<scalar_t>(), gates ? GS.data_ptr<scalar_t>() : nullptr,
        train && gates ? TY.data_ptr<scalar_t>() : nullptr);
  });
  return {Y, h, c, NHW, RX, RH, NC, RC, Cs, GS, TY};
}

// tanh(y_c), y_c = n_c g_c + b_c, of one row (H) as the forward computed it (when the forward did not keep it).
template <typename T>
inline void ln_lstm_output_tanh(const T* __restrict nc, const T* __restrict gc, const T* __restrict bc,
                                T* __restrict ty, int H) {
  for (int j = 0; j < H; ++j) ty[j] = LnAct<T>::tanh(nc[j] * gc[j] + bc[j]);
}

// Backward through h' = o tanh(y_c), y_c = n_c g_c + b_c (ty = tanh(y_c)), from dL/dh_t = dh + dy: the o
// pre-activation gradient dao = dL/dh' tanh(y_c) o (1 - o), dyc = dL/dy_c = dL/dh' o (1 - tanh^2), dg_c += dyc n_c,
// db_c += dyc, dn = dL/dn_c = dyc g_c, and dh <- zoneout's direct part of dL/dh_{t-1} (k dL/dh_t; the GEMM adds
// the rest).
template <typename T, bool Z>
inline void ln_lstm_output_backward(const T* __restrict o, const T* __restrict nc, const T* __restrict ty,
                                    const T* __restrict gc, const T* __restrict dy, const T* __restrict kh,
                                    T* __restrict dh, T* __restrict dao, T* __restrict dgc, T* __restrict dbc,
                                    T* __restrict dn, int H) {
  for (int j = 0; j < H; ++j) {
    const T d = dh[j] + dy[j];                              // dL/dh_t
    const T dhn = Z ? (T(1) - kh[j]) * d : d;               // dL/dh'_t
    dh[j] = Z ? kh[j] * d : T(0);
    const T dyc = dhn * o[j] * (T(1) - ty[j] * ty[j]);
    dao[j] = dhn * ty[j] * o[j] * (T(1) - o[j]);
    dgc[j] += dyc * nc[j];
    dbc[j] += dyc;
    dn[j] = dyc * gc[j];
  }
}

// Backward through c' = f c_{t-1} + i g (and zoneout of c): dcn_ln (dL/dc' through the cell norm) plus the
// carried dL/dc_t -> the i, f, g pre-activation gradients and dc <- dL/dc_{t-1}.
template <typename T, bool Z>
inline void ln_lstm_cell_backward(const T* __restrict a, const T* __restrict cp, const T* __restrict dcn_ln,
                                  const T* __restrict kc, T* __restrict dc, T* __restrict da, int H) {
  for (int j = 0; j < H; ++j) {
    const T i = a[j], f = a[H + j], g = a[2 * H + j];
    const T dcn = (Z ? (T(1) - kc[j]) * dc[j] : dc[j]) + dcn_ln[j];  // dL/dc'_t
    da[j] = dcn * g * i * (T(1) - i);
    da[H + j] = dcn * cp[j] * f * (T(1) - f);
    da[2 * H + j] = dcn * i * (T(1) - g * g);
    dc[j] = (Z ? kc[j] * dc[j] : T(0)) + dcn * f;         // dL/dc_{t-1}
  }
}

// The recorded gates' own gradients dg (4H) (return_gates) added to the pre-activation gradients da:
// d(sigma)/da = sigma (1 - sigma) for i, f, o, d(tanh)/da = 1 - g^2.
template <typename T>
inline void add_lstm_gate_grads(const T* __restrict a, const T* __restrict dg, T* __restrict da, int H) {
  for (int j = 0; j < 4 * H; ++j) {
    const T v = a[j];
    da[j] += dg[j] * (j >= 2 * H && j < 3 * H ? T(1) - v * v : v * (T(1) - v));
  }
}

template <typename T>
void ln_lstm_backward_impl(const T* dY, const T* NX, const T* RX, const T* NHW, const T* RH, const T* NC,
                           const T* RC, const T* Cs, const T* Y, const T* h0, const T* c0, const T* whh,
                           const T* bias, const T* gx, const T* gh, const T* gc, const T* bc, const T* mask,
                           const T* kh, const T* kc, const int64_t* len, bool reverse, int Tn, int B, int H, T* dh,
                           T* dc, T* dXW, T* dWhh, T* db, T* dgx, T* dgh, T* dgc, T* dbc, const T* dCs,
                           const T* dGS, const T* AS, const T* TY) {
  const int G = 4 * H;
  std::vector<T> gates(G), da(G), dn(H), ty_row(H);
  const bool zone = kh != nullptr || kc != nullptr;
  const std::vector<T> zeros(zone ? H : 0);
  auto row = [&](int b, int64_t tb, int tp, const T*, T* dxwb, T* dhwb) {
    const T* cp = tp >= 0 ? Cs + (static_cast<int64_t>(tp) * B + b) * H : c0 + static_cast<int64_t>(b) * H;
    const T* nx = NX + tb * G;
    const T* nhw = NHW + tb * G;
    const T* nc = NC + tb * H;
    T* dhb = dh + static_cast<int64_t>(b) * H;
    T* dcb = dc + static_cast<int64_t>(b) * H;
    const T* a = AS ? AS + tb * G : gates.data();          // the activated gates: kept (return_gates) or
    if (!AS) ln_lstm_gates<T>(nx, nhw, gx, gh, bias, gates.data(), H);  // recomputed, as the forward had them
    if (dCs)                                             // return_all_states: c_t's own gradient joins dL/dc_t
      for (int j = 0; j < H; ++j) dcb[j] += dCs[tb * H + j];
    const T* ty = TY ? TY + tb * H : ty_row.data();      // tanh(y_c): kept by the forward or recomputed
    if (!TY) ln_lstm_output_tanh<T>(nc, gc, bc, ty_row.data(), H);
    if (zone)
      ln_lstm_output_backward<T, true>(a + 3 * H, nc, ty, gc, dY + tb * H, keep_row(kh, tb, H, zeros), dhb,
                                       da.data() + 3 * H, dgc, dbc, dn.data(), H);
    else
      ln_lstm_output_backward<T, false>(a + 3 * H, nc, ty, gc, dY + tb * H, nullptr, dhb, da.data() + 3 * H,
                                        dgc, dbc, dn.data(), H);
    ln_backward_row<T>(dn.data(), nc, RC[tb], H);        // dn <- dL/dc'_t through the cell layer norm
    if (zone)
      ln_lstm_cell_backward<T, true>(a, cp, dn.data(), keep_row(kc, tb, H, zeros), dcb, da.data(), H);
    else
      ln_lstm_cell_backward<T, false>(a, cp, dn.data(), nullptr, dcb, da.data(), H);
    if (dGS) add_lstm_gate_grads<T>(a, dGS + tb * G, da.data(), H);
    both_halves_backward<T, false>(da.data(), da.data(), nx, RX[tb], nhw, RH[tb], gx, gh, db, nullptr, dgx,
                                   dgh, dxwb, dhwb, G);
  };
  ln_backward_steps<T>(whh, mask, len, reverse, Tn, B, H, G, Y, h0, dXW, dWhh, dh, row);
}

// Returns dXW (T,B,4H) (gradient of x W_ih^T), dW_hh (4H,H) (empty unless need_w_hh), dh0, dc0, db (4H),
// dg_ih, dg_hh (4H), dg_c, db_c (H). NX is the forward's normalised xw, Y its outputs; dhn, dcn the final states'
// gradients (None: zeros); dC (T,B,H) and dgates (T,B,4H) the recorded cell states' and gates' own gradients,
// when they were returned; A (T,B,4H) and TY (T,B,H) the forward's kept gates and tanh(y_c), when it kept them;
// into_gates: dXW is written over A (see dxw_buffer).
std::vector<Tensor> ln_lstm_backward(const Tensor& dY, const std::optional<Tensor>& dhn,
                                     const std::optional<Tensor>& dcn, const Tensor& NX,
                                     const Tensor& RX, const Tensor& NHW, const Tensor& RH, const Tensor& NC,
                                     const Tensor& RC, const Tensor& Cs, const Tensor& Y, const Tensor& h0,
                                     const Tensor& c0, const Tensor& w_hh,
                                     const Tensor& bias, const Tensor& g_ih, const Tensor& g_hh, const Tensor& g_c,
                                     const Tensor& b_c, const std::optional<Tensor>& mask,
                                     const std::optional<Tensor>& keep_h, const std::optional<Tensor>& keep_c,
                                     const std::optional<Tensor>& lengths, bool reverse, bool need_w_hh,
                                     const std::optional<Tensor>& dC, const std::optional<Tensor>& dgates,
                                     const std::optional<Tensor>& A, const std::optional<Tensor>& TY,
                                     bool into_gates) {
  const int Tn = NX.size(0), B = NX.size(1), H = NX.size(2) / 4;
  Tensor dh = grad_or_zeros(dhn, B, H, NX), dc = grad_or_zeros(dcn, B, H, NX);
  Tensor dXW = dxw_buffer(NX, A, into_gates), dW = at::empty({need_w_hh ? 4 * H : 0, H}, NX.options());
  // the five summed gradients as views of one zeroed buffer (one allocation instead of five)
  Tensor sums = at::zeros({14 * H}, NX.options());
  Tensor db = sums.narrow(0, 0, 4 * H), dgx = sums.narrow(0, 4 * H, 4 * H), dgh = sums.narrow(0, 8 * H, 4 * H);
  Tensor dgc = sums.narrow(0, 12 * H, H), dbc = sums.narrow(0, 13 * H, H);
  AT_DISPATCH_FLOATING_TYPES(NX.scalar_type(), "rnnlab ln_lstm_backward", [&] {
    ln_lstm_backward_impl<scalar_t>(
        dY.data_ptr<scalar_t>(), NX.data_ptr<scalar_t>(), RX.data_ptr<scalar_t>(), NHW.data_ptr<scalar_t>(),
        RH.data_ptr<scalar_t>(), NC.data_ptr<scalar_t>(), RC.data_ptr<scalar_t>(), Cs.data_ptr<scalar_t>(),
        Y.data_ptr<scalar_t>(), h0.data_ptr<scalar_t>(), c0.data_ptr<scalar_t>(), w_hh.data_ptr<scalar_t>(),
        bias.data_ptr<scalar_t>(), g_ih.data_ptr<scalar_t>(),
        g_hh.data_ptr<scalar_t>(), g_c.data_ptr<scalar_t>(), b_c.data_ptr<scalar_t>(), opt_ptr<scalar_t>(mask),
        opt_ptr<scalar_t>(keep_h), opt_ptr<scalar_t>(keep_c), lengths_ptr(lengths), reverse, Tn, B, H,
        dh.data_ptr<scalar_t>(), dc.data_ptr<scalar_t>(), dXW.data_ptr<scalar_t>(),
        need_w_hh ? dW.data_ptr<scalar_t>() : nullptr,
        db.data_ptr<scalar_t>(), dgx.data_ptr<scalar_t>(), dgh.data_ptr<scalar_t>(), dgc.data_ptr<scalar_t>(),
        dbc.data_ptr<scalar_t>(), opt_ptr<scalar_t>(dC), opt_ptr<scalar_t>(dgates),
        opt_ptr<scalar_t>(A), opt_ptr<scalar_t>(TY));
  });
  return {dXW, dW, dh, dc, db, dgx, dgh, dgc, dbc};
}

// ---- GRU ------------------------------------------------------------------------------------------------------

// The activated gates of one row: s = g_x n_x + b_ih, u = g_h n_hw + b_hh; r = sigma(s_r + u_r),
// z = sigma(s_z + u_z), n = tanh(s_n + r u_n).
template <typename T>
inline void ln_gru_gates(const T* __restrict nx, const T* __restrict nhw, const T* __restrict gx,
                         const T* __restrict gh, const T* __restrict bx, const T* __restrict bh,
                         T* __restrict gates, int H) {
  for (int j = 0; j < H; ++j) {
    const T r = LnAct<T>::sigmoid(gx[j] * nx[j] + bx[j] + gh[j] * nhw[j] + bh[j]);
    const T z = LnAct<T>::sigmoid(gx[H + j] * nx[H + j] + bx[H + j] + gh[H + j] * nhw[H + j] + bh[H + j]);
    const T un = gh[2 * H + j] * nhw[2 * H + j] + bh[2 * H + j];
    gates[j] = r;
    gates[H + j] = z;
    gates[2 * H + j] = LnAct<T>::tanh(gx[2 * H + j] * nx[2 * H + j] + bx[2 * H + j] + r * un);
  }
}

// h' = (1 - z) n + z h with the unmasked h; zoneout when Z.
template <typename T, bool Z>
inline void ln_gru_output(const T* __restrict gates, const T* __restrict kh, T* __restrict h, T* __restrict y,
                          int H) {
  for (int j = 0; j < H; ++j) {
    const T z = gates[H + j], n = gates[2 * H + j];
    const T hn = (T(1) - z) * n + z * h[j];
    const T hv = Z ? kh[j] * h[j] + (T(1) - kh[j]) * hn : hn;
    h[j] = hv;
    y[j] = hv;
  }
}

template <typename T>
void ln_gru_forward_impl(T* xw, const T* whh, const T* bx, const T* bh, const T* gx, const T* gh, const T* mask,
                         const T* kh, const int64_t* len, bool reverse, int Tn, int B, int H, bool train, T* Y, T* h,
                         T* NHW, T* RX, T* RH, T* GS) {
  const int G = 3 * H;
  std::vector<T> gates(G);
  auto row = [&](int b, int64_t tb, T* nb) {               // nb: the row's hw, normalised in place
    T* nx = xw + tb * G;
    const T rx = normalise_row<T>(nx, G), rh = normalise_row<T>(nb, G);
    if (train) {
      RX[tb] = rx;
      RH[tb] = rh;
    }
    ln_gru_gates<T>(nx, nb, gx, gh, bx, bh, gates.data(), H);
    if (GS) std::memcpy(GS + tb * G, gates.data(), sizeof(T) * G);  // return_gates: r, z, n
    T* hb = h + static_cast<int64_t>(b) * H;
    if (kh) ln_gru_output<T, true>(gates.data(), kh + tb * H, hb, Y + tb * H, H);
    else ln_gru_output<T, false>(gates.data(), nullptr, hb, Y + tb * H, H);
  };
  ln_forward_steps<T>(whh, mask, len, reverse, Tn, B, H, G, train, NHW, h, Y, GS, row, [](int64_t) {});
}

// xw (T,B,3H) = x W_ih^T, normalised in place (becomes n_x); b_ih, b_hh (3H) (zeros without bias): b_hh stays
// inside the reset gate's product as in torch's GRU. Returns Y (T,B,H), h_n and, when train, NHW (T,B,3H), RX,
// RH (T,B), and, when gates, GS (T,B,3H) the activated gates r, z, n (zeros at padding steps).
std::vector<Tensor> ln_gru_forward(Tensor xw, const Tensor& h0, const Tensor& w_hh, const Tensor& b_ih,
                                   const Tensor& b_hh, const Tensor& g_ih, const Tensor& g_hh,
                                   const std::optional<Tensor>& mask, const std::optional<Tensor>& keep_h,
                                   const std::optional<Tensor>& lengths, bool reverse, bool train, bool gates) {
  const int Tn = xw.size(0), B = xw.size(1), H = xw.size(2) / 3;
  Tensor GS = workspace({gates ? Tn : 0, B, 3 * H}, xw.options());
  const int Ts = train ? Tn : 0;
  Tensor Y = workspace({Tn, B, H}, xw.options());
  Tensor h = h0.clone();
  Tensor NHW = workspace({Ts, B, 3 * H}, xw.options());
  Tensor RX = at::empty({Ts, B}, xw.options()), RH = at::empty({Ts, B}, xw.options());
  AT_DISPATCH_FLOATING_TYPES(xw.scalar_type(), "rnnlab ln_gru_forward", [&] {
    ln_gru_forward_impl<scalar_t>(xw.data_ptr<scalar_t>(), w_hh.data_ptr<scalar_t>(), b_ih.data_ptr<scalar_t>(),
                                  b_hh.data_ptr<scalar_t>(), g_ih.data_ptr<scalar_t>(), g_hh.data_ptr<scalar_t>(),
                                  opt_ptr<scalar_t>(mask), opt_ptr<scalar_t>(keep_h), lengths_ptr(lengths),
                                  reverse, Tn, B, H, train, Y.data_ptr<scalar_t>(), h.data_ptr<scalar_t>(),
                                  NHW.data_ptr<scalar_t>(), RX.data_ptr<scalar_t>(), RH.data_ptr<scalar_t>(),
                                  gates ? GS.data_ptr<scalar_t>() : nullptr);
  });
  return {Y, h, NHW, RX, RH, GS};
}

// One row's pointwise derivative from dL/dh_t = dh + dy: ds = d[s_r, s_z, s_n] (the input half), du =
// d[u_r, u_z, u_n] (the recurrent half), dh <- the direct part of dL/dh_{t-1} (zoneout and the carry z h; the
// GEMM adds the rest).
template <typename T, bool Z>
inline void ln_gru_cell_backward(const T* __restrict a, const T* __restrict nhw, const T* __restrict gh,
                                 const T* __restrict bh, const T* __restrict hp, const T* __restrict dy,
                                 const T* __restrict kh, T* __restrict dh, T* __restrict ds, T* __restrict du,
                                 int H) {
  for (int j = 0; j < H; ++j) {
    const T r = a[j], z = a[H + j], n = a[2 * H + j];
    const T d = dh[j] + dy[j];                              // dL/dh_t
    const T dhn = Z ? (T(1) - kh[j]) * d : d;               // dL/dh'_t
    const T un = nhw[2 * H + j] * gh[2 * H + j] + bh[2 * H + j];
    const T dnp = dhn * (T(1) - z) * (T(1) - n * n);       // through n = tanh(.)
    const T drp = dnp * un * r * (T(1) - r);
    const T dzp = dhn * (hp[j] - n) * z * (T(1) - z);
    ds[j] = drp;
    ds[H + j] = dzp;
    ds[2 * H + j] = dnp;
    du[j] = drp;
    du[H + j] = dzp;
    du[2 * H + j] = dnp * r;                                // the reset gate scales u_n
    dh[j] = (Z ? kh[j] * d : T(0)) + dhn * z;
  }
}

// The recorded gates' own gradients dg = d[r, z, n] (3H) (return_gates) added to ds, du (linear, so after the
// state's part): n = tanh(s_n + r u_n) passes dg_n (1 - n^2) to s_n, times r to u_n, and times u_n on to r.
template <typename T>
inline void add_gru_gate_grads(const T* __restrict a, const T* __restrict nhw, const T* __restrict gh,
                               const T* __restrict bh, const T* __restrict dg, T* __restrict ds, T* __restrict du,
                               int H) {
  for (int j = 0; j < H; ++j) {
    const T r = a[j], z = a[H + j], n = a[2 * H + j];
    const T un = nhw[2 * H + j] * gh[2 * H + j] + bh[2 * H + j];
    const T dnp = dg[2 * H + j] * (T(1) - n * n);
    const T drp = (dg[j] + dnp * un) * r * (T(1) - r);
    const T dzp = dg[H + j] * z * (T(1) - z);
    ds[j] += drp;
    du[j] += drp;
    ds[H + j] += dzp;
    du[H + j] += dzp;
    ds[2 * H + j] += dnp;
    du[2 * H + j] += dnp * r;
  }
}

template <typename T>
void ln_gru_backward_impl(const T* dY, const T* NX, const T* RX, const T* NHW, const T* RH, const T* Y, const T* h0,
                          const T* whh, const T* bx, const T* bh, const T* gx, const T* gh, const T* mask,
                          const T* kh, const int64_t* len, bool reverse, int Tn, int B, int H, T* dh, T* dXW,
                          T* dWhh, T* dbx, T* dbh, T* dgx, T* dgh, const T* dGS, const T* AS) {
  const int G = 3 * H;
  std::vector<T> gates(G), ds(G), du(G);
  auto row = [&](int b, int64_t tb, int, const T* hp, T* dxwb, T* dhwb) {
    const T* nx = NX + tb * G;
    const T* nhw = NHW + tb * G;
    const T* a = AS ? AS + tb * G : gates.data();          // the activated gates: kept (return_gates) or
    if (!AS) ln_gru_gates<T>(nx, nhw, gx, gh, bx, bh, gates.data(), H);  // recomputed, as the forward had them
    T* dhb = dh + static_cast<int64_t>(b) * H;
    if (kh)
      ln_gru_cell_backward<T, true>(a, nhw, gh, bh, hp, dY + tb * H, kh + tb * H, dhb, ds.data(),
                                    du.data(), H);
    else
      ln_gru_cell_backward<T, false>(a, nhw, gh, bh, hp, dY + tb * H, nullptr, dhb, ds.data(),
                                     du.data(), H);
    if (dGS) add_gru_gate_grads<T>(a, nhw, gh, bh, dGS + tb * G, ds.data(), du.data(), H);
    both_halves_backward<T, true>(ds.data(), du.data(), nx, RX[tb], nhw, RH[tb], gx, gh, dbx, dbh, dgx, dgh,
                                  dxwb, dhwb, G);
  };
  ln_backward_steps<T>(whh, mask, len, reverse, Tn, B, H, G, Y, h0, dXW, dWhh, dh, row);
}

// Returns dXW (T,B,3H) (gradient of x W_ih^T), dW_hh (3H,H) (empty unless need_w_hh), dh0, db_ih, db_hh,
// dg_ih, dg_hh (3H each). dhn: h_n's gradient (None: zeros); dgates (T,B,3H): the recorded gates' own gradients,
// when they were returned; A (T,B,3H) the forward's kept gates; into_gates: dXW is written over A (dxw_buffer).
std::vector<Tensor> ln_gru_backward(const Tensor& dY, const std::optional<Tensor>& dhn, const Tensor& NX,
                                    const Tensor& RX,
                                    const Tensor& NHW, const Tensor& RH, const Tensor& Y, const Tensor& h0,
                                    const Tensor& w_hh, const Tensor& b_ih, const Tensor& b_hh, const Tensor& g_ih,
                                    const Tensor& g_hh, const std::optional<Tensor>& mask,
                                    const std::optional<Tensor>& keep_h, const std::optional<Tensor>& lengths,
                                    bool reverse, bool need_w_hh, const std::optional<Tensor>& dgates,
                                    const std::optional<Tensor>& A, bool into_gates) {
  const int Tn = NX.size(0), B = NX.size(1), H = NX.size(2) / 3;
  Tensor dh = grad_or_zeros(dhn, B, H, NX);
  Tensor dXW = dxw_buffer(NX, A, into_gates), dW = at::empty({need_w_hh ? 3 * H : 0, H}, NX.options());
  Tensor sums = at::zeros({12 * H}, NX.options());  // the four summed gradients, views of one buffer
  Tensor dbx = sums.narrow(0, 0, 3 * H), dbh = sums.narrow(0, 3 * H, 3 * H);
  Tensor dgx = sums.narrow(0, 6 * H, 3 * H), dgh = sums.narrow(0, 9 * H, 3 * H);
  AT_DISPATCH_FLOATING_TYPES(NX.scalar_type(), "rnnlab ln_gru_backward", [&] {
    ln_gru_backward_impl<scalar_t>(
        dY.data_ptr<scalar_t>(), NX.data_ptr<scalar_t>(), RX.data_ptr<scalar_t>(), NHW.data_ptr<scalar_t>(),
        RH.data_ptr<scalar_t>(), Y.data_ptr<scalar_t>(), h0.data_ptr<scalar_t>(), w_hh.data_ptr<scalar_t>(),
        b_ih.data_ptr<scalar_t>(), b_hh.data_ptr<scalar_t>(), g_ih.data_ptr<scalar_t>(), g_hh.data_ptr<scalar_t>(),
        opt_ptr<scalar_t>(mask), opt_ptr<scalar_t>(keep_h), lengths_ptr(lengths), reverse, Tn, B, H,
        dh.data_ptr<scalar_t>(), dXW.data_ptr<scalar_t>(), need_w_hh ? dW.data_ptr<scalar_t>() : nullptr,
        dbx.data_ptr<scalar_t>(), dbh.data_ptr<scalar_t>(), dgx.data_ptr<scalar_t>(), dgh.data_ptr<scalar_t>(),
        opt_ptr<scalar_t>(dgates), opt_ptr<scalar_t>(A));
  });
  return {dXW, dW, dh, dbx, dbh, dgx, dgh};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(rnnlab_fused, m) {
  m.def("ln_lstm_forward(Tensor(a!) xw, Tensor h0, Tensor c0, Tensor w_hh, Tensor bias, Tensor g_ih, Tensor g_hh, "
        "Tensor g_c, Tensor b_c, Tensor? mask, Tensor? keep_h, Tensor? keep_c, Tensor? lengths, bool reverse, "
        "bool train, bool gates) -> Tensor[]");
  m.def("ln_lstm_backward(Tensor dY, Tensor? dhn, Tensor? dcn, Tensor NX, Tensor RX, Tensor NHW, Tensor RH, "
        "Tensor NC, Tensor RC, Tensor C, Tensor Y, Tensor h0, Tensor c0, Tensor w_hh, Tensor bias, Tensor g_ih, "
        "Tensor g_hh, Tensor g_c, Tensor b_c, Tensor? mask, Tensor? keep_h, Tensor? keep_c, Tensor? lengths, "
        "bool reverse, bool need_w_hh, Tensor? dC, Tensor? dgates, Tensor(a!)? A, Tensor? TY, bool into_gates) "
        "-> Tensor[]");
  m.def("ln_gru_forward(Tensor(a!) xw, Tensor h0, Tensor w_hh, Tensor b_ih, Tensor b_hh, Tensor g_ih, "
        "Tensor g_hh, Tensor? mask, Tensor? keep_h, Tensor? lengths, bool reverse, bool train, bool gates) "
        "-> Tensor[]");
  m.def("ln_gru_backward(Tensor dY, Tensor? dhn, Tensor NX, Tensor RX, Tensor NHW, Tensor RH, Tensor Y, "
        "Tensor h0, Tensor w_hh, Tensor b_ih, Tensor b_hh, Tensor g_ih, Tensor g_hh, Tensor? mask, "
        "Tensor? keep_h, Tensor? lengths, bool reverse, bool need_w_hh, Tensor? dgates, Tensor(a!)? A, "
        "bool into_gates) -> Tensor[]");
}

TORCH_LIBRARY_IMPL(rnnlab_fused, CPU, m) {
  m.impl("ln_lstm_forward", &ln_lstm_forward);
  m.impl("ln_lstm_backward", &ln_lstm_backward);
  m.impl("ln_gru_forward", &ln_gru_forward);
  m.impl("ln_gru_backward", &ln_gru_backward);
}
