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
// (decoded), g the raw gradient; the decay, the gradient transform (X: the
// call has one; without, the gradient as it is, as the float32-state loops
// do) and the rule, in the order of the float32-state loops.
template <typename Rule, int V, bool D, bool X = true, typename M>
FUSEDOPT_HD void UpdateRegisters(const M* c, M gscale, M gclip, M& v, M* s, M g) {
  if constexpr (D) v = Decay(c, v);
  if constexpr (X) g = TransformGrad(g, gscale, gclip);
  Rule::template Apply<V>(c, v, s, g);
}

// Stores one updated element in the element formats (kSame with W, and
// kBFloat16): the variable (stochastically with W) and its K slots
// (stochastically in kBFloat16). idx: the element's index in its tensor (its
// rounding bits); i: its index in the arrays given. Hash A only with slot 0
// or 1 rounded, hash B with slot 2 or the variable.
template <typename T, StateFormat F, bool W, int K>
FUSEDOPT_HD void StoreStateElement(T* __restrict__ var, SlotStorage<F, T>* __restrict__ s0,
                                   SlotStorage<F, T>* __restrict__ s1,
                                   SlotStorage<F, T>* __restrict__ s2, int64_t i, int64_t idx,
                                   opmath_t<T> v, const opmath_t<T>* s, uint32_t ka,
                                   uint32_t kb) {
  static_assert(F != StateFormat::kInt8, "int8 slots are encoded per block");
  constexpr bool kSr = F == StateFormat::kBFloat16;
  const uint32_t ha = (kSr && K > 0) ? RoundingBits(ka, idx) : 0u;
  const uint32_t hb = ((kSr && K > 2) || W) ? RoundingBits(kb, idx) : 0u;
  if constexpr (W) {
    var[i] = StochasticBFloat16(v, VarRoundingBits(hb));
  } else {
    var[i] = Store<T>(v);
  }
  if constexpr (kSr) {
    if constexpr (K > 0) s0[i] = StochasticBFloat16(s[0], SlotRoundingBits(0, ha, hb));
    if constexpr (K > 1) s1[i] = StochasticBFloat16(s[1], SlotRoundingBits(1, ha, hb));
    if constexpr (K > 2) s2[i] = StochasticBFloat16(s[2], SlotRoundingBits(2, ha, hb));
  } else {
    if constexpr (K > 0) s0[i] = Store<T>(s[0]);
    if constexpr (K > 1) s1[i] = Store<T>(s[1]);
    if constexpr (K > 2) s2[i] = Store<T>(s[2]);
  }
}

}  // namespace fusedopt

#endif  // FUSEDOPT_CC_RULES_STATE_UPDATE_H_
