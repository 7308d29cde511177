// Compiled step loops of the peephole LSTM (Gers & Schmidhuber 2000; the maths and the autograd glue are in
// rnnlab/kernels/peephole.py, the reference step is rnnlab.cellspec._peephole_step).
//
// Same recipe as the plain LSTM in fused.cpp: the input projection x W_ih^T of every step is one GEMM in Python;
// per step one recurrent GEMM (gate blocks i,f,g,o concatenated) accumulated into that projection, then one
// vectorizable pointwise loop that also applies the diagonal peephole weights w_ci, w_cf (on c_{t-1}) and w_co
// (on the new cell c'_t). The backward per step is the pointwise derivative and dh_{t-1} = dG_t W_hh; the
// peephole weight gradients are summed per step while the step's rows are in cache; dX, dW_ih, dW_hh stay in
// Python as GEMMs over all T*B rows.
//
// Options (the layer's, see rnnlab.cellspec.SequenceRun):
//   h_mask (B,H): recurrent dropout, the GEMM sees h_{t-1} * h_mask (the state itself is not masked);
//   KH, KC (T,B,H): zoneout, h_t = kh*h_{t-1} + (1-kh)*m_t and c_t = kc*c_{t-1} + (1-kc)*c'_t, where
//     c'_t = f c_{t-1} + i g and m_t = o tanh(c'_t) are the cell's new values; either may be absent (k = 0);
//   dCs (T,B,H), dGates (T,B,4H): gradients of the recorded cell states and gate activations (record/gates),
//     added to dL/dc_t and to dL/d{i,f,g,o} of each step.
// Lengths and reverse as fused.cpp (is_valid / prev_step): padding steps keep the state and output zeros.
#include "common.h"

namespace {

using namespace rnnlab_kernels;

// One row of the forward step, in place. On entry g* hold the pre-activations without bias, h and c the state
// of the previous step; on exit g* hold i, f, g, o and h, c (and y) the new state.
//   i = σ(a_i + w_ci c),  f = σ(a_f + w_cf c),  g = tanh(a_g),  c' = f c + i g,  o = σ(a_o + w_co c'),
//   m = o tanh(c');  with zoneout c <- kc c + (1-kc) c',  h <- kh h + (1-kh) m;  else c <- c', h <- m.
template <typename T, bool Zone>
inline void peephole_cell_forward(T* __restrict gi, T* __restrict gf, T* __restrict gg, T* __restrict go,
                                  const T* __restrict bi, const T* __restrict bf, const T* __restrict bg,
                                  const T* __restrict bo, const T* __restrict wci, const T* __restrict wcf,
                                  const T* __restrict wco, const T* __restrict kh, const T* __restrict kc,
                                  T* __restrict h, T* __restrict c, T* __restrict y, int H) {
  for (int j = 0; j < H; ++j) {
    const T cp = c[j];
    const T i = Act<T>::sigmoid(gi[j] + bi[j] + wci[j] * cp);
    const T f = Act<T>::sigmoid(gf[j] + bf[j] + wcf[j] * cp);
    const T g = Act<T>::tanh(gg[j] + bg[j]);
    const T cn = f * cp + i * g;
    const T o = Act<T>::sigmoid(go[j] + bo[j] + wco[j] * cn);  // the output gate sees the new cell
    const T m = o * Act<T>::tanh(cn);
    if constexpr (Zone) {
      c[j] = kc[j] * cp + (T(1) - kc[j]) * cn;
      h[j] = y[j] = kh[j] * h[j] + (T(1) - kh[j]) * m;
    } else {
      c[j] = cn;
      h[j] = y[j] = m;
    }
    gi[j] = i;
    gf[j] = f;
    gg[j] = g;
    go[j] = o;
  }
}

// xw (T,B,4H) (or chunks, for inference) holds x W_ih^T; bias (4H,) = b_ih + b_hh; wc (3,H) = w_ci, w_cf, w_co.
// Y (T,B,H) receives h_t; h, c (B,H) run from the initial to the final state; Cs (T,B,H) (training) every c_t.
template <typename T, bool Zone>
void peephole_forward_impl(T* xw, InputChunks<T>* chunks, const T* bias, const T* whh, const T* wc,
                           const T* hmask, const T* KH, const T* KC, const int64_t* len, bool reverse, int Tn, int B,
                           int H, T* Y, T* h, T* c, T* Cs) {
  const int G = 4 * H;
  const int64_t BH = static_cast<int64_t>(B) * H;
  const StepGemm<T> rec(whh, true, B, G, H, Tn);
  std::vector<T> hm(hmask ? BH : 0);                      // h * mask, which the GEMM multiplies
  const std::vector<T> zeros(Zone ? H : 0);               // the keep of a state without zoneout
  for (int s = 0; s < Tn; ++s) {
    const int t = reverse ? Tn - 1 - s : s;
    T* g = chunks ? chunks->gates(s, t) : xw + static_cast<int64_t>(t) * B * G;  // (B, 4H)
    rec(masked_h<T>(h, hmask, BH, hm.data()), T(1), g);   // += (h_{t-1} [* mask]) W_hh^T
    T* y = Y + t * BH;                                    // (B, H)
    for (int b = 0; b < B; ++b) {
      const int64_t rb = static_cast<int64_t>(b) * H;
      if (!is_valid(len, t, b)) {
        std::memset(y + rb, 0, sizeof(T) * H);
        continue;
      }
      T* gb = g + static_cast<int64_t>(b) * G;
      const int64_t tb = static_cast<int64_t>(t) * B + b;
      const T* kh = Zone ? keep_row(KH, tb, H, zeros) : nullptr;
      const T* kc = Zone ? keep_row(KC, tb, H, zeros) : nullptr;
      peephole_cell_forward<T, Zone>(gb, gb + H, gb + 2 * H, gb + 3 * H, bias, bias + H, bias + 2 * H,
                                     bias + 3 * H, wc, wc + H, wc + 2 * H, kh, kc, h + rb, c + rb, y + rb, H);
    }
    if (Cs) std::memcpy(Cs + t * BH, c, sizeof(T) * BH);  // padding rows hold the carried state
  }
}

template <typename T>
void peephole_forward_dispatch(T* xw, InputChunks<T>* chunks, const T* bias, const T* whh, const T* wc,
                               const T* hmask, const T* KH, const T* KC, const int64_t* len, bool reverse, int Tn,
                               int B, int H, T* Y, T* h, T* c, T* Cs) {
  if (KH || KC)  // zoneout on either state (the other's keep is a row of zeros)
    peephole_forward_impl<T, true>(xw, chunks, bias, whh, wc, hmask, KH, KC, len, reverse, Tn, B, H, Y, h, c, Cs);
  else
    peephole_forward_impl<T, false>(xw, chunks, bias, whh, wc, hmask, KH, KC, len, reverse, Tn, B, H, Y, h, c, Cs);
}


// Training (or a recorded run): xw (T,B,4H) = x W_ih^T is overwritten with the activations i, f, g, o.
// Returns Y (T,B,H), h_n, c_n and, when train, Cs (T,B,H) = c_t of every step (padding steps: the carried c).
std::tuple<Tensor, Tensor, Tensor, Tensor> peephole_forward(Tensor xw, const Tensor& bias, const Tensor& h0,
                                                            const Tensor& c0, const Tensor& w_hh, const Tensor& wc,
                                                            const std::optional<Tensor>& h_mask,
                                                            const std::optional<Tensor>& keep_h,
                                                            const std::optional<Tensor>& keep_c,
                                                            const std::optional<Tensor>& lengths, bool reverse,
                                                            bool train) {
  const int Tn = xw.size(0), B = xw.size(1), H = xw.size(2) / 4;
  Tensor Y = workspace({Tn, B, H}, xw.options());
  Tensor h = h0.clone(), c = c0.clone();
  Tensor Cs = workspace({train ? Tn : 0, B, H}, xw.options());
  AT_DISPATCH_FLOATING_TYPES(xw.scalar_type(), "rnnlab peephole_forward", [&] {
    peephole_forward_dispatch<scalar_t>(xw.data_ptr<scalar_t>(), nullptr, bias.data_ptr<scalar_t>(),
                                        w_hh.data_ptr<scalar_t>(), wc.data_ptr<scalar_t>(), opt_ptr<scalar_t>(h_mask),
                                        opt_ptr<scalar_t>(keep_h), opt_ptr<scalar_t>(keep_c), lengths_ptr(lengths),
                                        reverse, Tn, B, H, Y.data_ptr<scalar_t>(), h.data_ptr<scalar_t>(),
                                        c.data_ptr<scalar_t>(), train ? Cs.data_ptr<scalar_t>() : nullptr);
  });
  return {Y, h, c, Cs};
}

// Inference: x (T,B,I) and W_ih instead of a precomputed projection (projected a few steps at a time into a
// cache-sized buffer); returns Y, h_n, c_n and saves nothing.
std::tuple<Tensor, Tensor, Tensor> peephole_infer(const Tensor& x, const Tensor& w_ih, const Tensor& bias,
                                                  const Tensor& h0, const Tensor& c0, const Tensor& w_hh,
                                                  const Tensor& wc, const std::optional<Tensor>& h_mask,
                                                  const std::optional<Tensor>& keep_h,
                                                  const std::optional<Tensor>& keep_c,
                                                  const std::optional<Tensor>& lengths, bool reverse) {
  const int Tn = x.size(0), B = x.size(1), I = x.size(2), H = w_ih.size(0) / 4;
  Tensor Y = workspace({Tn, B, H}, x.options());
  Tensor h = h0.clone(), c = c0.clone();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "rnnlab peephole_infer", [&] {
    InputChunks<scalar_t> chunks(x.data_ptr<scalar_t>(), w_ih.data_ptr<scalar_t>(), reverse, Tn, B, I, 4 * H);
    peephole_forward_dispatch<scalar_t>(nullptr, &chunks, bias.data_ptr<scalar_t>(), w_hh.data_ptr<scalar_t>(),
                                        wc.data_ptr<scalar_t>(), opt_ptr<scalar_t>(h_mask), opt_ptr<scalar_t>(keep_h),
                                        opt_ptr<scalar_t>(keep_c), lengths_ptr(lengths), reverse, Tn, B, H,
                                        Y.data_ptr<scalar_t>(), h.data_ptr<scalar_t>(), c.data_ptr<scalar_t>(),
                                        nullptr);
  });
  return {Y, h, c};
}

// One row of the backward step. On entry dh, dc hold the recurrent parts of dL/dh_t and dL/dc_t; on exit the
// direct parts of dL/dh_{t-1} (kh dh_t with zoneout, else 0: the caller adds (dG W_hh) [* mask]) and all of
// dL/dc_{t-1}. c' = f c_{t-1} + i g is recomputed from the saved gates (cheaper than storing it).
//   dh_t = dh + dy,  dm = (1-kh) dh_t,  dc_t = dc [+ dCs],  dc' = (1-kc) dc_t
//   do = (dm tanh(c') [+ dO]) o (1-o)                         (pre-activation gradients: do, di, df, dg)
//   dc' += dm o (1 - tanh²(c')) + do w_co                     (through m and the output gate's peephole)
//   di = (dc' g [+ dI]) i (1-i),  df = (dc' c_{t-1} [+ dF]) f (1-f),  dg = (dc' i [+ dG]) (1-g²)
//   dc_{t-1} = kc dc_t + dc' f + di w_ci + df w_cf,  dh_{t-1} = kh dh_t (+ the caller's GEMM)
//   dw_ci += di c_{t-1},  dw_cf += df c_{t-1},  dw_co += do c'
template <typename T, bool Zone, bool Extra>
inline void peephole_cell_backward(const T* __restrict gi, const T* __restrict gf, const T* __restrict gg,
                                   const T* __restrict go, const T* __restrict cp, const T* __restrict dy,
                                   const T* __restrict dcs, const T* __restrict dgs, const T* __restrict kh,
                                   const T* __restrict kc, const T* __restrict wci, const T* __restrict wcf,
                                   const T* __restrict wco, T* __restrict dh, T* __restrict dc, T* __restrict di,
                                   T* __restrict df, T* __restrict dg, T* __restrict dout, T* __restrict dwci,
                                   T* __restrict dwcf, T* __restrict dwco, int H) {
  for (int j = 0; j < H; ++j) {
    const T i = gi[j], f = gf[j], g = gg[j], o = go[j], c0 = cp[j];
    const T cn = f * c0 + i * g;
    const T tc = Act<T>::tanh(cn);
    const T dht = dh[j] + dy[j];
    T dct = dc[j];
    if constexpr (Extra) dct += dcs[j];
    T dm = dht, dcn = dct;
    if constexpr (Zone) {
      dm = (T(1) - kh[j]) * dht;
      dcn = (T(1) - kc[j]) * dct;
    }
    T do_act = dm * tc, di_act, df_act, dg_act;
    if constexpr (Extra) do_act += dgs[3 * H + j];
    const T dop = do_act * o * (T(1) - o);
    dcn += dm * o * (T(1) - tc * tc) + dop * wco[j];
    di_act = dcn * g;
    df_act = dcn * c0;
    dg_act = dcn * i;
    if constexpr (Extra) {
      di_act += dgs[j];
      df_act += dgs[H + j];
      dg_act += dgs[2 * H + j];
    }
    const T dip = di_act * i * (T(1) - i);
    const T dfp = df_act * f * (T(1) - f);
    di[j] = dip;
    df[j] = dfp;
    dg[j] = dg_act * (T(1) - g * g);
    dout[j] = dop;
    dwci[j] += dip * c0;
    dwcf[j] += dfp * c0;
    dwco[j] += dop * cn;
    T dcp = dcn * f + dip * wci[j] + dfp * wcf[j];
    if constexpr (Zone) {
      dcp += kc[j] * dct;
      dh[j] = kh[j] * dht;
    } else {
      dh[j] = T(0);
    }
    dc[j] = dcp;
  }
}

template <typename T, bool Zone, bool Extra>
void peephole_backward_impl(const T* dY, const T* gates, const T* Cs, const T* c0, const T* whh, const T* wc,
                            const T* hmask, const T* KH, const T* KC, const T* dCs, const T* dGates,
                            const int64_t* len, bool reverse, int Tn, int B, int H, T* dh, T* dc, T* dG, T* db,
                            T* dwc) {
  const int G = 4 * H;
  const int64_t BH = static_cast<int64_t>(B) * H;
  const StepGemm<T> rec(whh, false, B, H, G, Tn);
  std::vector<T> rec_buf(hmask ? BH : 0);                 // dG_t W_hh before the mask
  const std::vector<T> zeros(Zone ? H : 0);               // the keep of a state without zoneout
  for (int s = 0; s < Tn; ++s) {
    const int t = reverse ? s : Tn - 1 - s;               // the forward order, backwards
    T* dgt = dG + static_cast<int64_t>(t) * B * G;         // (B, 4H)
    for (int b = 0; b < B; ++b) {
      const int64_t rb = static_cast<int64_t>(b) * H, tb = t * BH + rb, row = static_cast<int64_t>(t) * B + b;
      T* dgb = dgt + static_cast<int64_t>(b) * G;
      if (!is_valid(len, t, b)) {                          // the state was carried: dh, dc pass through
        std::memset(dgb, 0, sizeof(T) * G);
        continue;
      }
      const int tp = prev_step(len, reverse, Tn, t, b);
      const T* cp = tp >= 0 ? Cs + tp * BH + rb : c0 + rb;
      const T* gb = gates + row * G;
      peephole_cell_backward<T, Zone, Extra>(
          gb, gb + H, gb + 2 * H, gb + 3 * H, cp, dY + tb, Extra ? dCs + tb : nullptr,
          Extra ? dGates + row * G : nullptr, Zone ? keep_row(KH, row, H, zeros) : nullptr,
          Zone ? keep_row(KC, row, H, zeros) : nullptr, wc, wc + H, wc + 2 * H, dh + rb, dc + rb, dgb, dgb + H,
          dgb + 2 * H, dgb + 3 * H, dwc, dwc + H, dwc + 2 * H, H);
    }
    recurrent_grad<T>(rec, dgt, hmask, rec_buf.data(), BH, dh);  // dL/dh_{t-1} += (dG_t W_hh) [* mask]
    add_rows(dgt, B, G, db);
  }
}

// dCs / dGates: optional gradients of the recorded c_t and i, f, g, o (both given or neither).
// Returns dG (T,B,4H) (pre-activation gradients, for the big GEMMs), dh0, dc0, db (4H,) and dwc (3,H).
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> peephole_backward(
    const Tensor& dY, const Tensor& dhn, const Tensor& dcn, const Tensor& gates, const Tensor& Cs, const Tensor& c0,
    const Tensor& w_hh, const Tensor& wc, const std::optional<Tensor>& h_mask, const std::optional<Tensor>& keep_h,
    const std::optional<Tensor>& keep_c, const std::optional<Tensor>& dCs, const std::optional<Tensor>& dGates,
    const std::optional<Tensor>& lengths, bool reverse) {
  const int Tn = gates.size(0), B = gates.size(1), H = gates.size(2) / 4;
  Tensor dh = dhn.clone(), dc = dcn.clone();
  Tensor dG = workspace(gates.sizes(), gates.options());
  Tensor db = at::zeros({4 * H}, gates.options());
  Tensor dwc = at::zeros({3, H}, gates.options());
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "rnnlab peephole_backward", [&] {
    using T = scalar_t;
    const T* KH = opt_ptr<T>(keep_h);
    const T* KC = opt_ptr<T>(keep_c);
    const T* dcs = opt_ptr<T>(dCs);
    auto run = [&](auto zone, auto extra) {
      peephole_backward_impl<T, decltype(zone)::value, decltype(extra)::value>(
          dY.data_ptr<T>(), gates.data_ptr<T>(), Cs.data_ptr<T>(), c0.data_ptr<T>(), w_hh.data_ptr<T>(),
          wc.data_ptr<T>(), opt_ptr<T>(h_mask), KH, KC, dcs, opt_ptr<T>(dGates),
          lengths_ptr(lengths), reverse, Tn, B, H, dh.data_ptr<T>(), dc.data_ptr<T>(), dG.data_ptr<T>(),
          db.data_ptr<T>(), dwc.data_ptr<T>());
    };
    using Yes = std::true_type;
    using No = std::false_type;
    const bool zone = KH || KC;
    if (zone && dcs) run(Yes{}, Yes{});
    else if (zone) run(Yes{}, No{});
    else if (dcs) run(No{}, Yes{});
    else run(No{}, No{});
  });
  return {dG, dh, dc, db, dwc};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(rnnlab_fused, m) {
  m.def("peephole_forward(Tensor(a!) xw, Tensor bias, Tensor h0, Tensor c0, Tensor w_hh, Tensor wc, Tensor? h_mask, "
        "Tensor? keep_h, Tensor? keep_c, Tensor? lengths, bool reverse, bool train) "
        "-> (Tensor, Tensor, Tensor, Tensor)");
  m.def("peephole_infer(Tensor x, Tensor w_ih, Tensor bias, Tensor h0, Tensor c0, Tensor w_hh, Tensor wc, "
        "Tensor? h_mask, Tensor? keep_h, Tensor? keep_c, Tensor? lengths, bool reverse) -> (Tensor, Tensor, Tensor)");
  m.def("peephole_backward(Tensor dY, Tensor dhn, Tensor dcn, Tensor gates, Tensor Cs, Tensor c0, Tensor w_hh, "
        "Tensor wc, Tensor? h_mask, Tensor? keep_h, Tensor? keep_c, Tensor? dCs, Tensor? dGates, Tensor? lengths, "
        "bool reverse) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(rnnlab_fused, CPU, m) {
  m.impl("peephole_forward", &peephole_forward);
  m.impl("peephole_infer", &peephole_infer);
  m.impl("peephole_backward", &peephole_backward);
}
