// A call's plan: the checks every rule shares, then the rule's own plan
// (cc/rules/coefficients.h, namespace plans).
#include "cc/core/plan.h"

#include <cmath>

#include "cc/rules/coefficients.h"

namespace fusedopt {
namespace {

std::string MakePlan(Rule rule, const PlanInput& in, Plan* p) {
  if (in.attrs.tf_training_op_form && !TakesAttr(InfoOf(rule), kAttrTfTrainingOpForm, in.sparse)) {
    return plans::kTfTrainingOpFormRules;
  }
  switch (rule) {
#define FUSEDOPT_RULE_PLAN(ID, STRUCT, ...) \
  case Rule::ID:                            \
    return plans::Of(STRUCT{}, in, p);
    FUSEDOPT_FOR_EACH_RULE(FUSEDOPT_RULE_PLAN)
#undef FUSEDOPT_RULE_PLAN
  }
  return "unknown rule";
}

}  // namespace

bool RuleByName(const std::string& name, Rule* rule) {
  for (const RuleInfo& info : kRuleInfos) {
    if (name == info.name) {
      *rule = info.rule;
      return true;
    }
  }
  return false;
}

std::string MakeCallPlan(Rule rule, const PlanInput& in, bool rank0_plan, Plan* plan) {
  const RuleInfo& info = InfoOf(rule);
  if (static_cast<int>(in.scalars.size()) != info.num_scalars ||
      static_cast<int>(in.slot_given.size()) != info.num_slots) {
    return Msg(info.name, " takes ", info.num_scalars, " hyperparameters and ", info.num_slots,
               " slot lists, got ", in.scalars.size(), " and ", in.slot_given.size());
  }
  if (info.has_step && in.step < 1) return Msg("'step' must be >= 1, got ", in.step);
  // Note [hyperparameter checks]: every hyperparameter is finite (a NaN
  // learning rate from a broken schedule would turn every variable into NaN),
  // and the ranges Keras' constructors enforce hold (each rule's plan checks
  // its own); otherwise nothing is written.
  for (int k = 0; k < info.num_scalars; ++k) {
    if (!std::isfinite(in.scalars[k])) {
      return Msg("'", info.scalars[k], "' must be finite, got ", in.scalars[k],
                 "; nothing was updated");
    }
  }
  *plan = Plan{};
  std::string err = MakePlan(rule, in, plan);
  if (!err.empty()) return err;
  plan->f64 = in.f64;
  plan->rank0_coeffs = plan->coeffs;
  plan->rank0_variant = plan->variant;
  if (rank0_plan && in.grappler_form) {
    PlanInput rank0 = in;
    rank0.rank0 = true;
    Plan p0;
    err = MakePlan(rule, rank0, &p0);
    if (!err.empty()) return err;
    plan->rank0_coeffs = p0.coeffs;
    plan->rank0_variant = p0.variant;
  }
  return "";
}

}  // namespace fusedopt
