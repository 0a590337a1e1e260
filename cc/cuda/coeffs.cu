// A call's coefficients computed on the device from scalars in device memory
// (Note [device coefficients] in cc/rules/coefficients.h): one thread runs the
// host's coefficient code (cc/rules/device_coeffs.h) on the learning rate, the
// hyperparameters and the step where they live, so a step needs no copy to
// the host and no wait for the stream.
#include <cuda_runtime.h>

#include "cc/cuda/launchers.h"
#include "cc/rules/device_coeffs.h"

namespace fusedopt {
namespace cuda {
namespace {

struct CoeffsArgs {
  int rule;
  bool f64;
  DeviceScalars scalars;
  CoeffForm forms[2];  // the plan's form and its rank-0 form
};

CoeffForm FormOf(const double* f) {
  CoeffForm form;
  form.minimize_broadcasts = f[0] != 0;
  form.tf_keras_sparse = f[1] != 0;
  form.tf_form = f[2] != 0;
  form.epsilon_outside_sqrt = f[3] != 0;
  form.constant_folding = f[4] != 0;
  form.schedule_decay = f[5];
  return form;
}

__global__ void DeviceCoeffsKernel(CoeffsArgs a, double* out) {
  if (blockIdx.x != 0 || threadIdx.x != 0) return;
  Coeffs c[2] = {};
  CoeffResult r;
  for (int k = 0; k < 2 && r.status == CoeffStatus::kOk; ++k) {
    r = DeviceCoeffs(static_cast<Rule>(a.rule), a.f64, a.scalars, a.forms[k], &c[k]);
  }
  for (int k = 0; k < 2; ++k) {
    for (int j = 0; j < kMaxCoeffs; ++j) out[k * kMaxCoeffs + j] = c[k].c[j];
  }
  out[2 * kMaxCoeffs] = static_cast<double>(static_cast<int>(r.status));
  out[2 * kMaxCoeffs + 1] = r.scalar;
  out[2 * kMaxCoeffs + 2] = r.value;
}

}  // namespace
}  // namespace cuda
}  // namespace fusedopt

extern "C" int fusedopt_cuda_device_coeffs(int rule, int f64, const void* const* scalars,
                                           const int* scalar_types, int num_scalars,
                                           const void* step, int step_type, const double* forms,
                                           double* out, void* stream) {
  using namespace fusedopt;
  if (rule < 0 || rule >= kNumRules || num_scalars != InfoOf(static_cast<Rule>(rule)).num_scalars) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  cuda::CoeffsArgs a{};
  a.rule = rule;
  a.f64 = f64 != 0;
  a.scalars.num_scalars = num_scalars;
  for (int k = 0; k < num_scalars; ++k) {
    a.scalars.scalars[k] = ScalarRef{scalars[k], static_cast<ScalarType>(scalar_types[k])};
  }
  a.scalars.has_step = InfoOf(static_cast<Rule>(rule)).has_step;
  a.scalars.step = ScalarRef{step, static_cast<ScalarType>(step_type)};
  a.forms[0] = cuda::FormOf(forms);
  a.forms[1] = cuda::FormOf(forms + 6);
  cuda::DeviceCoeffsKernel<<<1, 1, 0, static_cast<cudaStream_t>(stream)>>>(a, out);
  return static_cast<int>(cudaGetLastError());
}
