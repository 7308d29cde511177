// Compiled step loops of rnnlab's fused path (see rnnlab/kernels/fused.py for the maths and the autograd glue).
//
// Why C++: at small sizes the per-step Python dispatch of a handful of torch ops costs more than the maths
// (a Python step loop is ~2x torch.nn.LSTM at B=1, T=500, H=256). Here one step is one BLAS call (the recurrent
// GEMM, gate blocks concatenated, accumulated straight into the precomputed input projection) plus one fused
// pointwise loop over the gates. The big GEMMs over all T*B rows (input projection, dX, dW_ih, dW_hh, db) stay in
// Python as single torch calls: they have no per-step cost to save.
//
// Layout: every buffer is row-major and contiguous, time-major (T, B, features); gate blocks in torch's order
// (LSTM i,f,g,o; GRU r,z,n). `lengths` (B,) int64 is optional: steps t >= lengths[b] leave row b's state
// unchanged and output zeros, exactly as rnnlab.kernels.reference.recurrence. `reverse` walks t = T-1 .. 0.
//
// Only the BLAS symbols torch itself links (sgemm_/dgemm_, MKL on x86 wheels) and ATen headers are used, so the
// build needs nothing beyond a C++ compiler; if it fails, fused.py falls back to a pure-PyTorch loop.
#include "common.h"

namespace {

using namespace rnnlab_kernels;

// ---- LSTM -----------------------------------------------------------------------------------------------------

// One row of the LSTM pointwise step, in place: pre-activations -> i, f, g, o; c -> c'; m = o * tanh(c').
// __restrict: the gate blocks are disjoint slices of one row, which lets gcc vectorize the loop.
template <typename T>
inline void lstm_cell_forward(T* __restrict gi, T* __restrict gf, T* __restrict gg, T* __restrict go,
                              const T* __restrict bi, const T* __restrict bf, const T* __restrict bg,
                              const T* __restrict bo, T* __restrict c, T* __restrict m, int H) {
  for (int j = 0; j < H; ++j) {
    const T i = Act<T>::sigmoid(gi[j] + bi[j]);
    const T f = Act<T>::sigmoid(gf[j] + bf[j]);
    const T g = Act<T>::tanh(gg[j] + bg[j]);
    const T o = Act<T>::sigmoid(go[j] + bo[j]);
    const T cn = f * c[j] + i * g;
    c[j] = cn;
    m[j] = o * Act<T>::tanh(cn);
    gi[j] = i;
    gf[j] = f;
    gg[j] = g;
    go[j] = o;
  }
}

template <typename T>
void lstm_forward_impl(T* xw, InputChunks<T>* chunks, const T* bias, const T* whh, const T* whr, const int64_t* len,
                       bool reverse, int Tn, int B, int H, int P, T* Y, T* h, T* c, T* Cs, T* Ms) {
  const int G = 4 * H;
  const bool proj = whr != nullptr;
  std::vector<T> mbuf(proj && Ms == nullptr ? static_cast<size_t>(B) * H : 0);
  const StepGemm<T> rec(whh, true, B, G, P);
  const StepGemm<T> project(whr, true, B, P, proj ? H : 1);
  for (int s = 0; s < Tn; ++s) {
    const int t = reverse ? Tn - 1 - s : s;
    // (B, 4H): x_t W_ih^T, then the activated gates
    T* g = chunks ? chunks->gates(s, t) : xw + static_cast<int64_t>(t) * B * G;
    rec(h, T(1), g);                                       // += h_{t-1} W_hh^T
    T* m = proj ? (Ms ? Ms + static_cast<int64_t>(t) * B * H : mbuf.data()) : Y + static_cast<int64_t>(t) * B * P;
    for (int b = 0; b < B; ++b) {
      T* mb = m + static_cast<int64_t>(b) * H;
      if (!is_valid(len, t, b)) {
        std::memset(mb, 0, sizeof(T) * H);
        continue;
      }
      T* gb = g + static_cast<int64_t>(b) * G;
      lstm_cell_forward<T>(gb, gb + H, gb + 2 * H, gb + 3 * H, bias, bias + H, bias + 2 * H, bias + 3 * H,
                           c + static_cast<int64_t>(b) * H, mb, H);
    }
    T* y = Y + static_cast<int64_t>(t) * B * P;
    if (proj) project(m, T(0), y);                         // h_t = m_t W_hr^T (padding rows of m are 0)
    for (int b = 0; b < B; ++b)
      if (is_valid(len, t, b))
        std::memcpy(h + static_cast<int64_t>(b) * P, y + static_cast<int64_t>(b) * P, sizeof(T) * P);
    if (Cs) std::memcpy(Cs + static_cast<int64_t>(t) * B * H, c, sizeof(T) * B * H);
  }
}

// xw (T,B,4H) is x W_ih^T; bias (4H,) = b_ih + b_hh is added in the gate loop (no broadcast copy).
// Returns Y (T,B,P), h_n, c_n and, when train, the cell states C (T,B,H) (padding steps hold the carried state)
// and, with projections, m = o*tanh(c) (T,B,H). xw (T,B,4H) is overwritten with the activated gates i,f,g,o.
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> lstm_forward(Tensor xw, const Tensor& bias, const Tensor& h0,
                                                                const Tensor& c0, const Tensor& w_hh,
                                                                const std::optional<Tensor>& w_hr,
                                                                const std::optional<Tensor>& lengths, bool reverse,
                                                                bool train) {
  const int Tn = xw.size(0), B = xw.size(1), H = xw.size(2) / 4, P = h0.size(1);
  const bool proj = w_hr.has_value() && w_hr->defined();
  Tensor Y = at::empty({Tn, B, P}, xw.options());
  Tensor h = h0.clone(), c = c0.clone();
  Tensor Cs = at::empty({train ? Tn : 0, B, H}, xw.options());
  Tensor Ms = at::empty({train && proj ? Tn : 0, B, H}, xw.options());
  AT_DISPATCH_FLOATING_TYPES(xw.scalar_type(), "rnnlab lstm_forward", [&] {
    lstm_forward_impl<scalar_t>(xw.data_ptr<scalar_t>(), nullptr, bias.data_ptr<scalar_t>(), w_hh.data_ptr<scalar_t>(),
                                proj ? w_hr->data_ptr<scalar_t>() : nullptr, lengths_ptr(lengths), reverse, Tn, B,
                                H, P, Y.data_ptr<scalar_t>(), h.data_ptr<scalar_t>(), c.data_ptr<scalar_t>(),
                                train ? Cs.data_ptr<scalar_t>() : nullptr,
                                train && proj ? Ms.data_ptr<scalar_t>() : nullptr);
  });
  return {Y, h, c, Cs, Ms};
}

// Inference: x (T,B,I) and W_ih instead of a precomputed projection; returns Y, h_n, c_n and saves nothing.
std::tuple<Tensor, Tensor, Tensor> lstm_infer(const Tensor& x, const Tensor& w_ih, const Tensor& bias,
                                              const Tensor& h0, const Tensor& c0, const Tensor& w_hh,
                                              const std::optional<Tensor>& w_hr,
                                              const std::optional<Tensor>& lengths, bool reverse) {
  const int Tn = x.size(0), B = x.size(1), I = x.size(2), H = w_ih.size(0) / 4, P = h0.size(1);
  const bool proj = w_hr.has_value() && w_hr->defined();
  Tensor Y = at::empty({Tn, B, P}, x.options());
  Tensor h = h0.clone(), c = c0.clone();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "rnnlab lstm_infer", [&] {
    InputChunks<scalar_t> chunks(x.data_ptr<scalar_t>(), w_ih.data_ptr<scalar_t>(), reverse, Tn, B, I, 4 * H);
    lstm_forward_impl<scalar_t>(nullptr, &chunks, bias.data_ptr<scalar_t>(), w_hh.data_ptr<scalar_t>(),
                                proj ? w_hr->data_ptr<scalar_t>() : nullptr, lengths_ptr(lengths), reverse, Tn, B,
                                H, P, Y.data_ptr<scalar_t>(), h.data_ptr<scalar_t>(), c.data_ptr<scalar_t>(),
                                nullptr, nullptr);
  });
  return {Y, h, c};
}

// One row of the LSTM pointwise derivative: from dL/dm_t and dL/dc_t (carried in dc) to the pre-activation
// gradients of i, f, g, o, and dc <- dL/dc_{t-1}. tanh(c_t) is recomputed rather than stored (memory).
template <typename T>
inline void lstm_cell_backward(const T* __restrict gi, const T* __restrict gf, const T* __restrict gg,
                               const T* __restrict go, const T* __restrict c, const T* __restrict cp,
                               const T* __restrict dm, T* __restrict dc, T* __restrict di, T* __restrict df,
                               T* __restrict dg, T* __restrict dout, int H) {
  for (int j = 0; j < H; ++j) {
    const T i = gi[j], f = gf[j], g = gg[j], o = go[j];
    const T tc = Act<T>::tanh(c[j]);
    const T dcc = dc[j] + dm[j] * o * (T(1) - tc * tc);   // dL/dc_t
    di[j] = dcc * g * i * (T(1) - i);
    df[j] = dcc * cp[j] * f * (T(1) - f);
    dg[j] = dcc * i * (T(1) - g * g);
    dout[j] = dm[j] * tc * o * (T(1) - o);
    dc[j] = dcc * f;                                      // dL/dc_{t-1} through the additive path
  }
}

template <typename T>
void lstm_backward_impl(const T* dY, const T* gates, const T* Cs, const T* c0, const T* whh, const T* whr,
                        const int64_t* len, bool reverse, int Tn, int B, int H, int P, T* dh, T* dc, T* dG,
                        T* dHs, T* db) {
  const int G = 4 * H;
  const bool proj = whr != nullptr;
  std::vector<T> dhtot_buf(proj ? 0 : static_cast<size_t>(B) * P), dm_buf(proj ? static_cast<size_t>(B) * H : 0);
  const StepGemm<T> rec(whh, false, B, P, G);
  const StepGemm<T> project(whr, false, B, H, proj ? P : 1);
  for (int s = 0; s < Tn; ++s) {
    const int t = reverse ? s : Tn - 1 - s;                // the forward order, backwards
    const int64_t tBP = static_cast<int64_t>(t) * B * P;
    // dL/dh_t = dL/dy_t + (recurrent part carried in dh); padding rows get 0 (their output was a constant 0).
    T* dhtot = proj ? dHs + tBP : dhtot_buf.data();
    for (int b = 0; b < B; ++b) {
      T* d = dhtot + static_cast<int64_t>(b) * P;
      T* dhb = dh + static_cast<int64_t>(b) * P;
      if (!is_valid(len, t, b)) {
        std::memset(d, 0, sizeof(T) * P);
        continue;
      }
      const T* dy = dY + tBP + static_cast<int64_t>(b) * P;
      for (int j = 0; j < P; ++j) d[j] = dhb[j] + dy[j];
      std::memset(dhb, 0, sizeof(T) * P);                  // replaced by dG W_hh below (beta = 1 keeps padding rows)
    }
    const T* dm = dhtot;
    if (proj) {
      project(dhtot, T(0), dm_buf.data());                 // dL/dm_t = dL/dh_t W_hr
      dm = dm_buf.data();
    }
    const T* gt = gates + static_cast<int64_t>(t) * B * G;
    T* dgt = dG + static_cast<int64_t>(t) * B * G;
    const T* ct = Cs + static_cast<int64_t>(t) * B * H;
    for (int b = 0; b < B; ++b) {
      T* dgb = dgt + static_cast<int64_t>(b) * G;
      if (!is_valid(len, t, b)) {
        std::memset(dgb, 0, sizeof(T) * G);
        continue;
      }
      const int tp = prev_step(len, reverse, Tn, t, b);
      const T* cp = tp >= 0 ? Cs + (static_cast<int64_t>(tp) * B + b) * H : c0 + static_cast<int64_t>(b) * H;
      const T* gb = gt + static_cast<int64_t>(b) * G;
      lstm_cell_backward<T>(gb, gb + H, gb + 2 * H, gb + 3 * H, ct + static_cast<int64_t>(b) * H, cp,
                            dm + static_cast<int64_t>(b) * H, dc + static_cast<int64_t>(b) * H, dgb, dgb + H,
                            dgb + 2 * H, dgb + 3 * H, H);
    }
    rec(dgt, T(1), dh);                                    // dL/dh_{t-1} = dG_t W_hh
    add_rows(dgt, B, G, db);
  }
}

// Returns dG (T,B,4H) (pre-activation gate gradients, for the big weight/input GEMMs), dh0, dc0, with
// projections dH (T,B,P) = dL/dh_t for every step (for dW_hr), and db (4H,) = sum of dG over T and B.
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> lstm_backward(const Tensor& dY, const Tensor& dhn, const Tensor& dcn,
                                                                 const Tensor& gates, const Tensor& Cs, const Tensor& c0,
                                                                 const Tensor& w_hh, const std::optional<Tensor>& w_hr,
                                                                 const std::optional<Tensor>& lengths, bool reverse) {
  const int Tn = gates.size(0), B = gates.size(1), H = gates.size(2) / 4, P = dhn.size(1);
  const bool proj = w_hr.has_value() && w_hr->defined();
  Tensor dh = dhn.clone(), dc = dcn.clone();
  Tensor dG = at::empty_like(gates);
  Tensor dHs = at::empty({proj ? Tn : 0, B, P}, gates.options());
  Tensor db = at::zeros({4 * H}, gates.options());
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "rnnlab lstm_backward", [&] {
    lstm_backward_impl<scalar_t>(dY.data_ptr<scalar_t>(), gates.data_ptr<scalar_t>(), Cs.data_ptr<scalar_t>(),
                                 c0.data_ptr<scalar_t>(), w_hh.data_ptr<scalar_t>(),
                                 proj ? w_hr->data_ptr<scalar_t>() : nullptr, lengths_ptr(lengths), reverse, Tn, B,
                                 H, P, dh.data_ptr<scalar_t>(), dc.data_ptr<scalar_t>(), dG.data_ptr<scalar_t>(),
                                 proj ? dHs.data_ptr<scalar_t>() : nullptr, db.data_ptr<scalar_t>());
  });
  return {dG, dh, dc, dHs, db};
}

// ---- GRU ------------------------------------------------------------------------------------------------------

// One row of the GRU pointwise step: pre-activations (input part in g*, recurrent part in hw*) -> r, z, n in
// place; h -> h' (also written to y); hn = W_hn h + b_hn, which the reset gate multiplies (kept for backward).
template <typename T>
inline void gru_cell_forward(T* __restrict gr, T* __restrict gz, T* __restrict gn, const T* __restrict bir,
                             const T* __restrict biz, const T* __restrict bin, const T* __restrict hwr,
                             const T* __restrict hwz, const T* __restrict hwn, const T* __restrict br,
                             const T* __restrict bz, const T* __restrict bn, T* __restrict h, T* __restrict y,
                             T* __restrict hn_out, int H) {
  for (int j = 0; j < H; ++j) {
    const T r = Act<T>::sigmoid(gr[j] + bir[j] + hwr[j] + br[j]);
    const T z = Act<T>::sigmoid(gz[j] + biz[j] + hwz[j] + bz[j]);
    const T hn = hwn[j] + bn[j];
    const T n = Act<T>::tanh(gn[j] + bin[j] + r * hn);
    const T hnew = (T(1) - z) * n + z * h[j];
    h[j] = hnew;
    y[j] = hnew;
    gr[j] = r;
    gz[j] = z;
    gn[j] = n;
    hn_out[j] = hn;
  }
}

template <typename T>
void gru_forward_impl(T* xw, InputChunks<T>* chunks, const T* bih, const T* whh, const T* bhh, const int64_t* len,
                      bool reverse, int Tn, int B, int H, T* Y, T* h, T* HN) {
  const int G = 3 * H;
  std::vector<T> hw(static_cast<size_t>(B) * G), hnbuf(HN ? 0 : H);
  const StepGemm<T> rec(whh, true, B, G, H);
  for (int s = 0; s < Tn; ++s) {
    const int t = reverse ? Tn - 1 - s : s;
    rec(h, T(0), hw.data());                               // h_{t-1} W_hh^T (B, 3H)
    // x_t W_ih^T, then the activated r, z, n
    T* g = chunks ? chunks->gates(s, t) : xw + static_cast<int64_t>(t) * B * G;
    T* y = Y + static_cast<int64_t>(t) * B * H;
    for (int b = 0; b < B; ++b) {
      T* yb = y + static_cast<int64_t>(b) * H;
      if (!is_valid(len, t, b)) {
        std::memset(yb, 0, sizeof(T) * H);
        continue;
      }
      T* gb = g + static_cast<int64_t>(b) * G;
      const T* hwb = hw.data() + static_cast<int64_t>(b) * G;
      T* hnb = HN ? HN + (static_cast<int64_t>(t) * B + b) * H : hnbuf.data();
      gru_cell_forward<T>(gb, gb + H, gb + 2 * H, bih, bih + H, bih + 2 * H, hwb, hwb + H, hwb + 2 * H, bhh,
                          bhh + H, bhh + 2 * H, h + static_cast<int64_t>(b) * H, yb, hnb, H);
    }
  }
}

// xw (T,B,3H) is x W_ih^T; the biases are added in the gate loop.
// Returns Y (T,B,H), h_n and, when train, HN (T,B,H) = W_hn h_{t-1} + b_hn. xw (T,B,3H) is overwritten with r,z,n.
std::tuple<Tensor, Tensor, Tensor> gru_forward(Tensor xw, const Tensor& b_ih, const Tensor& h0, const Tensor& w_hh,
                                               const Tensor& b_hh,
                                               const std::optional<Tensor>& lengths, bool reverse, bool train) {
  const int Tn = xw.size(0), B = xw.size(1), H = xw.size(2) / 3;
  Tensor Y = at::empty({Tn, B, H}, xw.options());
  Tensor h = h0.clone();
  Tensor HN = at::empty({train ? Tn : 0, B, H}, xw.options());
  AT_DISPATCH_FLOATING_TYPES(xw.scalar_type(), "rnnlab gru_forward", [&] {
    gru_forward_impl<scalar_t>(xw.data_ptr<scalar_t>(), nullptr, b_ih.data_ptr<scalar_t>(), w_hh.data_ptr<scalar_t>(),
                               b_hh.data_ptr<scalar_t>(), lengths_ptr(lengths), reverse, Tn, B, H,
                               Y.data_ptr<scalar_t>(), h.data_ptr<scalar_t>(), train ? HN.data_ptr<scalar_t>() : nullptr);
  });
  return {Y, h, HN};
}

// Inference: x (T,B,I) and W_ih instead of a precomputed projection; returns Y and h_n, saves nothing.
std::tuple<Tensor, Tensor> gru_infer(const Tensor& x, const Tensor& w_ih, const Tensor& b_ih, const Tensor& h0,
                                     const Tensor& w_hh, const Tensor& b_hh, const std::optional<Tensor>& lengths,
                                     bool reverse) {
  const int Tn = x.size(0), B = x.size(1), I = x.size(2), H = w_ih.size(0) / 3;
  Tensor Y = at::empty({Tn, B, H}, x.options());
  Tensor h = h0.clone();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "rnnlab gru_infer", [&] {
    InputChunks<scalar_t> chunks(x.data_ptr<scalar_t>(), w_ih.data_ptr<scalar_t>(), reverse, Tn, B, I, 3 * H);
    gru_forward_impl<scalar_t>(nullptr, &chunks, b_ih.data_ptr<scalar_t>(), w_hh.data_ptr<scalar_t>(),
                               b_hh.data_ptr<scalar_t>(), lengths_ptr(lengths), reverse, Tn, B, H,
                               Y.data_ptr<scalar_t>(), h.data_ptr<scalar_t>(), nullptr);
  });
  return {Y, h};
}

// One row of the GRU pointwise derivative. dh holds dL/dh_t's recurrent part on entry and the direct part of
// dL/dh_{t-1} (z * dL/dh_t) on exit; the dG_h W_hh part is added by the caller's GEMM.
template <typename T>
inline void gru_cell_backward(const T* __restrict gr, const T* __restrict gz, const T* __restrict gn,
                              const T* __restrict hn, const T* __restrict hp, const T* __restrict dy,
                              T* __restrict dh, T* __restrict dxr, T* __restrict dxz, T* __restrict dxn,
                              T* __restrict dhr, T* __restrict dhz, T* __restrict dhn, int H) {
  for (int j = 0; j < H; ++j) {
    const T r = gr[j], z = gz[j], n = gn[j];
    const T d = dh[j] + dy[j];                            // dL/dh_t
    const T dnp = d * (T(1) - z) * (T(1) - n * n);        // through n = tanh(.)
    const T drp = dnp * hn[j] * r * (T(1) - r);
    const T dzp = d * (hp[j] - n) * z * (T(1) - z);
    dxr[j] = drp;
    dxz[j] = dzp;
    dxn[j] = dnp;
    dhr[j] = drp;
    dhz[j] = dzp;
    dhn[j] = dnp * r;                                     // the reset gate scales the recurrent n block
    dh[j] = d * z;                                        // direct path h' = ... + z h
  }
}

template <typename T>
void gru_backward_impl(const T* dY, const T* gates, const T* HN, const T* Y, const T* h0, const T* whh,
                       const int64_t* len, bool reverse, int Tn, int B, int H, T* dh, T* dGx, T* dHn, T* dbih,
                       T* dbhh) {
  const int G = 3 * H;
  const StepGemm<T> rec(whh, false, B, H, G);
  // dG_h differs from dG_x only in its n block, so only that block is kept for all steps (dHn, for dW_hh's n
  // rows); the full (B, 3H) dG_h of one step lives in this scratch for the recurrent GEMM and db_hh.
  std::vector<T> dgh_step(static_cast<size_t>(B) * G);
  T* dght = dgh_step.data();
  for (int s = 0; s < Tn; ++s) {
    const int t = reverse ? s : Tn - 1 - s;
    T* dgxt = dGx + static_cast<int64_t>(t) * B * G;
    for (int b = 0; b < B; ++b) {
      const int64_t tb = static_cast<int64_t>(t) * B + b;
      T* dgx = dgxt + static_cast<int64_t>(b) * G;
      T* dgh = dght + static_cast<int64_t>(b) * G;
      if (!is_valid(len, t, b)) {
        std::memset(dgx, 0, sizeof(T) * G);
        std::memset(dgh, 0, sizeof(T) * G);
        std::memset(dHn + tb * H, 0, sizeof(T) * H);
        continue;
      }
      const int tp = prev_step(len, reverse, Tn, t, b);
      const T* hp = tp >= 0 ? Y + (static_cast<int64_t>(tp) * B + b) * H : h0 + static_cast<int64_t>(b) * H;
      const T* gb = gates + tb * G;
      gru_cell_backward<T>(gb, gb + H, gb + 2 * H, HN + tb * H, hp, dY + tb * H, dh + static_cast<int64_t>(b) * H,
                           dgx, dgx + H, dgx + 2 * H, dgh, dgh + H, dgh + 2 * H, H);
    }
    rec(dght, T(1), dh);                                   // += dG_h W_hh (padding rows: dG = 0, dh carried)
    add_rows(dgxt, B, G, dbih);
    add_rows(dght, B, G, dbhh);
    for (int b = 0; b < B; ++b)
      if (is_valid(len, t, b))
        std::memcpy(dHn + (static_cast<int64_t>(t) * B + b) * H, dght + static_cast<int64_t>(b) * G + 2 * H,
                    sizeof(T) * H);
  }
}

// Returns dGx (T,B,3H) (gradient of x W_ih^T + b_ih), dHn (T,B,H) (of W_hn h + b_hn; the r, z blocks of the
// gradient of h W_hh^T + b_hh are dGx's), dh0, db_ih, db_hh.
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> gru_backward(const Tensor& dY, const Tensor& dhn,
                                                                const Tensor& gates, const Tensor& HN, const Tensor& Y,
                                                                const Tensor& h0, const Tensor& w_hh,
                                                                const std::optional<Tensor>& lengths,
                                                bool reverse) {
  const int Tn = gates.size(0), B = gates.size(1), H = gates.size(2) / 3;
  Tensor dh = dhn.clone();
  Tensor dGx = at::empty_like(gates), dHn = at::empty({Tn, B, H}, gates.options());
  Tensor dbih = at::zeros({3 * H}, gates.options()), dbhh = at::zeros({3 * H}, gates.options());
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "rnnlab gru_backward", [&] {
    gru_backward_impl<scalar_t>(dY.data_ptr<scalar_t>(), gates.data_ptr<scalar_t>(), HN.data_ptr<scalar_t>(),
                                Y.data_ptr<scalar_t>(), h0.data_ptr<scalar_t>(), w_hh.data_ptr<scalar_t>(),
                                lengths_ptr(lengths), reverse, Tn, B, H, dh.data_ptr<scalar_t>(),
                                dGx.data_ptr<scalar_t>(), dHn.data_ptr<scalar_t>(), dbih.data_ptr<scalar_t>(),
                                dbhh.data_ptr<scalar_t>());
  });
  return {dGx, dHn, dh, dbih, dbhh};
}

// ---- Elman RNN ------------------------------------------------------------------------------------------------

template <typename T>
void rnn_forward_impl(T* xw, const T* bias, const T* whh, bool relu, const int64_t* len, bool reverse, int Tn, int B,
                      int H, T* h) {
  const StepGemm<T> rec(whh, true, B, H, H);
  for (int s = 0; s < Tn; ++s) {
    const int t = reverse ? Tn - 1 - s : s;
    T* y = xw + static_cast<int64_t>(t) * B * H;            // x_t W_ih^T + b, becomes the output in place
    rec(h, T(1), y);
    for (int b = 0; b < B; ++b) {
      T* yb = y + static_cast<int64_t>(b) * H;
      if (!is_valid(len, t, b)) {
        std::memset(yb, 0, sizeof(T) * H);
        continue;
      }
      T* hb = h + static_cast<int64_t>(b) * H;
      if (relu) {
        for (int j = 0; j < H; ++j) {
          const T v = yb[j] + bias[j];
          hb[j] = yb[j] = v > T(0) ? v : T(0);
        }
      } else {
        for (int j = 0; j < H; ++j) hb[j] = yb[j] = Act<T>::tanh(yb[j] + bias[j]);
      }
    }
  }
}

// xw (T,B,H) is x W_ih^T and becomes the output Y in place; bias (H,) = b_ih + b_hh. Returns h_n.
Tensor rnn_forward(Tensor xw, const Tensor& bias, const Tensor& h0, const Tensor& w_hh, bool relu,
                   const std::optional<Tensor>& lengths, bool reverse) {
  const int Tn = xw.size(0), B = xw.size(1), H = xw.size(2);
  Tensor h = h0.clone();
  AT_DISPATCH_FLOATING_TYPES(xw.scalar_type(), "rnnlab rnn_forward", [&] {
    rnn_forward_impl<scalar_t>(xw.data_ptr<scalar_t>(), bias.data_ptr<scalar_t>(), w_hh.data_ptr<scalar_t>(), relu,
                               lengths_ptr(lengths), reverse, Tn, B, H, h.data_ptr<scalar_t>());
  });
  return h;
}

template <typename T>
void rnn_backward_impl(const T* dY, const T* Y, const T* whh, bool relu, const int64_t* len, bool reverse, int Tn,
                       int B, int H, T* dh, T* dG, T* db) {
  const StepGemm<T> rec(whh, false, B, H, H);
  for (int s = 0; s < Tn; ++s) {
    const int t = reverse ? s : Tn - 1 - s;
    T* dgt = dG + static_cast<int64_t>(t) * B * H;
    for (int b = 0; b < B; ++b) {
      const int64_t off = (static_cast<int64_t>(t) * B + b) * H;
      T* dg = dgt + static_cast<int64_t>(b) * H;
      if (!is_valid(len, t, b)) {
        std::memset(dg, 0, sizeof(T) * H);
        continue;
      }
      T* dhb = dh + static_cast<int64_t>(b) * H;
      const T* y = Y + off;
      const T* dy = dY + off;
      if (relu) {
        for (int j = 0; j < H; ++j) dg[j] = y[j] > T(0) ? dhb[j] + dy[j] : T(0);
      } else {
        for (int j = 0; j < H; ++j) dg[j] = (dhb[j] + dy[j]) * (T(1) - y[j] * y[j]);
      }
      std::memset(dhb, 0, sizeof(T) * H);
    }
    rec(dgt, T(1), dh);
    add_rows(dgt, B, H, db);
  }
}

// Returns dG (T,B,H) (gradient of the pre-activation), dh0 and db (H,).
std::tuple<Tensor, Tensor, Tensor> rnn_backward(const Tensor& dY, const Tensor& dhn, const Tensor& Y,
                                                const Tensor& w_hh, bool relu, const std::optional<Tensor>& lengths,
                                                bool reverse) {
  const int Tn = Y.size(0), B = Y.size(1), H = Y.size(2);
  Tensor dh = dhn.clone();
  Tensor dG = at::empty_like(Y);
  Tensor db = at::zeros({H}, Y.options());
  AT_DISPATCH_FLOATING_TYPES(Y.scalar_type(), "rnnlab rnn_backward", [&] {
    rnn_backward_impl<scalar_t>(dY.data_ptr<scalar_t>(), Y.data_ptr<scalar_t>(), w_hh.data_ptr<scalar_t>(), relu,
                                lengths_ptr(lengths), reverse, Tn, B, H, dh.data_ptr<scalar_t>(),
                                dG.data_ptr<scalar_t>(), db.data_ptr<scalar_t>());
  });
  return {dG, dh, db};
}

}  // namespace

TORCH_LIBRARY(rnnlab_fused, m) {
  m.def("lstm_forward(Tensor(a!) xw, Tensor bias, Tensor h0, Tensor c0, Tensor w_hh, Tensor? w_hr, Tensor? lengths, "
        "bool reverse, bool train) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("lstm_backward(Tensor dY, Tensor dhn, Tensor dcn, Tensor gates, Tensor C, Tensor c0, Tensor w_hh, "
        "Tensor? w_hr, Tensor? lengths, bool reverse) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("lstm_infer(Tensor x, Tensor w_ih, Tensor bias, Tensor h0, Tensor c0, Tensor w_hh, Tensor? w_hr, "
        "Tensor? lengths, bool reverse) -> (Tensor, Tensor, Tensor)");
  m.def("gru_infer(Tensor x, Tensor w_ih, Tensor b_ih, Tensor h0, Tensor w_hh, Tensor b_hh, Tensor? lengths, "
        "bool reverse) -> (Tensor, Tensor)");
  m.def("gru_forward(Tensor(a!) xw, Tensor b_ih, Tensor h0, Tensor w_hh, Tensor b_hh, Tensor? lengths, bool reverse, "
        "bool train) -> (Tensor, Tensor, Tensor)");
  m.def("gru_backward(Tensor dY, Tensor dhn, Tensor gates, Tensor HN, Tensor Y, Tensor h0, Tensor w_hh, "
        "Tensor? lengths, bool reverse) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("rnn_forward(Tensor(a!) xw, Tensor bias, Tensor h0, Tensor w_hh, bool relu, Tensor? lengths, "
        "bool reverse) -> Tensor");
  m.def("rnn_backward(Tensor dY, Tensor dhn, Tensor Y, Tensor w_hh, bool relu, Tensor? lengths, bool reverse) "
        "-> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(rnnlab_fused, CPU, m) {
  m.impl("lstm_forward", &lstm_forward);
  m.impl("lstm_backward", &lstm_backward);
  m.impl("gru_forward", &gru_forward);
  m.impl("lstm_infer", &lstm_infer);
  m.impl("gru_infer", &gru_infer);
  m.impl("gru_backward", &gru_backward);
  m.impl("rnn_forward", &rnn_forward);
  m.impl("rnn_backward", &rnn_backward);
}
