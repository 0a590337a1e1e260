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
#include <cstdlib>
#include <type_traits>

#include "cc/cpu/kernels.h"
#include "cc/rules/registry.h"
#include "cc/rules/state_update.h"

#if defined(__AVX512F__) && defined(__AVX512BW__)
#include <immintrin.h>
#endif

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
template <typename Rule, typename T, int V, bool D, StateFormat F, bool W, bool X>
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
      UpdateRegisters<Rule, V, D, X>(c, gscale, gclip, v, s, Load(grad[i]));
      StoreStateElement<T, F, W, K>(var, s0, s1, s2, i, idx, v, s, ka, kb);
    }
    first = last;
  }
}

// Decodes one block of codes into values (decode(code) * absmax).
template <bool Unsigned>
inline void DecodeBlockScalar(const uint8_t* __restrict codes, int n, float absmax,
                              float* __restrict buf) {
  for (int j = 0; j < n; ++j) buf[j] = DecodeCode<Unsigned>(codes[j]) * absmax;
}

// Encodes one block of values (buf) with its new absmax, the largest |value|
// (max_bits: the largest AbsOrderBits, so NaN if any is NaN).
template <bool Unsigned>
inline void EncodeBlockScalar(const float* __restrict buf, uint8_t* __restrict codes, int n,
                              uint32_t max_bits, float* absmax) {
  const float amax = BitsFloat(max_bits);
  const float inv = EncodeScale(amax);
  for (int j = 0; j < n; ++j) codes[j] = EncodeCode<Unsigned>(buf[j] * inv);
  *absmax = amax;
}

#if defined(__AVX512F__) && defined(__AVX512BW__)
// Note [int8 codes in AVX-512]: the compiler's vectorization of DecodeCode
// and EncodeCode costs about 0.2 and 0.26 ns per element and slot on a Zen 4
// core, as much as the whole Adam update (0.4 ns); the int8 step was
// compute-bound on them. Written with intrinsics, the same bits (every
// table entry is DecodeCode's value; EncodeCode's integer steps, one per
// instruction):
//   - decoding looks the code up (AVX512_VBMI vpermi2b, where the CPU has
//     it): a code's value has at most 4 significant bits, so it is a
//     bfloat16 and two byte tables of 256 entries (its high and low byte)
//     give it, 64 codes per lookup; unpacking the byte pairs under zero
//     words makes the floats, in order once the codes are permuted first.
//     Without VBMI the plain loop runs.
//   - encoding folds EncodeCode's rebias into the rounding constant, takes
//     the subnormal code's low byte with a masked subtract, narrows with
//     vpmovdb (masked for a short block), and leaves out the NaN select in
//     blocks that cannot hold a NaN.
// On one Zen 4 core, blocks in L1: decoding about 2.2x, encoding 1.5-1.9x
// faster. test_native_module's ISA comparison runs them against the plain
// loops (FUSEDOPT_CPU_VBMI=0 turns the lookups off), test_native_state
// against fusedopt.state's NumPy quantizer on extreme values and exact ties.
static_assert(kQuantBlock % 64 == 0, "a block's buffer holds whole groups of 64");

struct alignas(64) CodeTables {
  uint8_t hi[256];     // high byte of the value's float bits
  uint8_t lo[256];     // the next byte (the low 16 bits are 0)
  uint8_t order[64];   // the code permutation that the unpacks undo
};

template <bool Unsigned>
CodeTables MakeCodeTables() {
  CodeTables t;
  for (int c = 0; c < 256; ++c) {
    const uint32_t b = FloatBits(DecodeCode<Unsigned>(static_cast<uint8_t>(c)));
    t.hi[c] = static_cast<uint8_t>(b >> 24);
    t.lo[c] = static_cast<uint8_t>(b >> 16);
  }
  // unpack{lo,hi}_epi8 then unpack{lo,hi}_epi16 leave float k of output q at
  // 128-bit lane k / 4, byte 4 q + k % 4 of the permuted codes.
  for (int lane = 0; lane < 4; ++lane) {
    for (int j = 0; j < 16; ++j) t.order[16 * lane + j] = 16 * (j / 4) + 4 * lane + j % 4;
  }
  return t;
}

template <bool Unsigned>
const CodeTables& CodeTablesOf() {
  // Built on first use (a static initializer here could run AVX-512 code on
  // a CPU without it, at load).
  static const CodeTables t = MakeCodeTables<Unsigned>();
  return t;
}

bool UseVbmi() {
  static const bool use = [] {
    __builtin_cpu_init();
    const char* env = std::getenv("FUSEDOPT_CPU_VBMI");
    const bool off = env != nullptr && env[0] == '0';
    return !off && __builtin_cpu_supports("avx512vbmi");
  }();
  return use;
}

__attribute__((target("avx512vbmi"))) inline __m512i Lookup256(const uint8_t* table, __m512i c,
                                                               __mmask64 top) {
  const __m512i low = _mm512_permutex2var_epi8(_mm512_load_si512(table), c,
                                               _mm512_load_si512(table + 64));
  const __m512i high = _mm512_permutex2var_epi8(_mm512_load_si512(table + 128), c,
                                                _mm512_load_si512(table + 192));
  return _mm512_mask_blend_epi8(top, low, high);
}

// buf must hold n rounded up to 64 floats (a block's buffer, kQuantBlock, does).
template <bool Unsigned>
__attribute__((target("avx512vbmi"))) void DecodeBlockVbmi(const uint8_t* __restrict codes, int n,
                                                           float absmax, float* __restrict buf) {
  const CodeTables& t = CodeTablesOf<Unsigned>();
  const __m512i order = _mm512_load_si512(t.order);
  const __m512i zero = _mm512_setzero_si512();
  const __m512 scale = _mm512_set1_ps(absmax);
  for (int j = 0; j < n; j += 64) {
    const int left = n - j;
    const __mmask64 k = left >= 64 ? ~__mmask64{0} : (__mmask64{1} << left) - 1;
    const __m512i c = _mm512_permutexvar_epi8(order, _mm512_maskz_loadu_epi8(k, codes + j));
    const __mmask64 top = _mm512_movepi8_mask(c);
    const __m512i hi = Lookup256(t.hi, c, top);
    const __m512i lo = Lookup256(t.lo, c, top);
    const __m512i w0 = _mm512_unpacklo_epi8(lo, hi);
    const __m512i w1 = _mm512_unpackhi_epi8(lo, hi);
    float* out = buf + j;
    _mm512_storeu_ps(out, _mm512_mul_ps(_mm512_castsi512_ps(_mm512_unpacklo_epi16(zero, w0)), scale));
    _mm512_storeu_ps(out + 16,
                    _mm512_mul_ps(_mm512_castsi512_ps(_mm512_unpackhi_epi16(zero, w0)), scale));
    _mm512_storeu_ps(out + 32,
                    _mm512_mul_ps(_mm512_castsi512_ps(_mm512_unpacklo_epi16(zero, w1)), scale));
    _mm512_storeu_ps(out + 48,
                    _mm512_mul_ps(_mm512_castsi512_ps(_mm512_unpackhi_epi16(zero, w1)), scale));
  }
}

// EncodeCode on 16 values at once (y = x * inv), as 32-bit codes. Nan: some
// y may be NaN (else the NaN code's select is left out).
template <bool Unsigned, bool Nan>
inline __m512i Codes16(__m512 x, __m512 inv) {
  const __m512 y = _mm512_mul_ps(x, inv);
  const __m512i u = _mm512_castps_si512(y);
  // |y| (unsigned: max(y, +0), +0 for -0 and NaN), then min(|y|, 1).
  __m512i a = Unsigned ? _mm512_castps_si512(_mm512_max_ps(y, _mm512_setzero_ps()))
                       : _mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff));
  a = _mm512_min_epu32(a, _mm512_set1_epi32(0x3f800000));
  constexpr float kSubAdd = Unsigned ? 9.765625e-4f : 64.0f;
  constexpr uint32_t kSmallestNormal = Unsigned ? 0x30800000u : 0x38800000u;
  constexpr uint32_t kRebias = (Unsigned ? 96u : 112u) << 3;
  const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(a, 20), _mm512_set1_epi32(1));
  const __m512i normal = _mm512_srli_epi32(
      _mm512_add_epi32(_mm512_add_epi32(a, odd), _mm512_set1_epi32(0x7ffff - (kRebias << 20))),
      20);
  const __m512i sub_bits =
      _mm512_castps_si512(_mm512_add_ps(_mm512_castsi512_ps(a), _mm512_set1_ps(kSubAdd)));
  __m512i m = _mm512_mask_sub_epi32(normal,
                                    _mm512_cmplt_epu32_mask(a, _mm512_set1_epi32(kSmallestNormal)),
                                    sub_bits, _mm512_set1_epi32(FloatBits(kSubAdd)));
  if constexpr (!Unsigned) {
    // m | ((u >> 24) & 0x80): the sign.
    m = _mm512_ternarylogic_epi32(m, _mm512_srli_epi32(u, 24), _mm512_set1_epi32(0x80), 0xf8);
  }
  if constexpr (!Nan) return m;
  return _mm512_mask_mov_epi32(m, _mm512_cmp_ps_mask(y, y, _CMP_UNORD_Q),
                               _mm512_set1_epi32(Unsigned ? kUnsignedNan : kSignedNan));
}

template <bool Unsigned, bool Nan>
void EncodeCodes(const float* __restrict buf, uint8_t* __restrict codes, int n, __m512 inv) {
  int j = 0;
  for (; j + 16 <= n; j += 16) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(codes + j),
                     _mm512_cvtepi32_epi8(Codes16<Unsigned, Nan>(_mm512_loadu_ps(buf + j), inv)));
  }
  if (j < n) {
    const __mmask16 k = static_cast<__mmask16>((1u << (n - j)) - 1u);
    _mm512_mask_cvtepi32_storeu_epi8(
        codes + j, k, Codes16<Unsigned, Nan>(_mm512_maskz_loadu_ps(k, buf + j), inv));
  }
}

template <bool Unsigned>
void EncodeBlockAvx512(const float* __restrict buf, uint8_t* __restrict codes, int n,
                       uint32_t max_bits, float* absmax) {
  const float amax = BitsFloat(max_bits);
  const float inv = EncodeScale(amax);
  // x * inv is NaN only for a NaN or infinite x, or x = 0 times an infinite
  // inv (a subnormal absmax): a block with a finite absmax and a finite inv
  // has no NaN to code, and skips that select.
  if (max_bits < 0x7f800000u && FloatBits(inv) < 0x7f800000u) {
    EncodeCodes<Unsigned, false>(buf, codes, n, _mm512_set1_ps(inv));
  } else {
    EncodeCodes<Unsigned, true>(buf, codes, n, _mm512_set1_ps(inv));
  }
  *absmax = amax;
}
#endif

template <bool Unsigned>
inline void DecodeBlock(const uint8_t* __restrict codes, int n, float absmax,
                        float* __restrict buf) {
#if defined(__AVX512F__) && defined(__AVX512BW__)
  if (UseVbmi()) return DecodeBlockVbmi<Unsigned>(codes, n, absmax, buf);
#endif
  DecodeBlockScalar<Unsigned>(codes, n, absmax, buf);
}

template <bool Unsigned>
inline void EncodeBlock(const float* __restrict buf, uint8_t* __restrict codes, int n,
                        uint32_t max_bits, float* absmax) {
#if defined(__AVX512F__) && defined(__AVX512BW__)
  EncodeBlockAvx512<Unsigned>(buf, codes, n, max_bits, absmax);
#else
  EncodeBlockScalar<Unsigned>(buf, codes, n, max_bits, absmax);
#endif
}

// Format kInt8: block by block; a block's new values wait in buf until its
// absmax is known.
template <typename Rule, typename T, int V, bool D, bool W, bool X>
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
        UpdateRegisters<Rule, V, D, X>(c, gscale, gclip, v, s, Load(gb[j]));
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

template <typename Rule, typename T, int V, bool D, StateFormat F, bool W, bool X>
constexpr StateElementwiseFn StateLoopFor() {
  if constexpr (F == StateFormat::kInt8) {
    return &StateElementwiseInt8<Rule, T, V, D, W, X>;
  } else {
    return &StateElementwise<Rule, T, V, D, F, W, X>;
  }
}

// cell[decay][transform] = the loop of (Rule, T, V, F, W).
template <typename Rule, typename T, int V, StateFormat F, bool W>
void FillStateCell(StateElementwiseFn (&cell)[2][2]) {
  cell[0][0] = StateLoopFor<Rule, T, V, false, F, W, false>();
  cell[0][1] = StateLoopFor<Rule, T, V, false, F, W, true>();
  cell[1][0] = StateLoopFor<Rule, T, V, true, F, W, false>();
  cell[1][1] = StateLoopFor<Rule, T, V, true, F, W, true>();
}

// Fills the state rows of every state variant of Rule: float32 variables
// with bfloat16 or int8 state, bfloat16 variables with any state, rounded to
// nearest or stochastically; each with and without decay and gradient
// transform.
template <typename Rule, int V>
void FillStateVariants(StateElementwiseFn (*rows)[2][kNumStateFormats][2][2][2]) {
  if constexpr (V < NumStateVariantsOf<Rule>::value) {
    constexpr StateFormat kBf16 = StateFormat::kBFloat16;
    constexpr StateFormat kInt8 = StateFormat::kInt8;
    constexpr StateFormat kSame = StateFormat::kSame;
    auto& f32 = rows[V][0];
    auto& bf16 = rows[V][1];
    FillStateCell<Rule, float, V, kBf16, false>(f32[static_cast<int>(kBf16)][0]);
    FillStateCell<Rule, float, V, kInt8, false>(f32[static_cast<int>(kInt8)][0]);
    FillStateCell<Rule, BFloat16, V, kSame, true>(bf16[static_cast<int>(kSame)][1]);
    FillStateCell<Rule, BFloat16, V, kBf16, false>(bf16[static_cast<int>(kBf16)][0]);
    FillStateCell<Rule, BFloat16, V, kBf16, true>(bf16[static_cast<int>(kBf16)][1]);
    FillStateCell<Rule, BFloat16, V, kInt8, false>(bf16[static_cast<int>(kInt8)][0]);
    FillStateCell<Rule, BFloat16, V, kInt8, true>(bf16[static_cast<int>(kInt8)][1]);
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
