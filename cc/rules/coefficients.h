// Host-side coefficients of every rule (Note [coefficients] in
// update_rules.h): computed once per call, in double, from the call's scalar
// hyperparameters. Shared by the TF kernels and the TF-free test harness.
#ifndef FUSEDOPT_CC_RULES_COEFFICIENTS_H_
#define FUSEDOPT_CC_RULES_COEFFICIENTS_H_

#include <cmath>
#include <cstdint>

#include "cc/rules/update_rules.h"

namespace fusedopt {
namespace coeffs {

inline Coeffs Base(double lr, double weight_decay) {
  Coeffs c{};
  c.c[kDecay] = weight_decay * lr;
  return c;
}

inline Coeffs Sgd(double lr, double momentum, double weight_decay) {
  Coeffs c = Base(lr, weight_decay);
  c.c[SgdRule::kLr] = lr;
  c.c[SgdRule::kMomentum] = momentum;
  return c;
}

inline Coeffs Adam(double lr, double b1, double b2, double eps, double weight_decay, int64_t step) {
  Coeffs c = Base(lr, weight_decay);
  const double t = static_cast<double>(step);
  c.c[AdamRule::kOneMinusB1] = 1.0 - b1;
  c.c[AdamRule::kOneMinusB2] = 1.0 - b2;
  c.c[AdamRule::kAlpha] = lr * std::sqrt(1.0 - std::pow(b2, t)) / (1.0 - std::pow(b1, t));
  c.c[AdamRule::kEps] = eps;
  return c;
}

// u_product: the optimizer's running product of u_t, this step's u_t included.
// schedule_decay: the exponent's factor, 0.96^(schedule_decay * t); 1 in
// Keras 3, the optimizer's schedule_decay (0.004) in tf_keras' legacy Nadam.
inline Coeffs Nadam(double lr, double b1, double b2, double eps, double weight_decay,
                    double u_product, int64_t step, double schedule_decay = 1.0) {
  Coeffs c = Base(lr, weight_decay);
  const double t = static_cast<double>(step);
  const double u_t = b1 * (1.0 - 0.5 * std::pow(0.96, schedule_decay * t));
  const double u_t1 = b1 * (1.0 - 0.5 * std::pow(0.96, schedule_decay * (t + 1.0)));
  c.c[NadamRule::kOneMinusB1] = 1.0 - b1;
  c.c[NadamRule::kOneMinusB2] = 1.0 - b2;
  c.c[NadamRule::kUt1] = u_t1;
  c.c[NadamRule::kOneMinusUProd1] = 1.0 - u_product * u_t1;
  c.c[NadamRule::kOneMinusUt] = 1.0 - u_t;
  c.c[NadamRule::kOneMinusUProd] = 1.0 - u_product;
  c.c[NadamRule::kOneMinusB2Pow] = 1.0 - std::pow(b2, t);
  c.c[NadamRule::kLr] = lr;
  c.c[NadamRule::kEps] = eps;
  return c;
}

inline Coeffs Adamax(double lr, double b1, double b2, double eps, double weight_decay,
                     int64_t step) {
  Coeffs c = Base(lr, weight_decay);
  c.c[AdamaxRule::kOneMinusB1] = 1.0 - b1;
  c.c[AdamaxRule::kB2] = b2;
  c.c[AdamaxRule::kLr] = lr;
  c.c[AdamaxRule::kOneMinusB1Pow] = 1.0 - std::pow(b1, static_cast<double>(step));
  c.c[AdamaxRule::kEps] = eps;
  return c;
}

// epsilon_outside_sqrt: lr * g / (sqrt(denom) + eps), as tf_keras' legacy
// RMSprop without momentum does; otherwise lr * g / sqrt(denom + eps).
inline Coeffs Rmsprop(double lr, double rho, double momentum, double eps, double weight_decay,
                      bool epsilon_outside_sqrt = false) {
  Coeffs c = Base(lr, weight_decay);
  c.c[RmspropRule::kRho] = rho;
  c.c[RmspropRule::kOneMinusRho] = 1.0 - rho;
  c.c[epsilon_outside_sqrt ? RmspropRule::kEpsOut : RmspropRule::kEps] = eps;
  c.c[RmspropRule::kLr] = lr;
  c.c[RmspropRule::kMomentum] = momentum;
  return c;
}

// epsilon_outside_sqrt: lr * g / (sqrt(acc) + eps), as tf_keras' legacy
// Adagrad (ResourceApplyAdagradV2) does; otherwise lr * g / sqrt(acc + eps).
inline Coeffs Adagrad(double lr, double eps, double weight_decay,
                      bool epsilon_outside_sqrt = false) {
  Coeffs c = Base(lr, weight_decay);
  c.c[AdagradRule::kLr] = lr;
  c.c[epsilon_outside_sqrt ? AdagradRule::kEpsOut : AdagradRule::kEps] = eps;
  return c;
}

inline Coeffs Adadelta(double lr, double rho, double eps, double weight_decay) {
  Coeffs c = Base(lr, weight_decay);
  c.c[AdadeltaRule::kRho] = rho;
  c.c[AdadeltaRule::kOneMinusRho] = 1.0 - rho;
  c.c[AdadeltaRule::kEps] = eps;
  c.c[AdadeltaRule::kLr] = lr;
  return c;
}

inline Coeffs Ftrl(double lr, double lr_power, double l1, double l2, double l2_shrinkage,
                   double beta, double weight_decay) {
  Coeffs c = Base(lr, weight_decay);
  c.c[FtrlRule::kLr] = lr;
  c.c[FtrlRule::kPower] = -lr_power;
  c.c[FtrlRule::kTwoL2Shrinkage] = 2.0 * l2_shrinkage;
  c.c[FtrlRule::kTwoL2] = 2.0 * (l2 + beta / (2.0 * lr));
  c.c[FtrlRule::kL1] = l1;
  return c;
}

inline Coeffs Lion(double lr, double b1, double b2, double weight_decay) {
  Coeffs c = Base(lr, weight_decay);
  c.c[LionRule::kLr] = lr;
  c.c[LionRule::kB1] = b1;
  c.c[LionRule::kOneMinusB1] = 1.0 - b1;
  c.c[LionRule::kB2] = b2;
  c.c[LionRule::kOneMinusB2] = 1.0 - b2;
  return c;
}

inline Coeffs Lamb(double lr, double b1, double b2, double eps, double weight_decay,
                   int64_t step) {
  Coeffs c = Base(lr, weight_decay);
  const double t = static_cast<double>(step);
  c.c[LambRule::kOneMinusB1] = 1.0 - b1;
  c.c[LambRule::kOneMinusB2] = 1.0 - b2;
  c.c[LambRule::kOneMinusB1Pow] = 1.0 - std::pow(b1, t);
  c.c[LambRule::kOneMinusB2Pow] = 1.0 - std::pow(b2, t);
  c.c[LambRule::kEps] = eps;
  c.c[LambRule::kLr] = lr;
  return c;
}

}  // namespace coeffs
}  // namespace fusedopt

#endif  // FUSEDOPT_CC_RULES_COEFFICIENTS_H_
