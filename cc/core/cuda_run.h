// The elementwise rules on CUDA for a call's operands: the TF GPU kernels and
// the native layer group the tensors by plan (rank-0 variables have their own
// coefficients and variant) and launch each group with
// fusedopt_cuda_elementwise_multi. No CUDA or TensorFlow header.
#ifndef FUSEDOPT_CC_CORE_CUDA_RUN_H_
#define FUSEDOPT_CC_CORE_CUDA_RUN_H_

#if defined(FUSEDOPT_WITH_CUDA)

#include <cstdint>
#include <vector>

#include "cc/core/cpu_run.h"
#include "cc/core/plan.h"
#include "cc/cuda/launchers.h"

namespace fusedopt {

// Returns 0 or the first CUDA error code.
inline int RunElementwiseCuda(const Operands& ops, const Plan& plan, Rule rule, int dt,
                              bool decay, void* stream) {
  std::vector<void*> vars, slots;
  std::vector<const void*> grads;
  std::vector<int64_t> sizes;
  std::vector<double> scales, clips;
  for (int rank0 = 0; rank0 < 2; ++rank0) {
    vars.clear();
    slots.clear();
    grads.clear();
    sizes.clear();
    scales.clear();
    clips.clear();
    for (int i = 0; i < ops.n; ++i) {
      if (ops.IsRank0(i) != (rank0 == 1) || ops.sizes[i] == 0) continue;
      vars.push_back(ops.vars[i]);
      slots.insert(slots.end(), ops.slots[i].begin(), ops.slots[i].end());
      grads.push_back(ops.grads[i]);
      sizes.push_back(ops.sizes[i]);
      scales.push_back(ops.transform ? ops.xforms[i].scale : 1.0);
      clips.push_back(ops.transform ? ops.xforms[i].clip_value : 0.0);
    }
    if (vars.empty()) continue;
    const int err = fusedopt_cuda_elementwise_multi(
        static_cast<int>(rule), dt,
        plan.rsqrt_forms ? WithRsqrtForm(rule, plan.VariantFor(rank0 == 1), kPacketRsqrt)
                         : plan.VariantFor(rank0 == 1),
        decay ? 1 : 0, plan.For(rank0 == 1).c, ops.transform ? 1 : 0,
        static_cast<int>(vars.size()), vars.data(), slots.data(), grads.data(), sizes.data(),
        scales.data(), clips.data(), stream);
    if (err != 0) return err;
  }
  return 0;
}

// Low-precision state (Note [low-precision state]) on CUDA: the call's
// tensors by plan (rank-0 ones apart, as above) through
// fusedopt_cuda_state_multi, with the call's xforms always (the identity {1,
// inf} without a transform, as the CPU's state loops take them) and each
// tensor's position in the call for its rounding keys. Returns 0 or the first
// CUDA error code.
inline int RunStateCuda(const Operands& ops, const Plan& plan, Rule rule, int dt, bool decay,
                        void* stream) {
  const bool int8 = plan.state_format == StateFormat::kInt8;
  for (int rank0 = 0; rank0 < 2; ++rank0) {
    std::vector<void*> vars, slots;
    std::vector<float*> absmax;
    std::vector<const void*> grads;
    std::vector<int64_t> sizes, row_sizes;
    std::vector<int> tensors;
    std::vector<double> scales, clips;
    for (int i = 0; i < ops.n; ++i) {
      if (ops.IsRank0(i) != (rank0 == 1) || ops.sizes[i] == 0) continue;
      vars.push_back(ops.vars[i]);
      slots.insert(slots.end(), ops.slots[i].begin(), ops.slots[i].end());
      for (int k = 0; k < kMaxSlots; ++k) {
        absmax.push_back(int8 && k < ops.num_slots ? ops.absmax[i][k] : nullptr);
      }
      grads.push_back(ops.grads[i]);
      sizes.push_back(ops.sizes[i]);
      row_sizes.push_back(int8 ? ops.layouts[i].row_size : 0);
      tensors.push_back(i);
      scales.push_back(ops.xforms[i].scale);
      clips.push_back(ops.xforms[i].clip_value);
    }
    if (vars.empty()) continue;
    const int err = fusedopt_cuda_state_multi(
        static_cast<int>(rule), dt, plan.variant, decay ? 1 : 0, plan.For(rank0 == 1).c,
        static_cast<int>(plan.state_format), plan.stochastic_weights ? 1 : 0, plan.rounding_seed,
        static_cast<int>(vars.size()), vars.data(), slots.data(), absmax.data(), grads.data(),
        sizes.data(), row_sizes.data(), tensors.data(), scales.data(), clips.data(), stream);
    if (err != 0) return err;
  }
  return 0;
}

}  // namespace fusedopt

#endif  // FUSEDOPT_WITH_CUDA
#endif  // FUSEDOPT_CC_CORE_CUDA_RUN_H_
