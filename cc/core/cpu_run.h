// Running a planned call on the CPU, without TensorFlow: the operands of a
// call as raw pointers, the gradient statistics pass, the dense and sparse
// work lists, and the loop over them. The TF kernels run these on
// TensorFlow's intra-op pool, the C ABI (cc/native) on its own threads: the
// caller passes a ParallelFor.
#ifndef FUSEDOPT_CC_CORE_CPU_RUN_H_
#define FUSEDOPT_CC_CORE_CPU_RUN_H_

#include <algorithm>
#include <array>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "cc/core/grad_options.h"
#include "cc/core/plan.h"
#include "cc/cpu/chunking.h"
#include "cc/rules/numeric.h"
#include "cc/rules/update_rules.h"

namespace fusedopt {

// Runs work(chunk) for every chunk, in any order and on any threads;
// `bytes_per_element` is a cost hint.
using ParallelFor = std::function<void(const std::vector<cpu::Chunk>& chunks,
                                       int bytes_per_element,
                                       const std::function<void(const cpu::Chunk&)>& work)>;

// The variables and slots of one call, after validation, as raw pointers.
struct Operands {
  int n = 0;
  int num_slots = 0;                                // slot lists given, in rule order
  std::vector<void*> vars;                          // [n]
  std::vector<std::array<void*, kMaxSlots>> slots;  // [n][num_slots]
  std::vector<const void*> grads;                   // [n]
  std::vector<int64_t> sizes;                       // [n]
  std::vector<GradXform> xforms;                    // [n]
  std::vector<char> rank0;                          // [n]: a scalar variable
  // Low-precision state, kInt8 (Note [quantization blocks]): each slot's
  // absmax array [n][num_slots] and each variable's layout [n].
  std::vector<std::array<float*, kMaxSlots>> absmax;
  std::vector<QuantLayout> layouts;
  bool transform = false;
  bool IsRank0(int i) const { return !rank0.empty() && rank0[i] != 0; }
};

// One contiguous run of elements: var and slots from `offset`, gradient from
// `grad`, `length` elements.
struct Item {
  int tensor;
  int64_t offset;
  const void* grad;
  int64_t length;
};

// The dense calls' items: fixed-size chunks (Note [chunks]) of every tensor;
// with kInt8 state, chunks of whole quantization blocks (a row's blocks, or
// whole rows).
std::vector<Item> DenseItems(const Operands& ops, int elem_bytes,
                             StateFormat format = StateFormat::kSame);

// Bytes per element of a slot in `format` for variables of elem_bytes.
inline int SlotElemBytes(StateFormat format, int elem_bytes) {
  return format == StateFormat::kSame ? elem_bytes : (format == StateFormat::kBFloat16 ? 2 : 1);
}

// Runs a call's items: an elementwise rule in one pass, or LAMB's two passes
// with per-item partial norms combined per tensor in item order (Note
// [deterministic sums]). Pointers are ops.vars / ops.slots plus the items'
// offsets; dt is the DType index, elem_bytes its size.
//
// LAMB's sums of squares are fixed-order sums in double unless `lamb_norms` is
// given: it runs after pass 1 (the slots written, the variables not yet) and
// replaces the per-tensor sums (Note [TF norms] in cc/tf/tf_numerics.h). It
// must not fail: whatever it needs is allocated before the call.
using LambNormsFn = std::function<void(std::vector<double>* w_sq, std::vector<double>* u_sq)>;

// What a caller with TensorFlow's kernels at hand puts in the place of parts
// of a CPU run, to give Keras' bits (cc/tf/tf_numerics.h): LAMB's sums of
// squares, or the whole run (Ftrl's TF Pow). Made once the call is checked,
// before anything is written (allocations happen then).
struct TfForms {
  LambNormsFn lamb_norms;
  std::function<void()> run;
};
using TfFormsMaker = std::function<TfForms(const Operands& ops, const Plan& plan)>;
void RunItemsCpu(const ParallelFor& pfor, const std::vector<Item>& items, const Operands& ops,
                 const Plan& plan, bool lamb, Rule rule, int dt, int elem_bytes,
                 const LambNormsFn& lamb_norms = nullptr);

// Pass 0: per-tensor sum of squares of ops.grads[i][0, ops.sizes[i]) and
// whether any element is inf or NaN; per-chunk partials combined in chunk
// order (Note [deterministic sums]).
void GradStatsCpu(const ParallelFor& pfor, const Operands& ops, int dt, int elem_bytes,
                  std::vector<double>* sum_sq, bool* nonfinite);

// Note [skip after transform]: skip_nonfinite judges the gradients the update
// uses, g' = TransformGrad(g, scale_i, clip_value) in opmath: a step is skipped
// when a tensor's scale is not finite (a NaN or inf grad_scale, a global norm
// that is not finite) or any g' is inf or NaN (g * scale can overflow where g
// did not; clip_value clips an inf to a finite g', never a NaN). The stats
// pass decides most steps: with finite raw gradients and
// sqrt(sum_sq) * |scale| (an upper bound of every |g * scale|) below the
// opmath's largest finite value, no g' can overflow. Only otherwise is a
// tensor read again, element by element, with the kernels' own TransformGrad.
//
// Whether tensor i needs that element check (sizes[i] > 0 assumed).
bool NeedsElementCheck(const GradXform& x, double sum_sq, bool raw_nonfinite, bool f64);
// The element check of `n` gradient elements of dtype `dt` in host memory:
// true if any transformed gradient is inf or NaN.
bool AnyTransformedNonfinite(const void* grad, int64_t n, int dt, const GradXform& x);
// The whole judgement for a call whose gradients are in host memory.
bool SkipStep(const Operands& ops, int dt, bool raw_nonfinite, const std::vector<double>& sum_sq);

// A CPU call's gradient options: pass 0 when an option needs it, then the
// per-tensor transforms (ops->xforms, ops->transform). Returns true when
// skip_nonfinite skips the step (Note [skip after transform]): then nothing
// may be written.
bool PrepareGradOptionsCpu(const ParallelFor& pfor, const GradOptions& options, int dt,
                           int elem_bytes, Operands* ops);

// Note [sparse updates] (cc/tf/fused_ops.cc), the TensorFlow-free part.
//
// Checks every index against [0, rows) and sorts the positions by row,
// stably: `order` lists the positions, `unique_rows` the distinct rows in
// increasing order and `segment_end[j]` the end in `order` of row j's
// duplicates. Returns "" or a message naming the first bad index.
template <typename Index>
std::string SortRows(const Index* idx, int64_t k, int64_t rows, int tensor,
                     const std::string& var_label, std::vector<int64_t>* order,
                     std::vector<int64_t>* unique_rows, std::vector<int64_t>* segment_end) {
  for (int64_t p = 0; p < k; ++p) {
    const int64_t r = static_cast<int64_t>(idx[p]);
    if (r < 0 || r >= rows) {
      return "grad_indices[" + std::to_string(tensor) + "] has index " + std::to_string(r) +
             " at position " + std::to_string(p) + ", outside [0, " + std::to_string(rows) +
             ") for " + var_label + "; nothing was updated";
    }
  }
  order->resize(k);
  for (int64_t p = 0; p < k; ++p) (*order)[p] = p;
  std::stable_sort(order->begin(), order->end(),
                   [&](int64_t a, int64_t b) { return idx[a] < idx[b]; });
  unique_rows->clear();
  segment_end->clear();
  for (int64_t q = 0; q < k; ++q) {
    const int64_t r = static_cast<int64_t>(idx[(*order)[q]]);
    if (unique_rows->empty() || unique_rows->back() != r) {
      if (!unique_rows->empty()) segment_end->push_back(q);
      unique_rows->push_back(r);
    }
  }
  if (!unique_rows->empty()) segment_end->push_back(k);
  return "";
}

// Sums each unique row's duplicate gradient rows in position order (in
// opmath, rounded once to S): dst[j] = sum of src rows order[seg_start(j) ..
// segment_end[j]).
template <typename S>
void SumRows(const S* src, int64_t row_size, const std::vector<int64_t>& order,
             const std::vector<int64_t>& segment_end, S* dst) {
  using M = opmath_t<S>;
  if (segment_end.empty()) return;  // no row: no accumulator (whatever row_size says)
  std::vector<M> acc(row_size);
  int64_t q = 0;
  for (size_t j = 0; j < segment_end.size(); ++j) {
    std::fill(acc.begin(), acc.end(), M(0));
    for (; q < segment_end[j]; ++q) {
      const S* row = src + order[q] * row_size;
      for (int64_t e = 0; e < row_size; ++e) acc[e] += Load(row[e]);
    }
    for (int64_t e = 0; e < row_size; ++e) dst[j * row_size + e] = Store<S>(acc[e]);
  }
}

// Splits the sparse work of tensor i into items of at most kChunkElements
// elements: exact mode covers every row (gradient-less runs read `zeros`, a
// buffer of zero_elements zeros), lazy mode only the unique rows.
void PlanSparseItems(int i, bool exact, int64_t rows, int64_t row_size,
                     const std::vector<int64_t>& unique_rows, const char* compact,
                     const char* zeros, int64_t zero_elements, int elem_bytes,
                     std::vector<Item>* items, bool whole_rows = false);

// Elements of the shared zero gradient exact sparse calls need.
inline int64_t SparseZeroElements(int64_t max_row_size) {
  return std::max<int64_t>(cpu::kChunkElements, max_row_size);
}

}  // namespace fusedopt

#endif  // FUSEDOPT_CC_CORE_CPU_RUN_H_
