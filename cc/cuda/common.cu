// Launcher plumbing shared by the kernels: versions, errors, copies.
#include <cuda_runtime.h>

#include "cc/cuda/launchers.h"

extern "C" int fusedopt_cuda_runtime_version(void) { return CUDART_VERSION; }

extern "C" int fusedopt_cuda_driver_version(void) {
  int v = 0;
  return cudaDriverGetVersion(&v) == cudaSuccess ? v : 0;
}

extern "C" const char* fusedopt_cuda_error_string(int code) {
  return cudaGetErrorString(static_cast<cudaError_t>(code));
}

extern "C" int fusedopt_cuda_check_usable(void) {
  static const int status = [] {
    int count = 0;
    cudaError_t err = cudaGetDeviceCount(&count);
    if (err == cudaSuccess && count == 0) err = cudaErrorNoDevice;
    return static_cast<int>(err);
  }();
  return status;
}

extern "C" int fusedopt_cuda_copy(void* dst, const void* src, int64_t bytes, void* stream) {
  if (bytes == 0) return 0;
  return static_cast<int>(cudaMemcpyAsync(dst, src, static_cast<size_t>(bytes),
                                          cudaMemcpyDeviceToDevice,
                                          static_cast<cudaStream_t>(stream)));
}
