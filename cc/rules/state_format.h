// Low-precision optimizer state: the storage formats, their codes and the
// rounding bits (Note [low-precision state]). Shared by the CPU loops, the
// CUDA kernels and, through fusedopt.reference, the float64 tests.
//
// No TensorFlow header (nvcc compiles this in header-free .cu files).
#ifndef FUSEDOPT_CC_RULES_STATE_FORMAT_H_
#define FUSEDOPT_CC_RULES_STATE_FORMAT_H_

#include <cstdint>

#include "cc/rules/numeric.h"

namespace fusedopt {

// Note [low-precision state]: at the bandwidth roof only fewer bytes per
// parameter make a step faster (a float32 step with two slots moves 28). A rule's slots
// may be stored as
//   - kBFloat16: bfloat16, computed in float32, stored with stochastic
//     rounding (StochasticBFloat16: unbiased, E[stored] = value), 2 bytes;
//   - kInt8: one byte per element, in blocks (QuantLayout) with one float32
//     absmax per block, the block's largest |value|. A code is a small
//     floating-point number relative to the absmax (a dynamic exponent and
//     a linear fraction): signed slots (momenta) use the signed code, 4
//     exponent and 3 fraction bits, relative values down to 2^-17;
//     non-negative slots (second moments, accumulators: the rule's
//     kNonNegSlots) the unsigned one, 5 exponent and 3 fraction bits, down
//     to 2^-33. Quantization rounds to the nearest code; the block's absmax
//     itself is always exact.
// The update stays one pass over memory: a block's old codes are decoded,
// updated and its new values kept in registers (a stack buffer of one block)
// until the block's new absmax is known, then encoded.
//
// The variables themselves stay in their dtype; bfloat16 variables may also
// be stored with stochastic rounding (Plan::stochastic_weights), with no
// float32 master copy.
//
// Rounding bits are a counter-based hash of (seed, tensor position, stream,
// element index): deterministic for a given seed (the callers fold the step
// into it), independent of threads, chunks and ISA, the same on the GPU.
enum class StateFormat : int { kSame = 0, kBFloat16 = 1, kInt8 = 2 };
constexpr int kNumStateFormats = 3;

// Elements per quantization block (at most: a block never crosses a row).
constexpr int kQuantBlock = 256;

// Note [quantization blocks]: blocks never cross a row of the variable's
// first dimension, so a sparse update of some rows requantizes only their
// blocks and leaves every other row's codes and absmax untouched. A row of
// row_size elements has ceil(row_size / kQuantBlock) blocks, the last one
// possibly short; a rank-0 or rank-1 variable is one row. The absmax of block
// j of row r is absmax[r * BlocksPerRow() + j].
struct QuantLayout {
  int64_t rows = 1;
  int64_t row_size = 0;
  FUSEDOPT_HD int64_t BlocksPerRow() const { return (row_size + kQuantBlock - 1) / kQuantBlock; }
  FUSEDOPT_HD int64_t NumBlocks() const { return rows * BlocksPerRow(); }
};

// The layout of a variable of `rank` dimensions, the first of size dim0,
// with `elements` elements.
FUSEDOPT_HD QuantLayout QuantLayoutOf(int rank, int64_t dim0, int64_t elements) {
  QuantLayout l;
  if (rank >= 2 && dim0 > 0) {
    l.rows = dim0;
    l.row_size = elements / dim0;
  } else {
    l.rows = 1;
    l.row_size = elements;
  }
  return l;
}

// ---- The 8-bit codes ---------------------------------------------------------
//
// Signed: bit 7 the sign; m = bits 0-6, e = m >> 3, f = m & 7:
//   e == 0: f * 2^-17;  1 <= e: 2^(e - 15) * (1 + f / 8)
// so 0x78 is 1.0 (the largest code a value in [-1, 1] rounds to) and 0x7f a
// NaN; 0x79..0x7e (above 1) are never produced.
// Unsigned: e = bits 3-7, f = bits 0-2:
//   e == 0: f * 2^-33;  1 <= e: 2^(e - 31) * (1 + f / 8)
// so 0xf8 is 1.0 and 0xff a NaN.
constexpr uint8_t kSignedNan = 0x7f;
constexpr uint8_t kUnsignedNan = 0xff;

// c ? a : b on bits, as masks: both operands are computed whatever c is, so
// a float operation in one of them is no reason for the compiler to branch
// (under -ftrapping-math GCC will not if-convert a select whose operand it
// has sunk into the branch), and the loops vectorize.
FUSEDOPT_HD uint32_t SelectBits(bool c, uint32_t a, uint32_t b) {
  const uint32_t mask = 0u - static_cast<uint32_t>(c);
  return (a & mask) | (b & ~mask);
}

// The code of y (the value over the block's absmax, |y| <= 1; larger values
// are clamped to 1, negative values clamped to 0 for the unsigned code), to
// nearest (ties to even).
template <bool Unsigned>
FUSEDOPT_HD uint8_t EncodeCode(float y) {
  const uint32_t u = FloatBits(y);
  const uint32_t sign = Unsigned ? 0u : (u >> 24) & 0x80u;
  const bool nan = (u & 0x7fffffffu) > 0x7f800000u;
  // |y| (unsigned: 0 for a negative y), then min(|y|, 1), on the bits;
  // selects, no branches, so the loops vectorize.
  uint32_t a = u & (Unsigned ? ((u >> 31) - 1u) & 0x7fffffffu : 0x7fffffffu);
  a = a < 0x3f800000u ? a : 0x3f800000u;
  // Below the smallest normal code (2^-14, 2^-30) the codes are f * 2^-17
  // (2^-33): adding 2^6 (2^-10) puts the float's ulp there, and the FPU
  // rounds to nearest even.
  constexpr float kSubAdd = Unsigned ? 9.765625e-4f : 64.0f;
  constexpr uint32_t kSmallestNormal = Unsigned ? 0x30800000u : 0x38800000u;
  const uint32_t sub = FloatBits(BitsFloat(a) + kSubAdd) - FloatBits(kSubAdd);
  // Normal: round the fraction to 3 bits (ties to even, the carry rounds
  // into the exponent), then rebias (127 - 15 = 112; 127 - 31 = 96).
  constexpr uint32_t kRebias = (Unsigned ? 96u : 112u) << 3;
  const uint32_t normal = ((a + 0x7ffffu + ((a >> 20) & 1u)) >> 20) - kRebias;
  const uint32_t m = SelectBits(a < kSmallestNormal, sub, normal);
  const uint32_t code = SelectBits(nan, Unsigned ? kUnsignedNan : kSignedNan, sign | m);
  return static_cast<uint8_t>(code);
}

// The value of a code (relative to the absmax).
template <bool Unsigned>
FUSEDOPT_HD float DecodeCode(uint8_t b) {
  const uint32_t m = Unsigned ? uint32_t{b} : (uint32_t{b} & 0x7fu);
  const uint32_t sign = Unsigned ? 0u : (uint32_t{b} & 0x80u) << 24;
  constexpr uint32_t kRebias = (Unsigned ? 96u : 112u) << 3;
  constexpr float kSubUnit = Unsigned ? 1.16415321826934814453125e-10f  // 2^-33
                                      : 7.62939453125e-06f;             // 2^-17
  const uint32_t normal = (m + kRebias) << 20;
  const uint32_t sub = FloatBits(static_cast<float>(static_cast<int>(m)) * kSubUnit);
  const uint32_t nan_code = Unsigned ? kUnsignedNan : kSignedNan;
  const uint32_t mag = SelectBits(m == nan_code, 0x7fc00000u, SelectBits(m >= 8u, normal, sub));
  return BitsFloat(sign | mag);
}

// 1 / absmax for encoding a block (0 for an all-zero block, so its codes are
// 0; NaN or 0 for a non-finite absmax, whose block then decodes to NaN).
FUSEDOPT_HD float EncodeScale(float absmax) { return absmax > 0.0f ? 1.0f / absmax : 0.0f; }

// |x| as an ordered integer: for non-negative floats the bits order as the
// values do, and every NaN is above +inf, so an unsigned max over these is a
// NaN-propagating max of |x| that vectorizes.
FUSEDOPT_HD uint32_t AbsOrderBits(float x) { return FloatBits(x) & 0x7fffffffu; }

// ---- Rounding bits -----------------------------------------------------------
//
// A 32-bit mixing function (xor-shift-multiply, the constants of Chris
// Wellons' "lowbias32", public domain): every input bit affects every output
// bit.
FUSEDOPT_HD uint32_t Mix32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352du;
  x ^= x >> 15;
  x *= 0x846ca68bu;
  x ^= x >> 16;
  return x;
}

// Stochastic rounding to bfloat16 needs 16 random bits per stored value. An
// element's bits come from two hashes: hash A gives slot 0 its low and slot
// 1 its high 16 bits, hash B slot 2 its low and the variable its high 16.
constexpr uint32_t kStreamA = 0;
constexpr uint32_t kStreamB = 1;

// The key of (seed, tensor position in the call, stream) for elements
// [2^32 hi, 2^32 (hi + 1)) of a tensor; element i's hash is then
// Mix32(uint32(i) ^ key).
FUSEDOPT_HD uint32_t RoundingKey(uint64_t seed, int tensor, uint32_t stream, uint32_t hi) {
  uint32_t k = Mix32(static_cast<uint32_t>(seed >> 32) ^ 0x9e3779b9u);
  k = Mix32(k ^ static_cast<uint32_t>(seed));
  k = Mix32(k ^ (static_cast<uint32_t>(tensor) * 0x85ebca6bu + stream));
  return Mix32(k + hi);
}
FUSEDOPT_HD uint32_t RoundingBits(uint32_t key, int64_t index) {
  return Mix32(static_cast<uint32_t>(index) ^ key);
}
// Slot k's 16 bits (in the low half) from the element's hashes A and B.
FUSEDOPT_HD uint32_t SlotRoundingBits(int k, uint32_t a, uint32_t b) {
  return k == 0 ? a : (k == 1 ? a >> 16 : b);
}
// The variable's 16 bits from hash B.
FUSEDOPT_HD uint32_t VarRoundingBits(uint32_t b) { return b >> 16; }

// x rounded to bfloat16 stochastically with the random bits r (the low 16
// are used): up with
// probability (the 16 bits bfloat16 drops) / 2^16, so the expected value is x
// (the carry rounds into the exponent; the largest finite values may round up
// to infinity, as any unbiased rounding must). Inf and NaN are kept (NaN
// quiet).
// Only NaN needs its own path: adding fewer than 2^16 to an infinity's bits
// leaves its high half (0x7f80 or 0xff80) as it is, so infinities take the
// rounding path unchanged; a NaN's payload could carry into the sign.
FUSEDOPT_HD BFloat16 StochasticBFloat16(float x, uint32_t r) {
  const uint32_t u = FloatBits(x);
  const bool is_nan = (u & 0x7fffffffu) > 0x7f800000u;
  const uint32_t rounded = (u + (r & 0xffffu)) >> 16;
  return BFloat16{static_cast<uint16_t>(SelectBits(is_nan, (u >> 16) | 0x40u, rounded))};
}

}  // namespace fusedopt

#endif  // FUSEDOPT_CC_RULES_STATE_FORMAT_H_
