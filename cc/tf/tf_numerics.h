// TensorFlow's own CPU kernels, where a drop-in must reproduce their bits.
//
// Note [TF norms]: keras.optimizers.Lamb's trust ratio is
//   w_norm = ops.sqrt(ops.sum(ops.power(variable, 2)))
//   g_norm = ops.sqrt(ops.sum(ops.power(update, 2)))
// two TensorFlow ops per norm, in the variable's dtype. Their last bits are
// decided by TensorFlow's CPU kernels, not by the math:
//  * Pow is Eigen's vectorized pow (pow(x, 2) != x * x for about a quarter of
//    float32 values), except in a tf.function, where Grappler's ConvertPow
//    makes it Square (x * x, exact);
//  * Sum is Eigen's full reduction on the op's thread-pool device: blocks
//    whose number depends on the pool's size and the cost model, each summed
//    as a tree of packets, the blocks then added in order. The same values
//    summed on 1 and 2 threads give different float32 sums.
// So the fused op, asked for TF's norms (the Lamb ops' `tf_norms` attribute,
// set by fusedopt.keras.Lamb), runs those very kernels: after pass 1 it
// materializes the decayed variable and the update of each tensor in scratch
// memory, evaluates TensorFlow's Pow (or Square) and Sum expressions on the
// op's own Eigen device (the device TF's Pow and Sum kernels get, hence the
// same blocks), and feeds the two sums to the trust ratio. This translation
// unit is compiled with the TensorFlow wheel's instruction set (AVX without
// FMA on x86-64: `cpu_feature_guard` reports AVX2 and FMA as unused), so Eigen
// picks the same packet width and arithmetic as TF's kernels
// (test_lamb_tf_norms_match_tf_kernels checks Pow and Sum bit for bit).
// Cost: two extra reads and writes of each tensor; float32 and float64 only
// (16-bit variables keep the double sums: Keras computes their whole step in
// the 16-bit type, which the kernels do not reproduce anyway).
#ifndef FUSEDOPT_CC_TF_TF_NUMERICS_H_
#define FUSEDOPT_CC_TF_TF_NUMERICS_H_

#include <functional>

#include "cc/core/adafactor.h"
#include "cc/core/cpu_run.h"
#include "cc/core/plan.h"
#include "tensorflow/core/framework/op_kernel.h"

namespace fusedopt {
namespace tf {

// Allocates the scratch LambTfNorms needs (the largest tensor's elements of
// `dtype`, which must be float or double); call before anything is written.
absl::Status AllocateLambNormScratch(tensorflow::OpKernelContext* ctx, const Operands& ops,
                                     tensorflow::DataType dtype, tensorflow::Tensor* scratch);

// The RunItemsCpu hook that computes every tensor's two sums of squares as
// Keras' TF ops do (Note [TF norms]). `square_form`: Grappler's Square in the
// place of Pow (a tf.function with the arithmetic optimizer on). `ctx`, `ops`,
// `plan` and `scratch` must outlive the call that runs the hook.
LambNormsFn LambTfNorms(tensorflow::OpKernelContext* ctx, const Operands& ops, const Plan& plan,
                        bool decay, bool square_form, tensorflow::Tensor* scratch);

// Note [TF pow]: keras.optimizers.Ftrl raises the accumulators to
// -learning_rate_power with `ops.power`, TF's Pow, Eigen's vectorized pow,
// which is not the C library's (test_tf_pow_is_not_the_c_library_pow) and
// whose error Ftrl's `new_acc^p - acc^p` amplifies. In a tf.function
// Grappler makes pow(x, 0.5) a Sqrt (FtrlRule's sqrt_power variant, already exact), but
// the default power in eager mode and every other power in both modes run
// TF's Pow. With the Ftrl ops' `tf_pow` attribute (set by
// fusedopt.keras.Ftrl) a dense float/double CPU call that Grappler has not
// given a Sqrt runs in this file instead of the kernels: per tensor, acc^p and (acc + g^2)^p
// with TF's Pow expression on the op's device into scratch, then one
// elementwise pass with FtrlRule::ApplyPowers, the kernels' arithmetic.
// Four passes instead of one; Keras' own eager step is about a dozen.
//
// tf_keras' legacy Ftrl calls ResourceApplyFtrl(V2), whose Eigen expression
// raises with the unary `x.pow(p)`: for integer powers in [-3, 7] its
// packets are repeated squaring, not Pow's generic_pow (pow(x, 2) is x * x
// there), and power 0.5 is its own sqrt. With `tf_training_op_form` as well
// (set by fusedopt.legacy.Ftrl) the powers are that expression's; the
// elementwise arithmetic is the same, since FtrlRule's order is the training
// ops' (`linear += g_s - ((new_acc^p - acc^p) / lr) * var`,
// `(l1 * sign(linear) - linear) / (new_acc^p / lr + 2 * l2)` where
// |linear| > l1, else 0).

// Allocates FtrlTfPow's scratch (three times the largest tensor, `dtype`
// float or double); call before anything is written.
absl::Status AllocateFtrlPowScratch(tensorflow::OpKernelContext* ctx, const Operands& ops,
                                    tensorflow::DataType dtype, tensorflow::Tensor* scratch);

// The run of a dense Ftrl call with TF's Pow (Note [TF pow]), in the place of
// RunItemsCpu. `ctx`, `ops`, `plan` and `scratch` must outlive it.
std::function<void()> FtrlTfPow(tensorflow::OpKernelContext* ctx, const Operands& ops,
                                const Plan& plan, const RuleAttrs& attrs, bool grappler_form,
                                tensorflow::Tensor* scratch);

// Whether a call of `rule` with this plan has a TF form here: LAMB with
// `tf_norms`, Ftrl with `tf_pow` unless Grappler's sqrt stands for TF's Pow
// (power 0.5 with `grappler_form`); float or double (`dt`, a DType index).
bool HasTfForm(Rule rule, const RuleAttrs& attrs, const Plan& plan, int dt, bool grappler_form);

// The TF forms for the XLA custom call's handler (`square_form`: the op's
// grappler_form), which has no op context:
// TF's expressions evaluate on a device of `num_threads` threads (the size of
// the intra-op pool XLA hands the handler, the pool TF's kernels use, so the
// same blocks), whose tasks run on the calling thread (a handler may itself
// run on a pool thread, where waiting for the pool could deadlock). Scratch
// is allocated here (may throw std::bad_alloc). Empty unless HasTfForm.
TfForms TfFormsInline(int num_threads, Rule rule, const RuleAttrs& attrs, const Operands& ops,
                      const Plan& plan, int dt, bool square_form);

// Note [TF reductions]: keras.optimizers.Adafactor reduces five times per
// variable, each a TF Mean (`ops.mean`: TF's Mean kernel, the Eigen
// expression `in.reduce(axes, SumReducer) / count` on a tensor TF first
// reshapes, ReductionHelper::Simplify: leading 1s dropped, runs of reduced
// and kept axes collapsed, size-1 axes joined to the run before them), whose
// bits are Eigen's summation order on the op's device. The rest of its step
// is elementwise, and in a tf.function Grappler's SqrtDivToRsqrtMul makes
// `g / sqrt(v)` a `g * rsqrt(v)` with TF's approximate CPU Rsqrt (Note [TF
// rsqrt]). With the Adafactor op's `tf_reductions` attribute (set by
// fusedopt.keras.Adafactor) a float/double CPU call runs here instead of the
// kernels' three passes: per tensor, Keras' step on the op's Eigen device,
// each Mean over an input materialized in scratch as TF's is (the decayed
// variable's square; q = g^2 + epsilon_1 for the row and column Means; r;
// u^2), TF's Rsqrt as its Eigen functor into scratch, and the exact
// elementwise operations between them fused (the same bits as op by op):
// seven passes over a factored tensor plus four reads for the reductions
// (Keras: ~30), for Keras' bits.

// Whether an Adafactor call of `dt` (a DType index) has the TF form: float
// or double.
bool AdafactorHasTfForm(int dt);

// Allocates AdafactorTfReductions' scratch; call before anything is written.
absl::Status AllocateAdafactorScratch(tensorflow::OpKernelContext* ctx,
                                      const std::vector<AdafactorTensor>& ts,
                                      tensorflow::DataType dtype, tensorflow::Tensor* scratch);

// One Adafactor call with Keras' ops (Note [TF reductions]) on the op's
// device, in the place of RunAdafactorCpu; `s.grappler_form` also selects
// Grappler's rsqrt. `scratch` from AllocateAdafactorScratch.
void AdafactorTfReductions(tensorflow::OpKernelContext* ctx, const AdafactorScalars& s,
                           const std::vector<AdafactorTensor>& ts, tensorflow::Tensor* scratch);

// The same for the XLA custom call's handler: TF's expressions on a device of
// `num_threads` threads whose tasks run on the calling thread (as
// TfFormsInline); allocates its scratch (may throw std::bad_alloc). `dt` a
// DType index for which AdafactorHasTfForm.
void AdafactorTfReductionsInline(int num_threads, int dt, const AdafactorScalars& s,
                                 const std::vector<AdafactorTensor>& ts);

}  // namespace tf
}  // namespace fusedopt

#endif  // FUSEDOPT_CC_TF_TF_NUMERICS_H_
