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

// Every fused op has the same frame around its own slot lists and scalars:
//   vars: N * resource, <slots>, <gradients>, <scalars>, <gradient options>
// with gradients either dense (grads: N * T) or sparse (grad_values: N * T,
// grad_indices: N * Tindices) and one output, skipped: bool. The frame is
// written once here; FUSEDOPT_REGISTER_FUSED_OP registers the dense op
// Fusedopt>Apply<Name> and its sparse twin Fusedopt>SparseApply<Name>.

#define FUSEDOPT_DENSE_GRADS .Input("grads: N * T")
#define FUSEDOPT_SPARSE_GRADS \
  .Input("grad_values: N * T").Input("grad_indices: N * Tindices")
#define FUSEDOPT_OPTION_INPUTS                                                           \
  .Input("grad_scale: Tscalar")                                                          \
      .Input("clip_value: Tscalar")                                                      \
      .Input("clip_norm: Tscalar")                                                       \
      .Input("global_clip_norm: Tscalar")                                                \
      .Output("skipped: bool")                                                           \
      .Attr("N: int >= 1")                                                               \
      .Attr("T: {half, bfloat16, float, double}")                                        \
      .Attr("Tscalar: {float, double}")                                                  \
      .Attr("skip_nonfinite: bool = false")                                             \
      .Attr("grappler_form: bool = false")                                              \
      .Attr("grappler_constant_folding: bool = false")
#define FUSEDOPT_SPARSE_ATTRS \
  .Attr("Tindices: {int32, int64}").Attr("mode: {'exact', 'lazy'} = 'exact'")

constexpr char kOptionsDoc[] = R"doc(
Gradient options, fused into the same pass (Keras' order: unscale, clip,
then decay and update): every gradient is multiplied by grad_scale (1 / loss
scale); then at most one clipping applies: clip_value clips elements to
[-clip_value, clip_value]; clip_norm scales each variable's gradient to L2 norm
at most clip_norm; global_clip_norm scales all N gradients by
clip / max(global norm, clip) (NaN if the norm is not finite, as in Keras).
+inf disables a clipping. The norms take one extra read of the gradients, a
deterministic fixed-order reduction. With skip_nonfinite, a call in which any
gradient the update would use (after grad_scale and clipping) is inf or NaN,
or whose scale is not finite, writes nothing and returns skipped = true.

Every hyperparameter must be finite, and the ranges Keras' constructors
enforce hold (SGD momentum in [0, 1], Lion beta_1 in (0, 1], Ftrl l1, l2 and
l2_shrinkage >= 0, learning_rate_power <= 0); otherwise the op fails with
InvalidArgument naming the input, and nothing is written.

Every op of this family updates N variables in one call, in one pass over
memory (LAMB: two), computing in float32 for 16-bit variables and in the
variable's type otherwise, storing rounded to nearest even. Keras' decoupled
weight decay, var -= var * weight_decay * lr, is applied first, in the same
pass (weight_decay = 0 disables it).

Hyperparameters arrive as exact values (Tscalar float64 keeps a Python
float unrounded) and the op computes every coefficient the way Keras'
update_step does for the variables' dtype (float32 for 16-bit variables):
`ops.cast(beta, dtype)` rounds through float32, `1 - beta` is rounded once from
double, powers and bias corrections are computed in that dtype. With
grappler_form=true the weight decay is var - var * (weight_decay * lr), the form
Keras' graph takes after Grappler's arithmetic optimizer (MinimizeBroadcasts);
Keras' own ops in a tf.function compute that, eager Keras the unrewritten
(var * weight_decay) * lr; it also selects Grappler's x * rsqrt(y) for x / sqrt(y)
(RMSprop, Adagrad, Adadelta). grappler_constant_folding=true: divisions by
constants become multiplications by their reciprocals (ScheduleFreeAdamW), as
Grappler's constant folding does. Slots have their variable's shape and
dtype. All inputs are validated before anything is written: on bad input
(uninitialized or repeated variable, dtype or shape mismatch, list lengths,
non-scalar hyperparameter) the op raises InvalidArgument and no variable
changes.
)doc";

constexpr char kSparseDoc[] = R"doc(
Sparse twin of the dense op of the same name (Fusedopt>Apply...): grad_values[i]
holds rows grad_indices[i] of the gradient of vars[i] (rank >= 1). Same rule,
slots, hyperparameters, gradient options and validation as the dense op, plus:
every index must lie in [0, rows) (the first bad one is named; nothing is
written), and duplicate indices are summed, deterministically, before the
update. With mode='exact' every row is updated, rows without a gradient as if
their gradient were zero, which is the dense op's result on the densified
gradient, without materializing it. With mode='lazy' only the rows present are
updated (weight decay included), at a cost proportional to them (the semantics
of TF Addons' LazyAdam). LAMB supports only 'exact'. CPU only for now.
)doc";

// Shape function: the listed inputs are scalars; the output is a scalar.
#define FUSEDOPT_SHAPE_FN(...)                                                        \
  [](InferenceContext* c) {                                                          \
    TF_RETURN_IF_ERROR(ScalarInputs(c, {__VA_ARGS__, "grad_scale", "clip_value",     \
                                        "clip_norm", "global_clip_norm"}));         \
    c->set_output(0, c->Scalar());                                                   \
    return absl::OkStatus();                                                         \
  }

#define FUSEDOPT_REGISTER_FUSED_OP(NAME, SIGNATURE, SHAPE_FN, DOC)                          \
  REGISTER_OP("Fusedopt>Apply" NAME)                                                       \
      .Input("vars: N * resource") SIGNATURE(FUSEDOPT_DENSE_GRADS) FUSEDOPT_OPTION_INPUTS   \
      .SetShapeFn(SHAPE_FN)                                                                \
      .Doc(std::string(DOC) + kOptionsDoc);                                                \
  REGISTER_OP("Fusedopt>SparseApply" NAME)                                                 \
      .Input("vars: N * resource") SIGNATURE(FUSEDOPT_SPARSE_GRADS) FUSEDOPT_OPTION_INPUTS  \
      FUSEDOPT_SPARSE_ATTRS                                                                \
      .SetShapeFn(SHAPE_FN)                                                                \
      .Doc(kSparseDoc)

// SGD: slots, scalars and attributes.
#define FUSEDOPT_SGD_SIGNATURE(GRADS) \
  .Input("momenta: M * resource") \
  GRADS \
  .Input("lr: Tscalar") \
  .Input("momentum: Tscalar") \
  .Input("weight_decay: Tscalar") \
  .Attr("M: int >= 0") \
  .Attr("nesterov: bool = false")
FUSEDOPT_REGISTER_FUSED_OP("SGD", FUSEDOPT_SGD_SIGNATURE,
                           FUSEDOPT_SHAPE_FN("lr", "momentum", "weight_decay"),
                           R"doc(
Stochastic gradient descent with optional (Nesterov) momentum (keras.optimizers.SGD).

  M == 0 (plain):   var = var - lr * g
  M == N:           m = momentum * m - lr * g
                    var = var + m                        (nesterov=false)
                    var = var + momentum * m - lr * g    (nesterov=true)

Bytes per element (T = element size): 3T plain, 5T with momentum.
)doc");

// Adam: slots, scalars and attributes.
#define FUSEDOPT_ADAM_SIGNATURE(GRADS) \
  .Input("m: N * resource") \
  .Input("v: N * resource") \
  .Input("vhat: K * resource") \
  GRADS \
  .Input("lr: Tscalar") \
  .Input("beta_1: Tscalar") \
  .Input("beta_2: Tscalar") \
  .Input("epsilon: Tscalar") \
  .Input("weight_decay: Tscalar") \
  .Input("step: int64") \
  .Attr("K: int >= 0") \
  .Attr("tf_training_op_form: bool = false")
FUSEDOPT_REGISTER_FUSED_OP("Adam", FUSEDOPT_ADAM_SIGNATURE,
                           FUSEDOPT_SHAPE_FN("lr", "beta_1", "beta_2", "epsilon", "weight_decay", "step"),
                           R"doc(
Adam, AMSGrad and (with weight_decay) AdamW (keras.optimizers.Adam, AdamW).

  alpha = lr * sqrt(1 - beta_2^step) / (1 - beta_1^step)    (once per call, double)
  m = m + (g - m) * (1 - beta_1)
  v = v + (g^2 - v) * (1 - beta_2)
  K == N (amsgrad): vhat = max(vhat, v); use vhat for v below
  var = var - m * alpha / (sqrt(v) + epsilon)

epsilon is Keras' (added to sqrt(v)), step counts from 1.
tf_training_op_form (the sparse op only; the dense op refuses it, since
TensorFlow's ResourceApplyAdam computes the formula above): tf_keras' legacy
sparse Adam, its own ops in their order (no weight decay; the betas used as
given, in the variables' dtype):
  alpha = lr * (sqrt(1 - beta_2^step) / (1 - beta_1^step))
  m = m * beta_1 + g * (1 - beta_1);  v = v * beta_2 + (g * g) * (1 - beta_2)
  var = var - alpha * m / (sqrt(v) + epsilon)
Bytes per element: 7T (amsgrad 9T).
)doc");

// Nadam: slots, scalars and attributes.
#define FUSEDOPT_NADAM_SIGNATURE(GRADS) \
  .Input("m: N * resource") \
  .Input("v: N * resource") \
  GRADS \
  .Input("lr: Tscalar") \
  .Input("beta_1: Tscalar") \
  .Input("beta_2: Tscalar") \
  .Input("epsilon: Tscalar") \
  .Input("weight_decay: Tscalar") \
  .Input("u_product: Tscalar") \
  .Input("step: int64") \
  .Attr("schedule_decay: float = 1.0") \
  .Attr("schedule_decay_bits: int = 0") \
  .Attr("tf_training_op_form: bool = false")
FUSEDOPT_REGISTER_FUSED_OP("Nadam", FUSEDOPT_NADAM_SIGNATURE,
                           FUSEDOPT_SHAPE_FN("lr", "beta_1", "beta_2", "epsilon", "weight_decay", "u_product", "step"),
                           R"doc(
Nadam, Keras' formulation (keras.optimizers.Nadam), not the paper's.

  u_t = beta_1 * (1 - 0.5 * 0.96^(d * step))
  u_t1 = beta_1 * (1 - 0.5 * 0.96^(d * (step + 1)))
  d is the attr schedule_decay: 1 as in Keras 3, 0.004 for tf_keras' legacy Nadam
  u_product: the optimizer's running product of u_t including this step
  m = m + (g - m) * (1 - beta_1);  v = v + (g^2 - v) * (1 - beta_2)
  m_hat = u_t1 * m / (1 - u_product * u_t1) + (1 - u_t) * g / (1 - u_product)
  v_hat = v / (1 - beta_2^step)
  var = var - m_hat * lr / (sqrt(v_hat) + epsilon)

schedule_decay_bits: when not 0, the schedule decay exactly, as the bits of
a float64 (a float attribute holds only a float32; fusedopt.ops passes both).
tf_training_op_form: tf_keras' legacy Nadam's own ops, in their order (no
weight decay; the betas used as given, in the variables' dtype):
  g' = g / (1 - u_product);  m = beta_1 * m + (1 - beta_1) * g
  m' = m / (1 - u_product * u_t1)
  v = beta_2 * v + (1 - beta_2) * g^2;  v' = v / (1 - beta_2^step)
  var = var - lr * ((1 - u_t) * g' + u_t1 * m') / (sqrt(v') + epsilon)

Bytes per element: 7T.
)doc");

// Adamax: slots, scalars and attributes.
#define FUSEDOPT_ADAMAX_SIGNATURE(GRADS) \
  .Input("m: N * resource") \
  .Input("u: N * resource") \
  GRADS \
  .Input("lr: Tscalar") \
  .Input("beta_1: Tscalar") \
  .Input("beta_2: Tscalar") \
  .Input("epsilon: Tscalar") \
  .Input("weight_decay: Tscalar") \
  .Input("step: int64") \
  .Attr("tf_training_op_form: bool = false")
FUSEDOPT_REGISTER_FUSED_OP("Adamax", FUSEDOPT_ADAMAX_SIGNATURE,
                           FUSEDOPT_SHAPE_FN("lr", "beta_1", "beta_2", "epsilon", "weight_decay", "step"),
                           R"doc(
Adamax (keras.optimizers.Adamax).

  m = m + (g - m) * (1 - beta_1)
  u = max(beta_2 * u, |g|)
  var = var - lr * m / ((1 - beta_1^step) * (u + epsilon))

tf_training_op_form: TensorFlow's ResourceApplyAdaMax arithmetic, which
tf_keras' legacy Adamax uses: var = var - (lr / (1 - beta_1^step)) *
(m / (u + epsilon)); for the sparse op tf_keras' legacy sparse Adamax, the
same with m = m * beta_1 + g * (1 - beta_1).

Bytes per element: 7T.
)doc");

// Rmsprop: slots, scalars and attributes.
#define FUSEDOPT_RMSPROP_SIGNATURE(GRADS) \
  .Input("velocity: N * resource") \
  .Input("momenta: M * resource") \
  .Input("average_gradient: C * resource") \
  GRADS \
  .Input("lr: Tscalar") \
  .Input("rho: Tscalar") \
  .Input("momentum: Tscalar") \
  .Input("epsilon: Tscalar") \
  .Input("weight_decay: Tscalar") \
  .Attr("M: int >= 0") \
  .Attr("C: int >= 0") \
  .Attr("epsilon_outside_sqrt: bool = false") \
  .Attr("tf_training_op_form: bool = false")
FUSEDOPT_REGISTER_FUSED_OP("Rmsprop", FUSEDOPT_RMSPROP_SIGNATURE,
                           FUSEDOPT_SHAPE_FN("lr", "rho", "momentum", "epsilon", "weight_decay"),
                           R"doc(
RMSprop, with optional momentum (M == N) and centering (C == N)
(keras.optimizers.RMSprop).

  velocity = rho * velocity + (1 - rho) * g^2
  centered: average_gradient = rho * average_gradient + (1 - rho) * g
            denom = velocity - average_gradient^2 + epsilon
  else:     denom = velocity + epsilon
  increment = lr * g / sqrt(denom)
    (epsilon_outside_sqrt: denom without epsilon, and
     increment = lr * g / (sqrt(denom) + epsilon), as tf_keras' legacy RMSprop
     without momentum)
  momentum: m = momentum * m + increment;  var = var - m
  else:     var = var - increment

tf_training_op_form: TensorFlow's ResourceApply(Centered)RMSProp arithmetic,
which tf_keras' legacy RMSprop uses with momentum: velocity = velocity +
(g^2 - velocity) * (1 - rho), average_gradient = average_gradient +
(g - average_gradient) * (1 - rho), the rest as above.

Bytes per element: 5T, plus 2T each for momentum and centering.
)doc");

// Adagrad: slots, scalars and attributes.
#define FUSEDOPT_ADAGRAD_SIGNATURE(GRADS) \
  .Input("accumulator: N * resource") \
  GRADS \
  .Input("lr: Tscalar") \
  .Input("epsilon: Tscalar") \
  .Input("weight_decay: Tscalar") \
  .Attr("epsilon_outside_sqrt: bool = false")
FUSEDOPT_REGISTER_FUSED_OP("Adagrad", FUSEDOPT_ADAGRAD_SIGNATURE,
                           FUSEDOPT_SHAPE_FN("lr", "epsilon", "weight_decay"),
                           R"doc(
Adagrad (keras.optimizers.Adagrad; the accumulator starts at
initial_accumulator_value, set by the caller).

  accumulator = accumulator + g^2
  var = var - lr * g / sqrt(accumulator + epsilon)
  (epsilon_outside_sqrt: var = var - lr * g / (sqrt(accumulator) + epsilon), as
   tf_keras' legacy Adagrad)

Bytes per element: 5T.
)doc");

// Adadelta: slots, scalars and attributes.
#define FUSEDOPT_ADADELTA_SIGNATURE(GRADS) \
  .Input("accumulated_grad: N * resource") \
  .Input("accumulated_delta_var: N * resource") \
  GRADS \
  .Input("lr: Tscalar") \
  .Input("rho: Tscalar") \
  .Input("epsilon: Tscalar") \
  .Input("weight_decay: Tscalar") \
  .Attr("tf_training_op_form: bool = false")
FUSEDOPT_REGISTER_FUSED_OP("Adadelta", FUSEDOPT_ADADELTA_SIGNATURE,
                           FUSEDOPT_SHAPE_FN("lr", "rho", "epsilon", "weight_decay"),
                           R"doc(
Adadelta (keras.optimizers.Adadelta).

  accumulated_grad = rho * accumulated_grad + (1 - rho) * g^2
  delta = -sqrt(accumulated_delta_var + epsilon) * g / sqrt(accumulated_grad + epsilon)
  accumulated_delta_var = rho * accumulated_delta_var + (1 - rho) * delta^2
  var = var + lr * delta

tf_training_op_form: TensorFlow's ResourceApplyAdadelta arithmetic, which
tf_keras' legacy Adadelta uses: u = sqrt(accumulated_delta_var + epsilon) *
rsqrt(accumulated_grad + epsilon) * g (TF's CPU Rsqrt), var = var - u * lr,
accumulated_delta_var = rho * accumulated_delta_var + (1 - rho) * u^2.

Bytes per element: 7T.
)doc");

// Ftrl: slots, scalars and attributes.
#define FUSEDOPT_FTRL_SIGNATURE(GRADS) \
  .Input("accumulator: N * resource") \
  .Input("linear: N * resource") \
  GRADS \
  .Input("lr: Tscalar") \
  .Input("learning_rate_power: Tscalar") \
  .Input("l1: Tscalar") \
  .Input("l2: Tscalar") \
  .Input("l2_shrinkage: Tscalar") \
  .Input("beta: Tscalar") \
  .Input("weight_decay: Tscalar") \
  .Attr("tf_pow: bool = false") \
  .Attr("tf_training_op_form: bool = false")
FUSEDOPT_REGISTER_FUSED_OP("Ftrl", FUSEDOPT_FTRL_SIGNATURE,
                           FUSEDOPT_SHAPE_FN("lr", "learning_rate_power", "l1", "l2", "l2_shrinkage", "beta", "weight_decay"),
                           R"doc(
FTRL-proximal, Keras' formulation (keras.optimizers.Ftrl).

  p = -learning_rate_power;  l2' = l2 + beta / (2 * lr)
  g_s = g + 2 * l2_shrinkage * var
  new_acc = accumulator + g^2
  linear = linear + g_s - (new_acc^p - accumulator^p) / lr * var
  quadratic = new_acc^p / lr + 2 * l2'
  var = (clip(linear, -l1, l1) - linear) / quadratic
  accumulator = new_acc

learning_rate_power = -0.5 uses sqrt; other powers use the C library's pow.
Requires lr > 0 and learning_rate_power <= 0.
Bytes per element: 7T.

tf_pow: the powers as keras.optimizers.Ftrl's ops compute them, with
TensorFlow's own CPU Pow kernel (Eigen's vectorized pow), except where
Grappler rewrites Keras' graph (grappler_form: power 0.5 is Sqrt, 2 Square).
Dense float32 and float64 CPU calls (elsewhere ignored); four passes instead
of one (7T + 2T + 4T + 4T bytes per element).

tf_training_op_form (with tf_pow): the powers as TensorFlow's
ResourceApplyFtrl(V2) computes them (tf_keras' legacy Ftrl): Eigen's unary
x.pow(p), repeated squaring for integer powers in [-3, 7], and sqrt for power
0.5. The elementwise arithmetic is the same as without it.
)doc");

// ScheduleFreeAdamW: slots, scalars and attributes.
#define FUSEDOPT_SCHEDULE_FREE_SIGNATURE(GRADS) \
  .Input("momentum: N * resource") \
  .Input("velocity: N * resource") \
  GRADS \
  .Input("lr: Tscalar") \
  .Input("beta_1: Tscalar") \
  .Input("beta_2: Tscalar") \
  .Input("epsilon: Tscalar") \
  .Input("warmup_steps: Tscalar") \
  .Input("weight_decay: Tscalar") \
  .Input("step: int64")
FUSEDOPT_REGISTER_FUSED_OP("ScheduleFreeAdamW", FUSEDOPT_SCHEDULE_FREE_SIGNATURE,
                           FUSEDOPT_SHAPE_FN("lr", "beta_1", "beta_2", "epsilon", "warmup_steps",
                                             "weight_decay", "step"),
                           R"doc(
Schedule-free AdamW (keras.optimizers.ScheduleFreeAdamW). momentum holds the
base iterate z (initialised to the variable), velocity Adam's second moment;
step counts from 1; warmup_steps = 0 disables the warmup.

  lr_t = lr * min(step / warmup_steps, 1)            (warmup_steps > 0)
  w = 1 / step
  v = v + (g^2 - v) * (1 - beta_2)
  z = z - lr_t * g / (sqrt(v / (1 - beta_2^step)) + epsilon)
  x = (var - (1 - beta_1) * z) / beta_1      (z after its update, as Keras)
  x = (1 - w) * x + w * z
  var = (1 - beta_1) * z + beta_1 * x

Bytes per element: 7T.
)doc");

// Lion: slots, scalars and attributes.
#define FUSEDOPT_LION_SIGNATURE(GRADS) \
  .Input("m: N * resource") \
  GRADS \
  .Input("lr: Tscalar") \
  .Input("beta_1: Tscalar") \
  .Input("beta_2: Tscalar") \
  .Input("weight_decay: Tscalar")
FUSEDOPT_REGISTER_FUSED_OP("Lion", FUSEDOPT_LION_SIGNATURE,
                           FUSEDOPT_SHAPE_FN("lr", "beta_1", "beta_2", "weight_decay"),
                           R"doc(
Lion (keras.optimizers.Lion).

  var = var - lr * sign(m * beta_1 + g * (1 - beta_1))
  m = m * beta_2 + g * (1 - beta_2)

Bytes per element: 5T.
)doc");

// Lamb: slots, scalars and attributes.
#define FUSEDOPT_LAMB_SIGNATURE(GRADS) \
  .Input("m: N * resource") \
  .Input("v: N * resource") \
  GRADS \
  .Input("lr: Tscalar") \
  .Input("beta_1: Tscalar") \
  .Input("beta_2: Tscalar") \
  .Input("epsilon: Tscalar") \
  .Input("weight_decay: Tscalar") \
  .Input("step: int64") \
  .Attr("tf_norms: bool = false")
FUSEDOPT_REGISTER_FUSED_OP("Lamb", FUSEDOPT_LAMB_SIGNATURE,
                           FUSEDOPT_SHAPE_FN("lr", "beta_1", "beta_2", "epsilon", "weight_decay", "step"),
                           R"doc(
LAMB (keras.optimizers.Lamb), with a per-variable trust ratio.

  m = m + (g - m) * (1 - beta_1);  v = v + (g^2 - v) * (1 - beta_2)
  u = (m / (1 - beta_1^step)) / (sqrt(v / (1 - beta_2^step)) + epsilon)
  ratio = ||var|| / ||u|| if both norms > 0, else 1   (per variable)
  var = var - ratio * lr * u

Two passes, because no element of a variable can be written before the norms
over all of it are known: pass 1 reads var, m, v, g and writes m, v while
summing var^2 and u^2 (deterministic fixed-order sums in double); pass 2 reads
var, m, v and writes var. Bytes per element: 6T + 4T = 10T.

tf_norms: the two norms as keras.optimizers.Lamb's TensorFlow ops compute them,
sqrt(sum(pow(x, 2))) in the variable's dtype with TF's own CPU Pow (Grappler's
Square with grappler_form) and Sum kernels, on the op's thread pool: their
summation order depends on the pool's size, as TF's does. Float32 and float64
variables on the CPU (elsewhere ignored: 16-bit types, GPU and XLA keep the
double sums). Costs two more reads and writes of each tensor (4T + 4T).
)doc");

// Muon, the elementwise halves around its Newton-Schulz iterations.
#define FUSEDOPT_MUON_MOMENTUM_SIGNATURE(GRADS) \
  GRADS \
  .Input("momentum: Tscalar")
FUSEDOPT_REGISTER_FUSED_OP("MuonMomentum", FUSEDOPT_MUON_MOMENTUM_SIGNATURE,
                           FUSEDOPT_SHAPE_FN("momentum"),
                           R"doc(
The momentum half of Muon (keras.optimizers.Muon, the variables it does not
send to its AdamW path): vars are Muon's momentum buffers m.

  m = m + (g + m * (momentum - 1))

(Keras' graph computes the same: Grappler leaves this expression alone in
Muon's graph.) The Newton-Schulz iterations on m (or Nesterov's
g + momentum * m) stay TensorFlow matmuls; Fusedopt>ApplyMuon applies their
result. Takes no weight decay. Bytes per element: 3T.
)doc");

#define FUSEDOPT_MUON_SIGNATURE(GRADS) \
  GRADS \
  .Input("lr: Tscalar") \
  .Input("scale: Tscalar") \
  .Input("rms_rate: Tscalar") \
  .Input("weight_decay: Tscalar")
FUSEDOPT_REGISTER_FUSED_OP("Muon", FUSEDOPT_MUON_SIGNATURE,
                           FUSEDOPT_SHAPE_FN("lr", "scale", "rms_rate", "weight_decay"),
                           R"doc(
The update half of Muon (keras.optimizers.Muon): grads are the orthogonalized
updates (the Newton-Schulz output), scale is Keras' sqrt(max(rows, cols)) as a
float32 value, rms_rate its rms_rate (Keras' rms_rate=None: scale = rms_rate = 1).

  var = var - ((lr * g) * scale) * rms_rate

With grappler_form=true: var = var - g * ((lr * scale) * rms_rate), Keras'
graph after MinimizeBroadcasts. Requires scale > 0. Bytes per element: 3T.
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
