// The math of every update rule, written once.
//
// Each rule is a struct with a per-element function working on registers in
// opmath. The CPU loops (cc/cpu) and the CUDA kernels (cc/cuda) call these
// functions; variants are template parameters, never runtime branches in the
// hot loop.
//
// Semantics follow Keras 3 (keras.optimizers.*) in its exact operation order,
// so that float32 and float64 results equal Keras' bit for bit. Keras'
// decoupled weight decay, `var -= var * weight_decay * lr` (that is,
// (var * wd) * lr), is applied before every rule, in the same pass over
// memory, by the loops (Decay below).
//
// Note [coefficients]: a call's scalars (learning rate, betas, bias
// corrections, ...) are computed once per call on the host
// (cc/rules/coefficients.h, Note [Keras arithmetic]) into a fixed array
// `Coeffs::c`; the loops convert them to opmath once and pass them to Apply.
// Index 0 is always the weight decay and the last index the learning rate the
// decay uses.
#ifndef FUSEDOPT_CC_RULES_UPDATE_RULES_H_
#define FUSEDOPT_CC_RULES_UPDATE_RULES_H_

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "cc/rules/numeric.h"
#include "cc/rules/state_format.h"

#if !defined(__CUDA_ARCH__) && (defined(__SSE__) || defined(__x86_64__))
#include <xmmintrin.h>
#define FUSEDOPT_HAVE_SSE_RSQRT 1
#endif

namespace fusedopt {

constexpr int kMaxSlots = 3;
constexpr int kMaxCoeffs = 12;
constexpr int kDecay = 0;                 // Coeffs::c[0]: weight_decay
constexpr int kDecayLr = kMaxCoeffs - 1;  // Coeffs::c[11]: its learning rate

struct Coeffs {
  double c[kMaxCoeffs];
};

template <typename M>
struct OpCoeffs {
  M c[kMaxCoeffs];
  FUSEDOPT_HD static OpCoeffs From(const Coeffs& h) {
    OpCoeffs o;
    for (int k = 0; k < kMaxCoeffs; ++k) o.c[k] = static_cast<M>(h.c[k]);
    return o;
  }
};

template <typename M>
FUSEDOPT_HD M Sqrt(M x) {
  return std::sqrt(x);
}
template <typename M>
FUSEDOPT_HD M Abs(M x) {
  return x < M(0) ? -x : x;
}
template <typename M>
FUSEDOPT_HD M Max(M a, M b) {
  // NaN-propagating like TF's maximum: a NaN in either operand wins.
  return (a != a) ? a : ((b != b) ? b : (a > b ? a : b));
}
template <typename M>
FUSEDOPT_HD M Min(M a, M b) {
  return (a != a) ? a : ((b != b) ? b : (a < b ? a : b));
}

// sign(u) as tf.sign computes it: +-1, zeros (with their sign) and NaN passed
// through. On the bits, so the loops vectorize: a floating-point select form
// (u > 0 ? 1 : ...) is control flow GCC will not if-convert under the default
// -ftrapping-math, and kept Lion's loop scalar.
template <typename M>
FUSEDOPT_HD M SignOf(M u) {
  static_assert(sizeof(M) == 4 || sizeof(M) == 8, "float or double");
  using U = std::conditional_t<sizeof(M) == 4, uint32_t, uint64_t>;
  constexpr U kSign = U(1) << (sizeof(M) * 8 - 1);
  constexpr U kInf = sizeof(M) == 4 ? U(0x7f800000u) : U(0x7ff0000000000000ull);
  constexpr U kOne = sizeof(M) == 4 ? U(0x3f800000u) : U(0x3ff0000000000000ull);
  U b;
  memcpy(&b, &u, sizeof(M));
  const U mag = b & ~kSign;
  // mag - 1 < kInf: finite non-zero or inf (mag == 0 wraps around).
  const U r = (mag - U(1) < kInf) ? ((b & kSign) | kOne) : b;
  M out;
  memcpy(&out, &r, sizeof(M));
  return out;
}

// Note [TF rsqrt]: in a tf.function, Grappler's arithmetic optimizer rewrites
// Keras' `x / sqrt(y)` (RMSprop, Adagrad, Adadelta) into `x * rsqrt(y)`, and
// TF's CPU Rsqrt is not correctly rounded: Eigen evaluates full vectors of 8
// floats (TF's wheel is built for AVX, without FMA) as the hardware
// approximation _mm256_rsqrt_ps refined by one Newton step, and the last
// n % 8 elements of a tensor as 1 / sqrt(y) (doubles: 1 / sqrt(y) always).
// Rules that divide by a square root therefore have three forms, a
// compile-time variant: kDivSqrt (Keras' written x / sqrt(y), and eager mode),
// kPacketRsqrt and kScalarRsqrt; the CPU loops run the packet form on the
// first n - n % 8 elements of a tensor and the scalar form on the rest.
// rsqrtss gives the same approximation as the packed instruction on the same
// CPU, so the bits are the CPU model's, as TF's are. On the GPU (and hosts
// without SSE) kPacketRsqrt is the platform's rsqrt.
//
// kProbeRsqrt and kInjectedRsqrt are CPU-internal forms of kPacketRsqrt, so
// its loop vectorizes (cc/cpu): a probe pass records each element's y in the
// rsqrt channel (and stores nothing), the block's rsqrts are computed with
// packed instructions, and the update pass multiplies by the value it finds
// in the channel.
enum RsqrtForm : int {
  kDivSqrt = 0,
  kPacketRsqrt = 1,
  kScalarRsqrt = 2,
  kProbeRsqrt = 3,
  kInjectedRsqrt = 4,
};
constexpr int kNumRsqrtForms = 3;  // the forms a dispatch table holds
constexpr int kRsqrtChannel = kMaxSlots;  // s[kRsqrtChannel] in Apply's slot array
constexpr int kTfRsqrtPacket = 8;  // floats per Eigen packet in TF's CPU kernels

// Note [typed variants]: a rule's compile-time forms (momentum or not, an
// rsqrt form, TensorFlow's or Keras' operation order, ...) are a struct of
// named fields, Rule::Variant. Its Index() numbers the forms a dispatch table
// holds densely in [0, Variant::kCount); the loops and kernels take that index
// as their template parameter (C++17 has no class-type template parameters)
// and decode it with Variant::At. A plan fills a Variant and stores its index
// (Plan::variant); nothing else packs or unpacks the number. The CPU-internal
// rsqrt forms (kProbeRsqrt, kInjectedRsqrt) index from kCount on and have no
// table row.
struct NoVariant {  // a rule with one form
  static constexpr int kCount = 1;
  FUSEDOPT_HD constexpr int Index() const { return 0; }
  FUSEDOPT_HD static constexpr NoVariant At(int) { return {}; }
};

// Rules whose Variant has an rsqrt form (Note [TF rsqrt]).
template <typename Rule, typename = void>
struct HasRsqrtForms : std::false_type {};
template <typename Rule>
struct HasRsqrtForms<Rule, std::void_t<decltype(Rule::Variant::At(0).rsqrt)>> : std::true_type {};

// The index of variant `index` of Rule in rsqrt form `form` (the same index
// for a rule without rsqrt forms).
template <typename Rule>
FUSEDOPT_HD constexpr int WithRsqrtFormOf(int index, int form) {
  if constexpr (HasRsqrtForms<Rule>::value) {
    auto v = Rule::Variant::At(index);
    v.rsqrt = static_cast<RsqrtForm>(form);
    return v.Index();
  } else {
    return index;
  }
}

// The slots variant `index` of Rule uses.
template <typename Rule>
FUSEDOPT_HD constexpr int SlotsOf(int index) {
  return Rule::Slots(Rule::Variant::At(index));
}

template <typename M>
FUSEDOPT_HD M PacketRsqrt(M y) {
#if defined(__CUDA_ARCH__)
  return rsqrt(y);
#elif defined(FUSEDOPT_HAVE_SSE_RSQRT)
  if constexpr (std::is_same_v<M, float>) {
    // Eigen's generic_rsqrt_newton_step<Packet8f, 1> without FMA.
    const float y0 = _mm_cvtss_f32(_mm_rsqrt_ss(_mm_set_ss(y)));
    const float r2 = y * y0;
    const float half_r = y0 * -0.5f;
    const float h = r2 * y0 + -1.0f;
    const float inv = half_r * h + y0;
    return inv != inv ? y0 : inv;
  } else {
    return M(1) / std::sqrt(y);
  }
#else
  return M(1) / std::sqrt(y);
#endif
}

// x / sqrt(y) in the given form (Note [TF rsqrt]); `s` is Apply's slot array,
// whose rsqrt channel the probe and injected forms use.
template <int Form, typename M>
FUSEDOPT_HD M DivSqrt(M x, M y, M* s) {
  if constexpr (Form == kDivSqrt) {
    return x / Sqrt(y);
  } else if constexpr (Form == kPacketRsqrt) {
    return x * PacketRsqrt(y);
  } else if constexpr (Form == kScalarRsqrt) {
    return x * (M(1) / Sqrt(y));
  } else if constexpr (Form == kProbeRsqrt) {
    s[kRsqrtChannel] = y;
    return x;
  } else {
    return x * s[kRsqrtChannel];
  }
}

// Keras' decoupled weight decay of one element: v - (v * wd) * lr.
template <typename M>
FUSEDOPT_HD M Decay(const M* c, M v) {
  return v - (v * c[kDecay]) * c[kDecayLr];
}

// Note [gradient transform]: a call's gradient pre-processing, fused into the
// update pass. Per tensor, g_used = clip(g * scale, -clip_value, clip_value),
// where `scale` folds the loss-scale reciprocal and any norm clipping (computed
// on the host from the gradient norms, in double) and clip_value is +inf when
// value clipping is off. The loops apply it only when the call has one
// (a template flag), so a plain update reads the gradient untouched.
struct GradXform {
  double scale;
  double clip_value;
};

template <typename M>
FUSEDOPT_HD M TransformGrad(M g, M scale, M clip_value) {
  return Min(Max(g * scale, -clip_value), clip_value);
}

// One element of an elementwise rule: load, decay, gradient transform, rule,
// store. The body of both the CPU loops and the CUDA kernel, so the two cannot
// drift apart. K = SlotsOf<Rule>(V) slot pointers are used (the others may be
// null); callers pass their __restrict / __restrict__ pointers.
//
// UpdateElement = LoadElement, Rule::Apply, StoreElement; the CPU loop of the
// packet rsqrt form (cc/cpu) runs the same pieces in two passes.
// `s` has room for kMaxSlots slots and the rsqrt channel (Note [TF rsqrt]).
template <typename Rule, int V, bool D, bool X, typename T>
FUSEDOPT_HD void LoadElement(const opmath_t<T>* c, opmath_t<T> gscale, opmath_t<T> gclip,
                             const T* var, const T* s0, const T* s1, const T* s2, const T* grad,
                             int64_t i, opmath_t<T>& v, opmath_t<T>* s, opmath_t<T>& g) {
  constexpr int K = SlotsOf<Rule>(V);
  v = Load(var[i]);
  if constexpr (D) v = Decay(c, v);
  if constexpr (K > 0) s[0] = Load(s0[i]);
  if constexpr (K > 1) s[1] = Load(s1[i]);
  if constexpr (K > 2) s[2] = Load(s2[i]);
  g = Load(grad[i]);
  if constexpr (X) g = TransformGrad(g, gscale, gclip);
}

template <typename Rule, int V, typename T>
FUSEDOPT_HD void StoreElement(T* var, T* s0, T* s1, T* s2, int64_t i, opmath_t<T> v,
                              const opmath_t<T>* s) {
  constexpr int K = SlotsOf<Rule>(V);
  var[i] = Store<T>(v);
  if constexpr (K > 0) s0[i] = Store<T>(s[0]);
  if constexpr (K > 1) s1[i] = Store<T>(s[1]);
  if constexpr (K > 2) s2[i] = Store<T>(s[2]);
}

template <typename Rule, int V, bool D, bool X, typename T>
FUSEDOPT_HD void UpdateElement(const opmath_t<T>* c, opmath_t<T> gscale, opmath_t<T> gclip,
                               T* var, T* s0, T* s1, T* s2, const T* grad, int64_t i) {
  using M = opmath_t<T>;
  M v, g;
  M s[kMaxSlots + 1] = {M(0), M(0), M(0), M(0)};
  LoadElement<Rule, V, D, X>(c, gscale, gclip, var, s0, s1, s2, grad, i, v, s, g);
  Rule::template Apply<V>(c, v, s, g);
  StoreElement<Rule, V>(var, s0, s1, s2, i, v, s);
}

// ---------------------------------------------------------------------------
// SGD (keras.optimizers.SGD). Variant: momentum, nesterov.
// Slots: [momentum] with momentum.
//   plain:     var -= lr * g
//   momentum:  m = momentum * m - lr * g;  var += m
//   nesterov:  m = momentum * m - lr * g;  var += momentum * m - lr * g
// Bytes/element (T = element size): plain 3T, momentum 5T.
struct SgdRule {
  // The doc of its TensorFlow ops (cc/tf/ops.cc adds the options' doc).
  static constexpr char kOpDoc[] = R"doc(
Stochastic gradient descent with optional (Nesterov) momentum (keras.optimizers.SGD).

  M == 0 (plain):   var = var - lr * g
  M == N:           m = momentum * m - lr * g
                    var = var + m                        (nesterov=false)
                    var = var + momentum * m - lr * g    (nesterov=true)

Bytes per element (T = element size): 3T plain, 5T with momentum.
)doc";
  enum : int { kLr = 1, kMomentum = 2 };
  struct Variant {  // Note [typed variants]
    bool momentum = false;
    bool nesterov = false;  // with momentum
    static constexpr int kCount = 3;
    FUSEDOPT_HD constexpr int Index() const { return !momentum ? 0 : (nesterov ? 2 : 1); }
    FUSEDOPT_HD static constexpr Variant At(int i) { return {i >= 1, i == 2}; }
  };
  FUSEDOPT_HD static constexpr int Slots(Variant v) { return v.momentum ? 1 : 0; }
  // Low-precision state (Note [low-precision state]): all three variants;
  // the momentum is signed.
  static constexpr int kStateVariants = 3;
  static constexpr unsigned kNonNegSlots = 0;
  template <int V, typename M>
  FUSEDOPT_HD static void Apply(const M* c, M& var, M* s, M g) {
    constexpr Variant kV = Variant::At(V);
    if constexpr (!kV.momentum) {
      var = var - g * c[kLr];
    } else {
      s[0] = s[0] * c[kMomentum] - g * c[kLr];
      if constexpr (kV.nesterov) {
        var = var + (s[0] * c[kMomentum] - g * c[kLr]);
      } else {
        var = var + s[0];
      }
    }
  }
};

// ---------------------------------------------------------------------------
// Adam / AdamW (keras.optimizers.Adam, AdamW). Variant: amsgrad, form.
// Slots: [m, v] (+ [v_hat] for amsgrad).
//   alpha = lr * sqrt(1 - beta_2^t) / (1 - beta_1^t)     (host, double)
//   m += (g - m) * (1 - beta_1);  v += (g^2 - v) * (1 - beta_2)
//   amsgrad: v_hat = max(v_hat, v), and v_hat replaces v below
//   var -= m * alpha / (sqrt(v) + epsilon)
// Bytes/element: 7T (amsgrad 9T).
// Form kTfKerasSparse: tf_keras' legacy sparse Adam (Note [tf_keras sparse
// forms]), m = m * beta_1 + g * (1 - beta_1),
// v = v * beta_2 + (g * g) * (1 - beta_2), with
// alpha = lr * (sqrt(1 - beta_2^t) / (1 - beta_1^t)); kTfKerasSparseGrappler:
// the same in a tf.function, where Grappler's MinimizeBroadcasts makes v's
// product g * (g * (1 - beta_2)).
struct AdamRule {
  // The doc of its TensorFlow ops (cc/tf/ops.cc adds the options' doc).
  static constexpr char kOpDoc[] = R"doc(
Adam, AMSGrad and (with weight_decay) AdamW (keras.optimizers.Adam, AdamW).

  alpha = lr * sqrt(1 - beta_2^step) / (1 - beta_1^step)    (once per call, double)
  m = m + (g - m) * (1 - beta_1)
  v = v + (g^2 - v) * (1 - beta_2)
  K == N (amsgrad): vhat = max(vhat, v); use vhat for v below
  var = var - m * alpha / (sqrt(v) + epsilon)

epsilon is Keras' (added to sqrt(v)), step counts from 1.
tf_training_op_form (the sparse op only; the dense op refuses it, since
TensorFlow's ResourceApplyAdam computes the formula above): tf_keras' legacy
sparse Adam, its own ops in their order (no weight decay; the betas used as
given, in the variables' dtype):
  alpha = lr * (sqrt(1 - beta_2^step) / (1 - beta_1^step))
  m = m * beta_1 + g * (1 - beta_1);  v = v * beta_2 + (g * g) * (1 - beta_2)
  var = var - alpha * m / (sqrt(v) + epsilon)
Bytes per element: 7T (amsgrad 9T).
)doc";
  enum : int { kOneMinusB1 = 1, kOneMinusB2 = 2, kAlpha = 3, kEps = 4, kB1 = 5, kB2 = 6 };
  struct Variant {  // Note [typed variants]
    enum Form : int { kKeras = 0, kTfKerasSparse = 1, kTfKerasSparseGrappler = 2 };
    bool amsgrad = false;
    Form form = kKeras;
    static constexpr int kCount = 6;
    FUSEDOPT_HD constexpr int Index() const { return (amsgrad ? 1 : 0) + 2 * form; }
    FUSEDOPT_HD static constexpr Variant At(int i) { return {(i & 1) != 0, Form(i / 2)}; }
  };
  FUSEDOPT_HD static constexpr int Slots(Variant v) { return v.amsgrad ? 3 : 2; }
  // Low-precision state: Keras' forms (adam, amsgrad); v and vhat >= 0.
  static constexpr int kStateVariants = 2;
  static constexpr unsigned kNonNegSlots = 0b110;
  template <int V, typename M>
  FUSEDOPT_HD static void Apply(const M* c, M& var, M* s, M g) {
    constexpr Variant kV = Variant::At(V);
    if constexpr (kV.form == Variant::kTfKerasSparseGrappler) {
      s[0] = s[0] * c[kB1] + g * c[kOneMinusB1];
      s[1] = s[1] * c[kB2] + g * (g * c[kOneMinusB2]);
    } else if constexpr (kV.form == Variant::kTfKerasSparse) {
      s[0] = s[0] * c[kB1] + g * c[kOneMinusB1];
      s[1] = s[1] * c[kB2] + (g * g) * c[kOneMinusB2];
    } else {
      s[0] = s[0] + (g - s[0]) * c[kOneMinusB1];
      s[1] = s[1] + (g * g - s[1]) * c[kOneMinusB2];
    }
    M denom_v = s[1];
    if constexpr (kV.amsgrad) {
      s[2] = Max(s[2], s[1]);
      denom_v = s[2];
    }
    var = var - (s[0] * c[kAlpha]) / (Sqrt(denom_v) + c[kEps]);
  }
};

// ---------------------------------------------------------------------------
// Nadam (keras.optimizers.Nadam). Slots: [m, v].
//   u_t = beta_1 * (1 - 0.5 * 0.96^(d*t)); u_t1 = beta_1 * (1 - 0.5 * 0.96^(d*(t+1)))
//   (d = 1 in Keras 3; tf_keras' legacy Nadam uses its schedule_decay, 0.004)
//   u_prod (the optimizer's running product, this step included),
//   u_prod1 = u_prod * u_t1                                        (host, double)
//   m += (g - m) * (1 - beta_1);  v += (g^2 - v) * (1 - beta_2)
//   m_hat = u_t1 * m / (1 - u_prod1) + (1 - u_t) * g / (1 - u_prod)
//   v_hat = v / (1 - beta_2^t)
//   var -= m_hat * lr / (sqrt(v_hat) + epsilon)
// Bytes/element: 7T.
struct NadamRule {
  // The doc of its TensorFlow ops (cc/tf/ops.cc adds the options' doc).
  static constexpr char kOpDoc[] = R"doc(
Nadam, Keras' formulation (keras.optimizers.Nadam), not the paper's.

  u_t = beta_1 * (1 - 0.5 * 0.96^(d * step))
  u_t1 = beta_1 * (1 - 0.5 * 0.96^(d * (step + 1)))
  d is the attr schedule_decay: 1 as in Keras 3, 0.004 for tf_keras' legacy Nadam
  u_product: the optimizer's running product of u_t including this step
  m = m + (g - m) * (1 - beta_1);  v = v + (g^2 - v) * (1 - beta_2)
  m_hat = u_t1 * m / (1 - u_product * u_t1) + (1 - u_t) * g / (1 - u_product)
  v_hat = v / (1 - beta_2^step)
  var = var - m_hat * lr / (sqrt(v_hat) + epsilon)

schedule_decay_bits: when not 0, the schedule decay exactly, as the bits of
a float64 (a float attribute holds only a float32; fusedopt.ops passes both).
tf_training_op_form: tf_keras' legacy Nadam's own ops, in their order (no
weight decay; the betas used as given, in the variables' dtype):
  g' = g / (1 - u_product);  m = beta_1 * m + (1 - beta_1) * g
  m' = m / (1 - u_product * u_t1)
  v = beta_2 * v + (1 - beta_2) * g^2;  v' = v / (1 - beta_2^step)
  var = var - lr * ((1 - u_t) * g' + u_t1 * m') / (sqrt(v') + epsilon)

Bytes per element: 7T.
)doc";
  enum : int {
    kOneMinusB1 = 1,
    kOneMinusB2 = 2,
    kUt1 = 3,
    kOneMinusUProd1 = 4,
    kOneMinusUt = 5,
    kOneMinusUProd = 6,
    kOneMinusB2Pow = 7,
    kLr = 8,
    kEps = 9,
    kB1 = 10,        // tf_training_op
    kB2 = kDecayLr,  // tf_training_op, which takes no weight decay (tf_keras' Nadam has
                     // none): c[kDecay] stays 0, so nothing reads the decay's learning rate
  };
  struct Variant {  // Note [typed variants]
    bool tf_training_op = false;  // tf_keras' legacy Nadam's ops
    static constexpr int kCount = 2;
    FUSEDOPT_HD constexpr int Index() const { return tf_training_op ? 1 : 0; }
    FUSEDOPT_HD static constexpr Variant At(int i) { return {i == 1}; }
  };
  FUSEDOPT_HD static constexpr int Slots(Variant) { return 2; }
  // Low-precision state: Keras' form; v >= 0.
  static constexpr int kStateVariants = 1;
  static constexpr unsigned kNonNegSlots = 0b10;
  template <int V, typename M>
  FUSEDOPT_HD static void Apply(const M* c, M& var, M* s, M g) {
    if constexpr (Variant::At(V).tf_training_op) {
      // tf_keras' legacy Nadam._resource_apply_dense, op for op:
      //   g' = g / (1 - u_product);  m = b1 * m + (1 - b1) * g;  m' = m / (1 - u_product * u_t1)
      //   v = b2 * v + (1 - b2) * g^2;  v' = v / (1 - b2^t)
      //   m_bar = (1 - u_t) * g' + u_t1 * m';  var -= lr * m_bar / (sqrt(v') + eps)
      const M g_prime = g / c[kOneMinusUProd];
      s[0] = c[kB1] * s[0] + c[kOneMinusB1] * g;
      const M m_prime = s[0] / c[kOneMinusUProd1];
      s[1] = c[kB2] * s[1] + c[kOneMinusB2] * (g * g);
      const M v_prime = s[1] / c[kOneMinusB2Pow];
      const M m_bar = c[kOneMinusUt] * g_prime + c[kUt1] * m_prime;
      var = var - (c[kLr] * m_bar) / (Sqrt(v_prime) + c[kEps]);
    } else {
      s[0] = s[0] + (g - s[0]) * c[kOneMinusB1];
      s[1] = s[1] + (g * g - s[1]) * c[kOneMinusB2];
      const M m_hat =
          (c[kUt1] * s[0]) / c[kOneMinusUProd1] + (c[kOneMinusUt] * g) / c[kOneMinusUProd];
      const M v_hat = s[1] / c[kOneMinusB2Pow];
      var = var - (m_hat * c[kLr]) / (Sqrt(v_hat) + c[kEps]);
    }
  }
};

// ---------------------------------------------------------------------------
// Adamax (keras.optimizers.Adamax). Slots: [m, u].
//   m += (g - m) * (1 - beta_1);  u = max(beta_2 * u, |g|)
//   var -= lr * m / ((1 - beta_1^t) * (u + epsilon))
// Bytes/element: 7T.
// Form kTfOp: TensorFlow's ResourceApplyAdaMax (tf_keras' legacy Adamax),
//   var -= (lr / (1 - beta_1^t)) * (m / (u + epsilon))
// Form kTfKerasSparse: tf_keras' legacy sparse Adamax (Note [tf_keras sparse
// forms]): kTfOp with m = m * beta_1 + g * (1 - beta_1).
struct AdamaxRule {
  // The doc of its TensorFlow ops (cc/tf/ops.cc adds the options' doc).
  static constexpr char kOpDoc[] = R"doc(
Adamax (keras.optimizers.Adamax).

  m = m + (g - m) * (1 - beta_1)
  u = max(beta_2 * u, |g|)
  var = var - lr * m / ((1 - beta_1^step) * (u + epsilon))

tf_training_op_form: TensorFlow's ResourceApplyAdaMax arithmetic, which
tf_keras' legacy Adamax uses: var = var - (lr / (1 - beta_1^step)) *
(m / (u + epsilon)); for the sparse op tf_keras' legacy sparse Adamax, the
same with m = m * beta_1 + g * (1 - beta_1).

Bytes per element: 7T.
)doc";
  enum : int {
    kOneMinusB1 = 1, kB2 = 2, kLr = 3, kOneMinusB1Pow = 4, kEps = 5, kLrOverBc = 6, kB1 = 7
  };
  struct Variant {  // Note [typed variants]
    enum Form : int { kKeras = 0, kTfOp = 1, kTfKerasSparse = 2 };
    Form form = kKeras;
    static constexpr int kCount = 3;
    FUSEDOPT_HD constexpr int Index() const { return form; }
    FUSEDOPT_HD static constexpr Variant At(int i) { return {Form(i)}; }
  };
  FUSEDOPT_HD static constexpr int Slots(Variant) { return 2; }
  // Low-precision state: Keras' form; u >= 0.
  static constexpr int kStateVariants = 1;
  static constexpr unsigned kNonNegSlots = 0b10;
  template <int V, typename M>
  FUSEDOPT_HD static void Apply(const M* c, M& var, M* s, M g) {
    constexpr Variant kV = Variant::At(V);
    if constexpr (kV.form == Variant::kTfKerasSparse) {
      s[0] = s[0] * c[kB1] + g * c[kOneMinusB1];
    } else {
      s[0] = s[0] + (g - s[0]) * c[kOneMinusB1];
    }
    s[1] = Max(c[kB2] * s[1], Abs(g));
    if constexpr (kV.form != Variant::kKeras) {
      var = var - c[kLrOverBc] * (s[0] / (s[1] + c[kEps]));
    } else {
      var = var - (c[kLr] * s[0]) / (c[kOneMinusB1Pow] * (s[1] + c[kEps]));
    }
  }
};

// ---------------------------------------------------------------------------
// RMSprop (keras.optimizers.RMSprop). Variant: momentum, centered, rsqrt, form.
// Slots, in Keras' order: [velocity] (+ [momentum]) (+ [average_gradient]).
//   velocity = rho * velocity + (1 - rho) * g^2
//   centered: avg = rho * avg + (1 - rho) * g;  denom = velocity - avg^2 + eps
//   else:     denom = velocity + eps
//   inc = lr * g / sqrt(denom)
//   momentum: mom = momentum * mom + inc;  var -= mom
//   else:     var -= inc
// Bytes/element: 5T, +2T each for momentum and centered.
struct RmspropRule {
  // The doc of its TensorFlow ops (cc/tf/ops.cc adds the options' doc).
  static constexpr char kOpDoc[] = R"doc(
RMSprop, with optional momentum (M == N) and centering (C == N)
(keras.optimizers.RMSprop).

  velocity = rho * velocity + (1 - rho) * g^2
  centered: average_gradient = rho * average_gradient + (1 - rho) * g
            denom = velocity - average_gradient^2 + epsilon
  else:     denom = velocity + epsilon
  increment = lr * g / sqrt(denom)
    (epsilon_outside_sqrt: denom without epsilon, and
     increment = lr * g / (sqrt(denom) + epsilon), as tf_keras' legacy RMSprop
     without momentum)
  momentum: m = momentum * m + increment;  var = var - m
  else:     var = var - increment

tf_training_op_form: TensorFlow's ResourceApply(Centered)RMSProp arithmetic,
which tf_keras' legacy RMSprop uses with momentum: velocity = velocity +
(g^2 - velocity) * (1 - rho), average_gradient = average_gradient +
(g - average_gradient) * (1 - rho), the rest as above.

Bytes per element: 5T, plus 2T each for momentum and centering.
)doc";
  // kEps is added inside the square root, kEpsOut outside it; the caller sets
  // one and leaves the other 0 (x + 0 == x, so the other form keeps its bits).
  // The rsqrt forms (Note [TF rsqrt]) need kEpsOut 0.
  enum : int { kRho = 1, kOneMinusRho = 2, kEps = 3, kLr = 4, kMomentum = 5, kEpsOut = 6 };
  struct Variant {  // Note [typed variants]
    // kTfOp: TensorFlow's training ops ResourceApply(Centered)RMSProp, which
    // tf_keras' legacy RMSprop calls with momentum: velocity += (g^2 -
    // velocity) * (1 - rho) (and the average gradient alike), the rest as
    // below. kTfKerasSparseGrappler: tf_keras' legacy sparse RMSprop without
    // momentum (Note [tf_keras sparse forms]) in a tf.function, where
    // Grappler's MinimizeBroadcasts makes its (g * g) * (1 - rho) into
    // g * (g * (1 - rho)). (Out of a tf.function its form is Keras'.) Both
    // divide (rsqrt kDivSqrt).
    enum Form : int { kKeras = 0, kTfOp = 1, kTfKerasSparseGrappler = 2 };
    bool momentum = false;
    bool centered = false;
    RsqrtForm rsqrt = kDivSqrt;  // form kKeras only
    Form form = kKeras;
    // Keras' form: 4 * rsqrt + bits for the table's rsqrt forms, then kTfOp's
    // and kTfKerasSparseGrappler's four each; the internal rsqrt forms after.
    static constexpr int kKerasRows = 4 * kNumRsqrtForms;
    static constexpr int kCount = kKerasRows + 8;
    FUSEDOPT_HD constexpr int Bits() const { return (momentum ? 1 : 0) | (centered ? 2 : 0); }
    FUSEDOPT_HD constexpr int Index() const {
      if (form != kKeras) return kKerasRows + 4 * (form - 1) + Bits();
      if (rsqrt < kNumRsqrtForms) return 4 * rsqrt + Bits();
      return kCount + 4 * (rsqrt - kNumRsqrtForms) + Bits();
    }
    FUSEDOPT_HD static constexpr Variant At(int i) {
      const bool mom = (i & 1) != 0, cen = (i & 2) != 0;
      if (i < kKerasRows) return {mom, cen, RsqrtForm(i / 4), kKeras};
      if (i < kCount) return {mom, cen, kDivSqrt, Form(1 + (i - kKerasRows) / 4)};
      return {mom, cen, RsqrtForm(kNumRsqrtForms + (i - kCount) / 4), kKeras};
    }
  };
  FUSEDOPT_HD static constexpr int Slots(Variant v) {
    return 1 + (v.momentum ? 1 : 0) + (v.centered ? 1 : 0);
  }
  // Low-precision state: Keras' division forms (indices 0-3: momentum and
  // centered bits); the velocity (slot 0) >= 0. int8 state not centered
  // (indices 0-1): velocity - average_gradient^2 cancels, and 8-bit errors
  // of the two turn the denominator negative.
  static constexpr int kStateVariants = 4;
  static constexpr int kInt8StateVariants = 2;
  static constexpr unsigned kNonNegSlots = 0b001;
  template <int V, typename M>
  FUSEDOPT_HD static void Apply(const M* c, M& var, M* s, M g) {
    constexpr Variant kV = Variant::At(V);
    constexpr bool kMom = kV.momentum;
    constexpr bool kCentered = kV.centered;
    constexpr bool kTfKerasGrappler = kV.form == Variant::kTfKerasSparseGrappler;
    constexpr bool kTfOp = kV.form == Variant::kTfOp;
    constexpr int kForm = kV.rsqrt;
    constexpr int kAvg = kMom ? 2 : 1;
    if constexpr (kTfKerasGrappler) {
      s[0] = c[kRho] * s[0] + g * (g * c[kOneMinusRho]);
    } else if constexpr (kTfOp) {
      s[0] = s[0] + (g * g - s[0]) * c[kOneMinusRho];
    } else {
      s[0] = c[kRho] * s[0] + c[kOneMinusRho] * (g * g);
    }
    M denom;
    if constexpr (kCentered) {
      if constexpr (kTfOp) {
        s[kAvg] = s[kAvg] + (g - s[kAvg]) * c[kOneMinusRho];
      } else {
        s[kAvg] = c[kRho] * s[kAvg] + c[kOneMinusRho] * g;
      }
      denom = s[0] - s[kAvg] * s[kAvg] + c[kEps];
    } else {
      denom = s[0] + c[kEps];
    }
    M inc;
    if constexpr (kForm == kDivSqrt) {
      inc = (c[kLr] * g) / (Sqrt(denom) + c[kEpsOut]);
    } else {
      inc = DivSqrt<kForm>(c[kLr] * g, denom, s);
    }
    if constexpr (kMom) {
      s[1] = c[kMomentum] * s[1] + inc;
      var = var - s[1];
    } else {
      var = var - inc;
    }
  }
};

// ---------------------------------------------------------------------------
// Adagrad (keras.optimizers.Adagrad). Slots: [accumulator].
//   acc += g^2;  var -= lr * g / sqrt(acc + epsilon)
// (tf_keras' legacy Adagrad: lr * g / (sqrt(acc) + epsilon), through kEpsOut;
// the caller sets one of kEps and kEpsOut and leaves the other 0.)
// Bytes/element: 5T.
struct AdagradRule {
  // The doc of its TensorFlow ops (cc/tf/ops.cc adds the options' doc).
  static constexpr char kOpDoc[] = R"doc(
Adagrad (keras.optimizers.Adagrad; the accumulator starts at
initial_accumulator_value, set by the caller).

  accumulator = accumulator + g^2
  var = var - lr * g / sqrt(accumulator + epsilon)
  (epsilon_outside_sqrt: var = var - lr * g / (sqrt(accumulator) + epsilon), as
   tf_keras' legacy Adagrad)

Bytes per element: 5T.
)doc";
  enum : int { kLr = 1, kEps = 2, kEpsOut = 3 };
  struct Variant {  // Note [typed variants]
    RsqrtForm rsqrt = kDivSqrt;  // Note [TF rsqrt]
    static constexpr int kCount = kNumRsqrtForms;
    FUSEDOPT_HD constexpr int Index() const { return rsqrt; }
    FUSEDOPT_HD static constexpr Variant At(int i) { return {RsqrtForm(i)}; }
  };
  FUSEDOPT_HD static constexpr int Slots(Variant) { return 1; }
  // Low-precision state: the division form; the accumulator >= 0.
  static constexpr int kStateVariants = 1;
  static constexpr unsigned kNonNegSlots = 0b1;
  template <int V, typename M>
  FUSEDOPT_HD static void Apply(const M* c, M& var, M* s, M g) {
    constexpr RsqrtForm kForm = Variant::At(V).rsqrt;
    s[0] = s[0] + g * g;
    if constexpr (kForm == kDivSqrt) {
      var = var - (c[kLr] * g) / (Sqrt(s[0] + c[kEps]) + c[kEpsOut]);
    } else {
      var = var - DivSqrt<kForm>(c[kLr] * g, s[0] + c[kEps], s);
    }
  }
};

// ---------------------------------------------------------------------------
// Adadelta (keras.optimizers.Adadelta). Slots: [accumulated_grad,
// accumulated_delta_var].
//   ag = rho * ag + (1 - rho) * g^2
//   delta = -(sqrt(adv + eps) * g) / sqrt(ag + eps)
//   adv = rho * adv + (1 - rho) * delta^2
//   var += lr * delta
// Variant tf_op: TensorFlow's ResourceApplyAdadelta, which tf_keras' legacy
// Adadelta calls (always with TF's Rsqrt, Note [TF rsqrt]):
//   u = (sqrt(adv + eps) * rsqrt(ag + eps)) * g;  var -= u * lr
//   adv = adv * rho + u^2 * (1 - rho)
// Bytes/element: 7T.
struct AdadeltaRule {
  // The doc of its TensorFlow ops (cc/tf/ops.cc adds the options' doc).
  static constexpr char kOpDoc[] = R"doc(
Adadelta (keras.optimizers.Adadelta).

  accumulated_grad = rho * accumulated_grad + (1 - rho) * g^2
  delta = -sqrt(accumulated_delta_var + epsilon) * g / sqrt(accumulated_grad + epsilon)
  accumulated_delta_var = rho * accumulated_delta_var + (1 - rho) * delta^2
  var = var + lr * delta

tf_training_op_form: TensorFlow's ResourceApplyAdadelta arithmetic, which
tf_keras' legacy Adadelta uses: u = sqrt(accumulated_delta_var + epsilon) *
rsqrt(accumulated_grad + epsilon) * g (TF's CPU Rsqrt), var = var - u * lr,
accumulated_delta_var = rho * accumulated_delta_var + (1 - rho) * u^2.

Bytes per element: 7T.
)doc";
  enum : int { kRho = 1, kOneMinusRho = 2, kEps = 3, kLr = 4 };
  struct Variant {  // Note [typed variants]
    bool tf_op = false;  // TensorFlow's ResourceApplyAdadelta
    RsqrtForm rsqrt = kDivSqrt;  // Note [TF rsqrt]
    static constexpr int kCount = 2 * kNumRsqrtForms;
    FUSEDOPT_HD constexpr int Index() const { return (tf_op ? 1 : 0) + 2 * rsqrt; }
    FUSEDOPT_HD static constexpr Variant At(int i) { return {(i & 1) != 0, RsqrtForm(i / 2)}; }
  };
  FUSEDOPT_HD static constexpr int Slots(Variant) { return 2; }
  template <int V, typename M>
  FUSEDOPT_HD static void Apply(const M* c, M& var, M* s, M g) {
    constexpr Variant kV = Variant::At(V);
    constexpr int kForm = kV.rsqrt;
    s[0] = c[kRho] * s[0] + c[kOneMinusRho] * (g * g);
    if constexpr (kV.tf_op) {
      const M u = DivSqrt<kForm>(Sqrt(s[1] + c[kEps]), s[0] + c[kEps], s) * g;
      var = var - u * c[kLr];
      s[1] = c[kRho] * s[1] + c[kOneMinusRho] * (u * u);
    } else {
      const M delta = -DivSqrt<kForm>(Sqrt(s[1] + c[kEps]) * g, s[0] + c[kEps], s);
      s[1] = c[kRho] * s[1] + c[kOneMinusRho] * (delta * delta);
      var = var + c[kLr] * delta;
    }
  }
};

// ---------------------------------------------------------------------------
// Ftrl (keras.optimizers.Ftrl). Variant: sqrt_power (learning_rate_power ==
// -0.5: sqrt; else pow). Slots: [accumulator, linear].
//   p = -learning_rate_power;  l2 = l2_regularization + beta / (2 lr)  (host)
//   g_s = g + 2 * l2_shrinkage * var
//   new_acc = acc + g^2
//   linear += g_s - (new_acc^p - acc^p) / lr * var
//   quadratic = new_acc^p / lr + 2 * l2
//   var = (clip(linear, -l1, l1) - linear) / quadratic;  acc = new_acc
// Bytes/element: 7T.
struct FtrlRule {
  // The doc of its TensorFlow ops (cc/tf/ops.cc adds the options' doc).
  static constexpr char kOpDoc[] = R"doc(
FTRL-proximal, Keras' formulation (keras.optimizers.Ftrl).

  p = -learning_rate_power;  l2' = l2 + beta / (2 * lr)
  g_s = g + 2 * l2_shrinkage * var
  new_acc = accumulator + g^2
  linear = linear + g_s - (new_acc^p - accumulator^p) / lr * var
  quadratic = new_acc^p / lr + 2 * l2'
  var = (clip(linear, -l1, l1) - linear) / quadratic
  accumulator = new_acc

learning_rate_power = -0.5 uses sqrt; other powers use the C library's pow.
Requires lr > 0 and learning_rate_power <= 0.
Bytes per element: 7T.

tf_pow: the powers as keras.optimizers.Ftrl's ops compute them, with
TensorFlow's own CPU Pow kernel (Eigen's vectorized pow), except where
Grappler rewrites Keras' graph (grappler_form: power 0.5 is Sqrt, 2 Square).
Dense float32 and float64 CPU calls (elsewhere ignored); four passes instead
of one (7T + 2T + 4T + 4T bytes per element).

tf_training_op_form (with tf_pow): the powers as TensorFlow's
ResourceApplyFtrl(V2) computes them (tf_keras' legacy Ftrl): Eigen's unary
x.pow(p), repeated squaring for integer powers in [-3, 7], and sqrt for power
0.5. The elementwise arithmetic is the same as without it.
)doc";
  enum : int { kLr = 1, kPower = 2, kTwoL2Shrinkage = 3, kTwoL2 = 4, kL1 = 5 };
  struct Variant {  // Note [typed variants]
    bool sqrt_power = false;  // learning_rate_power == -0.5
    static constexpr int kCount = 2;
    FUSEDOPT_HD constexpr int Index() const { return sqrt_power ? 1 : 0; }
    FUSEDOPT_HD static constexpr Variant At(int i) { return {i == 1}; }
  };
  FUSEDOPT_HD static constexpr int Slots(Variant) { return 2; }
  template <int V, typename M>
  FUSEDOPT_HD static M Pow(M x, M p) {
    if constexpr (Variant::At(V).sqrt_power) {
      return Sqrt(x);
    } else {
      return std::pow(x, p);
    }
  }
  template <int V, typename M>
  FUSEDOPT_HD static void Apply(const M* c, M& var, M* s, M g) {
    const M new_acc = NewAccumulator(s, g);
    ApplyPowers(c, var, s, g, new_acc, Pow<V>(new_acc, c[kPower]), Pow<V>(s[0], c[kPower]));
  }
  // Keras' `accum + square(g)`.
  template <typename M>
  FUSEDOPT_HD static M NewAccumulator(const M* s, M g) {
    return s[0] + g * g;
  }
  // The update given new_acc^p and acc^p (Note [TF pow] in cc/tf/tf_numerics.h
  // computes them with TF's own Pow).
  template <typename M>
  FUSEDOPT_HD static void ApplyPowers(const M* c, M& var, M* s, M g, M new_acc, M new_pow,
                                      M old_pow) {
    const M g_s = g + c[kTwoL2Shrinkage] * var;
    s[1] = s[1] + (g_s - ((new_pow - old_pow) / c[kLr]) * var);
    const M quadratic = new_pow / c[kLr] + c[kTwoL2];
    const M l1 = c[kL1];
    const M clipped = s[1] < -l1 ? -l1 : (s[1] > l1 ? l1 : s[1]);
    var = (clipped - s[1]) / quadratic;
    s[0] = new_acc;
  }
};

// ---------------------------------------------------------------------------
// Lion (keras.optimizers.Lion). Slots: [m].
//   var -= lr * sign(m * beta_1 + g * (1 - beta_1))
//   m = m * beta_2 + g * (1 - beta_2)
// Bytes/element: 5T.
struct LionRule {
  // The doc of its TensorFlow ops (cc/tf/ops.cc adds the options' doc).
  static constexpr char kOpDoc[] = R"doc(
Lion (keras.optimizers.Lion).

  var = var - lr * sign(m * beta_1 + g * (1 - beta_1))
  m = m * beta_2 + g * (1 - beta_2)

Bytes per element: 5T.
)doc";
  enum : int { kLr = 1, kB1 = 2, kOneMinusB1 = 3, kB2 = 4, kOneMinusB2 = 5 };
  using Variant = NoVariant;
  FUSEDOPT_HD static constexpr int Slots(Variant) { return 1; }
  // Low-precision state; the momentum is signed.
  static constexpr int kStateVariants = 1;
  static constexpr unsigned kNonNegSlots = 0;
  template <int V, typename M>
  FUSEDOPT_HD static void Apply(const M* c, M& var, M* s, M g) {
    const M u = s[0] * c[kB1] + g * c[kOneMinusB1];
    const M sign = SignOf(u);
    var = var - c[kLr] * sign;
    s[0] = s[0] * c[kB2] + g * c[kOneMinusB2];
  }
};

// ---------------------------------------------------------------------------
// ScheduleFreeAdamW (keras.optimizers.ScheduleFreeAdamW). Slots: [momentum
// (z, the base iterate), velocity]. With lr including Keras' warmup factor
// min(t / warmup_steps, 1), w = 1 / t and c1 = 1 - beta_1 (host, in S):
//   v += (g^2 - v) * (1 - beta_2)
//   z -= (lr * g) / (sqrt(v / (1 - beta_2^t)) + epsilon)
//   x = (var - c1 * z) / beta_1         (Keras reads z after its update here)
//   x = (1 - w) * x + w * z
//   var = c1 * z + beta_1 * x
// Variant forms kMinimizeBroadcasts and kConstantFolding, Keras' graph after
// Grappler (Note [Grappler form]): constant folding turns the division by the
// constant beta_1 into a multiplication by its reciprocal (kConstantFolding),
// and the arithmetic optimizer's MinimizeBroadcasts (not for rank-0
// variables) then multiplies that chain's two scalars first:
//   kMinimizeBroadcasts: x = ((1 - w) * (1 / beta_1)) * (var - c1 * z) + w * z
//   kConstantFolding:    x = (1 - w) * ((var - c1 * z) * (1 / beta_1)) + w * z
// Bytes/element: 7T.
struct ScheduleFreeRule {
  // The doc of its TensorFlow ops (cc/tf/ops.cc adds the options' doc).
  static constexpr char kOpDoc[] = R"doc(
Schedule-free AdamW (keras.optimizers.ScheduleFreeAdamW). momentum holds the
base iterate z (initialised to the variable), velocity Adam's second moment;
step counts from 1; warmup_steps = 0 disables the warmup.

  lr_t = lr * min(step / warmup_steps, 1)            (warmup_steps > 0)
  w = 1 / step
  v = v + (g^2 - v) * (1 - beta_2)
  z = z - lr_t * g / (sqrt(v / (1 - beta_2^step)) + epsilon)
  x = (var - (1 - beta_1) * z) / beta_1      (z after its update, as Keras)
  x = (1 - w) * x + w * z
  var = (1 - beta_1) * z + beta_1 * x

Bytes per element: 7T.
)doc";
  enum : int {
    kLr = 1,
    kOneMinusB2 = 2,
    kBiasCorrection2 = 3,
    kEps = 4,
    kOneMinusB1 = 5,
    kB1 = 6,
    kOneMinusWeightOverB1 = 7,
    kWeight = 8,
    kOneMinusWeight = 9,
    kInvB1 = 10,
  };
  struct Variant {  // Note [typed variants]
    enum Form : int { kKeras = 0, kMinimizeBroadcasts = 1, kConstantFolding = 2 };
    Form form = kKeras;
    static constexpr int kCount = 3;
    FUSEDOPT_HD constexpr int Index() const { return form; }
    FUSEDOPT_HD static constexpr Variant At(int i) { return {Form(i)}; }
  };
  FUSEDOPT_HD static constexpr int Slots(Variant) { return 2; }
  template <int V, typename M>
  FUSEDOPT_HD static void Apply(const M* c, M& var, M* s, M g) {
    constexpr Variant kV = Variant::At(V);
    s[1] = s[1] + (g * g - s[1]) * c[kOneMinusB2];
    const M denom = Sqrt(s[1] / c[kBiasCorrection2]) + c[kEps];
    s[0] = s[0] - (c[kLr] * g) / denom;
    M x;
    if constexpr (kV.form == Variant::kMinimizeBroadcasts) {
      x = c[kOneMinusWeightOverB1] * (var - c[kOneMinusB1] * s[0]) + c[kWeight] * s[0];
    } else if constexpr (kV.form == Variant::kConstantFolding) {
      x = c[kOneMinusWeight] * ((var - c[kOneMinusB1] * s[0]) * c[kInvB1]) + c[kWeight] * s[0];
    } else {
      x = (var - c[kOneMinusB1] * s[0]) / c[kB1];
      x = c[kOneMinusWeight] * x + c[kWeight] * s[0];
    }
    var = c[kOneMinusB1] * s[0] + c[kB1] * x;
  }
};

// ---------------------------------------------------------------------------
// Muon (keras.optimizers.Muon), the two elementwise halves around its
// Newton-Schulz iterations (which stay TensorFlow matmuls).
//
// MuonMomentumRule: the "variable" is the momentum buffer m; no slots.
//   m = m + (g + m * (momentum - 1))
// (Grappler leaves Keras' expression alone in Muon's graph: measured with
// every option of keras.optimizers.Muon, tests/test_keras_parity.py.)
// Bytes/element: 3T.
struct MuonMomentumRule {
  // The doc of its TensorFlow ops (cc/tf/ops.cc adds the options' doc).
  static constexpr char kOpDoc[] = R"doc(
The momentum half of Muon (keras.optimizers.Muon, the variables it does not
send to its AdamW path): vars are Muon's momentum buffers m.

  m = m + (g + m * (momentum - 1))

(Keras' graph computes the same: Grappler leaves this expression alone in
Muon's graph.) The Newton-Schulz iterations on m (or Nesterov's
g + momentum * m) stay TensorFlow matmuls; Fusedopt>ApplyMuon applies their
result. Takes no weight decay. Bytes per element: 3T.
)doc";
  enum : int { kMomentumMinusOne = 1 };
  using Variant = NoVariant;
  FUSEDOPT_HD static constexpr int Slots(Variant) { return 0; }
  template <int V, typename M>
  FUSEDOPT_HD static void Apply(const M* c, M& var, M*, M g) {
    var = var + (g + var * c[kMomentumMinusOne]);
  }
};

// MuonRule: g is the orthogonalized update (Newton-Schulz output); no slots.
// Keras' lr_adjust scales it by s = sqrt(max(rows, cols)) (float32) and
// rms_rate:
//   Keras' written form:              var = var - ((lr * g) * s) * rms_rate
//   Variant minimize_broadcasts:      var = var - g * ((lr * s) * rms_rate)   (host)
// Bytes/element: 3T.
struct MuonRule {
  // The doc of its TensorFlow ops (cc/tf/ops.cc adds the options' doc).
  static constexpr char kOpDoc[] = R"doc(
The update half of Muon (keras.optimizers.Muon): grads are the orthogonalized
updates (the Newton-Schulz output), scale is Keras' sqrt(max(rows, cols)) as a
float32 value, rms_rate its rms_rate (Keras' rms_rate=None: scale = rms_rate = 1).

  var = var - ((lr * g) * scale) * rms_rate

With grappler_form=true: var = var - g * ((lr * scale) * rms_rate), Keras'
graph after MinimizeBroadcasts. Requires scale > 0. Bytes per element: 3T.
)doc";
  enum : int { kLr = 1, kScale = 2, kRmsRate = 3, kFactor = 4 };
  struct Variant {  // Note [typed variants]
    bool minimize_broadcasts = false;  // Grappler's MinimizeBroadcasts form
    static constexpr int kCount = 2;
    FUSEDOPT_HD constexpr int Index() const { return minimize_broadcasts ? 1 : 0; }
    FUSEDOPT_HD static constexpr Variant At(int i) { return {i == 1}; }
  };
  FUSEDOPT_HD static constexpr int Slots(Variant) { return 0; }
  template <int V, typename M>
  FUSEDOPT_HD static void Apply(const M* c, M& var, M*, M g) {
    if constexpr (Variant::At(V).minimize_broadcasts) {
      var = var - g * c[kFactor];
    } else {
      var = var - ((c[kLr] * g) * c[kScale]) * c[kRmsRate];
    }
  }
};

// ---------------------------------------------------------------------------
// LAMB (keras.optimizers.Lamb). Slots: [m, v]. Two passes (the trust ratio
// needs two norms over the whole tensor before any element can be written):
//   pass 1, per element: decay var (not stored yet);
//     m += (g - m) * (1 - beta_1);  v += (g^2 - v) * (1 - beta_2)
//     u = (m / (1 - beta_1^t)) / (sqrt(v / (1 - beta_2^t)) + eps)
//     accumulate sum(var^2) and sum(u^2); store m, v
//   per tensor: ratio = |var| / |u| if both > 0, else 1
//   pass 2, per element: recompute var (decayed) and u from m, v;
//     var -= ratio * lr * u
// Bytes/element: 6T + 4T = 10T.
struct LambRule {
  // The doc of its TensorFlow ops (cc/tf/ops.cc adds the options' doc).
  static constexpr char kOpDoc[] = R"doc(
LAMB (keras.optimizers.Lamb), with a per-variable trust ratio.

  m = m + (g - m) * (1 - beta_1);  v = v + (g^2 - v) * (1 - beta_2)
  u = (m / (1 - beta_1^step)) / (sqrt(v / (1 - beta_2^step)) + epsilon)
  ratio = ||var|| / ||u|| if both norms > 0, else 1   (per variable)
  var = var - ratio * lr * u

Two passes, because no element of a variable can be written before the norms
over all of it are known: pass 1 reads var, m, v, g and writes m, v while
summing var^2 and u^2 (deterministic fixed-order sums in double); pass 2 reads
var, m, v and writes var. Bytes per element: 6T + 4T = 10T.

tf_norms: the two norms as keras.optimizers.Lamb's TensorFlow ops compute them,
sqrt(sum(pow(x, 2))) in the variable's dtype with TF's own CPU Pow (Grappler's
Square with grappler_form) and Sum kernels, on the op's thread pool: their
summation order depends on the pool's size, as TF's does. Float32 and float64
variables on the CPU (elsewhere ignored: 16-bit types, GPU and XLA keep the
double sums). Costs two more reads and writes of each tensor (4T + 4T).
)doc";
  static constexpr bool kTwoPass = true;  // its own two-pass loops (no Apply)
  enum : int { kOneMinusB1 = 1, kOneMinusB2 = 2, kOneMinusB1Pow = 3, kOneMinusB2Pow = 4,
               kEps = 5, kLr = 6 };
  template <typename M>
  FUSEDOPT_HD static M Update(const M* c, M m, M v) {
    return (m / c[kOneMinusB1Pow]) / (Sqrt(v / c[kOneMinusB2Pow]) + c[kEps]);
  }
  // Pass 1 for one element: updates the slots m and v (stored as T) from g,
  // returns u = Update(m, v) of the slots as stored (rounded to T), the values
  // pass 2 reads. With 16-bit slots the unrounded moments would give a u whose
  // norm is not that of pass 2's (v underflows to 0 where g^2 (1 - beta_2) is
  // below the type's smallest subnormal, and pass 2's u there is
  // m / epsilon), and the trust ratio would scale it wrongly. For float32 and
  // float64 slots both are the same values.
  template <typename T, typename M>
  FUSEDOPT_HD static M Moments(const M* c, T& m, T& v, M g) {
    const M m0 = Load(m), v0 = Load(v);
    m = Store<T>(m0 + (g - m0) * c[kOneMinusB1]);
    v = Store<T>(v0 + (g * g - v0) * c[kOneMinusB2]);
    return Update(c, Load(m), Load(v));
  }
  // ratio * lr, Keras' `ratio * lr * update` factor, from the sums of squares:
  // w = sqrt(sum var^2), u = sqrt(sum update^2), ratio = w / u when both are
  // positive, else 1; computed in S (the variable's opmath) as Keras does
  // from its S-typed sums.
  template <typename S>
  FUSEDOPT_HD static double RatioLr(double w_sq, double u_sq, double lr) {
    const S w = Sqrt(static_cast<S>(w_sq)), u = Sqrt(static_cast<S>(u_sq));
    const S ratio = (w > S(0)) ? ((u > S(0)) ? w / u : S(1)) : S(1);
    return static_cast<double>(ratio * static_cast<S>(lr));
  }
};

}  // namespace fusedopt

#endif  // FUSEDOPT_CC_RULES_UPDATE_RULES_H_
