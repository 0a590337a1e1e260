// The call pipeline (Note [call pipeline] in driver.h).
#include "cc/core/driver.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <new>
#include <stdexcept>
#include <string>
#include <vector>

#if defined(FUSEDOPT_WITH_CUDA)
#include "cc/core/cuda_run.h"
#include "cc/cuda/launchers.h"
#endif

namespace fusedopt {
namespace {

#define RETURN_IF_ERROR(expr)    \
  do {                           \
    CallStatus _s = (expr);      \
    if (!_s.ok()) return _s;     \
  } while (0)

#if defined(FUSEDOPT_WITH_CUDA)
CallStatus CudaError(int code, const std::string& what) {
  if (code == 0) return CallStatus{};
  return CallStatus{CallStatus::kDeviceError,
                what + " failed: " + fusedopt_cuda_error_string(code)};
}

CallStatus CudaUsable() {
  const int code = fusedopt_cuda_check_usable();
  if (code == 0) return CallStatus{};
  const int drv = fusedopt_cuda_driver_version();
  return CallStatus{CallStatus::kUnavailable,
                std::string("no usable CUDA device: ") + fusedopt_cuda_error_string(code) +
                    " (fusedopt's CUDA runtime " +
                    std::to_string(fusedopt_cuda_runtime_version()) + ", the driver supports " +
                    (drv == 0 ? std::string("no CUDA (no driver)") : std::to_string(drv)) + ")"};
}

// Every pointer with elements must be device memory of one device; makes it
// the current device for the launches.
CallStatus CudaDeviceOf(const Operands& ops, int* device) {
  *device = -1;
  auto visit = [&](const void* p, int i, const char* what) {
    if (p == nullptr) return CallStatus{};
    const int d = fusedopt_cuda_pointer_device(p);
    if (d >= 0 && (*device < 0 || d == *device)) {
      *device = d;
      return CallStatus{};
    }
    const std::string label = std::string(what) + " of tensor " + std::to_string(i);
    if (d < 0) return CallStatus::Invalid(label + " is not CUDA device memory");
    return CallStatus::Invalid(label + " is on device " + std::to_string(d) + ", others on device " +
                   std::to_string(*device));
  };
  for (int i = 0; i < ops.n; ++i) {
    if (ops.sizes[i] == 0) continue;
    // A statistics call's operands hold gradients alone (no vars, no slots).
    if (static_cast<size_t>(i) < ops.vars.size()) {
      RETURN_IF_ERROR(visit(ops.vars[i], i, "the variable"));
    }
    RETURN_IF_ERROR(visit(ops.grads[i], i, "the gradient"));
    if (static_cast<size_t>(i) < ops.slots.size()) {
      for (int k = 0; k < ops.num_slots; ++k) RETURN_IF_ERROR(visit(ops.slots[i][k], i, "a slot"));
    }
    // int8 state (Note [low-precision state]): the slots' absmax arrays.
    if (static_cast<size_t>(i) < ops.absmax.size()) {
      for (int k = 0; k < ops.num_slots; ++k) {
        RETURN_IF_ERROR(visit(ops.absmax[i][k], i, "a slot's absmax"));
      }
    }
  }
  if (*device >= 0) RETURN_IF_ERROR(CudaError(fusedopt_cuda_set_device(*device), "cudaSetDevice"));
  return CallStatus{};
}

// A stream-ordered device buffer, freed on the stream when it goes out of scope.
struct DeviceBuffer {
  void* ptr = nullptr;
  void* stream = nullptr;
  ~DeviceBuffer() { fusedopt_cuda_free_async(ptr, stream); }
};

// Per-tensor sums of squares and the non-finite flag on the device, read back.
CallStatus GradStatsCuda(const Operands& ops, int dt, void* stream, std::vector<double>* sum_sq,
                     bool* nonfinite) {
  const int n = ops.n;
  sum_sq->assign(n, 0.0);
  *nonfinite = false;
  if (n == 0) return CallStatus{};
  DeviceBuffer out{nullptr, stream}, scratch{nullptr, stream};
  RETURN_IF_ERROR(CudaError(
      fusedopt_cuda_malloc_async(&out.ptr, int64_t{16} * n, stream), "cudaMallocAsync"));
  RETURN_IF_ERROR(CudaError(fusedopt_cuda_malloc_async(
                                &scratch.ptr, fusedopt_cuda_grad_stats_scratch_bytes(0), stream),
                            "cudaMallocAsync"));
  std::vector<double> host(2 * n, 0.0);
  for (int i = 0; i < n; ++i) {
    if (ops.sizes[i] == 0) continue;
    RETURN_IF_ERROR(CudaError(
        fusedopt_cuda_grad_stats(dt, ops.grads[i], ops.sizes[i], scratch.ptr,
                                 static_cast<double*>(out.ptr) + 2 * i, stream),
        "the gradient statistics kernel"));
  }
  RETURN_IF_ERROR(CudaError(
      fusedopt_cuda_copy_to_host(host.data(), out.ptr, int64_t{16} * n, stream), "cudaMemcpy"));
  for (int i = 0; i < n; ++i) {
    if (ops.sizes[i] == 0) continue;
    (*sum_sq)[i] = host[2 * i];
    *nonfinite |= host[2 * i + 1] != 0.0;
  }
  return CallStatus{};
}

// Note [skip after transform] on the GPU: the statistics decide most steps;
// a tensor that needs the element check is copied to the host for it (the
// rare path of a step with an inf, a NaN or a near-overflow).
CallStatus SkipStepCuda(const Operands& ops, int dt, bool raw_nonfinite,
                    const std::vector<double>& sum_sq, void* stream, bool* skip) {
  *skip = false;
  if (!ops.transform) {
    *skip = raw_nonfinite;
    return CallStatus{};
  }
  const int eb = ElemBytesOf(dt);
  for (int i = 0; i < ops.n; ++i) {
    if (ops.sizes[i] == 0) continue;
    if (!std::isfinite(ops.xforms[i].scale)) {
      *skip = true;
      return CallStatus{};
    }
    if (!NeedsElementCheck(ops.xforms[i], sum_sq[i], raw_nonfinite, dt == 3)) continue;
    std::vector<char> host(static_cast<size_t>(ops.sizes[i] * eb));
    RETURN_IF_ERROR(CudaError(
        fusedopt_cuda_copy_to_host(host.data(), ops.grads[i], ops.sizes[i] * eb, stream),
        "cudaMemcpy"));
    if (AnyTransformedNonfinite(host.data(), ops.sizes[i], dt, ops.xforms[i])) {
      *skip = true;
      return CallStatus{};
    }
  }
  return CallStatus{};
}

CallStatus RunCuda(const Operands& ops, const Plan& plan, Rule rule, int dt, void* stream) {
  const RuleInfo& info = InfoOf(rule);
  const int decay = plan.Decays() ? 1 : 0;
  if (info.two_pass) {
    DeviceBuffer scratch{nullptr, stream};
    RETURN_IF_ERROR(CudaError(
        fusedopt_cuda_malloc_async(&scratch.ptr, fusedopt_cuda_lamb_scratch_bytes(0), stream),
        "cudaMallocAsync"));
    for (int i = 0; i < ops.n; ++i) {
      RETURN_IF_ERROR(CudaError(
          fusedopt_cuda_lamb(dt, decay, plan.For(ops.IsRank0(i)).c, ops.transform ? 1 : 0,
                             ops.xforms[i].scale, ops.xforms[i].clip_value, ops.vars[i],
                             ops.slots[i].data(), ops.grads[i], ops.sizes[i], scratch.ptr, stream),
          "the LAMB kernels"));
    }
    return CallStatus{};
  }
  if (plan.LowPrecision()) {
    return CudaError(RunStateCuda(ops, plan, info.rule, dt, decay != 0, stream),
                     std::string("the ") + info.name + " kernel with low-precision state");
  }
  return CudaError(RunElementwiseCuda(ops, plan, info.rule, dt, decay != 0, stream),
                   std::string("the ") + info.name + " kernel");
}
#endif  // FUSEDOPT_WITH_CUDA

CallStatus OutOfMemory(const std::string& what) {
  return CallStatus{CallStatus::kOutOfMemory,
                    "out of host memory for " + what + "; nothing was updated"};
}

// The last steps before the first write: the adapter's TF forms (their
// scratch allocated), then its prepare_for_write.
CallStatus FormsThenPrepare(const CallHooks& h, const Plan& plan, Operands* ops, TfForms* forms) {
  if (h.tf_forms) {
    try {
      *forms = h.tf_forms(*ops, plan);
    } catch (const std::bad_alloc&) {
      return OutOfMemory("the TF forms' scratch");
    }
  }
  if (h.prepare_for_write) RETURN_IF_ERROR(h.prepare_for_write(ops));
  if (plan.state_format == StateFormat::kInt8 && static_cast<int>(ops->absmax.size()) != ops->n) {
    return CallStatus{CallStatus::kInternal, "int8 state without its absmax operands"};
  }
  return CallStatus{};
}

CallStatus RunDenseCpu(const CallDesc& d, const Plan& plan, Operands* ops, const CallHooks& h,
                       bool* skipped) {
  const int eb = ElemBytesOf(d.dt);
  if (PrepareGradOptionsCpu(h.pfor, d.options, d.dt, eb, ops)) {
    *skipped = true;
    return CallStatus{};
  }
  TfForms forms;
  RETURN_IF_ERROR(FormsThenPrepare(h, plan, ops, &forms));
  if (forms.run) {
    forms.run();
    return CallStatus{};
  }
  RunItemsCpu(h.pfor, DenseItems(*ops, eb, plan.state_format), *ops, plan, InfoOf(d.rule).two_pass, d.rule, d.dt, eb,
              forms.lamb_norms);
  return CallStatus{};
}

#if defined(FUSEDOPT_WITH_CUDA)
CallStatus RunDenseOnCuda(const CallDesc& d, const Plan& plan, Operands* ops, const CallHooks& h,
                          bool* skipped) {
  RETURN_IF_ERROR(CudaUsable());
  int device = -1;
  RETURN_IF_ERROR(CudaDeviceOf(*ops, &device));
  std::vector<double> sum_sq(ops->n, 0.0);
  bool nonfinite = false;
  if (d.options.NeedsStats()) {
    RETURN_IF_ERROR(GradStatsCuda(*ops, d.dt, d.stream, &sum_sq, &nonfinite));
  }
  ops->xforms = MakeXforms(d.options, sum_sq);
  ops->transform = d.options.Transforms();
  if (d.options.skip_nonfinite) {
    bool skip = false;
    RETURN_IF_ERROR(SkipStepCuda(*ops, d.dt, nonfinite, sum_sq, d.stream, &skip));
    if (skip) {
      *skipped = true;
      return CallStatus{};
    }
  }
  if (h.prepare_for_write) {
    RETURN_IF_ERROR(h.prepare_for_write(ops));
    RETURN_IF_ERROR(CudaDeviceOf(*ops, &device));
  }
  if (plan.state_format == StateFormat::kInt8 && static_cast<int>(ops->absmax.size()) != ops->n) {
    return CallStatus{CallStatus::kInternal, "int8 state without its absmax operands"};
  }
  return RunCuda(*ops, plan, d.rule, d.dt, d.stream);
}
#endif

template <typename S>
void SumRowsTyped(const void* src, int64_t row_size, const std::vector<int64_t>& order,
                  const std::vector<int64_t>& seg, void* dst) {
  SumRows(static_cast<const S*>(src), row_size, order, seg, static_cast<S*>(dst));
}

CallStatus RunSparseCpu(const CallDesc& d, const Plan& plan, Operands* ops, const SparseDesc& sp,
                        const CallHooks& h, bool* skipped) {
  const int n = ops->n;
  const int eb = ElemBytesOf(d.dt);
  const RuleInfo& info = InfoOf(d.rule);
  // Index checks first (they read only the indices), then the duplicate sums
  // into compact buffers: nothing written yet.
  std::vector<std::vector<int64_t>> unique(n), orders(n), segments(n);
  for (int i = 0; i < n; ++i) {
    const std::string err =
        sp.index32 ? SortRows(static_cast<const int32_t*>(sp.indices[i]), sp.counts[i], sp.rows[i],
                              i, sp.labels[i], &orders[i], &unique[i], &segments[i])
                   : SortRows(static_cast<const int64_t*>(sp.indices[i]), sp.counts[i], sp.rows[i],
                              i, sp.labels[i], &orders[i], &unique[i], &segments[i]);
    if (!err.empty()) return CallStatus::Invalid(err);
  }
  std::vector<std::vector<char>> compact(n);
  // The shared zero gradient of exact mode is as long as the longest run of
  // gradient-less elements needs, at most SparseZeroElements: nothing for a
  // lazy call, an empty table or one whose every row has a gradient (an
  // allocation sized by the row length alone could fail for a table that
  // holds no element, such as shape (0, 2^40)).
  int64_t max_row = 0, zero_need = 0;
  ops->sizes.assign(n, 0);
  for (int i = 0; i < n; ++i) {
    const int64_t elements = static_cast<int64_t>(unique[i].size()) * sp.row_sizes[i];
    compact[i].resize(static_cast<size_t>(elements * eb) + 1);
    const std::vector<int64_t>& order = orders[i];
    const std::vector<int64_t>& seg = segments[i];
    switch (d.dt) {
      case 0:
        SumRowsTyped<Half>(ops->grads[i], sp.row_sizes[i], order, seg, compact[i].data());
        break;
      case 1:
        SumRowsTyped<BFloat16>(ops->grads[i], sp.row_sizes[i], order, seg, compact[i].data());
        break;
      case 2:
        SumRowsTyped<float>(ops->grads[i], sp.row_sizes[i], order, seg, compact[i].data());
        break;
      default:
        SumRowsTyped<double>(ops->grads[i], sp.row_sizes[i], order, seg, compact[i].data());
    }
    ops->grads[i] = compact[i].data();
    ops->sizes[i] = elements;
    max_row = std::max(max_row, sp.row_sizes[i]);
    if (sp.exact && sp.row_sizes[i] > 0) {
      // unique[i] rows have gradients, so every zero run is shorter than this.
      zero_need = std::max(zero_need, sp.rows[i] * sp.row_sizes[i] - elements);
    }
  }
  if (PrepareGradOptionsCpu(h.pfor, d.options, d.dt, eb, ops)) {
    *skipped = true;
    return CallStatus{};
  }
  // Every zero run is at most zero_need elements long, so a buffer of
  // min(SparseZeroElements, zero_need) splits the runs exactly as one of
  // SparseZeroElements would (the same items, the same bits).
  const int64_t zero_elements = std::min(SparseZeroElements(max_row), zero_need);
  std::vector<char> zeros(static_cast<size_t>(zero_elements * eb), 0);
  std::vector<Item> items;
  for (int i = 0; i < n; ++i) {
    PlanSparseItems(i, sp.exact, sp.rows[i], sp.row_sizes[i], unique[i], compact[i].data(),
                    zero_elements > 0 ? zeros.data() : nullptr, zero_elements, eb, &items,
                    plan.state_format == StateFormat::kInt8);
  }
  if (info.two_pass) {
    // LAMB's norms read whole tensors.
    for (int i = 0; i < n; ++i) ops->sizes[i] = sp.rows[i] * sp.row_sizes[i];
  }
  TfForms forms;
  RETURN_IF_ERROR(FormsThenPrepare(h, plan, ops, &forms));
  RunItemsCpu(h.pfor, items, *ops, plan, info.two_pass, d.rule, d.dt, eb, forms.lamb_norms);
  return CallStatus{};
}

// Runs a pipeline body; a failed host allocation (every one happens before
// the first write: sorted indices, compact rows, work lists, scratch) is
// kOutOfMemory, never an exception through an adapter (a TF kernel, the C
// ABI).
template <typename Body>
CallStatus Guard(const Body& body) {
  try {
    return body();
  } catch (const std::bad_alloc&) {
    return OutOfMemory("the call's scratch space");
  } catch (const std::length_error&) {
    return OutOfMemory("the call's scratch space (more than one allocation holds)");
  }
}

CallStatus RunSparse(const CallDesc& d, const Plan& plan, Operands* ops, const SparseDesc& sp,
                     const CallHooks& hooks, bool* skipped) {
  *skipped = false;
  if (InfoOf(d.rule).two_pass && !sp.exact) {
    return CallStatus::Invalid(
        "LAMB has no lazy sparse mode (its trust ratio needs the whole variable); use exact");
  }
  if (d.device != CallDevice::kCpu) {
    return CallStatus{CallStatus::kUnavailable,
                      "sparse updates run on the CPU only for now (GPU sparse kernels: issue #15)"};
  }
  if (plan.state_format == StateFormat::kInt8 && static_cast<int>(ops->layouts.size()) != ops->n) {
    return CallStatus{CallStatus::kInternal, "int8 state without its layouts"};
  }
  return RunSparseCpu(d, plan, ops, sp, hooks, skipped);
}

}  // namespace

CallStatus RunSparseCall(const CallDesc& d, const Plan& plan, Operands* ops, const SparseDesc& sp,
                         const CallHooks& hooks, bool* skipped) {
  return Guard([&] { return RunSparse(d, plan, ops, sp, hooks, skipped); });
}

CallStatus RunDenseCall(const CallDesc& d, const Plan& plan, Operands* ops, const CallHooks& hooks,
                        bool* skipped) {
  *skipped = false;
  if (plan.LowPrecision() && d.device != CallDevice::kCpu && !d.cuda_state) {
    return CallStatus{CallStatus::kUnavailable,
                      "low-precision state (state_format, stochastic_rounding) on the GPU runs "
                      "through fusedopt._native only until its CUDA kernels have run on a GPU "
                      "(docs/gpu.md); nothing was updated"};
  }
  if (plan.state_format == StateFormat::kInt8 && static_cast<int>(ops->layouts.size()) != ops->n) {
    return CallStatus{CallStatus::kInternal, "int8 state without its layouts"};
  }
  return Guard([&]() -> CallStatus {
    if (d.device == CallDevice::kCpu) return RunDenseCpu(d, plan, ops, hooks, skipped);
#if defined(FUSEDOPT_WITH_CUDA)
    return RunDenseOnCuda(d, plan, ops, hooks, skipped);
#else
    return CudaUsableStatus();
#endif
  });
}

CallStatus CudaUsableStatus() {
#if defined(FUSEDOPT_WITH_CUDA)
  return CudaUsable();
#else
  return CallStatus{CallStatus::kUnavailable,
                    "this fusedopt build has no CUDA kernels (built without nvcc); rebuild with "
                    "FUSEDOPT_CUDA=ON"};
#endif
}

CallStatus CudaDeviceOfOperands(const Operands& ops, int* device) {
#if defined(FUSEDOPT_WITH_CUDA)
  return CudaDeviceOf(ops, device);
#else
  (void)ops;
  *device = -1;
  return CudaUsableStatus();
#endif
}

CallStatus GradStatsOnCuda(const Operands& ops, int dt, void* stream, std::vector<double>* sum_sq,
                           bool* nonfinite) {
#if defined(FUSEDOPT_WITH_CUDA)
  return GradStatsCuda(ops, dt, stream, sum_sq, nonfinite);
#else
  (void)ops;
  (void)dt;
  (void)stream;
  (void)sum_sq;
  (void)nonfinite;
  return CudaUsableStatus();
#endif
}

}  // namespace fusedopt
