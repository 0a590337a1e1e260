// Note [XLA lowering]: inside XLA compilation (jit_compile=True; Keras'
// default on one GPU) an op needs an XlaOpKernel, not an OpKernel. The dense
// fused ops lower to one typed-FFI custom call, "fusedopt_apply", per op:
//   * every variable and slot is read (ReadVariableInput) and passed as an
//     operand whose result aliases it (output_operand_aliasing), so XLA hands
//     the handler the variable's own buffer and the update runs in place (no
//     copy in the optimized HLO: tests/test_xla.py checks it);
//   * gradients and scalars (hyperparameters, step, gradient options) are
//     operands, so a schedule never recompiles; the op's attributes travel as
//     the custom call's FFI attributes;
//   * the results are assigned back to the variables (AssignVariable) and
//     `skipped` is the op's output.
// The handler (cc/xla/ffi_handler.cc, platform "Host"; registered with
// TensorFlow's XLA by cc/tf/xla_ffi_registration.cc, and the same source that
// fusedopt._native hands to JAX: Note [one handler, two XLAs]) runs the same
// validation, plan and per-ISA loops as the op kernels, on XLA's intra-op
// thread pool. The kernels are registered with REGISTER_KERNEL_BUILDER on
// the XLA JIT device (REGISTER_XLA_OP misses a registry XLA initialised
// before the library loaded). CPU only for now: the GPU handler comes with the
// device-resident scalars of the CUDA work. The sparse ops have no lowering:
// "exact" IndexedSlices reach these dense ops densified (Note [sparse under
// XLA] in python/fusedopt/_tf_context.py); "lazy" ones keep the built-in ops.
#include <functional>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "cc/core/plan.h"
#include "cc/tf/fused_op_util.h"
#include "tensorflow/compiler/tf2xla/shape_util.h"
#include "tensorflow/compiler/tf2xla/xla_op_kernel.h"
#include "tensorflow/compiler/tf2xla/xla_op_registry.h"
#include "xla/hlo/builder/xla_builder.h"
#include "xla/shape_util.h"

namespace fusedopt {
namespace tf {
namespace {

using tensorflow::XlaOpKernel;
using tensorflow::XlaOpKernelContext;

// Emits the typed-FFI custom call `target` whose first results alias the
// operands read from the resource inputs `written` (in order), assigns them
// back to those variables, and sets output 0 to the last result (`skipped`).
absl::Status EmitInPlaceCall(XlaOpKernelContext* ctx, const char* target,
                             const std::vector<xla::XlaOp>& operands,
                             std::vector<xla::Shape> result_shapes,
                             const std::vector<int>& written, tensorflow::DataType dtype,
                             const std::string& attrs) {
  result_shapes.push_back(xla::ShapeUtil::MakeShape(xla::PRED, {}));
  std::vector<std::pair<xla::ShapeIndex, std::pair<int64_t, xla::ShapeIndex>>> aliasing;
  for (size_t j = 0; j < written.size(); ++j) {
    aliasing.push_back({xla::ShapeIndex({static_cast<int64_t>(j)}),
                        {static_cast<int64_t>(j), xla::ShapeIndex({})}});
  }
  xla::XlaOp call = xla::CustomCall(
      ctx->builder(), target, operands, xla::ShapeUtil::MakeTupleShape(result_shapes), attrs,
      /*has_side_effect=*/false, aliasing, /*literal=*/nullptr,
      xla::CustomCallSchedule::SCHEDULE_NONE, xla::CustomCallApiVersion::API_VERSION_TYPED_FFI);
  for (size_t j = 0; j < written.size(); ++j) {
    TF_RETURN_IF_ERROR(ctx->AssignVariable(written[j], dtype,
                                           xla::GetTupleElement(call, static_cast<int64_t>(j))));
  }
  ctx->SetOutput(0, xla::GetTupleElement(call, static_cast<int64_t>(written.size())));
  return absl::OkStatus();
}

// Reads the resource input `input` for an in-place call: its value joins
// `operands` and its XLA shape `result_shapes`, once it is checked to have
// shape `want` (else InvalidArgument with `mismatch(shape found)`).
absl::Status ReadInPlaceOperand(
    XlaOpKernelContext* ctx, int input, tensorflow::DataType dtype,
    const tensorflow::TensorShape& want,
    const std::function<std::string(const tensorflow::TensorShape&)>& mismatch,
    std::vector<xla::XlaOp>* operands, std::vector<xla::Shape>* result_shapes) {
  tensorflow::TensorShape shape;
  xla::XlaOp value;
  TF_RETURN_IF_ERROR(ctx->ReadVariableInput(input, dtype, &shape, &value));
  if (shape != want) return absl::InvalidArgumentError(mismatch(shape));
  xla::Shape xs;
  TF_RETURN_IF_ERROR(tensorflow::TensorShapeToXLAShape(dtype, shape, &xs));
  operands->push_back(value);
  result_shapes->push_back(xs);
  return absl::OkStatus();
}

template <Rule R>
class FusedApplyXlaOp : public XlaOpKernel {
 public:
  explicit FusedApplyXlaOp(tensorflow::OpKernelConstruction* c) : XlaOpKernel(c) {
    OP_REQUIRES_OK(c, c->GetAttr("T", &dtype_));
    OP_REQUIRES_OK(c, c->GetAttr("skip_nonfinite", &skip_nonfinite_));
    OP_REQUIRES_OK(c, c->GetAttr("grappler_form", &grappler_form_));
    OP_REQUIRES_OK(c, c->GetAttr("grappler_constant_folding", &constant_folding_));
    OP_REQUIRES_OK(c, ReadRuleAttrs(c, R, &attrs_));
  }

  void Compile(XlaOpKernelContext* ctx) override { OP_REQUIRES_OK(ctx, DoCompile(ctx)); }

 private:
  absl::Status DoCompile(XlaOpKernelContext* ctx) {
    const RuleInfo& info = InfoOf(R);
    if (attrs_.state_format != StateFormat::kSame || attrs_.stochastic_rounding) {
      return absl::UnimplementedError(
          "fusedopt: low-precision state (state_format, stochastic_rounding) has no XLA "
          "lowering yet; run the step without jit_compile");
    }
    xla::XlaBuilder* b = ctx->builder();
    int vstart = 0, vstop = 0;
    TF_RETURN_IF_ERROR(ctx->op_kernel().InputRange("vars", &vstart, &vstop));
    const int n = vstop - vstart;
    // The written operands: variables, then each given slot list.
    std::vector<int> written_inputs;  // op input index of each written operand
    for (int i = 0; i < n; ++i) written_inputs.push_back(vstart + i);
    int slot_mask = 0;
    for (int k = 0; k < info.num_slots; ++k) {
      int start = 0, stop = 0;
      TF_RETURN_IF_ERROR(ctx->op_kernel().InputRange(info.slots[k].name, &start, &stop));
      if (stop == start) {
        if (!info.slots[k].optional) {
          return absl::InvalidArgumentError(absl::StrCat(info.slots[k].name, " is empty"));
        }
        continue;
      }
      if (stop - start != n) {
        return absl::InvalidArgumentError(absl::StrCat(info.slots[k].name, " has ", stop - start,
                                                       " entries but there are ", n,
                                                       " variables"));
      }
      slot_mask |= 1 << k;
      for (int i = start; i < stop; ++i) written_inputs.push_back(i);
    }
    std::vector<xla::XlaOp> grads;
    std::vector<tensorflow::TensorShape> grad_shapes;
    TF_RETURN_IF_ERROR(ctx->InputList("grads", &grads, &grad_shapes));
    if (static_cast<int>(grads.size()) != n) {
      return absl::InvalidArgumentError(
          absl::StrCat("got ", n, " variables but ", grads.size(), " gradients"));
    }
    std::vector<xla::XlaOp> operands;
    std::vector<xla::Shape> result_shapes;
    for (size_t j = 0; j < written_inputs.size(); ++j) {
      const tensorflow::TensorShape& want = grad_shapes[j % n];
      TF_RETURN_IF_ERROR(ReadInPlaceOperand(
          ctx, written_inputs[j], dtype_, want,
          [&](const tensorflow::TensorShape& shape) {
            return absl::StrCat("grads[", j % n, "] has shape ", want.DebugString(),
                                " but variable/slot input ", written_inputs[j], " has shape ",
                                shape.DebugString(), "; nothing was updated");
          },
          &operands, &result_shapes));
    }
    for (const xla::XlaOp& g : grads) operands.push_back(g);
    for (int k = 0; k < info.num_scalars; ++k) operands.push_back(ctx->Input(info.scalars[k]));
    operands.push_back(info.has_step ? ctx->Input("step") : xla::ConstantR0<int64_t>(b, 0));
    for (const char* name : {"grad_scale", "clip_value", "clip_norm", "global_clip_norm"}) {
      operands.push_back(ctx->Input(name));
    }
    const std::string attrs = absl::StrCat(
        "{rule = ", static_cast<int>(R), " : i32, n = ", n, " : i32, slot_mask = ", slot_mask,
        " : i32, nesterov = ", attrs_.nesterov ? 1 : 0,
        " : i32, epsilon_outside_sqrt = ", attrs_.epsilon_outside_sqrt ? 1 : 0,
        " : i32, tf_training_op_form = ", attrs_.tf_training_op_form ? 1 : 0,
        " : i32, schedule_decay = ", absl::StrFormat("%.17e", attrs_.schedule_decay),
        " : f64, grappler_form = ", grappler_form_ ? 1 : 0,
        " : i32, constant_folding = ", constant_folding_ ? 1 : 0,
        " : i32, skip_nonfinite = ", skip_nonfinite_ ? 1 : 0,
        " : i32, tf_norms = ", attrs_.tf_norms ? 1 : 0,
        " : i32, tf_pow = ", attrs_.tf_pow ? 1 : 0,
        " : i32, tf_tensor_pow = ", attrs_.tf_tensor_pow ? 1 : 0, " : i32}");
    return EmitInPlaceCall(ctx, "fusedopt_apply", operands, std::move(result_shapes),
                           written_inputs, dtype_, attrs);
  }

  tensorflow::DataType dtype_ = tensorflow::DT_FLOAT;
  bool skip_nonfinite_ = false;
  bool grappler_form_ = false;
  bool constant_folding_ = false;
  RuleAttrs attrs_;
};

// Fusedopt>ApplyAdafactor (cc/tf/adafactor_op.cc) lowers the same way to
// the custom call "fusedopt_adafactor": operands vars [n], then r and c of
// each factored variable (rank >= 2; a rank < 2 variable's r and c are Keras'
// placeholders, never touched), v [n], grads [n], the six scalars, step;
// results the written operands, aliased, and `skipped` (always false).
class AdafactorXlaOp : public XlaOpKernel {
 public:
  explicit AdafactorXlaOp(tensorflow::OpKernelConstruction* c) : XlaOpKernel(c) {
    OP_REQUIRES_OK(c, c->GetAttr("T", &dtype_));
    OP_REQUIRES_OK(c, c->GetAttr("grappler_form", &grappler_form_));
    OP_REQUIRES_OK(c, c->GetAttr("tf_reductions", &tf_reductions_));
  }

  void Compile(XlaOpKernelContext* ctx) override { OP_REQUIRES_OK(ctx, DoCompile(ctx)); }

 private:
  absl::Status DoCompile(XlaOpKernelContext* ctx) {
    std::vector<xla::XlaOp> grads;
    std::vector<tensorflow::TensorShape> grad_shapes;
    TF_RETURN_IF_ERROR(ctx->InputList("grads", &grads, &grad_shapes));
    const int n = static_cast<int>(grads.size());
    int first[4] = {0, 0, 0, 0};
    const char* lists[4] = {"vars", "r", "c", "v"};
    for (int k = 0; k < 4; ++k) {
      int start = 0, stop = 0;
      TF_RETURN_IF_ERROR(ctx->op_kernel().InputRange(lists[k], &start, &stop));
      if (stop - start != n) {
        return absl::InvalidArgumentError(absl::StrCat(
            lists[k], " has ", stop - start, " entries but there are ", n, " gradients"));
      }
      first[k] = start;
    }
    // (op input index, the shape it must have, what to call it in an error)
    std::vector<std::tuple<int, tensorflow::TensorShape, std::string>> written;
    for (int i = 0; i < n; ++i) {
      written.emplace_back(first[0] + i, grad_shapes[i], absl::StrCat("vars[", i, "]"));
    }
    for (int i = 0; i < n; ++i) {
      const tensorflow::TensorShape& shape = grad_shapes[i];
      if (shape.dims() < 2) continue;
      tensorflow::TensorShape r_shape = shape;
      r_shape.RemoveLastDims(1);
      tensorflow::TensorShape c_shape = r_shape;
      c_shape.set_dim(c_shape.dims() - 1, shape.dim_size(shape.dims() - 1));
      written.emplace_back(first[1] + i, r_shape, absl::StrCat("r[", i, "]"));
      written.emplace_back(first[2] + i, c_shape, absl::StrCat("c[", i, "]"));
    }
    for (int i = 0; i < n; ++i) {
      written.emplace_back(first[3] + i, grad_shapes[i], absl::StrCat("v[", i, "]"));
    }
    std::vector<xla::XlaOp> operands;
    std::vector<xla::Shape> result_shapes;
    for (const auto& [input, want, name] : written) {
      TF_RETURN_IF_ERROR(ReadInPlaceOperand(
          ctx, input, dtype_, want,
          [&](const tensorflow::TensorShape& shape) {
            return absl::StrCat(name, " has shape ", shape.DebugString(),
                                " but the gradient needs ", want.DebugString(),
                                "; nothing was updated");
          },
          &operands, &result_shapes));
    }
    for (const xla::XlaOp& g : grads) operands.push_back(g);
    for (const char* name :
         {"lr", "beta_2_decay", "epsilon_1", "epsilon_2", "clip_threshold", "weight_decay"}) {
      operands.push_back(ctx->Input(name));
    }
    operands.push_back(ctx->Input("step"));
    const std::string attrs =
        absl::StrCat("{n = ", n, " : i32, grappler_form = ", grappler_form_ ? 1 : 0,
                     " : i32, tf_reductions = ", tf_reductions_ ? 1 : 0, " : i32}");
    std::vector<int> inputs;
    for (const auto& w : written) inputs.push_back(std::get<0>(w));
    return EmitInPlaceCall(ctx, "fusedopt_adafactor", operands, std::move(result_shapes), inputs,
                           dtype_, attrs);
  }

  tensorflow::DataType dtype_ = tensorflow::DT_FLOAT;
  bool grappler_form_ = false;
  bool tf_reductions_ = false;
};

REGISTER_KERNEL_BUILDER(Name("Fusedopt>ApplyAdafactor").Device(tensorflow::DEVICE_CPU_XLA_JIT),
                        AdafactorXlaOp);

// Every rule of the registry (Note [rule registry]), as REGISTER_KERNEL_BUILDER
// would, in a loop.
template <Rule R>
tensorflow::OpKernel* CreateXla(tensorflow::OpKernelConstruction* c) {
  return new FusedApplyXlaOp<R>(c);
}

[[maybe_unused]] const bool kXlaRegistered = [] {
  auto add = [](Rule rule, tensorflow::OpKernel* (*create)(tensorflow::OpKernelConstruction*)) {
    const std::string op = std::string("Fusedopt>Apply") + InfoOf(rule).op;
    tensorflow::KernelDefBuilder def(op.c_str());
    def.Device(tensorflow::DEVICE_CPU_XLA_JIT);
    tensorflow::kernel_factory::OpKernelRegistrar(def.Build(), "FusedApplyXlaOp", create);
  };
#define FUSEDOPT_REGISTER_XLA(ID, ...) add(Rule::ID, &CreateXla<Rule::ID>);
  FUSEDOPT_FOR_EACH_RULE(FUSEDOPT_REGISTER_XLA)
#undef FUSEDOPT_REGISTER_XLA
  return true;
}();

}  // namespace
}  // namespace tf
}  // namespace fusedopt
