// Adafactor (keras.optimizers.Adafactor; Shazeer & Stern, 2018) on the CPU,
// without TensorFlow.
//
// Note [Adafactor passes]: an Adafactor step needs three reductions before it
// can write a variable (the variable's RMS, the factored second moments' row
// and column means, the update's RMS), so it takes three passes over each
// tensor, the math of keras.optimizers.Adafactor.update_step in the
// variable's opmath S, after Keras' decoupled weight decay:
//   t = step;  rho = min(lr, 1 / sqrt(t));  beta = 1 - t^beta_2_decay
//   alpha = max(epsilon_2, rms(var)) * rho
//   q = g^2 + epsilon_1
//   rank >= 2, shape [..., R, C] (per leading index):
//     r = beta * r + (1 - beta) * mean_C(q);  c = beta * c + (1 - beta) * mean_R(q)
//     v = (r / mean_R(r))[:, None] * c[None, :]
//   rank < 2:  v = beta * v + (1 - beta) * q
//   u = g / sqrt(v);  var -= alpha * (u / max(1, rms(u) / clip_threshold))
// Pass A reads var and g (the variable's sum of squares; q's row sums and
// column sums), then r and c are updated per tensor; pass B reads g and
// writes v (the update's sum of squares); pass C reads var, g, v and writes
// var: 8 elements' worth of traffic per element (Keras: ~30).
//
// Sums are accumulated in double over fixed row blocks and combined in block
// order (never dependent on the thread count), then rounded to S: not TF's
// float32 reduction order, so results are not Keras' bit for bit
// (docs/parity.md), but the same on every run, ISA and thread count.
#ifndef FUSEDOPT_CC_CORE_ADAFACTOR_H_
#define FUSEDOPT_CC_CORE_ADAFACTOR_H_

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "cc/core/cpu_run.h"
#include "cc/rules/coefficients.h"
#include "cc/rules/update_rules.h"

namespace fusedopt {

struct AdafactorScalars {
  double lr = 0.001;
  double beta_2_decay = -0.8;
  double epsilon_1 = 1e-30;
  double epsilon_2 = 1e-3;
  double clip_threshold = 1.0;
  double weight_decay = 0.0;
  int64_t step = 1;
  bool grappler_form = false;  // Keras' graph-mode weight decay (Note [Grappler form])
};

// One variable of a call. Factored (rank >= 2): the variable is `batch`
// matrices of rows x cols, r has batch x rows elements, c batch x cols.
// Otherwise rows = 1, cols = the element count, and r, c are unused.
struct AdafactorTensor {
  void* var = nullptr;
  void* r = nullptr;
  void* c = nullptr;
  void* v = nullptr;
  const void* grad = nullptr;
  int64_t batch = 1;
  int64_t rows = 1;
  int64_t cols = 0;
  bool factored = false;
  bool scalar = false;  // rank 0 (Grappler leaves its weight decay alone)
  int64_t size() const { return batch * rows * cols; }
};

// The scalars from six values in Keras' order (lr, beta_2_decay, epsilon_1,
// epsilon_2, clip_threshold, weight_decay), as the C ABI and the XLA
// handler pass them.
inline AdafactorScalars AdafactorScalarsFrom(const double* v, int64_t step, bool grappler_form) {
  AdafactorScalars s;
  s.lr = v[0];
  s.beta_2_decay = v[1];
  s.epsilon_1 = v[2];
  s.epsilon_2 = v[3];
  s.clip_threshold = v[4];
  s.weight_decay = v[5];
  s.step = step;
  s.grappler_form = grappler_form;
  return s;
}

// keras.optimizers.Adafactor.update_step's per-step scalars in the opmath S
// (Note [Keras arithmetic] in cc/rules/coefficients.h), shared by the kernels'
// run and the TF-reductions form (Note [TF reductions], cc/tf/tf_numerics.h).
template <typename S>
struct AdafactorStepScalars {
  S rho, beta, one_minus_beta, eps1, eps2, clip;
  Coeffs decay;  // Keras' weight decay (c[kDecay], c[kDecayLr])

  static AdafactorStepScalars From(const AdafactorScalars& s) {
    AdafactorStepScalars k;
    const S t = coeffs::Step<S>(s.step);
    const S lr = coeffs::Direct<S>(s.lr);
    k.rho = Min(lr, S(1) / std::sqrt(t));
    k.beta = S(1) - static_cast<S>(std::pow(t, coeffs::Direct<S>(s.beta_2_decay)));
    k.one_minus_beta = S(1) - k.beta;
    k.eps1 = coeffs::Direct<S>(s.epsilon_1);
    k.eps2 = coeffs::ViaFloat<S>(s.epsilon_2);
    k.clip = coeffs::Direct<S>(s.clip_threshold);
    k.decay = coeffs::Base<S>(s.lr, s.weight_decay, s.grappler_form);
    return k;
  }
};

// "" or what is wrong with the scalars (an invalid-argument message: nothing
// has been written).
std::string CheckAdafactorScalars(const AdafactorScalars& s);

// Runs one call (Note [Adafactor passes]); dt is the DType index of every
// tensor.
void RunAdafactorCpu(const ParallelFor& pfor, int dt, const AdafactorScalars& s,
                     const std::vector<AdafactorTensor>& tensors);

}  // namespace fusedopt

#endif  // FUSEDOPT_CC_CORE_ADAFACTOR_H_
