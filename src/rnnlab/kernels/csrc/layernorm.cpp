// Compiled step loops of the layer-normalised LSTM and GRU (Ba, Kiros & Hinton 2016), see
// rnnlab/kernels/layernorm.py for the maths and the autograd glue.
//
// Only the recurrent half of the cell runs here. The input half LN(x W_ih^T) g_ih + b does not depend on the
// state, so Python computes it for all T*B rows at once (one GEMM, one F.layer_norm) and autograd does its
// backward; it arrives here as `xs` (T, B, G) and leaves as its gradient dA (T, B, G).
//
// Per step (forward): hw = (h_{t-1} * mask) W_hh^T into the step's row of NHW (one GEMM), then per batch row the
// layer norm of hw over its G = 4H (LSTM) or 3H (GRU) features, the gates, the cell update and, for the LSTM,
// the layer norm of the new cell. Saved for the backward: the activated gates, the normalised hw (NHW) and its
// 1/std, and for the LSTM the normalised cell (NC), its 1/std and every step's cell state.
//
// Per step (backward): the pointwise derivative through the cell, the layer-norm derivative of the recurrent half
// to d(hw) (kept for all steps: dW_hh = sum_t d(hw)_t^T (h_{t-1} * mask) is one GEMM in Python), then
// dh_{t-1} += (d(hw)_t W_hh) * mask (one GEMM). The gain/shift gradients are summed per step while the rows are
// in cache.
//
// Layout, lengths and reverse as in fused.cpp: row-major, time-major, gate blocks LSTM i,f,g,o and GRU r,z,n;
// steps t >= lengths[b] keep row b's state and output zeros. Zoneout keep tensors (T, B, H) mix the old and the
// new state: s_t = k_t s_{t-1} + (1 - k_t) new_t.
#include "common.h"

namespace {

using namespace rnnlab_kernels;

constexpr int kLanes = 16;  // independent partial sums, so that gcc vectorizes the reductions without -ffast-math
constexpr double kEps = 1e-5;  // torch.nn.LayerNorm's default, as cellspec._ln

// mean and 1/sqrt(var + eps) of one row x (n), var the biased variance about the mean (two passes, like torch).
template <typename T>
inline void row_stats(const T* __restrict x, int n, T& mean, T& rstd) {
  T acc[kLanes] = {};
  int j = 0;
  for (; j + kLanes <= n; j += kLanes)
    for (int k = 0; k < kLanes; ++k) acc[k] += x[j + k];
  T s = 0;
  for (; j < n; ++j) s += x[j];
  for (int k = 0; k < kLanes; ++k) s += acc[k];
  mean = s / n;
  T acc2[kLanes] = {};
  j = 0;
  for (; j + kLanes <= n; j += kLanes)
    for (int k = 0; k < kLanes; ++k) {
      const T d = x[j + k] - mean;
      acc2[k] += d * d;
    }
  T v = 0;
  for (; j < n; ++j) v += (x[j] - mean) * (x[j] - mean);
  for (int k = 0; k < kLanes; ++k) v += acc2[k];
  rstd = T(1) / std::sqrt(v / n + T(kEps));
}

// The layer-norm derivative of one row, in place: with y = n g (+ shift), n = (x - mean) rstd and dn = dy g
// (given in d), dx = rstd (dn - mean(dn) - n mean(dn n)).
template <typename T>
inline void ln_backward_row(T* __restrict d, const T* __restrict nrm, T rstd, int n) {
  T a1[kLanes] = {}, a2[kLanes] = {};
  int j = 0;
  for (; j + kLanes <= n; j += kLanes)
    for (int k = 0; k < kLanes; ++k) {
      a1[k] += d[j + k];
      a2[k] += d[j + k] * nrm[j + k];
    }
  T s1 = 0, s2 = 0;
  for (; j < n; ++j) {
    s1 += d[j];
    s2 += d[j] * nrm[j];
  }
  for (int k = 0; k < kLanes; ++k) {
    s1 += a1[k];
    s2 += a2[k];
  }
  const T m1 = s1 / n, m2 = s2 / n;
  for (j = 0; j < n; ++j) d[j] = rstd * (d[j] - m1 - nrm[j] * m2);
}

// The recurrent input of a step: h, or h * mask (recurrent dropout) in a scratch copy.
template <typename T>
inline const T* masked_h(const T* h, const T* mask, int n, T* scratch) {
  if (mask == nullptr) return h;
  for (int j = 0; j < n; ++j) scratch[j] = h[j] * mask[j];
  return scratch;
}

// dh (B x P) += (dHW (B x G) W_hh) * mask: the recurrent GEMM of the backward, masked like the forward's input.
template <typename T>
inline void add_recurrent_grad(const StepGemm<T>& rec, const T* dhw, const T* mask, int n, T* scratch, T* dh) {
  if (mask == nullptr) {
    rec(dhw, T(1), dh);
    return;
  }
  rec(dhw, T(0), scratch);
  for (int j = 0; j < n; ++j) dh[j] += scratch[j] * mask[j];
}

// ---- LSTM -----------------------------------------------------------------------------------------------------

// One row of the LN-LSTM step after hw's statistics: a = xs + g_hh * n_hw (n_hw = (hw - mean) rstd, written back
// into nhw); i, f, g, o; c' = f c + i g (written to cn).
template <typename T>
inline void ln_lstm_gates(const T* __restrict xs, T* __restrict nhw, const T* __restrict ghh, T mean, T rstd,
                          const T* __restrict c, T* __restrict gates, T* __restrict cn, int H) {
  for (int j = 0; j < 4 * H; ++j) nhw[j] = (nhw[j] - mean) * rstd;
  for (int j = 0; j < H; ++j) {
    const T i = Act<T>::sigmoid(xs[j] + ghh[j] * nhw[j]);
    const T f = Act<T>::sigmoid(xs[H + j] + ghh[H + j] * nhw[H + j]);
    const T g = Act<T>::tanh(xs[2 * H + j] + ghh[2 * H + j] * nhw[2 * H + j]);
    const T o = Act<T>::sigmoid(xs[3 * H + j] + ghh[3 * H + j] * nhw[3 * H + j]);
    gates[j] = i;
    gates[H + j] = f;
    gates[2 * H + j] = g;
    gates[3 * H + j] = o;
    cn[j] = f * c[j] + i * g;
  }
}

// The keep row (H) of zoneout tensor k at row tb, or a row of zeros when that state has no zoneout.
template <typename T>
inline const T* keep_row(const T* k, int64_t tb, int H, const std::vector<T>& zeros) {
  return k ? k + tb * H : zeros.data();
}

// The end of an LN-LSTM row: n_c = (c' - mean) rstd (saved), h' = o tanh(n_c g_c + b_c), then zoneout
// s = k s + (1 - k) s' when Z. A separate function with __restrict arguments, so that gcc vectorizes it.
template <typename T, bool Z>
inline void ln_lstm_output(const T* __restrict cn, T cmean, T crstd, const T* __restrict o, const T* __restrict gc,
                           const T* __restrict bc, const T* __restrict kh, const T* __restrict kc,
                           T* __restrict nc, T* __restrict h, T* __restrict c, T* __restrict y, int H) {
  for (int j = 0; j < H; ++j) {
    const T n = (cn[j] - cmean) * crstd;
    nc[j] = n;
    const T hn = o[j] * Act<T>::tanh(n * gc[j] + bc[j]);
    const T hv = Z ? kh[j] * h[j] + (T(1) - kh[j]) * hn : hn;
    c[j] = Z ? kc[j] * c[j] + (T(1) - kc[j]) * cn[j] : cn[j];
    h[j] = hv;
    y[j] = hv;
  }
}

// Backward through h' = o tanh(y_c), y_c = n_c g_c + b_c, from dL/dh_t = dh + dy: the o pre-activation gradient
// (dao), dg_c, db_c, dn = dL/dn_c, and dh <- zoneout's direct part of dL/dh_{t-1} (k dL/dh_t).
template <typename T, bool Z>
inline void ln_lstm_output_backward(const T* __restrict o, const T* __restrict nc, const T* __restrict gc,
                                    const T* __restrict bc, const T* __restrict dy, const T* __restrict kh,
                                    T* __restrict dh, T* __restrict dao, T* __restrict dgc, T* __restrict dbc,
                                    T* __restrict dn, int H) {
  for (int j = 0; j < H; ++j) {
    const T d = dh[j] + dy[j];                              // dL/dh_t
    const T dhn = Z ? (T(1) - kh[j]) * d : d;               // dL/dh'_t
    dh[j] = Z ? kh[j] * d : T(0);
    const T ty = Act<T>::tanh(nc[j] * gc[j] + bc[j]);
    const T dyc = dhn * o[j] * (T(1) - ty * ty);
    dao[j] = dhn * ty * o[j] * (T(1) - o[j]);
    dgc[j] += dyc * nc[j];
    dbc[j] += dyc;
    dn[j] = dyc * gc[j];
  }
}

// Backward through c' = f c_{t-1} + i g (and zoneout of c): dcn (dL/dc' from the cell norm) plus the carried
// dL/dc_t -> the i, f, g pre-activation gradients and dc <- dL/dc_{t-1}.
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

template <typename T>
void ln_lstm_forward_impl(const T* xs, const T* whh, const T* ghh, const T* gc, const T* bc, const T* mask,
                          const T* kh, const T* kc, const int64_t* len, bool reverse, int Tn, int B, int H, bool train,
                          T* Y, T* h, T* c, T* A, T* NHW, T* RH, T* NC, T* RC, T* Cs) {
  const int G = 4 * H;
  // One step's worth of the saved buffers when they are not kept (inference).
  std::vector<T> a_step(train ? 0 : static_cast<size_t>(B) * G), nhw_step(train ? 0 : static_cast<size_t>(B) * G),
      nc_step(train ? 0 : H), hm(mask ? static_cast<size_t>(B) * H : 0);
  std::vector<T> cn(H);
  const bool zone = kh != nullptr || kc != nullptr;
  const std::vector<T> zeros(zone ? H : 0);  // the keep row of a state without zoneout
  const StepGemm<T> rec(whh, true, B, G, H);
  for (int s = 0; s < Tn; ++s) {
    const int t = reverse ? Tn - 1 - s : s;
    const int64_t tB = static_cast<int64_t>(t) * B;
    T* nhw = train ? NHW + tB * G : nhw_step.data();        // (B, 4H)
    rec(masked_h<T>(h, mask, B * H, hm.data()), T(0), nhw);  // h_{t-1} W_hh^T
    for (int b = 0; b < B; ++b) {
      T* y = Y + (tB + b) * H;
      if (!is_valid(len, t, b)) {
        std::memset(y, 0, sizeof(T) * H);
        continue;
      }
      T* hb = h + static_cast<int64_t>(b) * H;
      T* cb = c + static_cast<int64_t>(b) * H;
      T* nb = nhw + static_cast<int64_t>(b) * G;
      T* ab = train ? A + (tB + b) * G : a_step.data() + static_cast<int64_t>(b) * G;
      T* ncb = train ? NC + (tB + b) * H : nc_step.data();
      T mean, rstd;
      row_stats<T>(nb, G, mean, rstd);
      ln_lstm_gates<T>(xs + (tB + b) * G, nb, ghh, mean, rstd, cb, ab, cn.data(), H);
      T cmean, crstd;
      row_stats<T>(cn.data(), H, cmean, crstd);
      if (train) {
        RH[tB + b] = rstd;
        RC[tB + b] = crstd;
      }
      if (zone)
        ln_lstm_output<T, true>(cn.data(), cmean, crstd, ab + 3 * H, gc, bc, keep_row(kh, tB + b, H, zeros),
                                keep_row(kc, tB + b, H, zeros), ncb, hb, cb, y, H);
      else
        ln_lstm_output<T, false>(cn.data(), cmean, crstd, ab + 3 * H, gc, bc, nullptr, nullptr, ncb, hb, cb, y, H);
    }
    if (train) std::memcpy(Cs + tB * H, c, sizeof(T) * B * H);
  }
}

template <typename T>
const T* ptr_or_null(const std::optional<Tensor>& t) {
  return t.has_value() && t->defined() ? t->data_ptr<T>() : nullptr;
}

// xs (T,B,4H) = LN(x W_ih^T) g_ih + b; mask (B,H) recurrent dropout; keep_h, keep_c (T,B,H) zoneout.
// Returns Y (T,B,H), h_n, c_n and, when train, the saved A (T,B,4H) activated i,f,g,o, NHW (T,B,4H) normalised
// h W_hh^T, RH (T,B) its 1/std, NC (T,B,H) the normalised new cell, RC (T,B) its 1/std, C (T,B,H) cell states.
std::vector<Tensor> ln_lstm_forward(const Tensor& xs, const Tensor& h0, const Tensor& c0, const Tensor& w_hh,
                                    const Tensor& g_hh, const Tensor& g_c, const Tensor& b_c,
                                    const std::optional<Tensor>& mask, const std::optional<Tensor>& keep_h,
                                    const std::optional<Tensor>& keep_c, const std::optional<Tensor>& lengths,
                                    bool reverse, bool train) {
  const int Tn = xs.size(0), B = xs.size(1), H = xs.size(2) / 4;
  const int Ts = train ? Tn : 0;
  Tensor Y = at::empty({Tn, B, H}, xs.options());
  Tensor h = h0.clone(), c = c0.clone();
  Tensor A = at::empty({Ts, B, 4 * H}, xs.options()), NHW = at::empty({Ts, B, 4 * H}, xs.options());
  Tensor RH = at::empty({Ts, B}, xs.options()), NC = at::empty({Ts, B, H}, xs.options());
  Tensor RC = at::empty({Ts, B}, xs.options()), Cs = at::empty({Ts, B, H}, xs.options());
  AT_DISPATCH_FLOATING_TYPES(xs.scalar_type(), "rnnlab ln_lstm_forward", [&] {
    ln_lstm_forward_impl<scalar_t>(
        xs.data_ptr<scalar_t>(), w_hh.data_ptr<scalar_t>(), g_hh.data_ptr<scalar_t>(), g_c.data_ptr<scalar_t>(),
        b_c.data_ptr<scalar_t>(), ptr_or_null<scalar_t>(mask), ptr_or_null<scalar_t>(keep_h),
        ptr_or_null<scalar_t>(keep_c), lengths_ptr(lengths), reverse, Tn, B, H, train, Y.data_ptr<scalar_t>(),
        h.data_ptr<scalar_t>(), c.data_ptr<scalar_t>(), A.data_ptr<scalar_t>(), NHW.data_ptr<scalar_t>(),
        RH.data_ptr<scalar_t>(), NC.data_ptr<scalar_t>(), RC.data_ptr<scalar_t>(), Cs.data_ptr<scalar_t>());
  });
  return {Y, h, c, A, NHW, RH, NC, RC, Cs};
}

template <typename T>
void ln_lstm_backward_impl(const T* dY, const T* A, const T* NHW, const T* RH, const T* NC, const T* RC,
                           const T* Cs, const T* c0, const T* whh, const T* ghh, const T* gc, const T* bc,
                           const T* mask, const T* kh, const T* kc, const int64_t* len, bool reverse, int Tn, int B,
                           int H, T* dh, T* dc, T* dA, T* dHW, T* dghh, T* dgc, T* dbc) {
  const int G = 4 * H;
  const StepGemm<T> rec(whh, false, B, H, G);
  std::vector<T> dn(H), scratch(mask ? static_cast<size_t>(B) * H : 0);
  const bool zone = kh != nullptr || kc != nullptr;
  const std::vector<T> zeros(zone ? H : 0);
  for (int s = 0; s < Tn; ++s) {
    const int t = reverse ? s : Tn - 1 - s;                // the forward order, backwards
    const int64_t tB = static_cast<int64_t>(t) * B;
    T* dhw = dHW + tB * G;                                 // (B, 4H)
    for (int b = 0; b < B; ++b) {
      const int64_t tb = tB + b;
      T* da = dA + tb * G;
      T* dhwb = dhw + static_cast<int64_t>(b) * G;
      if (!is_valid(len, t, b)) {                          // state carried: dh, dc pass through unchanged
        std::memset(da, 0, sizeof(T) * G);
        std::memset(dhwb, 0, sizeof(T) * G);
        continue;
      }
      const int tp = prev_step(len, reverse, Tn, t, b);
      const T* cp = tp >= 0 ? Cs + (static_cast<int64_t>(tp) * B + b) * H : c0 + static_cast<int64_t>(b) * H;
      const T* a = A + tb * G;
      const T* nc = NC + tb * H;
      T* dhb = dh + static_cast<int64_t>(b) * H;           // dL/dh_{t-1}'s direct part after; the GEMM adds the rest
      T* dcb = dc + static_cast<int64_t>(b) * H;
      const T* dy = dY + tb * H;
      if (zone)
        ln_lstm_output_backward<T, true>(a + 3 * H, nc, gc, bc, dy, keep_row(kh, tb, H, zeros), dhb, da + 3 * H,
                                         dgc, dbc, dn.data(), H);
      else
        ln_lstm_output_backward<T, false>(a + 3 * H, nc, gc, bc, dy, nullptr, dhb, da + 3 * H, dgc, dbc,
                                          dn.data(), H);
      ln_backward_row<T>(dn.data(), nc, RC[tb], H);        // dn <- dL/dc'_t through the cell layer norm
      if (zone)
        ln_lstm_cell_backward<T, true>(a, cp, dn.data(), keep_row(kc, tb, H, zeros), dcb, da, H);
      else
        ln_lstm_cell_backward<T, false>(a, cp, dn.data(), nullptr, dcb, da, H);
      // through a = xs + g_hh n_hw: dg_hh, then the layer-norm derivative to d(hw)
      const T* nhw = NHW + tb * G;
      for (int j = 0; j < G; ++j) {
        dghh[j] += da[j] * nhw[j];
        dhwb[j] = da[j] * ghh[j];
      }
      ln_backward_row<T>(dhwb, nhw, RH[tb], G);
    }
    add_recurrent_grad<T>(rec, dhw, mask, B * H, scratch.data(), dh);  // dh_{t-1} += (d(hw) W_hh) * mask
  }
}

// Returns dA (T,B,4H) (gradient of xs), dHW (T,B,4H) (of h_{t-1} W_hh^T), dh0, dc0, dg_hh (4H), dg_c, db_c (H).
std::vector<Tensor> ln_lstm_backward(const Tensor& dY, const Tensor& dhn, const Tensor& dcn, const Tensor& A,
                                     const Tensor& NHW, const Tensor& RH, const Tensor& NC, const Tensor& RC,
                                     const Tensor& Cs, const Tensor& c0, const Tensor& w_hh, const Tensor& g_hh,
                                     const Tensor& g_c, const Tensor& b_c, const std::optional<Tensor>& mask,
                                     const std::optional<Tensor>& keep_h, const std::optional<Tensor>& keep_c,
                                     const std::optional<Tensor>& lengths, bool reverse) {
  const int Tn = A.size(0), B = A.size(1), H = A.size(2) / 4;
  Tensor dh = dhn.clone(), dc = dcn.clone();
  Tensor dA = at::empty_like(A), dHW = at::empty_like(A);
  Tensor dghh = at::zeros({4 * H}, A.options()), dgc = at::zeros({H}, A.options()), dbc = at::zeros({H}, A.options());
  AT_DISPATCH_FLOATING_TYPES(A.scalar_type(), "rnnlab ln_lstm_backward", [&] {
    ln_lstm_backward_impl<scalar_t>(
        dY.data_ptr<scalar_t>(), A.data_ptr<scalar_t>(), NHW.data_ptr<scalar_t>(), RH.data_ptr<scalar_t>(),
        NC.data_ptr<scalar_t>(), RC.data_ptr<scalar_t>(), Cs.data_ptr<scalar_t>(), c0.data_ptr<scalar_t>(),
        w_hh.data_ptr<scalar_t>(), g_hh.data_ptr<scalar_t>(), g_c.data_ptr<scalar_t>(), b_c.data_ptr<scalar_t>(),
        ptr_or_null<scalar_t>(mask), ptr_or_null<scalar_t>(keep_h), ptr_or_null<scalar_t>(keep_c),
        lengths_ptr(lengths), reverse, Tn, B, H, dh.data_ptr<scalar_t>(), dc.data_ptr<scalar_t>(),
        dA.data_ptr<scalar_t>(), dHW.data_ptr<scalar_t>(), dghh.data_ptr<scalar_t>(), dgc.data_ptr<scalar_t>(),
        dbc.data_ptr<scalar_t>());
  });
  return {dA, dHW, dh, dc, dghh, dgc, dbc};
}

// ---- GRU ------------------------------------------------------------------------------------------------------

// One LN-GRU row after hw's layer norm (nb = n_hw): [u_r, u_z, u_n] = n_hw g_hh + b_hh; r, z, n (saved in a);
// h' = (1 - z) n + z h with the unmasked h; zoneout when Z.
template <typename T, bool Z>
inline void ln_gru_cell(const T* __restrict xs, const T* __restrict nb, const T* __restrict ghh,
                        const T* __restrict bhh, const T* __restrict kh, T* __restrict a, T* __restrict h,
                        T* __restrict y, int H) {
  for (int j = 0; j < H; ++j) {
    const T r = Act<T>::sigmoid(xs[j] + nb[j] * ghh[j] + bhh[j]);
    const T z = Act<T>::sigmoid(xs[H + j] + nb[H + j] * ghh[H + j] + bhh[H + j]);
    const T n = Act<T>::tanh(xs[2 * H + j] + r * (nb[2 * H + j] * ghh[2 * H + j] + bhh[2 * H + j]));
    const T hn = (T(1) - z) * n + z * h[j];
    a[j] = r;
    a[H + j] = z;
    a[2 * H + j] = n;
    const T hv = Z ? kh[j] * h[j] + (T(1) - kh[j]) * hn : hn;
    h[j] = hv;
    y[j] = hv;
  }
}

// One LN-GRU row's pointwise derivative from dL/dh_t = dh + dy: da = d[s_r, s_z, s_n] (the input half),
// du = d[u_r, u_z, u_n] (before the recurrent layer norm), dh <- the direct part of dL/dh_{t-1} (zoneout and
// the carry z h; the GEMM adds the rest).
template <typename T, bool Z>
inline void ln_gru_cell_backward(const T* __restrict a, const T* __restrict nhw, const T* __restrict ghh,
                                 const T* __restrict bhh, const T* __restrict hp, const T* __restrict dy,
                                 const T* __restrict kh, T* __restrict dh, T* __restrict da, T* __restrict du,
                                 int H) {
  for (int j = 0; j < H; ++j) {
    const T r = a[j], z = a[H + j], n = a[2 * H + j];
    const T d = dh[j] + dy[j];                              // dL/dh_t
    const T dhn = Z ? (T(1) - kh[j]) * d : d;               // dL/dh'_t
    const T un = nhw[2 * H + j] * ghh[2 * H + j] + bhh[2 * H + j];
    const T dnp = dhn * (T(1) - z) * (T(1) - n * n);       // through n = tanh(.)
    const T drp = dnp * un * r * (T(1) - r);
    const T dzp = dhn * (hp[j] - n) * z * (T(1) - z);
    da[j] = drp;
    da[H + j] = dzp;
    da[2 * H + j] = dnp;
    du[j] = drp;
    du[H + j] = dzp;
    du[2 * H + j] = dnp * r;                                // the reset gate scales u_n
    dh[j] = (Z ? kh[j] * d : T(0)) + dhn * z;
  }
}

template <typename T>
void ln_gru_forward_impl(const T* xs, const T* whh, const T* ghh, const T* bhh, const T* mask, const T* kh,
                         const int64_t* len, bool reverse, int Tn, int B, int H, bool train, T* Y, T* h, T* A,
                         T* NHW, T* RH) {
  const int G = 3 * H;
  std::vector<T> a_step(train ? 0 : static_cast<size_t>(B) * G), nhw_step(train ? 0 : static_cast<size_t>(B) * G),
      hm(mask ? static_cast<size_t>(B) * H : 0);
  const StepGemm<T> rec(whh, true, B, G, H);
  for (int s = 0; s < Tn; ++s) {
    const int t = reverse ? Tn - 1 - s : s;
    const int64_t tB = static_cast<int64_t>(t) * B;
    T* nhw = train ? NHW + tB * G : nhw_step.data();        // (B, 3H)
    rec(masked_h<T>(h, mask, B * H, hm.data()), T(0), nhw);  // (h_{t-1} * mask) W_hh^T
    for (int b = 0; b < B; ++b) {
      T* y = Y + (tB + b) * H;
      if (!is_valid(len, t, b)) {
        std::memset(y, 0, sizeof(T) * H);
        continue;
      }
      T* hb = h + static_cast<int64_t>(b) * H;
      T* nb = nhw + static_cast<int64_t>(b) * G;
      T* ab = train ? A + (tB + b) * G : a_step.data() + static_cast<int64_t>(b) * G;
      const T* xb = xs + (tB + b) * G;
      const T* khb = kh ? kh + (tB + b) * H : nullptr;
      T mean, rstd;
      row_stats<T>(nb, G, mean, rstd);
      if (train) RH[tB + b] = rstd;
      for (int j = 0; j < G; ++j) nb[j] = (nb[j] - mean) * rstd;
      if (khb) ln_gru_cell<T, true>(xb, nb, ghh, bhh, khb, ab, hb, y, H);
      else ln_gru_cell<T, false>(xb, nb, ghh, bhh, nullptr, ab, hb, y, H);
    }
  }
}

// xs (T,B,3H) = LN(x W_ih^T) g_ih + b_ih; b_hh (3H) stays inside the reset gate's product as torch's GRU.
// Returns Y (T,B,H), h_n and, when train, A (T,B,3H) activated r,z,n, NHW (T,B,3H) normalised h W_hh^T, RH (T,B).
std::vector<Tensor> ln_gru_forward(const Tensor& xs, const Tensor& h0, const Tensor& w_hh, const Tensor& g_hh,
                                   const Tensor& b_hh, const std::optional<Tensor>& mask,
                                   const std::optional<Tensor>& keep_h, const std::optional<Tensor>& lengths,
                                   bool reverse, bool train) {
  const int Tn = xs.size(0), B = xs.size(1), H = xs.size(2) / 3;
  const int Ts = train ? Tn : 0;
  Tensor Y = at::empty({Tn, B, H}, xs.options());
  Tensor h = h0.clone();
  Tensor A = at::empty({Ts, B, 3 * H}, xs.options()), NHW = at::empty({Ts, B, 3 * H}, xs.options());
  Tensor RH = at::empty({Ts, B}, xs.options());
  AT_DISPATCH_FLOATING_TYPES(xs.scalar_type(), "rnnlab ln_gru_forward", [&] {
    ln_gru_forward_impl<scalar_t>(xs.data_ptr<scalar_t>(), w_hh.data_ptr<scalar_t>(), g_hh.data_ptr<scalar_t>(),
                                  b_hh.data_ptr<scalar_t>(), ptr_or_null<scalar_t>(mask),
                                  ptr_or_null<scalar_t>(keep_h), lengths_ptr(lengths), reverse, Tn, B, H, train,
                                  Y.data_ptr<scalar_t>(), h.data_ptr<scalar_t>(), A.data_ptr<scalar_t>(),
                                  NHW.data_ptr<scalar_t>(), RH.data_ptr<scalar_t>());
  });
  return {Y, h, A, NHW, RH};
}

template <typename T>
void ln_gru_backward_impl(const T* dY, const T* A, const T* NHW, const T* RH, const T* Y, const T* h0, const T* whh,
                          const T* ghh, const T* bhh, const T* mask, const T* kh, const int64_t* len, bool reverse,
                          int Tn, int B, int H, T* dh, T* dA, T* dHW, T* dghh, T* dbhh) {
  const int G = 3 * H;
  const StepGemm<T> rec(whh, false, B, H, G);
  std::vector<T> scratch(mask ? static_cast<size_t>(B) * H : 0);
  for (int s = 0; s < Tn; ++s) {
    const int t = reverse ? s : Tn - 1 - s;
    const int64_t tB = static_cast<int64_t>(t) * B;
    T* dhw = dHW + tB * G;                                 // (B, 3H)
    for (int b = 0; b < B; ++b) {
      const int64_t tb = tB + b;
      T* da = dA + tb * G;
      T* dhwb = dhw + static_cast<int64_t>(b) * G;
      if (!is_valid(len, t, b)) {
        std::memset(da, 0, sizeof(T) * G);
        std::memset(dhwb, 0, sizeof(T) * G);
        continue;
      }
      const int tp = prev_step(len, reverse, Tn, t, b);
      const T* hp = tp >= 0 ? Y + (static_cast<int64_t>(tp) * B + b) * H : h0 + static_cast<int64_t>(b) * H;
      const T* a = A + tb * G;
      const T* nhw = NHW + tb * G;
      const T* khb = kh ? kh + tb * H : nullptr;
      const T* dy = dY + tb * H;
      T* dhb = dh + static_cast<int64_t>(b) * H;
      if (khb) ln_gru_cell_backward<T, true>(a, nhw, ghh, bhh, hp, dy, khb, dhb, da, dhwb, H);
      else ln_gru_cell_backward<T, false>(a, nhw, ghh, bhh, hp, dy, nullptr, dhb, da, dhwb, H);
      for (int j = 0; j < G; ++j) {
        dbhh[j] += dhwb[j];
        dghh[j] += dhwb[j] * nhw[j];
        dhwb[j] *= ghh[j];
      }
      ln_backward_row<T>(dhwb, nhw, RH[tb], G);
    }
    add_recurrent_grad<T>(rec, dhw, mask, B * H, scratch.data(), dh);
  }
}

// Returns dA (T,B,3H) (gradient of xs), dHW (T,B,3H) (of h_{t-1} W_hh^T), dh0, dg_hh (3H), db_hh (3H).
std::vector<Tensor> ln_gru_backward(const Tensor& dY, const Tensor& dhn, const Tensor& A, const Tensor& NHW,
                                    const Tensor& RH, const Tensor& Y, const Tensor& h0, const Tensor& w_hh,
                                    const Tensor& g_hh, const Tensor& b_hh, const std::optional<Tensor>& mask,
                                    const std::optional<Tensor>& keep_h, const std::optional<Tensor>& lengths,
                                    bool reverse) {
  const int Tn = A.size(0), B = A.size(1), H = A.size(2) / 3;
  Tensor dh = dhn.clone();
  Tensor dA = at::empty_like(A), dHW = at::empty_like(A);
  Tensor dghh = at::zeros({3 * H}, A.options()), dbhh = at::zeros({3 * H}, A.options());
  AT_DISPATCH_FLOATING_TYPES(A.scalar_type(), "rnnlab ln_gru_backward", [&] {
    ln_gru_backward_impl<scalar_t>(
        dY.data_ptr<scalar_t>(), A.data_ptr<scalar_t>(), NHW.data_ptr<scalar_t>(), RH.data_ptr<scalar_t>(),
        Y.data_ptr<scalar_t>(), h0.data_ptr<scalar_t>(), w_hh.data_ptr<scalar_t>(), g_hh.data_ptr<scalar_t>(),
        b_hh.data_ptr<scalar_t>(), ptr_or_null<scalar_t>(mask), ptr_or_null<scalar_t>(keep_h),
        lengths_ptr(lengths), reverse, Tn, B, H, dh.data_ptr<scalar_t>(), dA.data_ptr<scalar_t>(),
        dHW.data_ptr<scalar_t>(), dghh.data_ptr<scalar_t>(), dbhh.data_ptr<scalar_t>());
  });
  return {dA, dHW, dh, dghh, dbhh};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(rnnlab_fused, m) {
  m.def("ln_lstm_forward(Tensor xs, Tensor h0, Tensor c0, Tensor w_hh, Tensor g_hh, Tensor g_c, Tensor b_c, "
        "Tensor? mask, Tensor? keep_h, Tensor? keep_c, Tensor? lengths, bool reverse, bool train) -> Tensor[]");
  m.def("ln_lstm_backward(Tensor dY, Tensor dhn, Tensor dcn, Tensor A, Tensor NHW, Tensor RH, Tensor NC, "
        "Tensor RC, Tensor C, Tensor c0, Tensor w_hh, Tensor g_hh, Tensor g_c, Tensor b_c, Tensor? mask, "
        "Tensor? keep_h, Tensor? keep_c, Tensor? lengths, bool reverse) -> Tensor[]");
  m.def("ln_gru_forward(Tensor xs, Tensor h0, Tensor w_hh, Tensor g_hh, Tensor b_hh, Tensor? mask, "
        "Tensor? keep_h, Tensor? lengths, bool reverse, bool train) -> Tensor[]");
  m.def("ln_gru_backward(Tensor dY, Tensor dhn, Tensor A, Tensor NHW, Tensor RH, Tensor Y, Tensor h0, "
        "Tensor w_hh, Tensor g_hh, Tensor b_hh, Tensor? mask, Tensor? keep_h, Tensor? lengths, bool reverse) "
        "-> Tensor[]");
}

TORCH_LIBRARY_IMPL(rnnlab_fused, CPU, m) {
  m.impl("ln_lstm_forward", &ln_lstm_forward);
  m.impl("ln_lstm_backward", &ln_lstm_backward);
  m.impl("ln_gru_forward", &ln_gru_forward);
  m.impl("ln_gru_backward", &ln_gru_backward);
}
