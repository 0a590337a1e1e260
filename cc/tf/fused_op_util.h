// Helpers shared by the fused op kernels: running chunked CPU work on TF's
// intra-op pool, and reaching the CUDA stream and launchers from an op.
#ifndef FUSEDOPT_CC_TF_FUSED_OP_UTIL_H_
#define FUSEDOPT_CC_TF_FUSED_OP_UTIL_H_

#include <functional>
#include <vector>

#include "cc/core/cpu_run.h"
#include "cc/core/plan.h"
#include "cc/cpu/chunking.h"
#include "cc/tf/variable_access.h"
#include "tensorflow/core/framework/op_kernel.h"

namespace fusedopt {
namespace tf {

enum class Backend { kCpu, kGpu };

// The op attributes that change `rule`'s form (nesterov, epsilon_outside_sqrt,
// schedule_decay), for the op kernels and their XLA lowering alike.
absl::Status ReadRuleAttrs(tensorflow::OpKernelConstruction* c, Rule rule, RuleAttrs* attrs);

// Runs work(chunk) for every chunk on the op's intra-op thread pool.
// `bytes_per_element` feeds the pool's cost model.
void RunChunks(tensorflow::OpKernelContext* ctx, const std::vector<cpu::Chunk>& chunks,
               int bytes_per_element, const std::function<void(const cpu::Chunk&)>& work);

// The op's intra-op pool as a ParallelFor (RunChunks).
ParallelFor PoolOf(tensorflow::OpKernelContext* ctx);

// Reads the int64 scalar input "step"; InvalidArgument if it is not a scalar.
absl::Status ReadStep(tensorflow::OpKernelContext* ctx, int64_t* step);
// Reads the int64 scalar input `name`.
absl::Status ReadInt64(tensorflow::OpKernelContext* ctx, const char* name, int64_t* value);

#if defined(FUSEDOPT_WITH_CUDA)
// The CUDA stream TF runs this op's kernels on.
void* GpuStream(tensorflow::OpKernelContext* ctx);
// Fails with a clear message if no usable CUDA device/driver is present.
absl::Status CheckGpuUsable();
// Turns a launcher's return code into a Status naming the launch.
absl::Status CudaStatus(int code, const char* what);
absl::Status GpuCopy(tensorflow::OpKernelContext* ctx, void* dst, const void* src, int64_t bytes);
#endif

}  // namespace tf
}  // namespace fusedopt

#endif  // FUSEDOPT_CC_TF_FUSED_OP_UTIL_H_
