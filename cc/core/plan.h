// Rules and call plans, without TensorFlow: the table of fused rules (their
// slot and hyperparameter names) and MakeCallPlan, which turns one call's
// scalars and flags into a variant and its coefficients (Note [coefficients]).
// The TF kernels (cc/tf) and the TensorFlow-free C ABI (cc/native) both plan
// calls here, so a rule's variants and checks are written once.
#ifndef FUSEDOPT_CC_CORE_PLAN_H_
#define FUSEDOPT_CC_CORE_PLAN_H_

#include <cstdint>
#include <string>
#include <vector>

#include "cc/rules/update_rules.h"

namespace fusedopt {

// Every fused rule; AdamW is Adam with weight decay.
enum class Rule : int {
  kSgd = 0,
  kAdam,
  kNadam,
  kAdamax,
  kRmsprop,
  kAdagrad,
  kAdadelta,
  kFtrl,
  kLion,
  kLamb,
  kScheduleFree,
  kMuonMomentum,
  kMuon,
};
constexpr int kNumRules = 13;
constexpr int kMaxScalars = 7;

struct SlotInfo {
  const char* name;  // the op's input name (and fusedopt.ops keyword)
  bool optional;     // an empty list selects a variant without it
};

struct RuleInfo {
  const char* name;  // "sgd", "adam", ... (the C ABI and fusedopt._native)
  Algo algo;         // its elementwise rule (LAMB: unused, it runs two passes)
  bool two_pass;     // LAMB
  int num_slots;
  SlotInfo slots[kMaxSlots];
  int num_scalars;
  const char* scalars[kMaxScalars];  // hyperparameter input names, in order
  bool has_step;                     // bias-corrected: takes the step (>= 1)
};

const RuleInfo& InfoOf(Rule rule);
// The rule named `name`, or false.
bool RuleByName(const std::string& name, Rule* rule);

// Per-op attributes that change a rule's form.
struct RuleAttrs {
  bool nesterov = false;              // SGD
  bool epsilon_outside_sqrt = false;  // Adagrad, RMSprop: tf_keras' legacy form
  bool tf_training_op_form = false;   // RMSprop, Adadelta, Adamax, Nadam, Adam: TF's ResourceApply*
  double schedule_decay = 1.0;        // Nadam: tf_keras' legacy 0.96^(d t)
  bool tf_norms = false;              // Lamb: TF's Pow and Sum for the norms (Note [TF norms])
  bool tf_pow = false;                // Ftrl: TF's Pow (Note [TF pow])
  bool tf_tensor_pow = false;         // Ftrl, with tf_pow: the training ops' x.pow(p) instead
};

// What a plan is made from: scalar hyperparameters in RuleInfo::scalars
// order, the step (when the rule has one), which optional slot lists were
// given, and the variables' precision.
struct PlanInput {
  bool f64 = false;               // float64 variables: coefficients in double, else float
  bool grappler_form = false;     // Note [Grappler form] in coefficients.h
  bool constant_folding = false;  // Grappler's constant folding (reciprocals)
  bool rank0 = false;             // the plan for rank-0 variables (no MinimizeBroadcasts)
  // A sparse op's plan: with tf_training_op_form, Adam and Adamax take
  // tf_keras' legacy sparse forms (Note [tf_keras sparse forms]).
  bool sparse = false;
  bool MinimizeBroadcasts() const { return grappler_form && !rank0; }
  RuleAttrs attrs;
  std::vector<double> scalars;
  int64_t step = 0;
  std::vector<bool> slot_given;  // [RuleInfo::num_slots]
};

struct Plan {
  int variant = 0;
  // Rules that divide by a square root, under grappler_form: the variant
  // stride of the rsqrt forms (Note [TF rsqrt]); 0 keeps the division.
  int rsqrt_stride = 0;
  bool f64 = false;
  Coeffs coeffs{};
  // For rank-0 variables: Grappler's MinimizeBroadcasts leaves a chain of
  // scalars alone (Note [Grappler form]), so these keep Keras' written weight
  // decay (and ScheduleFree its variant 2).
  Coeffs rank0_coeffs{};
  int rank0_variant = 0;
  const Coeffs& For(bool rank0) const { return rank0 ? rank0_coeffs : coeffs; }
  int VariantFor(bool rank0) const { return rank0 ? rank0_variant : variant; }
  bool Decays() const { return coeffs.c[kDecay] != 0.0 || rank0_coeffs.c[kDecay] != 0.0; }
};

// A call's plan. With rank0_plan and grappler_form, also the plan for its
// rank-0 variables, which Grappler's MinimizeBroadcasts leaves in Keras'
// written form (Note [Grappler form]). Returns "" or what is wrong with the
// input (an invalid-argument message, nothing has been written).
std::string MakeCallPlan(Rule rule, const PlanInput& in, bool rank0_plan, Plan* plan);

}  // namespace fusedopt

#endif  // FUSEDOPT_CC_CORE_PLAN_H_
