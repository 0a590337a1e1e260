// The call pipeline every dense fused call runs, whoever makes it (Note
// [call pipeline]). No TensorFlow and no CUDA header.
//
// Note [call pipeline]: the TF op kernels (cc/tf/fused_ops.cc), the C ABI
// (cc/native/api.cc) and through it the XLA handler (cc/xla) are adapters:
// each reads its operands (TF tensors and resource variables, raw pointers,
// XLA FFI buffers) into a CallDesc, plans with MakeCallPlan and validates
// what only it can check (shapes, dtypes, pointers), writing nothing. Then
// RunDenseCall does the rest, the same on every path:
//   1. the gradient statistics, when an option needs them (clip_norm,
//      global_clip_norm, skip_nonfinite), and the per-tensor transforms;
//   2. the skip decision (Note [skip after transform]): a skipped call
//      writes nothing;
//   3. the adapter's prepare_for_write (TF's copy-on-write of shared
//      buffers; it fills ops->vars and ops->slots), the last step that may
//      fail;
//   4. the update, on the CPU (the adapter's ParallelFor and, for Keras'
//      bits, its TF forms) or on the GPU (the CUDA launchers on the adapter's
//      stream).
// So a rule, an option or a device added here reaches every path at once.
#ifndef FUSEDOPT_CC_CORE_DRIVER_H_
#define FUSEDOPT_CC_CORE_DRIVER_H_

#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "cc/core/cpu_run.h"
#include "cc/core/grad_options.h"
#include "cc/core/plan.h"

namespace fusedopt {

// An outcome: a code of the C ABI's (fusedopt_native.h: 0 ok, 1 invalid
// argument, 2 unavailable, 3 device error, 4 out of memory, 5 internal) and
// its message. Every code but 3 means nothing was written.
struct CallStatus {
  enum Code : int {
    kOk = 0,
    kInvalidArgument = 1,
    kUnavailable = 2,
    kDeviceError = 3,
    kOutOfMemory = 4,
    kInternal = 5,
  };
  int code = kOk;
  std::string message;
  bool ok() const { return code == kOk; }
  static CallStatus Invalid(std::string m) { return {kInvalidArgument, std::move(m)}; }
};

enum class CallDevice { kCpu, kCuda };

// A dense call as an adapter read it.
struct CallDesc {
  Rule rule = Rule::kSgd;
  int dt = 2;  // DType index (0 float16, 1 bfloat16, 2 float32, 3 float64)
  CallDevice device = CallDevice::kCpu;
  void* stream = nullptr;  // kCuda: the cudaStream_t to run on
  PlanInput in;            // scalars, step, attributes, slot lists given
  GradOptions options;
  // kCuda with low-precision state: the CUDA kernels of cc/cuda/state.cuh
  // have not run on a GPU yet (docs/gpu.md), so only the native layer, which
  // scripts/gpu_check.sh verifies them through, lets such a call reach them;
  // the TF ops' GPU kernels refuse it.
  bool cuda_state = false;
};

// What the run needs from its adapter.
struct CallHooks {
  // kCpu: runs chunks (TF's intra-op pool, the C ABI's threads).
  ParallelFor pfor;
  // Makes the written buffers writable and fills ops->vars and ops->slots,
  // when the adapter had not filled them (TF's copy-on-write); nothing has
  // been written when it runs, and an error stops the call.
  std::function<CallStatus(Operands* ops)> prepare_for_write;
  // kCpu: Keras' bits where TF's kernels give them (cc/tf/tf_numerics.h).
  TfFormsMaker tf_forms;
};

// Steps 1-4 of Note [call pipeline] for a planned, validated call. `ops`
// holds the gradients, sizes and rank-0 flags (and the variables and slots
// unless prepare_for_write fills them). *skipped: the call wrote nothing
// because of skip_nonfinite.
CallStatus RunDenseCall(const CallDesc& d, const Plan& plan, Operands* ops, const CallHooks& hooks,
                        bool* skipped);

// A sparse call's gradients (Note [sparse updates] in cc/tf/fused_ops.cc):
// tensor i's ops->grads[i] holds counts[i] rows of row_sizes[i] elements for
// rows indices[i] (int64, or int32 with index32) of its variable of rows[i]
// rows.
struct SparseDesc {
  bool exact = true;   // every row updated (else lazy: the rows present)
  bool index32 = false;
  std::vector<const void*> indices;
  std::vector<int64_t> counts, rows, row_sizes;
  std::vector<std::string> labels;  // the variables, for the index errors
};

// The sparse twin of RunDenseCall (CPU only): the indices checked and the
// duplicates summed (nothing written), then steps 1-4 on the unique rows.
// ops->sizes and ops->grads are replaced by the summed rows' (ops->sizes:
// whole tensors for a two-pass rule).
CallStatus RunSparseCall(const CallDesc& d, const Plan& plan, Operands* ops, const SparseDesc& sp,
                         const CallHooks& hooks, bool* skipped);

// For the GPU paths outside the dense pipeline (gradient statistics alone):
// kUnavailable unless CUDA is built in and a device is usable.
CallStatus CudaUsableStatus();
// Every pointer with elements is device memory of one device, made the
// current device.
CallStatus CudaDeviceOfOperands(const Operands& ops, int* device);
// Per-tensor sums of squares and the non-finite flag, on the device.
CallStatus GradStatsOnCuda(const Operands& ops, int dt, void* stream, std::vector<double>* sum_sq,
                           bool* nonfinite);

}  // namespace fusedopt

#endif  // FUSEDOPT_CC_CORE_DRIVER_H_
