// TensorFlow's CPU kernels for LAMB's norms (Note [TF norms] in tf_numerics.h).
// Compiled with the TensorFlow wheel's instruction set (CMakeLists.txt), so
// the Eigen expressions below evaluate as TF's own Pow, Square and Sum do.
#define EIGEN_USE_THREADS

#include "cc/tf/tf_numerics.h"

#include <algorithm>
#include <functional>
#include <limits>
#include <memory>
#include <type_traits>

#include "cc/rules/update_rules.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/framework/types.h"
#include "tensorflow/core/kernels/cwise_ops.h"
#include "unsupported/Eigen/CXX11/Tensor"

namespace fusedopt {
namespace tf {
namespace {

// TF's TTypes<T>::Flat and TTypes<T, 0>::Tensor.
template <typename T>
using Flat = Eigen::TensorMap<Eigen::Tensor<T, 1, Eigen::RowMajor, Eigen::DenseIndex>,
                              Eigen::Aligned>;
template <typename T>
using Scalar = Eigen::TensorMap<Eigen::Tensor<T, 0, Eigen::RowMajor, Eigen::DenseIndex>,
                                Eigen::Aligned>;

// `ops.sum(ops.power(x, 2))` with x in buf[0, n), which it overwrites with
// the powers: TF's BinaryOp for Pow with a scalar right operand
// (BinaryFunctor::Right: `in.unaryExpr(scalar_right<pow>)`), or the Square op
// Grappler puts in its place; then TF's Sum of a 1-D tensor to a scalar
// (ReduceEigenImpl with the reduction axes Constants<CPUDevice>::kZero).
template <typename T>
T SumOfSquares(const Eigen::ThreadPoolDevice& d, T* buf, int64_t n, bool square_form) {
  Flat<T> x(buf, n);
  if (square_form) {
    x.device(d) = x.unaryExpr(typename tensorflow::functor::square<T>::func());
  } else {
    static const T kTwo(2);
    using Pow = Eigen::internal::scalar_right<T, T, typename tensorflow::functor::pow<T>::func>;
    x.device(d) = x.unaryExpr(Pow(&kTwo));
  }
  alignas(EIGEN_MAX_ALIGN_BYTES) T sum[1] = {T(0)};
  Scalar<T> out(sum);
  out.device(d) = x.reduce(Eigen::IndexList<Eigen::type2index<0>>(),
                           Eigen::internal::SumReducer<T>());
  return sum[0];
}

// f(first, last) over [0, n) on the device's pool (a loop in f vectorizes
// when it copies its pointers to __restrict locals).
template <typename F>
void ForRange(const Eigen::ThreadPoolDevice& d, int64_t n, int loads, int stores, int ops,
              const F& f) {
  if (n <= 0) return;
  d.parallelFor(n, Eigen::TensorOpCost(loads, stores, ops),
                [&](Eigen::Index first, Eigen::Index last) { f(first, last); });
}

// Fills buf[0, n) with f(k) on the device's pool.
template <typename T, typename F>
void Fill(const Eigen::ThreadPoolDevice& d, T* buf, int64_t n, int loads, const F& f) {
  ForRange(d, n, loads * sizeof(T), sizeof(T), 8, [&](int64_t first, int64_t last) {
    for (int64_t k = first; k < last; ++k) buf[k] = f(k);
  });
}

template <typename T>
void SumsOf(const Eigen::ThreadPoolDevice& d, const Operands& ops, const Plan& plan, bool decay,
            bool square_form, T* buf, std::vector<double>* w_sq, std::vector<double>* u_sq) {
  for (int i = 0; i < ops.n; ++i) {
    const int64_t n = ops.sizes[i];
    (*w_sq)[i] = (*u_sq)[i] = 0.0;
    if (n == 0) continue;
    const OpCoeffs<T> oc = OpCoeffs<T>::From(plan.For(ops.IsRank0(i)));
    const T* c = oc.c;
    const T* var = static_cast<const T*>(ops.vars[i]);
    const T* m = static_cast<const T*>(ops.slots[i][0]);
    const T* v = static_cast<const T*>(ops.slots[i][1]);
    // Keras decays the variable (its _apply_weight_decay) before update_step
    // reads it; pass 1 left the variable as it was.
    if (decay) {
      Fill(d, buf, n, 1, [&](int64_t k) { return Decay(c, var[k]); });
    } else {
      Fill(d, buf, n, 1, [&](int64_t k) { return var[k]; });
    }
    (*w_sq)[i] = static_cast<double>(SumOfSquares(d, buf, n, square_form));
    Fill(d, buf, n, 2, [&](int64_t k) { return LambRule::Update(c, m[k], v[k]); });
    (*u_sq)[i] = static_cast<double>(SumOfSquares(d, buf, n, square_form));
  }
}

// How the powers of one Ftrl call are computed (Note [TF pow]).
enum class PowForm {
  kPowOp,      // keras.optimizers.Ftrl eagerly: TF's Pow kernel
  kGrappler,   // ... in a tf.function: Grappler's ConvertPow made pow(x, 2) a Square
  kTensorPow,  // tf_keras' legacy Ftrl: ResourceApplyFtrl(V2)'s Eigen `x.pow(p)`
};

PowForm PowFormOf(const RuleAttrs& attrs, bool grappler_form) {
  if (attrs.tf_tensor_pow) return PowForm::kTensorPow;
  return grappler_form ? PowForm::kGrappler : PowForm::kPowOp;
}

// out[0, n) = in^p in the given form. kPowOp is TF's BinaryOp for Pow with a
// scalar right operand (Eigen's binary scalar_pow_op: generic_pow in packets).
// kGrappler is the same except pow(x, 2), a Square (pow(x, 0.5), Sqrt, is
// FtrlRule's sqrt_power variant, not run here; 1 and 0 become Identity and OnesLike,
// which TF's Pow gives exactly). kTensorPow is the training ops' unary
// scalar_unary_pow_op, which differs from Pow for integer powers: packets of
// an integer power in [-3, 7] are repeated squaring (x^2 = x * x, x^3 =
// (x * x) * x), others generic_pow; either way the last n % packet elements
// are std::pow.
template <typename T>
void PowTo(const Eigen::ThreadPoolDevice& d, const T* in, T* out, int64_t n, T p, PowForm form) {
  // Unaligned: XLA's buffers need not be 64-byte aligned (the values do not
  // depend on it; the scratch `out` is).
  const Eigen::TensorMap<Eigen::Tensor<const T, 1, Eigen::RowMajor, Eigen::DenseIndex>> x(in, n);
  Flat<T> y(out, n);
  if (form == PowForm::kTensorPow) {
    y.device(d) = x.pow(p);
    return;
  }
  if (form == PowForm::kGrappler && p == T(2)) {
    y.device(d) = x.unaryExpr(typename tensorflow::functor::square<T>::func());
    return;
  }
  using Pow = Eigen::internal::scalar_right<T, T, typename tensorflow::functor::pow<T>::func>;
  y.device(d) = x.unaryExpr(Pow(&p));
}

// Note [TF pow]: the elementwise pass of one tensor after the powers, with
// the decay (D) and the gradient transform (X) as template flags so the loop
// vectorizes as the kernels' does.
template <typename T, bool D, bool X>
void FtrlFinal(const Eigen::ThreadPoolDevice& d, const T* c, const GradXform& xf, T* var, T* acc,
               T* linear, const T* grad, const T* new_acc, const T* new_pow, const T* old_pow,
               int64_t n) {
  const T gscale = static_cast<T>(xf.scale), gclip = static_cast<T>(xf.clip_value);
  OpCoeffs<T> coeffs;
  for (int k = 0; k < kMaxCoeffs; ++k) coeffs.c[k] = c[k];
  d.parallelFor(n, Eigen::TensorOpCost(7 * sizeof(T), 3 * sizeof(T), 16),
                [=](Eigen::Index first, Eigen::Index last) {
                  const OpCoeffs<T> local = coeffs;  // not aliased by the stores
                  const T* cl = local.c;
                  T* __restrict vp = var;
                  T* __restrict ap = acc;
                  T* __restrict lp = linear;
                  const T* __restrict gp = grad;
                  const T* __restrict nap = new_acc;
                  const T* __restrict npp = new_pow;
                  const T* __restrict opp = old_pow;
                  for (Eigen::Index k = first; k < last; ++k) {
                    T v = vp[k];
                    if constexpr (D) v = Decay(cl, v);
                    T g = gp[k];
                    if constexpr (X) g = TransformGrad(g, gscale, gclip);
                    T s[2] = {ap[k], lp[k]};
                    FtrlRule::ApplyPowers(cl, v, s, g, nap[k], npp[k], opp[k]);
                    vp[k] = v;
                    ap[k] = s[0];
                    lp[k] = s[1];
                  }
                });
}

// One dense Ftrl call, tensor by tensor, with scratch a, b, p of the largest
// tensor's size each: a = acc^p, b = acc + g^2, p = b^p (TF's Pow), then
// FtrlFinal.
template <typename T>
void FtrlRun(const Eigen::ThreadPoolDevice& d, const Operands& ops, const Plan& plan,
             PowForm form, T* a, T* b, T* p) {
  const bool decay = plan.Decays();
  for (int i = 0; i < ops.n; ++i) {
    const int64_t n = ops.sizes[i];
    if (n == 0) continue;
    const OpCoeffs<T> oc = OpCoeffs<T>::From(plan.For(ops.IsRank0(i)));
    const T* c = oc.c;
    const GradXform& xf = ops.xforms[i];
    const T gscale = static_cast<T>(xf.scale), gclip = static_cast<T>(xf.clip_value);
    T* var = static_cast<T*>(ops.vars[i]);
    T* acc = static_cast<T*>(ops.slots[i][0]);
    T* linear = static_cast<T*>(ops.slots[i][1]);
    const T* grad = static_cast<const T*>(ops.grads[i]);
    PowTo(d, acc, a, n, c[FtrlRule::kPower], form);  // acc^p
    if (ops.transform) {
      Fill(d, b, n, 2, [&](int64_t k) {
        const T s[1] = {acc[k]};
        return FtrlRule::NewAccumulator(s, TransformGrad(grad[k], gscale, gclip));
      });
    } else {
      Fill(d, b, n, 2, [&](int64_t k) {
        const T s[1] = {acc[k]};
        return FtrlRule::NewAccumulator(s, grad[k]);
      });
    }
    PowTo(d, b, p, n, c[FtrlRule::kPower], form);  // new_acc^p
    if (decay) {
      if (ops.transform) {
        FtrlFinal<T, true, true>(d, c, xf, var, acc, linear, grad, b, p, a, n);
      } else {
        FtrlFinal<T, true, false>(d, c, xf, var, acc, linear, grad, b, p, a, n);
      }
    } else if (ops.transform) {
      FtrlFinal<T, false, true>(d, c, xf, var, acc, linear, grad, b, p, a, n);
    } else {
      FtrlFinal<T, false, false>(d, c, xf, var, acc, linear, grad, b, p, a, n);
    }
  }
}

int64_t Largest(const Operands& ops) {
  int64_t largest = 1;
  for (int64_t s : ops.sizes) largest = std::max(largest, s);
  return largest;
}

// Aligned scratch of `count` elements of `elem` bytes, owned by the result.
std::shared_ptr<std::vector<char>> InlineScratch(int64_t count, size_t elem) {
  return std::make_shared<std::vector<char>>(static_cast<size_t>(count) * elem +
                                             EIGEN_MAX_ALIGN_BYTES);
}
void* Aligned(std::vector<char>* v) {
  void* raw = v->data();
  size_t space = v->size();
  return std::align(EIGEN_MAX_ALIGN_BYTES, space - EIGEN_MAX_ALIGN_BYTES, raw, space);
}

// A pool of `n` threads, as Eigen's device sees it, that runs every task at
// once on the calling thread (TfFormsInline).
class InlinePool : public Eigen::ThreadPoolInterface {
 public:
  explicit InlinePool(int n) : n_(n) {}
  void Schedule(std::function<void()> fn) override { fn(); }
  int NumThreads() const override { return n_; }
  int CurrentThreadId() const override { return -1; }

 private:
  int n_;
};

// ---- Adafactor (Note [TF reductions]) --------------------------------------------------------

// TF's ReductionHelper::Simplify: the shape a reduction runs on, after
// dropping leading 1s, joining each size-1 axis to the run before it and
// collapsing runs of reduced and of kept axes.
struct Reshaped {
  std::vector<int64_t> dims;
  bool reduce_first = true;
};
Reshaped Simplify(const std::vector<int64_t>& shape, std::vector<bool> reduced) {
  Reshaped h;
  size_t i = 0;
  while (i < shape.size() && shape[i] == 1) ++i;
  if (i >= shape.size()) return h;  // essentially a scalar
  h.reduce_first = reduced[i];
  h.dims.push_back(shape[i]);
  for (++i; i < shape.size(); ++i) {
    if (shape[i] == 1) reduced[i] = reduced[i - 1];
    if (reduced[i - 1] != reduced[i]) {
      h.dims.push_back(shape[i]);
    } else {
      h.dims.back() *= shape[i];
    }
  }
  return h;
}

template <typename T, int N>
using ConstMap = Eigen::TensorMap<Eigen::Tensor<const T, N, Eigen::RowMajor, Eigen::DenseIndex>>;
template <typename T, int N>
using Map = Eigen::TensorMap<Eigen::Tensor<T, N, Eigen::RowMajor, Eigen::DenseIndex>>;

// out = TF's Mean of `in` (of `shape`, at most 3 axes) over the `reduced`
// axes: the branches of ReductionOp::Compute, with Mean's
// ReduceEigenImpl (sum, then divided by the count) and the reduction axes
// as TF's Constants<CPUDevice> spell them.
template <typename T>
void TfMean(const Eigen::ThreadPoolDevice& d, const T* in, const std::vector<int64_t>& shape,
            const std::vector<bool>& reduced, T* out) {
  int64_t in_n = 1, out_n = 1;
  for (size_t i = 0; i < shape.size(); ++i) {
    in_n *= shape[i];
    if (!reduced[i]) out_n *= shape[i];
  }
  const Reshaped h = Simplify(shape, reduced);
  const size_t nd = h.dims.size();
  if (nd == 0 || (nd == 1 && !h.reduce_first)) {  // reduces nothing: TF copies
    std::copy(in, in + in_n, out);
    return;
  }
  if (out_n == 0) return;
  if (in_n == 0) {  // Mean's identity
    std::fill(out, out + out_n, std::numeric_limits<T>::quiet_NaN());
    return;
  }
  const T count = static_cast<T>(in_n / out_n);
  const Eigen::internal::SumReducer<T> sum;
  const Eigen::IndexList<Eigen::type2index<0>> k0;
  const Eigen::IndexList<Eigen::type2index<1>> k1;
  const Eigen::IndexList<Eigen::type2index<0>, Eigen::type2index<2>> k02;
  if (nd == 1) {
    ConstMap<T, 1> x(in, h.dims[0]);
    Map<T, 0> y(out);
    y.device(d) = x.reduce(k0, sum) / count;
  } else if (nd == 2) {
    ConstMap<T, 2> x(in, h.dims[0], h.dims[1]);
    Map<T, 1> y(out, out_n);
    if (h.reduce_first) {
      y.device(d) = x.reduce(k0, sum) / count;
    } else {
      y.device(d) = x.reduce(k1, sum) / count;
    }
  } else {  // three runs at most from three axes
    ConstMap<T, 3> x(in, h.dims[0], h.dims[1], h.dims[2]);
    if (h.reduce_first) {
      Map<T, 1> y(out, out_n);
      y.device(d) = x.reduce(k02, sum) / count;
    } else {
      Map<T, 2> y(out, h.dims[0], h.dims[2]);
      y.device(d) = x.reduce(k1, sum) / count;
    }
  }
}

// Scratch for AdafactorRunTf: two buffers of the largest tensor, then the
// means of the largest factored one (rows, columns, r's mean per matrix).
int64_t AdafactorScratchElements(const std::vector<AdafactorTensor>& ts) {
  int64_t largest = 1, means = 0;
  for (const AdafactorTensor& x : ts) {
    largest = std::max(largest, x.size());
    if (x.factored) means = std::max(means, x.batch * (x.rows + x.cols + 1));
  }
  return 2 * largest + means;
}

// Keras' decoupled weight decay in place (D) and a = var^2, one pass.
template <typename T, bool D>
void DecayAndSquare(const Eigen::ThreadPoolDevice& d, const OpCoeffs<T>& dc, T* var, T* a,
                    int64_t n) {
  ForRange(d, n, sizeof(T), 2 * sizeof(T), 4, [&](int64_t first, int64_t last) {
    const OpCoeffs<T> local = dc;
    T* __restrict vp = var;
    T* __restrict ap = a;
    for (int64_t e = first; e < last; ++e) {
      T x = vp[e];
      if constexpr (D) {
        x = Decay(local.c, x);
        vp[e] = x;
      }
      ap[e] = x * x;
    }
  });
}

// keras.optimizers.Adafactor.update_step (after _apply_weight_decay). Each
// Mean reads a materialized tensor, as TF's does (the block split of Eigen's
// reduction depends on its input's cost), and TF's Rsqrt runs as its Eigen
// expression (its packets approximate); the exact elementwise ops between
// them (multiplications, additions, divisions, IEEE square roots) give the
// same bits in one fused loop as op by op, so they share passes: seven
// passes over a factored tensor besides the four reductions' reads.
template <typename T>
void AdafactorRunTf(const Eigen::ThreadPoolDevice& d, const AdafactorScalars& s,
                    const std::vector<AdafactorTensor>& ts, T* scratch) {
  const AdafactorStepScalars<T> k = AdafactorStepScalars<T>::From(s);
  const bool decays = k.decay.c[kDecay] != 0.0;
  int64_t largest = 1;
  for (const AdafactorTensor& x : ts) largest = std::max(largest, x.size());
  T* a = scratch;
  T* b = scratch + largest;
  T* m = scratch + 2 * largest;
  const T beta = k.beta, omb = k.one_minus_beta, eps1 = k.eps1;
  for (const AdafactorTensor& x : ts) {
    const int64_t n = x.size();
    if (n == 0 && !x.factored) continue;
    T* var = static_cast<T*>(x.var);
    T* v = static_cast<T*>(x.v);
    const T* g = static_cast<const T*>(x.grad);
    // alpha = max(epsilon_2, rms(var)) * rho, on the decayed variable.
    if (decays) {
      // Grappler leaves a chain of scalars alone (Note [Grappler form]).
      AdafactorScalars own = s;
      own.grappler_form = s.grappler_form && !x.scalar;
      DecayAndSquare<T, true>(d, OpCoeffs<T>::From(AdafactorStepScalars<T>::From(own).decay),
                              var, a, n);
    } else {
      DecayAndSquare<T, false>(d, OpCoeffs<T>(), var, a, n);
    }
    T ms;
    TfMean(d, a, {n}, {true}, &ms);
    const T alpha = Max(k.eps2, std::sqrt(ms)) * k.rho;
    // q = g^2 + epsilon_1
    ForRange(d, n, sizeof(T), sizeof(T), 2, [&](int64_t first, int64_t last) {
      T* __restrict ap = a;
      const T* __restrict gp = g;
      for (int64_t e = first; e < last; ++e) ap[e] = gp[e] * gp[e] + eps1;
    });
    if (x.factored) {
      const int64_t nb = x.batch, nr = x.rows, nc = x.cols;
      T* r = static_cast<T*>(x.r);
      T* c = static_cast<T*>(x.c);
      T* row_mean = m;
      T* col_mean = m + nb * nr;
      T* r_mean = col_mean + nb * nc;
      TfMean(d, a, {nb, nr, nc}, {false, false, true}, row_mean);
      TfMean(d, a, {nb, nr, nc}, {false, true, false}, col_mean);
      for (int64_t e = 0; e < nb * nr; ++e) r[e] = beta * r[e] + omb * row_mean[e];
      for (int64_t e = 0; e < nb * nc; ++e) c[e] = beta * c[e] + omb * col_mean[e];
      TfMean<T>(d, r, {nb, nr}, {false, true}, r_mean);
      // v = (r / mean(r))[..., None] * c[..., None, :]: r / mean(r) is a tensor first.
      T* scale = row_mean;
      for (int64_t e = 0; e < nb * nr; ++e) scale[e] = r[e] / r_mean[e / nr];
      ForRange(d, nb * nr, nc * sizeof(T), nc * sizeof(T), nc, [&](int64_t first, int64_t last) {
        for (int64_t row = first; row < last; ++row) {
          const T rs = scale[row];
          const T* __restrict cb = c + (row / nr) * nc;
          T* __restrict vr = v + row * nc;
          for (int64_t j = 0; j < nc; ++j) vr[j] = rs * cb[j];
        }
      });
    } else {
      ForRange(d, n, 2 * sizeof(T), sizeof(T), 3, [&](int64_t first, int64_t last) {
        T* __restrict vp = v;
        const T* __restrict ap = a;
        for (int64_t e = first; e < last; ++e) vp[e] = beta * vp[e] + omb * ap[e];
      });
    }
    // u = g / sqrt(v) into a, u^2 into b; in a tf.function Grappler's
    // g * rsqrt(v), TF's Rsqrt first.
    if (s.grappler_form) {
      const ConstMap<T, 1> vm(v, n);
      Map<T, 1> am(a, n);
      am.device(d) = vm.unaryExpr(typename tensorflow::functor::rsqrt<T>::func());
      ForRange(d, n, 2 * sizeof(T), 2 * sizeof(T), 2, [&](int64_t first, int64_t last) {
        T* __restrict ap = a;
        T* __restrict bp = b;
        const T* __restrict gp = g;
        for (int64_t e = first; e < last; ++e) {
          const T u = gp[e] * ap[e];
          ap[e] = u;
          bp[e] = u * u;
        }
      });
    } else {
      ForRange(d, n, 2 * sizeof(T), 2 * sizeof(T), 20, [&](int64_t first, int64_t last) {
        T* __restrict ap = a;
        T* __restrict bp = b;
        const T* __restrict gp = g;
        const T* __restrict vp = v;
        for (int64_t e = first; e < last; ++e) {
          const T u = gp[e] / std::sqrt(vp[e]);
          ap[e] = u;
          bp[e] = u * u;
        }
      });
    }
    // var -= alpha * (u / max(1, rms(u) / clip_threshold))
    T mu;
    TfMean(d, b, {n}, {true}, &mu);
    const T denom = Max(T(1), std::sqrt(mu) / k.clip);
    ForRange(d, n, 2 * sizeof(T), sizeof(T), 3, [&](int64_t first, int64_t last) {
      T* __restrict vp = var;
      const T* __restrict ap = a;
      for (int64_t e = first; e < last; ++e) vp[e] = vp[e] - alpha * (ap[e] / denom);
    });
  }
}

}  // namespace

absl::Status AllocateLambNormScratch(tensorflow::OpKernelContext* ctx, const Operands& ops,
                                     tensorflow::DataType dtype, tensorflow::Tensor* scratch) {
  if (dtype != tensorflow::DT_FLOAT && dtype != tensorflow::DT_DOUBLE) {
    return absl::InternalError("LAMB's TF norms take float or double variables");
  }
  return ctx->allocate_temp(dtype, tensorflow::TensorShape({Largest(ops)}), scratch);
}

absl::Status AllocateFtrlPowScratch(tensorflow::OpKernelContext* ctx, const Operands& ops,
                                    tensorflow::DataType dtype, tensorflow::Tensor* scratch) {
  if (dtype != tensorflow::DT_FLOAT && dtype != tensorflow::DT_DOUBLE) {
    return absl::InternalError("Ftrl's TF pow takes float or double variables");
  }
  return ctx->allocate_temp(dtype, tensorflow::TensorShape({3 * Largest(ops)}), scratch);
}

std::function<void()> FtrlTfPow(tensorflow::OpKernelContext* ctx, const Operands& ops,
                                const Plan& plan, const RuleAttrs& attrs, bool grappler_form,
                                tensorflow::Tensor* scratch) {
  const PowForm form = PowFormOf(attrs, grappler_form);
  return [ctx, &ops, &plan, form, scratch] {
    const Eigen::ThreadPoolDevice& d = ctx->eigen_cpu_device();
    const int64_t m = Largest(ops);
    if (scratch->dtype() == tensorflow::DT_DOUBLE) {
      double* s = scratch->flat<double>().data();
      FtrlRun<double>(d, ops, plan, form, s, s + m, s + 2 * m);
    } else {
      float* s = scratch->flat<float>().data();
      FtrlRun<float>(d, ops, plan, form, s, s + m, s + 2 * m);
    }
  };
}

bool HasTfForm(Rule rule, const RuleAttrs& attrs, const Plan& plan, int dt, bool grappler_form) {
  if (dt != static_cast<int>(DType::kFloat32) && dt != static_cast<int>(DType::kFloat64)) {
    return false;
  }
  if (rule == Rule::kLamb) return attrs.tf_norms;
  // The sqrt_power variant (power 0.5, for rank-0 variables too) is sqrt:
  // Grappler's form, and the training ops' own special case of power 0.5.
  if (rule == Rule::kFtrl) {
    return attrs.tf_pow && (!FtrlRule::Variant::At(plan.variant).sqrt_power ||
                            (!grappler_form && !attrs.tf_tensor_pow));
  }
  return false;
}

LambNormsFn LambTfNorms(tensorflow::OpKernelContext* ctx, const Operands& ops, const Plan& plan,
                        bool decay, bool square_form, tensorflow::Tensor* scratch) {
  return [=, &ops, &plan](std::vector<double>* w_sq, std::vector<double>* u_sq) {
    const Eigen::ThreadPoolDevice& d = ctx->eigen_cpu_device();
    if (scratch->dtype() == tensorflow::DT_DOUBLE) {
      SumsOf<double>(d, ops, plan, decay, square_form, scratch->flat<double>().data(), w_sq, u_sq);
    } else {
      SumsOf<float>(d, ops, plan, decay, square_form, scratch->flat<float>().data(), w_sq, u_sq);
    }
  };
}

TfForms TfFormsInline(int num_threads, Rule rule, const RuleAttrs& attrs, const Operands& ops,
                      const Plan& plan, int dt, bool square_form) {
  TfForms forms;
  if (!HasTfForm(rule, attrs, plan, dt, square_form)) return forms;
  const bool f64 = dt == static_cast<int>(DType::kFloat64);
  const size_t elem = f64 ? sizeof(double) : sizeof(float);
  const int threads = std::max(1, num_threads);
  const int64_t m = Largest(ops);
  if (rule == Rule::kLamb) {
    auto scratch = InlineScratch(m, elem);
    forms.lamb_norms = [=, &ops, &plan](std::vector<double>* w_sq, std::vector<double>* u_sq) {
      InlinePool pool(threads);
      Eigen::ThreadPoolDevice d(&pool, threads);
      void* buf = Aligned(scratch.get());
      const bool decay = plan.Decays();
      if (f64) {
        SumsOf<double>(d, ops, plan, decay, square_form, static_cast<double*>(buf), w_sq, u_sq);
      } else {
        SumsOf<float>(d, ops, plan, decay, square_form, static_cast<float*>(buf), w_sq, u_sq);
      }
    };
  } else {
    auto scratch = InlineScratch(3 * m, elem);
    const PowForm form = PowFormOf(attrs, square_form);
    forms.run = [=, &ops, &plan] {
      InlinePool pool(threads);
      Eigen::ThreadPoolDevice d(&pool, threads);
      void* buf = Aligned(scratch.get());
      if (f64) {
        double* s = static_cast<double*>(buf);
        FtrlRun<double>(d, ops, plan, form, s, s + m, s + 2 * m);
      } else {
        float* s = static_cast<float*>(buf);
        FtrlRun<float>(d, ops, plan, form, s, s + m, s + 2 * m);
      }
    };
  }
  return forms;
}

bool AdafactorHasTfForm(int dt) {
  return dt == static_cast<int>(DType::kFloat32) || dt == static_cast<int>(DType::kFloat64);
}

absl::Status AllocateAdafactorScratch(tensorflow::OpKernelContext* ctx,
                                      const std::vector<AdafactorTensor>& ts,
                                      tensorflow::DataType dtype, tensorflow::Tensor* scratch) {
  if (dtype != tensorflow::DT_FLOAT && dtype != tensorflow::DT_DOUBLE) {
    return absl::InternalError("Adafactor's TF reductions take float or double variables");
  }
  return ctx->allocate_temp(dtype, tensorflow::TensorShape({AdafactorScratchElements(ts)}),
                            scratch);
}

void AdafactorTfReductions(tensorflow::OpKernelContext* ctx, const AdafactorScalars& s,
                           const std::vector<AdafactorTensor>& ts, tensorflow::Tensor* scratch) {
  const Eigen::ThreadPoolDevice& d = ctx->eigen_cpu_device();
  if (scratch->dtype() == tensorflow::DT_DOUBLE) {
    AdafactorRunTf<double>(d, s, ts, scratch->flat<double>().data());
  } else {
    AdafactorRunTf<float>(d, s, ts, scratch->flat<float>().data());
  }
}

void AdafactorTfReductionsInline(int num_threads, int dt, const AdafactorScalars& s,
                                 const std::vector<AdafactorTensor>& ts) {
  const bool f64 = dt == static_cast<int>(DType::kFloat64);
  auto scratch = InlineScratch(AdafactorScratchElements(ts), f64 ? sizeof(double) : sizeof(float));
  const int threads = std::max(1, num_threads);
  InlinePool pool(threads);
  Eigen::ThreadPoolDevice d(&pool, threads);
  void* buf = Aligned(scratch.get());
  if (f64) {
    AdafactorRunTf<double>(d, s, ts, static_cast<double*>(buf));
  } else {
    AdafactorRunTf<float>(d, s, ts, static_cast<float*>(buf));
  }
}

}  // namespace tf
}  // namespace fusedopt
