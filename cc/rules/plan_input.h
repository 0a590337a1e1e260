// What a rule's plan is made from and what it makes (cc/core/plan.h plans a
// call; each rule's own planning, its variant and checks, is beside its
// coefficients in cc/rules/coefficients.h).
#ifndef FUSEDOPT_CC_RULES_PLAN_INPUT_H_
#define FUSEDOPT_CC_RULES_PLAN_INPUT_H_

#include <cstdint>
#include <sstream>
#include <string>
#include <vector>

#include "cc/rules/update_rules.h"

namespace fusedopt {

// Per-op attributes that change a rule's form; the rules that take each are
// those with its kAttr* bit in their registry entry (registry.h).
struct RuleAttrs {
  bool nesterov = false;              // Nesterov momentum
  bool epsilon_outside_sqrt = false;  // tf_keras' legacy x / (sqrt(y) + eps) forms
  bool tf_training_op_form = false;   // TF's ResourceApply* arithmetic
  double schedule_decay = 1.0;        // tf_keras' legacy 0.96^(d t) momentum schedule
  bool tf_norms = false;              // TF's Pow and Sum for the norms (Note [TF norms])
  bool tf_pow = false;                // TF's Pow (Note [TF pow])
  bool tf_tensor_pow = false;         // with tf_pow: the training ops' x.pow(p) instead
  // Low-precision state (Note [low-precision state]; the rules with
  // kStateVariants): the slots' format, and bfloat16 variables rounded
  // stochastically.
  StateFormat state_format = StateFormat::kSame;
  bool stochastic_rounding = false;
};

// What a plan is made from: scalar hyperparameters in RuleInfo::scalars
// order, the step (when the rule has one), which optional slot lists were
// given, and the variables' precision.
struct PlanInput {
  bool f64 = false;               // float64 variables: coefficients in double, else float
  bool grappler_form = false;     // Note [Grappler form] in coefficients.h
  bool constant_folding = false;  // Grappler's constant folding (reciprocals)
  bool rank0 = false;             // the plan for rank-0 variables (no MinimizeBroadcasts)
  // A sparse op's plan: with tf_training_op_form, some rules take tf_keras'
  // legacy sparse forms (Note [tf_keras sparse forms] in coefficients.h).
  bool sparse = false;
  bool MinimizeBroadcasts() const { return grappler_form && !rank0; }
  RuleAttrs attrs;
  std::vector<double> scalars;
  int64_t step = 0;
  std::vector<bool> slot_given;  // [RuleInfo::num_slots]
  uint64_t rounding_seed = 0;    // stochastic rounding (the step folded in by the caller)
  bool LowPrecision() const {
    return attrs.state_format != StateFormat::kSame || attrs.stochastic_rounding;
  }
};

// Note [device coefficients]: what a rule's coefficients depend on besides
// the scalar values and the step: the form the host chose from the call's
// attributes (the plans in coefficients.h fill it). A plain struct, so a
// device can compute the coefficients from scalars in its own memory with the
// host's code (coeffs::CoeffsOf, cc/rules/device_coeffs.h).
struct CoeffForm {
  bool minimize_broadcasts = false;   // Note [Grappler form]
  bool tf_keras_sparse = false;       // Note [tf_keras sparse forms]
  bool tf_form = false;               // tf_keras' legacy Nadam
  bool epsilon_outside_sqrt = false;  // tf_keras' x / (sqrt(y) + eps)
  bool constant_folding = false;      // Grappler's reciprocals
  // Ftrl: learning_rate_power was -0.5 (its square-root variant): a value the
  // variant depends on, so a device reading another refuses it.
  bool sqrt_power = false;
  double schedule_decay = 1.0;        // tf_keras' legacy Nadam schedule
};

struct Plan {
  // The index of the rule's Variant (Note [typed variants]: a plan fills the
  // rule's Variant struct and stores Variant::Index()).
  int variant = 0;
  // Rules that divide by a square root, under grappler_form: the CPU runs
  // TF's rsqrt forms (Note [TF rsqrt]) of the variant; false keeps the division.
  bool rsqrt_forms = false;
  bool f64 = false;
  Coeffs coeffs{};
  CoeffForm form;  // what coeffs was computed with, besides the scalars and step
  // For rank-0 variables: Grappler's MinimizeBroadcasts leaves a chain of
  // scalars alone (Note [Grappler form]), so these keep Keras' written weight
  // decay (and their rank-0 variant).
  Coeffs rank0_coeffs{};
  CoeffForm rank0_form;
  int rank0_variant = 0;
  // Low-precision state (Note [low-precision state]): the loops of
  // cpu::KernelTable::state_elementwise.
  StateFormat state_format = StateFormat::kSame;
  bool stochastic_weights = false;
  uint64_t rounding_seed = 0;
  bool LowPrecision() const { return state_format != StateFormat::kSame || stochastic_weights; }
  const Coeffs& For(bool rank0) const { return rank0 ? rank0_coeffs : coeffs; }
  int VariantFor(bool rank0) const { return rank0 ? rank0_variant : variant; }
  bool Decays() const { return coeffs.c[kDecay] != 0.0 || rank0_coeffs.c[kDecay] != 0.0; }
};

template <typename... A>
std::string Msg(const A&... parts) {
  std::ostringstream s;
  s.precision(17);
  (s << ... << parts);
  return s.str();
}

}  // namespace fusedopt

#endif  // FUSEDOPT_CC_RULES_PLAN_INPUT_H_
