// Adafactor on the CPU (Note [Adafactor passes] in adafactor.h).
#include "cc/core/adafactor.h"

#include <algorithm>
#include <cmath>
#include <sstream>

#include "cc/cpu/kernels.h"
#include "cc/rules/coefficients.h"
#include "cc/rules/numeric.h"
#include "cc/rules/update_rules.h"

namespace fusedopt {
namespace {

// A block of work: rows [begin, end) of matrix `b` of a factored tensor, or
// elements [begin, end) of an unfactored one. Blocks depend only on the
// shapes, so the sums combined in block order are deterministic.
struct Block {
  int tensor;
  int64_t b;
  int64_t begin;
  int64_t end;
};

std::vector<Block> PlanBlocks(const std::vector<AdafactorTensor>& ts) {
  std::vector<Block> blocks;
  for (size_t t = 0; t < ts.size(); ++t) {
    const AdafactorTensor& x = ts[t];
    if (x.size() == 0) continue;
    if (x.factored) {
      const int64_t rows_per = std::max<int64_t>(1, cpu::kChunkElements / x.cols);
      for (int64_t b = 0; b < x.batch; ++b) {
        for (int64_t i = 0; i < x.rows; i += rows_per) {
          blocks.push_back(Block{static_cast<int>(t), b, i, std::min(x.rows, i + rows_per)});
        }
      }
    } else {
      for (int64_t e = 0; e < x.cols; e += cpu::kChunkElements) {
        blocks.push_back(Block{static_cast<int>(t), 0, e, std::min(x.cols, e + cpu::kChunkElements)});
      }
    }
  }
  return blocks;
}

template <typename T>
class Run {
 public:
  using S = opmath_t<T>;

  Run(int dt, const AdafactorScalars& s, const std::vector<AdafactorTensor>& ts)
      : dt_(dt), ts_(ts), blocks_(PlanBlocks(ts)) {
    const AdafactorStepScalars<S> k = AdafactorStepScalars<S>::From(s);
    rho_ = k.rho;
    co_.beta = k.beta;
    co_.one_minus_beta = k.one_minus_beta;
    co_.eps1 = k.eps1;
    eps2_ = k.eps2;
    clip_ = k.clip;
    co_.decay = k.decay;
    decays_ = co_.decay.c[kDecay] != 0.0 ? 1 : 0;
  }

  void Go(const ParallelFor& pfor) {
    const cpu::KernelTable& kt = cpu::SelectedKernels();
    stats_ = kt.adafactor_stats[dt_][decays_];
    v_ = kt.adafactor_v[dt_];
    update_ = kt.adafactor_update[dt_][decays_];
    const size_t nb = blocks_.size();
    std::vector<cpu::Chunk> chunks;  // chunk.tensor: the block index
    for (size_t k = 0; k < nb; ++k) {
      const Block& bl = blocks_[k];
      const int64_t elements =
          (bl.end - bl.begin) * (ts_[bl.tensor].factored ? ts_[bl.tensor].cols : 1);
      chunks.push_back(cpu::Chunk{static_cast<int32_t>(k), 0, elements});  // (a cost hint)
    }
    // Every scratch buffer is allocated here, before the first write, so an
    // allocation that fails (std::bad_alloc, a caller's error) leaves every
    // variable and moment as it was, and no pass allocates on a worker thread.
    var_sq_.assign(nb, 0.0);
    u_sq_.assign(nb, 0.0);
    row_sums_.resize(ts_.size());
    col_parts_.resize(nb);
    alpha_.assign(ts_.size(), S(0));
    denom_.assign(ts_.size(), S(1));
    r_mean_.assign(ts_.size(), {});
    int64_t max_cols = 0;
    for (size_t t = 0; t < ts_.size(); ++t) {
      if (!ts_[t].factored) continue;
      row_sums_[t].assign(ts_[t].batch * ts_[t].rows, 0.0);
      r_mean_[t].assign(ts_[t].batch, S(0));
      max_cols = std::max(max_cols, ts_[t].batch * ts_[t].cols);
    }
    cols_.assign(max_cols, 0.0);
    for (size_t k = 0; k < nb; ++k) {
      if (ts_[blocks_[k].tensor].factored) col_parts_[k].assign(ts_[blocks_[k].tensor].cols, 0.0);
    }
    pfor(chunks, 2 * sizeof(T), [&](const cpu::Chunk& c) { PassA(c.tensor); });
    Moments();
    pfor(chunks, 2 * sizeof(T), [&](const cpu::Chunk& c) { PassB(c.tensor); });
    Scales();
    pfor(chunks, 4 * sizeof(T), [&](const cpu::Chunk& c) { PassC(c.tensor); });
  }

 private:
  void PassA(int k) {
    const Block& bl = blocks_[k];
    const AdafactorTensor& x = ts_[bl.tensor];
    if (!x.factored) {
      stats_(co_, x.var, x.grad, bl.begin, bl.end, nullptr, nullptr, &var_sq_[k]);
      return;
    }
    std::vector<double>& col = col_parts_[k];  // zeros, x.cols of them (Go)
    for (int64_t i = bl.begin; i < bl.end; ++i) {
      const int64_t row = bl.b * x.rows + i;
      stats_(co_, x.var, x.grad, row * x.cols, (row + 1) * x.cols, col.data(),
             &row_sums_[bl.tensor][row], &var_sq_[k]);
    }
  }

  // Per tensor, in block order: the variable's RMS (alpha) and, for factored
  // tensors, the new r and c and the mean of r per matrix.
  void Moments() {
    const S beta = static_cast<S>(co_.beta), omb = static_cast<S>(co_.one_minus_beta);
    size_t k = 0;
    for (size_t t = 0; t < ts_.size(); ++t) {
      const AdafactorTensor& x = ts_[t];
      // An empty factored variable still updates its moments as Keras' does
      // (a mean over zero rows or columns is NaN).
      if (x.size() == 0 && !x.factored) continue;
      double vsq = 0.0;
      std::vector<double>& cols = cols_;  // [batch * cols] zeros below
      if (x.factored) std::fill(cols.begin(), cols.begin() + x.batch * x.cols, 0.0);
      for (; k < blocks_.size() && blocks_[k].tensor == static_cast<int>(t); ++k) {
        vsq += var_sq_[k];
        if (x.factored) {
          for (int64_t j = 0; j < x.cols; ++j) cols[blocks_[k].b * x.cols + j] += col_parts_[k][j];
          std::vector<double>().swap(col_parts_[k]);
        }
      }
      const S n = static_cast<S>(x.size());
      alpha_[t] = Max(eps2_, std::sqrt(static_cast<S>(vsq) / n)) * rho_;
      if (!x.factored) continue;
      T* r = static_cast<T*>(x.r);
      T* c = static_cast<T*>(x.c);
      const S rows = static_cast<S>(x.rows), ncols = static_cast<S>(x.cols);
      for (int64_t b = 0; b < x.batch; ++b) {
        double r_sum = 0.0;
        for (int64_t i = 0; i < x.rows; ++i) {
          const int64_t e = b * x.rows + i;
          const S mean = static_cast<S>(row_sums_[t][e]) / ncols;
          r[e] = Store<T>(beta * Load(r[e]) + omb * mean);
          r_sum += static_cast<double>(Load(r[e]));
        }
        r_mean_[t][b] = static_cast<S>(r_sum) / rows;
        for (int64_t j = 0; j < x.cols; ++j) {
          const int64_t e = b * x.cols + j;
          const S mean = static_cast<S>(cols[e]) / rows;
          c[e] = Store<T>(beta * Load(c[e]) + omb * mean);
        }
      }
    }
  }

  void PassB(int k) {
    const Block& bl = blocks_[k];
    const AdafactorTensor& x = ts_[bl.tensor];
    if (!x.factored) {
      v_(co_, x.grad, x.v, nullptr, bl.begin, bl.end, &u_sq_[k]);
      return;
    }
    const T* r = static_cast<const T*>(x.r);
    const T* cf = static_cast<const T*>(x.c) + bl.b * x.cols;
    const S r_mean = r_mean_[bl.tensor][bl.b];
    cpu::AdafactorCoeffs row_co = co_;
    for (int64_t i = bl.begin; i < bl.end; ++i) {
      const int64_t row = bl.b * x.rows + i;
      row_co.r_scale = static_cast<double>(Load(r[row]) / r_mean);
      v_(row_co, x.grad, x.v, cf, row * x.cols, (row + 1) * x.cols, &u_sq_[k]);
    }
  }

  void Scales() {
    size_t k = 0;
    for (size_t t = 0; t < ts_.size(); ++t) {
      double usq = 0.0;
      for (; k < blocks_.size() && blocks_[k].tensor == static_cast<int>(t); ++k) usq += u_sq_[k];
      if (ts_[t].size() == 0) continue;
      const S rms = std::sqrt(static_cast<S>(usq) / static_cast<S>(ts_[t].size()));
      denom_[t] = Max(S(1), rms / clip_);
    }
  }

  void PassC(int k) {
    const Block& bl = blocks_[k];
    const AdafactorTensor& x = ts_[bl.tensor];
    int64_t begin = bl.begin, end = bl.end;
    if (x.factored) {
      begin = (bl.b * x.rows + bl.begin) * x.cols;
      end = (bl.b * x.rows + bl.end) * x.cols;
    }
    cpu::AdafactorCoeffs co = co_;
    co.alpha = alpha_[bl.tensor];
    co.denom = denom_[bl.tensor];
    update_(co, x.var, x.grad, x.v, begin, end);
  }

  int dt_;
  const std::vector<AdafactorTensor>& ts_;
  std::vector<Block> blocks_;
  cpu::AdafactorCoeffs co_;
  int decays_ = 0;
  S rho_, eps2_, clip_;
  cpu::AdafactorStatsFn stats_ = nullptr;
  cpu::AdafactorVFn v_ = nullptr;
  cpu::AdafactorUpdateFn update_ = nullptr;
  std::vector<double> var_sq_, u_sq_;
  std::vector<std::vector<double>> row_sums_, col_parts_;
  std::vector<double> cols_;  // Moments' column sums of one tensor
  std::vector<S> alpha_, denom_;
  std::vector<std::vector<S>> r_mean_;
};

template <typename T>
void RunTyped(const ParallelFor& pfor, int dt, const AdafactorScalars& s,
              const std::vector<AdafactorTensor>& ts) {
  Run<T> run(dt, s, ts);
  run.Go(pfor);
}

}  // namespace

std::string CheckAdafactorScalars(const AdafactorScalars& s) {
  const std::pair<const char*, double> named[] = {
      {"lr", s.lr},
      {"beta_2_decay", s.beta_2_decay},
      {"epsilon_1", s.epsilon_1},
      {"epsilon_2", s.epsilon_2},
      {"clip_threshold", s.clip_threshold},
      {"weight_decay", s.weight_decay}};
  std::ostringstream m;
  m.precision(17);
  for (const auto& [name, value] : named) {
    if (!std::isfinite(value)) {
      m << "'" << name << "' must be finite, got " << value << "; nothing was updated";
      return m.str();
    }
  }
  if (!(s.clip_threshold > 0)) {
    m << "'clip_threshold' must be > 0, got " << s.clip_threshold << "; nothing was updated";
    return m.str();
  }
  if (s.step < 1) {
    m << "'step' must be >= 1, got " << s.step;
    return m.str();
  }
  return "";
}

void RunAdafactorCpu(const ParallelFor& pfor, int dt, const AdafactorScalars& s,
                     const std::vector<AdafactorTensor>& tensors) {
  switch (static_cast<DType>(dt)) {
    case DType::kFloat16:
      return RunTyped<Half>(pfor, dt, s, tensors);
    case DType::kBFloat16:
      return RunTyped<BFloat16>(pfor, dt, s, tensors);
    case DType::kFloat32:
      return RunTyped<float>(pfor, dt, s, tensors);
    case DType::kFloat64:
      return RunTyped<double>(pfor, dt, s, tensors);
  }
}

}  // namespace fusedopt
