// Host-side coefficients of every rule (Note [coefficients] in
// update_rules.h): computed once per call from the call's scalar
// hyperparameters. Shared by the TF kernels and the TF-free test harness.
//
// Note [Keras arithmetic]: a drop-in must give keras.optimizers.X's numbers
// bit for bit, and Keras computes its per-step scalars in the variable's dtype
// S, rounding each Python hyperparameter in one of two ways:
//   * Direct(x): `convert_to_tensor(x, dtype)` and Python arithmetic before it
//     (`ops.multiply(m, 1 - self.beta_1)`: 1 - 0.9 is done in double, then
//     rounded once to S);
//   * ViaFloat(x): `ops.cast(x, dtype)` (tf.cast of a Python float makes a
//     float32 tensor first, so float64 variables see float32's 0.9).
// Everything after that (powers of the step, bias corrections, 1 - u_t, ...)
// is computed in S with the operation order of Keras' update_step. So every
// function here takes the hyperparameters as exact doubles (the Python
// values; a float32 tensor such as Keras' learning rate is exact in double)
// and computes in S = opmath of the variable (float for float16/bfloat16/
// float32, double for float64). The results are stored as doubles, which hold
// S values exactly, so the kernels' conversion to opmath is exact.
// std::pow(float, float) is the C library's powf, as is TF's scalar Pow on
// the CPU (both under TF's flush-to-zero mode when called from an op).
#ifndef FUSEDOPT_CC_RULES_COEFFICIENTS_H_
#define FUSEDOPT_CC_RULES_COEFFICIENTS_H_

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "cc/rules/plan_input.h"
#include "cc/rules/update_rules.h"

namespace fusedopt {
namespace coeffs {

// x^y as Keras' scalar Pow computes it on the processor that runs the step.
// On the host std::pow (float: the C library's powf, which TF's CPU Pow
// calls); on a CUDA device CUDA's pow/powf, which TF's GPU Pow and XLA's GPU
// pow call (Note [device coefficients]: the one place where a coefficient
// computed on the device can differ from the host's).
template <typename S>
FUSEDOPT_HD S Pow(S x, S y) {
#if defined(__CUDA_ARCH__)
  if constexpr (sizeof(S) == 4) {
    return ::powf(x, y);
  } else {
    return ::pow(x, y);
  }
#else
  return std::pow(x, y);
#endif
}


// `convert_to_tensor(x, S)`: one rounding of the double.
template <typename S>
FUSEDOPT_HD S Direct(double x) {
  return static_cast<S>(x);
}
// `ops.cast(x, S)` of a Python float: through float32 first.
template <typename S>
FUSEDOPT_HD S ViaFloat(double x) {
  return static_cast<S>(static_cast<float>(x));
}
// `ops.cast(step, S)` of the int64 step.
template <typename S>
FUSEDOPT_HD S Step(int64_t step) {
  return static_cast<S>(step);
}

// Keras' decoupled weight decay (backend TFOptimizer._apply_weight_decay):
// `var -= var * cast(weight_decay) * cast(learning_rate)`, i.e.
// (var * wd) * lr with both cast through tf.cast (Note [Keras arithmetic]).
//
// Note [Grappler form]: in a tf.function, Grappler's arithmetic optimizer
// rewrites that chain of two scalar multiplications (MinimizeBroadcasts) into
// var * (wd * lr), so Keras' graph-mode numbers differ from its eager ones.
// `minimize_broadcasts` (the rules' `grappler_form` parameter: the kernels
// pass false for rank-0 variables) selects the rewritten form: c[kDecay] = wd * lr (in S) and
// c[kDecayLr] = 1, which the same Decay() evaluates exactly as
// v - v * (wd * lr) (a product with 1 is exact).
template <typename S>
FUSEDOPT_HDI Coeffs Base(double lr, double weight_decay, bool minimize_broadcasts) {
  Coeffs c{};
  if (minimize_broadcasts) {
    c.c[kDecay] = ViaFloat<S>(weight_decay) * Direct<S>(lr);
    c.c[kDecayLr] = 1.0;
  } else {
    c.c[kDecay] = ViaFloat<S>(weight_decay);
    c.c[kDecayLr] = Direct<S>(lr);
  }
  return c;
}

template <typename S = double>
FUSEDOPT_HDI Coeffs Sgd(double lr, double momentum, double weight_decay, bool grappler_form = false) {
  Coeffs c = Base<S>(lr, weight_decay, grappler_form);
  c.c[SgdRule::kLr] = Direct<S>(lr);
  c.c[SgdRule::kMomentum] = ViaFloat<S>(momentum);
  return c;
}

// keras.optimizers.Adam.update_step:
//   alpha = lr * sqrt(1 - cast(b2)^t) / (1 - cast(b1)^t)   (in S)
//   m += (g - m) * (1 - b1)                                 (1 - b1 in double)
//
// tf_keras_sparse (AdamRule::Variant::kTfKerasSparse, Note [tf_keras sparse forms]):
// tf_keras' legacy Adam._prepare_local, with the betas as it hands them
// over (its float32 hyperparameters cast to S, used as given):
//   lr = lr_t * (sqrt(1 - b2^t) / (1 - b1^t)); one_minus_beta_1_t = 1 - b1
template <typename S = double>
FUSEDOPT_HDI Coeffs Adam(double lr, double b1, double b2, double eps, double weight_decay, int64_t step,
                   bool grappler_form = false, bool tf_keras_sparse = false) {
  Coeffs c = Base<S>(lr, weight_decay, grappler_form);
  const S t = Step<S>(step);
  if (tf_keras_sparse) {
    const S beta_1 = Direct<S>(b1), beta_2 = Direct<S>(b2);
    c.c[AdamRule::kB1] = beta_1;
    c.c[AdamRule::kB2] = beta_2;
    c.c[AdamRule::kOneMinusB1] = S(1) - beta_1;
    c.c[AdamRule::kOneMinusB2] = S(1) - beta_2;
    c.c[AdamRule::kAlpha] = Direct<S>(lr) * (Sqrt(S(1) - Pow(beta_2, t)) /
                                             (S(1) - Pow(beta_1, t)));
    c.c[AdamRule::kEps] = Direct<S>(eps);
    return c;
  }
  const S b1_power = Pow(ViaFloat<S>(b1), t);
  const S b2_power = Pow(ViaFloat<S>(b2), t);
  c.c[AdamRule::kOneMinusB1] = Direct<S>(1.0 - b1);
  c.c[AdamRule::kOneMinusB2] = Direct<S>(1.0 - b2);
  c.c[AdamRule::kAlpha] = Direct<S>(lr) * Sqrt(S(1) - b2_power) / (S(1) - b1_power);
  c.c[AdamRule::kEps] = Direct<S>(eps);
  return c;
}

// keras.optimizers.Nadam.update_step (all in S from cast betas):
//   u_t = b1 * (1 - 0.5 * 0.96^t); u_t1 = b1 * (1 - 0.5 * 0.96^(t+1))
//   u_product: the optimizer's running product (this step's u_t included),
//   as the variable dtype sees it.
// schedule_decay: tf_keras' legacy Nadam raises 0.96 to schedule_decay * t
// (0.004 * t); 1 (Keras 3) raises it to t itself.
// tf_form (tf_keras' legacy Nadam, NadamRule's tf_training_op variant): the same
// coefficients plus the cast betas themselves (beta_2 in the place of the
// weight decay's learning rate: that form takes no decay).
template <typename S = double>
FUSEDOPT_HDI Coeffs Nadam(double lr, double b1, double b2, double eps, double weight_decay,
                    double u_product, int64_t step, double schedule_decay = 1.0, bool grappler_form = false,
                    bool tf_form = false) {
  Coeffs c = Base<S>(lr, weight_decay, grappler_form);
  // Keras 3 casts its Python betas through float32; tf_keras' legacy Nadam
  // hands its hypers (float32 variables) over cast to the variables' dtype,
  // as the op's inputs: used as given. Both take 0.96 through float32
  // (tf.cast(0.96, float64) converts the Python float to a float32 first).
  const S beta_1 = tf_form ? Direct<S>(b1) : ViaFloat<S>(b1);
  const S beta_2 = tf_form ? Direct<S>(b2) : ViaFloat<S>(b2);
  const S decay = ViaFloat<S>(0.96);
  S t = Step<S>(step), t1 = Step<S>(step + 1);
  if (schedule_decay != 1.0) {
    t = Direct<S>(schedule_decay) * t;
    t1 = Direct<S>(schedule_decay) * t1;
  }
  const S u_t = beta_1 * (S(1) - S(0.5) * Pow(decay, t));
  const S u_t1 = beta_1 * (S(1) - S(0.5) * Pow(decay, t1));
  const S u_prod = Direct<S>(u_product);
  const S u_prod1 = u_prod * u_t1;
  c.c[NadamRule::kOneMinusB1] = S(1) - beta_1;
  c.c[NadamRule::kOneMinusB2] = S(1) - beta_2;
  c.c[NadamRule::kUt1] = u_t1;
  c.c[NadamRule::kOneMinusUProd1] = S(1) - u_prod1;
  c.c[NadamRule::kOneMinusUt] = S(1) - u_t;
  c.c[NadamRule::kOneMinusUProd] = S(1) - u_prod;
  c.c[NadamRule::kOneMinusB2Pow] = S(1) - Pow(beta_2, Step<S>(step));
  c.c[NadamRule::kLr] = Direct<S>(lr);
  c.c[NadamRule::kEps] = Direct<S>(eps);
  if (tf_form) {
    c.c[NadamRule::kB1] = beta_1;
    c.c[NadamRule::kB2] = beta_2;
  }
  return c;
}

// keras.optimizers.Adamax.update_step: `ops.multiply(self.beta_2, u)` takes
// beta_2 directly; the bias correction uses the cast beta_1.
template <typename S = double>
FUSEDOPT_HDI Coeffs Adamax(double lr, double b1, double b2, double eps, double weight_decay,
                     int64_t step, bool grappler_form = false) {
  Coeffs c = Base<S>(lr, weight_decay, grappler_form);
  c.c[AdamaxRule::kOneMinusB1] = Direct<S>(1.0 - b1);
  c.c[AdamaxRule::kB1] = Direct<S>(b1);  // (the tf_keras sparse form's, as tf_keras hands it)
  c.c[AdamaxRule::kB2] = Direct<S>(b2);
  c.c[AdamaxRule::kLr] = Direct<S>(lr);
  const S one_minus_b1_pow = S(1) - Pow(ViaFloat<S>(b1), Step<S>(step));
  c.c[AdamaxRule::kOneMinusB1Pow] = one_minus_b1_pow;
  c.c[AdamaxRule::kEps] = Direct<S>(eps);
  c.c[AdamaxRule::kLrOverBc] = Direct<S>(lr) / one_minus_b1_pow;  // TF's lr / (1 - beta1_power)
  return c;
}

// keras.optimizers.RMSprop.update_step uses the Python rho, 1 - rho, momentum
// and epsilon directly.
// epsilon_outside_sqrt: lr * g / (sqrt(denom) + eps), as tf_keras' legacy
// RMSprop without momentum does; otherwise lr * g / sqrt(denom + eps).
template <typename S = double>
FUSEDOPT_HDI Coeffs Rmsprop(double lr, double rho, double momentum, double eps, double weight_decay,
                      bool epsilon_outside_sqrt = false, bool grappler_form = false) {
  Coeffs c = Base<S>(lr, weight_decay, grappler_form);
  c.c[RmspropRule::kRho] = Direct<S>(rho);
  c.c[RmspropRule::kOneMinusRho] = Direct<S>(1.0 - rho);
  c.c[epsilon_outside_sqrt ? RmspropRule::kEpsOut : RmspropRule::kEps] = Direct<S>(eps);
  c.c[RmspropRule::kLr] = Direct<S>(lr);
  c.c[RmspropRule::kMomentum] = Direct<S>(momentum);
  return c;
}

// epsilon_outside_sqrt: lr * g / (sqrt(acc) + eps), as tf_keras' legacy
// Adagrad (ResourceApplyAdagradV2) does; otherwise lr * g / sqrt(acc + eps).
template <typename S = double>
FUSEDOPT_HDI Coeffs Adagrad(double lr, double eps, double weight_decay,
                      bool epsilon_outside_sqrt = false, bool grappler_form = false) {
  Coeffs c = Base<S>(lr, weight_decay, grappler_form);
  c.c[AdagradRule::kLr] = Direct<S>(lr);
  c.c[epsilon_outside_sqrt ? AdagradRule::kEpsOut : AdagradRule::kEps] = Direct<S>(eps);
  return c;
}

template <typename S = double>
FUSEDOPT_HDI Coeffs Adadelta(double lr, double rho, double eps, double weight_decay, bool grappler_form = false) {
  Coeffs c = Base<S>(lr, weight_decay, grappler_form);
  c.c[AdadeltaRule::kRho] = Direct<S>(rho);
  c.c[AdadeltaRule::kOneMinusRho] = Direct<S>(1.0 - rho);
  c.c[AdadeltaRule::kEps] = Direct<S>(eps);
  c.c[AdadeltaRule::kLr] = Direct<S>(lr);
  return c;
}

// keras.optimizers.Ftrl.update_step:
//   l2_reg = l2 + beta / (2.0 * lr)   (in S: S(l2) + S(beta) / (2 * lr))
//   quadratic = new_acc^p / lr + 2 * l2_reg; g_s = g + (2 * l2_shrinkage) * var
// (2 * l2_shrinkage is Python arithmetic, so in double).
template <typename S = double>
FUSEDOPT_HDI Coeffs Ftrl(double lr, double lr_power, double l1, double l2, double l2_shrinkage,
                   double beta, double weight_decay, bool grappler_form = false) {
  Coeffs c = Base<S>(lr, weight_decay, grappler_form);
  const S lr_s = Direct<S>(lr);
  const S l2_reg = Direct<S>(l2) + Direct<S>(beta) / (S(2) * lr_s);
  c.c[FtrlRule::kLr] = lr_s;
  c.c[FtrlRule::kPower] = Direct<S>(-lr_power);
  c.c[FtrlRule::kTwoL2Shrinkage] = Direct<S>(2.0 * l2_shrinkage);
  c.c[FtrlRule::kTwoL2] = S(2) * l2_reg;
  c.c[FtrlRule::kL1] = Direct<S>(l1);
  return c;
}

// keras.optimizers.Lion.update_step: cast betas, 1.0 - beta in S.
template <typename S = double>
FUSEDOPT_HDI Coeffs Lion(double lr, double b1, double b2, double weight_decay, bool grappler_form = false) {
  Coeffs c = Base<S>(lr, weight_decay, grappler_form);
  const S beta_1 = ViaFloat<S>(b1), beta_2 = ViaFloat<S>(b2);
  c.c[LionRule::kLr] = Direct<S>(lr);
  c.c[LionRule::kB1] = beta_1;
  c.c[LionRule::kOneMinusB1] = S(1) - beta_1;
  c.c[LionRule::kB2] = beta_2;
  c.c[LionRule::kOneMinusB2] = S(1) - beta_2;
  return c;
}

// keras.optimizers.Muon._muon_update_step, momentum half:
// `m * (self.momentum - 1)`: the Python double rounded once to S.
template <typename S = double>
FUSEDOPT_HDI Coeffs MuonMomentum(double momentum) {
  Coeffs c{};
  c.c[MuonMomentumRule::kMomentumMinusOne] = Direct<S>(momentum - 1.0);
  return c;
}

// keras.optimizers.Muon._muon_update_step, update half, after the decay
// (Muon._apply_weight_decay is Keras' (var * wd) * lr):
// `lr_adjust(lr * update)` = ((lr * u) * sqrt(max(rows, cols))) * rms_rate,
// with the float32 learning rate, the square root computed in float32 (Keras'
// ops.sqrt of an integer) and rms_rate a Python float meeting the tensor
// (Direct). `scale` is that float32 square root (exact in S); rms_rate = None
// in Keras is scale = rms_rate = 1 here (exact products).
template <typename S = double>
FUSEDOPT_HDI Coeffs Muon(double lr, double scale, double rms_rate, double weight_decay,
                   bool grappler_form = false) {
  Coeffs c = Base<S>(lr, weight_decay, grappler_form);
  const S l = Direct<S>(lr), s = Direct<S>(scale), r = Direct<S>(rms_rate);
  c.c[MuonRule::kLr] = l;
  c.c[MuonRule::kScale] = s;
  c.c[MuonRule::kRmsRate] = r;
  c.c[MuonRule::kFactor] = (l * s) * r;
  return c;
}

// keras.optimizers.Lamb.update_step: as Adam for the moments; the bias
// corrections 1.0 - cast(b)^t in S.
template <typename S = double>
FUSEDOPT_HDI Coeffs Lamb(double lr, double b1, double b2, double eps, double weight_decay,
                   int64_t step, bool grappler_form = false) {
  Coeffs c = Base<S>(lr, weight_decay, grappler_form);
  const S t = Step<S>(step);
  c.c[LambRule::kOneMinusB1] = Direct<S>(1.0 - b1);
  c.c[LambRule::kOneMinusB2] = Direct<S>(1.0 - b2);
  c.c[LambRule::kOneMinusB1Pow] = S(1) - Pow(ViaFloat<S>(b1), t);
  c.c[LambRule::kOneMinusB2Pow] = S(1) - Pow(ViaFloat<S>(b2), t);
  c.c[LambRule::kEps] = Direct<S>(eps);
  c.c[LambRule::kLr] = Direct<S>(lr);
  return c;
}

// keras.optimizers.ScheduleFreeAdamW.update_step: betas and epsilon cast (so
// through float32), everything else in S; warmup_steps 0 disables the warmup.
// constant_folding: Keras' graph after Grappler's constant folding, which
// turns divisions by constants (warmup_steps, beta_1) into multiplications by
// their reciprocals; minimize_broadcasts (Grappler's arithmetic optimizer, not
// for rank-0 variables) also folds the weight decay and
// (1 - w) * (1 / beta_1) (ScheduleFreeRule's kMinimizeBroadcasts form).
template <typename S = double>
FUSEDOPT_HDI Coeffs ScheduleFree(double lr, double b1, double b2, double eps, double warmup_steps,
                           double weight_decay, int64_t step, bool constant_folding,
                           bool minimize_broadcasts) {
  Coeffs c = Base<S>(lr, weight_decay, minimize_broadcasts);
  const S t = Step<S>(step);
  const S beta_1 = ViaFloat<S>(b1), beta_2 = ViaFloat<S>(b2);
  S lr_s = Direct<S>(lr);
  if (warmup_steps > 0) {
    const S ws = Direct<S>(warmup_steps);
    const S factor = constant_folding ? t * (S(1) / ws) : t / ws;
    lr_s = lr_s * (factor < S(1) ? factor : S(1));
  }
  const S weight = S(1) / t;
  c.c[ScheduleFreeRule::kLr] = lr_s;
  c.c[ScheduleFreeRule::kOneMinusB2] = S(1) - beta_2;
  c.c[ScheduleFreeRule::kBiasCorrection2] = S(1) - Pow(beta_2, t);
  c.c[ScheduleFreeRule::kEps] = ViaFloat<S>(eps);
  c.c[ScheduleFreeRule::kOneMinusB1] = S(1) - beta_1;
  c.c[ScheduleFreeRule::kB1] = beta_1;
  c.c[ScheduleFreeRule::kOneMinusWeightOverB1] = (S(1) - weight) * (S(1) / beta_1);
  c.c[ScheduleFreeRule::kInvB1] = S(1) / beta_1;
  c.c[ScheduleFreeRule::kWeight] = weight;
  c.c[ScheduleFreeRule::kOneMinusWeight] = S(1) - weight;
  return c;
}

}  // namespace coeffs

// ---- Each rule's coefficients and scalar checks, host and device ----------
//
// Note [device coefficients]: a rule's coefficients are a function of its
// scalars, the step and the CoeffForm its plan chose (plan_input.h). The
// host's plans below and the device (cc/rules/device_coeffs.h, reading the
// scalars from device memory) call the same CoeffsOf, and decide whether the
// scalars are in range with the same FirstBadScalar, so the device computes
// what the host would, bit for bit, except for Pow (CUDA's pow where the host
// has the C library's: Keras' own numbers differ the same way between its CPU
// and GPU steps). tests/native/coeffs_test.cc checks host against
// device code compiled for the host, every rule and form.
namespace coeffs {

template <typename S>
FUSEDOPT_HDI Coeffs CoeffsOf(SgdRule, const double* s, int64_t, const CoeffForm& f) {
  return Sgd<S>(s[0], s[1], s[2], f.minimize_broadcasts);
}
template <typename S>
FUSEDOPT_HDI Coeffs CoeffsOf(AdamRule, const double* s, int64_t step, const CoeffForm& f) {
  return Adam<S>(s[0], s[1], s[2], s[3], s[4], step, f.minimize_broadcasts, f.tf_keras_sparse);
}
template <typename S>
FUSEDOPT_HDI Coeffs CoeffsOf(NadamRule, const double* s, int64_t step, const CoeffForm& f) {
  return Nadam<S>(s[0], s[1], s[2], s[3], s[4], s[5], step, f.schedule_decay,
                  f.minimize_broadcasts, f.tf_form);
}
template <typename S>
FUSEDOPT_HDI Coeffs CoeffsOf(AdamaxRule, const double* s, int64_t step, const CoeffForm& f) {
  return Adamax<S>(s[0], s[1], s[2], s[3], s[4], step, f.minimize_broadcasts);
}
template <typename S>
FUSEDOPT_HDI Coeffs CoeffsOf(RmspropRule, const double* s, int64_t, const CoeffForm& f) {
  return Rmsprop<S>(s[0], s[1], s[2], s[3], s[4], f.epsilon_outside_sqrt, f.minimize_broadcasts);
}
template <typename S>
FUSEDOPT_HDI Coeffs CoeffsOf(AdagradRule, const double* s, int64_t, const CoeffForm& f) {
  return Adagrad<S>(s[0], s[1], s[2], f.epsilon_outside_sqrt, f.minimize_broadcasts);
}
template <typename S>
FUSEDOPT_HDI Coeffs CoeffsOf(AdadeltaRule, const double* s, int64_t, const CoeffForm& f) {
  return Adadelta<S>(s[0], s[1], s[2], s[3], f.minimize_broadcasts);
}
template <typename S>
FUSEDOPT_HDI Coeffs CoeffsOf(FtrlRule, const double* s, int64_t, const CoeffForm& f) {
  return Ftrl<S>(s[0], s[1], s[2], s[3], s[4], s[5], s[6], f.minimize_broadcasts);
}
template <typename S>
FUSEDOPT_HDI Coeffs CoeffsOf(LionRule, const double* s, int64_t, const CoeffForm& f) {
  return Lion<S>(s[0], s[1], s[2], s[3], f.minimize_broadcasts);
}
template <typename S>
FUSEDOPT_HDI Coeffs CoeffsOf(LambRule, const double* s, int64_t step, const CoeffForm& f) {
  return Lamb<S>(s[0], s[1], s[2], s[3], s[4], step, f.minimize_broadcasts);
}
template <typename S>
FUSEDOPT_HDI Coeffs CoeffsOf(ScheduleFreeRule, const double* s, int64_t step, const CoeffForm& f) {
  return ScheduleFree<S>(s[0], s[1], s[2], s[3], s[4], s[5], step, f.constant_folding,
                         f.minimize_broadcasts);
}
template <typename S>
FUSEDOPT_HDI Coeffs CoeffsOf(MuonMomentumRule, const double* s, int64_t, const CoeffForm&) {
  return MuonMomentum<S>(s[0]);
}
template <typename S>
FUSEDOPT_HDI Coeffs CoeffsOf(MuonRule, const double* s, int64_t, const CoeffForm& f) {
  return Muon<S>(s[0], s[1], s[2], s[3], f.minimize_broadcasts);
}

// In the variables' opmath: double for float64, float otherwise.
template <typename R>
FUSEDOPT_HDI Coeffs CoeffsIn(R rule, bool f64, const double* s, int64_t step, const CoeffForm& f) {
  return f64 ? CoeffsOf<double>(rule, s, step, f) : CoeffsOf<float>(rule, s, step, f);
}

// The first scalar (its index in the registry's order) outside the range the
// rule (and Keras' constructor) allows, or -1. Finiteness and the step are
// checked for every rule before (MakeCallPlan; DeviceCoeffs).
template <typename R>
FUSEDOPT_HDI int FirstBadScalar(R, const double*, const CoeffForm&) {
  return -1;
}
FUSEDOPT_HDI int FirstBadScalar(SgdRule, const double* s, const CoeffForm&) {
  return s[1] >= 0 && s[1] <= 1 ? -1 : 1;
}
FUSEDOPT_HDI int FirstBadScalar(AdamRule, const double* s, const CoeffForm& f) {
  return f.tf_keras_sparse && s[4] != 0 ? 4 : -1;  // tf_keras' legacy Adam: no decay
}
FUSEDOPT_HDI int FirstBadScalar(NadamRule, const double* s, const CoeffForm& f) {
  return f.tf_form && s[4] != 0 ? 4 : -1;  // tf_keras' legacy Nadam: no decay
}
FUSEDOPT_HDI int FirstBadScalar(FtrlRule, const double* s, const CoeffForm& f) {
  for (int k = 2; k <= 4; ++k) {
    if (!(s[k] >= 0)) return k;  // l1, l2, l2_shrinkage
  }
  if (s[0] <= 0) return 0;
  if (s[1] > 0) return 1;
  // The variant (a square root for -0.5) was chosen from the value the plan
  // saw; another value needs another variant (the host plans never trip this).
  if ((s[1] == -0.5) != f.sqrt_power) return 1;
  return -1;
}
FUSEDOPT_HDI int FirstBadScalar(LionRule, const double* s, const CoeffForm&) {
  return s[1] > 0 && s[1] <= 1 ? -1 : 1;
}
FUSEDOPT_HDI int FirstBadScalar(ScheduleFreeRule, const double* s, const CoeffForm&) {
  if (!(s[1] > 0)) return 1;
  if (!(s[4] >= 0)) return 4;
  return -1;
}
FUSEDOPT_HDI int FirstBadScalar(MuonRule, const double* s, const CoeffForm&) {
  return s[1] > 0 ? -1 : 1;
}

}  // namespace coeffs

// ---- Plans ------------------------------------------------------------------
//
// Each rule's plan: its own checks (beyond every scalar being finite, which
// MakeCallPlan checks first), the variant a call's attributes and slot lists
// select, the CoeffForm, and its coefficients in the variables' opmath (Note
// [Keras arithmetic]). MakeCallPlan (cc/core/plan.cc) calls the one of the
// rule. Returns "" or what is wrong (an invalid-argument message; nothing has
// been written). in.scalars is in the registry's order (registry.h).
namespace plans {

// The rules with tf_training_op_form (kAttrTfTrainingOpForm), for errors.
constexpr char kTfTrainingOpFormRules[] =
    "tf_training_op_form is for adamax, rmsprop, adadelta and nadam (TensorFlow's "
    "ResourceApply* arithmetic; tf_keras' legacy Nadam) and adam's sparse op (tf_keras' "
    "legacy sparse Adam)";

// Every plan's last step: the coefficients of the form it chose.
template <typename R>
std::string Finish(R rule, const PlanInput& in, Plan* p) {
  p->coeffs = coeffs::CoeffsIn(rule, in.f64, in.scalars.data(), in.step, p->form);
  return "";
}

inline std::string NotBelowZero(const PlanInput& in, int k, const char* name) {
  if (in.scalars[k] >= 0) return "";
  return Msg("'", name, "' must be >= 0, got ", in.scalars[k], "; nothing was updated");
}

inline std::string Of(SgdRule r, const PlanInput& in, Plan* p) {
  const std::vector<double>& s = in.scalars;
  p->form.minimize_broadcasts = in.MinimizeBroadcasts();
  if (coeffs::FirstBadScalar(r, s.data(), p->form) == 1) {
    return Msg("'momentum' must be in [0, 1], got ", s[1], "; nothing was updated");
  }
  if (in.attrs.nesterov && !in.slot_given[0]) {
    return "nesterov=True needs momentum slots (momenta is empty)";
  }
  SgdRule::Variant v;
  v.momentum = in.slot_given[0];
  v.nesterov = in.attrs.nesterov;
  p->variant = v.Index();
  return Finish(r, in, p);
}

// Note [tf_keras sparse forms]: tf_keras' legacy Adam and Adamax update
// IndexedSlices with TF ops of their own (DESIGN.md: m.assign(m * beta_1),
// then scatter_add(m, idx, g * (1 - beta_1)), ...), not with the training
// ops their dense updates call, so their sparse ops' tf_training_op_form
// is that order (the other rules' sparse training ops share their dense
// ones' arithmetic). tf_keras sums duplicate indices before (unsorted
// segment sum, in position order), as the sparse kernels do.
inline bool TfKerasSparse(const PlanInput& in) { return in.attrs.tf_training_op_form && in.sparse; }

inline std::string Of(AdamRule r, const PlanInput& in, Plan* p) {
  const std::vector<double>& s = in.scalars;
  const bool tf_keras_sparse = TfKerasSparse(in);
  p->form.minimize_broadcasts = in.MinimizeBroadcasts();
  p->form.tf_keras_sparse = tf_keras_sparse;
  if (coeffs::FirstBadScalar(r, s.data(), p->form) == 4) {
    return Msg("tf_training_op_form (tf_keras' legacy Adam) takes no weight_decay, got ", s[4]);
  }
  using V = AdamRule::Variant;
  V v;
  v.amsgrad = in.slot_given[2];
  v.form = !tf_keras_sparse ? V::kKeras
           : in.grappler_form ? V::kTfKerasSparseGrappler
                              : V::kTfKerasSparse;
  p->variant = v.Index();
  return Finish(r, in, p);
}

inline std::string Of(NadamRule r, const PlanInput& in, Plan* p) {
  const std::vector<double>& s = in.scalars;
  if (!(std::isfinite(in.attrs.schedule_decay) && in.attrs.schedule_decay > 0)) {
    return Msg("'schedule_decay' must be finite and > 0, got ", in.attrs.schedule_decay,
               "; nothing was updated");
  }
  p->form.minimize_broadcasts = in.MinimizeBroadcasts();
  p->form.tf_form = in.attrs.tf_training_op_form;
  p->form.schedule_decay = in.attrs.schedule_decay;
  if (coeffs::FirstBadScalar(r, s.data(), p->form) == 4) {
    return Msg("tf_training_op_form (tf_keras' legacy Nadam) takes no weight_decay, got ", s[4]);
  }
  if (in.attrs.tf_training_op_form) {
    NadamRule::Variant v;
    v.tf_training_op = true;
    p->variant = v.Index();
  }
  return Finish(r, in, p);
}

inline std::string Of(AdamaxRule r, const PlanInput& in, Plan* p) {
  using V = AdamaxRule::Variant;
  V v;
  v.form = TfKerasSparse(in) ? V::kTfKerasSparse
           : in.attrs.tf_training_op_form ? V::kTfOp
                                          : V::kKeras;
  p->variant = v.Index();
  p->form.minimize_broadcasts = in.MinimizeBroadcasts();
  return Finish(r, in, p);
}

inline std::string Of(RmspropRule r, const PlanInput& in, Plan* p) {
  p->form.minimize_broadcasts = in.MinimizeBroadcasts();
  using V = RmspropRule::Variant;
  V v;
  v.momentum = in.slot_given[1];
  v.centered = in.slot_given[2];
  p->variant = v.Index();
  if (TfKerasSparse(in) && !in.slot_given[1]) {
    // tf_keras' legacy sparse RMSprop without momentum: its own ops. (With
    // momentum it calls ResourceSparseApply(Centered)RMSProp, the dense
    // training op's arithmetic on the listed rows: the tf_training_op_form
    // below, whose per-row packet rsqrt the kernels do not reproduce bit for
    // bit, so fusedopt.legacy runs that op unless asked for sparse_mode.)
    if (!in.attrs.epsilon_outside_sqrt) {
      return "the sparse tf_training_op_form of rmsprop is tf_keras' legacy RMSprop "
             "without momentum (epsilon_outside_sqrt, no momenta)";
    }
    if (in.grappler_form) {
      v.form = V::kTfKerasSparseGrappler;
      p->variant = v.Index();
    }
    p->form.epsilon_outside_sqrt = true;
    return Finish(r, in, p);
  }
  if (in.attrs.tf_training_op_form) {
    if (in.attrs.epsilon_outside_sqrt) {
      return "tf_training_op_form and epsilon_outside_sqrt exclude each other";
    }
    v.form = V::kTfOp;
    p->variant = v.Index();
  } else if (in.grappler_form && !in.attrs.epsilon_outside_sqrt) {
    p->rsqrt_forms = true;
  }
  p->form.epsilon_outside_sqrt = in.attrs.epsilon_outside_sqrt;
  return Finish(r, in, p);
}

inline std::string Of(AdagradRule r, const PlanInput& in, Plan* p) {
  p->rsqrt_forms = in.grappler_form && !in.attrs.epsilon_outside_sqrt;
  p->form.minimize_broadcasts = in.MinimizeBroadcasts();
  p->form.epsilon_outside_sqrt = in.attrs.epsilon_outside_sqrt;
  return Finish(r, in, p);
}

inline std::string Of(AdadeltaRule r, const PlanInput& in, Plan* p) {
  AdadeltaRule::Variant v;
  v.tf_op = in.attrs.tf_training_op_form;
  p->variant = v.Index();
  // TF's op always divides through its Rsqrt.
  p->rsqrt_forms = in.attrs.tf_training_op_form || in.grappler_form;
  p->form.minimize_broadcasts = in.MinimizeBroadcasts();
  return Finish(r, in, p);
}

inline std::string Of(FtrlRule r, const PlanInput& in, Plan* p) {
  const std::vector<double>& s = in.scalars;
  p->form.minimize_broadcasts = in.MinimizeBroadcasts();
  p->form.sqrt_power = s[1] == -0.5;
  switch (coeffs::FirstBadScalar(r, s.data(), p->form)) {
    case 2:
      return NotBelowZero(in, 2, "l1");
    case 3:
      return NotBelowZero(in, 3, "l2");
    case 4:
      return NotBelowZero(in, 4, "l2_shrinkage");
    case 0:
      return Msg("Ftrl needs lr > 0, got ", s[0]);
    case 1:
      return Msg("learning_rate_power must be <= 0, got ", s[1]);
    default:
      break;
  }
  FtrlRule::Variant v;
  v.sqrt_power = s[1] == -0.5;
  p->variant = v.Index();
  return Finish(r, in, p);
}

inline std::string Of(LionRule r, const PlanInput& in, Plan* p) {
  const std::vector<double>& s = in.scalars;
  p->form.minimize_broadcasts = in.MinimizeBroadcasts();
  if (coeffs::FirstBadScalar(r, s.data(), p->form) == 1) {
    return Msg("'beta_1' must be in (0, 1], got ", s[1], "; nothing was updated");
  }
  return Finish(r, in, p);
}

inline std::string Of(LambRule r, const PlanInput& in, Plan* p) {
  p->form.minimize_broadcasts = in.MinimizeBroadcasts();
  return Finish(r, in, p);
}

inline std::string Of(ScheduleFreeRule r, const PlanInput& in, Plan* p) {
  const std::vector<double>& s = in.scalars;
  const bool mb = in.MinimizeBroadcasts();
  p->form.minimize_broadcasts = mb;
  p->form.constant_folding = in.constant_folding;
  switch (coeffs::FirstBadScalar(r, s.data(), p->form)) {
    case 1:
      return Msg("'beta_1' must be > 0, got ", s[1]);
    case 4:
      return Msg("'warmup_steps' must be >= 0, got ", s[4]);
    default:
      break;
  }
  using V = ScheduleFreeRule::Variant;
  V v;
  v.form = !in.constant_folding ? V::kKeras : (mb ? V::kMinimizeBroadcasts : V::kConstantFolding);
  p->variant = v.Index();
  return Finish(r, in, p);
}

inline std::string Of(MuonMomentumRule r, const PlanInput& in, Plan* p) {
  return Finish(r, in, p);
}

inline std::string Of(MuonRule r, const PlanInput& in, Plan* p) {
  const std::vector<double>& s = in.scalars;
  const bool mb = in.MinimizeBroadcasts();
  p->form.minimize_broadcasts = mb;
  if (coeffs::FirstBadScalar(r, s.data(), p->form) == 1) {
    return Msg("'scale' must be > 0, got ", s[1]);
  }
  MuonRule::Variant v;
  v.minimize_broadcasts = mb;
  p->variant = v.Index();
  return Finish(r, in, p);
}

}  // namespace plans
}  // namespace fusedopt

#endif  // FUSEDOPT_CC_RULES_COEFFICIENTS_H_
