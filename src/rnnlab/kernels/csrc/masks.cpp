// Random 0/1 masks for zoneout, drawn in C++ (see rnnlab.layers.bernoulli_mask).
//
// Why: torch's CPU generator (mt19937 behind torch.rand / torch.randint) costs ~3-8 ns per value, and zoneout
// needs a fresh (T, B, H) mask per state and forward; at small sizes drawing them was 15-20% of an LSTM layer's
// forward + backward. Here xoshiro256** (Blackman & Vigna 2018, "Scrambled linear pseudorandom number
// generators"), seeded through splitmix64 from one 64-bit value that the caller draws from torch's generator (so
// torch.manual_seed still fixes every mask), gives 64 random bits per ~1 ns; each element takes a 16-bit lane.
// P(mask = 1) = round(p * 2^16) / 2^16, as the pure-PyTorch fallback in layers.py.
#include "common.h"

namespace {

using namespace rnnlab_kernels;

inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

inline uint64_t splitmix64(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

struct Xoshiro256 {
  uint64_t s[4];
  explicit Xoshiro256(uint64_t seed) {
    for (auto& word : s) word = splitmix64(seed);
  }
  uint64_t next() {
    const uint64_t result = rotl(s[1] * 5, 7) * 9;
    const uint64_t t = s[1] << 17;
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
  Xoshiro256 rng(seed);
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    const uint64_t bits = rng.next();
    for (int lane = 0; lane < 4; ++lane)
      out[i + lane] = ((bits >> (16 * lane)) & 0xffff) < threshold ? T(1) : T(0);
  }
  if (i < n) {
    const uint64_t bits = rng.next();
    for (int lane = 0; i < n; ++i, ++lane) out[i] = ((bits >> (16 * lane)) & 0xffff) < threshold ? T(1) : T(0);
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
