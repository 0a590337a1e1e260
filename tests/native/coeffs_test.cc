// Note [device coefficients]: the coefficients a device computes from scalars
// in its own memory (DeviceCoeffs, cc/rules/device_coeffs.h) against the
// host's plan (MakeCallPlan), on the CPU.
//
// For every rule, both opmaths (float and double), random hyperparameters of
// realistic and of out-of-range values, random steps and every attribute
// form the rule takes: the scalars are stored in random element types (as
// variables and constants of those types hold them), DeviceCoeffs reads them
// back through their pointers, and
//   * it accepts exactly the calls MakeCallPlan accepts (and names the same
//     scalar when both refuse one for its value);
//   * its coefficients, and its rank-0 ones (the form Grappler leaves rank-0
//     variables), have the host's bits.
// The host's coefficients come from the same CoeffsOf, so the bits check
// covers the reading of typed scalars and the forms the plans record; the
// verdicts are the independent half. Ftrl's variant depends on a value: a
// device reading another learning_rate_power than the plan's must refuse.
// (CUDA's pow against the C library's needs a GPU run: not yet written.)
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "cc/core/plan.h"
#include "cc/rules/device_coeffs.h"

namespace fusedopt {
namespace {

// A realistic value for the scalar named `name` (RuleInfo::scalars).
double Realistic(const std::string& name, std::mt19937_64& rng) {
  std::uniform_real_distribution<double> u(0.0, 1.0);
  auto log_uniform = [&](double lo, double hi) {
    return std::exp(std::log(lo) + u(rng) * (std::log(hi) - std::log(lo)));
  };
  if (name == "lr") return log_uniform(1e-6, 1.0);
  if (name == "epsilon") return log_uniform(1e-10, 1e-3);
  if (name == "weight_decay" || name == "l1" || name == "l2" || name == "l2_shrinkage" ||
      name == "beta") {
    return u(rng) < 0.5 ? 0.0 : log_uniform(1e-6, 0.1);
  }
  if (name == "learning_rate_power") return u(rng) < 0.3 ? -0.5 : -u(rng);
  if (name == "warmup_steps") return u(rng) < 0.5 ? 0.0 : std::floor(log_uniform(1, 5000));
  if (name == "scale") return log_uniform(0.5, 100);
  if (name == "rms_rate") return u(rng) < 0.5 ? 1.0 : log_uniform(0.05, 1.0);
  if (name == "momentum" && u(rng) < 0.2) return 0.0;
  // betas, rho, momentum, u_product: in (0, 1), often close to 1.
  const double x = u(rng) < 0.5 ? 1.0 - log_uniform(1e-5, 0.5) : u(rng);
  return x > 0 ? x : 0.5;
}

// A value the rule may refuse: negative, above one, zero, or not finite.
double Wild(std::mt19937_64& rng) {
  const double kinds[] = {-0.5,
                          -1e-9,
                          0.0,
                          1.0,
                          1.5,
                          1e30,
                          std::numeric_limits<double>::infinity(),
                          -std::numeric_limits<double>::infinity(),
                          std::numeric_limits<double>::quiet_NaN()};
  return kinds[rng() % (sizeof(kinds) / sizeof(kinds[0]))];
}

// Stores `x` as `type` (rounding it as that type does), returns what was
// stored, as the host would read it back.
double StoreAs(double x, ScalarType type, void* slot) {
  switch (type) {
    case ScalarType::kFloat16: {
      const Half h = FloatToHalf(static_cast<float>(x));
      std::memcpy(slot, &h, sizeof(h));
      return HalfToFloat(h);
    }
    case ScalarType::kBFloat16: {
      const BFloat16 h = FloatToBFloat16(static_cast<float>(x));
      std::memcpy(slot, &h, sizeof(h));
      return BFloat16ToFloat(h);
    }
    case ScalarType::kFloat32: {
      const float f = static_cast<float>(x);
      std::memcpy(slot, &f, sizeof(f));
      return f;
    }
    default: {
      std::memcpy(slot, &x, sizeof(x));
      return x;
    }
  }
}

bool SameForm(const CoeffForm& a, const CoeffForm& b) {
  return a.minimize_broadcasts == b.minimize_broadcasts && a.tf_keras_sparse == b.tf_keras_sparse &&
         a.tf_form == b.tf_form && a.epsilon_outside_sqrt == b.epsilon_outside_sqrt &&
         a.constant_folding == b.constant_folding && a.schedule_decay == b.schedule_decay &&
         a.sqrt_power == b.sqrt_power;
}

bool SameBits(const Coeffs& a, const Coeffs& b) { return std::memcmp(&a, &b, sizeof(a)) == 0; }

struct Counts {
  int accepted = 0, refused = 0, bits_differ = 0, verdict_differs = 0, scalar_differs = 0;
  int form_differs = 0;
  int power_changes = 0;  // Ftrl calls whose learning_rate_power changed variant
};

void RunRule(const RuleInfo& info, bool f64, std::mt19937_64& rng, int draws, Counts* n) {
  std::uniform_real_distribution<double> u(0.0, 1.0);
  for (int d = 0; d < draws; ++d) {
    PlanInput in;
    in.f64 = f64;
    in.sparse = u(rng) < 0.5;
    in.grappler_form = u(rng) < 0.5;
    in.constant_folding = u(rng) < 0.5;
    if (TakesAttr(info, kAttrTfTrainingOpForm, in.sparse)) in.attrs.tf_training_op_form = u(rng) < 0.5;
    if (info.attrs & kAttrEpsilonOutsideSqrt) in.attrs.epsilon_outside_sqrt = u(rng) < 0.5;
    if (info.attrs & kAttrNesterov) in.attrs.nesterov = u(rng) < 0.5;
    if ((info.attrs & kAttrScheduleDecay) && u(rng) < 0.5) in.attrs.schedule_decay = 0.004;
    for (int k = 0; k < info.num_slots; ++k) in.slot_given.push_back(!info.slots[k].optional || u(rng) < 0.5);
    std::vector<double> wanted;
    for (int k = 0; k < info.num_scalars; ++k) wanted.push_back(Realistic(info.scalars[k], rng));
    int64_t step = static_cast<int64_t>(std::exp(u(rng) * std::log(2e7)));
    if (step < 1) step = 1;
    // Attribute combinations the rule refuses whatever the values are not
    // this test's subject (the host alone decides them). The form the host
    // chooses depends on the attributes only: the device gets the one of this
    // valid call, also when a wild value below makes the host refuse.
    Plan valid;
    {
      PlanInput ok = in;
      ok.scalars = wanted;
      ok.step = info.has_step ? step : 0;
      if (!MakeCallPlan(info.rule, ok, true, &valid, f64 ? 3 : 2).empty()) {
        --d;
        continue;
      }
    }
    // One call in four gets a wild scalar or step.
    if (u(rng) < 0.25) {
      if (info.has_step && u(rng) < 0.2) {
        step = -static_cast<int64_t>(rng() % 3);
      } else {
        wanted[rng() % info.num_scalars] = Wild(rng);
      }
    }
    // Store the scalars as the variables and constants of a call hold them.
    DeviceScalars dev;
    dev.num_scalars = info.num_scalars;
    dev.has_step = info.has_step;
    alignas(8) unsigned char storage[kMaxScalars + 1][8];
    const ScalarType types[] = {ScalarType::kFloat32, ScalarType::kFloat64, ScalarType::kFloat16,
                                ScalarType::kBFloat16};
    for (int k = 0; k < info.num_scalars; ++k) {
      const ScalarType t = types[rng() % (f64 ? 2 : 4)];
      dev.scalars[k] = ScalarRef{storage[k], t};
      in.scalars.push_back(StoreAs(wanted[k], t, storage[k]));
    }
    if (u(rng) < 0.5) {
      const int64_t s = step;
      std::memcpy(storage[kMaxScalars], &s, sizeof(s));
      dev.step = ScalarRef{storage[kMaxScalars], ScalarType::kInt64};
    } else {
      const int32_t s = static_cast<int32_t>(step);
      std::memcpy(storage[kMaxScalars], &s, sizeof(s));
      dev.step = ScalarRef{storage[kMaxScalars], ScalarType::kInt32};
    }
    in.step = info.has_step ? step : 0;

    Plan plan;
    const std::string err = MakeCallPlan(info.rule, in, true, &plan, f64 ? 3 : 2);
    const CoeffForm form = valid.form, rank0_form = valid.rank0_form;
    // (Ftrl's form also records whether its learning_rate_power is -0.5.)
    CoeffForm expect = form, expect0 = rank0_form;
    if (info.rule == Rule::kFtrl) expect.sqrt_power = expect0.sqrt_power = in.scalars[1] == -0.5;
    if (err.empty() && !(SameForm(plan.form, expect) && SameForm(plan.rank0_form, expect0))) {
      ++n->form_differs;
    }
    Coeffs c{}, c0{};
    const CoeffResult r = DeviceCoeffs(info.rule, f64, dev, form, &c);
    const CoeffResult r0 = DeviceCoeffs(info.rule, f64, dev, rank0_form, &c0);
    const bool host_ok = err.empty();
    const bool dev_ok = r.status == CoeffStatus::kOk && r0.status == CoeffStatus::kOk;
    // Ftrl's variant was chosen for the valid call's learning_rate_power; a
    // wild value that changes it (to or from -0.5) must be refused by the
    // device (the host plans the new value's variant).
    if (info.rule == Rule::kFtrl && host_ok &&
        (in.scalars[1] == -0.5) != valid.form.sqrt_power) {
      ++n->power_changes;
      if (!(r.status == CoeffStatus::kOutOfRange && r.scalar == 1)) ++n->verdict_differs;
      continue;
    }
    if (host_ok != dev_ok) {
      ++n->verdict_differs;
      if (n->verdict_differs <= 5) {
        std::printf("  %s f64=%d: host says \"%s\", device status %d (scalar %d)\n", info.name,
                    f64, err.c_str(), static_cast<int>(r.status), r.scalar);
      }
      continue;
    }
    if (!host_ok) {
      ++n->refused;
      // The host's message names the scalar the device found.
      const std::string name = r.scalar >= 0 ? std::string(info.scalars[r.scalar]) : "step";
      if (err.find(name) == std::string::npos) {
        ++n->scalar_differs;
        if (n->scalar_differs <= 5) {
          std::printf("  %s: host says \"%s\", device names %s\n", info.name, err.c_str(),
                      name.c_str());
        }
      }
      continue;
    }
    ++n->accepted;
    if (!SameBits(c, plan.coeffs) || !SameBits(c0, plan.rank0_coeffs)) {
      ++n->bits_differ;
      if (n->bits_differ <= 5) {
        for (int k = 0; k < kMaxCoeffs; ++k) {
          if (c.c[k] != plan.coeffs.c[k] || c0.c[k] != plan.rank0_coeffs.c[k]) {
            std::printf("  %s f64=%d step=%lld: c[%d] host %a device %a (rank0 %a, %a)\n",
                        info.name, f64, static_cast<long long>(step), k, plan.coeffs.c[k], c.c[k],
                        plan.rank0_coeffs.c[k], c0.c[k]);
          }
        }
      }
    }
  }
}

}  // namespace
}  // namespace fusedopt

// Called from tests/native/index_test.cc's main.
void RunCoeffsTests(void (*check)(bool, const std::string&)) {
  using namespace fusedopt;
  std::mt19937_64 rng(20261207);
  for (const RuleInfo& info : kRuleInfos) {
    for (bool f64 : {false, true}) {
      Counts n;
      RunRule(info, f64, rng, 3000, &n);
      const std::string what = std::string(info.name) + (f64 ? " (double)" : " (float)");
      check(n.verdict_differs == 0, what + ": the device accepts exactly what the host accepts");
      check(n.scalar_differs == 0, what + ": the device names the scalar the host refuses");
      check(n.form_differs == 0, what + ": the form depends on the attributes only (and Ftrl's power)");
      check(n.bits_differ == 0, what + ": the device's coefficients have the host's bits");
      if (info.rule == Rule::kFtrl) {
        check(n.power_changes >= 5, what + ": calls whose learning_rate_power changes the variant (" +
                                        std::to_string(n.power_changes) + ") are refused");
      }
      check(n.accepted >= 1500 && n.refused >= 50,
            what + ": enough accepted (" + std::to_string(n.accepted) + ") and refused (" +
                std::to_string(n.refused) + ") calls");
    }
  }
}
