// Fusedopt>ApplySGD kernels (CPU, and GPU when built with CUDA).
#define EIGEN_USE_THREADS

#include <vector>

#include "cc/cpu/chunking.h"
#include "cc/cpu/kernels.h"
#include "cc/rules/update_rules.h"
#include "absl/strings/str_cat.h"
#include "cc/tf/fused_op_util.h"
#include "cc/tf/variable_access.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/register_types.h"
#if defined(FUSEDOPT_WITH_CUDA)
#include "cc/cuda/launchers.h"
#endif

namespace fusedopt {
namespace tf {
namespace {

using tensorflow::OpInputList;
using tensorflow::OpKernel;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
namespace errors = tensorflow::errors;

template <Backend B, typename T>
class ApplySgdOp : public OpKernel {
 public:
  explicit ApplySgdOp(OpKernelConstruction* c) : OpKernel(c) {
    OP_REQUIRES_OK(c, c->GetAttr("nesterov", &nesterov_));
  }

  void Compute(OpKernelContext* ctx) override {
    const tensorflow::DataType dtype = tensorflow::DataTypeToEnum<T>::value;
    OpInputList grads;
    OP_REQUIRES_OK(ctx, ctx->input_list("grads", &grads));
    const int n = grads.size();

    SgdScalars s{};
    double weight_decay = 0;
    OP_REQUIRES_OK(ctx, ReadScalar(ctx, "lr", &s.lr));
    OP_REQUIRES_OK(ctx, ReadScalar(ctx, "momentum", &s.momentum));
    OP_REQUIRES_OK(ctx, ReadScalar(ctx, "weight_decay", &weight_decay));
    s.decay = weight_decay * s.lr;

    VariableSet vars(ctx);
    int var0 = 0, mom0 = 0;
    OP_REQUIRES_OK(ctx, vars.Lookup("vars", &var0));
    OP_REQUIRES_OK(ctx, vars.Lookup("momenta", &mom0));
    const int num_moms = vars.size() - n;
    OP_REQUIRES(ctx, num_moms == 0 || num_moms == n,
                absl::InvalidArgumentError(absl::StrCat("momenta must be empty (plain SGD) or list one slot per "
                                        "variable: got ",
                                        num_moms, " momenta for ", n, " variables")));
    OP_REQUIRES(ctx, !(nesterov_ && num_moms == 0),
                absl::InvalidArgumentError(absl::StrCat("nesterov=True needs momentum slots (momenta is empty)")));
    const bool has_mom = num_moms > 0;

    vars.Lock();
    for (int i = 0; i < n; ++i) {
      const std::string gname = "grads[" + std::to_string(i) + "]";
      OP_REQUIRES_OK(ctx, vars.ValidateDtype(var0 + i, dtype));
      OP_REQUIRES_OK(ctx, vars.ValidateShape(var0 + i, grads[i].shape(), gname));
      if (has_mom) {
        OP_REQUIRES_OK(ctx, vars.ValidateDtype(mom0 + i, dtype));
        OP_REQUIRES_OK(ctx, vars.ValidateShape(mom0 + i, grads[i].shape(), gname));
      }
    }
    OP_REQUIRES_OK(ctx, PrepareAndRun(ctx, vars, grads, var0, has_mom ? mom0 : -1, s));
  }

 private:
  absl::Status PrepareAndRun(OpKernelContext* ctx, VariableSet& vars, const OpInputList& grads,
                             int var0, int mom0, const SgdScalars& s) {
    const int n = grads.size();
    const SgdVariant variant = mom0 < 0 ? SgdVariant::kPlain
                               : nesterov_ ? SgdVariant::kNesterov
                                           : SgdVariant::kMomentum;
    const int decay = s.decay != 0.0 ? 1 : 0;
    const int dt = DTypeIndex(tensorflow::DataTypeToEnum<T>::value);
    auto ptr = [&](int i) -> void* {
      return i < 0 ? nullptr : const_cast<char*>(vars.tensor(i)->tensor_data().data());
    };
    auto gptr = [&](int i) -> const void* { return grads[i].tensor_data().data(); };

    if constexpr (B == Backend::kCpu) {
      TF_RETURN_IF_ERROR(vars.PrepareForWrite(&CpuCopy));
      const cpu::SgdSpanFn fn = cpu::SelectedKernels().sgd[dt][static_cast<int>(variant)][decay];
      std::vector<int64_t> sizes(n);
      for (int i = 0; i < n; ++i) sizes[i] = grads[i].NumElements();
      const std::vector<cpu::Chunk> chunks = cpu::PlanChunks(sizes);
      const int bytes = static_cast<int>(sizeof(T)) * (mom0 < 0 ? 3 : 5);
      RunChunks(ctx, chunks, bytes, [&](const cpu::Chunk& c) {
        fn(s, ptr(var0 + c.tensor), mom0 < 0 ? nullptr : ptr(mom0 + c.tensor), gptr(c.tensor),
           c.begin, c.end);
      });
      return absl::OkStatus();
    } else {
#if defined(FUSEDOPT_WITH_CUDA)
      TF_RETURN_IF_ERROR(CheckGpuUsable());
      TF_RETURN_IF_ERROR(vars.PrepareForWrite(&GpuCopy));
      void* stream = GpuStream(ctx);
      for (int i = 0; i < n; ++i) {
        TF_RETURN_IF_ERROR(CudaStatus(
            fusedopt_cuda_sgd(dt, static_cast<int>(variant), decay, s.lr, s.momentum, s.decay,
                              ptr(var0 + i), mom0 < 0 ? nullptr : ptr(mom0 + i), gptr(i),
                              grads[i].NumElements(), stream),
            "ApplySGD"));
      }
      return absl::OkStatus();
#else
      return absl::InternalError(absl::StrCat("fusedopt was built without CUDA"));
#endif
    }
  }

  bool nesterov_ = false;
};

#define REGISTER_CPU(T)                                                                   \
  REGISTER_KERNEL_BUILDER(                                                                \
      Name("Fusedopt>ApplySGD").Device(tensorflow::DEVICE_CPU).TypeConstraint<T>("T"), \
      ApplySgdOp<Backend::kCpu, T>);
TF_CALL_half(REGISTER_CPU);
TF_CALL_bfloat16(REGISTER_CPU);
TF_CALL_float(REGISTER_CPU);
TF_CALL_double(REGISTER_CPU);
#undef REGISTER_CPU

#if defined(FUSEDOPT_WITH_CUDA)
// Note [GPU hyperparameters]: for now the scalar hyperparameters are host
// memory inputs, passed to the launcher by value.
#define REGISTER_GPU(T)                                        \
  REGISTER_KERNEL_BUILDER(Name("Fusedopt>ApplySGD")            \
                              .Device(tensorflow::DEVICE_GPU)  \
                              .HostMemory("lr")                \
                              .HostMemory("momentum")          \
                              .HostMemory("weight_decay")      \
                              .TypeConstraint<T>("T"),         \
                          ApplySgdOp<Backend::kGpu, T>);
TF_CALL_half(REGISTER_GPU);
TF_CALL_bfloat16(REGISTER_GPU);
TF_CALL_float(REGISTER_GPU);
TF_CALL_double(REGISTER_GPU);
#undef REGISTER_GPU
#endif

}  // namespace
}  // namespace tf
}  // namespace fusedopt
