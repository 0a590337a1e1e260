// LAMB on the GPU: pass 1 (moments + per-block partial norms), a one-block
// finalize (fixed-order sum, trust ratio), pass 2 (apply). Deterministic: the
// grid size depends only on n, each thread sums its grid-stride elements in
// order, blocks reduce in a fixed tree, and the finalize sums blocks in order.
#include <cuda_runtime.h>

#include "cc/cuda/elementwise.cuh"
#include "cc/cuda/launchers.h"

namespace fusedopt {
namespace cuda {
namespace {

__device__ void BlockSum2(double* sw, double* su, double w, double u) {
  sw[threadIdx.x] = w;
  su[threadIdx.x] = u;
  __syncthreads();
  for (int stride = blockDim.x / 2; stride > 0; stride >>= 1) {
    if (threadIdx.x < stride) {
      sw[threadIdx.x] += sw[threadIdx.x + stride];
      su[threadIdx.x] += su[threadIdx.x + stride];
    }
    __syncthreads();
  }
}

template <typename T, bool D, bool X>
__global__ void LambPass1(OpCoeffs<opmath_t<T>> oc, opmath_t<T> gscale, opmath_t<T> gclip,
                          const T* __restrict__ var, T* __restrict__ m, T* __restrict__ v,
                          const T* __restrict__ grad, int64_t n, double* partials) {
  using M = opmath_t<T>;
  __shared__ double sw[kThreads];
  __shared__ double su[kThreads];
  double w = 0, u = 0;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    M x = Load(var[i]);
    if constexpr (D) x = Decay(oc.c, x);
    M g = Load(grad[i]);
    if constexpr (X) g = TransformGrad(g, gscale, gclip);
    const M upd = LambRule::Moments(oc.c, m[i], v[i], g);
    w += static_cast<double>(x) * static_cast<double>(x);
    u += static_cast<double>(upd) * static_cast<double>(upd);
  }
  BlockSum2(sw, su, w, u);
  if (threadIdx.x == 0) {
    partials[2 * blockIdx.x] = sw[0];
    partials[2 * blockIdx.x + 1] = su[0];
  }
}

template <typename S>
__global__ void LambFinalize(const double* partials, int blocks, double lr, double* ratio_lr) {
  if (threadIdx.x == 0 && blockIdx.x == 0) {
    double w = 0, u = 0;
    for (int b = 0; b < blocks; ++b) {
      w += partials[2 * b];
      u += partials[2 * b + 1];
    }
    *ratio_lr = LambRule::RatioLr<S>(w, u, lr);
  }
}

template <typename T, bool D>
__global__ void LambPass2(OpCoeffs<opmath_t<T>> oc, const double* ratio_lr, T* __restrict__ var,
                          const T* __restrict__ m, const T* __restrict__ v, int64_t n) {
  using M = opmath_t<T>;
  const M r = static_cast<M>(*ratio_lr);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    M x = Load(var[i]);
    if constexpr (D) x = Decay(oc.c, x);
    var[i] = Store<T>(x - r * LambRule::Update(oc.c, Load(m[i]), Load(v[i])));
  }
}

template <typename T, bool D, bool X>
int Lamb(const Coeffs& c, const GradXform& gx, void* var, void* const* slots, const void* grad,
         int64_t n, void* scratch, cudaStream_t stream) {
  using M = opmath_t<T>;
  const auto oc = OpCoeffs<M>::From(c);
  const int blocks = ReductionBlocks(n);
  double* partials = static_cast<double*>(scratch);
  double* ratio = partials + 2 * kReductionMaxBlocks;
  LambPass1<T, D, X><<<blocks, kThreads, 0, stream>>>(oc, static_cast<M>(gx.scale),
                                                     static_cast<M>(gx.clip_value),
                                                     static_cast<const T*>(var),
                                                  static_cast<T*>(slots[0]),
                                                  static_cast<T*>(slots[1]),
                                                  static_cast<const T*>(grad), n, partials);
  LambFinalize<M><<<1, 1, 0, stream>>>(partials, blocks, c.c[LambRule::kLr], ratio);
  LambPass2<T, D><<<GridFor(n), kThreads, 0, stream>>>(oc, ratio, static_cast<T*>(var),
                                                      static_cast<const T*>(slots[0]),
                                                      static_cast<const T*>(slots[1]), n);
  return static_cast<int>(cudaGetLastError());
}

template <typename T>
int LambDtype(bool decay, bool transform, const Coeffs& c, const GradXform& gx, void* var,
              void* const* slots, const void* grad, int64_t n, void* scratch,
              cudaStream_t stream) {
  if (decay) {
    return transform ? Lamb<T, true, true>(c, gx, var, slots, grad, n, scratch, stream)
                     : Lamb<T, true, false>(c, gx, var, slots, grad, n, scratch, stream);
  }
  return transform ? Lamb<T, false, true>(c, gx, var, slots, grad, n, scratch, stream)
                   : Lamb<T, false, false>(c, gx, var, slots, grad, n, scratch, stream);
}

}  // namespace
}  // namespace cuda
}  // namespace fusedopt

extern "C" int64_t fusedopt_cuda_lamb_scratch_bytes(int64_t) {
  return static_cast<int64_t>(sizeof(double)) * (2 * fusedopt::cuda::kReductionMaxBlocks + 1);
}

extern "C" int fusedopt_cuda_lamb(int dtype, int decay, const double* coeffs, int transform,
                                  double grad_scale, double clip_value, void* var,
                                  void* const* slots, const void* grad, int64_t n, void* scratch,
                                  void* stream) {
  using namespace fusedopt;
  if (n == 0) return 0;
  Coeffs c;
  for (int k = 0; k < kMaxCoeffs; ++k) c.c[k] = coeffs[k];
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  const bool d = decay != 0, x = transform != 0;
  const GradXform gx{grad_scale, clip_value};
  switch (static_cast<DType>(dtype)) {
    case DType::kFloat16:
      return cuda::LambDtype<Half>(d, x, c, gx, var, slots, grad, n, scratch, s);
    case DType::kBFloat16:
      return cuda::LambDtype<BFloat16>(d, x, c, gx, var, slots, grad, n, scratch, s);
    case DType::kFloat32:
      return cuda::LambDtype<float>(d, x, c, gx, var, slots, grad, n, scratch, s);
    case DType::kFloat64:
      return cuda::LambDtype<double>(d, x, c, gx, var, slots, grad, n, scratch, s);
  }
  return static_cast<int>(cudaErrorInvalidValue);
}
