// Low-precision optimizer state on the GPU (Note [low-precision state] in
// cc/rules/state_format.h): the kernels of the formats bfloat16 (slots in
// bfloat16, stochastically rounded) and int8 (uint8 codes and a float32
// absmax per block of at most 256 elements along rows, Note [quantization
// blocks]), and bfloat16 variables stored stochastically. The math is the
// CPU's, through the same host-device functions (the rule's Apply, Decay,
// TransformGrad: UpdateRegisters; the codes, the rounding hash and
// StochasticBFloat16 of state_format.h; StoreVar of state_update.h), so the
// bits are the CPU loops' (cc/cpu/kernels_isa.cc).
//
// Note [GPU int8 blocks]: a thread block of kQuantBlock threads updates one
// quantization block at a time, one element per thread: it decodes its
// element with the block's old absmax (every thread reads it before the
// barrier after which thread 0 writes the new one), updates it on registers,
// the block's new absmax is a max-reduction of the AbsOrderBits of the new
// values (warp shuffles, then the eight warps' maxima in shared memory, read
// by every thread in the same order), and each thread encodes its element.
// A max is exact, so the absmax and therefore the codes are the CPU's.
//
// Included by the generated per-rule translation units (FUSEDOPT_DEFINE_LAUNCH
// in elementwise.cuh); no TensorFlow header.
#ifndef FUSEDOPT_CC_CUDA_STATE_CUH_
#define FUSEDOPT_CC_CUDA_STATE_CUH_

#include <cuda_runtime.h>

#include "cc/cuda/elementwise.cuh"
#include "cc/rules/state_update.h"

namespace fusedopt {
namespace cuda {

static_assert(kQuantBlock == kThreads, "one thread per element of a quantization block");

// Tensors per launch of a state kernel (their parameter block, ~15 KB).
constexpr int kStateCapacity = 128;
// Elements a thread block updates per work unit in the element formats.
constexpr int64_t kStateUnit = int64_t{kThreads} * 4;

struct StateParams {
  int64_t work_end[kStateCapacity];  // cumulative work units (int8: quantization blocks)
  int64_t n[kStateCapacity];
  int64_t row_size[kStateCapacity];  // int8: elements per row (QuantLayout::row_size)
  void* var[kStateCapacity];
  const void* grad[kStateCapacity];
  void* slot[kMaxSlots][kStateCapacity];
  float* absmax[kMaxSlots][kStateCapacity];
  double scale[kStateCapacity];  // GradXform (identity: 1, +inf)
  double clip[kStateCapacity];
  int tensor[kStateCapacity];  // the tensor's position in the call (rounding keys)
  uint64_t seed;               // the call's rounding seed
  int count;
};
static_assert(sizeof(StateParams) < 32000, "the kernel parameter limit is 32764 bytes");

// The tensor of work unit u (uniform across the block).
__device__ __forceinline__ int StateTensorOf(const StateParams& p, int64_t u) {
  int lo = 0, hi = p.count - 1;
  while (lo < hi) {
    const int mid = (lo + hi) >> 1;
    if (p.work_end[mid] > u) {
      hi = mid;
    } else {
      lo = mid + 1;
    }
  }
  return lo;
}

// The rounding key of a stream for element i of tensor t (Note [low-precision
// state]: a key per 2^32 elements).
__device__ __forceinline__ uint32_t StateKey(const StateParams& p, int t, uint32_t stream,
                                             int64_t i) {
  return RoundingKey(p.seed, p.tensor[t], stream,
                     static_cast<uint32_t>(static_cast<uint64_t>(i) >> 32));
}

// Formats kBFloat16 and kSame (with W: bfloat16 variables stochastically
// rounded), element by element.
template <typename Rule, typename T, int V, bool D, StateFormat F, bool W>
__global__ void __launch_bounds__(kThreads)
    StateElementKernel(const __grid_constant__ StateParams p, const OpCoeffs<float> oc,
                       const int64_t total) {
  static_assert(F != StateFormat::kInt8);
  using S = SlotStorage<F, T>;
  constexpr int K = SlotsOf<Rule>(V);
  for (int64_t u = blockIdx.x; u < total; u += gridDim.x) {
    const int t = StateTensorOf(p, u);
    const int64_t begin = (u - (t == 0 ? 0 : p.work_end[t - 1])) * kStateUnit;
    const int64_t rest = p.n[t] - begin;
    const int64_t len = rest < kStateUnit ? rest : kStateUnit;
    T* var = static_cast<T*>(p.var[t]);
    const T* grad = static_cast<const T*>(p.grad[t]);
    S* s0 = K > 0 ? static_cast<S*>(p.slot[0][t]) : nullptr;
    S* s1 = K > 1 ? static_cast<S*>(p.slot[1][t]) : nullptr;
    S* s2 = K > 2 ? static_cast<S*>(p.slot[2][t]) : nullptr;
    const float gscale = static_cast<float>(p.scale[t]);
    const float gclip = static_cast<float>(p.clip[t]);
    const uint32_t ka = StateKey(p, t, kStreamA, begin);
    const uint32_t kb = StateKey(p, t, kStreamB, begin);
    for (int64_t e = threadIdx.x; e < len; e += kThreads) {
      const int64_t i = begin + e;
      float v = Load(var[i]);
      float s[kMaxSlots + 1] = {0.0f, 0.0f, 0.0f, 0.0f};
      if constexpr (K > 0) s[0] = Load(s0[i]);
      if constexpr (K > 1) s[1] = Load(s1[i]);
      if constexpr (K > 2) s[2] = Load(s2[i]);
      UpdateRegisters<Rule, V, D>(oc.c, gscale, gclip, v, s, Load(grad[i]));
      StoreStateElement<T, F, W, K>(var, s0, s1, s2, i, i, v, s, ka, kb);
    }
  }
}

// The largest of every thread's x in the block (Note [GPU int8 blocks]):
// all threads get it. `scratch`: kThreads / 32 words of shared memory, free
// on entry (the caller's loop ends with a barrier).
__device__ __forceinline__ uint32_t BlockMax(uint32_t x, uint32_t* scratch) {
  for (int off = 16; off > 0; off >>= 1) {
    const uint32_t y = __shfl_xor_sync(0xffffffffu, x, off);
    x = x > y ? x : y;
  }
  if ((threadIdx.x & 31) == 0) scratch[threadIdx.x >> 5] = x;
  __syncthreads();
  uint32_t m = scratch[0];
#pragma unroll
  for (int w = 1; w < kThreads / 32; ++w) m = m > scratch[w] ? m : scratch[w];
  return m;
}

template <typename Rule, int k>
__device__ __forceinline__ void DecodeSlot(const StateParams& p, int t, int64_t block, int64_t i,
                                           bool active, float* s) {
  const float amax = p.absmax[k][t][block];
  if (active) {
    s[k] = DecodeCode<kNonNeg<Rule, k>>(static_cast<const uint8_t*>(p.slot[k][t])[i]) * amax;
  }
}

template <typename Rule, int k>
__device__ __forceinline__ void EncodeSlot(const StateParams& p, int t, int64_t block, int64_t i,
                                           bool active, float x, uint32_t* scratch) {
  const uint32_t bits = BlockMax(active ? AbsOrderBits(x) : 0u, scratch);
  const float amax = BitsFloat(bits);
  if (active) {
    static_cast<uint8_t*>(p.slot[k][t])[i] = EncodeCode<kNonNeg<Rule, k>>(x * EncodeScale(amax));
  }
  if (threadIdx.x == 0) p.absmax[k][t][block] = amax;
  __syncthreads();  // scratch is free again
}

// Format kInt8: one quantization block per work unit (Note [GPU int8 blocks]).
template <typename Rule, typename T, int V, bool D, bool W>
__global__ void __launch_bounds__(kThreads)
    StateInt8Kernel(const __grid_constant__ StateParams p, const OpCoeffs<float> oc,
                    const int64_t total) {
  constexpr int K = SlotsOf<Rule>(V);
  __shared__ uint32_t scratch[kThreads / 32];
  for (int64_t u = blockIdx.x; u < total; u += gridDim.x) {
    const int t = StateTensorOf(p, u);
    const int64_t block = u - (t == 0 ? 0 : p.work_end[t - 1]);
    const int64_t row_size = p.row_size[t];
    const int64_t per_row = (row_size + kQuantBlock - 1) / kQuantBlock;
    const int64_t row = block / per_row;
    const int64_t col = (block - row * per_row) * kQuantBlock;
    const int64_t rest = row_size - col;
    const int len = static_cast<int>(rest < kQuantBlock ? rest : kQuantBlock);
    const int64_t i = row * row_size + col + threadIdx.x;
    const bool active = static_cast<int>(threadIdx.x) < len;
    float v = 0.0f;
    float s[kMaxSlots + 1] = {0.0f, 0.0f, 0.0f, 0.0f};
    // Every thread reads the old absmax before the first barrier of
    // EncodeSlot, after which thread 0 writes the new one.
    if constexpr (K > 0) DecodeSlot<Rule, 0>(p, t, block, i, active, s);
    if constexpr (K > 1) DecodeSlot<Rule, 1>(p, t, block, i, active, s);
    if constexpr (K > 2) DecodeSlot<Rule, 2>(p, t, block, i, active, s);
    if (active) {
      T* var = static_cast<T*>(p.var[t]);
      v = Load(var[i]);
      const float g = Load(static_cast<const T*>(p.grad[t])[i]);
      UpdateRegisters<Rule, V, D>(oc.c, static_cast<float>(p.scale[t]),
                                  static_cast<float>(p.clip[t]), v, s, g);
      var[i] = StoreVar<T, W>(v, W ? StateKey(p, t, kStreamB, i) : 0u, i);
    }
    if constexpr (K > 0) EncodeSlot<Rule, 0>(p, t, block, i, active, s[0], scratch);
    if constexpr (K > 1) EncodeSlot<Rule, 1>(p, t, block, i, active, s[1], scratch);
    if constexpr (K > 2) EncodeSlot<Rule, 2>(p, t, block, i, active, s[2], scratch);
  }
}

// What a state launch is given (the C ABI's fusedopt_cuda_state_multi).
struct StateLaunchArgs {
  bool decay;
  StateFormat format;
  bool stochastic_weights;
  uint64_t seed;
  Coeffs c;
  int num;
  void* const* vars;
  void* const* slots;      // [kMaxSlots * i + k]
  float* const* absmax;    // [kMaxSlots * i + k] (int8)
  const void* const* grads;
  const int64_t* sizes;
  const int64_t* row_sizes;  // int8: QuantLayout::row_size (null: one row)
  const int* tensors;        // positions in the call (null: 0, 1, ...)
  const double* scales;      // null: no transform
  const double* clips;
  cudaStream_t stream;
};

template <typename Rule, typename T, int V, bool D, StateFormat F, bool W>
int LaunchState(const StateLaunchArgs& a) {
  constexpr int K = SlotsOf<Rule>(V);
  constexpr bool kInt8 = F == StateFormat::kInt8;
  const OpCoeffs<float> oc = OpCoeffs<float>::From(a.c);
  StateParams p;
  p.count = 0;
  p.seed = a.seed;
  int64_t units = 0;
  auto launch = [&]() -> int {
    if (p.count == 0) return 0;
    if constexpr (kInt8) {
      StateInt8Kernel<Rule, T, V, D, W>
          <<<MultiTensorGrid(units), kThreads, 0, a.stream>>>(p, oc, units);
    } else {
      StateElementKernel<Rule, T, V, D, F, W>
          <<<MultiTensorGrid(units), kThreads, 0, a.stream>>>(p, oc, units);
    }
    p.count = 0;
    units = 0;
    return static_cast<int>(cudaGetLastError());
  };
  for (int i = 0; i < a.num; ++i) {
    const int64_t n = a.sizes[i];
    if (n <= 0) continue;
    const int t = p.count;
    p.n[t] = n;
    const int64_t row_size = a.row_sizes != nullptr && a.row_sizes[i] > 0 ? a.row_sizes[i] : n;
    if (n % row_size != 0) return static_cast<int>(cudaErrorInvalidValue);
    p.row_size[t] = row_size;
    p.var[t] = a.vars[i];
    p.grad[t] = a.grads[i];
    for (int k = 0; k < kMaxSlots; ++k) {
      p.slot[k][t] = k < K ? a.slots[kMaxSlots * i + k] : nullptr;
      p.absmax[k][t] = kInt8 && k < K ? a.absmax[kMaxSlots * i + k] : nullptr;
    }
    p.scale[t] = a.scales != nullptr ? a.scales[i] : 1.0;
    p.clip[t] = a.clips != nullptr ? a.clips[i] : __builtin_huge_val();
    p.tensor[t] = a.tensors != nullptr ? a.tensors[i] : i;
    units += kInt8 ? (n / row_size) * ((row_size + kQuantBlock - 1) / kQuantBlock)
                   : (n + kStateUnit - 1) / kStateUnit;
    p.work_end[t] = units;
    p.count = t + 1;
    if (p.count == kStateCapacity) {
      const int err = launch();
      if (err != 0) return err;
    }
  }
  return launch();
}

// The (format, stochastic weights) of a launch: float32 variables take
// bfloat16 or int8 state, bfloat16 variables any format and W.
template <typename Rule, typename T, int V, bool D>
int LaunchStateFormat(const StateLaunchArgs& a) {
  constexpr bool kBf16Var = std::is_same_v<T, BFloat16>;
  switch (a.format) {
    case StateFormat::kSame:
      if constexpr (kBf16Var) {
        if (a.stochastic_weights) return LaunchState<Rule, T, V, D, StateFormat::kSame, true>(a);
      }
      return static_cast<int>(cudaErrorInvalidValue);  // (the plain kernels' case)
    case StateFormat::kBFloat16:
      if constexpr (kBf16Var) {
        if (a.stochastic_weights) {
          return LaunchState<Rule, T, V, D, StateFormat::kBFloat16, true>(a);
        }
      }
      return LaunchState<Rule, T, V, D, StateFormat::kBFloat16, false>(a);
    case StateFormat::kInt8:
      if constexpr (kBf16Var) {
        if (a.stochastic_weights) return LaunchState<Rule, T, V, D, StateFormat::kInt8, true>(a);
      }
      return LaunchState<Rule, T, V, D, StateFormat::kInt8, false>(a);
  }
  return static_cast<int>(cudaErrorInvalidValue);
}

template <typename Rule, typename T, int V = 0>
int LaunchStateVariant(int variant, const StateLaunchArgs& a) {
  if constexpr (V < NumStateVariantsOf<Rule>::value) {
    if (variant == V) {
      if (a.format == StateFormat::kInt8 && V >= NumInt8StateVariantsOf<Rule>::value) {
        return static_cast<int>(cudaErrorInvalidValue);
      }
      return a.decay ? LaunchStateFormat<Rule, T, V, true>(a)
                     : LaunchStateFormat<Rule, T, V, false>(a);
    }
    return LaunchStateVariant<Rule, T, V + 1>(variant, a);
  } else {
    return static_cast<int>(cudaErrorInvalidValue);
  }
}

// Launches Rule with low-precision state on a.num tensors (float32 or
// bfloat16 variables).
template <typename Rule>
int LaunchStateRule(int dtype, int variant, const StateLaunchArgs& a) {
  if constexpr (NumStateVariantsOf<Rule>::value == 0) {
    return static_cast<int>(cudaErrorInvalidValue);
  } else {
    if (a.num == 0) return 0;
    switch (static_cast<DType>(dtype)) {
      case DType::kBFloat16:
        return LaunchStateVariant<Rule, BFloat16>(variant, a);
      case DType::kFloat32:
        return LaunchStateVariant<Rule, float>(variant, a);
      default:
        return static_cast<int>(cudaErrorInvalidValue);
    }
  }
}

// The state launcher of a rule, defined with its plain launcher in the
// rule's generated translation unit (FUSEDOPT_DEFINE_STATE_LAUNCH).
template <Rule R>
int LaunchStateFor(int dtype, int variant, const StateLaunchArgs& a);

#define FUSEDOPT_DEFINE_STATE_LAUNCH(ID)                                                   \
  namespace fusedopt {                                                                     \
  namespace cuda {                                                                         \
  template <>                                                                              \
  int LaunchStateFor<Rule::ID>(int dtype, int variant, const StateLaunchArgs& a) {         \
    using S = RuleStruct<Rule::ID>::type;                                                  \
    if constexpr (IsTwoPass<S>::value) {                                                   \
      return static_cast<int>(cudaErrorInvalidValue);                                      \
    } else {                                                                               \
      return LaunchStateRule<S>(dtype, variant, a);                                        \
    }                                                                                      \
  }                                                                                        \
  }                                                                                        \
  }

}  // namespace cuda
}  // namespace fusedopt

#endif  // FUSEDOPT_CC_CUDA_STATE_CUH_
