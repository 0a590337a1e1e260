// The C-ABI entry points of the elementwise and LAMB launchers.
#include <cuda_runtime.h>

#include <atomic>

#include "cc/cuda/elementwise.cuh"
#include "cc/cuda/state.cuh"
#include "cc/cuda/launchers.h"

namespace fusedopt {
namespace cuda {

int MultiTensorGrid(int64_t total_chunks) {
  // The multiprocessor count of each device, read once.
  constexpr int kMaxDevices = 64;
  static std::atomic<int> sms[kMaxDevices];
  int device = 0;
  int count = 0;
  if (cudaGetDevice(&device) == cudaSuccess && device >= 0 && device < kMaxDevices) {
    count = sms[device].load(std::memory_order_relaxed);
    if (count == 0 &&
        cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device) == cudaSuccess) {
      sms[device].store(count, std::memory_order_relaxed);
    }
  }
  if (count <= 0) count = 132;  // (an H100's; the grid-stride loop covers any count)
  const int64_t blocks = int64_t{count} * (2048 / kThreads);
  return static_cast<int>(total_chunks < blocks ? total_chunks : blocks);
}

namespace {

int Dispatch(int rule, int dtype, int variant, const LaunchArgs& a) {
  switch (static_cast<Rule>(rule)) {
#define FUSEDOPT_DISPATCH_RULE(ID, ...) \
  case Rule::ID:                        \
    return LaunchFor<Rule::ID>(dtype, variant, a);
    FUSEDOPT_FOR_EACH_RULE(FUSEDOPT_DISPATCH_RULE)
#undef FUSEDOPT_DISPATCH_RULE
  }
  return static_cast<int>(cudaErrorInvalidValue);
}

int DispatchState(int rule, int dtype, int variant, const StateLaunchArgs& a) {
  switch (static_cast<Rule>(rule)) {
#define FUSEDOPT_DISPATCH_STATE_RULE(ID, ...) \
  case Rule::ID:                              \
    return LaunchStateFor<Rule::ID>(dtype, variant, a);
    FUSEDOPT_FOR_EACH_RULE(FUSEDOPT_DISPATCH_STATE_RULE)
#undef FUSEDOPT_DISPATCH_STATE_RULE
  }
  return static_cast<int>(cudaErrorInvalidValue);
}

}  // namespace
}  // namespace cuda
}  // namespace fusedopt

extern "C" int fusedopt_cuda_state_multi(int rule, int dtype, int variant, int decay,
                                         const double* coeffs, int state_format,
                                         int stochastic_weights, uint64_t seed, int num_tensors,
                                         void* const* vars, void* const* slots,
                                         float* const* absmax, const void* const* grads,
                                         const int64_t* sizes, const int64_t* row_sizes,
                                         const int* tensors, const double* grad_scales,
                                         const double* clip_values, void* stream) {
  using namespace fusedopt;
  if (num_tensors < 0 || state_format < 0 || state_format >= kNumStateFormats ||
      (num_tensors > 0 && (vars == nullptr || slots == nullptr || grads == nullptr ||
                           sizes == nullptr ||
                           (state_format == static_cast<int>(StateFormat::kInt8) &&
                            absmax == nullptr))) ||
      ((grad_scales == nullptr) != (clip_values == nullptr))) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  cuda::StateLaunchArgs a{};
  for (int k = 0; k < kMaxCoeffs; ++k) a.c.c[k] = coeffs[k];
  a.decay = decay != 0;
  a.format = static_cast<StateFormat>(state_format);
  a.stochastic_weights = stochastic_weights != 0;
  a.seed = seed;
  a.num = num_tensors;
  a.vars = vars;
  a.slots = slots;
  a.absmax = absmax;
  a.grads = grads;
  a.sizes = sizes;
  a.row_sizes = row_sizes;
  a.tensors = tensors;
  a.scales = grad_scales;
  a.clips = clip_values;
  a.stream = static_cast<cudaStream_t>(stream);
  return cuda::DispatchState(rule, dtype, variant, a);
}

extern "C" int fusedopt_cuda_elementwise_multi(int rule, int dtype, int variant, int decay,
                                               const double* coeffs, int transform,
                                               int num_tensors, void* const* vars,
                                               void* const* slots, const void* const* grads,
                                               const int64_t* sizes, const double* grad_scales,
                                               const double* clip_values, void* stream) {
  using namespace fusedopt;
  if (num_tensors < 0 || (num_tensors > 0 && (vars == nullptr || slots == nullptr ||
                                              grads == nullptr || sizes == nullptr)) ||
      (transform != 0 && num_tensors > 0 && (grad_scales == nullptr || clip_values == nullptr))) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  cuda::LaunchArgs a{};
  for (int k = 0; k < kMaxCoeffs; ++k) a.c.c[k] = coeffs[k];
  a.decay = decay != 0;
  a.transform = transform != 0;
  a.num = num_tensors;
  a.vars = vars;
  a.slots = slots;
  a.grads = grads;
  a.sizes = sizes;
  a.scales = grad_scales;
  a.clips = clip_values;
  a.stream = static_cast<cudaStream_t>(stream);
  return cuda::Dispatch(rule, dtype, variant, a);
}
