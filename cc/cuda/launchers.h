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

// SGD over n elements. dtype: 0 float16, 1 bfloat16, 2 float32, 3 float64
// (fusedopt::DType). variant: 0 plain, 1 momentum, 2 nesterov. decay: 0 off,
// 1 on; decay_lr = weight_decay * lr. mom may be null for the plain variant.
int fusedopt_cuda_sgd(int dtype, int variant, int decay, double lr, double momentum,
                      double decay_lr, void* var, void* mom, const void* grad, int64_t n,
                      void* stream);

#ifdef __cplusplus
}  // extern "C"
#endif

#endif  // FUSEDOPT_CC_CUDA_LAUNCHERS_H_
