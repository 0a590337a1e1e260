// What the CPU loops and the CUDA kernels of low-precision state share
// (Note [low-precision state] in state_format.h) beyond the rules' math: the
// slots' storage type, a variable's store (stochastic or to nearest), which
// slots take the unsigned code, and one element's update on registers.
//
// No TensorFlow header (nvcc compiles this in header-free .cu files).
#ifndef FUSEDOPT_CC_RULES_STATE_UPDATE_H_
#define FUSEDOPT_CC_RULES_STATE_UPDATE_H_

#include <cstdint>
#include <type_traits>

#include "cc/rules/state_format.h"
#include "cc/rules/update_rules.h"

namespace fusedopt {

// A slot's storage type in format F for variables of type T.
template <StateFormat F, typename T>
using SlotStorage = std::conditional_t<F == StateFormat::kSame, T,
                                       std::conditional_t<F == StateFormat::kBFloat16, BFloat16,
                                                          uint8_t>>;

// Stores an updated variable element: stochastically rounded (W, bfloat16
// variables: hash B's high bits) or to nearest.
template <typename T, bool W>
FUSEDOPT_HD T StoreVar(opmath_t<T> v, uint32_t key_b, int64_t idx) {
  if constexpr (W) {
    static_assert(std::is_same_v<T, BFloat16>, "stochastic weights are bfloat16");
    return StochasticBFloat16(v, VarRoundingBits(RoundingBits(key_b, idx)));
  } else {
    return Store<T>(v);
  }
}

// Whether slot k of Rule holds non-negative values (the unsigned int8 code).
template <typename Rule, int k>
constexpr bool kNonNeg = ((Rule::kNonNegSlots >> k) & 1u) != 0;

// One element's update on registers: v the variable (loaded), s the slots
// (decoded), g the raw gradient; the decay, the gradient transform and the
// rule, in the order of the float32-state loops.
template <typename Rule, int V, bool D, typename M>
FUSEDOPT_HD void UpdateRegisters(const M* c, M gscale, M gclip, M& v, M* s, M g) {
  if constexpr (D) v = Decay(c, v);
  Rule::template Apply<V>(c, v, s, TransformGrad(g, gscale, gclip));
}

}  // namespace fusedopt

#endif  // FUSEDOPT_CC_RULES_STATE_UPDATE_H_
