// Call plans, without TensorFlow (the rules themselves: cc/rules/registry.h):
// MakeCallPlan, which turns one call's
// scalars and flags into a variant and its coefficients (Note [coefficients]).
// The TF kernels (cc/tf) and the TensorFlow-free C ABI (cc/native) both plan
// calls here, so a rule's variants and checks are written once.
#ifndef FUSEDOPT_CC_CORE_PLAN_H_
#define FUSEDOPT_CC_CORE_PLAN_H_

#include <cstdint>
#include <string>
#include <vector>

#include "cc/rules/plan_input.h"
#include "cc/rules/registry.h"

namespace fusedopt {

// The rule named `name`, or false.
bool RuleByName(const std::string& name, Rule* rule);

// A call's plan. With rank0_plan and grappler_form, also the plan for its
// rank-0 variables, which Grappler's MinimizeBroadcasts leaves in Keras'
// written form (Note [Grappler form]). Returns "" or what is wrong with the
// input (an invalid-argument message, nothing has been written).
// dt: the variables' DType index (low-precision state takes float32 and
// bfloat16; -1 skips that check).
std::string MakeCallPlan(Rule rule, const PlanInput& in, bool rank0_plan, Plan* plan,
                         int dt = -1);
// "same", "bfloat16", "int8".
const char* StateFormatName(StateFormat f);

}  // namespace fusedopt

#endif  // FUSEDOPT_CC_CORE_PLAN_H_
