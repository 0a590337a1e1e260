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

// var/mom/grad point at the first element of the whole tensor; the loop
// touches [begin, end). mom is unused (may be null) for SgdVariant::kPlain.
using SgdSpanFn = void (*)(const SgdScalars& s, void* var, void* mom, const void* grad,
                           int64_t begin, int64_t end);

struct KernelTable {
  const char* isa;  // "baseline", "avx2", "avx512"
  SgdSpanFn sgd[kNumDTypes][kNumSgdVariants][2];
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
