// Kernels of the fused apply ops (CPU, and GPU when built with CUDA).
//
// One generic kernel, FusedApplyOp, does what every op shares (Note
// [variable semantics]): look up variables and slots, lock, validate, copy on
// write, then run the rule over a flat chunk list (CPU) or launch it per
// tensor (GPU). Each rule of the registry (cc/rules/registry.h) is a Spec:
// its slot and scalar inputs and the attributes that change its form; its
// plan (variant and coefficients, Note [coefficients]) is MakeCallPlan's.
#define EIGEN_USE_THREADS

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <memory>
#include <new>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "cc/core/cpu_run.h"
#include "cc/core/driver.h"
#include "cc/core/grad_options.h"
#include "cc/core/plan.h"
#include "cc/cpu/chunking.h"
#include "cc/rules/update_rules.h"
#include "cc/tf/fused_op_util.h"
#include "cc/tf/tf_numerics.h"
#include "cc/tf/variable_access.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/register_types.h"
#if defined(FUSEDOPT_WITH_CUDA)
#include "cc/core/cuda_run.h"
#include "cc/cuda/launchers.h"
#endif

namespace fusedopt {
namespace tf {
namespace {

using tensorflow::OpInputList;
using tensorflow::OpKernel;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;

absl::Status Invalid(const std::string& msg) { return absl::InvalidArgumentError(msg); }

// ---- Specs -------------------------------------------------------------------

// An op's rule (its slots and scalars: cc/rules/registry.h) and the
// attributes that change its form.
template <Rule R>
struct Spec {
  static constexpr Rule kRule = R;
  static constexpr bool kTwoPass = InfoOf(R).two_pass;
  RuleAttrs attrs;
  explicit Spec(OpKernelConstruction* c) { OP_REQUIRES_OK(c, ReadRuleAttrs(c, R, &attrs)); }
  static const RuleInfo& Info() { return InfoOf(R); }
};


absl::Status ReadGradOptions(OpKernelContext* ctx, bool skip_nonfinite, GradOptions* o) {
  TF_RETURN_IF_ERROR(ReadScalar(ctx, "grad_scale", &o->grad_scale));
  TF_RETURN_IF_ERROR(ReadScalar(ctx, "clip_value", &o->clip_value));
  TF_RETURN_IF_ERROR(ReadScalar(ctx, "clip_norm", &o->clip_norm));
  TF_RETURN_IF_ERROR(ReadScalar(ctx, "global_clip_norm", &o->global_clip_norm));
  o->skip_nonfinite = skip_nonfinite;
  const std::string err = ValidateGradOptions(*o);
  return err.empty() ? absl::OkStatus() : Invalid(err);
}

// A status of the call pipeline (cc/core/driver.h) as TensorFlow's.
absl::Status ToTf(const CallStatus& s) {
  switch (s.code) {
    case CallStatus::kOk:
      return absl::OkStatus();
    case CallStatus::kInvalidArgument:
      return absl::InvalidArgumentError(s.message);
    case CallStatus::kUnavailable:
      return absl::FailedPreconditionError(s.message);
    case CallStatus::kOutOfMemory:
      return absl::ResourceExhaustedError(s.message);
    default:
      return absl::InternalError("fusedopt: " + s.message);
  }
}

// Keras' bits where TF's own kernels give them (Note [TF norms], Note [TF
// pow] in tf_numerics.h): LAMB's sums of squares with `tf_norms`, Ftrl's run
// with `tf_pow`, for float and double CPU variables. Their scratch is
// allocated when the pipeline asks, before anything is written (a failed
// allocation: std::bad_alloc, reported as out of memory).
template <typename T>
TfFormsMaker TfFormsOf(OpKernelContext* ctx, Rule rule, const RuleAttrs& attrs,
                       bool grappler_form, int dt) {
  return [=](const Operands& ops, const Plan& plan) {
    TfForms forms;
    if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
      if (!HasTfForm(rule, attrs, plan, dt, grappler_form)) return forms;
      auto scratch = std::make_shared<tensorflow::Tensor>();
      const tensorflow::DataType dtype = tensorflow::DataTypeToEnum<T>::value;
      if (InfoOf(rule).two_pass) {
        if (!AllocateLambNormScratch(ctx, ops, dtype, scratch.get()).ok()) throw std::bad_alloc();
        LambNormsFn norms =
            LambTfNorms(ctx, ops, plan, plan.Decays(), grappler_form, scratch.get());
        forms.lamb_norms = [norms, scratch](std::vector<double>* w, std::vector<double>* u) {
          norms(w, u);
        };
      } else {
        if (!AllocateFtrlPowScratch(ctx, ops, dtype, scratch.get()).ok()) throw std::bad_alloc();
        std::function<void()> run = FtrlTfPow(ctx, ops, plan, attrs, grappler_form, scratch.get());
        forms.run = [run, scratch] { run(); };
      }
    }
    return forms;
  };
}

// The pipeline's prepare_for_write for the TF kernels: TF's copy-on-write of
// the looked-up, locked, validated variables (dense: Note [variable
// semantics]; sparse: Note [sparse access]), then their buffers into the
// operands. Its error lands in *status (the pipeline stops at kInternal).
// absmax_first: the first absmax variable (int8 state), else -1.
std::function<CallStatus(Operands*)> WriteHook(VariableSet* vars, int var0,
                                               const std::vector<int>& slot_first, int n,
                                               bool sparse, DeviceCopyFn copy,
                                               absl::Status* status, int absmax_first = -1) {
  return [=, &slot_first](Operands* o) -> CallStatus {
    *status = sparse ? vars->PrepareForSparseWrite(copy) : vars->PrepareForWrite(copy);
    if (!status->ok()) return CallStatus{CallStatus::kInternal, "copy-on-write"};
    for (int i = 0; i < n; ++i) {
      o->vars.push_back(vars->data(var0 + i));
      std::array<void*, kMaxSlots> s{};
      for (int k = 0; k < o->num_slots; ++k) s[k] = vars->data(slot_first[k] + i);
      o->slots.push_back(s);
      if (absmax_first >= 0) {
        std::array<float*, kMaxSlots> a{};
        for (int k = 0; k < o->num_slots; ++k) {
          a[k] = static_cast<float*>(vars->data(absmax_first + k * n + i));
        }
        o->absmax.push_back(a);
      }
    }
    return CallStatus{};
  };
}

// The slots' dtype in a state format, for variables of `dtype`.
tensorflow::DataType SlotDtype(StateFormat f, tensorflow::DataType dtype) {
  switch (f) {
    case StateFormat::kBFloat16:
      return tensorflow::DT_BFLOAT16;
    case StateFormat::kInt8:
      return tensorflow::DT_UINT8;
    default:
      return dtype;
  }
}

// Checks the slots of variable i (dtype by state format, the variable's
// shape) and, for int8 state, its absmax variables (float32, one per
// quantization block); sets its layout.
absl::Status ValidateSlots(const VariableSet& vars, int var0, const std::vector<int>& slot_first,
                           int absmax_first, int n, int i, tensorflow::DataType dtype,
                           StateFormat format, const tensorflow::TensorShape& shape,
                           const std::string& what, std::vector<QuantLayout>* layouts) {
  const tensorflow::DataType slot_dtype = SlotDtype(format, dtype);
  for (int first : slot_first) {
    TF_RETURN_IF_ERROR(vars.ValidateDtype(first + i, slot_dtype));
    TF_RETURN_IF_ERROR(vars.ValidateShape(first + i, shape, what));
  }
  if (format != StateFormat::kInt8) return absl::OkStatus();
  const QuantLayout l = QuantLayoutOf(shape.dims(), shape.dims() > 0 ? shape.dim_size(0) : 1,
                                      shape.num_elements());
  layouts->push_back(l);
  for (size_t k = 0; k < slot_first.size(); ++k) {
    const int a = absmax_first + static_cast<int>(k) * n + i;
    TF_RETURN_IF_ERROR(vars.ValidateDtype(a, tensorflow::DT_FLOAT));
    TF_RETURN_IF_ERROR(vars.ValidateShape(
        a, tensorflow::TensorShape({l.NumBlocks()}),
        absl::StrCat("the int8 blocks of ", vars.label(slot_first[k] + i), " (", l.rows,
                     " rows of ", l.BlocksPerRow(), " blocks of at most ", kQuantBlock,
                     " elements)")));
  }
  return absl::OkStatus();
}

// Reads a call's scalars, step and options, and looks up its variables and
// slot lists (checking the list lengths); shared by the dense and sparse ops.
template <typename Spec>
absl::Status ReadCall(OpKernelContext* ctx, const Spec& spec, bool skip_nonfinite, int n,
                      PlanInput* in, GradOptions* options, VariableSet* vars, int* var0,
                      std::vector<int>* slot_first, int* absmax_first) {
  *absmax_first = -1;
  const RuleInfo& info = Spec::Info();
  in->attrs = spec.attrs;
  in->scalars.resize(info.num_scalars);
  for (int k = 0; k < info.num_scalars; ++k) {
    TF_RETURN_IF_ERROR(ReadScalar(ctx, info.scalars[k], &in->scalars[k]));
  }
  if (info.has_step) TF_RETURN_IF_ERROR(ReadStep(ctx, &in->step));
  TF_RETURN_IF_ERROR(ReadGradOptions(ctx, skip_nonfinite, options));
  TF_RETURN_IF_ERROR(vars->Lookup("vars", var0));
  for (int j = 0; j < info.num_slots; ++j) {
    const SlotInfo& slot = info.slots[j];
    int first = 0;
    TF_RETURN_IF_ERROR(vars->Lookup(slot.name, &first));
    const int count = vars->size() - first;
    if (count == 0 && slot.optional) {
      in->slot_given.push_back(false);
      continue;
    }
    if (count != n) {
      return Invalid(absl::StrCat(slot.name, " has ", count, " entries but there are ", n,
                                  " variables", slot.optional ? " (give none or one each)" : ""));
    }
    in->slot_given.push_back(true);
    slot_first->push_back(first);
  }
  if (NumStateVariants(Spec::kRule) > 0) {
    int64_t seed = 0;
    TF_RETURN_IF_ERROR(ReadInt64(ctx, "rounding_seed", &seed));
    in->rounding_seed = static_cast<uint64_t>(seed);
    int first = 0;
    TF_RETURN_IF_ERROR(vars->Lookup("absmax", &first));
    const int q = vars->size() - first;
    const bool int8 = spec.attrs.state_format == StateFormat::kInt8;
    const int want = int8 ? n * static_cast<int>(slot_first->size()) : 0;
    if (q != want) {
      return Invalid(
          int8 ? absl::StrCat("absmax has ", q, " entries; int8 state takes one per slot "
                              "variable, slot list by slot list: ", slot_first->size(),
                              " slot lists x ", n, " variables = ", want)
               : absl::StrCat("absmax has ", q, " entries; only state_format='int8' takes any"));
    }
    if (int8) *absmax_first = first;
  }
  return absl::OkStatus();
}

// ---- The generic kernel ------------------------------------------------------

template <Backend B, typename T, typename Spec>
class FusedApplyOp : public OpKernel {
 public:
  explicit FusedApplyOp(OpKernelConstruction* c) : OpKernel(c), spec_(c) {
    OP_REQUIRES_OK(c, c->GetAttr("skip_nonfinite", &skip_nonfinite_));
    OP_REQUIRES_OK(c, c->GetAttr("grappler_form", &grappler_form_));
    OP_REQUIRES_OK(c, c->GetAttr("grappler_constant_folding", &constant_folding_));
  }

  void Compute(OpKernelContext* ctx) override { OP_REQUIRES_OK(ctx, DoCompute(ctx)); }

 private:
  absl::Status DoCompute(OpKernelContext* ctx) {
    const tensorflow::DataType dtype = tensorflow::DataTypeToEnum<T>::value;
    OpInputList grads;
    TF_RETURN_IF_ERROR(ctx->input_list("grads", &grads));
    const int n = grads.size();

    PlanInput in;
    in.f64 = std::is_same_v<T, double>;
    in.grappler_form = grappler_form_;
    in.constant_folding = constant_folding_;
    GradOptions options;
    VariableSet vars(ctx);
    int var0 = 0;
    std::vector<int> slot_first;  // first index in `vars` of each given slot list
    int absmax_first = -1;
    TF_RETURN_IF_ERROR(ReadCall<Spec>(ctx, spec_, skip_nonfinite_, n, &in, &options, &vars, &var0,
                                      &slot_first, &absmax_first));
    Plan plan;
    const std::string plan_error =
        MakeCallPlan(Spec::kRule, in, /*rank0_plan=*/true, &plan, DTypeIndex(dtype));
    if (!plan_error.empty()) return Invalid(plan_error);

    tensorflow::Tensor* skipped = nullptr;
    TF_RETURN_IF_ERROR(ctx->allocate_output("skipped", tensorflow::TensorShape({}), &skipped));
    skipped->scalar<bool>()() = false;

    TF_RETURN_IF_ERROR(vars.CheckDistinctAndLock());
    Operands ops;
    for (int i = 0; i < n; ++i) {
      const std::string gname = absl::StrCat("grads[", i, "]");
      TF_RETURN_IF_ERROR(vars.ValidateDtype(var0 + i, dtype));
      TF_RETURN_IF_ERROR(vars.ValidateShape(var0 + i, grads[i].shape(), gname));
      TF_RETURN_IF_ERROR(ValidateSlots(vars, var0, slot_first, absmax_first, n, i, dtype,
                                       in.attrs.state_format, grads[i].shape(), gname,
                                       &ops.layouts));
    }

    ops.n = n;
    ops.num_slots = static_cast<int>(slot_first.size());
    for (int i = 0; i < n; ++i) {
      ops.grads.push_back(grads[i].tensor_data().data());
      ops.sizes.push_back(grads[i].NumElements());
      ops.rank0.push_back(grads[i].dims() == 0 ? 1 : 0);
    }
    const int dt = DTypeIndex(dtype);

    // The rest is the call pipeline's (Note [call pipeline]): statistics,
    // transform and skip, then the copy-on-write below, then the update.
    CallDesc d;
    d.rule = Spec::kRule;
    d.dt = dt;
    d.in = in;
    d.options = options;
    CallHooks hooks;
    absl::Status write_status;
    auto prepare = [&](DeviceCopyFn copy) {
      return WriteHook(&vars, var0, slot_first, n, /*sparse=*/false, copy, &write_status,
                       absmax_first);
    };
    if constexpr (B == Backend::kCpu) {
      hooks.pfor = PoolOf(ctx);
      hooks.tf_forms = TfFormsOf<T>(ctx, Spec::kRule, spec_.attrs, grappler_form_, dt);
      hooks.prepare_for_write = prepare(&CpuCopy);
    } else {
#if defined(FUSEDOPT_WITH_CUDA)
      TF_RETURN_IF_ERROR(CheckGpuUsable());
      d.device = CallDevice::kCuda;
      d.stream = GpuStream(ctx);
      hooks.prepare_for_write = prepare(&GpuCopy);
#else
      return absl::InternalError("fusedopt was built without CUDA");
#endif
    }
    bool skip = false;
    const CallStatus st = RunDenseCall(d, plan, &ops, hooks, &skip);
    TF_RETURN_IF_ERROR(write_status);
    TF_RETURN_IF_ERROR(ToTf(st));
    skipped->scalar<bool>()() = skip;
    return absl::OkStatus();
  }

  Spec spec_;
  bool skip_nonfinite_ = false;
  bool grappler_form_ = false;
  bool constant_folding_ = false;
};

// ---- Sparse (IndexedSlices) updates ----------------------------------------------
//
// Note [sparse updates]: gradient rows arrive as (values [K, ...], indices [K])
// for a variable of rank >= 1. Before anything is written, every index is
// checked against the variable's row count (the first bad one is named), and
// duplicates are summed, deterministically, into a compact buffer of the
// unique rows in row order (each row's duplicates added in position order).
// Then:
//  * exact: every row of the variable is updated, rows without a gradient with
//    a zero gradient (so their slots decay as in Keras' densified update), in
//    one pass; no dense gradient is materialized (runs of gradient-less rows
//    read one shared zero buffer);
//  * lazy: only the unique rows are updated (TF Addons' LazyAdam semantics),
//    weight decay included; cost proportional to the rows touched.
// The gradient options act on the summed rows (norms equal the densified
// gradient's). LAMB has only the exact form: its trust ratio needs the whole
// variable.


template <typename T, typename Spec, typename Index>
class SparseApplyOp : public OpKernel {
 public:
  explicit SparseApplyOp(OpKernelConstruction* c) : OpKernel(c), spec_(c) {
    OP_REQUIRES_OK(c, c->GetAttr("skip_nonfinite", &skip_nonfinite_));
    OP_REQUIRES_OK(c, c->GetAttr("grappler_form", &grappler_form_));
    OP_REQUIRES_OK(c, c->GetAttr("grappler_constant_folding", &constant_folding_));
    std::string mode;
    OP_REQUIRES_OK(c, c->GetAttr("mode", &mode));
    exact_ = mode == "exact";
    constexpr bool kIsLamb = Spec::kTwoPass;
    OP_REQUIRES(c, exact_ || !kIsLamb,
                Invalid("LAMB has no lazy sparse mode (its trust ratio needs the whole "
                        "variable); use mode='exact'"));
  }

  void Compute(OpKernelContext* ctx) override { OP_REQUIRES_OK(ctx, DoCompute(ctx)); }

 private:
  absl::Status DoCompute(OpKernelContext* ctx) {
    const tensorflow::DataType dtype = tensorflow::DataTypeToEnum<T>::value;
    OpInputList values, indices;
    TF_RETURN_IF_ERROR(ctx->input_list("grad_values", &values));
    TF_RETURN_IF_ERROR(ctx->input_list("grad_indices", &indices));
    const int n = values.size();

    PlanInput in;
    in.f64 = std::is_same_v<T, double>;
    in.grappler_form = grappler_form_;
    in.constant_folding = constant_folding_;
    in.sparse = true;  // Note [tf_keras sparse forms] (cc/core/plan.cc)
    GradOptions options;
    VariableSet vars(ctx);
    int var0 = 0;
    std::vector<int> slot_first;
    int absmax_first = -1;
    TF_RETURN_IF_ERROR(ReadCall<Spec>(ctx, spec_, skip_nonfinite_, n, &in, &options, &vars, &var0,
                                      &slot_first, &absmax_first));
    Plan plan;
    // Sparse variables have rank >= 1: no rank-0 plan.
    const std::string plan_error =
        MakeCallPlan(Spec::kRule, in, /*rank0_plan=*/false, &plan, DTypeIndex(dtype));
    if (!plan_error.empty()) return Invalid(plan_error);
    plan.rsqrt_forms = false;  // Keras' sparse updates are other ops: no rsqrt form
    tensorflow::Tensor* skipped = nullptr;
    TF_RETURN_IF_ERROR(ctx->allocate_output("skipped", tensorflow::TensorShape({}), &skipped));
    skipped->scalar<bool>()() = false;

    TF_RETURN_IF_ERROR(vars.CheckDistinctAndLock());
    Operands ops;
    std::vector<int64_t> rows(n), row_size(n);
    for (int i = 0; i < n; ++i) {
      TF_RETURN_IF_ERROR(vars.ValidateDtype(var0 + i, dtype));
      const tensorflow::TensorShape& shape = vars.tensor(var0 + i)->shape();
      if (shape.dims() < 1) {
        return Invalid(absl::StrCat(vars.label(var0 + i),
                                    " is a scalar; sparse updates need rank >= 1"));
      }
      const tensorflow::Tensor& iv = indices[i];
      if (iv.dims() != 1) {
        return Invalid(absl::StrCat("grad_indices[", i, "] must be a vector, got shape ",
                                    iv.shape().DebugString()));
      }
      tensorflow::TensorShape want = shape;
      want.set_dim(0, iv.dim_size(0));
      if (values[i].shape() != want) {
        return Invalid(absl::StrCat("grad_values[", i, "] has shape ",
                                    values[i].shape().DebugString(), " but ", vars.label(var0 + i),
                                    " of shape ", shape.DebugString(), " with ", iv.dim_size(0),
                                    " indices needs ", want.DebugString()));
      }
      if (in.attrs.state_format == StateFormat::kInt8 && shape.dims() < 2) {
        return Invalid(absl::StrCat(
            vars.label(var0 + i), " has rank 1: int8 state's blocks span a rank-1 variable's "
            "elements, so its sparse updates need rank >= 2 (use a dense update)"));
      }
      TF_RETURN_IF_ERROR(ValidateSlots(vars, var0, slot_first, absmax_first, n, i, dtype,
                                       in.attrs.state_format, shape, vars.label(var0 + i),
                                       &ops.layouts));
      rows[i] = shape.dim_size(0);
      row_size[i] = rows[i] == 0 ? 0 : shape.num_elements() / rows[i];
    }

    // The rest is the call pipeline's (Note [call pipeline]): index checks
    // and duplicate sums, statistics, transform and skip, then the
    // copy-on-write below (Note [sparse access]), then the update.
    ops.n = n;
    ops.num_slots = static_cast<int>(slot_first.size());
    SparseDesc sp;
    sp.exact = exact_;
    sp.index32 = std::is_same_v<Index, int32_t>;
    for (int i = 0; i < n; ++i) {
      ops.grads.push_back(values[i].tensor_data().data());
      sp.indices.push_back(indices[i].tensor_data().data());
      sp.counts.push_back(indices[i].NumElements());
      sp.rows.push_back(rows[i]);
      sp.row_sizes.push_back(row_size[i]);
      sp.labels.push_back(vars.label(var0 + i));
    }
    CallDesc d;
    d.rule = Spec::kRule;
    d.dt = DTypeIndex(dtype);
    d.in = in;
    d.options = options;
    CallHooks hooks;
    hooks.pfor = PoolOf(ctx);
    if constexpr (Spec::kTwoPass) {
      hooks.tf_forms = TfFormsOf<T>(ctx, Spec::kRule, spec_.attrs, grappler_form_, d.dt);
    }
    absl::Status write_status;
    hooks.prepare_for_write = WriteHook(&vars, var0, slot_first, n, /*sparse=*/true, &CpuCopy,
                                        &write_status, absmax_first);
    bool skip = false;
    const CallStatus st = RunSparseCall(d, plan, &ops, sp, hooks, &skip);
    TF_RETURN_IF_ERROR(write_status);
    TF_RETURN_IF_ERROR(ToTf(st));
    skipped->scalar<bool>()() = skip;
    return absl::OkStatus();
  }

  Spec spec_;
  bool skip_nonfinite_ = false;
  bool grappler_form_ = false;
  bool constant_folding_ = false;
  bool exact_ = true;
};

// ---- Registration --------------------------------------------------------------
//
// Every rule's kernels, from the registry (Note [rule registry]): for each rule
// Fusedopt>Apply<Op> on the CPU and the GPU and Fusedopt>SparseApply<Op> on the
// CPU, for every element type (and index type). What REGISTER_KERNEL_BUILDER
// does, in a loop.

template <typename Kernel>
tensorflow::OpKernel* Create(OpKernelConstruction* c) {
  return new Kernel(c);
}

void Register(tensorflow::KernelDefBuilder& def, const char* class_name,
              tensorflow::OpKernel* (*create)(OpKernelConstruction*)) {
  tensorflow::kernel_factory::OpKernelRegistrar(def.Build(), class_name, create);
}

template <Rule R, typename T>
void RegisterRuleType() {
  const RuleInfo& info = InfoOf(R);
  const std::string dense = std::string("Fusedopt>Apply") + info.op;
  const std::string sparse = std::string("Fusedopt>SparseApply") + info.op;
  {
    tensorflow::KernelDefBuilder def(dense.c_str());
    def.Device(tensorflow::DEVICE_CPU).TypeConstraint<T>("T");
    Register(def, "FusedApplyOp", &Create<FusedApplyOp<Backend::kCpu, T, Spec<R>>>);
  }
  {
    tensorflow::KernelDefBuilder def(sparse.c_str());
    def.Device(tensorflow::DEVICE_CPU).TypeConstraint<T>("T");
    def.TypeConstraint<int32_t>("Tindices");
    Register(def, "SparseApplyOp", &Create<SparseApplyOp<T, Spec<R>, int32_t>>);
  }
  {
    tensorflow::KernelDefBuilder def(sparse.c_str());
    def.Device(tensorflow::DEVICE_CPU).TypeConstraint<T>("T");
    def.TypeConstraint<int64_t>("Tindices");
    Register(def, "SparseApplyOp", &Create<SparseApplyOp<T, Spec<R>, int64_t>>);
  }
#if defined(FUSEDOPT_WITH_CUDA)
  // Note [GPU hyperparameters]: for now the scalar hyperparameters (and the
  // step) are host-memory inputs, turned into coefficients on the host and
  // passed to the launchers by value.
  {
    tensorflow::KernelDefBuilder def(dense.c_str());
    def.Device(tensorflow::DEVICE_GPU).TypeConstraint<T>("T");
    for (const char* name : {"grad_scale", "clip_value", "clip_norm", "global_clip_norm", "skipped"}) {
      def.HostMemory(name);
    }
    for (int k = 0; k < info.num_scalars; ++k) def.HostMemory(info.scalars[k]);
    if (info.has_step) def.HostMemory("step");
    if (NumStateVariants(R) > 0) def.HostMemory("rounding_seed");
    Register(def, "FusedApplyOp", &Create<FusedApplyOp<Backend::kGpu, T, Spec<R>>>);
  }
#endif
}

template <Rule R>
void RegisterRule() {
  RegisterRuleType<R, Eigen::half>();
  RegisterRuleType<R, Eigen::bfloat16>();
  RegisterRuleType<R, float>();
  RegisterRuleType<R, double>();
}

[[maybe_unused]] const bool kRegistered = [] {
#define FUSEDOPT_REGISTER_RULE(ID, ...) RegisterRule<Rule::ID>();
  FUSEDOPT_FOR_EACH_RULE(FUSEDOPT_REGISTER_RULE)
#undef FUSEDOPT_REGISTER_RULE
  return true;
}();

}  // namespace
}  // namespace tf
}  // namespace fusedopt
