// The math of every update rule, written once.
//
// Each rule is a struct with a per-element function working on registers in
// opmath. The CPU loops (cc/cpu), the CUDA kernels (cc/cuda) and, later, the
// multi-tensor and sparse paths all call these functions; variants are
// template parameters, never runtime branches in the hot loop.
//
// Semantics follow Keras 3 (keras.optimizers.*) in algebraic form, so that
// float32 results agree with Keras to rounding. Decoupled weight decay is
// Keras': `var -= var * (weight_decay * lr)`, applied before the update, in
// the same pass over memory.
#ifndef FUSEDOPT_CC_RULES_UPDATE_RULES_H_
#define FUSEDOPT_CC_RULES_UPDATE_RULES_H_

#include "cc/rules/numeric.h"

namespace fusedopt {

// Whether decoupled weight decay is applied. A compile-time choice, so that a
// zero decay costs nothing and cannot turn an infinite weight into NaN.
enum class Decay : int { kOff = 0, kOn = 1 };

// ---------------------------------------------------------------------------
// SGD (keras.optimizers.SGD)
//
//   plain:     var = var - lr * g
//   momentum:  m = momentum * m - lr * g;  var = var + m
//   nesterov:  m = momentum * m - lr * g;  var = var + momentum * m - lr * g
//
// Bytes per element (T = element size): plain 3T (read var, grad; write var),
// momentum and nesterov 5T (read var, m, grad; write var, m).
enum class SgdVariant : int { kPlain = 0, kMomentum = 1, kNesterov = 2 };
constexpr int kNumSgdVariants = 3;

// Host-side scalars of one SGD call, in double. `decay` is weight_decay * lr.
struct SgdScalars {
  double lr;
  double momentum;
  double decay;
};

template <typename M>
struct SgdCoeffs {
  M lr;
  M momentum;
  M decay;
  FUSEDOPT_HD static SgdCoeffs From(const SgdScalars& s) {
    return {static_cast<M>(s.lr), static_cast<M>(s.momentum), static_cast<M>(s.decay)};
  }
};

template <SgdVariant V, Decay D>
struct SgdRule {
  template <typename M>
  FUSEDOPT_HD static void Apply(const SgdCoeffs<M>& c, M& var, M& m, M g) {
    if constexpr (D == Decay::kOn) var = var - var * c.decay;
    if constexpr (V == SgdVariant::kPlain) {
      var = var - g * c.lr;
    } else {
      m = m * c.momentum - g * c.lr;
      if constexpr (V == SgdVariant::kNesterov) {
        var = var + (m * c.momentum - g * c.lr);
      } else {
        var = var + m;
      }
    }
  }
};

}  // namespace fusedopt

#endif  // FUSEDOPT_CC_RULES_UPDATE_RULES_H_
