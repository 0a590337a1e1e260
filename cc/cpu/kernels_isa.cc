// The CPU update loops, compiled once per instruction set.
//
// CMake builds this file several times with FUSEDOPT_ISA set to baseline,
// avx2 or avx512 and the matching -m flags; each build defines its own
// fusedopt::cpu::<isa>::Table(). The loops are plain C++ over __restrict
// pointers that the compiler vectorizes for the ISA at hand. All builds use
// -ffp-contract=off, so every ISA produces the same bits (Note [SIMD dispatch]).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "cc/cpu/kernels.h"
#include "cc/rules/registry.h"
#include "cc/rules/state_update.h"

#ifndef FUSEDOPT_ISA
#error "FUSEDOPT_ISA must be defined by the build (baseline, avx2 or avx512)"
#endif

#define FUSEDOPT_STR2(x) #x
#define FUSEDOPT_STR(x) FUSEDOPT_STR2(x)

namespace fusedopt {
namespace cpu {
namespace FUSEDOPT_ISA {
namespace {

template <typename M>
struct LocalCoeffs {
  M c[kMaxCoeffs];
  explicit LocalCoeffs(const Coeffs& h) {
    for (int k = 0; k < kMaxCoeffs; ++k) c[k] = static_cast<M>(h.c[k]);
  }
};

template <typename T>
T* SlotPtr(void* const* slots, int k, int count) {
  return k < count ? static_cast<T*>(slots[k]) : nullptr;
}

// One pass: each element of var, every slot and grad is read once and
// written once (grad only read).
template <typename Rule, typename T, int V, bool D, bool X>
void Elementwise(const Coeffs& hc, const GradXform& gx, void* var_p, void* const* slots,
                 const void* grad_p, int64_t begin, int64_t end) {
  using M = opmath_t<T>;
  constexpr int K = SlotsOf<Rule>(V);
  const LocalCoeffs<M> lc(hc);
  const M* c = lc.c;
  const M gscale = static_cast<M>(gx.scale);
  const M gclip = static_cast<M>(gx.clip_value);
  T* __restrict var = static_cast<T*>(var_p);
  const T* __restrict grad = static_cast<const T*>(grad_p);
  T* __restrict s0 = SlotPtr<T>(slots, 0, K);
  T* __restrict s1 = SlotPtr<T>(slots, 1, K);
  T* __restrict s2 = SlotPtr<T>(slots, 2, K);
  for (int64_t i = begin; i < end; ++i) {
    UpdateElement<Rule, V, D, X>(c, gscale, gclip, var, s0, s1, s2, grad, i);
  }
}

#if defined(FUSEDOPT_HAVE_SSE_RSQRT)
// The packet form of TF's Rsqrt on `n` floats in place, four at a time with
// the packed instruction (the same approximation as PacketRsqrt's scalar
// one on the same CPU), refined by Eigen's Newton step without FMA.
void PacketRsqrtBlock(float* y, int n) {
  const __m128 minus_half = _mm_set1_ps(-0.5f), minus_one = _mm_set1_ps(-1.0f);
  int i = 0;
  for (; i + 4 <= n; i += 4) {
    const __m128 a = _mm_loadu_ps(y + i);
    const __m128 y0 = _mm_rsqrt_ps(a);
    const __m128 r2 = _mm_mul_ps(a, y0);
    const __m128 half_r = _mm_mul_ps(y0, minus_half);
    const __m128 h = _mm_add_ps(_mm_mul_ps(r2, y0), minus_one);
    const __m128 inv = _mm_add_ps(_mm_mul_ps(half_r, h), y0);
    const __m128 nan = _mm_cmpunord_ps(inv, inv);
    _mm_storeu_ps(y + i, _mm_or_ps(_mm_and_ps(nan, y0), _mm_andnot_ps(nan, inv)));
  }
  for (; i < n; ++i) y[i] = PacketRsqrt(y[i]);
}

// Elementwise for a rule's kPacketRsqrt form (Note [TF rsqrt]) on float
// opmath, in blocks: a probe pass computes each element's y (storing
// nothing), the block's rsqrts are computed packed, then the update pass
// multiplies by them. Both passes vectorize; the block stays in L1.
template <typename Rule, typename T, int V, bool D, bool X>
void ElementwisePacketRsqrt(const Coeffs& hc, const GradXform& gx, void* var_p,
                            void* const* slots, const void* grad_p, int64_t begin, int64_t end) {
  using M = opmath_t<T>;
  static_assert(std::is_same_v<M, float>);
  constexpr int kProbe = WithRsqrtFormOf<Rule>(V, kProbeRsqrt);
  constexpr int kInjected = WithRsqrtFormOf<Rule>(V, kInjectedRsqrt);
  constexpr int K = SlotsOf<Rule>(V);
  constexpr int kBlock = 256;
  const LocalCoeffs<M> lc(hc);
  const M* c = lc.c;
  const M gscale = static_cast<M>(gx.scale);
  const M gclip = static_cast<M>(gx.clip_value);
  T* __restrict var = static_cast<T*>(var_p);
  const T* __restrict grad = static_cast<const T*>(grad_p);
  T* __restrict s0 = SlotPtr<T>(slots, 0, K);
  T* __restrict s1 = SlotPtr<T>(slots, 1, K);
  T* __restrict s2 = SlotPtr<T>(slots, 2, K);
  alignas(64) float y[kBlock];
  for (int64_t b = begin; b < end; b += kBlock) {
    const int n = static_cast<int>(std::min<int64_t>(kBlock, end - b));
    for (int j = 0; j < n; ++j) {
      M v, g;
      M s[kMaxSlots + 1] = {M(0), M(0), M(0), M(0)};
      LoadElement<Rule, V, D, X>(c, gscale, gclip, var, s0, s1, s2, grad, b + j, v, s, g);
      Rule::template Apply<kProbe>(c, v, s, g);
      y[j] = s[kRsqrtChannel];
    }
    PacketRsqrtBlock(y, n);
    for (int j = 0; j < n; ++j) {
      M v, g;
      M s[kMaxSlots + 1] = {M(0), M(0), M(0), y[j]};
      LoadElement<Rule, V, D, X>(c, gscale, gclip, var, s0, s1, s2, grad, b + j, v, s, g);
      Rule::template Apply<kInjected>(c, v, s, g);
      StoreElement<Rule, V>(var, s0, s1, s2, b + j, v, s);
    }
  }
}
#endif

// The loop for variant V of Rule: the blocked one for the packet rsqrt form
// on float opmath, the plain one otherwise.

template <typename Rule, typename T, int V, bool D, bool X>
constexpr ElementwiseFn LoopFor() {
#if defined(FUSEDOPT_HAVE_SSE_RSQRT)
  if constexpr (HasRsqrtForms<Rule>::value && std::is_same_v<opmath_t<T>, float>) {
    if constexpr (Rule::Variant::At(V).rsqrt == kPacketRsqrt) {
      return &ElementwisePacketRsqrt<Rule, T, V, D, X>;
    }
  }
#endif
  return &Elementwise<Rule, T, V, D, X>;
}

// Note [deterministic sums]: reductions use kLanes partial sums, element i
// going to lane i % kLanes of its chunk, added up in lane order. The order is
// fixed by the code, not by the vector width, so every ISA gives the same
// bits, and chunk sums are combined in chunk order by the caller.
constexpr int kLanes = 8;

template <typename T, bool D, bool X>
void LambPass1(const Coeffs& hc, const GradXform& gx, const void* var_p, void* const* slots,
               const void* grad_p, int64_t begin, int64_t end, double* w_sq, double* u_sq) {
  using M = opmath_t<T>;
  const LocalCoeffs<M> lc(hc);
  const M* c = lc.c;
  const M gscale = static_cast<M>(gx.scale);
  const M gclip = static_cast<M>(gx.clip_value);
  const T* __restrict var = static_cast<const T*>(var_p);
  const T* __restrict grad = static_cast<const T*>(grad_p);
  T* __restrict m = static_cast<T*>(slots[0]);
  T* __restrict v = static_cast<T*>(slots[1]);
  double wl[kLanes] = {0}, ul[kLanes] = {0};
  auto one = [&](int64_t i, int lane) {
    M x = Load(var[i]);
    if constexpr (D) x = Decay(c, x);
    M g = Load(grad[i]);
    if constexpr (X) g = TransformGrad(g, gscale, gclip);
    const M u = LambRule::Moments(c, m[i], v[i], g);
    wl[lane] += static_cast<double>(x) * static_cast<double>(x);
    ul[lane] += static_cast<double>(u) * static_cast<double>(u);
  };
  int64_t i = begin;
  for (; i + kLanes <= end; i += kLanes) {
    for (int l = 0; l < kLanes; ++l) one(i + l, l);
  }
  for (int l = 0; i < end; ++i, ++l) one(i, l);
  double w = 0, u = 0;
  for (int l = 0; l < kLanes; ++l) {
    w += wl[l];
    u += ul[l];
  }
  *w_sq += w;
  *u_sq += u;
}

template <typename T, bool D>
void LambPass2(const Coeffs& hc, double ratio_lr, void* var_p, void* const* slots, int64_t begin,
               int64_t end) {
  using M = opmath_t<T>;
  const LocalCoeffs<M> lc(hc);
  const M* c = lc.c;
  const M r = static_cast<M>(ratio_lr);
  T* __restrict var = static_cast<T*>(var_p);
  const T* __restrict m = static_cast<const T*>(slots[0]);
  const T* __restrict v = static_cast<const T*>(slots[1]);
  for (int64_t i = begin; i < end; ++i) {
    M x = Load(var[i]);
    if constexpr (D) x = Decay(c, x);
    var[i] = Store<T>(x - r * LambRule::Update(c, Load(m[i]), Load(v[i])));
  }
}

// Sum of squares in kLanes fixed lanes (Note [deterministic sums]), written
// as whole blocks so the compiler maps the lanes onto vector registers.
// Non-finite detection: for 16- and 32-bit gradients a square of a finite
// value cannot overflow a double (nor can a chunk's sum), so the sum is
// non-finite exactly when some element is; float64 gradients are checked
// element by element.
template <typename T>
void GradStats(const void* grad_p, int64_t begin, int64_t end, double* sum_sq, bool* nonfinite) {
  const T* __restrict grad = static_cast<const T*>(grad_p);
  double lanes[kLanes] = {0};
  int64_t i = begin;
  for (; i + kLanes <= end; i += kLanes) {
    for (int l = 0; l < kLanes; ++l) {
      const double g = static_cast<double>(Load(grad[i + l]));
      lanes[l] += g * g;
    }
  }
  for (int l = 0; i < end; ++i, ++l) {
    const double g = static_cast<double>(Load(grad[i]));
    lanes[l] += g * g;
  }
  double sum = 0;
  for (int l = 0; l < kLanes; ++l) sum += lanes[l];
  *sum_sq += sum;
  bool bad = !(sum - sum == 0.0);
  if constexpr (sizeof(T) == 8) {
    for (int64_t k = begin; k < end && !bad; ++k) bad = !(grad[k] - grad[k] == 0.0);
  }
  if (bad) *nonfinite = true;
}

// ---- Adafactor (Note [Adafactor passes] in cc/core/adafactor.h) ----------------------------

template <typename T, bool D>
inline opmath_t<T> AdafactorDecayed(const opmath_t<T>* dc, T x) {
  const opmath_t<T> v = Load(x);
  if constexpr (D) {
    return Load(Store<T>(Decay(dc, v)));  // Keras assigns the decayed variable, then reads it
  } else {
    return v;
  }
}

template <typename T, bool D>
void AdafactorStats(const AdafactorCoeffs& co, const void* var_p, const void* grad_p,
                    int64_t begin, int64_t end, double* __restrict col, double* q_sum,
                    double* var_sq) {
  using S = opmath_t<T>;
  const LocalCoeffs<S> dc(co.decay);
  const S eps1 = static_cast<S>(co.eps1);
  const T* __restrict var = static_cast<const T*>(var_p);
  const T* __restrict grad = static_cast<const T*>(grad_p);
  double vl[kLanes] = {0}, ql[kLanes] = {0};
  int64_t i = begin;
  if (col != nullptr) {
    for (; i + kLanes <= end; i += kLanes) {
      for (int l = 0; l < kLanes; ++l) {
        const S v = AdafactorDecayed<T, D>(dc.c, var[i + l]);
        vl[l] += static_cast<double>(v * v);
        const S g = Load(grad[i + l]);
        const double q = static_cast<double>(g * g + eps1);
        ql[l] += q;
        col[i - begin + l] += q;
      }
    }
    for (int l = 0; i < end; ++i, ++l) {
      const S v = AdafactorDecayed<T, D>(dc.c, var[i]);
      vl[l] += static_cast<double>(v * v);
      const S g = Load(grad[i]);
      const double q = static_cast<double>(g * g + eps1);
      ql[l] += q;
      col[i - begin] += q;
    }
    double qs = 0;
    for (int l = 0; l < kLanes; ++l) qs += ql[l];
    *q_sum += qs;
  } else {
    for (; i + kLanes <= end; i += kLanes) {
      for (int l = 0; l < kLanes; ++l) {
        const S v = AdafactorDecayed<T, D>(dc.c, var[i + l]);
        vl[l] += static_cast<double>(v * v);
      }
    }
    for (int l = 0; i < end; ++i, ++l) {
      const S v = AdafactorDecayed<T, D>(dc.c, var[i]);
      vl[l] += static_cast<double>(v * v);
    }
  }
  double vs = 0;
  for (int l = 0; l < kLanes; ++l) vs += vl[l];
  *var_sq += vs;
}

template <typename T>
void AdafactorV(const AdafactorCoeffs& co, const void* grad_p, void* v_p, const void* cf_p,
                int64_t begin, int64_t end, double* u_sq) {
  using S = opmath_t<T>;
  const T* __restrict grad = static_cast<const T*>(grad_p);
  T* __restrict v = static_cast<T*>(v_p);
  const T* __restrict cf = static_cast<const T*>(cf_p);
  const S eps1 = static_cast<S>(co.eps1), beta = static_cast<S>(co.beta);
  const S omb = static_cast<S>(co.one_minus_beta), rs = static_cast<S>(co.r_scale);
  double ul[kLanes] = {0};
  // Two loops, so that neither has a branch on cf (the factored form reads
  // the row's c, the other the old v).
  int64_t i = begin;
  if (cf != nullptr) {
    for (; i + kLanes <= end; i += kLanes) {
      for (int l = 0; l < kLanes; ++l) {
        const S g = Load(grad[i + l]);
        v[i + l] = Store<T>(rs * Load(cf[i - begin + l]));
        const S u = g / std::sqrt(Load(v[i + l]));
        ul[l] += static_cast<double>(u * u);
      }
    }
    for (int l = 0; i < end; ++i, ++l) {
      const S g = Load(grad[i]);
      v[i] = Store<T>(rs * Load(cf[i - begin]));
      const S u = g / std::sqrt(Load(v[i]));
      ul[l] += static_cast<double>(u * u);
    }
  } else {
    for (; i + kLanes <= end; i += kLanes) {
      for (int l = 0; l < kLanes; ++l) {
        const S g = Load(grad[i + l]);
        v[i + l] = Store<T>(beta * Load(v[i + l]) + omb * (g * g + eps1));
        const S u = g / std::sqrt(Load(v[i + l]));
        ul[l] += static_cast<double>(u * u);
      }
    }
    for (int l = 0; i < end; ++i, ++l) {
      const S g = Load(grad[i]);
      v[i] = Store<T>(beta * Load(v[i]) + omb * (g * g + eps1));
      const S u = g / std::sqrt(Load(v[i]));
      ul[l] += static_cast<double>(u * u);
    }
  }
  double us = 0;
  for (int l = 0; l < kLanes; ++l) us += ul[l];
  *u_sq += us;
}

template <typename T, bool D>
void AdafactorUpdate(const AdafactorCoeffs& co, void* var_p, const void* grad_p, const void* v_p,
                     int64_t begin, int64_t end) {
  using S = opmath_t<T>;
  const LocalCoeffs<S> dc(co.decay);
  const S alpha = static_cast<S>(co.alpha), denom = static_cast<S>(co.denom);
  T* __restrict var = static_cast<T*>(var_p);
  const T* __restrict grad = static_cast<const T*>(grad_p);
  const T* __restrict v = static_cast<const T*>(v_p);
  for (int64_t i = begin; i < end; ++i) {
    const S u = Load(grad[i]) / std::sqrt(Load(v[i]));
    var[i] = Store<T>(AdafactorDecayed<T, D>(dc.c, var[i]) - alpha * (u / denom));
  }
}

void Triad(float* __restrict a, const float* __restrict b, float s, int64_t begin, int64_t end) {
  for (int64_t i = begin; i < end; ++i) a[i] = a[i] * s + b[i];
}

// ---- Low-precision state (Note [low-precision state]) -------------------------

// Formats kSame (with W) and kBFloat16: element by element.
template <typename Rule, typename T, int V, bool D, StateFormat F, bool W>
void StateElementwise(const Coeffs& hc, const GradXform& gx, const StateArgs& sa, void* var_p,
                      void* const* slots, const void* grad_p, int64_t begin, int64_t end) {
  static_assert(F != StateFormat::kInt8);
  using M = opmath_t<T>;
  using S = SlotStorage<F, T>;
  constexpr int K = SlotsOf<Rule>(V);
  const LocalCoeffs<M> lc(hc);
  const M* c = lc.c;
  const M gscale = static_cast<M>(gx.scale);
  const M gclip = static_cast<M>(gx.clip_value);
  T* __restrict var = static_cast<T*>(var_p);
  const T* __restrict grad = static_cast<const T*>(grad_p);
  S* __restrict s0 = SlotPtr<S>(slots, 0, K);
  S* __restrict s1 = SlotPtr<S>(slots, 1, K);
  S* __restrict s2 = SlotPtr<S>(slots, 2, K);
  // Keys per 2^32 elements of the tensor (RoundingKey): dense chunks never
  // straddle 2^32, a sparse item (a row) may, so [begin, end) runs in
  // segments of one key each (one segment almost always).
  for (int64_t first = begin; first < end;) {
    const uint64_t at = static_cast<uint64_t>(sa.offset + first);
    const uint32_t hi = static_cast<uint32_t>(at >> 32);
    const int64_t last = std::min<int64_t>(
        end, static_cast<int64_t>(((uint64_t{hi} + 1) << 32) - static_cast<uint64_t>(sa.offset)));
    const uint32_t ka = RoundingKey(sa.seed, sa.tensor, kStreamA, hi);
    const uint32_t kb = RoundingKey(sa.seed, sa.tensor, kStreamB, hi);
    for (int64_t i = first; i < last; ++i) {
      const int64_t idx = sa.offset + i;
      M v = Load(var[i]);
      M s[kMaxSlots + 1] = {M(0), M(0), M(0), M(0)};
      if constexpr (K > 0) s[0] = Load(s0[i]);
      if constexpr (K > 1) s[1] = Load(s1[i]);
      if constexpr (K > 2) s[2] = Load(s2[i]);
      UpdateRegisters<Rule, V, D>(c, gscale, gclip, v, s, Load(grad[i]));
      StoreStateElement<T, F, W, K>(var, s0, s1, s2, i, idx, v, s, ka, kb);
    }
    first = last;
  }
}

// Decodes one block of codes into values (decode(code) * absmax).
template <bool Unsigned>
inline void DecodeBlock(const uint8_t* __restrict codes, int n, float absmax,
                        float* __restrict buf) {
  for (int j = 0; j < n; ++j) buf[j] = DecodeCode<Unsigned>(codes[j]) * absmax;
}

// Encodes one block of values (buf) with its new absmax, the largest |value|
// (max_bits: the largest AbsOrderBits, so NaN if any is NaN).
template <bool Unsigned>
inline void EncodeBlock(const float* __restrict buf, uint8_t* __restrict codes, int n,
                        uint32_t max_bits, float* absmax) {
  const float amax = BitsFloat(max_bits);
  const float inv = EncodeScale(amax);
  for (int j = 0; j < n; ++j) codes[j] = EncodeCode<Unsigned>(buf[j] * inv);
  *absmax = amax;
}

// Format kInt8: block by block; a block's new values wait in buf until its
// absmax is known.
template <typename Rule, typename T, int V, bool D, bool W>
void StateElementwiseInt8(const Coeffs& hc, const GradXform& gx, const StateArgs& sa,
                          void* var_p, void* const* slots, const void* grad_p, int64_t begin,
                          int64_t end) {
  using M = opmath_t<T>;
  static_assert(std::is_same_v<M, float>);
  constexpr int K = SlotsOf<Rule>(V);
  const LocalCoeffs<M> lc(hc);
  const M* c = lc.c;
  const M gscale = static_cast<M>(gx.scale);
  const M gclip = static_cast<M>(gx.clip_value);
  T* __restrict var = static_cast<T*>(var_p);
  const T* __restrict grad = static_cast<const T*>(grad_p);
  uint8_t* __restrict q0 = SlotPtr<uint8_t>(slots, 0, K);
  uint8_t* __restrict q1 = SlotPtr<uint8_t>(slots, 1, K);
  uint8_t* __restrict q2 = SlotPtr<uint8_t>(slots, 2, K);
  // Stochastic weights (W): hash B's key per 2^32 elements of the tensor; an
  // item of whole blocks (a row, or rows) may straddle 2^32, so the update
  // loop runs in segments of one key each.
  uint32_t key_hi = static_cast<uint32_t>(static_cast<uint64_t>(sa.offset + begin) >> 32);
  uint32_t kb = W ? RoundingKey(sa.seed, sa.tensor, kStreamB, key_hi) : 0u;
  alignas(64) float b0[kQuantBlock], b1[kQuantBlock], b2[kQuantBlock];
  // The item starts at a block start: find the first block of [begin, end).
  int64_t block = 0;
  int64_t i = 0;
  while (i < begin) {  // callers pass begin 0; stay correct otherwise
    const int64_t col = (sa.offset + i) % sa.row_size;
    i += std::min<int64_t>(kQuantBlock, sa.row_size - col);
    ++block;
  }
  for (; i < end; ++block) {
    const int64_t col = (sa.offset + i) % sa.row_size;
    const int n = static_cast<int>(std::min<int64_t>({kQuantBlock, sa.row_size - col, end - i}));
    // Three passes over the block, each a loop that vectorizes, the block's
    // values in L1 between them: decode; update and absmax; encode. (A
    // decode inside the update loop is slower: the byte loads mix vector
    // widths there.)
    if constexpr (K > 0) DecodeBlock<kNonNeg<Rule, 0>>(q0 + i, n, sa.absmax[0][block], b0);
    if constexpr (K > 1) DecodeBlock<kNonNeg<Rule, 1>>(q1 + i, n, sa.absmax[1][block], b1);
    if constexpr (K > 2) DecodeBlock<kNonNeg<Rule, 2>>(q2 + i, n, sa.absmax[2][block], b2);
    T* __restrict vb = var + i;
    const T* __restrict gb = grad + i;
    uint32_t m0 = 0, m1 = 0, m2 = 0;
    for (int j0 = 0; j0 < n;) {
      int j1 = n;
      if constexpr (W) {
        const uint64_t at = static_cast<uint64_t>(sa.offset + i + j0);
        const uint32_t hi = static_cast<uint32_t>(at >> 32);
        if (hi != key_hi) {
          key_hi = hi;
          kb = RoundingKey(sa.seed, sa.tensor, kStreamB, hi);
        }
        const uint64_t next = (uint64_t{hi} + 1) << 32;
        if (at + static_cast<uint64_t>(n - j0) > next) j1 = j0 + static_cast<int>(next - at);
      }
      for (int j = j0; j < j1; ++j) {
        M v = Load(vb[j]);
        M s[kMaxSlots + 1] = {M(0), M(0), M(0), M(0)};
        if constexpr (K > 0) s[0] = b0[j];
        if constexpr (K > 1) s[1] = b1[j];
        if constexpr (K > 2) s[2] = b2[j];
        UpdateRegisters<Rule, V, D>(c, gscale, gclip, v, s, Load(gb[j]));
        vb[j] = StoreVar<T, W>(v, kb, sa.offset + i + j);
        if constexpr (K > 0) {
          b0[j] = s[0];
          m0 = std::max(m0, AbsOrderBits(s[0]));
        }
        if constexpr (K > 1) {
          b1[j] = s[1];
          m1 = std::max(m1, AbsOrderBits(s[1]));
        }
        if constexpr (K > 2) {
          b2[j] = s[2];
          m2 = std::max(m2, AbsOrderBits(s[2]));
        }
      }
      j0 = j1;
    }
    if constexpr (K > 0) EncodeBlock<kNonNeg<Rule, 0>>(b0, q0 + i, n, m0, &sa.absmax[0][block]);
    if constexpr (K > 1) EncodeBlock<kNonNeg<Rule, 1>>(b1, q1 + i, n, m1, &sa.absmax[1][block]);
    if constexpr (K > 2) EncodeBlock<kNonNeg<Rule, 2>>(b2, q2 + i, n, m2, &sa.absmax[2][block]);
    i += n;
  }
}

template <typename Rule, typename T, int V, bool D, StateFormat F, bool W>
constexpr StateElementwiseFn StateLoopFor() {
  if constexpr (F == StateFormat::kInt8) {
    return &StateElementwiseInt8<Rule, T, V, D, W>;
  } else {
    return &StateElementwise<Rule, T, V, D, F, W>;
  }
}

// Fills the state rows of every state variant of Rule: float32 variables
// with bfloat16 or int8 state, bfloat16 variables with any state, rounded to
// nearest or stochastically.
template <typename Rule, int V>
void FillStateVariants(StateElementwiseFn (*rows)[2][kNumStateFormats][2][2]) {
  if constexpr (V < NumStateVariantsOf<Rule>::value) {
    constexpr int kBf16 = static_cast<int>(StateFormat::kBFloat16);
    constexpr int kInt8 = static_cast<int>(StateFormat::kInt8);
    constexpr int kSame = static_cast<int>(StateFormat::kSame);
    auto& f32 = rows[V][0];
    auto& bf16 = rows[V][1];
    for (int d = 0; d < 2; ++d) {
      f32[kBf16][0][d] = d ? StateLoopFor<Rule, float, V, true, StateFormat::kBFloat16, false>()
                           : StateLoopFor<Rule, float, V, false, StateFormat::kBFloat16, false>();
      f32[kInt8][0][d] = d ? StateLoopFor<Rule, float, V, true, StateFormat::kInt8, false>()
                           : StateLoopFor<Rule, float, V, false, StateFormat::kInt8, false>();
    }
#define FUSEDOPT_BF16_STATE(F, W)                                                           \
  bf16[static_cast<int>(F)][W][0] = StateLoopFor<Rule, BFloat16, V, false, F, W>();         \
  bf16[static_cast<int>(F)][W][1] = StateLoopFor<Rule, BFloat16, V, true, F, W>();
    FUSEDOPT_BF16_STATE(StateFormat::kSame, true)
    FUSEDOPT_BF16_STATE(StateFormat::kBFloat16, false)
    FUSEDOPT_BF16_STATE(StateFormat::kBFloat16, true)
    FUSEDOPT_BF16_STATE(StateFormat::kInt8, false)
    FUSEDOPT_BF16_STATE(StateFormat::kInt8, true)
#undef FUSEDOPT_BF16_STATE
    (void)kSame;
    FillStateVariants<Rule, V + 1>(rows);
  }
}

template <Rule R>
void FillStateRule(KernelTable& t) {
  using S = typename RuleStruct<R>::type;
  if constexpr (NumStateVariantsOf<S>::value > 0) {
    static_assert(NumStateVariantsOf<S>::value <= S::Variant::kCount);
    FillStateVariants<S, 0>(&t.state_elementwise[kStateVariantOffsets.at[static_cast<int>(R)]]);
  }
}

// Fills rows[V][d] for every variant V of Rule (rows: the rule's first row).
template <typename Rule, typename T, int V>
void FillVariants(ElementwiseFn (*rows)[kNumDTypes][2][2], int d) {
  if constexpr (V < Rule::Variant::kCount) {
    static_assert(Rule::Variant::At(V).Index() == V, "Variant::At and Index disagree");
    rows[V][d][0][0] = LoopFor<Rule, T, V, false, false>();
    rows[V][d][0][1] = LoopFor<Rule, T, V, false, true>();
    rows[V][d][1][0] = LoopFor<Rule, T, V, true, false>();
    rows[V][d][1][1] = LoopFor<Rule, T, V, true, true>();
    FillVariants<Rule, T, V + 1>(rows, d);
  }
}

template <Rule R>
void FillRule(KernelTable& t) {
  using S = typename RuleStruct<R>::type;
  if constexpr (!IsTwoPass<S>::value) {
    static_assert(S::Variant::kCount == NumVariants(R));
    auto* rows = &t.elementwise[kVariantOffsets.at[static_cast<int>(R)]];
    FillVariants<S, Half, 0>(rows, static_cast<int>(DType::kFloat16));
    FillVariants<S, BFloat16, 0>(rows, static_cast<int>(DType::kBFloat16));
    FillVariants<S, float, 0>(rows, static_cast<int>(DType::kFloat32));
    FillVariants<S, double, 0>(rows, static_cast<int>(DType::kFloat64));
  }
}

template <typename T>
void FillLamb(KernelTable& t, DType d) {
  t.lamb_pass1[static_cast<int>(d)][0][0] = &LambPass1<T, false, false>;
  t.lamb_pass1[static_cast<int>(d)][0][1] = &LambPass1<T, false, true>;
  t.lamb_pass1[static_cast<int>(d)][1][0] = &LambPass1<T, true, false>;
  t.lamb_pass1[static_cast<int>(d)][1][1] = &LambPass1<T, true, true>;
  t.grad_stats[static_cast<int>(d)] = &GradStats<T>;
  t.lamb_pass2[static_cast<int>(d)][0] = &LambPass2<T, false>;
  t.lamb_pass2[static_cast<int>(d)][1] = &LambPass2<T, true>;
  t.adafactor_stats[static_cast<int>(d)][0] = &AdafactorStats<T, false>;
  t.adafactor_stats[static_cast<int>(d)][1] = &AdafactorStats<T, true>;
  t.adafactor_v[static_cast<int>(d)] = &AdafactorV<T>;
  t.adafactor_update[static_cast<int>(d)][0] = &AdafactorUpdate<T, false>;
  t.adafactor_update[static_cast<int>(d)][1] = &AdafactorUpdate<T, true>;
}

KernelTable MakeTable() {
  KernelTable t{};
  t.isa = FUSEDOPT_STR(FUSEDOPT_ISA);
#define FUSEDOPT_FILL_RULE(ID, ...) \
  FillRule<Rule::ID>(t);            \
  FillStateRule<Rule::ID>(t);
  FUSEDOPT_FOR_EACH_RULE(FUSEDOPT_FILL_RULE)
#undef FUSEDOPT_FILL_RULE
  FillLamb<Half>(t, DType::kFloat16);
  FillLamb<BFloat16>(t, DType::kBFloat16);
  FillLamb<float>(t, DType::kFloat32);
  FillLamb<double>(t, DType::kFloat64);
  t.triad = &Triad;
  return t;
}

}  // namespace

const KernelTable& Table() {
  static const KernelTable table = MakeTable();
  return table;
}

}  // namespace FUSEDOPT_ISA
}  // namespace cpu
}  // namespace fusedopt
