// Op registrations: signatures, shape functions and the documented formula of
// every fused op. Kernels live beside this file, one file per algorithm.
#include "absl/strings/str_cat.h"
#include "tensorflow/core/framework/common_shape_fns.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace fusedopt {
namespace tf {
namespace {

using tensorflow::shape_inference::InferenceContext;
using tensorflow::shape_inference::ShapeHandle;

// Hyperparameter inputs must be scalars; the rest is checked by the kernel
// against the variables' actual shapes.
absl::Status ScalarInputs(InferenceContext* c, std::initializer_list<const char*> names) {
  for (const char* name : names) {
    std::vector<ShapeHandle> shapes;
    TF_RETURN_IF_ERROR(c->input(name, &shapes));
    ShapeHandle unused;
    if (!c->WithRank(shapes[0], 0, &unused).ok()) {
      return absl::InvalidArgumentError(absl::StrCat("hyperparameter '", name,
                                                     "' must be a scalar, got shape ",
                                                     c->DebugString(shapes[0])));
    }
  }
  return absl::OkStatus();
}

}  // namespace

REGISTER_OP("Fusedopt>BuildInfo")
    .Output("info: string")
    .SetShapeFn(tensorflow::shape_inference::ScalarShape)
    .Doc(R"doc(
Returns a JSON object describing how the fusedopt op library was built: the
TensorFlow version it was compiled against, its own version, whether CUDA
kernels are compiled in (with the CUDA version and architectures), the CPU SIMD
variants compiled in and the one selected for this CPU.
)doc");

REGISTER_OP("Fusedopt>ApplySGD")
    .Input("vars: N * resource")
    .Input("momenta: M * resource")
    .Input("grads: N * T")
    .Input("lr: Tscalar")
    .Input("momentum: Tscalar")
    .Input("weight_decay: Tscalar")
    .Input("grad_scale: Tscalar")
    .Input("clip_value: Tscalar")
    .Input("clip_norm: Tscalar")
    .Input("global_clip_norm: Tscalar")
    .Output("skipped: bool")
    .Attr("N: int >= 1")
    .Attr("M: int >= 0")
    .Attr("T: {half, bfloat16, float, double}")
    .Attr("Tscalar: {float, double}")
    .Attr("skip_nonfinite: bool = false")
    .Attr("nesterov: bool = false")
    .SetShapeFn([](InferenceContext* c) { TF_RETURN_IF_ERROR(ScalarInputs(
          c, {"lr", "momentum", "weight_decay", "grad_scale", "clip_value", "clip_norm", "global_clip_norm"}));
      c->set_output(0, c->Scalar());
      return absl::OkStatus();
    })
    .Doc(R"doc(
Stochastic gradient descent with optional (Nesterov) momentum (keras.optimizers.SGD).

  M == 0 (plain):   var = var - lr * g
  M == N:           m = momentum * m - lr * g
                    var = var + m                        (nesterov=false)
                    var = var + momentum * m - lr * g    (nesterov=true)

Bytes per element (T = element size): 3T plain, 5T with momentum.

Gradient options, fused into the same pass (Keras' order: unscale, clip,
then decay and update): every gradient is multiplied by grad_scale (1 / loss
scale); then at most one clipping applies: clip_value clips elements to
[-clip_value, clip_value]; clip_norm scales each variable's gradient to L2 norm
at most clip_norm; global_clip_norm scales all N gradients by
clip / max(global norm, clip) (NaN if the norm is not finite, as in Keras).
+inf disables a clipping. The norms take one extra read of the gradients, a
deterministic fixed-order reduction. With skip_nonfinite, a call in which any
gradient element is inf or NaN writes nothing and returns skipped = true.

Every op of this family updates N variables in one call, in one pass over
memory (LAMB: two), computing in float32 for 16-bit variables and in the
variable's type otherwise, storing rounded to nearest even. Keras' decoupled
weight decay, var -= var * weight_decay * lr, is applied first, in the same
pass (weight_decay = 0 disables it). Slots have their variable's shape and
dtype. All inputs are validated before anything is written: on bad input
(uninitialized or repeated variable, dtype or shape mismatch, list lengths,
non-scalar hyperparameter) the op raises InvalidArgument and no variable
changes.
)doc");

REGISTER_OP("Fusedopt>ApplyAdam")
    .Input("vars: N * resource")
    .Input("m: N * resource")
    .Input("v: N * resource")
    .Input("vhat: K * resource")
    .Input("grads: N * T")
    .Input("lr: Tscalar")
    .Input("beta_1: Tscalar")
    .Input("beta_2: Tscalar")
    .Input("epsilon: Tscalar")
    .Input("weight_decay: Tscalar")
    .Input("step: int64")
    .Input("grad_scale: Tscalar")
    .Input("clip_value: Tscalar")
    .Input("clip_norm: Tscalar")
    .Input("global_clip_norm: Tscalar")
    .Output("skipped: bool")
    .Attr("N: int >= 1")
    .Attr("K: int >= 0")
    .Attr("T: {half, bfloat16, float, double}")
    .Attr("Tscalar: {float, double}")
    .Attr("skip_nonfinite: bool = false")
    .SetShapeFn([](InferenceContext* c) { TF_RETURN_IF_ERROR(ScalarInputs(
          c, {"lr", "beta_1", "beta_2", "epsilon", "weight_decay", "step", "grad_scale", "clip_value", "clip_norm", "global_clip_norm"}));
      c->set_output(0, c->Scalar());
      return absl::OkStatus();
    })
    .Doc(R"doc(
Adam, AMSGrad and (with weight_decay) AdamW (keras.optimizers.Adam, AdamW).

  alpha = lr * sqrt(1 - beta_2^step) / (1 - beta_1^step)    (once per call, double)
  m = m + (g - m) * (1 - beta_1)
  v = v + (g^2 - v) * (1 - beta_2)
  K == N (amsgrad): vhat = max(vhat, v); use vhat for v below
  var = var - m * alpha / (sqrt(v) + epsilon)

epsilon is Keras' (added to sqrt(v)), step counts from 1.
Bytes per element: 7T (amsgrad 9T).

Gradient options, fused into the same pass (Keras' order: unscale, clip,
then decay and update): every gradient is multiplied by grad_scale (1 / loss
scale); then at most one clipping applies: clip_value clips elements to
[-clip_value, clip_value]; clip_norm scales each variable's gradient to L2 norm
at most clip_norm; global_clip_norm scales all N gradients by
clip / max(global norm, clip) (NaN if the norm is not finite, as in Keras).
+inf disables a clipping. The norms take one extra read of the gradients, a
deterministic fixed-order reduction. With skip_nonfinite, a call in which any
gradient element is inf or NaN writes nothing and returns skipped = true.

Every op of this family updates N variables in one call, in one pass over
memory (LAMB: two), computing in float32 for 16-bit variables and in the
variable's type otherwise, storing rounded to nearest even. Keras' decoupled
weight decay, var -= var * weight_decay * lr, is applied first, in the same
pass (weight_decay = 0 disables it). Slots have their variable's shape and
dtype. All inputs are validated before anything is written: on bad input
(uninitialized or repeated variable, dtype or shape mismatch, list lengths,
non-scalar hyperparameter) the op raises InvalidArgument and no variable
changes.
)doc");

REGISTER_OP("Fusedopt>ApplyNadam")
    .Input("vars: N * resource")
    .Input("m: N * resource")
    .Input("v: N * resource")
    .Input("grads: N * T")
    .Input("lr: Tscalar")
    .Input("beta_1: Tscalar")
    .Input("beta_2: Tscalar")
    .Input("epsilon: Tscalar")
    .Input("weight_decay: Tscalar")
    .Input("u_product: Tscalar")
    .Input("step: int64")
    .Input("grad_scale: Tscalar")
    .Input("clip_value: Tscalar")
    .Input("clip_norm: Tscalar")
    .Input("global_clip_norm: Tscalar")
    .Output("skipped: bool")
    .Attr("N: int >= 1")
    .Attr("T: {half, bfloat16, float, double}")
    .Attr("Tscalar: {float, double}")
    .Attr("skip_nonfinite: bool = false")
    .SetShapeFn([](InferenceContext* c) { TF_RETURN_IF_ERROR(ScalarInputs(
          c, {"lr", "beta_1", "beta_2", "epsilon", "weight_decay", "u_product", "step", "grad_scale", "clip_value", "clip_norm", "global_clip_norm"}));
      c->set_output(0, c->Scalar());
      return absl::OkStatus();
    })
    .Doc(R"doc(
Nadam, Keras' formulation (keras.optimizers.Nadam), not the paper's.

  u_t = beta_1 * (1 - 0.5 * 0.96^step);  u_t1 = beta_1 * (1 - 0.5 * 0.96^(step+1))
  u_product: the optimizer's running product of u_t including this step
  m = m + (g - m) * (1 - beta_1);  v = v + (g^2 - v) * (1 - beta_2)
  m_hat = u_t1 * m / (1 - u_product * u_t1) + (1 - u_t) * g / (1 - u_product)
  v_hat = v / (1 - beta_2^step)
  var = var - m_hat * lr / (sqrt(v_hat) + epsilon)

Bytes per element: 7T.

Gradient options, fused into the same pass (Keras' order: unscale, clip,
then decay and update): every gradient is multiplied by grad_scale (1 / loss
scale); then at most one clipping applies: clip_value clips elements to
[-clip_value, clip_value]; clip_norm scales each variable's gradient to L2 norm
at most clip_norm; global_clip_norm scales all N gradients by
clip / max(global norm, clip) (NaN if the norm is not finite, as in Keras).
+inf disables a clipping. The norms take one extra read of the gradients, a
deterministic fixed-order reduction. With skip_nonfinite, a call in which any
gradient element is inf or NaN writes nothing and returns skipped = true.

Every op of this family updates N variables in one call, in one pass over
memory (LAMB: two), computing in float32 for 16-bit variables and in the
variable's type otherwise, storing rounded to nearest even. Keras' decoupled
weight decay, var -= var * weight_decay * lr, is applied first, in the same
pass (weight_decay = 0 disables it). Slots have their variable's shape and
dtype. All inputs are validated before anything is written: on bad input
(uninitialized or repeated variable, dtype or shape mismatch, list lengths,
non-scalar hyperparameter) the op raises InvalidArgument and no variable
changes.
)doc");

REGISTER_OP("Fusedopt>ApplyAdamax")
    .Input("vars: N * resource")
    .Input("m: N * resource")
    .Input("u: N * resource")
    .Input("grads: N * T")
    .Input("lr: Tscalar")
    .Input("beta_1: Tscalar")
    .Input("beta_2: Tscalar")
    .Input("epsilon: Tscalar")
    .Input("weight_decay: Tscalar")
    .Input("step: int64")
    .Input("grad_scale: Tscalar")
    .Input("clip_value: Tscalar")
    .Input("clip_norm: Tscalar")
    .Input("global_clip_norm: Tscalar")
    .Output("skipped: bool")
    .Attr("N: int >= 1")
    .Attr("T: {half, bfloat16, float, double}")
    .Attr("Tscalar: {float, double}")
    .Attr("skip_nonfinite: bool = false")
    .SetShapeFn([](InferenceContext* c) { TF_RETURN_IF_ERROR(ScalarInputs(
          c, {"lr", "beta_1", "beta_2", "epsilon", "weight_decay", "step", "grad_scale", "clip_value", "clip_norm", "global_clip_norm"}));
      c->set_output(0, c->Scalar());
      return absl::OkStatus();
    })
    .Doc(R"doc(
Adamax (keras.optimizers.Adamax).

  m = m + (g - m) * (1 - beta_1)
  u = max(beta_2 * u, |g|)
  var = var - lr * m / ((1 - beta_1^step) * (u + epsilon))

Bytes per element: 7T.

Gradient options, fused into the same pass (Keras' order: unscale, clip,
then decay and update): every gradient is multiplied by grad_scale (1 / loss
scale); then at most one clipping applies: clip_value clips elements to
[-clip_value, clip_value]; clip_norm scales each variable's gradient to L2 norm
at most clip_norm; global_clip_norm scales all N gradients by
clip / max(global norm, clip) (NaN if the norm is not finite, as in Keras).
+inf disables a clipping. The norms take one extra read of the gradients, a
deterministic fixed-order reduction. With skip_nonfinite, a call in which any
gradient element is inf or NaN writes nothing and returns skipped = true.

Every op of this family updates N variables in one call, in one pass over
memory (LAMB: two), computing in float32 for 16-bit variables and in the
variable's type otherwise, storing rounded to nearest even. Keras' decoupled
weight decay, var -= var * weight_decay * lr, is applied first, in the same
pass (weight_decay = 0 disables it). Slots have their variable's shape and
dtype. All inputs are validated before anything is written: on bad input
(uninitialized or repeated variable, dtype or shape mismatch, list lengths,
non-scalar hyperparameter) the op raises InvalidArgument and no variable
changes.
)doc");

REGISTER_OP("Fusedopt>ApplyRmsprop")
    .Input("vars: N * resource")
    .Input("velocity: N * resource")
    .Input("momenta: M * resource")
    .Input("average_gradient: C * resource")
    .Input("grads: N * T")
    .Input("lr: Tscalar")
    .Input("rho: Tscalar")
    .Input("momentum: Tscalar")
    .Input("epsilon: Tscalar")
    .Input("weight_decay: Tscalar")
    .Input("grad_scale: Tscalar")
    .Input("clip_value: Tscalar")
    .Input("clip_norm: Tscalar")
    .Input("global_clip_norm: Tscalar")
    .Output("skipped: bool")
    .Attr("N: int >= 1")
    .Attr("M: int >= 0")
    .Attr("C: int >= 0")
    .Attr("T: {half, bfloat16, float, double}")
    .Attr("Tscalar: {float, double}")
    .Attr("skip_nonfinite: bool = false")
    .SetShapeFn([](InferenceContext* c) { TF_RETURN_IF_ERROR(ScalarInputs(
          c, {"lr", "rho", "momentum", "epsilon", "weight_decay", "grad_scale", "clip_value", "clip_norm", "global_clip_norm"}));
      c->set_output(0, c->Scalar());
      return absl::OkStatus();
    })
    .Doc(R"doc(
RMSprop, with optional momentum (M == N) and centering (C == N)
(keras.optimizers.RMSprop).

  velocity = rho * velocity + (1 - rho) * g^2
  centered: average_gradient = rho * average_gradient + (1 - rho) * g
            denom = velocity - average_gradient^2 + epsilon
  else:     denom = velocity + epsilon
  increment = lr * g / sqrt(denom)
  momentum: m = momentum * m + increment;  var = var - m
  else:     var = var - increment

Bytes per element: 5T, plus 2T each for momentum and centering.

Gradient options, fused into the same pass (Keras' order: unscale, clip,
then decay and update): every gradient is multiplied by grad_scale (1 / loss
scale); then at most one clipping applies: clip_value clips elements to
[-clip_value, clip_value]; clip_norm scales each variable's gradient to L2 norm
at most clip_norm; global_clip_norm scales all N gradients by
clip / max(global norm, clip) (NaN if the norm is not finite, as in Keras).
+inf disables a clipping. The norms take one extra read of the gradients, a
deterministic fixed-order reduction. With skip_nonfinite, a call in which any
gradient element is inf or NaN writes nothing and returns skipped = true.

Every op of this family updates N variables in one call, in one pass over
memory (LAMB: two), computing in float32 for 16-bit variables and in the
variable's type otherwise, storing rounded to nearest even. Keras' decoupled
weight decay, var -= var * weight_decay * lr, is applied first, in the same
pass (weight_decay = 0 disables it). Slots have their variable's shape and
dtype. All inputs are validated before anything is written: on bad input
(uninitialized or repeated variable, dtype or shape mismatch, list lengths,
non-scalar hyperparameter) the op raises InvalidArgument and no variable
changes.
)doc");

REGISTER_OP("Fusedopt>ApplyAdagrad")
    .Input("vars: N * resource")
    .Input("accumulator: N * resource")
    .Input("grads: N * T")
    .Input("lr: Tscalar")
    .Input("epsilon: Tscalar")
    .Input("weight_decay: Tscalar")
    .Input("grad_scale: Tscalar")
    .Input("clip_value: Tscalar")
    .Input("clip_norm: Tscalar")
    .Input("global_clip_norm: Tscalar")
    .Output("skipped: bool")
    .Attr("N: int >= 1")
    .Attr("T: {half, bfloat16, float, double}")
    .Attr("Tscalar: {float, double}")
    .Attr("skip_nonfinite: bool = false")
    .SetShapeFn([](InferenceContext* c) { TF_RETURN_IF_ERROR(ScalarInputs(
          c, {"lr", "epsilon", "weight_decay", "grad_scale", "clip_value", "clip_norm", "global_clip_norm"}));
      c->set_output(0, c->Scalar());
      return absl::OkStatus();
    })
    .Doc(R"doc(
Adagrad (keras.optimizers.Adagrad; the accumulator starts at
initial_accumulator_value, set by the caller).

  accumulator = accumulator + g^2
  var = var - lr * g / sqrt(accumulator + epsilon)

Bytes per element: 5T.

Gradient options, fused into the same pass (Keras' order: unscale, clip,
then decay and update): every gradient is multiplied by grad_scale (1 / loss
scale); then at most one clipping applies: clip_value clips elements to
[-clip_value, clip_value]; clip_norm scales each variable's gradient to L2 norm
at most clip_norm; global_clip_norm scales all N gradients by
clip / max(global norm, clip) (NaN if the norm is not finite, as in Keras).
+inf disables a clipping. The norms take one extra read of the gradients, a
deterministic fixed-order reduction. With skip_nonfinite, a call in which any
gradient element is inf or NaN writes nothing and returns skipped = true.

Every op of this family updates N variables in one call, in one pass over
memory (LAMB: two), computing in float32 for 16-bit variables and in the
variable's type otherwise, storing rounded to nearest even. Keras' decoupled
weight decay, var -= var * weight_decay * lr, is applied first, in the same
pass (weight_decay = 0 disables it). Slots have their variable's shape and
dtype. All inputs are validated before anything is written: on bad input
(uninitialized or repeated variable, dtype or shape mismatch, list lengths,
non-scalar hyperparameter) the op raises InvalidArgument and no variable
changes.
)doc");

REGISTER_OP("Fusedopt>ApplyAdadelta")
    .Input("vars: N * resource")
    .Input("accumulated_grad: N * resource")
    .Input("accumulated_delta_var: N * resource")
    .Input("grads: N * T")
    .Input("lr: Tscalar")
    .Input("rho: Tscalar")
    .Input("epsilon: Tscalar")
    .Input("weight_decay: Tscalar")
    .Input("grad_scale: Tscalar")
    .Input("clip_value: Tscalar")
    .Input("clip_norm: Tscalar")
    .Input("global_clip_norm: Tscalar")
    .Output("skipped: bool")
    .Attr("N: int >= 1")
    .Attr("T: {half, bfloat16, float, double}")
    .Attr("Tscalar: {float, double}")
    .Attr("skip_nonfinite: bool = false")
    .SetShapeFn([](InferenceContext* c) { TF_RETURN_IF_ERROR(ScalarInputs(
          c, {"lr", "rho", "epsilon", "weight_decay", "grad_scale", "clip_value", "clip_norm", "global_clip_norm"}));
      c->set_output(0, c->Scalar());
      return absl::OkStatus();
    })
    .Doc(R"doc(
Adadelta (keras.optimizers.Adadelta).

  accumulated_grad = rho * accumulated_grad + (1 - rho) * g^2
  delta = -sqrt(accumulated_delta_var + epsilon) * g / sqrt(accumulated_grad + epsilon)
  accumulated_delta_var = rho * accumulated_delta_var + (1 - rho) * delta^2
  var = var + lr * delta

Bytes per element: 7T.

Gradient options, fused into the same pass (Keras' order: unscale, clip,
then decay and update): every gradient is multiplied by grad_scale (1 / loss
scale); then at most one clipping applies: clip_value clips elements to
[-clip_value, clip_value]; clip_norm scales each variable's gradient to L2 norm
at most clip_norm; global_clip_norm scales all N gradients by
clip / max(global norm, clip) (NaN if the norm is not finite, as in Keras).
+inf disables a clipping. The norms take one extra read of the gradients, a
deterministic fixed-order reduction. With skip_nonfinite, a call in which any
gradient element is inf or NaN writes nothing and returns skipped = true.

Every op of this family updates N variables in one call, in one pass over
memory (LAMB: two), computing in float32 for 16-bit variables and in the
variable's type otherwise, storing rounded to nearest even. Keras' decoupled
weight decay, var -= var * weight_decay * lr, is applied first, in the same
pass (weight_decay = 0 disables it). Slots have their variable's shape and
dtype. All inputs are validated before anything is written: on bad input
(uninitialized or repeated variable, dtype or shape mismatch, list lengths,
non-scalar hyperparameter) the op raises InvalidArgument and no variable
changes.
)doc");

REGISTER_OP("Fusedopt>ApplyFtrl")
    .Input("vars: N * resource")
    .Input("accumulator: N * resource")
    .Input("linear: N * resource")
    .Input("grads: N * T")
    .Input("lr: Tscalar")
    .Input("learning_rate_power: Tscalar")
    .Input("l1: Tscalar")
    .Input("l2: Tscalar")
    .Input("l2_shrinkage: Tscalar")
    .Input("beta: Tscalar")
    .Input("weight_decay: Tscalar")
    .Input("grad_scale: Tscalar")
    .Input("clip_value: Tscalar")
    .Input("clip_norm: Tscalar")
    .Input("global_clip_norm: Tscalar")
    .Output("skipped: bool")
    .Attr("N: int >= 1")
    .Attr("T: {half, bfloat16, float, double}")
    .Attr("Tscalar: {float, double}")
    .Attr("skip_nonfinite: bool = false")
    .SetShapeFn([](InferenceContext* c) { TF_RETURN_IF_ERROR(ScalarInputs(
          c, {"lr", "learning_rate_power", "l1", "l2", "l2_shrinkage", "beta", "weight_decay", "grad_scale", "clip_value", "clip_norm", "global_clip_norm"}));
      c->set_output(0, c->Scalar());
      return absl::OkStatus();
    })
    .Doc(R"doc(
FTRL-proximal, Keras' formulation (keras.optimizers.Ftrl).

  p = -learning_rate_power;  l2' = l2 + beta / (2 * lr)
  g_s = g + 2 * l2_shrinkage * var
  new_acc = accumulator + g^2
  linear = linear + g_s - (new_acc^p - accumulator^p) / lr * var
  quadratic = new_acc^p / lr + 2 * l2'
  var = (clip(linear, -l1, l1) - linear) / quadratic
  accumulator = new_acc

learning_rate_power = -0.5 uses sqrt; other powers use pow. Requires lr > 0
and learning_rate_power <= 0.
Bytes per element: 7T.

Gradient options, fused into the same pass (Keras' order: unscale, clip,
then decay and update): every gradient is multiplied by grad_scale (1 / loss
scale); then at most one clipping applies: clip_value clips elements to
[-clip_value, clip_value]; clip_norm scales each variable's gradient to L2 norm
at most clip_norm; global_clip_norm scales all N gradients by
clip / max(global norm, clip) (NaN if the norm is not finite, as in Keras).
+inf disables a clipping. The norms take one extra read of the gradients, a
deterministic fixed-order reduction. With skip_nonfinite, a call in which any
gradient element is inf or NaN writes nothing and returns skipped = true.

Every op of this family updates N variables in one call, in one pass over
memory (LAMB: two), computing in float32 for 16-bit variables and in the
variable's type otherwise, storing rounded to nearest even. Keras' decoupled
weight decay, var -= var * weight_decay * lr, is applied first, in the same
pass (weight_decay = 0 disables it). Slots have their variable's shape and
dtype. All inputs are validated before anything is written: on bad input
(uninitialized or repeated variable, dtype or shape mismatch, list lengths,
non-scalar hyperparameter) the op raises InvalidArgument and no variable
changes.
)doc");

REGISTER_OP("Fusedopt>ApplyLion")
    .Input("vars: N * resource")
    .Input("m: N * resource")
    .Input("grads: N * T")
    .Input("lr: Tscalar")
    .Input("beta_1: Tscalar")
    .Input("beta_2: Tscalar")
    .Input("weight_decay: Tscalar")
    .Input("grad_scale: Tscalar")
    .Input("clip_value: Tscalar")
    .Input("clip_norm: Tscalar")
    .Input("global_clip_norm: Tscalar")
    .Output("skipped: bool")
    .Attr("N: int >= 1")
    .Attr("T: {half, bfloat16, float, double}")
    .Attr("Tscalar: {float, double}")
    .Attr("skip_nonfinite: bool = false")
    .SetShapeFn([](InferenceContext* c) { TF_RETURN_IF_ERROR(ScalarInputs(
          c, {"lr", "beta_1", "beta_2", "weight_decay", "grad_scale", "clip_value", "clip_norm", "global_clip_norm"}));
      c->set_output(0, c->Scalar());
      return absl::OkStatus();
    })
    .Doc(R"doc(
Lion (keras.optimizers.Lion).

  var = var - lr * sign(m * beta_1 + g * (1 - beta_1))
  m = m * beta_2 + g * (1 - beta_2)

Bytes per element: 5T.

Gradient options, fused into the same pass (Keras' order: unscale, clip,
then decay and update): every gradient is multiplied by grad_scale (1 / loss
scale); then at most one clipping applies: clip_value clips elements to
[-clip_value, clip_value]; clip_norm scales each variable's gradient to L2 norm
at most clip_norm; global_clip_norm scales all N gradients by
clip / max(global norm, clip) (NaN if the norm is not finite, as in Keras).
+inf disables a clipping. The norms take one extra read of the gradients, a
deterministic fixed-order reduction. With skip_nonfinite, a call in which any
gradient element is inf or NaN writes nothing and returns skipped = true.

Every op of this family updates N variables in one call, in one pass over
memory (LAMB: two), computing in float32 for 16-bit variables and in the
variable's type otherwise, storing rounded to nearest even. Keras' decoupled
weight decay, var -= var * weight_decay * lr, is applied first, in the same
pass (weight_decay = 0 disables it). Slots have their variable's shape and
dtype. All inputs are validated before anything is written: on bad input
(uninitialized or repeated variable, dtype or shape mismatch, list lengths,
non-scalar hyperparameter) the op raises InvalidArgument and no variable
changes.
)doc");

REGISTER_OP("Fusedopt>ApplyLamb")
    .Input("vars: N * resource")
    .Input("m: N * resource")
    .Input("v: N * resource")
    .Input("grads: N * T")
    .Input("lr: Tscalar")
    .Input("beta_1: Tscalar")
    .Input("beta_2: Tscalar")
    .Input("epsilon: Tscalar")
    .Input("weight_decay: Tscalar")
    .Input("step: int64")
    .Input("grad_scale: Tscalar")
    .Input("clip_value: Tscalar")
    .Input("clip_norm: Tscalar")
    .Input("global_clip_norm: Tscalar")
    .Output("skipped: bool")
    .Attr("N: int >= 1")
    .Attr("T: {half, bfloat16, float, double}")
    .Attr("Tscalar: {float, double}")
    .Attr("skip_nonfinite: bool = false")
    .SetShapeFn([](InferenceContext* c) { TF_RETURN_IF_ERROR(ScalarInputs(
          c, {"lr", "beta_1", "beta_2", "epsilon", "weight_decay", "step", "grad_scale", "clip_value", "clip_norm", "global_clip_norm"}));
      c->set_output(0, c->Scalar());
      return absl::OkStatus();
    })
    .Doc(R"doc(
LAMB (keras.optimizers.Lamb), with a per-variable trust ratio.

  m = m + (g - m) * (1 - beta_1);  v = v + (g^2 - v) * (1 - beta_2)
  u = (m / (1 - beta_1^step)) / (sqrt(v / (1 - beta_2^step)) + epsilon)
  ratio = ||var|| / ||u|| if both norms > 0, else 1   (per variable)
  var = var - ratio * lr * u

Two passes, because no element of a variable can be written before the norms
over all of it are known: pass 1 reads var, m, v, g and writes m, v while
summing var^2 and u^2 (deterministic fixed-order sums in double); pass 2 reads
var, m, v and writes var. Bytes per element: 6T + 4T = 10T.

Gradient options, fused into the same pass (Keras' order: unscale, clip,
then decay and update): every gradient is multiplied by grad_scale (1 / loss
scale); then at most one clipping applies: clip_value clips elements to
[-clip_value, clip_value]; clip_norm scales each variable's gradient to L2 norm
at most clip_norm; global_clip_norm scales all N gradients by
clip / max(global norm, clip) (NaN if the norm is not finite, as in Keras).
+inf disables a clipping. The norms take one extra read of the gradients, a
deterministic fixed-order reduction. With skip_nonfinite, a call in which any
gradient element is inf or NaN writes nothing and returns skipped = true.

Every op of this family updates N variables in one call, in one pass over
memory (LAMB: two), computing in float32 for 16-bit variables and in the
variable's type otherwise, storing rounded to nearest even. Keras' decoupled
weight decay, var -= var * weight_decay * lr, is applied first, in the same
pass (weight_decay = 0 disables it). Slots have their variable's shape and
dtype. All inputs are validated before anything is written: on bad input
(uninitialized or repeated variable, dtype or shape mismatch, list lengths,
non-scalar hyperparameter) the op raises InvalidArgument and no variable
changes.
)doc");

REGISTER_OP("Fusedopt>SparseApplySGD")
    .Input("vars: N * resource")
    .Input("momenta: M * resource")
    .Input("grad_values: N * T")
    .Input("grad_indices: N * Tindices")
    .Input("lr: Tscalar")
    .Input("momentum: Tscalar")
    .Input("weight_decay: Tscalar")
    .Input("grad_scale: Tscalar")
    .Input("clip_value: Tscalar")
    .Input("clip_norm: Tscalar")
    .Input("global_clip_norm: Tscalar")
    .Output("skipped: bool")
    .Attr("N: int >= 1")
    .Attr("M: int >= 0")
    .Attr("T: {half, bfloat16, float, double}")
    .Attr("Tscalar: {float, double}")
    .Attr("skip_nonfinite: bool = false")
    .Attr("Tindices: {int32, int64}")
    .Attr("mode: {'exact', 'lazy'} = 'exact'")
    .Attr("nesterov: bool = false")
    .SetShapeFn([](InferenceContext* c) { TF_RETURN_IF_ERROR(ScalarInputs(
          c, {"lr", "momentum", "weight_decay", "grad_scale", "clip_value", "clip_norm", "global_clip_norm"}));
      c->set_output(0, c->Scalar());
      return absl::OkStatus();
    })
    .Doc(R"doc(
Fusedopt>ApplySGD with IndexedSlices gradients: grad_values[i] holds rows
grad_indices[i] of the gradient of vars[i] (rank >= 1). Same rule, slots,
hyperparameters, gradient options and validation as the dense op, plus: every
index must lie in [0, rows) (the first bad one is named; nothing is written),
and duplicate indices are summed, deterministically, before the update.
mode='exact': every row is updated, rows without a gradient with a zero
gradient — the same result as the dense op on the densified gradient, without
materializing it. mode='lazy': only the rows present are updated (weight decay
included), at a cost proportional to them (TF Addons' LazyAdam semantics).
LAMB supports only 'exact'. CPU only for now.
)doc");

REGISTER_OP("Fusedopt>SparseApplyAdam")
    .Input("vars: N * resource")
    .Input("m: N * resource")
    .Input("v: N * resource")
    .Input("vhat: K * resource")
    .Input("grad_values: N * T")
    .Input("grad_indices: N * Tindices")
    .Input("lr: Tscalar")
    .Input("beta_1: Tscalar")
    .Input("beta_2: Tscalar")
    .Input("epsilon: Tscalar")
    .Input("weight_decay: Tscalar")
    .Input("step: int64")
    .Input("grad_scale: Tscalar")
    .Input("clip_value: Tscalar")
    .Input("clip_norm: Tscalar")
    .Input("global_clip_norm: Tscalar")
    .Output("skipped: bool")
    .Attr("N: int >= 1")
    .Attr("K: int >= 0")
    .Attr("T: {half, bfloat16, float, double}")
    .Attr("Tscalar: {float, double}")
    .Attr("skip_nonfinite: bool = false")
    .Attr("Tindices: {int32, int64}")
    .Attr("mode: {'exact', 'lazy'} = 'exact'")
    .SetShapeFn([](InferenceContext* c) { TF_RETURN_IF_ERROR(ScalarInputs(
          c, {"lr", "beta_1", "beta_2", "epsilon", "weight_decay", "step", "grad_scale", "clip_value", "clip_norm", "global_clip_norm"}));
      c->set_output(0, c->Scalar());
      return absl::OkStatus();
    })
    .Doc(R"doc(
Fusedopt>ApplyAdam with IndexedSlices gradients: grad_values[i] holds rows
grad_indices[i] of the gradient of vars[i] (rank >= 1). Same rule, slots,
hyperparameters, gradient options and validation as the dense op, plus: every
index must lie in [0, rows) (the first bad one is named; nothing is written),
and duplicate indices are summed, deterministically, before the update.
mode='exact': every row is updated, rows without a gradient with a zero
gradient — the same result as the dense op on the densified gradient, without
materializing it. mode='lazy': only the rows present are updated (weight decay
included), at a cost proportional to them (TF Addons' LazyAdam semantics).
LAMB supports only 'exact'. CPU only for now.
)doc");

REGISTER_OP("Fusedopt>SparseApplyNadam")
    .Input("vars: N * resource")
    .Input("m: N * resource")
    .Input("v: N * resource")
    .Input("grad_values: N * T")
    .Input("grad_indices: N * Tindices")
    .Input("lr: Tscalar")
    .Input("beta_1: Tscalar")
    .Input("beta_2: Tscalar")
    .Input("epsilon: Tscalar")
    .Input("weight_decay: Tscalar")
    .Input("u_product: Tscalar")
    .Input("step: int64")
    .Input("grad_scale: Tscalar")
    .Input("clip_value: Tscalar")
    .Input("clip_norm: Tscalar")
    .Input("global_clip_norm: Tscalar")
    .Output("skipped: bool")
    .Attr("N: int >= 1")
    .Attr("T: {half, bfloat16, float, double}")
    .Attr("Tscalar: {float, double}")
    .Attr("skip_nonfinite: bool = false")
    .Attr("Tindices: {int32, int64}")
    .Attr("mode: {'exact', 'lazy'} = 'exact'")
    .SetShapeFn([](InferenceContext* c) { TF_RETURN_IF_ERROR(ScalarInputs(
          c, {"lr", "beta_1", "beta_2", "epsilon", "weight_decay", "u_product", "step", "grad_scale", "clip_value", "clip_norm", "global_clip_norm"}));
      c->set_output(0, c->Scalar());
      return absl::OkStatus();
    })
    .Doc(R"doc(
Fusedopt>ApplyNadam with IndexedSlices gradients: grad_values[i] holds rows
grad_indices[i] of the gradient of vars[i] (rank >= 1). Same rule, slots,
hyperparameters, gradient options and validation as the dense op, plus: every
index must lie in [0, rows) (the first bad one is named; nothing is written),
and duplicate indices are summed, deterministically, before the update.
mode='exact': every row is updated, rows without a gradient with a zero
gradient — the same result as the dense op on the densified gradient, without
materializing it. mode='lazy': only the rows present are updated (weight decay
included), at a cost proportional to them (TF Addons' LazyAdam semantics).
LAMB supports only 'exact'. CPU only for now.
)doc");

REGISTER_OP("Fusedopt>SparseApplyAdamax")
    .Input("vars: N * resource")
    .Input("m: N * resource")
    .Input("u: N * resource")
    .Input("grad_values: N * T")
    .Input("grad_indices: N * Tindices")
    .Input("lr: Tscalar")
    .Input("beta_1: Tscalar")
    .Input("beta_2: Tscalar")
    .Input("epsilon: Tscalar")
    .Input("weight_decay: Tscalar")
    .Input("step: int64")
    .Input("grad_scale: Tscalar")
    .Input("clip_value: Tscalar")
    .Input("clip_norm: Tscalar")
    .Input("global_clip_norm: Tscalar")
    .Output("skipped: bool")
    .Attr("N: int >= 1")
    .Attr("T: {half, bfloat16, float, double}")
    .Attr("Tscalar: {float, double}")
    .Attr("skip_nonfinite: bool = false")
    .Attr("Tindices: {int32, int64}")
    .Attr("mode: {'exact', 'lazy'} = 'exact'")
    .SetShapeFn([](InferenceContext* c) { TF_RETURN_IF_ERROR(ScalarInputs(
          c, {"lr", "beta_1", "beta_2", "epsilon", "weight_decay", "step", "grad_scale", "clip_value", "clip_norm", "global_clip_norm"}));
      c->set_output(0, c->Scalar());
      return absl::OkStatus();
    })
    .Doc(R"doc(
Fusedopt>ApplyAdamax with IndexedSlices gradients: grad_values[i] holds rows
grad_indices[i] of the gradient of vars[i] (rank >= 1). Same rule, slots,
hyperparameters, gradient options and validation as the dense op, plus: every
index must lie in [0, rows) (the first bad one is named; nothing is written),
and duplicate indices are summed, deterministically, before the update.
mode='exact': every row is updated, rows without a gradient with a zero
gradient — the same result as the dense op on the densified gradient, without
materializing it. mode='lazy': only the rows present are updated (weight decay
included), at a cost proportional to them (TF Addons' LazyAdam semantics).
LAMB supports only 'exact'. CPU only for now.
)doc");

REGISTER_OP("Fusedopt>SparseApplyRmsprop")
    .Input("vars: N * resource")
    .Input("velocity: N * resource")
    .Input("momenta: M * resource")
    .Input("average_gradient: C * resource")
    .Input("grad_values: N * T")
    .Input("grad_indices: N * Tindices")
    .Input("lr: Tscalar")
    .Input("rho: Tscalar")
    .Input("momentum: Tscalar")
    .Input("epsilon: Tscalar")
    .Input("weight_decay: Tscalar")
    .Input("grad_scale: Tscalar")
    .Input("clip_value: Tscalar")
    .Input("clip_norm: Tscalar")
    .Input("global_clip_norm: Tscalar")
    .Output("skipped: bool")
    .Attr("N: int >= 1")
    .Attr("M: int >= 0")
    .Attr("C: int >= 0")
    .Attr("T: {half, bfloat16, float, double}")
    .Attr("Tscalar: {float, double}")
    .Attr("skip_nonfinite: bool = false")
    .Attr("Tindices: {int32, int64}")
    .Attr("mode: {'exact', 'lazy'} = 'exact'")
    .SetShapeFn([](InferenceContext* c) { TF_RETURN_IF_ERROR(ScalarInputs(
          c, {"lr", "rho", "momentum", "epsilon", "weight_decay", "grad_scale", "clip_value", "clip_norm", "global_clip_norm"}));
      c->set_output(0, c->Scalar());
      return absl::OkStatus();
    })
    .Doc(R"doc(
Fusedopt>ApplyRmsprop with IndexedSlices gradients: grad_values[i] holds rows
grad_indices[i] of the gradient of vars[i] (rank >= 1). Same rule, slots,
hyperparameters, gradient options and validation as the dense op, plus: every
index must lie in [0, rows) (the first bad one is named; nothing is written),
and duplicate indices are summed, deterministically, before the update.
mode='exact': every row is updated, rows without a gradient with a zero
gradient — the same result as the dense op on the densified gradient, without
materializing it. mode='lazy': only the rows present are updated (weight decay
included), at a cost proportional to them (TF Addons' LazyAdam semantics).
LAMB supports only 'exact'. CPU only for now.
)doc");

REGISTER_OP("Fusedopt>SparseApplyAdagrad")
    .Input("vars: N * resource")
    .Input("accumulator: N * resource")
    .Input("grad_values: N * T")
    .Input("grad_indices: N * Tindices")
    .Input("lr: Tscalar")
    .Input("epsilon: Tscalar")
    .Input("weight_decay: Tscalar")
    .Input("grad_scale: Tscalar")
    .Input("clip_value: Tscalar")
    .Input("clip_norm: Tscalar")
    .Input("global_clip_norm: Tscalar")
    .Output("skipped: bool")
    .Attr("N: int >= 1")
    .Attr("T: {half, bfloat16, float, double}")
    .Attr("Tscalar: {float, double}")
    .Attr("skip_nonfinite: bool = false")
    .Attr("Tindices: {int32, int64}")
    .Attr("mode: {'exact', 'lazy'} = 'exact'")
    .SetShapeFn([](InferenceContext* c) { TF_RETURN_IF_ERROR(ScalarInputs(
          c, {"lr", "epsilon", "weight_decay", "grad_scale", "clip_value", "clip_norm", "global_clip_norm"}));
      c->set_output(0, c->Scalar());
      return absl::OkStatus();
    })
    .Doc(R"doc(
Fusedopt>ApplyAdagrad with IndexedSlices gradients: grad_values[i] holds rows
grad_indices[i] of the gradient of vars[i] (rank >= 1). Same rule, slots,
hyperparameters, gradient options and validation as the dense op, plus: every
index must lie in [0, rows) (the first bad one is named; nothing is written),
and duplicate indices are summed, deterministically, before the update.
mode='exact': every row is updated, rows without a gradient with a zero
gradient — the same result as the dense op on the densified gradient, without
materializing it. mode='lazy': only the rows present are updated (weight decay
included), at a cost proportional to them (TF Addons' LazyAdam semantics).
LAMB supports only 'exact'. CPU only for now.
)doc");

REGISTER_OP("Fusedopt>SparseApplyAdadelta")
    .Input("vars: N * resource")
    .Input("accumulated_grad: N * resource")
    .Input("accumulated_delta_var: N * resource")
    .Input("grad_values: N * T")
    .Input("grad_indices: N * Tindices")
    .Input("lr: Tscalar")
    .Input("rho: Tscalar")
    .Input("epsilon: Tscalar")
    .Input("weight_decay: Tscalar")
    .Input("grad_scale: Tscalar")
    .Input("clip_value: Tscalar")
    .Input("clip_norm: Tscalar")
    .Input("global_clip_norm: Tscalar")
    .Output("skipped: bool")
    .Attr("N: int >= 1")
    .Attr("T: {half, bfloat16, float, double}")
    .Attr("Tscalar: {float, double}")
    .Attr("skip_nonfinite: bool = false")
    .Attr("Tindices: {int32, int64}")
    .Attr("mode: {'exact', 'lazy'} = 'exact'")
    .SetShapeFn([](InferenceContext* c) { TF_RETURN_IF_ERROR(ScalarInputs(
          c, {"lr", "rho", "epsilon", "weight_decay", "grad_scale", "clip_value", "clip_norm", "global_clip_norm"}));
      c->set_output(0, c->Scalar());
      return absl::OkStatus();
    })
    .Doc(R"doc(
Fusedopt>ApplyAdadelta with IndexedSlices gradients: grad_values[i] holds rows
grad_indices[i] of the gradient of vars[i] (rank >= 1). Same rule, slots,
hyperparameters, gradient options and validation as the dense op, plus: every
index must lie in [0, rows) (the first bad one is named; nothing is written),
and duplicate indices are summed, deterministically, before the update.
mode='exact': every row is updated, rows without a gradient with a zero
gradient — the same result as the dense op on the densified gradient, without
materializing it. mode='lazy': only the rows present are updated (weight decay
included), at a cost proportional to them (TF Addons' LazyAdam semantics).
LAMB supports only 'exact'. CPU only for now.
)doc");

REGISTER_OP("Fusedopt>SparseApplyFtrl")
    .Input("vars: N * resource")
    .Input("accumulator: N * resource")
    .Input("linear: N * resource")
    .Input("grad_values: N * T")
    .Input("grad_indices: N * Tindices")
    .Input("lr: Tscalar")
    .Input("learning_rate_power: Tscalar")
    .Input("l1: Tscalar")
    .Input("l2: Tscalar")
    .Input("l2_shrinkage: Tscalar")
    .Input("beta: Tscalar")
    .Input("weight_decay: Tscalar")
    .Input("grad_scale: Tscalar")
    .Input("clip_value: Tscalar")
    .Input("clip_norm: Tscalar")
    .Input("global_clip_norm: Tscalar")
    .Output("skipped: bool")
    .Attr("N: int >= 1")
    .Attr("T: {half, bfloat16, float, double}")
    .Attr("Tscalar: {float, double}")
    .Attr("skip_nonfinite: bool = false")
    .Attr("Tindices: {int32, int64}")
    .Attr("mode: {'exact', 'lazy'} = 'exact'")
    .SetShapeFn([](InferenceContext* c) { TF_RETURN_IF_ERROR(ScalarInputs(
          c, {"lr", "learning_rate_power", "l1", "l2", "l2_shrinkage", "beta", "weight_decay", "grad_scale", "clip_value", "clip_norm", "global_clip_norm"}));
      c->set_output(0, c->Scalar());
      return absl::OkStatus();
    })
    .Doc(R"doc(
Fusedopt>ApplyFtrl with IndexedSlices gradients: grad_values[i] holds rows
grad_indices[i] of the gradient of vars[i] (rank >= 1). Same rule, slots,
hyperparameters, gradient options and validation as the dense op, plus: every
index must lie in [0, rows) (the first bad one is named; nothing is written),
and duplicate indices are summed, deterministically, before the update.
mode='exact': every row is updated, rows without a gradient with a zero
gradient — the same result as the dense op on the densified gradient, without
materializing it. mode='lazy': only the rows present are updated (weight decay
included), at a cost proportional to them (TF Addons' LazyAdam semantics).
LAMB supports only 'exact'. CPU only for now.
)doc");

REGISTER_OP("Fusedopt>SparseApplyLion")
    .Input("vars: N * resource")
    .Input("m: N * resource")
    .Input("grad_values: N * T")
    .Input("grad_indices: N * Tindices")
    .Input("lr: Tscalar")
    .Input("beta_1: Tscalar")
    .Input("beta_2: Tscalar")
    .Input("weight_decay: Tscalar")
    .Input("grad_scale: Tscalar")
    .Input("clip_value: Tscalar")
    .Input("clip_norm: Tscalar")
    .Input("global_clip_norm: Tscalar")
    .Output("skipped: bool")
    .Attr("N: int >= 1")
    .Attr("T: {half, bfloat16, float, double}")
    .Attr("Tscalar: {float, double}")
    .Attr("skip_nonfinite: bool = false")
    .Attr("Tindices: {int32, int64}")
    .Attr("mode: {'exact', 'lazy'} = 'exact'")
    .SetShapeFn([](InferenceContext* c) { TF_RETURN_IF_ERROR(ScalarInputs(
          c, {"lr", "beta_1", "beta_2", "weight_decay", "grad_scale", "clip_value", "clip_norm", "global_clip_norm"}));
      c->set_output(0, c->Scalar());
      return absl::OkStatus();
    })
    .Doc(R"doc(
Fusedopt>ApplyLion with IndexedSlices gradients: grad_values[i] holds rows
grad_indices[i] of the gradient of vars[i] (rank >= 1). Same rule, slots,
hyperparameters, gradient options and validation as the dense op, plus: every
index must lie in [0, rows) (the first bad one is named; nothing is written),
and duplicate indices are summed, deterministically, before the update.
mode='exact': every row is updated, rows without a gradient with a zero
gradient — the same result as the dense op on the densified gradient, without
materializing it. mode='lazy': only the rows present are updated (weight decay
included), at a cost proportional to them (TF Addons' LazyAdam semantics).
LAMB supports only 'exact'. CPU only for now.
)doc");

REGISTER_OP("Fusedopt>SparseApplyLamb")
    .Input("vars: N * resource")
    .Input("m: N * resource")
    .Input("v: N * resource")
    .Input("grad_values: N * T")
    .Input("grad_indices: N * Tindices")
    .Input("lr: Tscalar")
    .Input("beta_1: Tscalar")
    .Input("beta_2: Tscalar")
    .Input("epsilon: Tscalar")
    .Input("weight_decay: Tscalar")
    .Input("step: int64")
    .Input("grad_scale: Tscalar")
    .Input("clip_value: Tscalar")
    .Input("clip_norm: Tscalar")
    .Input("global_clip_norm: Tscalar")
    .Output("skipped: bool")
    .Attr("N: int >= 1")
    .Attr("T: {half, bfloat16, float, double}")
    .Attr("Tscalar: {float, double}")
    .Attr("skip_nonfinite: bool = false")
    .Attr("Tindices: {int32, int64}")
    .Attr("mode: {'exact', 'lazy'} = 'exact'")
    .SetShapeFn([](InferenceContext* c) { TF_RETURN_IF_ERROR(ScalarInputs(
          c, {"lr", "beta_1", "beta_2", "epsilon", "weight_decay", "step", "grad_scale", "clip_value", "clip_norm", "global_clip_norm"}));
      c->set_output(0, c->Scalar());
      return absl::OkStatus();
    })
    .Doc(R"doc(
Fusedopt>ApplyLamb with IndexedSlices gradients: grad_values[i] holds rows
grad_indices[i] of the gradient of vars[i] (rank >= 1). Same rule, slots,
hyperparameters, gradient options and validation as the dense op, plus: every
index must lie in [0, rows) (the first bad one is named; nothing is written),
and duplicate indices are summed, deterministically, before the update.
mode='exact': every row is updated, rows without a gradient with a zero
gradient — the same result as the dense op on the densified gradient, without
materializing it. mode='lazy': only the rows present are updated (weight decay
included), at a cost proportional to them (TF Addons' LazyAdam semantics).
LAMB supports only 'exact'. CPU only for now.
)doc");

REGISTER_OP("Fusedopt>StreamTriad")
    .Input("a: resource")
    .Input("b: float")
    .Input("s: float")
    .SetShapeFn([](InferenceContext* c) { return ScalarInputs(c, {"s"}); })
    .Doc(R"doc(
Memory-bandwidth probe for benchmarks: a = a * s + b in place over float32
(12 bytes per element: two reads, one in-place write, the access pattern of the
optimizer updates, which write only buffers they have just read), run on the
same thread pool and chunking as the fused ops.
)doc");

}  // namespace tf
}  // namespace fusedopt
