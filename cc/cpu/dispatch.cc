// Note [SIMD dispatch]: the update loops are compiled once per instruction set
// (kernels_isa.cc) and chosen here, once, at run time, from what the CPU
// reports. No translation unit is built with -march=native, so one wheel runs
// on any x86-64 CPU and uses AVX2 or AVX-512 where present. All variants are
// compiled with -ffp-contract=off, so they differ in speed, never in results;
// the tests check that every compiled ISA gives the same bits. The environment
// variable FUSEDOPT_CPU_ISA (baseline|avx2|avx512) forces a variant, for
// tests and benchmarks; an ISA the CPU lacks is never selected.
#include <cstdlib>
#include <string>
#include <vector>

#include "cc/cpu/kernels.h"

namespace fusedopt {
namespace cpu {

namespace baseline {
const KernelTable& Table();
}
#if defined(FUSEDOPT_HAVE_AVX2)
namespace avx2 {
const KernelTable& Table();
}
#endif
#if defined(FUSEDOPT_HAVE_AVX512)
namespace avx512 {
const KernelTable& Table();
}
#endif

namespace {

bool CpuSupports(const std::string& isa) {
  if (isa == "baseline") return true;
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (isa == "avx2") return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (isa == "avx512") {
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }
#endif
  return false;
}

const KernelTable* CompiledTable(const std::string& isa) {
  if (isa == "baseline") return &baseline::Table();
#if defined(FUSEDOPT_HAVE_AVX2)
  if (isa == "avx2") return &avx2::Table();
#endif
#if defined(FUSEDOPT_HAVE_AVX512)
  if (isa == "avx512") return &avx512::Table();
#endif
  return nullptr;
}

const KernelTable& Choose() {
  const char* forced = std::getenv("FUSEDOPT_CPU_ISA");
  if (forced != nullptr && *forced != '\0') {
    const KernelTable* t = KernelsForIsa(forced);
    if (t != nullptr) return *t;
  }
  const std::vector<std::string> isas = CompiledIsas();
  for (auto it = isas.rbegin(); it != isas.rend(); ++it) {
    if (const KernelTable* t = KernelsForIsa(*it)) return *t;
  }
  return baseline::Table();
}

}  // namespace

std::vector<std::string> CompiledIsas() {
  std::vector<std::string> isas{"baseline"};
#if defined(FUSEDOPT_HAVE_AVX2)
  isas.push_back("avx2");
#endif
#if defined(FUSEDOPT_HAVE_AVX512)
  isas.push_back("avx512");
#endif
  return isas;
}

const KernelTable* KernelsForIsa(const std::string& isa) {
  if (!CpuSupports(isa)) return nullptr;
  return CompiledTable(isa);
}

const KernelTable& SelectedKernels() {
  static const KernelTable& selected = Choose();
  return selected;
}

}  // namespace cpu
}  // namespace fusedopt
