// The CPU run of a planned call (see cpu_run.h).
#include "cc/core/cpu_run.h"

#include <cfloat>
#include <cmath>

#include "cc/cpu/kernels.h"

namespace fusedopt {

std::vector<Item> DenseItems(const Operands& ops, int elem_bytes, StateFormat format) {
  std::vector<Item> items;
  if (format == StateFormat::kInt8) {
    // Note [quantization blocks]: an item never splits a block. Rows of at
    // least a chunk are cut at multiples of kChunkElements (a multiple of
    // kQuantBlock); shorter rows are grouped, whole, up to a chunk.
    for (int t = 0; t < ops.n; ++t) {
      const QuantLayout& l = ops.layouts[t];
      const char* g = static_cast<const char*>(ops.grads[t]);
      auto add = [&](int64_t begin, int64_t length) {
        items.push_back(Item{t, begin, g + begin * elem_bytes, length});
      };
      if (l.row_size == 0 || l.rows == 0) continue;
      if (l.row_size >= cpu::kChunkElements) {
        for (int64_t r = 0; r < l.rows; ++r) {
          for (int64_t c = 0; c < l.row_size; c += cpu::kChunkElements) {
            add(r * l.row_size + c, std::min(cpu::kChunkElements, l.row_size - c));
          }
        }
      } else {
        const int64_t per = cpu::kChunkElements / l.row_size;
        for (int64_t r = 0; r < l.rows; r += per) {
          add(r * l.row_size, std::min(per, l.rows - r) * l.row_size);
        }
      }
    }
    return items;
  }
  for (const cpu::Chunk& c : cpu::PlanChunks(ops.sizes)) {
    items.push_back(Item{c.tensor, c.begin,
                         static_cast<const char*>(ops.grads[c.tensor]) + c.begin * elem_bytes,
                         c.end - c.begin});
  }
  return items;
}

void RunItemsCpu(const ParallelFor& pfor, const std::vector<Item>& items, const Operands& ops,
                 const Plan& plan, bool lamb, Rule rule, int dt, int elem_bytes,
                 const LambNormsFn& lamb_norms) {
  std::vector<cpu::Chunk> chunks;  // chunk.tensor is the item's index
  chunks.reserve(items.size());
  for (size_t k = 0; k < items.size(); ++k) {
    chunks.push_back(cpu::Chunk{static_cast<int32_t>(k), 0, items[k].length});
  }
  const int slot_bytes = SlotElemBytes(plan.state_format, elem_bytes);
  auto pointers = [&](const Item& it, void** var, std::array<void*, kMaxSlots>* slots) {
    *var = static_cast<char*>(ops.vars[it.tensor]) + it.offset * elem_bytes;
    for (int k = 0; k < ops.num_slots; ++k) {
      (*slots)[k] = static_cast<char*>(ops.slots[it.tensor][k]) + it.offset * slot_bytes;
    }
  };
  if (plan.LowPrecision()) {
    // Note [low-precision state]: Keras' forms only (no rsqrt forms, no TF
    // forms); the gradient transform only where the call has one, as below.
    const cpu::KernelTable& table = cpu::SelectedKernels();
    const cpu::StateElementwiseFn fn =
        table.StateElementwise(rule, dt, plan.variant, plan.state_format,
                               plan.stochastic_weights, plan.Decays(), ops.transform);
    const int bytes = elem_bytes * 3 + 2 * slot_bytes * ops.num_slots;
    pfor(chunks, bytes, [&](const cpu::Chunk& c) {
      const Item& it = items[c.tensor];
      void* var;
      std::array<void*, kMaxSlots> slots{};
      pointers(it, &var, &slots);
      cpu::StateArgs sa;
      sa.seed = plan.rounding_seed;
      sa.tensor = it.tensor;
      sa.offset = it.offset;
      if (plan.state_format == StateFormat::kInt8) {
        const QuantLayout& l = ops.layouts[it.tensor];
        sa.row_size = l.row_size;
        const int64_t first_block =
            (it.offset / l.row_size) * l.BlocksPerRow() + (it.offset % l.row_size) / kQuantBlock;
        for (int k = 0; k < ops.num_slots; ++k) sa.absmax[k] = ops.absmax[it.tensor][k] + first_block;
      }
      const bool rank0 = ops.IsRank0(it.tensor);
      fn(plan.For(rank0), ops.xforms[it.tensor], sa, var, slots.data(), it.grad, 0, it.length);
    });
    return;
  }
  const cpu::KernelTable& table = cpu::SelectedKernels();
  const bool decay = plan.Decays();
  const int bytes = elem_bytes * (3 + 2 * ops.num_slots);
  if (!lamb) {
    auto fn = [&](int variant) {
      return table.Elementwise(rule, dt, variant, decay, ops.transform);
    };
    if (!plan.rsqrt_forms) {
      pfor(chunks, bytes, [&](const cpu::Chunk& c) {
        const Item& it = items[c.tensor];
        void* var;
        std::array<void*, kMaxSlots> slots{};
        pointers(it, &var, &slots);
        const bool rank0 = ops.IsRank0(it.tensor);
        fn(plan.VariantFor(rank0))(
            plan.For(rank0), ops.xforms[it.tensor], var, slots.data(), it.grad, 0, it.length);
      });
      return;
    }
    // Note [TF rsqrt]: the packet form on each tensor's first n - n % 8
    // elements, the scalar form on the rest (dense items only: `offset` is
    // the element offset in the tensor).
    pfor(chunks, bytes, [&](const cpu::Chunk& c) {
      const Item& it = items[c.tensor];
      void* var;
      std::array<void*, kMaxSlots> slots{};
      pointers(it, &var, &slots);
      const int variant = plan.VariantFor(ops.IsRank0(it.tensor));
      const cpu::ElementwiseFn packet = fn(WithRsqrtForm(rule, variant, kPacketRsqrt));
      const cpu::ElementwiseFn scalar = fn(WithRsqrtForm(rule, variant, kScalarRsqrt));
      const int64_t n = ops.sizes[it.tensor];
      const int64_t split = std::clamp<int64_t>(n - n % kTfRsqrtPacket - it.offset, 0, it.length);
      const Coeffs& co = plan.For(ops.IsRank0(it.tensor));
      if (split > 0) packet(co, ops.xforms[it.tensor], var, slots.data(), it.grad, 0, split);
      if (split < it.length) {
        scalar(co, ops.xforms[it.tensor], var, slots.data(), it.grad, split, it.length);
      }
    });
    return;
  }
  std::vector<double> w_sq(items.size(), 0.0), u_sq(items.size(), 0.0);
  pfor(chunks, bytes, [&](const cpu::Chunk& c) {
    const Item& it = items[c.tensor];
    void* var;
    std::array<void*, kMaxSlots> slots{};
    pointers(it, &var, &slots);
    table.lamb_pass1[dt][decay][ops.transform](plan.For(ops.IsRank0(it.tensor)),
                                               ops.xforms[it.tensor], var, slots.data(), it.grad,
                                               0, it.length, &w_sq[c.tensor], &u_sq[c.tensor]);
  });
  const int n = ops.n;
  std::vector<double> w(n, 0.0), u(n, 0.0), ratio_lr(n);
  if (lamb_norms) {
    lamb_norms(&w, &u);
  } else {
    for (size_t k = 0; k < items.size(); ++k) {
      w[items[k].tensor] += w_sq[k];
      u[items[k].tensor] += u_sq[k];
    }
  }
  for (int i = 0; i < n; ++i) {
    const double lr = plan.coeffs.c[LambRule::kLr];
    ratio_lr[i] = plan.f64 ? LambRule::RatioLr<double>(w[i], u[i], lr)
                           : LambRule::RatioLr<float>(w[i], u[i], lr);
  }
  pfor(chunks, elem_bytes * 4, [&](const cpu::Chunk& c) {
    const Item& it = items[c.tensor];
    void* var;
    std::array<void*, kMaxSlots> slots{};
    pointers(it, &var, &slots);
    table.lamb_pass2[dt][decay](plan.For(ops.IsRank0(it.tensor)), ratio_lr[it.tensor], var,
                                slots.data(), 0, it.length);
  });
}

void GradStatsCpu(const ParallelFor& pfor, const Operands& ops, int dt, int elem_bytes,
                  std::vector<double>* sum_sq, bool* nonfinite) {
  const cpu::GradStatsFn fn = cpu::SelectedKernels().grad_stats[dt];
  const std::vector<cpu::Chunk> chunks = cpu::PlanChunks(ops.sizes);
  std::vector<double> partial(chunks.size(), 0.0);
  std::vector<char> bad(chunks.size(), 0);
  pfor(chunks, elem_bytes, [&](const cpu::Chunk& c) {
    const size_t idx = &c - chunks.data();
    bool b = false;
    fn(ops.grads[c.tensor], c.begin, c.end, &partial[idx], &b);
    bad[idx] = b;
  });
  sum_sq->assign(ops.n, 0.0);
  *nonfinite = false;
  for (size_t i = 0; i < chunks.size(); ++i) {
    (*sum_sq)[chunks[i].tensor] += partial[i];
    *nonfinite |= bad[i] != 0;
  }
}

bool NeedsElementCheck(const GradXform& x, double sum_sq, bool raw_nonfinite, bool f64) {
  if (raw_nonfinite) return true;
  const double bound = std::sqrt(sum_sq) * std::fabs(x.scale);
  return !(bound <= (f64 ? DBL_MAX : static_cast<double>(FLT_MAX)) / 2);
}

namespace {
template <typename S>
bool AnyNonfiniteTyped(const void* grad, int64_t n, const GradXform& x) {
  using M = opmath_t<S>;
  const S* g = static_cast<const S*>(grad);
  const M scale = static_cast<M>(x.scale), clip = static_cast<M>(x.clip_value);
  for (int64_t i = 0; i < n; ++i) {
    const M t = TransformGrad(Load(g[i]), scale, clip);
    if (!(t - t == M(0))) return true;
  }
  return false;
}
}  // namespace

bool AnyTransformedNonfinite(const void* grad, int64_t n, int dt, const GradXform& x) {
  switch (static_cast<DType>(dt)) {
    case DType::kFloat16:
      return AnyNonfiniteTyped<Half>(grad, n, x);
    case DType::kBFloat16:
      return AnyNonfiniteTyped<BFloat16>(grad, n, x);
    case DType::kFloat32:
      return AnyNonfiniteTyped<float>(grad, n, x);
    case DType::kFloat64:
      return AnyNonfiniteTyped<double>(grad, n, x);
  }
  return true;
}

bool SkipStep(const Operands& ops, int dt, bool raw_nonfinite, const std::vector<double>& sum_sq) {
  if (!ops.transform) return raw_nonfinite;
  const bool f64 = static_cast<DType>(dt) == DType::kFloat64;
  for (int i = 0; i < ops.n; ++i) {
    if (ops.sizes[i] == 0) continue;
    if (!std::isfinite(ops.xforms[i].scale)) return true;
    if (NeedsElementCheck(ops.xforms[i], sum_sq[i], raw_nonfinite, f64) &&
        AnyTransformedNonfinite(ops.grads[i], ops.sizes[i], dt, ops.xforms[i])) {
      return true;
    }
  }
  return false;
}

bool PrepareGradOptionsCpu(const ParallelFor& pfor, const GradOptions& options, int dt,
                           int elem_bytes, Operands* ops) {
  std::vector<double> sum_sq(ops->n, 0.0);
  bool nonfinite = false;
  if (options.NeedsStats()) GradStatsCpu(pfor, *ops, dt, elem_bytes, &sum_sq, &nonfinite);
  ops->xforms = MakeXforms(options, sum_sq);
  ops->transform = options.Transforms();
  return options.skip_nonfinite && SkipStep(*ops, dt, nonfinite, sum_sq);
}

void PlanSparseItems(int i, bool exact, int64_t rows, int64_t row_size,
                     const std::vector<int64_t>& unique_rows, const char* compact,
                     const char* zeros, int64_t zero_elements, int elem_bytes,
                     std::vector<Item>* items, bool whole_rows) {
  if (row_size == 0) return;
  const int64_t max_len = std::max<int64_t>(cpu::kChunkElements, row_size);
  // whole_rows: items of whole rows (kInt8 state, Note [quantization
  // blocks]); every run is rows long and each limit is at least a row.
  auto rows_of = [&](int64_t limit) { return whole_rows ? limit / row_size * row_size : limit; };
  auto emit = [&](int64_t offset, const char* grad, int64_t length, bool zero) {
    // Zero-gradient runs restart at the buffer's start; gradient runs advance.
    for (int64_t done = 0; done < length;) {
      const int64_t limit = rows_of(zero ? zero_elements : max_len);
      const int64_t len = std::min(length - done, limit);
      items->push_back(Item{i, offset + done, zero ? zeros : grad + done * elem_bytes, len});
      done += len;
    }
  };
  const int64_t u = static_cast<int64_t>(unique_rows.size());
  int64_t j = 0, row = 0;
  while (j < u) {
    const int64_t start = unique_rows[j];
    if (exact && row < start) emit(row * row_size, nullptr, (start - row) * row_size, true);
    int64_t end = j + 1;
    while (end < u && unique_rows[end] == unique_rows[end - 1] + 1) ++end;
    emit(start * row_size, compact + j * row_size * elem_bytes, (end - j) * row_size, false);
    row = unique_rows[end - 1] + 1;
    j = end;
  }
  if (exact && row < rows) emit(row * row_size, nullptr, (rows - row) * row_size, true);
}

}  // namespace fusedopt
