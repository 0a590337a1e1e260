// CPU update loops: the TensorFlow-free interface the op kernels in cc/tf call.
//
// Each loop updates elements [begin, end) of one tensor. The caller (cc/tf)
// splits the work into fixed-size chunks (see chunking.h) and runs them on
// TensorFlow's intra-op thread pool.
//
// The loops are compiled once per instruction set (baseline x86-64, AVX2+FMA,
// AVX-512) from kernels_isa.cc; SelectedKernels() picks the best one the
// running CPU supports (Note [SIMD dispatch] in dispatch.cc).
#ifndef FUSEDOPT_CC_CPU_KERNELS_H_
#define FUSEDOPT_CC_CPU_KERNELS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "cc/rules/registry.h"

namespace fusedopt {
namespace cpu {

// One elementwise rule over [begin, end) of one tensor. var, slots[k] and
// grad point at element 0 of their tensors; slots holds SlotsOf<Rule>(variant)
// pointers in the rule's slot order. gx is used by the table entries with the
// transform flag set (Note [gradient transform]).
using ElementwiseFn = void (*)(const Coeffs& c, const GradXform& gx, void* var, void* const* slots,
                               const void* grad, int64_t begin, int64_t end);

// LAMB pass 1 over [begin, end): updates m, v (slots[0], slots[1]) and adds
// sum(decayed var^2) and sum(u^2) of the range to *w_sq and *u_sq, in a fixed
// order (the same bits on every ISA).
using LambPass1Fn = void (*)(const Coeffs& c, const GradXform& gx, const void* var,
                             void* const* slots, const void* grad, int64_t begin, int64_t end,
                             double* w_sq, double* u_sq);
// LAMB pass 2 over [begin, end): var = decayed var - ratio_lr * u(m, v).
using LambPass2Fn = void (*)(const Coeffs& c, double ratio_lr, void* var, void* const* slots,
                             int64_t begin, int64_t end);

// Gradient statistics over [begin, end): adds sum(g^2) (double, fixed-order
// lanes) to *sum_sq and sets *nonfinite if any element is inf or NaN.
using GradStatsFn = void (*)(const void* grad, int64_t begin, int64_t end, double* sum_sq,
                             bool* nonfinite);

// Adafactor's passes over elements [begin, end) of one tensor (Note
// [Adafactor passes] in cc/core/adafactor.h), in the variable's opmath from
// the coefficients below (S values held exactly as doubles). Sums go to
// double lanes keyed by the position from `begin`, added in lane order: the
// same bits on every ISA.
struct AdafactorCoeffs {
  Coeffs decay;           // c[kDecay], c[kDecayLr]: Keras' weight decay
  double eps1 = 0;        // epsilon_1
  double beta = 0;        // 1 - t^beta_2_decay
  double one_minus_beta = 0;
  double r_scale = 0;     // pass B, factored: r_i / mean(r) of this row
  double alpha = 0;       // pass C: max(epsilon_2, rms(var)) * rho
  double denom = 1;       // pass C: max(1, rms(u) / clip_threshold)
};
// Pass A: adds sum(decayed var^2) to *var_sq; when col is given (a factored
// tensor's row, begin..end one row), also q = g^2 + epsilon_1 to col[j - begin]
// and sum(q) to *q_sum.
using AdafactorStatsFn = void (*)(const AdafactorCoeffs& c, const void* var, const void* grad,
                                  int64_t begin, int64_t end, double* col, double* q_sum,
                                  double* var_sq);
// Pass B: v = r_scale * cf[j - begin] (factored: cf is the row's c) or
// beta * v + (1 - beta) * q (cf null); adds sum((g / sqrt(v))^2) to *u_sq.
using AdafactorVFn = void (*)(const AdafactorCoeffs& c, const void* grad, void* v, const void* cf,
                              int64_t begin, int64_t end, double* u_sq);
// Pass C: var = decayed var - alpha * ((g / sqrt(v)) / denom).
using AdafactorUpdateFn = void (*)(const AdafactorCoeffs& c, void* var, const void* grad,
                                   const void* v, int64_t begin, int64_t end);

// Low-precision state (Note [low-precision state] in cc/rules/state_format.h):
// one item of a call whose slots are bfloat16 or int8, or whose bfloat16
// variables round stochastically. var, slots and grad point at the item's
// first element, which is element `offset` of tensor `tensor`; the loop runs
// elements [begin, end) of the item. kInt8 items start at a block start and
// end at a block end (Note [quantization blocks]); absmax[k] points at the
// absmax of slot k's first block of the item.
struct StateArgs {
  uint64_t seed = 0;    // the call's rounding seed (the step folded in)
  int tensor = 0;       // the tensor's position in the call
  int64_t offset = 0;
  int64_t row_size = 0;  // kInt8: QuantLayout::row_size
  float* absmax[kMaxSlots] = {nullptr, nullptr, nullptr};
};
using StateElementwiseFn = void (*)(const Coeffs& c, const GradXform& gx, const StateArgs& sa,
                                    void* var, void* const* slots, const void* grad,
                                    int64_t begin, int64_t end);
// The variables' dtypes low-precision state takes: float32 and bfloat16.
inline int StateDTypeIndex(int dt) {
  return dt == static_cast<int>(DType::kFloat32) ? 0
         : dt == static_cast<int>(DType::kBFloat16) ? 1
                                                     : -1;
}

// Bandwidth probe for benchmarks: a[i] = a[i] * s + b[i] (float32, in place).
using TriadFn = void (*)(float* a, const float* b, float s, int64_t begin, int64_t end);

struct KernelTable {
  const char* isa;  // "baseline", "avx2", "avx512"
  // [kVariantOffsets[rule] + variant][dtype][decay][gradient transform]: only
  // the variants that exist (registry.h); read through Elementwise().
  ElementwiseFn elementwise[kNumTableVariants][kNumDTypes][2][2];
  LambPass1Fn lamb_pass1[kNumDTypes][2][2];  // [dtype][decay][transform]
  LambPass2Fn lamb_pass2[kNumDTypes][2];
  GradStatsFn grad_stats[kNumDTypes];
  AdafactorStatsFn adafactor_stats[kNumDTypes][2];  // [dtype][decay]
  AdafactorVFn adafactor_v[kNumDTypes];
  AdafactorUpdateFn adafactor_update[kNumDTypes][2];  // [dtype][decay]
  TriadFn triad;
  // [kStateVariantOffsets[rule] + variant][StateDTypeIndex][StateFormat]
  // [stochastic weights][decay][gradient transform]: the rules with
  // low-precision state (registry.h), their Keras variants; read through
  // StateElementwise().
  StateElementwiseFn state_elementwise[kNumStateTableVariants][2][kNumStateFormats][2][2][2];

  // The loop of `rule`'s variant (null: no such variant, or an internal one).
  ElementwiseFn Elementwise(Rule rule, int dt, int variant, bool decay, bool transform) const {
    if (variant < 0 || variant >= NumVariants(rule)) return nullptr;
    return elementwise[kVariantOffsets.at[static_cast<int>(rule)] + variant][dt][decay][transform];
  }
  // The low-precision-state loop (null: the rule, variant, dtype or
  // combination has none).
  StateElementwiseFn StateElementwise(Rule rule, int dt, int variant, StateFormat format,
                                      bool stochastic_weights, bool decay, bool transform) const {
    const int d = StateDTypeIndex(dt);
    if (d < 0 || variant < 0 || variant >= NumStateVariants(rule)) return nullptr;
    return state_elementwise[kStateVariantOffsets.at[static_cast<int>(rule)] + variant][d]
                            [static_cast<int>(format)][stochastic_weights][decay][transform];
  }
};

// The table for the running CPU (or the one named by the FUSEDOPT_CPU_ISA
// environment variable, when set to a compiled-in ISA the CPU supports).
const KernelTable& SelectedKernels();

// Names of the ISA variants compiled into this library, baseline first.
std::vector<std::string> CompiledIsas();

// Tables by ISA name, for tests and benchmarks; null when not compiled in or
// not supported by this CPU.
const KernelTable* KernelsForIsa(const std::string& isa);

}  // namespace cpu
}  // namespace fusedopt

#endif  // FUSEDOPT_CC_CPU_KERNELS_H_
