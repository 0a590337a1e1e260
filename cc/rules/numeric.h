// Numeric helpers shared by the CPU loops and the CUDA kernels.
//
// No TensorFlow header may be included here (see docs/ARCHITECTURE.md): this
// file is compiled by nvcc in header-free .cu files and by the per-ISA CPU
// translation units.
//
// 16-bit floating point values are carried as their bit patterns (Half,
// BFloat16). They are layout-compatible with Eigen::half / Eigen::bfloat16 and
// with CUDA's __half / __nv_bfloat16, so the TF layer can reinterpret buffers.
#ifndef FUSEDOPT_CC_RULES_NUMERIC_H_
#define FUSEDOPT_CC_RULES_NUMERIC_H_

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define FUSEDOPT_HD __host__ __device__ __forceinline__
// Host-device functions too large to force inline (the coefficients).
#define FUSEDOPT_HDI __host__ __device__ inline
#else
#define FUSEDOPT_HD inline __attribute__((always_inline))
#define FUSEDOPT_HDI inline
#endif

namespace fusedopt {

struct Half {
  uint16_t bits;
};
struct BFloat16 {
  uint16_t bits;
};
static_assert(sizeof(Half) == 2 && sizeof(BFloat16) == 2, "16-bit storage");

// The element types an op can be instantiated for, in one fixed order that the
// CPU dispatch tables and the CUDA launchers share.
enum class DType : int { kFloat16 = 0, kBFloat16 = 1, kFloat32 = 2, kFloat64 = 3 };
constexpr int kNumDTypes = 4;

// Bytes per element of a DType (given as its index).
constexpr int ElemBytesOf(DType d) {
  return d == DType::kFloat64 ? 8 : (d == DType::kFloat32 ? 4 : 2);
}
constexpr int ElemBytesOf(int dt) { return ElemBytesOf(static_cast<DType>(dt)); }

// opmath: the type arithmetic is done in. float for the 16-bit types, the type
// itself otherwise.
template <typename T>
struct OpMath {
  using type = T;
};
template <>
struct OpMath<Half> {
  using type = float;
};
template <>
struct OpMath<BFloat16> {
  using type = float;
};
template <typename T>
using opmath_t = typename OpMath<T>::type;

FUSEDOPT_HD uint32_t FloatBits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
}
FUSEDOPT_HD float BitsFloat(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

// Note [rounding]: every store of a 16-bit type rounds to nearest, ties to
// even, with NaN kept quiet and overflow going to infinity. Written with plain
// integer and float operations so the compilers can vectorize the CPU loops;
// the results are bit-identical on host and device.
FUSEDOPT_HD float BFloat16ToFloat(BFloat16 h) { return BitsFloat(uint32_t{h.bits} << 16); }

FUSEDOPT_HD BFloat16 FloatToBFloat16(float f) {
  const uint32_t u = FloatBits(f);
  const bool is_nan = (u & 0x7fffffffu) > 0x7f800000u;
  const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  const uint32_t quiet_nan = (u >> 16) | 0x40u;
  return BFloat16{static_cast<uint16_t>(is_nan ? quiet_nan : rounded)};
}

FUSEDOPT_HD float HalfToFloat(Half h) {
  const uint32_t sign = uint32_t{static_cast<uint32_t>(h.bits) & 0x8000u} << 16;
  const uint32_t em = h.bits & 0x7fffu;
  // Normal numbers: rebias the exponent (127 - 15 = 112).
  const uint32_t normal = (em << 13) + (112u << 23);
  // Inf/NaN: all-ones exponent, mantissa kept.
  const uint32_t special = 0x7f800000u | ((em & 0x3ffu) << 13);
  // Subnormals (and zero): the value is em * 2^-24, exact in float.
  const uint32_t subnormal = FloatBits(static_cast<float>(em) * 5.9604644775390625e-8f);
  const uint32_t mag = em >= 0x7c00u ? special : (em >= 0x0400u ? normal : subnormal);
  return BitsFloat(sign | mag);
}

FUSEDOPT_HD Half FloatToHalf(float f) {
  const uint32_t u = FloatBits(f);
  const uint32_t sign = (u >> 16) & 0x8000u;
  const uint32_t x = u & 0x7fffffffu;
  // >= 65536 (after rounding, anything from 65520 up overflows; handled by
  // the normal path's carry into the exponent): infinity, or a quiet NaN.
  const uint32_t special = x > 0x7f800000u ? 0x7e00u : 0x7c00u;
  // Below 2^-14 the result is subnormal: adding 0.5 places the bits at the
  // half's subnormal ulp (2^-24) and the FPU rounds to nearest even.
  const uint32_t subnormal = FloatBits(BitsFloat(x) + 0.5f) - 0x3f000000u;
  // Normal: rebias (-112 << 23), round to nearest even at bit 13.
  const uint32_t normal = (x + 0xc8000fffu + ((x >> 13) & 1u)) >> 13;
  const uint32_t mag = x >= 0x47800000u ? special : (x < 0x38800000u ? subnormal : normal);
  return Half{static_cast<uint16_t>(sign | mag)};
}

// Load a stored value into opmath, and round an opmath value back for storage.
template <typename T>
FUSEDOPT_HD opmath_t<T> Load(T v) {
  return v;
}
template <>
FUSEDOPT_HD float Load<Half>(Half v) {
  return HalfToFloat(v);
}
template <>
FUSEDOPT_HD float Load<BFloat16>(BFloat16 v) {
  return BFloat16ToFloat(v);
}

template <typename T>
FUSEDOPT_HD T Store(opmath_t<T> v) {
  return v;
}
template <>
FUSEDOPT_HD Half Store<Half>(float v) {
  return FloatToHalf(v);
}
template <>
FUSEDOPT_HD BFloat16 Store<BFloat16>(float v) {
  return FloatToBFloat16(v);
}

}  // namespace fusedopt

#endif  // FUSEDOPT_CC_RULES_NUMERIC_H_
