// Shared pieces of rnnlab's compiled step loops: row-major BLAS wrappers, the per-step GEMM with MKL's packed
// weights, vectorizable activations, the variable-length helpers and chunked input projections. Every kernel
// file (fused.cpp: torch's cells; the variant files) includes it; everything here has internal linkage, except
// `workspace`, which is declared here and defined once in fused.cpp (one pool of buffers for all the files).
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <dlfcn.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <tuple>
#include <type_traits>
#include <vector>

extern "C" {
void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k, const float* alpha,
            const float* a, const int* lda, const float* b, const int* ldb, const float* beta, float* c,
            const int* ldc);
void dgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k, const double* alpha,
            const double* a, const int* lda, const double* b, const int* ldb, const double* beta, double* c,
            const int* ldc);
}

namespace rnnlab_kernels {

// An uninitialised tensor for a buffer an op allocates (an output, a saved tensor, a gradient): one of 4 MiB or more
// comes from the pool of workspaces, which keeps such buffers between calls instead of page-faulting them in anew.
// Defined once, in fused.cpp (see its workspaces), for every kernel file.
at::Tensor workspace(at::IntArrayRef sizes, const at::TensorOptions& options);

namespace {

using at::Tensor;

// ---- BLAS, row-major ------------------------------------------------------------------------------------------

inline void blas(char ta, char tb, int m, int n, int k, float beta, const float* a, int lda, const float* b, int ldb,
                 float* c, int ldc) {
  const float one = 1.0f;
  sgemm_(&ta, &tb, &m, &n, &k, &one, a, &lda, b, &ldb, &beta, c, &ldc);
}
inline void blas(char ta, char tb, int m, int n, int k, double beta, const double* a, int lda, const double* b,
                 int ldb, double* c, int ldc) {
  const double one = 1.0;
  dgemm_(&ta, &tb, &m, &n, &k, &one, a, &lda, b, &ldb, &beta, c, &ldc);
}

// ---- products with few rows: the per-step GEMM at B = 1 (generation, S3) ------------------------------------

typedef float V8f __attribute__((vector_size(32)));  // 8 floats: one AVX2 register (two SSE ones on `base`)

// An unaligned load or store of a vector of floats (V8f here, V16f in layernorm.cpp): memcpy, which gcc turns into
// one vmovups.
template <typename V>
inline V loadu(const float* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}
template <typename V>
inline void storeu(float* p, V v) {
  std::memcpy(p, &v, sizeof(V));
}
inline float hsum8(V8f v) {
  typedef float V4f __attribute__((vector_size(16)));
  const V4f a = __builtin_shufflevector(v, v, 0, 1, 2, 3) + __builtin_shufflevector(v, v, 4, 5, 6, 7);
  return (a[0] + a[2]) + (a[1] + a[3]);
}

// A step's product with m <= kFewRows rows is a matrix-vector product per row, and bound by reading W once (4 MB
// for LSTM(64, 512)'s W_hh). MKL's sgemm reads it at 25-33 GB/s on a Zen 3 even when W sits in L2 (its code path
// on AMD CPUs is not its AVX2 one): LSTM(64, 512) at B=1 spent ~210 of its ~260 us per step there. These loops
// stream W once with 8-wide FMAs, ~45-55 GB/s there from L3; in panels (W's blocks laid out in the order the loop
// reads them: one sequential stream instead of R) ~55-65 GB/s. Above kFewRows rows a register-blocked GEMM
// (MKL's) wins.
constexpr int kFewRows = 4;

// The sums of R accumulators, out[q] = sum of the lanes of s[q]: for R = 4 three shuffle-adds (the lane-by-lane
// sums cost as much as a 512-long dot product's loop).
template <int R>
inline void hsums(const V8f* s, float* out) {
  if constexpr (R == 4) {
    auto hadd = [](V8f x, V8f y) {  // [x0+x1, x2+x3, y0+y1, y2+y3, x4+x5, x6+x7, y4+y5, y6+y7]
      return __builtin_shufflevector(x, y, 0, 2, 8, 10, 4, 6, 12, 14) +
             __builtin_shufflevector(x, y, 1, 3, 9, 11, 5, 7, 13, 15);
    };
    const V8f t = hadd(hadd(s[0], s[1]), hadd(s[2], s[3]));  // lane q: s[q]'s low half; lane q+4: its high half
    for (int q = 0; q < 4; ++q) out[q] = t[q] + t[q + 4];
  } else {
    for (int q = 0; q < R; ++q) out[q] = hsum8(s[q]);
  }
}

// Where the loops below read W: a block of R rows (nt) or 8R columns (nn), in place or from panels.
//   nt, W (n x k): row r + q, floats j..j+7 at w + (r + q) k + j; panel: at P + ((r / R) k8 + j) R + 8 q, with
//     k8 = k rounded down to 8 (the rest of each row, k - k8 floats, is read in place).
//   nn, W (k x n): row q, columns j..j+8R-1 at w + q n + j; panel: at P + (j / 8R) k 8R + q 8R.
struct FewRowsW {
  const float* w;       // W as stored
  const float* panels;  // or nullptr
};

// C rows [0, M) columns [n0, n1) = beta C + A W^T, W (n x k) row-major: each output is the dot product of a row
// of W with a row of A. R rows of W at a time against all M rows of A (M * R accumulators, W read once).
template <int M, int R>
inline void few_rows_nt(int n0, int n1, int k, const float* __restrict a, FewRowsW W, float beta,
                        float* __restrict c, int ldc) {
  const int k8 = k & ~7;
  int r = n0;
  for (; r + R <= n1; r += R) {
    const float* wr = W.w + static_cast<int64_t>(r) * k;
    const float* pr = W.panels ? W.panels + static_cast<int64_t>(r) * k8 : nullptr;
    V8f s[M][R] = {};
    for (int j = 0; j < k8; j += 8) {
      V8f x[M];
      for (int b = 0; b < M; ++b) x[b] = loadu<V8f>(a + static_cast<int64_t>(b) * k + j);
      for (int q = 0; q < R; ++q) {
        const V8f wq = loadu<V8f>(pr ? pr + static_cast<int64_t>(j) * R + 8 * q : wr + static_cast<int64_t>(q) * k + j);
        for (int b = 0; b < M; ++b) s[b][q] += x[b] * wq;
      }
    }
    for (int b = 0; b < M; ++b) {
      float d[R];
      hsums<R>(s[b], d);
      const float* ab = a + static_cast<int64_t>(b) * k;
      float* cb = c + static_cast<int64_t>(b) * ldc + r;
      for (int q = 0; q < R; ++q) {
        for (int j = k8; j < k; ++j) d[q] += ab[j] * wr[static_cast<int64_t>(q) * k + j];
        cb[q] = beta == 0.0f ? d[q] : beta * cb[q] + d[q];
      }
    }
  }
  if (r < n1) few_rows_nt<M, 1>(r, n1, k, a, {W.w, nullptr}, beta, c, ldc);
}

// C rows [0, M) columns [n0, n1) = beta C + A W, W (k x n) row-major: each row of C is a sum of the rows of W
// weighted by a row of A, 8 * V columns at a time for all M rows (M * V accumulators, W read once).
template <int M, int V>
inline void few_rows_nn(int n0, int n1, int n, int k, const float* __restrict a, FewRowsW W, float beta,
                        float* __restrict c, int ldc) {
  constexpr int NB = 8 * V;
  int j = n0;
  for (; j + NB <= n1; j += NB) {
    const float* pj = W.panels ? W.panels + static_cast<int64_t>(j) * k : nullptr;
    V8f s[M][V] = {};
    for (int q = 0; q < k; ++q) {
      const float* wq = pj ? pj + static_cast<int64_t>(q) * NB : W.w + static_cast<int64_t>(q) * n + j;
      V8f x[M];
      for (int b = 0; b < M; ++b) x[b] = V8f{} + a[static_cast<int64_t>(b) * k + q];
      for (int v = 0; v < V; ++v) {
        const V8f wv = loadu<V8f>(wq + 8 * v);
        for (int b = 0; b < M; ++b) s[b][v] += x[b] * wv;
      }
    }
    for (int b = 0; b < M; ++b)
      for (int v = 0; v < V; ++v) {
        float* cb = c + static_cast<int64_t>(b) * ldc + j + 8 * v;
        storeu(cb, beta == 0.0f ? s[b][v] : s[b][v] + beta * loadu<V8f>(cb));
      }
  }
  for (; j < n1; ++j)
    for (int b = 0; b < M; ++b) {
      float d = 0.0f;
      for (int q = 0; q < k; ++q) d += a[static_cast<int64_t>(b) * k + q] * W.w[static_cast<int64_t>(q) * n + j];
      float* cb = c + static_cast<int64_t>(b) * ldc + j;
      *cb = beta == 0.0f ? d : beta * *cb + d;
    }
}

// The block of W (rows for nt, columns / 8 for nn) the loops take at a time for M rows of A: at most 8
// accumulators (AVX2 has 16 vector registers).
constexpr int few_rows_block(int M) { return M == 1 ? 4 : (8 / M >= 4 ? 4 : 2); }

template <int M>
inline void few_rows_m(bool trans, int n0, int n1, int n, int k, const float* a, FewRowsW W, float beta, float* c) {
  constexpr int R = few_rows_block(M);
  if (trans) few_rows_nt<M, R>(n0, n1, k, a, W, beta, c, n);
  else few_rows_nn<M, R>(n0, n1, n, k, a, W, beta, c, n);
}

// C (m x n) = beta C + A op(W) for 1 <= m <= kFewRows (op(W) = W^T when trans), over all n columns, split between
// torch's threads in blocks of 32 columns when W is large enough to pay for the fork (each thread reads its own
// part of W). `panels`: few_rows_panels(trans, m, n, k, w), or nullptr to read W in place.
inline void few_rows(bool trans, int m, int n, int k, const float* a, const float* w, float beta, float* c,
                     const float* panels = nullptr) {
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 16) / (32 * static_cast<int64_t>(std::max(1, k))));
  at::parallel_for(0, (n + 31) / 32, grain, [&](int64_t lo, int64_t hi) {
    const int n0 = static_cast<int>(lo) * 32, n1 = std::min(n, static_cast<int>(hi) * 32);
    const FewRowsW W{w, panels};
    switch (m) {
      case 1: return few_rows_m<1>(trans, n0, n1, n, k, a, W, beta, c);
      case 2: return few_rows_m<2>(trans, n0, n1, n, k, a, W, beta, c);
      case 3: return few_rows_m<3>(trans, n0, n1, n, k, a, W, beta, c);
      default: return few_rows_m<4>(trans, n0, n1, n, k, a, W, beta, c);
    }
  });
}

// W in the panels few_rows reads for m rows (see FewRowsW); rows or columns past the last whole block are read in
// place and left out.
inline std::vector<float> few_rows_panels(bool trans, int m, int n, int k, const float* w) {
  const int R = few_rows_block(std::min(m, kFewRows));
  std::vector<float> p;
  if (trans) {
    const int k8 = k & ~7, blocks = n / R;
    p.resize(static_cast<size_t>(blocks) * R * k8);
    for (int blk = 0; blk < blocks; ++blk)
      for (int j = 0; j < k8; j += 8)
        for (int q = 0; q < R; ++q)
          std::memcpy(p.data() + (static_cast<int64_t>(blk) * R * k8 + static_cast<int64_t>(j) * R + 8 * q),
                      w + static_cast<int64_t>(blk * R + q) * k + j, sizeof(float) * 8);
  } else {
    const int NB = 8 * R, blocks = n / NB;
    p.resize(static_cast<size_t>(blocks) * NB * k);
    for (int blk = 0; blk < blocks; ++blk)
      for (int q = 0; q < k; ++q)
        std::memcpy(p.data() + (static_cast<int64_t>(blk) * NB * k + static_cast<int64_t>(q) * NB),
                    w + static_cast<int64_t>(q) * n + static_cast<int64_t>(blk) * NB, sizeof(float) * NB);
  }
  return p;
}

// ---- products with more rows: a blocked GEMM over W in panels --------------------------------------------------

// A step's product C (m x n) = beta C + A (m x k) op(W) with W fixed for the sequence, as a BLIS-style loop: W is
// laid out once per sequence in panels of kPanel columns of op(W) (k x kPanel each, row by row), A once per product
// in blocks of 6 rows (column by column), and a 6 x kPanel tile of C is held in 12 vector registers while one
// panel passes over it (12 FMAs per 2 loads of W and 6 broadcasts of A). On the Zen 3 of docs/performance.md it runs
// at 85-95 GFLOP/s at the step shapes of S1, S5 and their backward (MKL's sgemm: 50-74; the GEMM peak there is
// ~92), one thread, same machine.
constexpr int kPanel = 16;   // two 8-float vectors
constexpr int kTileRows = 6;
// Above this many rows MKL's sgemm was faster on the same Zen 3 (128 x 2048 x 64: 61 against 68 GFLOP/s; 256 x 1024
// x 256: 63 against 76): A no longer stays in L1 while a panel passes over it.
constexpr int kPanelRows = 64;

// The rows of the tile that starts with `rest` rows left: whole tiles of kTileRows, except that the last two tiles
// share 7-11 rows (4+3, 4+4, 5+4, 5+5, 6+5), so that no tile but a lone one has 1-2 rows. A tile of r rows keeps
// 2r accumulators in flight; 2 rows (4 chains of FMAs) would leave the FMA units half idle. 32 rows: 6,6,6,6,4,4
// instead of 6,6,6,6,6,2.
constexpr int tile_rows(int rest) {
  return rest <= kTileRows ? rest : rest >= 2 * kTileRows ? kTileRows : rest - rest / 2;
}

// C rows [0, MR) columns [0, cols) (cols <= kPanel; row stride ldc) = beta C + A P, A packed column by column
// (a[k * MR + r]), P one panel.
template <int MR>
inline void panel_tile(int K, const float* __restrict a, const float* __restrict p, float beta, float* __restrict c,
                       int ldc, int cols) {
  V8f acc[MR][2] = {};
  for (int k = 0; k < K; ++k) {
    const float* pk = p + static_cast<int64_t>(k) * kPanel;
    const V8f w0 = loadu<V8f>(pk), w1 = loadu<V8f>(pk + 8);
    for (int r = 0; r < MR; ++r) {
      const float v = a[static_cast<int64_t>(k) * MR + r];
      const V8f x = {v, v, v, v, v, v, v, v};  // one broadcast (V8f{} + v would add a zero first)
      acc[r][0] += x * w0;
      acc[r][1] += x * w1;
    }
  }
  for (int r = 0; r < MR; ++r) {
    float* cr = c + static_cast<int64_t>(r) * ldc;
    if (cols == kPanel) {
      storeu(cr, beta == 0.0f ? acc[r][0] : acc[r][0] + beta * loadu<V8f>(cr));
      storeu(cr + 8, beta == 0.0f ? acc[r][1] : acc[r][1] + beta * loadu<V8f>(cr + 8));
    } else {  // the last panel of an n that is not a multiple of kPanel (its columns past n are zero)
      float tile[kPanel];
      storeu(tile, acc[r][0]);
      storeu(tile + 8, acc[r][1]);
      for (int j = 0; j < cols; ++j) cr[j] = beta == 0.0f ? tile[j] : tile[j] + beta * cr[j];
    }
  }
}

// op(W) in panels: panel q holds columns [q kPanel, (q + 1) kPanel) of op(W) (k x n), row by row, zero past n.
// op(W) = W^T for W stored (n x k) (`trans`), else W stored (k x n).
inline std::vector<float> gemm_panels(bool trans, int n, int k, const float* w) {
  const int panels = (n + kPanel - 1) / kPanel;
  std::vector<float> p(static_cast<size_t>(panels) * kPanel * k, 0.0f);
  for (int q = 0; q < panels; ++q) {
    float* pq = p.data() + static_cast<int64_t>(q) * kPanel * k;
    const int cols = std::min(kPanel, n - q * kPanel);
    for (int j = 0; j < cols; ++j) {
      const int col = q * kPanel + j;
      for (int kk = 0; kk < k; ++kk)
        pq[static_cast<int64_t>(kk) * kPanel + j] = trans ? w[static_cast<int64_t>(col) * k + kk]
                                                          : w[static_cast<int64_t>(kk) * n + col];
    }
  }
  return p;
}

// C (m x n) = beta C + A (m x k) op(W), op(W) in gemm_panels; `scratch` holds m * k floats (A in blocks of rows).
// The panels are split between torch's threads when the product is large enough (inside batch_slices each
// thread runs its own product whole).
inline void panel_gemm(int m, int n, int k, const float* a, const float* panels, float beta, float* c,
                       float* scratch) {
  for (int r0 = 0, mr; r0 < m; r0 += mr) {  // A in blocks of tile_rows rows, each column by column
    mr = tile_rows(m - r0);
    float* d = scratch + static_cast<int64_t>(r0) * k;
    for (int kk = 0; kk < k; ++kk)
      for (int r = 0; r < mr; ++r) d[static_cast<int64_t>(kk) * mr + r] = a[static_cast<int64_t>(r0 + r) * k + kk];
  }
  const int panels_n = (n + kPanel - 1) / kPanel;
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 18) / std::max<int64_t>(1, int64_t{m} * k * kPanel));
  at::parallel_for(0, panels_n, grain, [&](int64_t lo, int64_t hi) {
    for (int64_t q = lo; q < hi; ++q) {
      const float* p = panels + q * kPanel * k;
      const int j = static_cast<int>(q) * kPanel, cols = std::min(kPanel, n - j);
      for (int r0 = 0, mr; r0 < m; r0 += mr) {
        mr = tile_rows(m - r0);
        const float* ar = scratch + static_cast<int64_t>(r0) * k;
        float* cr = c + static_cast<int64_t>(r0) * n + j;
        switch (mr) {
          case 6: panel_tile<6>(k, ar, p, beta, cr, n, cols); break;
          case 5: panel_tile<5>(k, ar, p, beta, cr, n, cols); break;
          case 4: panel_tile<4>(k, ar, p, beta, cr, n, cols); break;
          case 3: panel_tile<3>(k, ar, p, beta, cr, n, cols); break;
          case 2: panel_tile<2>(k, ar, p, beta, cr, n, cols); break;
          default: panel_tile<1>(k, ar, p, beta, cr, n, cols); break;
        }
      }
    }
  });
}

// C (m x n) = beta * C + A (m x k) @ B^T, B (n x k). Row-major C is column-major C^T = B A^T. A float product
// with few rows takes few_rows.
template <typename T>
inline void mm_nt(int m, int n, int k, const T* A, const T* B, T beta, T* C) {
  if constexpr (std::is_same_v<T, float>) {
    if (m >= 1 && m <= kFewRows) return few_rows(true, m, n, k, A, B, beta, C);
  }
  blas('T', 'N', n, m, k, beta, B, k, A, k, C, n);
}

// C (m x n) = beta * C + A (m x k) @ B, B (k x n).
template <typename T>
inline void mm_nn(int m, int n, int k, const T* A, const T* B, T beta, T* C) {
  if constexpr (std::is_same_v<T, float>) {
    if (m >= 1 && m <= kFewRows) return few_rows(false, m, n, k, A, B, beta, C);
  }
  blas('N', 'N', n, m, k, beta, B, n, A, k, C, n);
}

// MKL's packed GEMM (cblas_sgemm_pack / cblas_sgemm_compute): a step's GEMM multiplies a small (B x K) state by
// the same weight matrix T times, and a plain sgemm re-packs that matrix into MKL's internal layout on every call
// (for B = 64, H = 256 the packing costs about as much as the product). Packing once per sequence removes it;
// oneDNN's RNN primitive does the same. Looked up at run time, so a torch built without MKL still works.
using PackGetSize = size_t (*)(int identifier, int m, int n, int k);
using Pack = void (*)(int layout, int identifier, int trans, int m, int n, int k, float alpha, const float* src,
                      int ld, float* dest);
using Compute = void (*)(int layout, int transa, int transb, int m, int n, int k, const float* a, int lda,
                         const float* b, int ldb, float beta, float* c, int ldc);
// Weight matrices with fewer elements use plain sgemm; RNNLAB_FUSED_PACK_MIN overrides it (for measurements and
// the tests of the packed path: set, it also drops the rule on the rows below).
int64_t min_packed_weights() {
  static const int64_t value = [] {
    const char* env = std::getenv("RNNLAB_FUSED_PACK_MIN");
    return env ? std::atoll(env) : int64_t{128 * 1024};
  }();
  return value;
}
// Packing W costs about as much as a product with ~2,000 rows (a 2048 x 512 W_hh: ~1.8 ms on a Zen 3), so a
// sequence packs only when its products multiply at least that many rows by W (T * B, forward or backward).
// Measured, packed / plain per call of LSTM(64, 512), 1 thread (docs/performance.md): T=1 B=1 forward 4.9x,
// T=8 B=1 2.2x, T=32 B=32 0.96x, T=128 B=32 0.94x. Generation (T=1) and S3/S4 never pack; S1, S2, S5 do.
int64_t min_packed_rows() {
  static const int64_t value = std::getenv("RNNLAB_FUSED_PACK_MIN") ? 0 : 2048;
  return value;
}
constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112, kPacked = 151, kBMatrix = 162;

struct PackedApi {
  PackGetSize get_size = nullptr;
  Pack pack = nullptr;
  Compute compute = nullptr;
  PackedApi() {
    get_size = reinterpret_cast<PackGetSize>(dlsym(RTLD_DEFAULT, "cblas_sgemm_pack_get_size"));
    pack = reinterpret_cast<Pack>(dlsym(RTLD_DEFAULT, "cblas_sgemm_pack"));
    compute = reinterpret_cast<Compute>(dlsym(RTLD_DEFAULT, "cblas_sgemm_compute"));
    if (!get_size || !pack || !compute) get_size = nullptr;
  }
  bool ok() const { return get_size != nullptr; }
};

const PackedApi& packed_api() {
  static const PackedApi api;
  return api;
}

// Whether panel_gemm (8-float vectors) runs a step's product of 5 to kPanelRows rows instead of MKL's sgemm.
// Builds without AVX-512: yes (measured on the Zen 3 of docs/performance.md, see panel_gemm). AVX-512 builds: on
// AMD CPUs only. MKL takes its AVX2 "zen" kernels on any AMD CPU (perf on the Zen 3: mkl_blas_def_sgemm_kernel_0_zen;
// its AVX-512 kernels dispatch on Intel CPUs), the ones panel_gemm beats, and Zen 4 does as many float FMAs per
// cycle with 8-float vectors as with 16-float ones; this was reasoned, not measured on a Zen 4. On Intel's AVX-512
// CPUs (two 16-float FMA units on a Sapphire Rapids) MKL's AVX-512 kernels do twice the work per instruction of
// this loop, so MKL stays there. RNNLAB_PANEL_GEMM=0 or 1 overrides the choice (to measure it on a new CPU, and
// for `make test-isa`'s run of MKL's packed product at every size).
inline bool panels_beat_mkl() {
  static const bool value = [] {
    const char* env = std::getenv("RNNLAB_PANEL_GEMM");
    if (env != nullptr && *env != '\0') return std::strcmp(env, "0") != 0;
#if defined(__AVX512F__)
    __builtin_cpu_init();
    return __builtin_cpu_is("amd") != 0;
#else
    return true;
#endif
  }();
  return value;
}

// The per-step product C (m x n) = beta * C + A (m x k) @ op(W) with W fixed for the whole sequence:
// op(W) = W^T for W stored (n x k) (`trans`, the forward's h W_hh^T), else W stored (k x n) (the backward's dG W_hh).
template <typename T>
class StepGemm {
 public:
  StepGemm(const T* w, bool trans, int m, int n, int k, int /*steps*/) : w_(w), trans_(trans), m_(m), n_(n), k_(k) {}
  void operator()(const T* a, T beta, T* c) const {
    if (trans_) mm_nt<T>(m_, n_, k_, a, w_, beta, c);
    else mm_nn<T>(m_, n_, k_, a, w_, beta, c);
  }

 private:
  const T* w_;
  bool trans_;
  int m_, n_, k_;
};

template <>
class StepGemm<float> {
 public:
  StepGemm(const float* w, bool trans, int m, int n, int k, int steps) : w_(w), trans_(trans), m_(m), n_(n), k_(k) {
    if (w == nullptr) return;  // no W: an unused product (e.g. no projection)
    if (m <= kFewRows) {
      // few_rows runs it; panels pay for their one pass over W from the second product on (they make each later
      // read of W ~20% faster, see few_rows)
      if (steps >= 2) few_panels_ = few_rows_panels(trans, m, n, k, w);
      return;
    }
    // panel_gemm for every sequence of two steps or more with at most kPanelRows rows, where it beats MKL
    if (steps >= 2 && m <= kPanelRows && panels_beat_mkl()) {
      panels_ = gemm_panels(trans, n, k, w);
      scratch_.resize(static_cast<size_t>(m) * k);
      return;
    }
    const PackedApi& api = packed_api();
    if (!api.ok()) return;
    // Measured (benchmarks/, 1 thread): packing wins from W of 768x256 up (1.2-1.3x on the forward at H=256)
    // and loses below 512x128 (2x slower at H=64: the packed call's fixed cost dominates tiny products).
    if (static_cast<int64_t>(n) * k < min_packed_weights()) return;
    if (static_cast<int64_t>(steps) * m < min_packed_rows()) return;  // too few products to pay for the packing
    packed_.resize(api.get_size(kBMatrix, m, n, k) / sizeof(float) + 1);
    api.pack(kRowMajor, kBMatrix, trans ? kTrans : kNoTrans, m, n, k, 1.0f, w, trans ? k : n, packed_.data());
  }
  void operator()(const float* a, float beta, float* c) const {
    if (m_ <= kFewRows) {
      few_rows(trans_, m_, n_, k_, a, w_, beta, c, few_panels_.empty() ? nullptr : few_panels_.data());
      return;
    }
    if (!panels_.empty()) {
      panel_gemm(m_, n_, k_, a, panels_.data(), beta, c, scratch_.data());
      return;
    }
    if (packed_.empty()) {
      if (trans_) mm_nt<float>(m_, n_, k_, a, w_, beta, c);
      else mm_nn<float>(m_, n_, k_, a, w_, beta, c);
      return;
    }
    packed_api().compute(kRowMajor, kNoTrans, kPacked, m_, n_, k_, a, k_, packed_.data(), n_, beta, c, n_);
  }

 private:
  const float* w_;
  bool trans_;
  int m_, n_, k_;
  std::vector<float> packed_;
  std::vector<float> few_panels_;
  std::vector<float> panels_;            // gemm_panels
  mutable std::vector<float> scratch_;   // panel_gemm's A; each thread has its own StepGemm
};

// ---- activations ----------------------------------------------------------------------------------------------

// float: exp by range reduction e^x = 2^n e^r, |r| <= ln2/2 (Cody-Waite split of ln2), and Cephes' degree-6
// polynomial (relative error ~1e-7). Written branch-free and call-free so that gcc vectorizes the gate loops
// (libm's expf is a call and blocks vectorization). tanh(x) = 2 sigmoid(2x) - 1 (absolute error ~1e-7).
inline float exp_approx(float x) {
  x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  const float n = __builtin_floorf(x * 1.44269504088896341f + 0.5f);
  float r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  float p = 1.9875691500E-4f;
  p = p * r + 1.3981999507E-3f;
  p = p * r + 8.3334519073E-3f;
  p = p * r + 4.1665795894E-2f;
  p = p * r + 1.6666665459E-1f;
  p = p * r + 5.0000001201E-1f;
  p = p * r * r + r + 1.0f;
  const uint32_t bits = static_cast<uint32_t>(static_cast<int32_t>(n) + 127) << 23;  // 2^n
  return p * __builtin_bit_cast(float, bits);
}

template <typename T>
struct Act;
template <>
struct Act<float> {
  static inline float sigmoid(float x) { return 1.0f / (1.0f + exp_approx(-x)); }
  static inline float tanh(float x) { return 2.0f / (1.0f + exp_approx(-2.0f * x)) - 1.0f; }
};
// double is the gradcheck dtype: libm's exact functions, speed is secondary.
template <>
struct Act<double> {
  static inline double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }
  static inline double tanh(double x) { return std::tanh(x); }
};

inline bool is_valid(const int64_t* len, int t, int b) { return len == nullptr || t < len[b]; }

// Index of the step processed just before step t (its state is step t's h_{t-1}), or -1 for the initial state.
// In reverse a row whose step t+1 is padding started from the initial state at its own last step.
inline int prev_step(const int64_t* len, bool reverse, int T, int t, int b) {
  if (!reverse) return t - 1;
  return (t + 1 < T && is_valid(len, t + 1, b)) ? t + 1 : -1;
}

// db += the sum of the B rows of dg (B x G). Done per step while dg is still in cache, instead of one more pass
// over the whole (T, B, G) gradient afterwards. Padding rows of dg are zero.
template <typename T>
inline void add_rows(const T* __restrict dg, int B, int G, T* __restrict db) {
  for (int b = 0; b < B; ++b)
    for (int k = 0; k < G; ++k) db[k] += dg[static_cast<int64_t>(b) * G + k];
}

const int64_t* lengths_ptr(const std::optional<Tensor>& lengths) {
  return lengths.has_value() && lengths->defined() ? lengths->data_ptr<int64_t>() : nullptr;
}

// ---- the layer options (recurrent dropout, zoneout), shared by every cell's loops ----------------------------

// The data of an optional tensor argument (an option that is off is None, or an undefined tensor), or nullptr.
template <typename T>
const T* opt_ptr(const std::optional<Tensor>& t) {
  return t.has_value() && t->defined() ? t->data_ptr<T>() : nullptr;
}

// s <- k * old + (1 - k) * s: one row's zoneout update.
template <typename T>
inline void zoneout_row(T* __restrict s, const T* __restrict old, const T* __restrict k, int n) {
  for (int j = 0; j < n; ++j) s[j] = k[j] * old[j] + (T(1) - k[j]) * s[j];
}

// out = a * m over n elements (the masked state that enters W_hh).
template <typename T>
inline void mul_into(const T* __restrict a, const T* __restrict m, T* __restrict out, int64_t n) {
  for (int64_t j = 0; j < n; ++j) out[j] = a[j] * m[j];
}

// The recurrent input of a step: h, or h * mask (recurrent dropout) in a scratch copy.
template <typename T>
inline const T* masked_h(const T* h, const T* mask, int64_t n, T* scratch) {
  if (mask == nullptr) return h;
  mul_into(h, mask, scratch, n);
  return scratch;
}

// The keep row (H) of zoneout tensor k (T, B, H) at row tb = t * B + b, or a row of zeros when that state has no
// zoneout (k = 0: s = 0 * old + 1 * new, the plain update), so that a loop with zoneout on one state of two
// treats both alike.
template <typename T>
inline const T* keep_row(const T* k, int64_t tb, int H, const std::vector<T>& zeros) {
  return k ? k + tb * H : zeros.data();
}

// dh += (dG W_hh) * mask for recurrent dropout, else dh += dG W_hh: the recurrent part of dL/dh_{t-1}.
template <typename T>
inline void recurrent_grad(const StepGemm<T>& rec, const T* dg, const T* mask, T* scratch, int64_t n, T* dh) {
  if (mask == nullptr) {
    rec(dg, T(1), dh);
    return;
  }
  rec(dg, T(0), scratch);
  for (int64_t j = 0; j < n; ++j) dh[j] += scratch[j] * mask[j];
}

// ---- the batch's sequences in parallel ----------------------------------------------------------------------------

// The rows of a batch are independent sequences, so with more than one thread each thread runs the whole time loop
// on its own slice of rows [b0, b1) of the B, f(b0, b1), with no synchronisation between steps: one fork per
// sequence instead of one per step's product (MKL's packed product does not split a 32-row step between threads,
// and the gate loops never did). A slice has at least kSliceRows rows: with fewer each thread's product would be a
// few-rows one reading all of W, where one sequence's few_rows splits W's columns between the threads instead.
// One thread (or a call inside a parallel region) runs f(0, B).
constexpr int kSliceRows = kFewRows + 1;

template <typename F>
inline void batch_slices(int B, F&& f) {
  const int n = std::min(at::get_num_threads(), B / kSliceRows);
  if (n <= 1 || at::in_parallel_region()) return f(0, B);
  at::parallel_for(0, n, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) f(static_cast<int>(i * B / n), static_cast<int>((i + 1) * B / n));
  });
}

// p + b0 * F (the row b0 of a (B, F) or (T, B, F) buffer), or nullptr for an absent one.
template <typename T>
inline T* rows_from(T* p, int64_t b0, int F) {
  return p ? p + b0 * F : nullptr;
}

// batch_slices for a backward that also sums over the rows into N bias gradients db[i] (G,): f(b0, b1, sums) adds
// its rows into sums, which for the first slice are db themselves and for every other one zeros of its own, added
// to db in row order afterwards (the same sum for the same number of threads, whatever order they finish in).
template <typename T, size_t N, typename F>
inline void batch_slices(int B, const std::array<T*, N>& db, int G, F&& f) {
  std::vector<std::vector<T>> parts(B);
  batch_slices(B, [&](int b0, int b1) {
    std::array<T*, N> sums = db;
    if (b0 > 0) {
      parts[b0].assign(N * static_cast<size_t>(G), T(0));
      for (size_t i = 0; i < N; ++i) sums[i] = parts[b0].data() + i * G;
    }
    f(b0, b1, sums);
  });
  for (const std::vector<T>& part : parts)
    for (size_t i = 0; i < part.size(); ++i) db[i / G][i % G] += part[i];
}

// ---- inference: the input projection in cache-sized chunks --------------------------------------------------

// Training must keep every step's gates, so it projects all T steps at once. Inference needs them only until
// the step has run: projecting L steps at a time into one small reused buffer (about 1 MB) keeps it in cache
// and avoids allocating (and page-faulting) a (T, B, G) buffer. oneDNN's inference primitive does the same.
// A slice of the batch (rows b0 .. b0 + B of S, x pointing at row b0 of step 0, see batch_slices) projects each
// step's B rows with a product of its own (they are not contiguous across steps): a StepGemm over W_ih, so that
// a slice of 5-64 rows takes panel_gemm like the recurrent product.
template <typename T>
class InputChunks {
 public:
  InputChunks(const T* x, const T* wih, bool reverse, int Tn, int B, int I, int G, int S = 0)
      : x_(x), wih_(wih), reverse_(reverse), Tn_(Tn), B_(B), S_(S ? S : B), I_(I), G_(G),
        L_(std::max(1, std::min(Tn, (1 << 18) / std::max(1, B * G)))), buf_(static_cast<size_t>(L_) * B * G) {
    if (S_ != B_) step_.emplace(wih, true, B, G, I, Tn);
  }

  // The (B, G) projection x_t W_ih^T of step t, the s-th processed step.
  T* gates(int s, int t) {
    if (s % L_ == 0) {
      const int n = std::min(L_, Tn_ - s);
      base_ = reverse_ ? Tn_ - s - n : s;
      if (S_ == B_) {
        mm_nt<T>(n * B_, G_, I_, x_ + static_cast<int64_t>(base_) * B_ * I_, wih_, T(0), buf_.data());
      } else {
        for (int k = 0; k < n; ++k)
          (*step_)(x_ + static_cast<int64_t>(base_ + k) * S_ * I_, T(0),
                   buf_.data() + static_cast<int64_t>(k) * B_ * G_);
      }
    }
    return buf_.data() + static_cast<int64_t>(t - base_) * B_ * G_;
  }

 private:
  std::optional<StepGemm<T>> step_;  // a slice's per-step product

  const T* x_;
  const T* wih_;
  bool reverse_;
  int Tn_, B_, S_, I_, G_, L_;
  int base_ = 0;
  std::vector<T> buf_;
};

// Row sums in double over float or double rows (the layer norms' statistics and derivatives, the diagnostics'
// step norms), written with gcc/clang vector extensions because without -ffast-math gcc does not vectorize a sum
// (it may not reassociate): 8 doubles are one AVX-512 register (two or four on narrower ISAs).
typedef double V8d __attribute__((vector_size(64)));

// 8 floats to 8 doubles. gcc lowers __builtin_convertvector(V8f -> V8d) to two 128-bit converts and an insert
// even with AVX-512; the intrinsic is one vcvtps2pd (the double sums of the backward were its hottest loop).
inline V8d widen(V8f v) {
#if defined(__AVX512F__)
  return reinterpret_cast<V8d>(_mm512_cvtps_pd(reinterpret_cast<__m256>(v)));
#else
  return __builtin_convertvector(v, V8d);
#endif
}
inline V8d widen(V8d v) { return v; }

template <typename T>
inline V8d load8(const T* p);
template <>
inline V8d load8<float>(const float* p) {
  V8f v;
  std::memcpy(&v, p, sizeof(V8f));
  return widen(v);
}
template <>
inline V8d load8<double>(const double* p) {
  V8d v;
  std::memcpy(&v, p, sizeof(V8d));
  return v;
}

// The sum of the 8 lanes as a tree (halves added, three levels): the sequential lane-by-lane sum was a chain of
// 8 dependent adds, on the critical path of every row (it showed as the hottest line of the row statistics).
inline double hsum(V8d v) {
  typedef double V4d __attribute__((vector_size(32)));
  typedef double V2d __attribute__((vector_size(16)));
  const V4d a = __builtin_shufflevector(v, v, 0, 1, 2, 3) + __builtin_shufflevector(v, v, 4, 5, 6, 7);
  const V2d b = __builtin_shufflevector(a, a, 0, 1) + __builtin_shufflevector(a, a, 2, 3);
  return b[0] + b[1];
}

}  // namespace
}  // namespace rnnlab_kernels
