// Native (TensorFlow-free) tests of the CPU layer's index arithmetic.
//
// Tensors beyond 2^31 elements need int64 indexing everywhere. Rather than
// allocate 30 GB, these tests run the loops over element ranges that start
// beyond 2^31 and 2^32 on base pointers shifted back by that offset, so the
// kernels touch only a small real buffer through large indices. A loop that
// truncated its index to 32 bits would address memory far outside the buffer
// (crash) or produce different values (reported). Every compiled ISA is run.
//
// Prints "N passed, M failed"; exits non-zero on any failure.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "cc/cpu/chunking.h"
#include "cc/cpu/kernels.h"
#include "cc/rules/coefficients.h"

namespace {

int passed = 0, failed = 0;

void Check(bool ok, const std::string& what) {
  if (ok) {
    ++passed;
  } else {
    ++failed;
    std::printf("FAILED: %s\n", what.c_str());
  }
}

void TestChunkPlan() {
  using fusedopt::cpu::kChunkElements;
  const std::vector<int64_t> sizes{(int64_t{3} << 31) + 5, 0, 7, int64_t{1} << 33};
  const auto chunks = fusedopt::cpu::PlanChunks(sizes);
  std::vector<int64_t> covered(sizes.size(), 0);
  bool contiguous = true, bounded = true;
  for (const auto& c : chunks) {
    contiguous &= c.begin == covered[c.tensor];
    bounded &= c.end > c.begin && c.end - c.begin <= kChunkElements && c.end <= sizes[c.tensor];
    covered[c.tensor] = c.end;
  }
  Check(contiguous, "chunks are contiguous per tensor");
  Check(bounded, "chunks are non-empty, at most kChunkElements, inside the tensor");
  Check(covered == sizes, "chunks cover every element of every tensor");
  int64_t expected = 0;
  for (int64_t s : sizes) expected += (s + kChunkElements - 1) / kChunkElements;
  Check(static_cast<int64_t>(chunks.size()) == expected, "chunk count");
}

template <typename T>
bool SameBits(const std::vector<T>& a, const std::vector<T>& b) {
  return std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

void TestElementwiseAtLargeOffsets(const fusedopt::cpu::KernelTable& k) {
  using namespace fusedopt;
  const int64_t n = 4099;
  std::mt19937 gen(42);
  std::normal_distribution<float> normal;
  std::vector<float> var0(n), s0(n), s1(n), s2(n), grad(n);
  for (int64_t i = 0; i < n; ++i) {
    var0[i] = normal(gen);
    s0[i] = normal(gen);
    s1[i] = std::fabs(normal(gen)) + 0.5f;
    s2[i] = std::fabs(normal(gen)) + 0.5f;
    grad[i] = normal(gen);
  }
  struct RuleCase {
    Rule rule;
    int variant;
    Coeffs c;
  };
  const RuleCase cases[] = {
      {Rule::kSgd, 2, coeffs::Sgd(0.1, 0.9, 0.01)},
      {Rule::kAdam, 1, coeffs::Adam(1e-3, 0.9, 0.999, 1e-7, 0.01, 3)},
      {Rule::kNadam, 0, coeffs::Nadam(1e-3, 0.9, 0.999, 1e-7, 0.0, 0.4, 3)},
      {Rule::kAdamax, 0, coeffs::Adamax(1e-3, 0.9, 0.999, 1e-7, 0.0, 3)},
      {Rule::kRmsprop, 1, coeffs::Rmsprop(1e-3, 0.9, 0.5, 1e-7, 0.0)},
      {Rule::kAdagrad, 0, coeffs::Adagrad(1e-3, 1e-7, 0.0)},
      {Rule::kAdadelta, 0, coeffs::Adadelta(1.0, 0.95, 1e-7, 0.0)},
      {Rule::kFtrl, 1, coeffs::Ftrl(1e-3, -0.5, 0.01, 0.01, 0.0, 0.0, 0.0)},
      {Rule::kLion, 0, coeffs::Lion(1e-4, 0.9, 0.99, 0.0)},
  };
  const int dt = static_cast<int>(DType::kFloat32);
  for (const RuleCase& rc : cases) {
    const cpu::ElementwiseFn fn = k.Elementwise(rc.rule, dt, rc.variant, true, true);
    const GradXform gx{0.5, 1.5};
    // Reference: indices [0, n) on the real buffers.
    std::vector<float> rv = var0, r0 = s0, r1 = s1, r2 = s2;
    void* rslots[3] = {r0.data(), r1.data(), r2.data()};
    fn(rc.c, gx, rv.data(), rslots, grad.data(), 0, n);
    for (int64_t offset : {(int64_t{1} << 31) + 7, (int64_t{1} << 32) + 3, int64_t{5} << 32}) {
      std::vector<float> v = var0, a = s0, b = s1, c = s2;
      // Base pointers shifted back by `offset`: element `offset + i` of the
      // "tensor" is element i of the buffer.
      auto shift = [offset](float* p) {
        return reinterpret_cast<float*>(reinterpret_cast<uintptr_t>(p) - offset * sizeof(float));
      };
      void* slots[3] = {shift(a.data()), shift(b.data()), shift(c.data())};
      fn(rc.c, gx, shift(v.data()), slots, shift(grad.data()), offset, offset + n);
      Check(SameBits(v, rv) && SameBits(a, r0) && SameBits(b, r1) && SameBits(c, r2),
            std::string(k.isa) + ": rule " + std::string(InfoOf(rc.rule).name) +
                " at offset " + std::to_string(offset));
    }
  }
  // Gradient statistics.
  {
    double ref_sum = 0, sum = 0;
    bool ref_bad = false, bad = false;
    k.grad_stats[dt](grad.data(), 0, n, &ref_sum, &ref_bad);
    const int64_t offset = (int64_t{3} << 31) + 1;
    const float* shifted =
        reinterpret_cast<const float*>(reinterpret_cast<uintptr_t>(grad.data()) - offset * 4);
    k.grad_stats[dt](shifted, offset, offset + n, &sum, &bad);
    Check(sum == ref_sum && bad == ref_bad && !bad && sum > 0,
          std::string(k.isa) + ": gradient statistics at offset beyond 2^32");
  }
  // LAMB's two passes.
  const Coeffs lc = coeffs::Lamb(1e-3, 0.9, 0.999, 1e-6, 0.01, 3);
  std::vector<float> rv = var0, rm = s0, rs = s1;
  void* rslots[2] = {rm.data(), rs.data()};
  double rw = 0, ru = 0;
  const GradXform gx{0.5, 1.5};
  k.lamb_pass1[dt][1][1](lc, gx, rv.data(), rslots, grad.data(), 0, n, &rw, &ru);
  k.lamb_pass2[dt][1](lc, 0.5, rv.data(), rslots, 0, n);
  const int64_t offset = (int64_t{1} << 32) + 9;
  std::vector<float> v = var0, m = s0, s = s1;
  auto shift = [offset](float* p) {
    return reinterpret_cast<float*>(reinterpret_cast<uintptr_t>(p) - offset * sizeof(float));
  };
  void* slots[2] = {shift(m.data()), shift(s.data())};
  double w = 0, u = 0;
  k.lamb_pass1[dt][1][1](lc, gx, shift(v.data()), slots, shift(grad.data()), offset, offset + n, &w,
                         &u);
  k.lamb_pass2[dt][1](lc, 0.5, shift(v.data()), slots, offset, offset + n);
  Check(SameBits(v, rv) && SameBits(m, rm) && SameBits(s, rs) && w == rw && u == ru,
        std::string(k.isa) + ": LAMB at offset beyond 2^32");
}

// Note [low-precision state]: rounding keys change every 2^32 elements of a
// tensor. One call over an item that crosses 2^32 must give the bits of two
// calls split there (each starting in its own 2^32 block): stochastic
// bfloat16 state and weights element by element, and int8 state with
// stochastic weights over rows of one block each, the 2^32 boundary between
// two rows of one item (a sparse item, or a dense item of whole rows).
void TestStateKeysAcross2To32(const fusedopt::cpu::KernelTable& k) {
  using namespace fusedopt;
  const int dt = static_cast<int>(DType::kBFloat16);
  const Coeffs c = coeffs::Sgd(0.1, 0.9, 0.0);
  const GradXform gx{1.0, INFINITY};
  constexpr int64_t n = 64, before = 24;  // the boundary after element `before`
  const int64_t offset = (int64_t{1} << 32) - before;
  std::mt19937 gen(11);
  std::normal_distribution<float> normal;
  std::vector<BFloat16> var0(n), grad(n), mom0(n);
  for (int64_t i = 0; i < n; ++i) {
    var0[i] = FloatToBFloat16(normal(gen));
    grad[i] = FloatToBFloat16(normal(gen));
    mom0[i] = FloatToBFloat16(normal(gen));
  }
  // bfloat16 state: one call vs two.
  const cpu::StateElementwiseFn bf =
      k.StateElementwise(Rule::kSgd, dt, 1, StateFormat::kBFloat16, true, false, true);
  std::vector<BFloat16> v1 = var0, m1 = mom0, v2 = var0, m2 = mom0;
  cpu::StateArgs sa;
  sa.seed = 0x1234567890abcdefull;
  sa.tensor = 3;
  sa.offset = offset;
  void* one[3] = {m1.data(), nullptr, nullptr};
  bf(c, gx, sa, v1.data(), one, grad.data(), 0, n);
  void* two[3] = {m2.data(), nullptr, nullptr};
  bf(c, gx, sa, v2.data(), two, grad.data(), 0, before);
  cpu::StateArgs sb = sa;
  sb.offset = offset + before;
  void* two_b[3] = {m2.data() + before, nullptr, nullptr};
  bf(c, gx, sb, v2.data() + before, two_b, grad.data() + before, 0, n - before);
  Check(std::memcmp(v1.data(), v2.data(), n * 2) == 0 &&
            std::memcmp(m1.data(), m2.data(), n * 2) == 0,
        std::string(k.isa) + ": bfloat16 state: one call across 2^32 = two calls split there");
  // int8 state, stochastic bfloat16 weights, rows of 8 (one block each).
  const cpu::StateElementwiseFn q =
      k.StateElementwise(Rule::kSgd, dt, 1, StateFormat::kInt8, true, false, true);
  std::vector<uint8_t> codes0(n);
  // Codes of either sign below the NaN code (0x7f, 0xff).
  for (int64_t i = 0; i < n; ++i) codes0[i] = static_cast<uint8_t>((gen() % 0x7f) | (gen() & 0x80));
  std::vector<float> amax0(n / 8, 0.5f);
  std::vector<BFloat16> w1 = var0, w2 = var0;
  std::vector<uint8_t> q1 = codes0, q2 = codes0;
  std::vector<float> a1 = amax0, a2 = amax0;
  cpu::StateArgs ia;
  ia.seed = sa.seed;
  ia.tensor = 3;
  ia.offset = offset;
  ia.row_size = 8;
  ia.absmax[0] = a1.data();
  void* qs1[3] = {q1.data(), nullptr, nullptr};
  q(c, gx, ia, w1.data(), qs1, grad.data(), 0, n);
  cpu::StateArgs ib = ia;
  ib.absmax[0] = a2.data();
  void* qs2[3] = {q2.data(), nullptr, nullptr};
  q(c, gx, ib, w2.data(), qs2, grad.data(), 0, before);
  cpu::StateArgs ic = ia;
  ic.offset = offset + before;
  ic.absmax[0] = a2.data() + before / 8;
  void* qs3[3] = {q2.data() + before, nullptr, nullptr};
  q(c, gx, ic, w2.data() + before, qs3, grad.data() + before, 0, n - before);
  Check(std::memcmp(w1.data(), w2.data(), n * 2) == 0 && q1 == q2 &&
            std::memcmp(a1.data(), a2.data(), a1.size() * sizeof(float)) == 0,
        std::string(k.isa) + ": int8 state, stochastic weights: one call across 2^32 = two calls");
}

}  // namespace

void RunCoeffsTests(void (*check)(bool, const std::string&));  // coeffs_test.cc

int main() {
  RunCoeffsTests(Check);
  TestChunkPlan();
  int isas = 0;
  for (const std::string& isa : fusedopt::cpu::CompiledIsas()) {
    const fusedopt::cpu::KernelTable* k = fusedopt::cpu::KernelsForIsa(isa);
    if (k == nullptr) continue;  // not supported by this CPU
    ++isas;
    TestElementwiseAtLargeOffsets(*k);
    TestStateKeysAcross2To32(*k);
  }
  Check(isas >= 1, "at least the baseline ISA ran");
  std::printf("%d passed, %d failed\n", passed, failed);
  return failed == 0 ? 0 : 1;
}
