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
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "cc/core/cpu_run.h"
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

// The fusedopt storage type of a TensorFlow element type (same bits).
template <typename T>
struct StorageOf {
  using type = T;
};
template <>
struct StorageOf<Eigen::half> {
  using type = Half;
};
template <>
struct StorageOf<Eigen::bfloat16> {
  using type = BFloat16;
};

// ---- Specs -------------------------------------------------------------------

// An op's rule (its slots, scalars and plans live in cc/core/plan.h) and the
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

template <Backend B, typename T>
absl::Status RunElementwise(OpKernelContext* ctx, const Operands& ops, const Plan& plan,
                            bool decay, int dt, Rule rule, const RuleAttrs& attrs,
                            bool grappler_form) {
  if constexpr (B == Backend::kCpu) {
    const int eb = static_cast<int>(sizeof(T));
    if (rule == Rule::kFtrl && HasTfForm(rule, attrs, plan, dt, grappler_form)) {
      // Note [TF pow]: scratch first, before anything is written.
      tensorflow::Tensor scratch;
      TF_RETURN_IF_ERROR(
          AllocateFtrlPowScratch(ctx, ops, tensorflow::DataTypeToEnum<T>::value, &scratch));
      FtrlTfPow(ctx, ops, plan, attrs, grappler_form, &scratch)();
      return absl::OkStatus();
    }
    RunItemsCpu(PoolOf(ctx), DenseItems(ops, eb), ops, plan, false, rule, dt, eb);
    return absl::OkStatus();
  } else {
#if defined(FUSEDOPT_WITH_CUDA)
    return CudaStatus(RunElementwiseCuda(ops, plan, rule, dt, decay, GpuStream(ctx)),
                      "elementwise update");
#else
    return absl::InternalError("fusedopt was built without CUDA");
#endif
  }
}

// LAMB's norms as Keras' TF ops compute them (Note [TF norms]), when the op's
// `tf_norms` asks for them: float and double CPU variables. The scratch is
// allocated here, before anything is written.
template <typename T>
absl::Status LambNormsHook(OpKernelContext* ctx, const Operands& ops, const Plan& plan, bool decay,
                           bool tf_norms, bool square_form, tensorflow::Tensor* scratch,
                           LambNormsFn* hook) {
  if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
    if (tf_norms) {
      TF_RETURN_IF_ERROR(AllocateLambNormScratch(ctx, ops, tensorflow::DataTypeToEnum<T>::value,
                                                 scratch));
      *hook = LambTfNorms(ctx, ops, plan, decay, square_form, scratch);
    }
  }
  return absl::OkStatus();
}

template <Backend B, typename T>
absl::Status RunLamb(OpKernelContext* ctx, const Operands& ops, const Plan& plan, bool decay,
                     int dt, bool tf_norms, bool square_form) {
  if constexpr (B == Backend::kCpu) {
    const int eb = static_cast<int>(sizeof(T));
    tensorflow::Tensor scratch;
    LambNormsFn norms;
    TF_RETURN_IF_ERROR(
        LambNormsHook<T>(ctx, ops, plan, decay, tf_norms, square_form, &scratch, &norms));
    RunItemsCpu(PoolOf(ctx), DenseItems(ops, eb), ops, plan, true, Rule::kLamb, dt, eb, norms);
    return absl::OkStatus();
  } else {
#if defined(FUSEDOPT_WITH_CUDA)
    void* stream = GpuStream(ctx);
    for (int i = 0; i < ops.n; ++i) {
      const int64_t scratch_bytes = fusedopt_cuda_lamb_scratch_bytes(ops.sizes[i]);
      tensorflow::Tensor scratch;
      TF_RETURN_IF_ERROR(ctx->allocate_temp(tensorflow::DT_INT8,
                                            tensorflow::TensorShape({scratch_bytes}), &scratch));
      TF_RETURN_IF_ERROR(CudaStatus(
          fusedopt_cuda_lamb(dt, decay ? 1 : 0, plan.For(ops.IsRank0(i)).c, ops.transform ? 1 : 0,
                             ops.xforms[i].scale, ops.xforms[i].clip_value, ops.vars[i],
                             ops.slots[i].data(), ops.grads[i], ops.sizes[i],
                             const_cast<char*>(scratch.tensor_data().data()), stream),
          "LAMB update"));
    }
    return absl::OkStatus();
#else
    return absl::InternalError("fusedopt was built without CUDA");
#endif
  }
}

// Reads a call's scalars, step and options, and looks up its variables and
// slot lists (checking the list lengths); shared by the dense and sparse ops.
template <typename Spec>
absl::Status ReadCall(OpKernelContext* ctx, const Spec& spec, bool skip_nonfinite, int n,
                      PlanInput* in, GradOptions* options, VariableSet* vars, int* var0,
                      std::vector<int>* slot_first) {
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
    TF_RETURN_IF_ERROR(ReadCall<Spec>(ctx, spec_, skip_nonfinite_, n, &in, &options, &vars, &var0,
                                      &slot_first));
    Plan plan;
    const std::string plan_error = MakeCallPlan(Spec::kRule, in, /*rank0_plan=*/true, &plan);
    if (!plan_error.empty()) return Invalid(plan_error);

    tensorflow::Tensor* skipped = nullptr;
    TF_RETURN_IF_ERROR(ctx->allocate_output("skipped", tensorflow::TensorShape({}), &skipped));
    skipped->scalar<bool>()() = false;

    TF_RETURN_IF_ERROR(vars.CheckDistinctAndLock());
    for (int i = 0; i < n; ++i) {
      const std::string gname = absl::StrCat("grads[", i, "]");
      TF_RETURN_IF_ERROR(vars.ValidateDtype(var0 + i, dtype));
      TF_RETURN_IF_ERROR(vars.ValidateShape(var0 + i, grads[i].shape(), gname));
      for (int first : slot_first) {
        TF_RETURN_IF_ERROR(vars.ValidateDtype(first + i, dtype));
        TF_RETURN_IF_ERROR(vars.ValidateShape(first + i, grads[i].shape(), gname));
      }
    }

    Operands ops;
    ops.n = n;
    ops.num_slots = static_cast<int>(slot_first.size());
    for (int i = 0; i < n; ++i) {
      ops.grads.push_back(grads[i].tensor_data().data());
      ops.sizes.push_back(grads[i].NumElements());
      ops.rank0.push_back(grads[i].dims() == 0 ? 1 : 0);
    }
    const int dt = DTypeIndex(dtype);

    // Pass 0, only when an option needs it: norms and the non-finite check,
    // before anything is written (a skipped step writes nothing at all).
    // Note [skip after transform] (cc/core/cpu_run.h) judges a skip.
    if constexpr (B == Backend::kCpu) {
      if (PrepareGradOptionsCpu(PoolOf(ctx), options, dt, static_cast<int>(sizeof(T)), &ops)) {
        skipped->scalar<bool>()() = true;
        return absl::OkStatus();
      }
    } else {
      if (options.NeedsStats()) {
        return absl::UnimplementedError(
            "clip_norm, global_clip_norm and skip_nonfinite are not implemented on GPU yet; "
            "clip in TensorFlow before the call, or run the update on CPU");
      }
      ops.xforms = MakeXforms(options, std::vector<double>(n, 0.0));
      ops.transform = options.Transforms();
    }

    if constexpr (B == Backend::kCpu) {
      TF_RETURN_IF_ERROR(vars.PrepareForWrite(&CpuCopy));
    } else {
#if defined(FUSEDOPT_WITH_CUDA)
      TF_RETURN_IF_ERROR(CheckGpuUsable());
      TF_RETURN_IF_ERROR(vars.PrepareForWrite(&GpuCopy));
#endif
    }
    for (int i = 0; i < n; ++i) {
      ops.vars.push_back(vars.data(var0 + i));
      std::array<void*, kMaxSlots> s{};
      for (int k = 0; k < ops.num_slots; ++k) s[k] = vars.data(slot_first[k] + i);
      ops.slots.push_back(s);
    }
    const bool decay = plan.Decays();
    if constexpr (Spec::kTwoPass) {
      return RunLamb<B, T>(ctx, ops, plan, decay, dt, spec_.attrs.tf_norms, grappler_form_);
    } else {
      return RunElementwise<B, T>(ctx, ops, plan, decay, dt, Spec::kRule,
                                  spec_.attrs, grappler_form_);
    }
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


template <typename T, typename Index>
absl::Status DedupRows(OpKernelContext* ctx, int i, const tensorflow::Tensor& values,
                       const tensorflow::Tensor& indices, int64_t rows, int64_t row_size,
                       const std::string& var_label, std::vector<int64_t>* unique_rows,
                       tensorflow::Tensor* compact) {
  using S = typename StorageOf<T>::type;
  const auto idx = indices.flat<Index>();
  std::vector<int64_t> order, segment_end;
  const std::string err = SortRows(idx.data(), idx.size(), rows, i, var_label, &order,
                                   unique_rows, &segment_end);
  if (!err.empty()) return Invalid(err);
  const int64_t u = static_cast<int64_t>(unique_rows->size());
  TF_RETURN_IF_ERROR(ctx->allocate_temp(tensorflow::DataTypeToEnum<T>::value,
                                        tensorflow::TensorShape({u * row_size}), compact));
  SumRows(reinterpret_cast<const S*>(values.tensor_data().data()), row_size, order, segment_end,
          reinterpret_cast<S*>(const_cast<char*>(compact->tensor_data().data())));
  return absl::OkStatus();
}

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
    using S = typename StorageOf<T>::type;
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
    TF_RETURN_IF_ERROR(ReadCall<Spec>(ctx, spec_, skip_nonfinite_, n, &in, &options, &vars, &var0,
                                      &slot_first));
    Plan plan;
    // Sparse variables have rank >= 1: no rank-0 plan.
    const std::string plan_error = MakeCallPlan(Spec::kRule, in, /*rank0_plan=*/false, &plan);
    if (!plan_error.empty()) return Invalid(plan_error);
    plan.rsqrt_stride = 0;  // Keras' sparse updates are other ops: no rsqrt form
    tensorflow::Tensor* skipped = nullptr;
    TF_RETURN_IF_ERROR(ctx->allocate_output("skipped", tensorflow::TensorShape({}), &skipped));
    skipped->scalar<bool>()() = false;

    TF_RETURN_IF_ERROR(vars.CheckDistinctAndLock());
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
      for (int first : slot_first) {
        TF_RETURN_IF_ERROR(vars.ValidateDtype(first + i, dtype));
        TF_RETURN_IF_ERROR(vars.ValidateShape(first + i, shape, vars.label(var0 + i)));
      }
      rows[i] = shape.dim_size(0);
      row_size[i] = rows[i] == 0 ? 0 : shape.num_elements() / rows[i];
    }

    // Index validation and duplicate summing: still nothing written.
    std::vector<std::vector<int64_t>> unique(n);
    std::vector<tensorflow::Tensor> compact(n);
    Operands ops;
    ops.n = n;
    ops.num_slots = static_cast<int>(slot_first.size());
    int64_t max_row = 0;
    for (int i = 0; i < n; ++i) {
      TF_RETURN_IF_ERROR(DedupRows<T, Index>(ctx, i, values[i], indices[i], rows[i], row_size[i],
                                             vars.label(var0 + i), &unique[i], &compact[i]));
      ops.grads.push_back(compact[i].tensor_data().data());
      ops.sizes.push_back(compact[i].NumElements());
      max_row = std::max(max_row, row_size[i]);
    }
    const int dt = DTypeIndex(dtype);
    if (PrepareGradOptionsCpu(PoolOf(ctx), options, dt, static_cast<int>(sizeof(S)), &ops)) {
      skipped->scalar<bool>()() = true;
      return absl::OkStatus();
    }
    TF_RETURN_IF_ERROR(vars.PrepareForSparseWrite(&CpuCopy));  // Note [sparse access]

    // A shared zero gradient for exact mode's gradient-less rows.
    tensorflow::Tensor zeros;
    const int64_t zero_elements = SparseZeroElements(max_row);
    if (exact_) {
      TF_RETURN_IF_ERROR(ctx->allocate_temp(dtype, tensorflow::TensorShape({zero_elements}),
                                            &zeros));
      std::memset(const_cast<char*>(zeros.tensor_data().data()), 0, zeros.tensor_data().size());
    }
    std::vector<Item> items;
    for (int i = 0; i < n; ++i) {
      PlanSparseItems(i, exact_, rows[i], row_size[i], unique[i], compact[i].tensor_data().data(),
                exact_ ? zeros.tensor_data().data() : nullptr, zero_elements,
                static_cast<int>(sizeof(S)), &items);
    }
    for (int i = 0; i < n; ++i) {
      ops.vars.push_back(vars.data(var0 + i));
      std::array<void*, kMaxSlots> base{};
      for (int k = 0; k < ops.num_slots; ++k) base[k] = vars.data(slot_first[k] + i);
      ops.slots.push_back(base);
    }
    tensorflow::Tensor scratch;
    LambNormsFn norms;
    if constexpr (Spec::kTwoPass) {
      ops.sizes.clear();  // the hook reads whole tensors
      for (int i = 0; i < n; ++i) ops.sizes.push_back(rows[i] * row_size[i]);
      TF_RETURN_IF_ERROR(LambNormsHook<T>(ctx, ops, plan, plan.Decays(), spec_.attrs.tf_norms,
                                          grappler_form_, &scratch, &norms));
    }
    RunItemsCpu(PoolOf(ctx), items, ops, plan, Spec::kTwoPass, Spec::kRule, dt,
                static_cast<int>(sizeof(S)), norms);
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
