// The typed-FFI handlers of the fused updates for XLA's "Host" platform
// (cc/xla/ffi_handler.cc), written against XLA's FFI API headers alone
// (xla/ffi/api), with no TensorFlow header.
//
// Note [one handler, two XLAs]: the same handler source is built into two
// libraries. The op library (_fusedopt_ops.so) registers it into
// TensorFlow's XLA (cc/tf/xla_ffi_registration.cc, with TensorFlow's numeric
// forms as TfFormHooks); fusedopt._native exposes it as PyCapsules that
// jax.ffi.register_ffi_target accepts (fusedopt.jax), without the hooks.
// Both builds use the FFI headers of TensorFlow 2.21 when it is installed
// (API 0.2, which TensorFlow's XLA and jaxlib 0.10's (API 0.3) accept: a
// runtime takes a handler of its major version and a minor version no newer
// than its own), else jaxlib's.
#ifndef FUSEDOPT_CC_XLA_FFI_HANDLER_H_
#define FUSEDOPT_CC_XLA_FFI_HANDLER_H_

#include <vector>

#include "cc/core/adafactor.h"
#include "cc/core/cpu_run.h"
#include "cc/core/plan.h"
#include "xla/ffi/api/c_api.h"

namespace fusedopt {
namespace xla_ffi {

// TensorFlow's numeric forms (cc/tf/tf_numerics.h), which only the op
// library has: LAMB's tf_norms, Ftrl's tf_pow and Adafactor's tf_reductions
// run TensorFlow's own Eigen kernels on a device of `num_threads` threads.
// Without them (fusedopt._native) a call whose attributes ask for one of
// these forms is refused with InvalidArgument rather than run in another form.
struct TfFormHooks {
  TfForms (*apply_forms)(int num_threads, Rule rule, const RuleAttrs& attrs, const Operands& ops,
                         const Plan& plan, int dt, bool square_form) = nullptr;
  bool (*adafactor_has_tf_form)(int dt) = nullptr;
  void (*adafactor_tf_reductions)(int num_threads, int dt, const AdafactorScalars& s,
                                  const std::vector<AdafactorTensor>& ts) = nullptr;
};

// Installs the hooks of this library's copy of the handlers (each library
// links its own copy); call before the handlers are registered.
void SetTfFormHooks(const TfFormHooks* hooks);

// "fusedopt_apply": every dense fused rule (the layout of its operands,
// results and attributes is in ffi_handler.cc, FusedApplyHost).
XLA_FFI_Handler* FusedApplyHandler();
// "fusedopt_adafactor": Adafactor (AdafactorHost in ffi_handler.cc).
XLA_FFI_Handler* AdafactorHandler();

// The FFI API version `handler` reports to a runtime (the version of the
// headers it was built with), asked the way XLA asks at registration: a call
// frame carrying the metadata extension. False if the handler refused.
bool HandlerApiVersion(XLA_FFI_Handler* handler, int* major, int* minor);

}  // namespace xla_ffi
}  // namespace fusedopt

#endif  // FUSEDOPT_CC_XLA_FFI_HANDLER_H_
