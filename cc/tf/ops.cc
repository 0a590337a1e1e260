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
    .Attr("N: int >= 1")
    .Attr("M: int >= 0")
    .Attr("T: {half, bfloat16, float, double}")
    .Attr("Tscalar: {float, double}")
    .Attr("nesterov: bool = false")
    .SetShapeFn([](InferenceContext* c) {
      return ScalarInputs(c, {"lr", "momentum", "weight_decay"});
    })
    .Doc(R"doc(
Stochastic gradient descent with optional momentum, Nesterov momentum and
decoupled weight decay, over N variables in one call (keras.optimizers.SGD).

For every element, in one pass over memory, computed in float32 for 16-bit
variables and in the variable's type otherwise:

  if weight_decay != 0:  var = var - var * (weight_decay * lr)
  M == 0 (plain):        var = var - lr * g
  M == N (momentum):     m = momentum * m - lr * g
                         var = var + m                         (nesterov=false)
                         var = var + momentum * m - lr * g     (nesterov=true)

Bytes per element, T the element size: 3T plain, 5T with momentum.

vars: the N variables, each of dtype T.
momenta: either none (M = 0, plain SGD) or one momentum slot per variable
  (M = N), of the variable's shape and dtype.
grads: the N gradients, each of its variable's shape.
lr: the learning rate, a scalar.
momentum: the momentum coefficient, a scalar (ignored when M = 0).
weight_decay: the decoupled weight decay coefficient, a scalar; 0 disables it.
nesterov: whether to use Nesterov momentum (requires M = N).

Raises InvalidArgument, before any variable is written, if a variable is
uninitialized or listed twice, a dtype or shape does not match, M is neither 0
nor N, or a hyperparameter is not a scalar.
)doc");

}  // namespace tf
}  // namespace fusedopt
