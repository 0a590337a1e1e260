// The generic elementwise CUDA kernel: one grid-stride loop calling a rule
// from cc/rules. Included by one generated .cu file per rule (so nvcc compiles
// them in parallel); no TensorFlow header.
#ifndef FUSEDOPT_CC_CUDA_ELEMENTWISE_CUH_
#define FUSEDOPT_CC_CUDA_ELEMENTWISE_CUH_

#include <cuda_runtime.h>

#include "cc/rules/registry.h"

namespace fusedopt {
namespace cuda {

constexpr int kThreads = 256;

inline int GridFor(int64_t n) {
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  // Enough blocks to fill any current GPU several times over; the grid-stride
  // loop covers the rest, so int64 sizes never overflow the grid.
  const int64_t kMaxBlocks = 65536;
  return static_cast<int>(blocks < kMaxBlocks ? blocks : kMaxBlocks);
}

// Note [deterministic sums] on the GPU: a reduction's grid depends only on n
// (at most kReductionMaxBlocks blocks, each thread summing its grid-stride
// elements in order, blocks reducing in a fixed tree, a one-thread finalize
// adding the blocks in order), so its bits are the same on every run.
constexpr int kReductionMaxBlocks = 1024;

inline int ReductionBlocks(int64_t n) {
  const int64_t b = (n + kThreads - 1) / kThreads;
  return static_cast<int>(b < kReductionMaxBlocks ? (b > 0 ? b : 1) : kReductionMaxBlocks);
}

// Note [multi-tensor launch]: one launch updates up to kMtCapacity tensors.
// Their pointers, sizes and gradient transforms travel in the kernel's
// parameter block (MtParams, ~16 KB: CUDA 12.1+ runtimes and R530+ drivers
// take up to 32764 bytes on Volta and newer; we need CUDA 13 and sm_75+), as
// a __grid_constant__ so that indexing it by a run-time tensor number reads
// the parameter bank instead of copying the block to local memory. Each tensor
// is cut into chunks of ChunkElems<T>() elements; chunk_end[t] is the number
// of chunks of tensors 0..t. A block takes chunks blockIdx.x,
// blockIdx.x + gridDim.x, ... and finds a chunk's tensor by binary search in
// chunk_end (uniform across the block). Within a chunk, a tensor whose every
// pointer is 16-byte aligned is read and written in 16-byte vectors (all
// operands of a vector loaded before the update, then stored), the rest of
// the chunk and unaligned tensors element by element. The per-element math is
// UpdateElement, run on registers: the bits are those of the element loop.
constexpr int kMtCapacity = 224;
constexpr int kChunkVectors = 4;  // 16-byte vectors per thread per chunk

template <typename T>
__host__ __device__ constexpr int VecElems() {
  return static_cast<int>(16 / sizeof(T));
}

template <typename T>
__host__ __device__ constexpr int64_t ChunkElems() {
  return int64_t{kThreads} * VecElems<T>() * kChunkVectors;
}

struct MtParams {
  int64_t chunk_end[kMtCapacity];
  int64_t n[kMtCapacity];
  void* var[kMtCapacity];
  const void* grad[kMtCapacity];
  void* slot[kMaxSlots][kMtCapacity];
  double scale[kMtCapacity];  // GradXform, when the launch transforms
  double clip[kMtCapacity];
  unsigned char vec_ok[kMtCapacity];
  int count;
};
static_assert(sizeof(MtParams) < 32000, "the kernel parameter limit is 32764 bytes");

template <typename T>
struct alignas(16) Vec {
  T x[VecElems<T>()];
};

template <typename Rule, typename T, int V, bool D, bool X>
__global__ void __launch_bounds__(kThreads)
    MultiTensorKernel(const __grid_constant__ MtParams p, const OpCoeffs<opmath_t<T>> oc,
                      const int64_t total_chunks) {
  using M = opmath_t<T>;
  constexpr int K = SlotsOf<Rule>(V);
  constexpr int VE = VecElems<T>();
  constexpr int64_t kChunk = ChunkElems<T>();
  for (int64_t c = blockIdx.x; c < total_chunks; c += gridDim.x) {
    int lo = 0, hi = p.count - 1;
    while (lo < hi) {
      const int mid = (lo + hi) >> 1;
      if (p.chunk_end[mid] > c) {
        hi = mid;
      } else {
        lo = mid + 1;
      }
    }
    const int t = lo;
    const int64_t begin = (c - (t == 0 ? 0 : p.chunk_end[t - 1])) * kChunk;
    const int64_t rest = p.n[t] - begin;
    const int64_t len = rest < kChunk ? rest : kChunk;
    T* __restrict__ var = static_cast<T*>(p.var[t]) + begin;
    const T* __restrict__ grad = static_cast<const T*>(p.grad[t]) + begin;
    T* __restrict__ s0 = K > 0 ? static_cast<T*>(p.slot[0][t]) + begin : nullptr;
    T* __restrict__ s1 = K > 1 ? static_cast<T*>(p.slot[1][t]) + begin : nullptr;
    T* __restrict__ s2 = K > 2 ? static_cast<T*>(p.slot[2][t]) + begin : nullptr;
    const M gscale = X ? static_cast<M>(p.scale[t]) : M(1);
    const M gclip = X ? static_cast<M>(p.clip[t]) : M(0);
    int64_t scalar_from = 0;
    if (p.vec_ok[t]) {
      const int64_t nvec = len / VE;
      for (int64_t j = threadIdx.x; j < nvec; j += kThreads) {
        Vec<T> lv = reinterpret_cast<const Vec<T>*>(var)[j];
        const Vec<T> lg = reinterpret_cast<const Vec<T>*>(grad)[j];
        Vec<T> l0, l1, l2;
        if constexpr (K > 0) l0 = reinterpret_cast<const Vec<T>*>(s0)[j];
        if constexpr (K > 1) l1 = reinterpret_cast<const Vec<T>*>(s1)[j];
        if constexpr (K > 2) l2 = reinterpret_cast<const Vec<T>*>(s2)[j];
#pragma unroll
        for (int e = 0; e < VE; ++e) {
          UpdateElement<Rule, V, D, X>(oc.c, gscale, gclip, lv.x, l0.x, l1.x, l2.x, lg.x, e);
        }
        reinterpret_cast<Vec<T>*>(var)[j] = lv;
        if constexpr (K > 0) reinterpret_cast<Vec<T>*>(s0)[j] = l0;
        if constexpr (K > 1) reinterpret_cast<Vec<T>*>(s1)[j] = l1;
        if constexpr (K > 2) reinterpret_cast<Vec<T>*>(s2)[j] = l2;
      }
      scalar_from = nvec * VE;
    }
    for (int64_t i = scalar_from + threadIdx.x; i < len; i += kThreads) {
      UpdateElement<Rule, V, D, X>(oc.c, gscale, gclip, var, s0, s1, s2, grad, i);
    }
  }
}

// The launch parameters shared by every elementwise launch: num tensors, each
// with its pointers (slots[kMaxSlots * i + k]: slot k of tensor i, in the
// rule's slot order), size and gradient transform (scales/clips: null unless
// transform).
struct LaunchArgs {
  bool decay;
  bool transform;
  Coeffs c;
  int num;
  void* const* vars;
  void* const* slots;
  const void* const* grads;
  const int64_t* sizes;
  const double* scales;
  const double* clips;
  cudaStream_t stream;
};

// Blocks for a launch: enough to fill every multiprocessor (8 blocks of
// kThreads each), fewer when there are fewer chunks.
int MultiTensorGrid(int64_t total_chunks);

template <typename Rule, typename T, int V, bool D, bool X>
int LaunchMulti(const LaunchArgs& a) {
  using M = opmath_t<T>;
  constexpr int K = SlotsOf<Rule>(V);
  const OpCoeffs<M> oc = OpCoeffs<M>::From(a.c);
  MtParams p;
  p.count = 0;
  int64_t chunks = 0;
  auto launch = [&]() -> int {
    if (p.count == 0) return 0;
    MultiTensorKernel<Rule, T, V, D, X>
        <<<MultiTensorGrid(chunks), kThreads, 0, a.stream>>>(p, oc, chunks);
    p.count = 0;
    chunks = 0;
    return static_cast<int>(cudaGetLastError());
  };
  auto aligned = [](const void* q) { return (reinterpret_cast<uintptr_t>(q) & 15) == 0; };
  for (int i = 0; i < a.num; ++i) {
    const int64_t n = a.sizes[i];
    if (n <= 0) continue;
    const int t = p.count;
    p.n[t] = n;
    p.var[t] = a.vars[i];
    p.grad[t] = a.grads[i];
    bool ok = aligned(a.vars[i]) && aligned(a.grads[i]);
    for (int k = 0; k < kMaxSlots; ++k) {
      p.slot[k][t] = k < K ? a.slots[kMaxSlots * i + k] : nullptr;
      if (k < K) ok = ok && aligned(p.slot[k][t]);
    }
    p.vec_ok[t] = ok ? 1 : 0;
    p.scale[t] = a.transform ? a.scales[i] : 1.0;
    p.clip[t] = a.transform ? a.clips[i] : 0.0;
    chunks += (n + ChunkElems<T>() - 1) / ChunkElems<T>();
    p.chunk_end[t] = chunks;
    p.count = t + 1;
    if (p.count == kMtCapacity) {
      const int err = launch();
      if (err != 0) return err;
    }
  }
  return launch();
}

template <typename Rule, typename T, int V>
int LaunchVariant(const LaunchArgs& a) {
  if (a.decay) {
    return a.transform ? LaunchMulti<Rule, T, V, true, true>(a)
                       : LaunchMulti<Rule, T, V, true, false>(a);
  }
  return a.transform ? LaunchMulti<Rule, T, V, false, true>(a)
                     : LaunchMulti<Rule, T, V, false, false>(a);
}

template <typename Rule, typename T, int V = 0>
int LaunchDtype(int variant, const LaunchArgs& a) {
  if constexpr (V < Rule::Variant::kCount) {
    if (variant == V) return LaunchVariant<Rule, T, V>(a);
    return LaunchDtype<Rule, T, V + 1>(variant, a);
  } else {
    return static_cast<int>(cudaErrorInvalidValue);
  }
}

// Launches Rule on a.num tensors: dtype is a fusedopt::DType index.
template <typename Rule>
int LaunchRule(int dtype, int variant, const LaunchArgs& a) {
  if (a.num == 0) return 0;
  switch (static_cast<DType>(dtype)) {
    case DType::kFloat16:
      return LaunchDtype<Rule, Half>(variant, a);
    case DType::kBFloat16:
      return LaunchDtype<Rule, BFloat16>(variant, a);
    case DType::kFloat32:
      return LaunchDtype<Rule, float>(variant, a);
    case DType::kFloat64:
      return LaunchDtype<Rule, double>(variant, a);
  }
  return static_cast<int>(cudaErrorInvalidValue);
}

// The launcher of a rule (LaunchRule of its struct; two-pass rules have their
// own launchers and refuse here). Each is defined in its own translation unit,
// generated by CMake from the registry (FUSEDOPT_DEFINE_LAUNCH), so the rules
// compile in parallel.
template <Rule R>
int LaunchFor(int dtype, int variant, const LaunchArgs& a);

#define FUSEDOPT_DEFINE_LAUNCH(ID)                                                    \
  namespace fusedopt {                                                                \
  namespace cuda {                                                                    \
  template <>                                                                         \
  int LaunchFor<Rule::ID>(int dtype, int variant, const LaunchArgs& a) {              \
    using S = RuleStruct<Rule::ID>::type;                                             \
    if constexpr (IsTwoPass<S>::value) {                                              \
      return static_cast<int>(cudaErrorInvalidValue);                                 \
    } else {                                                                          \
      return LaunchRule<S>(dtype, variant, a);                                        \
    }                                                                                 \
  }                                                                                   \
  }                                                                                   \
  }

}  // namespace cuda
}  // namespace fusedopt

#endif  // FUSEDOPT_CC_CUDA_ELEMENTWISE_CUH_
