// Overflow-checked size arithmetic for every entry point that takes sizes
// from a caller (the C ABI, the Python module, the XLA handlers).
//
// Note [checked sizes]: a size that a caller declares (an element count, a
// row count times a row length, a shape's product) is only trusted once every
// product and every byte extent it implies has been computed without
// overflow. A wrapped product is the worst kind of bad input: rows = 2^44 and
// row_size = 2^20 multiply to 0 in int64, and a check "rows * row_size ==
// size" then passes for a variable of 0 elements while the kernels write far
// outside it. So products and extents go through these functions, which
// report overflow instead of wrapping, and a buffer's byte extent must fit in
// ptrdiff_t and must not wrap the address space.
#ifndef FUSEDOPT_CC_CORE_CHECKED_SIZE_H_
#define FUSEDOPT_CC_CORE_CHECKED_SIZE_H_

#include <cstddef>
#include <cstdint>
#include <limits>

namespace fusedopt {

// *out = a * b; false (and *out unspecified) on int64 overflow.
inline bool CheckedMul(int64_t a, int64_t b, int64_t* out) {
  return !__builtin_mul_overflow(a, b, out);
}

// *out = a + b; false on int64 overflow.
inline bool CheckedAdd(int64_t a, int64_t b, int64_t* out) {
  return !__builtin_add_overflow(a, b, out);
}

// The product of dims[0..rank) into *out: false if a dimension is negative or
// the product overflows int64. An empty product is 1.
inline bool CheckedElementCount(const int64_t* dims, int rank, int64_t* out) {
  int64_t n = 1;
  for (int d = 0; d < rank; ++d) {
    if (dims[d] < 0 || !CheckedMul(n, dims[d], &n)) return false;
  }
  *out = n;
  return true;
}

// The largest byte extent of one buffer: a C++ object cannot be larger than
// PTRDIFF_MAX bytes (pointer differences inside it must be representable).
constexpr int64_t kMaxBufferBytes = static_cast<int64_t>(std::numeric_limits<ptrdiff_t>::max());

// The bytes of `elements` elements of `elem_bytes` each: false if elements is
// negative or the product exceeds kMaxBufferBytes.
inline bool CheckedBytes(int64_t elements, int64_t elem_bytes, int64_t* bytes) {
  return elements >= 0 && elem_bytes > 0 && CheckedMul(elements, elem_bytes, bytes) &&
         *bytes <= kMaxBufferBytes;
}

// The end address of a buffer of `elements` elements of `elem_bytes` at
// `begin`: false if its byte count overflows (CheckedBytes) or begin + bytes
// wraps the address space.
inline bool CheckedExtent(uintptr_t begin, int64_t elements, int64_t elem_bytes, uintptr_t* end) {
  int64_t bytes = 0;
  if (!CheckedBytes(elements, elem_bytes, &bytes)) return false;
  return !__builtin_add_overflow(begin, static_cast<uintptr_t>(bytes), end);
}

}  // namespace fusedopt

#endif  // FUSEDOPT_CC_CORE_CHECKED_SIZE_H_
