// C++ entry points of the native layer for other parts of the library (the
// XLA custom-call handler): the C ABI's dense apply with the caller's
// ParallelFor instead of the C ABI's own threads.
#ifndef FUSEDOPT_CC_NATIVE_API_INTERNAL_H_
#define FUSEDOPT_CC_NATIVE_API_INTERNAL_H_

#include <functional>
#include <string>

#include "cc/core/cpu_run.h"
#include "cc/native/fusedopt_native.h"

namespace fusedopt {
namespace native {

// fusedopt_apply for a CPU call, running chunks on `pfor`. Returns a
// FUSEDOPT_* code; *err holds the message of an error.
// `tf_forms`, if given, is called once the call is checked, before anything
// is written: its `run` replaces the run, its `lamb_norms` LAMB's sums.
int ApplyCpu(const fusedopt_call* call, const fusedopt_tensors* t, const ParallelFor& pfor,
             int* skipped, std::string* err, const TfFormsMaker& tf_forms = nullptr);

}  // namespace native
}  // namespace fusedopt

#endif  // FUSEDOPT_CC_NATIVE_API_INTERNAL_H_
