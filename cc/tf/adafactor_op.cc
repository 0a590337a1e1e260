// Fusedopt>ApplyAdafactor: keras.optimizers.Adafactor over N variables in one
// call, three passes per tensor (Note [Adafactor passes] in
// cc/core/adafactor.h). CPU, and inside XLA as the custom call
// "fusedopt_adafactor" (AdafactorXlaOp in cc/tf/xla_ops.cc); no GPU kernel yet
// (fusedopt.keras.Adafactor runs Keras' own update for GPU variables).
#define EIGEN_USE_THREADS

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "cc/core/adafactor.h"
#include "cc/tf/fused_op_util.h"
#include "cc/tf/tf_numerics.h"
#include "cc/tf/variable_access.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace fusedopt {
namespace tf {
namespace {

using tensorflow::OpInputList;
using tensorflow::OpKernel;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::TensorShape;

REGISTER_OP("Fusedopt>ApplyAdafactor")
    .Input("vars: N * resource")
    .Input("r: N * resource")
    .Input("c: N * resource")
    .Input("v: N * resource")
    .Input("grads: N * T")
    .Input("lr: Tscalar")
    .Input("beta_2_decay: Tscalar")
    .Input("epsilon_1: Tscalar")
    .Input("epsilon_2: Tscalar")
    .Input("clip_threshold: Tscalar")
    .Input("weight_decay: Tscalar")
    .Input("step: int64")
    .Output("skipped: bool")
    .Attr("N: int >= 1")
    .Attr("T: {half, bfloat16, float, double}")
    .Attr("Tscalar: {float, double}")
    .Attr("grappler_form: bool = false")
    .Attr("tf_reductions: bool = false")
    .SetShapeFn([](tensorflow::shape_inference::InferenceContext* c) {
      c->set_output(0, c->Scalar());
      return absl::OkStatus();
    })
    .Doc(R"doc(
Adafactor (keras.optimizers.Adafactor; Shazeer & Stern, 2018) over N
variables. For a variable of rank >= 2 and shape [..., R, C], r (shape
[..., R]) and c (shape [..., C]) hold the factored second moments; for rank < 2
they are unused (Keras' placeholders) and v holds the second moment. v always
has the variable's shape (Keras stores the reconstructed v). step counts from 1.

  var = var - var * weight_decay * lr
  rho = min(lr, 1 / sqrt(step));  beta = 1 - step^beta_2_decay
  alpha = max(epsilon_2, rms(var)) * rho;  q = g^2 + epsilon_1
  rank >= 2: r = beta * r + (1 - beta) * mean_C(q)
             c = beta * c + (1 - beta) * mean_R(q)
             v = (r / mean_R(r))[:, None] * c[None, :]
  rank < 2:  v = beta * v + (1 - beta) * q
  u = g / sqrt(v);  var = var - alpha * u / max(1, rms(u) / clip_threshold)

Three passes per tensor (8 elements' traffic per element); the sums are
accumulated in double in a fixed order (deterministic, the same on every
thread count), so the results are not TensorFlow's reductions bit for bit.
tf_reductions (float and double variables): Keras' step instead, with
TensorFlow's own Mean and (with grappler_form, as Grappler rewrites Keras'
graph) Rsqrt expressions on the op's device, for keras.optimizers.Adafactor's
bits; seven passes over a factored tensor plus four reads for the reductions.
Every input is validated before anything is written: InvalidArgument naming it
(shapes, dtypes, non-finite hyperparameters, clip_threshold <= 0, step < 1),
nothing changed. skipped is always false (the op has no gradient options). CPU
(and XLA on the CPU) only.
)doc");

absl::Status Invalid(const std::string& m) { return absl::InvalidArgumentError(m); }

template <typename T>
class AdafactorOp : public OpKernel {
 public:
  explicit AdafactorOp(OpKernelConstruction* c) : OpKernel(c) {
    OP_REQUIRES_OK(c, c->GetAttr("grappler_form", &grappler_form_));
    OP_REQUIRES_OK(c, c->GetAttr("tf_reductions", &tf_reductions_));
  }

  void Compute(OpKernelContext* ctx) override { OP_REQUIRES_OK(ctx, DoCompute(ctx)); }

 private:
  absl::Status DoCompute(OpKernelContext* ctx) {
    const tensorflow::DataType dtype = tensorflow::DataTypeToEnum<T>::value;
    OpInputList grads;
    TF_RETURN_IF_ERROR(ctx->input_list("grads", &grads));
    const int n = grads.size();
    AdafactorScalars s;
    s.grappler_form = grappler_form_;
    TF_RETURN_IF_ERROR(ReadScalar(ctx, "lr", &s.lr));
    TF_RETURN_IF_ERROR(ReadScalar(ctx, "beta_2_decay", &s.beta_2_decay));
    TF_RETURN_IF_ERROR(ReadScalar(ctx, "epsilon_1", &s.epsilon_1));
    TF_RETURN_IF_ERROR(ReadScalar(ctx, "epsilon_2", &s.epsilon_2));
    TF_RETURN_IF_ERROR(ReadScalar(ctx, "clip_threshold", &s.clip_threshold));
    TF_RETURN_IF_ERROR(ReadScalar(ctx, "weight_decay", &s.weight_decay));
    TF_RETURN_IF_ERROR(ReadStep(ctx, &s.step));
    const std::string err = CheckAdafactorScalars(s);
    if (!err.empty()) return Invalid(err);

    tensorflow::Tensor* skipped = nullptr;
    TF_RETURN_IF_ERROR(ctx->allocate_output("skipped", TensorShape({}), &skipped));
    skipped->scalar<bool>()() = false;

    VariableSet vars(ctx);
    int var0 = 0, r0 = 0, c0 = 0, v0 = 0;
    TF_RETURN_IF_ERROR(vars.Lookup("vars", &var0));
    TF_RETURN_IF_ERROR(vars.Lookup("r", &r0));
    TF_RETURN_IF_ERROR(vars.Lookup("c", &c0));
    TF_RETURN_IF_ERROR(vars.Lookup("v", &v0));
    for (const auto& [name, first, next] :
         {std::tuple<const char*, int, int>{"r", r0, c0}, {"c", c0, v0}, {"v", v0, vars.size()}}) {
      if (next - first != n) {
        return Invalid(absl::StrCat(name, " has ", next - first, " entries but there are ", n,
                                    " variables"));
      }
    }
    TF_RETURN_IF_ERROR(vars.CheckDistinctAndLock());
    std::vector<AdafactorTensor> ts(n);
    for (int i = 0; i < n; ++i) {
      const TensorShape& shape = grads[i].shape();
      const std::string gname = absl::StrCat("grads[", i, "]");
      TF_RETURN_IF_ERROR(vars.ValidateDtype(var0 + i, dtype));
      TF_RETURN_IF_ERROR(vars.ValidateShape(var0 + i, shape, gname));
      TF_RETURN_IF_ERROR(vars.ValidateDtype(v0 + i, dtype));
      TF_RETURN_IF_ERROR(vars.ValidateShape(v0 + i, shape, gname));
      AdafactorTensor& t = ts[i];
      t.factored = shape.dims() >= 2;
      t.scalar = shape.dims() == 0;
      if (t.factored) {
        t.cols = shape.dim_size(shape.dims() - 1);
        t.rows = shape.dim_size(shape.dims() - 2);
        t.batch = 1;
        for (int d = 0; d < shape.dims() - 2; ++d) t.batch *= shape.dim_size(d);
        TensorShape r_shape = shape;
        r_shape.RemoveLastDims(1);
        TensorShape c_shape = r_shape;
        c_shape.set_dim(c_shape.dims() - 1, t.cols);
        const std::string from = absl::StrCat("the factored moments of ", gname);
        TF_RETURN_IF_ERROR(vars.ValidateDtype(r0 + i, dtype));
        TF_RETURN_IF_ERROR(vars.ValidateShape(r0 + i, r_shape, from));
        TF_RETURN_IF_ERROR(vars.ValidateDtype(c0 + i, dtype));
        TF_RETURN_IF_ERROR(vars.ValidateShape(c0 + i, c_shape, from));
      } else {
        t.cols = shape.num_elements();
      }
    }
    const bool tf_form = tf_reductions_ && AdafactorHasTfForm(DTypeIndex(dtype));
    tensorflow::Tensor scratch;
    if (tf_form) TF_RETURN_IF_ERROR(AllocateAdafactorScratch(ctx, ts, dtype, &scratch));
    TF_RETURN_IF_ERROR(vars.PrepareForWrite(&CpuCopy));
    for (int i = 0; i < n; ++i) {
      AdafactorTensor& t = ts[i];
      t.var = vars.data(var0 + i);
      t.v = vars.data(v0 + i);
      t.grad = grads[i].tensor_data().data();
      if (t.factored) {
        t.r = vars.data(r0 + i);
        t.c = vars.data(c0 + i);
      }
    }
    if (tf_form) {
      AdafactorTfReductions(ctx, s, ts, &scratch);
    } else {
      RunAdafactorCpu(PoolOf(ctx), DTypeIndex(dtype), s, ts);
    }
    return absl::OkStatus();
  }

  bool grappler_form_ = false;
  bool tf_reductions_ = false;
};

#define FUSEDOPT_REGISTER_ADAFACTOR(T)                                                       \
  REGISTER_KERNEL_BUILDER(                                                                  \
      Name("Fusedopt>ApplyAdafactor").Device(tensorflow::DEVICE_CPU).TypeConstraint<T>("T"), \
      AdafactorOp<T>);
FUSEDOPT_REGISTER_ADAFACTOR(Eigen::half)
FUSEDOPT_REGISTER_ADAFACTOR(Eigen::bfloat16)
FUSEDOPT_REGISTER_ADAFACTOR(float)
FUSEDOPT_REGISTER_ADAFACTOR(double)

}  // namespace
}  // namespace tf
}  // namespace fusedopt
