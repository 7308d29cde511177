// Random 0/1 masks for zoneout, drawn in C++ (see rnnlab.layers.bernoulli_mask).
//
// Why: torch's CPU generator (mt19937 behind torch.rand / torch.randint) costs ~3-8 ns per value, and zoneout
// needs a fresh (T, B, H) mask per state and forward; at small sizes drawing them was 15-20% of an LSTM layer's
// forward + backward. Here xoshiro256** (Blackman & Vigna 2018, "Scrambled linear pseudorandom number
// generators"), seeded through splitmix64 from one 64-bit value that the caller draws from torch's generator (so
// torch.manual_seed still fixes every mask), eight streams at once in vector lanes; each element takes a 16-bit
// lane of a 64-bit draw.
// P(mask = 1) = round(p * 2^16) / 2^16, as the fallback in kernels/masks.py.
#include "common.h"

namespace {

using namespace rnnlab_kernels;

inline uint64_t splitmix64(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

// kStreams xoshiro256** generators side by side, one per 64-bit vector lane (gcc/clang vector extensions), so
// that one step of all of them is a few vector instructions: 8 x 64 random bits = 32 mask elements per step. A
// single generator is a chain of dependent operations (~1.3 ns per element, measured: a third of what zoneout
// added to a small layer). The streams are seeded one after another from one splitmix64 sequence, as the
// authors recommend for xoshiro seeds. Element k of a block of 32 takes 16-bit lane k % 4 of stream k / 4.
constexpr int kStreams = 8;
typedef uint64_t V8u __attribute__((vector_size(8 * kStreams)));
typedef uint16_t V32h __attribute__((vector_size(8 * kStreams)));

inline V8u rotl(V8u x, int k) { return (x << k) | (x >> (64 - k)); }

struct Xoshiro256x8 {
  V8u s[4];
  explicit Xoshiro256x8(uint64_t seed) {
    for (int lane = 0; lane < kStreams; ++lane)
      for (auto& word : s) word[lane] = splitmix64(seed);
  }
  V8u next() {
    const V8u x = s[1] + (s[1] << 2);                    // s1 * 5
    const V8u r = rotl(x, 7);
    const V8u result = r + (r << 3);                       // * 9
    const V8u t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
  }
};

template <typename T>
void fill_mask(T* out, int64_t n, uint32_t threshold, uint64_t seed) {
  if (threshold == 0 || threshold >= 65536) {  // p = 0 or 1 exactly (65536 does not fit a 16-bit comparison)
    std::fill(out, out + n, threshold == 0 ? T(0) : T(1));
    return;
  }
  Xoshiro256x8 rng(seed);
  constexpr int kBlock = 4 * kStreams;                     // 32 elements per step
  const auto thr = static_cast<uint16_t>(threshold);
  int64_t i = 0;
  for (; i + kBlock <= n; i += kBlock) {
    const V8u draw = rng.next();
    V32h bits;
    std::memcpy(&bits, &draw, sizeof(bits));
    T* __restrict o = out + i;
    for (int k = 0; k < kBlock; ++k) o[k] = bits[k] < thr ? T(1) : T(0);
  }
  if (i < n) {                                             // the last, partial block
    const V8u draw = rng.next();
    V32h bits;
    std::memcpy(&bits, &draw, sizeof(bits));
    for (int k = 0; i + k < n; ++k) out[i + k] = bits[k] < thr ? T(1) : T(0);
  }
}

// A (n,) tensor of 1s (probability p) and 0s of `like`'s dtype (float32/float64) from the 64-bit `seed`.
Tensor bernoulli_mask(int64_t n, double p, int64_t seed, const Tensor& like) {
  TORCH_CHECK(p >= 0.0 && p <= 1.0, "rnnlab bernoulli_mask: p must be in [0, 1], got ", p);
  Tensor out = at::empty({n}, like.options());
  const auto threshold = static_cast<uint32_t>(std::llround(p * 65536.0));  // 0 .. 65536
  AT_DISPATCH_FLOATING_TYPES(like.scalar_type(), "rnnlab bernoulli_mask", [&] {
    fill_mask<scalar_t>(out.data_ptr<scalar_t>(), n, threshold, static_cast<uint64_t>(seed));
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(rnnlab_fused, m) {
  m.def("bernoulli_mask(int n, float p, int seed, Tensor like) -> Tensor");
}

TORCH_LIBRARY_IMPL(rnnlab_fused, CPU, m) { m.impl("bernoulli_mask", &bernoulli_mask); }
