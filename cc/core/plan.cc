// The rule table and the per-rule plans (variants, checks, coefficients).
#include "cc/core/plan.h"

#include <cmath>
#include <sstream>

#include "cc/rules/coefficients.h"

namespace fusedopt {
namespace {

constexpr RuleInfo kRules[kNumRules] = {
    {"sgd", Algo::kSgd, false, 1, {{"momenta", true}}, 3, {"lr", "momentum", "weight_decay"}, false},
    {"adam", Algo::kAdam, false, 3, {{"m", false}, {"v", false}, {"vhat", true}}, 5,
     {"lr", "beta_1", "beta_2", "epsilon", "weight_decay"}, true},
    {"nadam", Algo::kNadam, false, 2, {{"m", false}, {"v", false}}, 6,
     {"lr", "beta_1", "beta_2", "epsilon", "weight_decay", "u_product"}, true},
    {"adamax", Algo::kAdamax, false, 2, {{"m", false}, {"u", false}}, 5,
     {"lr", "beta_1", "beta_2", "epsilon", "weight_decay"}, true},
    {"rmsprop", Algo::kRmsprop, false, 3,
     {{"velocity", false}, {"momenta", true}, {"average_gradient", true}}, 5,
     {"lr", "rho", "momentum", "epsilon", "weight_decay"}, false},
    {"adagrad", Algo::kAdagrad, false, 1, {{"accumulator", false}}, 3,
     {"lr", "epsilon", "weight_decay"}, false},
    {"adadelta", Algo::kAdadelta, false, 2,
     {{"accumulated_grad", false}, {"accumulated_delta_var", false}}, 4,
     {"lr", "rho", "epsilon", "weight_decay"}, false},
    {"ftrl", Algo::kFtrl, false, 2, {{"accumulator", false}, {"linear", false}}, 7,
     {"lr", "learning_rate_power", "l1", "l2", "l2_shrinkage", "beta", "weight_decay"}, false},
    {"lion", Algo::kLion, false, 1, {{"m", false}}, 4, {"lr", "beta_1", "beta_2", "weight_decay"},
     false},
    {"lamb", Algo::kAdam, true, 2, {{"m", false}, {"v", false}}, 5,
     {"lr", "beta_1", "beta_2", "epsilon", "weight_decay"}, true},
    {"schedule_free_adamw", Algo::kScheduleFree, false, 2, {{"momentum", false}, {"velocity", false}},
     6, {"lr", "beta_1", "beta_2", "epsilon", "warmup_steps", "weight_decay"}, true},
    {"muon_momentum", Algo::kMuonMomentum, false, 0, {}, 1, {"momentum"}, false},
    {"muon", Algo::kMuon, false, 0, {}, 4, {"lr", "scale", "rms_rate", "weight_decay"}, false},
};

template <typename... A>
std::string Msg(const A&... parts) {
  std::ostringstream s;
  s.precision(17);
  (s << ... << parts);
  return s.str();
}

// A rule's coefficients computed in the variables' opmath (Note [Keras
// arithmetic] in coefficients.h).
#define FUSEDOPT_COEFFS(in, fn, ...) \
  ((in).f64 ? coeffs::fn<double>(__VA_ARGS__) : coeffs::fn<float>(__VA_ARGS__))

std::string MakePlan(Rule rule, const PlanInput& in, Plan* p) {
  const std::vector<double>& s = in.scalars;
  const bool mb = in.MinimizeBroadcasts();
  if (in.attrs.tf_training_op_form && rule != Rule::kAdamax && rule != Rule::kRmsprop &&
      rule != Rule::kAdadelta && rule != Rule::kNadam && !(rule == Rule::kAdam && in.sparse)) {
    return "tf_training_op_form is for adamax, rmsprop, adadelta and nadam (TensorFlow's "
           "ResourceApply* arithmetic; tf_keras' legacy Nadam) and adam's sparse op (tf_keras' "
           "legacy sparse Adam)";
  }
  // Note [tf_keras sparse forms]: tf_keras' legacy Adam and Adamax update
  // IndexedSlices with TF ops of their own (DESIGN.md: m.assign(m * beta_1),
  // then scatter_add(m, idx, g * (1 - beta_1)), ...), not with the training
  // ops their dense updates call, so their sparse ops' tf_training_op_form
  // is that order (the other rules' sparse training ops share their dense
  // ones' arithmetic). tf_keras sums duplicate indices before (unsorted
  // segment sum, in position order), as the sparse kernels do.
  const bool tf_keras_sparse = in.attrs.tf_training_op_form && in.sparse;
  switch (rule) {
    case Rule::kSgd:
      if (in.attrs.nesterov && !in.slot_given[0]) {
        return "nesterov=True needs momentum slots (momenta is empty)";
      }
      p->variant = !in.slot_given[0] ? 0 : (in.attrs.nesterov ? 2 : 1);
      p->coeffs = FUSEDOPT_COEFFS(in, Sgd, s[0], s[1], s[2], mb);
      return "";
    case Rule::kAdam:
      if (tf_keras_sparse && s[4] != 0) {
        return Msg("tf_training_op_form (tf_keras' legacy Adam) takes no weight_decay, got ",
                   s[4]);
      }
      p->variant = (in.slot_given[2] ? 1 : 0) +
                   (!tf_keras_sparse ? 0
                    : in.grappler_form ? AdamRule::kTfKerasSparseGrappler
                                       : AdamRule::kTfKerasSparse);
      p->coeffs = FUSEDOPT_COEFFS(in, Adam, s[0], s[1], s[2], s[3], s[4], in.step, mb,
                                  tf_keras_sparse);
      return "";
    case Rule::kNadam:
      if (in.attrs.tf_training_op_form) {
        if (s[4] != 0) {
          return Msg("tf_training_op_form (tf_keras' legacy Nadam) takes no weight_decay, got ",
                     s[4]);
        }
        p->variant = 1;
      }
      p->coeffs = FUSEDOPT_COEFFS(in, Nadam, s[0], s[1], s[2], s[3], s[4], s[5], in.step,
                                  in.attrs.schedule_decay, mb, in.attrs.tf_training_op_form);
      return "";
    case Rule::kAdamax:
      p->variant = tf_keras_sparse ? AdamaxRule::kTfKerasSparse
                                   : (in.attrs.tf_training_op_form ? 1 : 0);
      p->coeffs = FUSEDOPT_COEFFS(in, Adamax, s[0], s[1], s[2], s[3], s[4], in.step, mb);
      return "";
    case Rule::kRmsprop:
      p->variant = (in.slot_given[1] ? 1 : 0) | (in.slot_given[2] ? 2 : 0);
      if (tf_keras_sparse) {
        // tf_keras' legacy sparse RMSprop without momentum (its own ops;
        // with momentum it calls ResourceSparseApply(Centered)RMSProp, whose
        // per-row packet rsqrt the kernels do not reproduce).
        if (in.slot_given[1] || !in.attrs.epsilon_outside_sqrt) {
          return "the sparse tf_training_op_form of rmsprop is tf_keras' legacy RMSprop "
                 "without momentum (epsilon_outside_sqrt, no momenta)";
        }
        if (in.grappler_form) p->variant += RmspropRule::kTfKerasSparseGrappler;
        p->coeffs = FUSEDOPT_COEFFS(in, Rmsprop, s[0], s[1], s[2], s[3], s[4], true, mb);
        return "";
      }
      if (in.attrs.tf_training_op_form) {
        if (in.attrs.epsilon_outside_sqrt) {
          return "tf_training_op_form and epsilon_outside_sqrt exclude each other";
        }
        p->variant += RmspropRule::kTfOpBase;
      } else if (in.grappler_form && !in.attrs.epsilon_outside_sqrt) {
        p->rsqrt_stride = RmspropRule::kRsqrtStride;
      }
      p->coeffs = FUSEDOPT_COEFFS(in, Rmsprop, s[0], s[1], s[2], s[3], s[4],
                                  in.attrs.epsilon_outside_sqrt, mb);
      return "";
    case Rule::kAdagrad:
      if (in.grappler_form && !in.attrs.epsilon_outside_sqrt) {
        p->rsqrt_stride = AdagradRule::kRsqrtStride;
      }
      p->coeffs = FUSEDOPT_COEFFS(in, Adagrad, s[0], s[1], s[2], in.attrs.epsilon_outside_sqrt, mb);
      return "";
    case Rule::kAdadelta:
      if (in.attrs.tf_training_op_form) {
        p->variant = 1;  // TF's op always divides through its Rsqrt
        p->rsqrt_stride = AdadeltaRule::kRsqrtStride;
      } else if (in.grappler_form) {
        p->rsqrt_stride = AdadeltaRule::kRsqrtStride;
      }
      p->coeffs = FUSEDOPT_COEFFS(in, Adadelta, s[0], s[1], s[2], s[3], mb);
      return "";
    case Rule::kFtrl:
      if (s[0] <= 0) return Msg("Ftrl needs lr > 0, got ", s[0]);
      if (s[1] > 0) return Msg("learning_rate_power must be <= 0, got ", s[1]);
      p->variant = s[1] == -0.5 ? 1 : 0;
      p->coeffs = FUSEDOPT_COEFFS(in, Ftrl, s[0], s[1], s[2], s[3], s[4], s[5], s[6], mb);
      return "";
    case Rule::kLion:
      p->coeffs = FUSEDOPT_COEFFS(in, Lion, s[0], s[1], s[2], s[3], mb);
      return "";
    case Rule::kLamb:
      p->coeffs = FUSEDOPT_COEFFS(in, Lamb, s[0], s[1], s[2], s[3], s[4], in.step, mb);
      return "";
    case Rule::kScheduleFree:
      if (!(s[1] > 0)) return Msg("'beta_1' must be > 0, got ", s[1]);
      if (!(s[4] >= 0)) return Msg("'warmup_steps' must be >= 0, got ", s[4]);
      p->variant = !in.constant_folding ? 0 : (mb ? 1 : 2);
      p->coeffs = FUSEDOPT_COEFFS(in, ScheduleFree, s[0], s[1], s[2], s[3], s[4], s[5], in.step,
                                  in.constant_folding, mb);
      return "";
    case Rule::kMuonMomentum:
      p->coeffs = FUSEDOPT_COEFFS(in, MuonMomentum, s[0]);
      return "";
    case Rule::kMuon:
      if (!(s[1] > 0)) return Msg("'scale' must be > 0, got ", s[1]);
      p->variant = mb ? 1 : 0;
      p->coeffs = FUSEDOPT_COEFFS(in, Muon, s[0], s[1], s[2], s[3], mb);
      return "";
  }
  return "unknown rule";
}

}  // namespace

const RuleInfo& InfoOf(Rule rule) { return kRules[static_cast<int>(rule)]; }

bool RuleByName(const std::string& name, Rule* rule) {
  for (int r = 0; r < kNumRules; ++r) {
    if (name == kRules[r].name) {
      *rule = static_cast<Rule>(r);
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
  // and the ranges Keras' constructors enforce hold; otherwise nothing is
  // written.
  for (int k = 0; k < info.num_scalars; ++k) {
    if (!std::isfinite(in.scalars[k])) {
      return Msg("'", info.scalars[k], "' must be finite, got ", in.scalars[k],
                 "; nothing was updated");
    }
  }
  if (rule == Rule::kNadam && !(std::isfinite(in.attrs.schedule_decay) && in.attrs.schedule_decay > 0)) {
    return Msg("'schedule_decay' must be finite and > 0, got ", in.attrs.schedule_decay,
               "; nothing was updated");
  }
  auto at_least_zero = [&](int k) -> std::string {
    if (in.scalars[k] >= 0) return "";
    return Msg("'", info.scalars[k], "' must be >= 0, got ", in.scalars[k], "; nothing was updated");
  };
  if (rule == Rule::kSgd && !(in.scalars[1] >= 0 && in.scalars[1] <= 1)) {
    return Msg("'momentum' must be in [0, 1], got ", in.scalars[1], "; nothing was updated");
  }
  if (rule == Rule::kLion && !(in.scalars[1] > 0 && in.scalars[1] <= 1)) {
    return Msg("'beta_1' must be in (0, 1], got ", in.scalars[1], "; nothing was updated");
  }
  if (rule == Rule::kFtrl) {
    for (int k : {2, 3, 4}) {  // l1, l2, l2_shrinkage
      const std::string e = at_least_zero(k);
      if (!e.empty()) return e;
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
