// The CPU update loops, compiled once per instruction set.
//
// CMake builds this file several times with FUSEDOPT_ISA set to baseline,
// avx2 or avx512 and the matching -m flags; each build defines its own
// fusedopt::cpu::<isa>::Table(). The loops are plain C++ over __restrict
// pointers that the compiler vectorizes for the ISA at hand. All builds use
// -ffp-contract=off, so every ISA produces the same bits (Note [SIMD dispatch]).
#include <cstdint>

#include "cc/cpu/kernels.h"
#include "cc/rules/update_rules.h"

#ifndef FUSEDOPT_ISA
#error "FUSEDOPT_ISA must be defined by the build (baseline, avx2 or avx512)"
#endif

#define FUSEDOPT_STR2(x) #x
#define FUSEDOPT_STR(x) FUSEDOPT_STR2(x)

namespace fusedopt {
namespace cpu {
namespace FUSEDOPT_ISA {
namespace {

template <typename T, SgdVariant V, Decay D>
void SgdSpan(const SgdScalars& s, void* var_p, void* mom_p, const void* grad_p, int64_t begin,
             int64_t end) {
  using M = opmath_t<T>;
  const SgdCoeffs<M> c = SgdCoeffs<M>::From(s);
  T* __restrict var = static_cast<T*>(var_p);
  const T* __restrict grad = static_cast<const T*>(grad_p);
  if constexpr (V == SgdVariant::kPlain) {
    M unused = M(0);
    for (int64_t i = begin; i < end; ++i) {
      M v = Load(var[i]);
      SgdRule<V, D>::Apply(c, v, unused, Load(grad[i]));
      var[i] = Store<T>(v);
    }
  } else {
    T* __restrict mom = static_cast<T*>(mom_p);
    for (int64_t i = begin; i < end; ++i) {
      M v = Load(var[i]);
      M m = Load(mom[i]);
      SgdRule<V, D>::Apply(c, v, m, Load(grad[i]));
      var[i] = Store<T>(v);
      mom[i] = Store<T>(m);
    }
  }
}

template <typename T>
void FillSgd(SgdSpanFn (&row)[kNumSgdVariants][2]) {
  row[0][0] = &SgdSpan<T, SgdVariant::kPlain, Decay::kOff>;
  row[0][1] = &SgdSpan<T, SgdVariant::kPlain, Decay::kOn>;
  row[1][0] = &SgdSpan<T, SgdVariant::kMomentum, Decay::kOff>;
  row[1][1] = &SgdSpan<T, SgdVariant::kMomentum, Decay::kOn>;
  row[2][0] = &SgdSpan<T, SgdVariant::kNesterov, Decay::kOff>;
  row[2][1] = &SgdSpan<T, SgdVariant::kNesterov, Decay::kOn>;
}

KernelTable MakeTable() {
  KernelTable t{};
  t.isa = FUSEDOPT_STR(FUSEDOPT_ISA);
  FillSgd<Half>(t.sgd[static_cast<int>(DType::kFloat16)]);
  FillSgd<BFloat16>(t.sgd[static_cast<int>(DType::kBFloat16)]);
  FillSgd<float>(t.sgd[static_cast<int>(DType::kFloat32)]);
  FillSgd<double>(t.sgd[static_cast<int>(DType::kFloat64)]);
  return t;
}

}  // namespace

const KernelTable& Table() {
  static const KernelTable table = MakeTable();
  return table;
}

}  // namespace FUSEDOPT_ISA
}  // namespace cpu
}  // namespace fusedopt
