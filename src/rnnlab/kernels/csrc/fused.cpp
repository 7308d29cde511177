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
// Each loop (the *_impl functions) runs B rows of a batch of S (its buffers' pointers start at its first row, and
// a step's rows are S apart): with more than one thread each thread runs its own slice of the batch's sequences
// (batch_slices in common.h); one thread runs all of them, B = S.
//
// Only the BLAS symbols torch itself links (sgemm_/dgemm_, MKL on x86 wheels) and ATen headers are used, so the
// build needs nothing beyond a C++ compiler; if it fails, the kernels in fused.py decline and every run takes the
// reference loop.
//
// One op per cell and pass (forward, backward; and a cache-resident inference forward without options): the
// layer options and the gradient sink are its trailing arguments, None/false when off, and an output that is not
// asked for is None (nothing allocated).
#include "common.h"

#include <ATen/ops/div.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/lt.h>
#include <ATen/ops/masked_fill.h>
#include <ATen/ops/softmax.h>
#include <ATen/ops/topk.h>

#include <c10/util/accumulate.h>

#include <limits>
#include <mutex>
#include <type_traits>

namespace rnnlab_kernels {

// ---- workspaces -----------------------------------------------------------------------------------------------
//
// Every buffer of kPooledBytes or more that the ops of every kernel file allocate (the training gates, which the input
// projection is written into, the outputs, the saved states, dG) is a workspace (common.h declares this one definition
// for all of them): kept here between calls and handed out again once no tensor uses it but the pool's own (its
// storage's use count is 1; a tensor saved for a backward, kept by a sink or held by the caller keeps its buffer out of
// reuse). malloc gives such buffers back to the kernel between calls: glibc serves 32 MiB or more with a fresh mmap
// every time (its mmap threshold stops growing there), and smaller ones often enough; the kernel then zero-fills the
// buffer page by page when the loop first writes it. At the main job's layer (S5) that was 16,384 page faults per
// training step for the gates and dG alone, ~8% of the S5 forward+backward on the AMD EPYC of docs/performance.md
// (perf: clear_page and the fault path), and 3,200-6,400 at S1. At most kWorkspaces buffers and kWorkspaceBytes are
// kept: a new one replaces unused ones of other sizes, or is not kept. rnnlab.kernels.release_workspaces() lets go
// of them all (the op release_workspaces below).
constexpr int64_t kPooledBytes = int64_t{4} << 20;
constexpr size_t kWorkspaces = 16;
constexpr int64_t kWorkspaceBytes = int64_t{1} << 30;

namespace {
struct Workspaces {
  std::mutex mutex;
  std::vector<at::Tensor> buffers;  // flat
};
Workspaces& workspaces() {
  static auto* pool = new Workspaces();  // never destroyed (no teardown order at exit)
  return *pool;
}
bool unused(const at::Tensor& t) { return t.storage().use_count() == 1; }
}  // namespace

at::Tensor workspace(at::IntArrayRef sizes, const at::TensorOptions& options) {
  const int64_t n = c10::multiply_integers(sizes), bytes = n * static_cast<int64_t>(options.dtype().itemsize());
  if (bytes < kPooledBytes || bytes > kWorkspaceBytes || options.device().type() != at::kCPU)
    return at::empty(sizes, options);
  Workspaces& ws = workspaces();
  std::vector<at::Tensor>& pool = ws.buffers;
  std::lock_guard<std::mutex> lock(ws.mutex);
  auto it = std::find_if(pool.begin(), pool.end(), [&](const at::Tensor& t) {
    return unused(t) && t.numel() == n && t.dtype() == options.dtype();
  });
  if (it == pool.end()) {
    int64_t kept = bytes;
    for (const at::Tensor& t : pool) kept += static_cast<int64_t>(t.nbytes());
    // make room: drop unused buffers (of other sizes), oldest first
    for (auto d = pool.begin(); d != pool.end() && (pool.size() >= kWorkspaces || kept > kWorkspaceBytes);) {
      if (unused(*d)) {
        kept -= static_cast<int64_t>(d->nbytes());
        d = pool.erase(d);
      } else {
        ++d;
      }
    }
    if (pool.size() >= kWorkspaces || kept > kWorkspaceBytes) return at::empty(sizes, options);  // all in use
    it = pool.insert(pool.end(), at::empty({n}, options));
  }
  // a new tensor on the buffer's storage (not a view: nothing ties it to the pool's tensor but the storage)
  return at::empty({0}, options).set_(it->storage(), 0, sizes);
}

}  // namespace rnnlab_kernels

namespace {

using namespace rnnlab_kernels;

// The op behind common.workspace: the buffers Python's GEMMs write into (the training gates of common.projection,
// dX of common.input_grads) and common.grad_or_zeros' dense copy of an incoming gradient.
Tensor workspace_op(at::IntArrayRef size, at::ScalarType dtype) {
  return workspace(size, at::device(at::kCPU).dtype(dtype));
}

// The op behind rnnlab.kernels.release_workspaces: lets go of every workspace, the unused ones freed now, the ones
// a tensor still uses when that tensor goes. Returns the bytes freed now.
int64_t release_workspaces() {
  Workspaces& ws = workspaces();
  std::lock_guard<std::mutex> lock(ws.mutex);
  int64_t freed = 0;
  for (const at::Tensor& t : ws.buffers)
    if (unused(t)) freed += static_cast<int64_t>(t.nbytes());
  ws.buffers.clear();
  return freed;
}

// ---- the layer options ---------------------------------------------------------------------------------------
//
// The same loops run the options of rnnlab's layers when instantiated with EX = true (a template flag, so the
// plain instantiation, which a run with every option off takes, has no option code at all): every pointer below
// may be null (option off), and is tested once per step or row, never per element.
//   recurrent dropout (Gal & Ghahramani 2016): h_{t-1} * mask enters W_hh; the backward multiplies the GEMM part
//     of dL/dh_{t-1} by the same mask: dh_{t-1} = (dG_t W_hh) * mask + (direct terms).
//   zoneout (Krueger et al. 2017): s_t = k_t * s_{t-1} + (1 - k_t) * s~_t for a state s with new value s~_t; so
//     dL/ds~_t = (1 - k_t) dL/ds_t and dL/ds_{t-1} gets k_t dL/ds_t. The layer output is the blended h_t.
//   recording: the gates (and the LSTM's c_t) are outputs; their incoming gradients are added where the gate
//     (state) enters the chain rule, e.g. di_pre = (dcr g + dL/di_ext) i (1 - i).
//   sink: the backward also writes the total dL/dh_t (and dL/dc_t) of every step, zeros at padding steps.
// The options both passes read: null when off.
template <typename T>
struct StateOptions {
  const T* h_mask = nullptr;  // (B, P) recurrent dropout mask
  const T* keep_h = nullptr;  // (T, B, P) zoneout keep of h
  const T* keep_c = nullptr;  // (T, B, H) zoneout keep of c (LSTM)
  StateOptions() = default;
  StateOptions(const std::optional<Tensor>& m, const std::optional<Tensor>& kh,
               const std::optional<Tensor>& kc = std::nullopt)
      : h_mask(opt_ptr<T>(m)), keep_h(opt_ptr<T>(kh)), keep_c(opt_ptr<T>(kc)) {}
  bool any() const { return h_mask || keep_h || keep_c; }
  // These options for the batch's rows from b0 on (batch_slices; a state has P features, the cell state H).
  void from_row(int64_t b0, int P, int H) {
    h_mask = rows_from(h_mask, b0, P);
    keep_h = rows_from(keep_h, b0, P);
    keep_c = rows_from(keep_c, b0, H);
  }
};

template <typename T>
struct FwdOptions : StateOptions<T> {
  using StateOptions<T>::StateOptions;
  T* raw = nullptr;           // (T, B, H) out: the un-blended new state (LSTM c~, Elman h~) the backward needs
  T* pre = nullptr;           // (T, B, H) out: the Elman pre-activation (recorded as gate "pre")
  FwdOptions rows(int64_t b0, int P, int H) const {
    FwdOptions o = *this;
    o.from_row(b0, P, H);
    o.raw = rows_from(raw, b0, H);
    o.pre = rows_from(pre, b0, H);
    return o;
  }
};

template <typename T>
struct BwdOptions : StateOptions<T> {
  using StateOptions<T>::StateOptions;
  const T* raw = nullptr;     // (T, B, H) FwdOptions::raw
  const T* dC = nullptr;      // (T, B, H) incoming gradient of the recorded cell states
  const T* dgates = nullptr;  // (T, B, G) incoming gradient of the recorded gates (Elman: of the pre-activation)
  T* sink_h = nullptr;        // (T, B, P) out: dL/dh_t, the state after step t (direct dY_t + later steps)
  T* sink_c = nullptr;        // (T, B, H) out: dL/dc_t
  BwdOptions rows(int64_t b0, int P, int H, int G) const {
    BwdOptions o = *this;
    o.from_row(b0, P, H);
    o.raw = rows_from(raw, b0, H);
    o.dC = rows_from(dC, b0, H);
    o.dgates = rows_from(dgates, b0, G);
    o.sink_h = rows_from(sink_h, b0, P);
    o.sink_c = rows_from(sink_c, b0, H);
    return o;
  }
};

// Calls f(std::true_type{}) when an option is on, else f(std::false_type{}): one entry point per pass, and a run
// with every option off takes the plain instantiation (EX = false), the same code as a loop without options.
template <typename F>
inline void with_options(bool on, F&& f) {
  if (on)
    f(std::true_type{});
  else
    f(std::false_type{});
}

// Whether an optional tensor argument is given (an option that is off is None, or an undefined tensor).
inline bool given(const std::optional<Tensor>& t) { return t.has_value() && t->defined(); }

// An (n, B, F) output when it is asked for, else an undefined tensor (None in Python): an output of an option
// that is off costs nothing.
inline Tensor output_if(bool wanted, int n, int B, int F, const Tensor& like) {
  return wanted ? workspace({n, B, F}, like.options()) : Tensor();
}

// The data of an output from output_if, or nullptr.
template <typename T>
T* out_ptr(Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}

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

// EX adds the layer options (see FwdOptions): the masked h enters W_hh, c and h are blended with their previous
// values after the cell (c~ kept in opt.raw for the backward), the blended h is the output.
template <typename T, bool EX = false>
void lstm_forward_impl(T* xw, InputChunks<T>* chunks, const T* bias, const T* whh, const T* whr, const int64_t* len,
                       bool reverse, int Tn, int B, int S, int H, int P, T* Y, T* h, T* c, T* Cs, T* Ms,
                       const FwdOptions<T>& opt = {}, const StepGemm<T>* kept = nullptr) {
  const int G = 4 * H;
  const bool proj = whr != nullptr;
  std::vector<T> mbuf(proj && Ms == nullptr ? static_cast<size_t>(B) * H : 0);
  std::vector<T> hmasked(EX && opt.h_mask ? static_cast<size_t>(B) * P : 0), cold(EX && opt.keep_c ? H : 0);
  // `kept`: the recurrent product of a caller that runs many one-step calls (lstm_sample), W_hh prepared once
  const StepGemm<T> own(kept ? nullptr : whh, true, B, G, P, Tn);
  const StepGemm<T>& rec = kept ? *kept : own;
  const StepGemm<T> project(whr, true, B, P, proj ? H : 1, Tn);
  for (int s = 0; s < Tn; ++s) {
    const int t = reverse ? Tn - 1 - s : s;
    // (B, 4H): x_t W_ih^T, then the activated gates
    T* g = chunks ? chunks->gates(s, t) : xw + static_cast<int64_t>(t) * S * G;
    const T* hin = h;
    if constexpr (EX) {
      if (opt.h_mask) {
        mul_into(h, opt.h_mask, hmasked.data(), static_cast<int64_t>(B) * P);  // (B, P): h_{t-1} * mask
        hin = hmasked.data();
      }
    }
    rec(hin, T(1), g);                                     // += h_{t-1} W_hh^T
    T* m = proj ? (Ms ? Ms + static_cast<int64_t>(t) * S * H : mbuf.data()) : Y + static_cast<int64_t>(t) * S * P;
    for (int b = 0; b < B; ++b) {
      T* mb = m + static_cast<int64_t>(b) * H;
      if (!is_valid(len, t, b)) {
        std::memset(mb, 0, sizeof(T) * H);
        continue;
      }
      T* gb = g + static_cast<int64_t>(b) * G;
      T* cb = c + static_cast<int64_t>(b) * H;
      if constexpr (EX) {
        if (opt.keep_c) std::memcpy(cold.data(), cb, sizeof(T) * H);
      }
      lstm_cell_forward<T>(gb, gb + H, gb + 2 * H, gb + 3 * H, bias, bias + H, bias + 2 * H, bias + 3 * H, cb, mb, H);
      if constexpr (EX) {
        const int64_t row = (static_cast<int64_t>(t) * S + b) * H;
        if (opt.raw) std::memcpy(opt.raw + row, cb, sizeof(T) * H);  // c~_t: h~_t = o tanh(c~_t) in the backward
        if (opt.keep_c) zoneout_row(cb, cold.data(), opt.keep_c + row, H);
      }
    }
    T* y = Y + static_cast<int64_t>(t) * S * P;
    if (proj) project(m, T(0), y);                         // h_t = m_t W_hr^T (padding rows of m are 0)
    for (int b = 0; b < B; ++b)
      if (is_valid(len, t, b)) {
        T* yb = y + static_cast<int64_t>(b) * P;
        T* hb = h + static_cast<int64_t>(b) * P;
        if constexpr (EX) {
          if (opt.keep_h) zoneout_row(yb, hb, opt.keep_h + (static_cast<int64_t>(t) * S + b) * P, P);
        }
        std::memcpy(hb, yb, sizeof(T) * P);
      }
    if (Cs) std::memcpy(Cs + static_cast<int64_t>(t) * S * H, c, sizeof(T) * B * H);
  }
}

// xw (T,B,4H) is x W_ih^T, overwritten with the activated gates i,f,g,o (the recorded gates); bias (4H,) = b_ih +
// b_hh is added in the gate loop (no broadcast copy). The options (FwdOptions) are None when off.
// Returns Y (T,B,P) (the blended h), h_n, c_n, and (else None): C (T,B,H) every step's c_t (blended; padding steps
// hold the carried state) when train or record; M = o*tanh(c~) (T,B,H) with projections when train; CR = c~_t
// (un-blended) when train with zoneout on c.
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_forward(
    Tensor xw, const Tensor& bias, const Tensor& h0, const Tensor& c0, const Tensor& w_hh,
    const std::optional<Tensor>& w_hr, const std::optional<Tensor>& lengths, bool reverse, bool train,
    const std::optional<Tensor>& h_mask, const std::optional<Tensor>& keep_h, const std::optional<Tensor>& keep_c,
    bool record) {
  const int Tn = xw.size(0), B = xw.size(1), H = xw.size(2) / 4, P = h0.size(1);
  const bool proj = given(w_hr), zc = given(keep_c);
  Tensor Y = workspace({Tn, B, P}, xw.options());
  Tensor h = h0.clone(), c = c0.clone();
  Tensor Cs = output_if(train || record, Tn, B, H, xw);
  Tensor Ms = output_if(train && proj, Tn, B, H, xw);
  Tensor CR = output_if(train && zc, Tn, B, H, xw);
  AT_DISPATCH_FLOATING_TYPES(xw.scalar_type(), "rnnlab lstm_forward", [&] {
    FwdOptions<scalar_t> opt(h_mask, keep_h, keep_c);
    opt.raw = out_ptr<scalar_t>(CR);
    const int64_t* len = lengths_ptr(lengths);
    with_options(opt.any(), [&](auto ex) {
      batch_slices(B, [&](int b0, int b1) {
        lstm_forward_impl<scalar_t, decltype(ex)::value>(
            xw.data_ptr<scalar_t>() + int64_t{b0} * 4 * H, nullptr, bias.data_ptr<scalar_t>(),
            w_hh.data_ptr<scalar_t>(), opt_ptr<scalar_t>(w_hr), rows_from(len, b0, 1), reverse, Tn, b1 - b0, B, H,
            P, Y.data_ptr<scalar_t>() + int64_t{b0} * P, h.data_ptr<scalar_t>() + int64_t{b0} * P,
            c.data_ptr<scalar_t>() + int64_t{b0} * H, rows_from(out_ptr<scalar_t>(Cs), b0, H),
            rows_from(out_ptr<scalar_t>(Ms), b0, H), opt.rows(b0, P, H));
      });
    });
  });
  return {Y, h, c, Cs, Ms, CR};
}

// Inference: x (T,B,I) and W_ih instead of a precomputed projection; returns Y, h_n, c_n and saves nothing.
std::tuple<Tensor, Tensor, Tensor> lstm_infer(const Tensor& x, const Tensor& w_ih, const Tensor& bias,
                                              const Tensor& h0, const Tensor& c0, const Tensor& w_hh,
                                              const std::optional<Tensor>& w_hr,
                                              const std::optional<Tensor>& lengths, bool reverse) {
  const int Tn = x.size(0), B = x.size(1), I = x.size(2), H = w_ih.size(0) / 4, P = h0.size(1);
  const bool proj = given(w_hr);
  Tensor Y = workspace({Tn, B, P}, x.options());
  Tensor h = h0.clone(), c = c0.clone();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "rnnlab lstm_infer", [&] {
    batch_slices(B, [&](int b0, int b1) {
      InputChunks<scalar_t> chunks(x.data_ptr<scalar_t>() + int64_t{b0} * I, w_ih.data_ptr<scalar_t>(), reverse, Tn,
                                   b1 - b0, I, 4 * H, B);
      lstm_forward_impl<scalar_t>(nullptr, &chunks, bias.data_ptr<scalar_t>(), w_hh.data_ptr<scalar_t>(),
                                  proj ? w_hr->data_ptr<scalar_t>() : nullptr, rows_from(lengths_ptr(lengths), b0, 1),
                                  reverse, Tn, b1 - b0, B, H, P, Y.data_ptr<scalar_t>() + int64_t{b0} * P,
                                  h.data_ptr<scalar_t>() + int64_t{b0} * P, c.data_ptr<scalar_t>() + int64_t{b0} * H,
                                  nullptr, nullptr);
    });
  });
  return {Y, h, c};
}

// One row of the LSTM derivative with the options: dm = dL/dh~_t (after projection and zoneout scaling),
// dc = dL/dc_t carried from later steps, dcx the recorded c_t's incoming gradient, gx (4H) the recorded gates',
// kc the zoneout keep of c (zeros: none). With c_t = kc c_{t-1} + (1 - kc) c~_t, c~_t = f c_{t-1} + i g,
// h~_t = o tanh(c~_t):
//   dct = dc + dcx                                   (dL/dc_t)
//   dcr = (1 - kc) dct + dm o (1 - tanh^2 c~_t)      (dL/dc~_t)
//   di = (dcr g + gx_i) i (1 - i), df = (dcr c_{t-1} + gx_f) f (1 - f), dg = (dcr i + gx_g) (1 - g^2),
//   do = (dm tanh c~_t + gx_o) o (1 - o),  dc <- dL/dc_{t-1} = kc dct + dcr f.
// sink gets dL/dc_t: dct with zoneout on c (h~_t does not depend on the blended c_t), else dcr (= dct + the path
// through h_t, since then c_t = c~_t).
template <typename T>
inline void lstm_cell_backward_ex(const T* __restrict gi, const T* __restrict gf, const T* __restrict gg,
                                  const T* __restrict go, const T* __restrict cr, const T* __restrict cp,
                                  const T* __restrict dm, const T* __restrict dcx, const T* __restrict gx,
                                  const T* __restrict kc, bool zc, T* __restrict dc, T* __restrict sink,
                                  T* __restrict di, T* __restrict df, T* __restrict dg, T* __restrict dout, int H) {
  for (int j = 0; j < H; ++j) {
    const T i = gi[j], f = gf[j], g = gg[j], o = go[j];
    const T tc = Act<T>::tanh(cr[j]);
    const T dct = dc[j] + dcx[j];
    const T dcr = (T(1) - kc[j]) * dct + dm[j] * o * (T(1) - tc * tc);
    sink[j] = zc ? dct : dcr;
    di[j] = (dcr * g + gx[j]) * i * (T(1) - i);
    df[j] = (dcr * cp[j] + gx[H + j]) * f * (T(1) - f);
    dg[j] = (dcr * i + gx[2 * H + j]) * (T(1) - g * g);
    dout[j] = (dm[j] * tc + gx[3 * H + j]) * o * (T(1) - o);
    dc[j] = kc[j] * dct + dcr * f;
  }
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

// EX adds the layer options (BwdOptions): zoneout of h splits dL/dh_t into k dL/dh_t (straight to h_{t-1}) and
// (1 - k) dL/dh_t (into the cell), the recurrent GEMM's part of dL/dh_{t-1} is masked, the recorded outputs'
// gradients enter lstm_cell_backward_ex, and the per-step totals go to the sink.
template <typename T, bool EX = false>
void lstm_backward_impl(const T* dY, const T* gates, const T* Cs, const T* c0, const T* whh, const T* whr,
                        const int64_t* len, bool reverse, int Tn, int B, int S, int H, int P, T* dh, T* dc,
                        T* dG, T* dHs, T* db, const BwdOptions<T>& opt = {}) {
  const int G = 4 * H;
  const bool proj = whr != nullptr;
  std::vector<T> dhtot_buf(proj ? 0 : static_cast<size_t>(B) * P), dm_buf(proj ? static_cast<size_t>(B) * H : 0);
  // EX: zeros stand in for an absent option (keep 0 = no zoneout, no incoming gradient), exactly the plain maths
  std::vector<T> zeros(EX ? G : 0), dummy(EX ? H : 0), dmask(EX && opt.h_mask ? static_cast<size_t>(B) * P : 0);
  const StepGemm<T> rec(whh, false, B, P, G, Tn);
  const StepGemm<T> project(whr, false, B, H, proj ? P : 1, Tn);
  for (int s = 0; s < Tn; ++s) {
    const int t = reverse ? s : Tn - 1 - s;                // the forward order, backwards
    const int64_t tSP = static_cast<int64_t>(t) * S * P;
    // dL/dh_t = dL/dy_t + (recurrent part carried in dh); padding rows get 0 (their output was a constant 0).
    T* dhtot = proj ? dHs + tSP : dhtot_buf.data();
    for (int b = 0; b < B; ++b) {
      T* d = dhtot + static_cast<int64_t>(b) * P;
      T* dhb = dh + static_cast<int64_t>(b) * P;
      if (!is_valid(len, t, b)) {
        std::memset(d, 0, sizeof(T) * P);
        if constexpr (EX) {
          if (opt.sink_h) std::memset(opt.sink_h + tSP + static_cast<int64_t>(b) * P, 0, sizeof(T) * P);
        }
        continue;
      }
      const T* dy = dY + tSP + static_cast<int64_t>(b) * P;
      for (int j = 0; j < P; ++j) d[j] = dhb[j] + dy[j];
      if constexpr (EX) {
        if (opt.sink_h) std::memcpy(opt.sink_h + tSP + static_cast<int64_t>(b) * P, d, sizeof(T) * P);
        if (opt.keep_h) {                                  // h_t = k h_{t-1} + (1 - k) h~_t
          const T* k = opt.keep_h + tSP + static_cast<int64_t>(b) * P;
          for (int j = 0; j < P; ++j) {
            dhb[j] = k[j] * d[j];                          // the direct part of dL/dh_{t-1}
            d[j] *= T(1) - k[j];                           // dL/dh~_t (and so dH for dW_hr)
          }
          continue;
        }
      }
      std::memset(dhb, 0, sizeof(T) * P);                  // replaced by dG W_hh below (beta = 1 keeps padding rows)
    }
    const T* dm = dhtot;
    if (proj) {
      project(dhtot, T(0), dm_buf.data());                 // dL/dm_t = dL/dh_t W_hr
      dm = dm_buf.data();
    }
    const T* gt = gates + static_cast<int64_t>(t) * S * G;
    T* dgt = dG + static_cast<int64_t>(t) * S * G;
    const T* ct = Cs + static_cast<int64_t>(t) * S * H;
    for (int b = 0; b < B; ++b) {
      T* dgb = dgt + static_cast<int64_t>(b) * G;
      const int64_t row = (static_cast<int64_t>(t) * S + b) * H;
      if (!is_valid(len, t, b)) {
        std::memset(dgb, 0, sizeof(T) * G);
        if constexpr (EX) {
          if (opt.sink_c) std::memset(opt.sink_c + row, 0, sizeof(T) * H);
        }
        continue;
      }
      const int tp = prev_step(len, reverse, Tn, t, b);
      const T* cp = tp >= 0 ? Cs + (static_cast<int64_t>(tp) * S + b) * H : c0 + static_cast<int64_t>(b) * H;
      const T* gb = gt + static_cast<int64_t>(b) * G;
      if constexpr (EX) {
        const T* z = zeros.data();
        lstm_cell_backward_ex<T>(gb, gb + H, gb + 2 * H, gb + 3 * H, opt.raw ? opt.raw + row : ct + b * H, cp,
                                 dm + static_cast<int64_t>(b) * H, opt.dC ? opt.dC + row : z,
                                 opt.dgates ? opt.dgates + (static_cast<int64_t>(t) * S + b) * G : z,
                                 opt.keep_c ? opt.keep_c + row : z, opt.keep_c != nullptr,
                                 dc + static_cast<int64_t>(b) * H, opt.sink_c ? opt.sink_c + row : dummy.data(),
                                 dgb, dgb + H, dgb + 2 * H, dgb + 3 * H, H);
      } else {
        lstm_cell_backward<T>(gb, gb + H, gb + 2 * H, gb + 3 * H, ct + static_cast<int64_t>(b) * H, cp,
                              dm + static_cast<int64_t>(b) * H, dc + static_cast<int64_t>(b) * H, dgb, dgb + H,
                              dgb + 2 * H, dgb + 3 * H, H);
      }
    }
    if constexpr (EX) {
      recurrent_grad(rec, dgt, opt.h_mask, dmask.data(), static_cast<int64_t>(B) * P, dh);  // (dG_t W_hh) * mask
    } else {
      rec(dgt, T(1), dh);                                  // dL/dh_{t-1} = dG_t W_hh
    }
    add_rows(dgt, B, G, db);
  }
}

// Returns dG (T,B,4H) (pre-activation gate gradients, for the big weight/input GEMMs), dh0, dc0, with
// projections dH (T,B,P) = dL/dh~_t for every step (for dW_hr; after zoneout's 1 - k), db (4H,) = sum of dG over T
// and B, and, when sink, the per-step totals dL/dh_t (T,B,P) and dL/dc_t (T,B,H) (else None). The options
// (BwdOptions) are None when off: CR (c~, with zoneout on c), the masks, the recorded outputs' incoming gradients
// dC (T,B,H) and dgates (T,B,4H).
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_backward(
    const Tensor& dY, const Tensor& dhn, const Tensor& dcn, const Tensor& gates, const Tensor& Cs,
    const std::optional<Tensor>& CR, const Tensor& c0, const Tensor& w_hh, const std::optional<Tensor>& w_hr,
    const std::optional<Tensor>& lengths, bool reverse, const std::optional<Tensor>& h_mask,
    const std::optional<Tensor>& keep_h, const std::optional<Tensor>& keep_c, const std::optional<Tensor>& dC,
    const std::optional<Tensor>& dgates, bool sink) {
  const int Tn = gates.size(0), B = gates.size(1), H = gates.size(2) / 4, P = dhn.size(1);
  const bool proj = given(w_hr);
  Tensor dh = dhn.clone(), dc = dcn.clone();
  Tensor dG = workspace(gates.sizes(), gates.options());
  Tensor dHs = output_if(proj, Tn, B, P, gates);
  Tensor db = at::zeros({4 * H}, gates.options());
  Tensor sink_h = output_if(sink, Tn, B, P, gates), sink_c = output_if(sink, Tn, B, H, gates);
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "rnnlab lstm_backward", [&] {
    BwdOptions<scalar_t> opt(h_mask, keep_h, keep_c);
    opt.raw = opt_ptr<scalar_t>(CR);
    opt.dC = opt_ptr<scalar_t>(dC);
    opt.dgates = opt_ptr<scalar_t>(dgates);
    opt.sink_h = out_ptr<scalar_t>(sink_h);
    opt.sink_c = out_ptr<scalar_t>(sink_c);
    const int64_t* len = lengths_ptr(lengths);
    const int G = 4 * H;
    with_options(opt.any() || opt.raw || opt.dC || opt.dgates || sink, [&](auto ex) {
      batch_slices(B, std::array<scalar_t*, 1>{db.data_ptr<scalar_t>()}, G, [&](int b0, int b1, const auto& sums) {
        lstm_backward_impl<scalar_t, decltype(ex)::value>(
            dY.data_ptr<scalar_t>() + int64_t{b0} * P, gates.data_ptr<scalar_t>() + int64_t{b0} * G,
            Cs.data_ptr<scalar_t>() + int64_t{b0} * H, c0.data_ptr<scalar_t>() + int64_t{b0} * H,
            w_hh.data_ptr<scalar_t>(), opt_ptr<scalar_t>(w_hr), rows_from(len, b0, 1), reverse, Tn, b1 - b0, B, H,
            P, dh.data_ptr<scalar_t>() + int64_t{b0} * P, dc.data_ptr<scalar_t>() + int64_t{b0} * H,
            dG.data_ptr<scalar_t>() + int64_t{b0} * G, rows_from(out_ptr<scalar_t>(dHs), b0, P), sums[0],
            opt.rows(b0, P, H, G));
      });
    });
  });
  return {dG, dh, dc, dHs, db, sink_h, sink_c};
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

// EX adds the layer options: h_{t-1} * mask enters W_hh (the carry z h_{t-1} keeps the whole state), and the new
// h is blended with h_{t-1} by zoneout; the output is the blended h.
template <typename T, bool EX = false>
void gru_forward_impl(T* xw, InputChunks<T>* chunks, const T* bih, const T* whh, const T* bhh, const int64_t* len,
                      bool reverse, int Tn, int B, int S, int H, T* Y, T* h, T* HN, const FwdOptions<T>& opt = {}) {
  const int G = 3 * H;
  std::vector<T> hw(static_cast<size_t>(B) * G), hnbuf(HN ? 0 : H);
  std::vector<T> hmasked(EX && opt.h_mask ? static_cast<size_t>(B) * H : 0), hold(EX && opt.keep_h ? H : 0);
  const StepGemm<T> rec(whh, true, B, G, H, Tn);
  for (int s = 0; s < Tn; ++s) {
    const int t = reverse ? Tn - 1 - s : s;
    const T* hin = h;
    if constexpr (EX) {
      if (opt.h_mask) {
        mul_into(h, opt.h_mask, hmasked.data(), static_cast<int64_t>(B) * H);  // (B, H): h_{t-1} * mask
        hin = hmasked.data();
      }
    }
    rec(hin, T(0), hw.data());                             // h_{t-1} W_hh^T (B, 3H)
    // x_t W_ih^T, then the activated r, z, n
    T* g = chunks ? chunks->gates(s, t) : xw + static_cast<int64_t>(t) * S * G;
    T* y = Y + static_cast<int64_t>(t) * S * H;
    for (int b = 0; b < B; ++b) {
      T* yb = y + static_cast<int64_t>(b) * H;
      if (!is_valid(len, t, b)) {
        std::memset(yb, 0, sizeof(T) * H);
        continue;
      }
      T* gb = g + static_cast<int64_t>(b) * G;
      T* hb = h + static_cast<int64_t>(b) * H;
      const T* hwb = hw.data() + static_cast<int64_t>(b) * G;
      T* hnb = HN ? HN + (static_cast<int64_t>(t) * S + b) * H : hnbuf.data();
      if constexpr (EX) {
        if (opt.keep_h) std::memcpy(hold.data(), hb, sizeof(T) * H);
      }
      gru_cell_forward<T>(gb, gb + H, gb + 2 * H, bih, bih + H, bih + 2 * H, hwb, hwb + H, hwb + 2 * H, bhh,
                          bhh + H, bhh + 2 * H, hb, yb, hnb, H);
      if constexpr (EX) {
        if (opt.keep_h) {
          zoneout_row(hb, hold.data(), opt.keep_h + (static_cast<int64_t>(t) * S + b) * H, H);
          std::memcpy(yb, hb, sizeof(T) * H);
        }
      }
    }
  }
}

// xw (T,B,3H) is x W_ih^T, overwritten with r, z, n (the recorded gates); the biases are added in the gate loop.
// The options (FwdOptions: h_mask, keep_h) are None when off. Returns Y (T,B,H) (the blended h), h_n and, when
// train, HN (T,B,H) = W_hn (h_{t-1} * mask) + b_hn (else None).
std::tuple<Tensor, Tensor, Tensor> gru_forward(Tensor xw, const Tensor& b_ih, const Tensor& h0, const Tensor& w_hh,
                                               const Tensor& b_hh, const std::optional<Tensor>& lengths, bool reverse,
                                               bool train, const std::optional<Tensor>& h_mask,
                                               const std::optional<Tensor>& keep_h) {
  const int Tn = xw.size(0), B = xw.size(1), H = xw.size(2) / 3;
  Tensor Y = workspace({Tn, B, H}, xw.options());
  Tensor h = h0.clone();
  Tensor HN = output_if(train, Tn, B, H, xw);
  AT_DISPATCH_FLOATING_TYPES(xw.scalar_type(), "rnnlab gru_forward", [&] {
    FwdOptions<scalar_t> opt(h_mask, keep_h);
    const int64_t* len = lengths_ptr(lengths);
    with_options(opt.any(), [&](auto ex) {
      batch_slices(B, [&](int b0, int b1) {
        gru_forward_impl<scalar_t, decltype(ex)::value>(
            xw.data_ptr<scalar_t>() + int64_t{b0} * 3 * H, nullptr, b_ih.data_ptr<scalar_t>(),
            w_hh.data_ptr<scalar_t>(), b_hh.data_ptr<scalar_t>(), rows_from(len, b0, 1), reverse, Tn, b1 - b0, B, H,
            Y.data_ptr<scalar_t>() + int64_t{b0} * H, h.data_ptr<scalar_t>() + int64_t{b0} * H,
            rows_from(out_ptr<scalar_t>(HN), b0, H), opt.rows(b0, H, H));
      });
    });
  });
  return {Y, h, HN};
}

// Inference: x (T,B,I) and W_ih instead of a precomputed projection; returns Y and h_n, saves nothing.
std::tuple<Tensor, Tensor> gru_infer(const Tensor& x, const Tensor& w_ih, const Tensor& b_ih, const Tensor& h0,
                                     const Tensor& w_hh, const Tensor& b_hh, const std::optional<Tensor>& lengths,
                                     bool reverse) {
  const int Tn = x.size(0), B = x.size(1), I = x.size(2), H = w_ih.size(0) / 3;
  Tensor Y = workspace({Tn, B, H}, x.options());
  Tensor h = h0.clone();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "rnnlab gru_infer", [&] {
    batch_slices(B, [&](int b0, int b1) {
      InputChunks<scalar_t> chunks(x.data_ptr<scalar_t>() + int64_t{b0} * I, w_ih.data_ptr<scalar_t>(), reverse, Tn,
                                   b1 - b0, I, 3 * H, B);
      gru_forward_impl<scalar_t>(nullptr, &chunks, b_ih.data_ptr<scalar_t>(), w_hh.data_ptr<scalar_t>(),
                                 b_hh.data_ptr<scalar_t>(), rows_from(lengths_ptr(lengths), b0, 1), reverse, Tn,
                                 b1 - b0, B, H, Y.data_ptr<scalar_t>() + int64_t{b0} * H,
                                 h.data_ptr<scalar_t>() + int64_t{b0} * H, nullptr);
    });
  });
  return {Y, h};
}

// One row of the GRU derivative with the options: dt = dL/dh_t (total), k the zoneout keep (zeros: none), gx (3H)
// the recorded r, z, n's incoming gradient. With h_t = k h_{t-1} + (1 - k) h~_t, h~_t = (1 - z) n + z h_{t-1}:
//   d = (1 - k) dt (dL/dh~_t); dn_pre = (d (1 - z) + gx_n) (1 - n^2); dr_pre = (dn_pre hn + gx_r) r (1 - r);
//   dz_pre = (d (h_{t-1} - n) + gx_z) z (1 - z); dh <- the direct part of dL/dh_{t-1} = d z + k dt.
template <typename T>
inline void gru_cell_backward_ex(const T* __restrict gr, const T* __restrict gz, const T* __restrict gn,
                                 const T* __restrict hn, const T* __restrict hp, const T* __restrict dtot,
                                 const T* __restrict k, const T* __restrict gx, T* __restrict dh,
                                 T* __restrict dxr, T* __restrict dxz, T* __restrict dxn, T* __restrict dhr,
                                 T* __restrict dhz, T* __restrict dhn, int H) {
  for (int j = 0; j < H; ++j) {
    const T r = gr[j], z = gz[j], n = gn[j];
    const T d = (T(1) - k[j]) * dtot[j];
    const T dnp = (d * (T(1) - z) + gx[2 * H + j]) * (T(1) - n * n);
    const T drp = (dnp * hn[j] + gx[j]) * r * (T(1) - r);
    const T dzp = (d * (hp[j] - n) + gx[H + j]) * z * (T(1) - z);
    dxr[j] = drp;
    dxz[j] = dzp;
    dxn[j] = dnp;
    dhr[j] = drp;
    dhz[j] = dzp;
    dhn[j] = dnp * r;
    dh[j] = d * z + k[j] * dtot[j];
  }
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

// EX adds the layer options (BwdOptions; keep_h is h's zoneout, dgates the recorded r, z, n's gradient).
template <typename T, bool EX = false>
void gru_backward_impl(const T* dY, const T* gates, const T* HN, const T* Y, const T* h0, const T* whh,
                       const int64_t* len, bool reverse, int Tn, int B, int S, int H, T* dh, T* dGx, T* dHn, T* dbih,
                       T* dbhh, const BwdOptions<T>& opt = {}) {
  const int G = 3 * H;
  const StepGemm<T> rec(whh, false, B, H, G, Tn);
  // dG_h differs from dG_x only in its n block, so only that block is kept for all steps (dHn, for dW_hh's n
  // rows); the full (B, 3H) dG_h of one step lives in this scratch for the recurrent GEMM and db_hh.
  std::vector<T> dgh_step(static_cast<size_t>(B) * G);
  T* dght = dgh_step.data();
  std::vector<T> zeros(EX ? G : 0), dtot(EX ? H : 0), dmask(EX && opt.h_mask ? static_cast<size_t>(B) * H : 0);
  for (int s = 0; s < Tn; ++s) {
    const int t = reverse ? s : Tn - 1 - s;
    T* dgxt = dGx + static_cast<int64_t>(t) * S * G;
    for (int b = 0; b < B; ++b) {
      const int64_t tb = static_cast<int64_t>(t) * S + b;
      T* dgx = dgxt + static_cast<int64_t>(b) * G;
      T* dgh = dght + static_cast<int64_t>(b) * G;
      if (!is_valid(len, t, b)) {
        std::memset(dgx, 0, sizeof(T) * G);
        std::memset(dgh, 0, sizeof(T) * G);
        std::memset(dHn + tb * H, 0, sizeof(T) * H);
        if constexpr (EX) {
          if (opt.sink_h) std::memset(opt.sink_h + tb * H, 0, sizeof(T) * H);
        }
        continue;
      }
      const int tp = prev_step(len, reverse, Tn, t, b);
      const T* hp = tp >= 0 ? Y + (static_cast<int64_t>(tp) * S + b) * H : h0 + static_cast<int64_t>(b) * H;
      const T* gb = gates + tb * G;
      T* dhb = dh + static_cast<int64_t>(b) * H;
      if constexpr (EX) {
        const T* dy = dY + tb * H;
        for (int j = 0; j < H; ++j) dtot[j] = dhb[j] + dy[j];  // dL/dh_t
        if (opt.sink_h) std::memcpy(opt.sink_h + tb * H, dtot.data(), sizeof(T) * H);
        gru_cell_backward_ex<T>(gb, gb + H, gb + 2 * H, HN + tb * H, hp, dtot.data(),
                                opt.keep_h ? opt.keep_h + tb * H : zeros.data(),
                                opt.dgates ? opt.dgates + tb * G : zeros.data(), dhb, dgx, dgx + H, dgx + 2 * H,
                                dgh, dgh + H, dgh + 2 * H, H);
      } else {
        gru_cell_backward<T>(gb, gb + H, gb + 2 * H, HN + tb * H, hp, dY + tb * H, dhb, dgx, dgx + H, dgx + 2 * H,
                             dgh, dgh + H, dgh + 2 * H, H);
      }
    }
    if constexpr (EX) {
      recurrent_grad(rec, static_cast<const T*>(dght), opt.h_mask, dmask.data(), static_cast<int64_t>(B) * H, dh);
    } else {
      rec(dght, T(1), dh);                                 // += dG_h W_hh (padding rows: dG = 0, dh carried)
    }
    add_rows(dgxt, B, G, dbih);
    add_rows(dght, B, G, dbhh);
    for (int b = 0; b < B; ++b)
      if (is_valid(len, t, b))
        std::memcpy(dHn + (static_cast<int64_t>(t) * S + b) * H, dght + static_cast<int64_t>(b) * G + 2 * H,
                    sizeof(T) * H);
  }
}

// Returns dGx (T,B,3H) (gradient of x W_ih^T + b_ih), dHn (T,B,H) (of W_hn h + b_hn; the r, z blocks of the
// gradient of h W_hh^T + b_hh are dGx's), dh0, db_ih, db_hh and, when sink, dL/dh_t (T,B,H) of every step (else
// None). The options (BwdOptions: the masks, the recorded gates' incoming gradient dgates (T,B,3H)) are None when
// off.
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> gru_backward(
    const Tensor& dY, const Tensor& dhn, const Tensor& gates, const Tensor& HN, const Tensor& Y, const Tensor& h0,
    const Tensor& w_hh, const std::optional<Tensor>& lengths, bool reverse, const std::optional<Tensor>& h_mask,
    const std::optional<Tensor>& keep_h, const std::optional<Tensor>& dgates, bool sink) {
  const int Tn = gates.size(0), B = gates.size(1), H = gates.size(2) / 3;
  Tensor dh = dhn.clone();
  Tensor dGx = workspace(gates.sizes(), gates.options()), dHn = workspace({Tn, B, H}, gates.options());
  Tensor dbih = at::zeros({3 * H}, gates.options()), dbhh = at::zeros({3 * H}, gates.options());
  Tensor sink_h = output_if(sink, Tn, B, H, gates);
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "rnnlab gru_backward", [&] {
    BwdOptions<scalar_t> opt(h_mask, keep_h);
    opt.dgates = opt_ptr<scalar_t>(dgates);
    opt.sink_h = out_ptr<scalar_t>(sink_h);
    const int64_t* len = lengths_ptr(lengths);
    const int G = 3 * H;
    const std::array<scalar_t*, 2> db{dbih.data_ptr<scalar_t>(), dbhh.data_ptr<scalar_t>()};
    with_options(opt.any() || opt.dgates || sink, [&](auto ex) {
      batch_slices(B, db, G, [&](int b0, int b1, const auto& sums) {
        const int64_t r = b0;
        gru_backward_impl<scalar_t, decltype(ex)::value>(
            dY.data_ptr<scalar_t>() + r * H, gates.data_ptr<scalar_t>() + r * G, HN.data_ptr<scalar_t>() + r * H,
            Y.data_ptr<scalar_t>() + r * H, h0.data_ptr<scalar_t>() + r * H, w_hh.data_ptr<scalar_t>(),
            rows_from(len, b0, 1), reverse, Tn, b1 - b0, B, H, dh.data_ptr<scalar_t>() + r * H,
            dGx.data_ptr<scalar_t>() + r * G, dHn.data_ptr<scalar_t>() + r * H, sums[0], sums[1],
            opt.rows(b0, H, H, G));
      });
    });
  });
  return {dGx, dHn, dh, dbih, dbhh, sink_h};
}

// ---- Elman RNN ------------------------------------------------------------------------------------------------

// EX adds the layer options: h_{t-1} * mask enters W_hh, the pre-activation is kept (opt.pre), the activated h~_t
// too when zoneout needs it (opt.raw), and h_t = k h_{t-1} + (1 - k) h~_t is the output.
template <typename T, bool EX = false>
void rnn_forward_impl(T* xw, const T* bias, const T* whh, bool relu, const int64_t* len, bool reverse, int Tn, int B,
                      int S, int H, T* h, const FwdOptions<T>& opt = {}) {
  const StepGemm<T> rec(whh, true, B, H, H, Tn);
  std::vector<T> hmasked(EX && opt.h_mask ? static_cast<size_t>(B) * H : 0);
  for (int s = 0; s < Tn; ++s) {
    const int t = reverse ? Tn - 1 - s : s;
    T* y = xw + static_cast<int64_t>(t) * S * H;            // x_t W_ih^T + b, becomes the output in place
    const T* hin = h;
    if constexpr (EX) {
      if (opt.h_mask) {
        mul_into(h, opt.h_mask, hmasked.data(), static_cast<int64_t>(B) * H);  // (B, H): h_{t-1} * mask
        hin = hmasked.data();
      }
    }
    rec(hin, T(1), y);
    for (int b = 0; b < B; ++b) {
      T* yb = y + static_cast<int64_t>(b) * H;
      const int64_t row = (static_cast<int64_t>(t) * S + b) * H;
      if (!is_valid(len, t, b)) {
        std::memset(yb, 0, sizeof(T) * H);
        if constexpr (EX) {
          if (opt.pre) std::memset(opt.pre + row, 0, sizeof(T) * H);  // finite: the layer multiplies it by 0
        }
        continue;
      }
      T* hb = h + static_cast<int64_t>(b) * H;
      if constexpr (EX) {
        if (opt.pre)
          for (int j = 0; j < H; ++j) opt.pre[row + j] = yb[j] + bias[j];
        if (relu) {
          for (int j = 0; j < H; ++j) {
            const T v = yb[j] + bias[j];
            yb[j] = v > T(0) ? v : T(0);
          }
        } else {
          for (int j = 0; j < H; ++j) yb[j] = Act<T>::tanh(yb[j] + bias[j]);
        }
        if (opt.raw) std::memcpy(opt.raw + row, yb, sizeof(T) * H);
        if (opt.keep_h) zoneout_row(yb, hb, opt.keep_h + row, H);
        std::memcpy(hb, yb, sizeof(T) * H);
        continue;
      }
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

// xw (T,B,H) is x W_ih^T and becomes the output Y (the blended h) in place; bias (H,) = b_ih + b_hh. The options
// (FwdOptions: h_mask, keep_h) are None when off. Returns h_n, HR (T,B,H) = the activated h~_t when train with
// zoneout, and PRE (T,B,H) the pre-activation when pre (each else None).
std::tuple<Tensor, Tensor, Tensor> rnn_forward(Tensor xw, const Tensor& bias, const Tensor& h0, const Tensor& w_hh,
                                               bool relu, const std::optional<Tensor>& lengths, bool reverse,
                                               bool train, const std::optional<Tensor>& h_mask,
                                               const std::optional<Tensor>& keep_h, bool pre) {
  const int Tn = xw.size(0), B = xw.size(1), H = xw.size(2);
  const bool zh = given(keep_h);
  Tensor h = h0.clone();
  Tensor HR = output_if(train && zh, Tn, B, H, xw), PRE = output_if(pre, Tn, B, H, xw);
  AT_DISPATCH_FLOATING_TYPES(xw.scalar_type(), "rnnlab rnn_forward", [&] {
    FwdOptions<scalar_t> opt(h_mask, keep_h);
    opt.raw = out_ptr<scalar_t>(HR);
    opt.pre = out_ptr<scalar_t>(PRE);
    const int64_t* len = lengths_ptr(lengths);
    with_options(opt.any() || opt.pre, [&](auto ex) {
      batch_slices(B, [&](int b0, int b1) {
        rnn_forward_impl<scalar_t, decltype(ex)::value>(
            xw.data_ptr<scalar_t>() + int64_t{b0} * H, bias.data_ptr<scalar_t>(), w_hh.data_ptr<scalar_t>(), relu,
            rows_from(len, b0, 1), reverse, Tn, b1 - b0, B, H, h.data_ptr<scalar_t>() + int64_t{b0} * H,
            opt.rows(b0, H, H));
      });
    });
  });
  return {h, HR, PRE};
}

// One row of the options' backward (see rnn_backward_impl). Its own function with __restrict arguments: inline,
// the seven row pointers were more than gcc checks for overlap at run time, so the loop stayed scalar (1.5-3x the
// plain backward at T=100, B=32, H=128, measured).
template <typename T, bool RELU>
inline void rnn_row_backward_ex(const T* __restrict dy, const T* __restrict hr, const T* __restrict k,
                                const T* __restrict gx, T* __restrict dh, T* __restrict sink, T* __restrict dg,
                                int H) {
  for (int j = 0; j < H; ++j) {
    const T dt = dh[j] + dy[j];
    sink[j] = dt;
    if constexpr (RELU)
      dg[j] = (hr[j] > T(0) ? (T(1) - k[j]) * dt : T(0)) + gx[j];
    else
      dg[j] = (T(1) - k[j]) * dt * (T(1) - hr[j] * hr[j]) + gx[j];
    dh[j] = k[j] * dt;
  }
}

// EX adds the layer options. With h_t = k h_{t-1} + (1 - k) h~_t, h~_t = act(pre_t) and dt = dL/dh_t:
//   dpre = (1 - k) dt act'(h~_t) + dL/dpre_ext (tanh' = 1 - h~^2, relu' = [h~ > 0]); dh <- k dt (+ the GEMM part).
template <typename T, bool EX = false>
void rnn_backward_impl(const T* dY, const T* Y, const T* whh, bool relu, const int64_t* len, bool reverse, int Tn,
                       int B, int S, int H, T* dh, T* dG, T* db, const BwdOptions<T>& opt = {}) {
  const StepGemm<T> rec(whh, false, B, H, H, Tn);
  std::vector<T> zeros(EX ? H : 0), dummy(EX ? H : 0), dmask(EX && opt.h_mask ? static_cast<size_t>(B) * H : 0);
  for (int s = 0; s < Tn; ++s) {
    const int t = reverse ? s : Tn - 1 - s;
    T* dgt = dG + static_cast<int64_t>(t) * S * H;
    for (int b = 0; b < B; ++b) {
      const int64_t off = (static_cast<int64_t>(t) * S + b) * H;
      T* dg = dgt + static_cast<int64_t>(b) * H;
      if (!is_valid(len, t, b)) {
        std::memset(dg, 0, sizeof(T) * H);
        if constexpr (EX) {
          if (opt.sink_h) std::memset(opt.sink_h + off, 0, sizeof(T) * H);
        }
        continue;
      }
      T* dhb = dh + static_cast<int64_t>(b) * H;
      const T* y = Y + off;
      const T* dy = dY + off;
      if constexpr (EX) {
        const T* hr = opt.raw ? opt.raw + off : y;         // h~_t (Y is h~_t itself without zoneout)
        const T* k = opt.keep_h ? opt.keep_h + off : zeros.data();
        const T* gx = opt.dgates ? opt.dgates + off : zeros.data();
        T* sk = opt.sink_h ? opt.sink_h + off : dummy.data();
        if (relu)
          rnn_row_backward_ex<T, true>(dy, hr, k, gx, dhb, sk, dg, H);
        else
          rnn_row_backward_ex<T, false>(dy, hr, k, gx, dhb, sk, dg, H);
        continue;
      }
      if (relu) {
        for (int j = 0; j < H; ++j) dg[j] = y[j] > T(0) ? dhb[j] + dy[j] : T(0);
      } else {
        for (int j = 0; j < H; ++j) dg[j] = (dhb[j] + dy[j]) * (T(1) - y[j] * y[j]);
      }
      std::memset(dhb, 0, sizeof(T) * H);
    }
    if constexpr (EX) {
      recurrent_grad(rec, static_cast<const T*>(dgt), opt.h_mask, dmask.data(), static_cast<int64_t>(B) * H, dh);
    } else {
      rec(dgt, T(1), dh);
    }
    add_rows(dgt, B, H, db);
  }
}

// Returns dG (T,B,H) (gradient of the pre-activation), dh0, db (H,) and, when sink, dL/dh_t (T,B,H) of every step
// (else None). The options (BwdOptions: HR (h~, with zoneout), the masks, the recorded pre-activation's incoming
// gradient dpre (T,B,H)) are None when off.
std::tuple<Tensor, Tensor, Tensor, Tensor> rnn_backward(const Tensor& dY, const Tensor& dhn, const Tensor& Y,
                                                        const std::optional<Tensor>& HR, const Tensor& w_hh,
                                                        bool relu, const std::optional<Tensor>& lengths, bool reverse,
                                                        const std::optional<Tensor>& h_mask,
                                                        const std::optional<Tensor>& keep_h,
                                                        const std::optional<Tensor>& dpre, bool sink) {
  const int Tn = Y.size(0), B = Y.size(1), H = Y.size(2);
  Tensor dh = dhn.clone();
  Tensor dG = workspace(Y.sizes(), Y.options());
  Tensor db = at::zeros({H}, Y.options());
  Tensor sink_h = output_if(sink, Tn, B, H, Y);
  AT_DISPATCH_FLOATING_TYPES(Y.scalar_type(), "rnnlab rnn_backward", [&] {
    BwdOptions<scalar_t> opt(h_mask, keep_h);
    opt.raw = opt_ptr<scalar_t>(HR);
    opt.dgates = opt_ptr<scalar_t>(dpre);
    opt.sink_h = out_ptr<scalar_t>(sink_h);
    const int64_t* len = lengths_ptr(lengths);
    with_options(opt.any() || opt.raw || opt.dgates || sink, [&](auto ex) {
      batch_slices(B, std::array<scalar_t*, 1>{db.data_ptr<scalar_t>()}, H, [&](int b0, int b1, const auto& sums) {
        const int64_t r = int64_t{b0} * H;
        rnn_backward_impl<scalar_t, decltype(ex)::value>(
            dY.data_ptr<scalar_t>() + r, Y.data_ptr<scalar_t>() + r, w_hh.data_ptr<scalar_t>(), relu,
            rows_from(len, b0, 1), reverse, Tn, b1 - b0, B, H, dh.data_ptr<scalar_t>() + r,
            dG.data_ptr<scalar_t>() + r, sums[0], opt.rows(b0, H, H, H));
      });
    });
  });
  return {dG, dh, db, sink_h};
}

// ---- generation --------------------------------------------------------------------------------------------

// One draw of rnnlab.models._Sampler: softmax(logits / temperature) over the top_k largest (all when 0) in float32,
// then torch.multinomial's one-sample algorithm, argmax(p / q) with q ~ Exp(1) from `generator`, in `race`
// (created on the first draw, reused). The same ATen ops in the same order, so the same index for the same
// generator state.
int64_t draw(const Tensor& logits, double temperature, int64_t top_k, const std::optional<at::Generator>& generator,
             Tensor& race) {
  Tensor scaled = at::div(logits, temperature);
  if (top_k > 0) {
    const Tensor kth = std::get<0>(at::topk(scaled, std::min<int64_t>(top_k, scaled.numel()))).select(0, -1);
    scaled = at::masked_fill(scaled, at::lt(scaled, kth), -std::numeric_limits<double>::infinity());
  }
  const Tensor probs = at::softmax(scaled.to(at::kFloat), -1);
  if (!race.defined()) race = at::empty_like(probs);
  race.exponential_(1, generator);
  return at::div_out(race, probs, race).argmax().item<int64_t>();
}

// generate_text's loop for a stack of one-direction LSTM layers without projections and a linear head: n draws
// from `logits` (V,) on, and after each but the last, the drawn character's row of `table` (its embedding, or its
// one-hot row) through every layer's step (lstm_forward_impl at T=1, each layer's W_hh prepared once for the whole
// sample) and the head (at::linear, what F.linear runs). Each step is lstm_infer's at T=1 and each draw
// _Sampler's, so the characters are the ones the Python loop draws. Returns the n indices and the last logits.
std::tuple<Tensor, Tensor> lstm_sample(const Tensor& logits, const Tensor& table, at::TensorList w_ih,
                                       at::TensorList bias, at::TensorList w_hh, at::TensorList h0,
                                       at::TensorList c0, const Tensor& head_w, const std::optional<Tensor>& head_b,
                                       int64_t n, double temperature, int64_t top_k,
                                       std::optional<at::Generator> generator) {
  const int L = static_cast<int>(w_ih.size());
  Tensor ids = at::empty({n}, logits.options().dtype(at::kLong));
  int64_t* out = ids.data_ptr<int64_t>();
  Tensor last = logits, race;
  std::vector<Tensor> h, c;
  for (int l = 0; l < L; ++l) {
    h.push_back(h0[l].clone());
    c.push_back(c0[l].clone());
  }
  AT_DISPATCH_FLOATING_TYPES(table.scalar_type(), "rnnlab lstm_sample", [&] {
    // per layer, prepared once: the recurrent product (W_hh in panels), the step's gates (x W_ih^T, as
    // lstm_infer's InputChunks projects one step) and its output
    std::vector<StepGemm<scalar_t>> rec;
    std::vector<std::vector<scalar_t>> gates(L), y(L);
    for (int l = 0; l < L; ++l) {
      const int H = static_cast<int>(w_hh[l].size(1));
      rec.emplace_back(w_hh[l].data_ptr<scalar_t>(), true, 1, 4 * H, H, static_cast<int>(n));
      gates[l].resize(4 * static_cast<size_t>(H));
      y[l].resize(H);
    }
    for (int64_t k = 0; k < n; ++k) {
      out[k] = draw(last, temperature, top_k, generator, race);
      if (k + 1 == n) break;
      const scalar_t* x = table.data_ptr<scalar_t>() + out[k] * table.size(1);
      for (int l = 0; l < L; ++l) {
        const int I = static_cast<int>(w_ih[l].size(1)), H = static_cast<int>(w_hh[l].size(1));
        mm_nt<scalar_t>(1, 4 * H, I, x, w_ih[l].data_ptr<scalar_t>(), scalar_t(0), gates[l].data());
        scalar_t* hl = h[l].data_ptr<scalar_t>();
        lstm_forward_impl<scalar_t>(gates[l].data(), nullptr, bias[l].data_ptr<scalar_t>(), nullptr, nullptr,
                                    nullptr, false, 1, 1, 1, H, H, y[l].data(), hl, c[l].data_ptr<scalar_t>(),
                                    nullptr, nullptr, {}, &rec[l]);
        x = hl;
      }
      last = at::linear(h[L - 1], head_w, head_b).select(0, 0);
    }
  });
  return {ids, last};
}

}  // namespace

// One op per pass and cell; the options and the sink are trailing arguments, None/false when off (a plain run).
// lstm_sample is generation's loop (generate_text), on the LSTM's step; workspace is the buffer that the
// training gates are projected into (see workspace above).
TORCH_LIBRARY(rnnlab_fused, m) {
  m.def("lstm_forward(Tensor(a!) xw, Tensor bias, Tensor h0, Tensor c0, Tensor w_hh, Tensor? w_hr, Tensor? lengths, "
        "bool reverse, bool train, Tensor? h_mask=None, Tensor? keep_h=None, Tensor? keep_c=None, bool record=False) "
        "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("lstm_backward(Tensor dY, Tensor dhn, Tensor dcn, Tensor gates, Tensor C, Tensor? CR, Tensor c0, "
        "Tensor w_hh, Tensor? w_hr, Tensor? lengths, bool reverse, Tensor? h_mask=None, Tensor? keep_h=None, "
        "Tensor? keep_c=None, Tensor? dC=None, Tensor? dgates=None, bool sink=False) "
        "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("lstm_infer(Tensor x, Tensor w_ih, Tensor bias, Tensor h0, Tensor c0, Tensor w_hh, Tensor? w_hr, "
        "Tensor? lengths, bool reverse) -> (Tensor, Tensor, Tensor)");
  m.def("lstm_sample(Tensor logits, Tensor table, Tensor[] w_ih, Tensor[] bias, Tensor[] w_hh, Tensor[] h0, "
        "Tensor[] c0, Tensor head_w, Tensor? head_b, int n, float temperature, int top_k, Generator? generator) "
        "-> (Tensor, Tensor)");
  m.def("gru_forward(Tensor(a!) xw, Tensor b_ih, Tensor h0, Tensor w_hh, Tensor b_hh, Tensor? lengths, bool reverse, "
        "bool train, Tensor? h_mask=None, Tensor? keep_h=None) -> (Tensor, Tensor, Tensor)");
  m.def("gru_backward(Tensor dY, Tensor dhn, Tensor gates, Tensor HN, Tensor Y, Tensor h0, Tensor w_hh, "
        "Tensor? lengths, bool reverse, Tensor? h_mask=None, Tensor? keep_h=None, Tensor? dgates=None, "
        "bool sink=False) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("gru_infer(Tensor x, Tensor w_ih, Tensor b_ih, Tensor h0, Tensor w_hh, Tensor b_hh, Tensor? lengths, "
        "bool reverse) -> (Tensor, Tensor)");
  m.def("rnn_forward(Tensor(a!) xw, Tensor bias, Tensor h0, Tensor w_hh, bool relu, Tensor? lengths, bool reverse, "
        "bool train, Tensor? h_mask=None, Tensor? keep_h=None, bool pre=False) -> (Tensor, Tensor, Tensor)");
  m.def("rnn_backward(Tensor dY, Tensor dhn, Tensor Y, Tensor? HR, Tensor w_hh, bool relu, Tensor? lengths, "
        "bool reverse, Tensor? h_mask=None, Tensor? keep_h=None, Tensor? dpre=None, bool sink=False) "
        "-> (Tensor, Tensor, Tensor, Tensor)");
  // no tensor argument: catch-all kernels (every dispatch key)
  m.def("workspace(int[] size, ScalarType dtype) -> Tensor", &workspace_op);
  m.def("release_workspaces() -> int", &release_workspaces);
}

TORCH_LIBRARY_IMPL(rnnlab_fused, CPU, m) {
  m.impl("lstm_forward", &lstm_forward);
  m.impl("lstm_backward", &lstm_backward);
  m.impl("lstm_infer", &lstm_infer);
  m.impl("lstm_sample", &lstm_sample);
  m.impl("gru_forward", &gru_forward);
  m.impl("gru_backward", &gru_backward);
  m.impl("gru_infer", &gru_infer);
  m.impl("rnn_forward", &rnn_forward);
  m.impl("rnn_backward", &rnn_backward);
}
