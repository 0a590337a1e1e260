// A rule's coefficients from scalars that stay where they live (Note [device
// coefficients] in coefficients.h).
//
// Keras keeps the learning rate, the step (`iterations`) and Nadam's
// u_product in variables on the accelerator; reading them on the host costs a
// copy and a wait for the stream on every step. DeviceCoeffs reads them
// through typed pointers, checks them as MakeCallPlan does, and computes the
// coefficients with the host's own code (coeffs::CoeffsIn, FirstBadScalar),
// so a device thread computes what the host's plan would. The host still
// chooses everything that depends on attributes and slot lists (the variant
// and the CoeffForm, in MakeCallPlan); only values are read here. One variant
// depends on a value (Ftrl's square root for learning_rate_power -0.5): the
// form records it and a device reading another value refuses the call
// (kOutOfRange on that scalar) instead of running the wrong variant.
//
// No TensorFlow header: nvcc compiles this in header-free .cu files.
#ifndef FUSEDOPT_CC_RULES_DEVICE_COEFFS_H_
#define FUSEDOPT_CC_RULES_DEVICE_COEFFS_H_

#include <cstdint>
#include <cstring>

#include "cc/rules/coefficients.h"
#include "cc/rules/registry.h"

namespace fusedopt {

// The element type of one scalar input (a rank-0 tensor or a 1-element
// buffer).
enum class ScalarType : int { kFloat16, kBFloat16, kFloat32, kFloat64, kInt32, kInt64 };

struct ScalarRef {
  const void* data = nullptr;
  ScalarType type = ScalarType::kFloat64;
};

// The scalar's value as a double: exact for every type listed (an int64 step
// beyond 2^53 rounds, as the host's Step<S> cast does anyway).
FUSEDOPT_HD double ReadScalar(ScalarRef r) {
  switch (r.type) {
    case ScalarType::kFloat16: {
      Half h;
      std::memcpy(&h, r.data, sizeof(h));
      return HalfToFloat(h);
    }
    case ScalarType::kBFloat16: {
      BFloat16 h;
      std::memcpy(&h, r.data, sizeof(h));
      return BFloat16ToFloat(h);
    }
    case ScalarType::kFloat32: {
      float f;
      std::memcpy(&f, r.data, sizeof(f));
      return f;
    }
    case ScalarType::kFloat64: {
      double d;
      std::memcpy(&d, r.data, sizeof(d));
      return d;
    }
    case ScalarType::kInt32: {
      int32_t i;
      std::memcpy(&i, r.data, sizeof(i));
      return static_cast<double>(i);
    }
    case ScalarType::kInt64: {
      int64_t i;
      std::memcpy(&i, r.data, sizeof(i));
      return static_cast<double>(i);
    }
  }
  return 0.0;
}

FUSEDOPT_HD int64_t ReadStep(ScalarRef r) {
  if (r.type == ScalarType::kInt64) {
    int64_t i;
    std::memcpy(&i, r.data, sizeof(i));
    return i;
  }
  if (r.type == ScalarType::kInt32) {
    int32_t i;
    std::memcpy(&i, r.data, sizeof(i));
    return i;
  }
  // A floating step (a float variable counting steps): only whole values.
  const double d = ReadScalar(r);
  return d >= -9.2e18 && d <= 9.2e18 && d == static_cast<double>(static_cast<int64_t>(d))
             ? static_cast<int64_t>(d)
             : int64_t{0};
}

// Finite without the C library (the same bits test on host and device).
FUSEDOPT_HD bool FiniteDouble(double x) {
  uint64_t u;
  std::memcpy(&u, &x, sizeof(u));
  return ((u >> 52) & 0x7ffu) != 0x7ffu;
}

// One call's scalar inputs, in the registry's order (RuleInfo::scalars), and
// its step (when the rule has one).
struct DeviceScalars {
  ScalarRef scalars[kMaxScalars];
  int num_scalars = 0;
  ScalarRef step;
  bool has_step = false;
};

// What DeviceCoeffs found: kOk, or why nothing may be written. `scalar` is
// the offending scalar's index (RuleInfo::scalars), -1 for the step.
enum class CoeffStatus : int { kOk = 0, kNotFinite = 1, kOutOfRange = 2, kBadStep = 3 };
struct CoeffResult {
  CoeffStatus status = CoeffStatus::kOk;
  int scalar = -1;
  double value = 0.0;
};

// The rule's coefficients (in the variables' opmath: double when f64) from
// scalar values, or the first scalar out of range (*out untouched). The
// same checks as MakeCallPlan's, in its order: the step, finite, the rule's
// ranges.
FUSEDOPT_HDI CoeffResult CoeffsFromValues(Rule rule, bool f64, const double* s, int num_scalars,
                                          bool has_step, int64_t step, const CoeffForm& form,
                                          Coeffs* out) {
  CoeffResult r;
  if (has_step && step < 1) {
    r.status = CoeffStatus::kBadStep;
    r.value = static_cast<double>(step);
    return r;
  }
  for (int k = 0; k < num_scalars; ++k) {
    if (!FiniteDouble(s[k])) {
      r.status = CoeffStatus::kNotFinite;
      r.scalar = k;
      r.value = s[k];
      return r;
    }
  }
  switch (rule) {
#define FUSEDOPT_RULE_DEVICE_COEFFS(ID, STRUCT, ...)             \
  case Rule::ID: {                                               \
    const int bad = coeffs::FirstBadScalar(STRUCT{}, s, form);   \
    if (bad >= 0) {                                              \
      r.status = CoeffStatus::kOutOfRange;                       \
      r.scalar = bad;                                            \
      r.value = s[bad];                                          \
      return r;                                                  \
    }                                                            \
    *out = coeffs::CoeffsIn(STRUCT{}, f64, s, step, form);       \
    return r;                                                    \
  }
    FUSEDOPT_FOR_EACH_RULE(FUSEDOPT_RULE_DEVICE_COEFFS)
#undef FUSEDOPT_RULE_DEVICE_COEFFS
  }
  return r;
}

// The same, reading the values through `in`'s pointers (device memory on a
// device; any memory on the host).
FUSEDOPT_HDI CoeffResult DeviceCoeffs(Rule rule, bool f64, const DeviceScalars& in,
                                      const CoeffForm& form, Coeffs* out) {
  double s[kMaxScalars];
  for (int k = 0; k < in.num_scalars; ++k) s[k] = ReadScalar(in.scalars[k]);
  const int64_t step = in.has_step ? ReadStep(in.step) : 0;
  return CoeffsFromValues(rule, f64, s, in.num_scalars, in.has_step, step, form, out);
}

}  // namespace fusedopt

#endif  // FUSEDOPT_CC_RULES_DEVICE_COEFFS_H_
