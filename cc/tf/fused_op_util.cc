#include "absl/strings/str_cat.h"
#include "cc/tf/fused_op_util.h"

#include <algorithm>
#include <cstring>

#include "tensorflow/core/framework/device_base.h"
#include "tensorflow/core/util/work_sharder.h"
#if defined(FUSEDOPT_WITH_CUDA)
#include "cc/cuda/launchers.h"
#include "xla/stream_executor/stream.h"
#endif

namespace fusedopt {
namespace tf {

absl::Status ReadRuleAttrs(tensorflow::OpKernelConstruction* c, Rule rule, RuleAttrs* attrs) {
  const unsigned has = InfoOf(rule).attrs;
  if (has & kAttrNesterov) TF_RETURN_IF_ERROR(c->GetAttr("nesterov", &attrs->nesterov));
  if (has & kAttrEpsilonOutsideSqrt) {
    TF_RETURN_IF_ERROR(c->GetAttr("epsilon_outside_sqrt", &attrs->epsilon_outside_sqrt));
  }
  if (has & kAttrTfTrainingOpForm) {
    TF_RETURN_IF_ERROR(c->GetAttr("tf_training_op_form", &attrs->tf_training_op_form));
  }
  if (has & kAttrTfNorms) TF_RETURN_IF_ERROR(c->GetAttr("tf_norms", &attrs->tf_norms));
  if (has & kAttrTfPow) {
    TF_RETURN_IF_ERROR(c->GetAttr("tf_pow", &attrs->tf_pow));
    // A TF form only (Note [TF pow]): the kernels' plan never sees it.
    TF_RETURN_IF_ERROR(c->GetAttr("tf_training_op_form", &attrs->tf_tensor_pow));
  }
  if (NumStateVariants(rule) > 0) {
    std::string format;
    TF_RETURN_IF_ERROR(c->GetAttr("state_format", &format));
    attrs->state_format = format == "int8"       ? StateFormat::kInt8
                          : format == "bfloat16" ? StateFormat::kBFloat16
                                                 : StateFormat::kSame;
    TF_RETURN_IF_ERROR(c->GetAttr("stochastic_rounding", &attrs->stochastic_rounding));
  }
  if (has & kAttrScheduleDecay) {
    float d = 1.0f;
    TF_RETURN_IF_ERROR(c->GetAttr("schedule_decay", &d));
    attrs->schedule_decay = d;
    int64_t bits = 0;
    TF_RETURN_IF_ERROR(c->GetAttr("schedule_decay_bits", &bits));
    if (bits != 0) std::memcpy(&attrs->schedule_decay, &bits, sizeof(double));
  }
  return absl::OkStatus();
}

void RunChunks(tensorflow::OpKernelContext* ctx, const std::vector<cpu::Chunk>& chunks,
               int bytes_per_element, const std::function<void(const cpu::Chunk&)>& work) {
  const int64_t n = static_cast<int64_t>(chunks.size());
  if (n == 0) return;
  auto range = [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) work(chunks[c]);
  };
  if (n == 1) {
    range(0, 1);
    return;
  }
  // Cost of an average chunk in the pool's units (roughly cycles): a
  // streaming update moves about a byte per cycle per core.
  int64_t elements = 0;
  for (const cpu::Chunk& c : chunks) elements += c.end - c.begin;
  const int64_t cost = std::max<int64_t>(1, elements / n) * bytes_per_element;
  const auto* threads = ctx->device()->tensorflow_cpu_worker_threads();
  tensorflow::Shard(threads->num_threads, threads->workers, n, cost, range);
}

ParallelFor PoolOf(tensorflow::OpKernelContext* ctx) {
  return [ctx](const std::vector<cpu::Chunk>& chunks, int bytes,
               const std::function<void(const cpu::Chunk&)>& work) {
    RunChunks(ctx, chunks, bytes, work);
  };
}

absl::Status ReadInt64(tensorflow::OpKernelContext* ctx, const char* name, int64_t* value) {
  const tensorflow::Tensor* t = nullptr;
  TF_RETURN_IF_ERROR(ctx->input(name, &t));
  if (!tensorflow::TensorShapeUtils::IsScalar(t->shape())) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", name, "' must be a scalar, got shape ", t->shape().DebugString()));
  }
  *value = t->scalar<int64_t>()();
  return absl::OkStatus();
}

absl::Status ReadStep(tensorflow::OpKernelContext* ctx, int64_t* step) {
  return ReadInt64(ctx, "step", step);
}

#if defined(FUSEDOPT_WITH_CUDA)
void* GpuStream(tensorflow::OpKernelContext* ctx) {
  return ctx->op_device_context()->stream()->platform_specific_handle().stream;
}

absl::Status CheckGpuUsable() {
  const int code = fusedopt_cuda_check_usable();
  if (code == 0) return absl::OkStatus();
  return absl::FailedPreconditionError(absl::StrCat(
      "fusedopt's CUDA kernels cannot run here: ", fusedopt_cuda_error_string(code),
      " (fusedopt was built with CUDA runtime ", fusedopt_cuda_runtime_version(),
      "; the installed driver supports CUDA ", fusedopt_cuda_driver_version(),
      "). Update the NVIDIA driver, or install a CPU-only build of fusedopt."));
}

absl::Status CudaStatus(int code, const char* what) {
  if (code == 0) return absl::OkStatus();
  return absl::InternalError(absl::StrCat("fusedopt: CUDA launch of ", what,
                                      " failed: ", fusedopt_cuda_error_string(code)));
}

absl::Status GpuCopy(tensorflow::OpKernelContext* ctx, void* dst, const void* src, int64_t bytes) {
  return CudaStatus(fusedopt_cuda_copy(dst, src, bytes, GpuStream(ctx)), "copy-on-write");
}
#endif

}  // namespace tf
}  // namespace fusedopt
