// Fusedopt>StreamTriad: the memory-bandwidth probe benchmarks compare against.
#define EIGEN_USE_THREADS

#include "cc/cpu/chunking.h"
#include "cc/cpu/kernels.h"
#include "cc/tf/fused_op_util.h"
#include "cc/tf/variable_access.h"
#include "tensorflow/core/framework/op_kernel.h"

namespace fusedopt {
namespace tf {
namespace {

class StreamTriadOp : public tensorflow::OpKernel {
 public:
  using OpKernel::OpKernel;
  void Compute(tensorflow::OpKernelContext* ctx) override {
    const tensorflow::Tensor& b = ctx->input(1);
    double s = 0;
    OP_REQUIRES_OK(ctx, ReadScalar(ctx, "s", &s));
    VariableSet vars(ctx);
    int first = 0;
    OP_REQUIRES_OK(ctx, vars.Lookup("a", &first));
    OP_REQUIRES_OK(ctx, vars.CheckDistinctAndLock());
    OP_REQUIRES_OK(ctx, vars.ValidateDtype(first, tensorflow::DT_FLOAT));
    OP_REQUIRES_OK(ctx, vars.ValidateShape(first, b.shape(), "b"));
    OP_REQUIRES_OK(ctx, vars.PrepareForWrite(&CpuCopy));
    float* a = static_cast<float*>(vars.data(first));
    const float* bp = b.flat<float>().data();
    const cpu::TriadFn triad = cpu::SelectedKernels().triad;
    const std::vector<cpu::Chunk> chunks = cpu::PlanChunks({b.NumElements()});
    RunChunks(ctx, chunks, 12, [&](const cpu::Chunk& ch) {
      triad(a, bp, static_cast<float>(s), ch.begin, ch.end);
    });
  }
};

REGISTER_KERNEL_BUILDER(Name("Fusedopt>StreamTriad").Device(tensorflow::DEVICE_CPU),
                        StreamTriadOp);

}  // namespace
}  // namespace tf
}  // namespace fusedopt
