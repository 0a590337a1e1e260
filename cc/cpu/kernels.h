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

#include "cc/rules/update_rules.h"

namespace fusedopt {
namespace cpu {

// One elementwise rule over [begin, end) of one tensor. var, slots[k] and
// grad point at element 0 of their tensors; slots holds Rule::Slots(variant)
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

// Bandwidth probe for benchmarks: a[i] = a[i] * s + b[i] (float32, in place).
using TriadFn = void (*)(float* a, const float* b, float s, int64_t begin, int64_t end);

struct KernelTable {
  const char* isa;  // "baseline", "avx2", "avx512"
  // [algo][dtype][variant][decay][gradient transform]
  ElementwiseFn elementwise[kNumAlgos][kNumDTypes][kMaxVariants][2][2];
  LambPass1Fn lamb_pass1[kNumDTypes][2][2];  // [dtype][decay][transform]
  LambPass2Fn lamb_pass2[kNumDTypes][2];
  GradStatsFn grad_stats[kNumDTypes];
  TriadFn triad;
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
