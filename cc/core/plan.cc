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

const char* StateFormatName(StateFormat f) {
  switch (f) {
    case StateFormat::kSame:
      return "same";
    case StateFormat::kBFloat16:
      return "bfloat16";
    case StateFormat::kInt8:
      return "int8";
  }
  return "?";
}

std::string StateRules() {
  std::string names;
  for (const RuleInfo& r : kRuleInfos) {
    if (NumStateVariants(r.rule) == 0) continue;
    names += names.empty() ? "" : ", ";
    names += r.name;
  }
  return names;
}

std::string CheckLowPrecision(Rule rule, const PlanInput& in, const Plan& plan, int dt) {
  if (!in.LowPrecision()) return "";
  const RuleInfo& info = InfoOf(rule);
  const std::string what =
      in.attrs.state_format != StateFormat::kSame
          ? Msg("state_format='", StateFormatName(in.attrs.state_format), "'")
          : std::string("stochastic_rounding");
  if (NumStateVariants(rule) == 0) {
    return Msg(what, " is for the rules ", StateRules(), "; ", info.name, " has none");
  }
  if (plan.variant >= NumStateVariants(rule)) {
    return Msg(what, " takes Keras' form of ", info.name, ", not tf_training_op_form");
  }
  if (in.attrs.state_format == StateFormat::kInt8 && plan.variant >= info.int8_state_variants) {
    return Msg(what, " is not available for this form of ", info.name,
               " (centered: the difference of two quantized moments in the denominator can turn "
               "negative); use state_format='bfloat16'");
  }
  const bool f32 = dt == static_cast<int>(DType::kFloat32);
  const bool bf16 = dt == static_cast<int>(DType::kBFloat16);
  if (dt < 0) return "";
  if (in.attrs.state_format != StateFormat::kSame && !f32 && !bf16) {
    return Msg(what, " needs float32 or bfloat16 variables, got ",
               dt == static_cast<int>(DType::kFloat16) ? "float16" : "float64");
  }
  if (in.attrs.stochastic_rounding && !bf16) {
    return "stochastic_rounding is for bfloat16 variables (others round to nearest)";
  }
  return "";
}

std::string MakeCallPlan(Rule rule, const PlanInput& in_given, bool rank0_plan, Plan* plan,
                         int dt) {
  const RuleInfo& info = InfoOf(rule);
  // Low-precision state has Keras' own forms only (no Grappler variants:
  // there are no Keras bits to match).
  PlanInput in = in_given;
  if (in.LowPrecision()) {
    in.grappler_form = false;
    in.constant_folding = false;
  }
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
  err = CheckLowPrecision(rule, in, *plan, dt);
  if (!err.empty()) return err;
  plan->state_format = in.attrs.state_format;
  plan->stochastic_weights = in.attrs.stochastic_rounding;
  plan->rounding_seed = in.rounding_seed;
  plan->rank0_coeffs = plan->coeffs;
  plan->rank0_form = plan->form;
  plan->rank0_variant = plan->variant;
  if (rank0_plan && in.grappler_form) {
    PlanInput rank0 = in;
    rank0.rank0 = true;
    Plan p0;
    err = MakePlan(rule, rank0, &p0);
    if (!err.empty()) return err;
    plan->rank0_coeffs = p0.coeffs;
    plan->rank0_form = p0.form;
    plan->rank0_variant = p0.variant;
  }
  return "";
}

}  // namespace fusedopt
