// C ABI of the CUDA launchers.
//
// Plain C types only: raw device pointers, element counts, and the CUDA stream
// as an opaque pointer (a cudaStream_t / CUstream). No TensorFlow and no CUDA
// header is needed to call these, so the TF GPU kernels (cc/tf) and a
// TensorFlow-free test harness can both use them.
//
// Every launcher returns 0 on success or a CUDA error code; pass it to
// fusedopt_cuda_error_string() for a message.
#ifndef FUSEDOPT_CC_CUDA_LAUNCHERS_H_
#define FUSEDOPT_CC_CUDA_LAUNCHERS_H_

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// Version of the CUDA runtime the launchers were built with and link statically
// (e.g. 13000), and
// the version the installed driver supports (0 when no driver is present).
int fusedopt_cuda_runtime_version(void);
int fusedopt_cuda_driver_version(void);
const char* fusedopt_cuda_error_string(int code);

// Checks, once per process, that a CUDA device is usable by these launchers.
// Returns 0, or a CUDA error code (e.g. an insufficient driver).
int fusedopt_cuda_check_usable(void);

// dst <- src, `bytes` bytes, device to device, asynchronously on `stream`.
int fusedopt_cuda_copy(void* dst, const void* src, int64_t bytes, void* stream);

// One elementwise update rule over num_tensors tensors in as few launches as
// the kernel's parameter block allows (Note [multi-tensor launch] in
// elementwise.cuh: up to 224 tensors per launch).
// rule: fusedopt::Rule (cc/rules/registry.h; not a two-pass rule); dtype: fusedopt::DType (0 float16, 1 bfloat16,
// 2 float32, 3 float64); variant: the rule's variant index; decay: 0 or 1;
// coeffs: kMaxCoeffs (12) doubles from cc/rules/coefficients.h (copied before
// return); transform: 1 to apply g = clip(g * grad_scale, +-clip_value) first
// (fusedopt::GradXform). Tensor i: vars[i], grads[i], sizes[i]
// elements, slot k at slots[3 * i + k] (kMaxSlots = 3 per tensor, the rule's
// slots first); grad_scales[i] and clip_values[i] its transform (both may be
// NULL when transform is 0). Empty tensors are skipped. The kernels read and
// write 16-byte vectors where all of a tensor's pointers are 16-byte aligned;
// the bits do not depend on it.
int fusedopt_cuda_elementwise_multi(int rule, int dtype, int variant, int decay,
                                    const double* coeffs, int transform, int num_tensors,
                                    void* const* vars, void* const* slots,
                                    const void* const* grads, const int64_t* sizes,
                                    const double* grad_scales, const double* clip_values,
                                    void* stream);

// Low-precision state (Note [low-precision state], cc/cuda/state.cuh): one
// rule with a state variant (the rules with kStateVariants) over num_tensors
// float32 or bfloat16 (dtype) tensors. state_format: fusedopt::StateFormat
// (0 the variables' dtype: only with stochastic_weights, bfloat16 variables;
// 1 bfloat16 slots; 2 int8: uint8 codes, absmax[3 * i + k] the float32 absmax
// of slot k of tensor i, one per block of QuantLayout: row_sizes[i] elements
// a row (NULL or <= 0: one row), blocks of at most 256 along rows).
// stochastic_weights: bfloat16 variables stored with stochastic rounding.
// seed: the call's rounding seed (the step folded in, as the CPU's);
// tensors[i] (NULL: i): tensor i's position in the call for the rounding
// keys. grad_scales and clip_values: both NULL (no transform) or both given.
// The bits are the CPU loops'.
int fusedopt_cuda_state_multi(int rule, int dtype, int variant, int decay, const double* coeffs,
                              int state_format, int stochastic_weights, uint64_t seed,
                              int num_tensors, void* const* vars, void* const* slots,
                              float* const* absmax, const void* const* grads,
                              const int64_t* sizes, const int64_t* row_sizes, const int* tensors,
                              const double* grad_scales, const double* clip_values, void* stream);

// Note [device coefficients]: a rule's coefficients computed on the device
// from scalars in device memory, with the host's code. scalars[k] points at
// the rule's k-th scalar (RuleInfo::scalars order) of type scalar_types[k]
// (fusedopt::ScalarType: 0 float16, 1 bfloat16, 2 float32, 3 float64, 4 int32,
// 5 int64), step at the step (ignored for rules without one); forms: 2 x 6
// doubles, the plan's CoeffForm and its rank-0 one (minimize_broadcasts,
// tf_keras_sparse, tf_form, epsilon_outside_sqrt, constant_folding,
// schedule_decay). out (device memory, 2 * 12 + 3 doubles): the coefficients,
// the rank-0 coefficients, then the CoeffStatus (0: in range), the offending
// scalar's index and its value. One thread; nothing is copied to the host.
int fusedopt_cuda_device_coeffs(int rule, int f64, const void* const* scalars,
                                const int* scalar_types, int num_scalars, const void* step,
                                int step_type, const double* forms, double* out, void* stream);

// LAMB over one tensor (slots = {m, v}), two passes with a deterministic norm
// reduction. scratch: device memory of fusedopt_cuda_lamb_scratch_bytes(n)
// bytes, owned by the caller until the stream has run the launch.
int64_t fusedopt_cuda_lamb_scratch_bytes(int64_t n);
int fusedopt_cuda_lamb(int dtype, int decay, const double* coeffs, int transform,
                       double grad_scale, double clip_value, void* var, void* const* slots,
                       const void* grad, int64_t n, void* scratch, void* stream);

// The gradient statistics of one tensor: out[0] = sum of g^2 (double),
// out[1] = 1.0 if any element is inf or NaN, else 0.0. `out` and `scratch`
// (fusedopt_cuda_grad_stats_scratch_bytes(n) bytes) are device memory.
// Deterministic: the same bits on every run for the same n and values.
int64_t fusedopt_cuda_grad_stats_scratch_bytes(int64_t n);
int fusedopt_cuda_grad_stats(int dtype, const void* grad, int64_t n, void* scratch, double* out,
                             void* stream);

// Memory helpers for callers without a CUDA header (the native module).
int fusedopt_cuda_malloc(void** ptr, int64_t bytes);
int fusedopt_cuda_free(void* ptr);
// Copies device memory to the host on `stream` and waits for the stream.
// Stream-ordered allocation (cudaMallocAsync): no device-wide synchronization.
int fusedopt_cuda_malloc_async(void** ptr, int64_t bytes, void* stream);
int fusedopt_cuda_free_async(void* ptr, void* stream);
int fusedopt_cuda_get_device(int* device);
int fusedopt_cuda_device_count(void);  // 0 when none is usable
int fusedopt_cuda_set_device(int device);
int fusedopt_cuda_copy_to_host(void* dst, const void* src, int64_t bytes, void* stream);
int fusedopt_cuda_synchronize(void* stream);
// The device ordinal of a device (or managed) pointer, or -1 for host memory
// and unknown pointers.
int fusedopt_cuda_pointer_device(const void* ptr);

#ifdef __cplusplus
}  // extern "C"
#endif

#endif  // FUSEDOPT_CC_CUDA_LAUNCHERS_H_
