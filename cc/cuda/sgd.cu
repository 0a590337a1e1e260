// SGD on the GPU: one grid-stride elementwise kernel per tensor, calling the
// shared rule in cc/rules. (The multi-tensor launch comes with the CUDA issue.)
#include <cuda_runtime.h>

#include "cc/cuda/launchers.h"
#include "cc/rules/update_rules.h"

namespace fusedopt {
namespace {

template <typename T, SgdVariant V, Decay D>
__global__ void SgdKernel(SgdCoeffs<opmath_t<T>> c, T* __restrict__ var, T* __restrict__ mom,
                          const T* __restrict__ grad, int64_t n) {
  using M = opmath_t<T>;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    M v = Load(var[i]);
    M m = V == SgdVariant::kPlain ? M(0) : Load(mom[i]);
    SgdRule<V, D>::Apply(c, v, m, Load(grad[i]));
    var[i] = Store<T>(v);
    if constexpr (V != SgdVariant::kPlain) mom[i] = Store<T>(m);
  }
}

constexpr int kThreads = 256;

int GridFor(int64_t n) {
  int64_t blocks = (n + kThreads - 1) / kThreads;
  // Enough blocks to fill any current GPU several times over; the grid-stride
  // loop covers the rest, so int64 sizes never overflow the grid.
  const int64_t kMaxBlocks = 65536;
  return static_cast<int>(blocks < kMaxBlocks ? blocks : kMaxBlocks);
}

template <typename T, SgdVariant V, Decay D>
int LaunchSgd(const SgdScalars& s, void* var, void* mom, const void* grad, int64_t n,
              cudaStream_t stream) {
  if (n == 0) return 0;
  SgdKernel<T, V, D><<<GridFor(n), kThreads, 0, stream>>>(
      SgdCoeffs<opmath_t<T>>::From(s), static_cast<T*>(var), static_cast<T*>(mom),
      static_cast<const T*>(grad), n);
  return static_cast<int>(cudaGetLastError());
}

template <typename T>
int DispatchVariant(int variant, int decay, const SgdScalars& s, void* var, void* mom,
                    const void* grad, int64_t n, cudaStream_t stream) {
  const bool d = decay != 0;
  switch (variant) {
    case 0:
      return d ? LaunchSgd<T, SgdVariant::kPlain, Decay::kOn>(s, var, mom, grad, n, stream)
               : LaunchSgd<T, SgdVariant::kPlain, Decay::kOff>(s, var, mom, grad, n, stream);
    case 1:
      return d ? LaunchSgd<T, SgdVariant::kMomentum, Decay::kOn>(s, var, mom, grad, n, stream)
               : LaunchSgd<T, SgdVariant::kMomentum, Decay::kOff>(s, var, mom, grad, n, stream);
    case 2:
      return d ? LaunchSgd<T, SgdVariant::kNesterov, Decay::kOn>(s, var, mom, grad, n, stream)
               : LaunchSgd<T, SgdVariant::kNesterov, Decay::kOff>(s, var, mom, grad, n, stream);
  }
  return static_cast<int>(cudaErrorInvalidValue);
}

}  // namespace
}  // namespace fusedopt

extern "C" int fusedopt_cuda_sgd(int dtype, int variant, int decay, double lr, double momentum,
                                 double decay_lr, void* var, void* mom, const void* grad,
                                 int64_t n, void* stream) {
  using namespace fusedopt;
  const SgdScalars s{lr, momentum, decay_lr};
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  switch (static_cast<DType>(dtype)) {
    case DType::kFloat16:
      return DispatchVariant<Half>(variant, decay, s, var, mom, grad, n, st);
    case DType::kBFloat16:
      return DispatchVariant<BFloat16>(variant, decay, s, var, mom, grad, n, st);
    case DType::kFloat32:
      return DispatchVariant<float>(variant, decay, s, var, mom, grad, n, st);
    case DType::kFloat64:
      return DispatchVariant<double>(variant, decay, s, var, mom, grad, n, st);
  }
  return static_cast<int>(cudaErrorInvalidValue);
}
