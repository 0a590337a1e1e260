// C++ entry points of the native layer for other parts of the library (the
// XLA custom-call handler): the C ABI's dense apply with the caller's
// ParallelFor instead of the C ABI's own threads.
#ifndef FUSEDOPT_CC_NATIVE_API_INTERNAL_H_
#define FUSEDOPT_CC_NATIVE_API_INTERNAL_H_

#include <string>

#include "cc/core/cpu_run.h"
#include "cc/native/fusedopt_native.h"

namespace fusedopt {
namespace native {

// fusedopt_apply for a CPU call, running chunks on `pfor`. Returns a
// FUSEDOPT_* code; *err holds the message of an error.
int ApplyCpu(const fusedopt_call* call, const fusedopt_tensors* t, const ParallelFor& pfor,
             int* skipped, std::string* err);

}  // namespace native
}  // namespace fusedopt

#endif  // FUSEDOPT_CC_NATIVE_API_INTERNAL_H_
