// Note [chunks]: a call's work is a flat list of fixed-size chunks over all of
// its tensors, so that one call balances across threads whether it updates one
// huge tensor or a thousand tiny ones. The chunk boundaries depend only on the
// tensor sizes, never on the thread count, which keeps any per-chunk reduction
// (norms, non-finite checks) deterministic.
#ifndef FUSEDOPT_CC_CPU_CHUNKING_H_
#define FUSEDOPT_CC_CPU_CHUNKING_H_

#include <cstddef>
#include <cstdint>
#include <vector>

namespace fusedopt {
namespace cpu {

// Elements per chunk: 32K elements is 128 KiB of float32 per stream, large
// enough to amortize scheduling, small enough to balance two to dozens of
// threads on tensors of a few million elements.
constexpr int64_t kChunkElements = int64_t{1} << 15;

struct Chunk {
  int32_t tensor;
  int64_t begin;
  int64_t end;
};

inline std::vector<Chunk> PlanChunks(const std::vector<int64_t>& sizes,
                                     int64_t chunk_elements = kChunkElements) {
  std::vector<Chunk> chunks;
  for (size_t t = 0; t < sizes.size(); ++t) {
    for (int64_t b = 0; b < sizes[t]; b += chunk_elements) {
      const int64_t e = sizes[t] - b < chunk_elements ? sizes[t] : b + chunk_elements;
      chunks.push_back(Chunk{static_cast<int32_t>(t), b, e});
    }
  }
  return chunks;
}

}  // namespace cpu
}  // namespace fusedopt

#endif  // FUSEDOPT_CC_CPU_CHUNKING_H_
