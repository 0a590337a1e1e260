// The C-ABI entry points of the elementwise and LAMB launchers.
#include <cuda_runtime.h>

#include "cc/cuda/elementwise.cuh"
#include "cc/cuda/launchers.h"

extern "C" int fusedopt_cuda_elementwise(int algo, int dtype, int variant, int decay,
                                         const double* coeffs, void* var, void* const* slots,
                                         const void* grad, int64_t n, void* stream) {
  using namespace fusedopt;
  Coeffs c;
  for (int k = 0; k < kMaxCoeffs; ++k) c.c[k] = coeffs[k];
  const bool d = decay != 0;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (static_cast<Algo>(algo)) {
    case Algo::kSgd:
      return cuda::LaunchSgd(dtype, variant, d, c, var, slots, grad, n, s);
    case Algo::kAdam:
      return cuda::LaunchAdam(dtype, variant, d, c, var, slots, grad, n, s);
    case Algo::kNadam:
      return cuda::LaunchNadam(dtype, variant, d, c, var, slots, grad, n, s);
    case Algo::kAdamax:
      return cuda::LaunchAdamax(dtype, variant, d, c, var, slots, grad, n, s);
    case Algo::kRmsprop:
      return cuda::LaunchRmsprop(dtype, variant, d, c, var, slots, grad, n, s);
    case Algo::kAdagrad:
      return cuda::LaunchAdagrad(dtype, variant, d, c, var, slots, grad, n, s);
    case Algo::kAdadelta:
      return cuda::LaunchAdadelta(dtype, variant, d, c, var, slots, grad, n, s);
    case Algo::kFtrl:
      return cuda::LaunchFtrl(dtype, variant, d, c, var, slots, grad, n, s);
    case Algo::kLion:
      return cuda::LaunchLion(dtype, variant, d, c, var, slots, grad, n, s);
  }
  return static_cast<int>(cudaErrorInvalidValue);
}
