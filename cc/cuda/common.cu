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

extern "C" int fusedopt_cuda_malloc(void** ptr, int64_t bytes) {
  *ptr = nullptr;
  if (bytes <= 0) return 0;
  return static_cast<int>(cudaMalloc(ptr, static_cast<size_t>(bytes)));
}

extern "C" int fusedopt_cuda_free(void* ptr) {
  return ptr == nullptr ? 0 : static_cast<int>(cudaFree(ptr));
}

extern "C" int fusedopt_cuda_copy_to_host(void* dst, const void* src, int64_t bytes, void* stream) {
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  if (bytes > 0) {
    const cudaError_t e =
        cudaMemcpyAsync(dst, src, static_cast<size_t>(bytes), cudaMemcpyDeviceToHost, s);
    if (e != cudaSuccess) return static_cast<int>(e);
  }
  return static_cast<int>(cudaStreamSynchronize(s));
}

extern "C" int fusedopt_cuda_synchronize(void* stream) {
  return static_cast<int>(cudaStreamSynchronize(static_cast<cudaStream_t>(stream)));
}

extern "C" int fusedopt_cuda_pointer_device(const void* ptr) {
  cudaPointerAttributes attr;
  if (cudaPointerGetAttributes(&attr, ptr) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky-free error state of this query
    return -1;
  }
  return (attr.type == cudaMemoryTypeDevice || attr.type == cudaMemoryTypeManaged) ? attr.device
                                                                                    : -1;
}

extern "C" int fusedopt_cuda_malloc_async(void** ptr, int64_t bytes, void* stream) {
  *ptr = nullptr;
  if (bytes <= 0) return 0;
  return static_cast<int>(
      cudaMallocAsync(ptr, static_cast<size_t>(bytes), static_cast<cudaStream_t>(stream)));
}

extern "C" int fusedopt_cuda_free_async(void* ptr, void* stream) {
  return ptr == nullptr ? 0
                        : static_cast<int>(cudaFreeAsync(ptr, static_cast<cudaStream_t>(stream)));
}

extern "C" int fusedopt_cuda_get_device(int* device) {
  return static_cast<int>(cudaGetDevice(device));
}

extern "C" int fusedopt_cuda_set_device(int device) {
  return static_cast<int>(cudaSetDevice(device));
}

extern "C" int fusedopt_cuda_device_count(void) {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return count;
}
