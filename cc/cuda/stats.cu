// The gradient statistics pass on the GPU: a tensor's sum of squares (in
// double) and whether any element is inf or NaN, written to device memory.
// Deterministic as LAMB's norms (Note [deterministic sums] in elementwise.cuh).
#include <cuda_runtime.h>

#include "cc/cuda/elementwise.cuh"
#include "cc/cuda/launchers.h"

namespace fusedopt {
namespace cuda {
namespace {

template <typename T>
__global__ void StatsPass(const T* __restrict__ grad, int64_t n, double* partials) {
  __shared__ double ss[kThreads];
  __shared__ int bad[kThreads];
  double s = 0;
  int b = 0;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    const double g = static_cast<double>(Load(grad[i]));
    s += g * g;
    b |= (g - g != 0.0) ? 1 : 0;  // inf - inf and NaN - NaN are NaN
  }
  ss[threadIdx.x] = s;
  bad[threadIdx.x] = b;
  __syncthreads();
  for (int half = blockDim.x / 2; half > 0; half >>= 1) {
    if (threadIdx.x < half) {
      ss[threadIdx.x] += ss[threadIdx.x + half];
      bad[threadIdx.x] |= bad[threadIdx.x + half];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    partials[2 * blockIdx.x] = ss[0];
    partials[2 * blockIdx.x + 1] = bad[0];
  }
}

__global__ void StatsFinalize(const double* partials, int blocks, double* out) {
  if (threadIdx.x == 0 && blockIdx.x == 0) {
    double s = 0, b = 0;
    for (int k = 0; k < blocks; ++k) {
      s += partials[2 * k];
      b = partials[2 * k + 1] != 0 ? 1.0 : b;
    }
    out[0] = s;
    out[1] = b;
  }
}

template <typename T>
int Stats(const void* grad, int64_t n, void* scratch, double* out, cudaStream_t stream) {
  const int blocks = ReductionBlocks(n);
  double* partials = static_cast<double*>(scratch);
  StatsPass<T><<<blocks, kThreads, 0, stream>>>(static_cast<const T*>(grad), n, partials);
  StatsFinalize<<<1, 1, 0, stream>>>(partials, blocks, out);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace
}  // namespace cuda
}  // namespace fusedopt

extern "C" int64_t fusedopt_cuda_grad_stats_scratch_bytes(int64_t) {
  return static_cast<int64_t>(sizeof(double)) * 2 * fusedopt::cuda::kReductionMaxBlocks;
}

extern "C" int fusedopt_cuda_grad_stats(int dtype, const void* grad, int64_t n, void* scratch,
                                        double* out, void* stream) {
  using namespace fusedopt;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (static_cast<DType>(dtype)) {
    case DType::kFloat16:
      return cuda::Stats<Half>(grad, n, scratch, out, s);
    case DType::kBFloat16:
      return cuda::Stats<BFloat16>(grad, n, scratch, out, s);
    case DType::kFloat32:
      return cuda::Stats<float>(grad, n, scratch, out, s);
    case DType::kFloat64:
      return cuda::Stats<double>(grad, n, scratch, out, s);
  }
  return static_cast<int>(cudaErrorInvalidValue);
}
