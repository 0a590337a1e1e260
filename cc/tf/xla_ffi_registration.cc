// The op library's copy of the Host handlers (cc/xla/ffi_handler.cc), with
// TensorFlow's numeric forms (cc/tf/tf_numerics.h) as its hooks, registered
// with TensorFlow's XLA when the library loads (Note [one handler, two XLAs]
// in cc/xla/ffi_handler.h; Note [XLA lowering] in cc/tf/xla_ops.cc).
#include "cc/tf/tf_numerics.h"
#include "cc/xla/ffi_handler.h"
#include "xla/ffi/api/ffi.h"

// The process's FFI API (libtensorflow_framework exports it; its header,
// xla/ffi/ffi_api.h, pulls in XLA's internals).
namespace xla::ffi {
const XLA_FFI_Api* GetXlaFfiApi();
}  // namespace xla::ffi

namespace fusedopt {
namespace tf {
namespace {

const xla_ffi::TfFormHooks kTfFormHooks = [] {
  xla_ffi::TfFormHooks hooks;
  hooks.apply_forms = &TfFormsInline;
  hooks.adafactor_has_tf_form = &AdafactorHasTfForm;
  hooks.adafactor_tf_reductions = &AdafactorTfReductionsInline;
  return hooks;
}();

// Static initialization runs in this order within the file: the hooks are in
// place before the handlers are registered.
const bool kHooksSet = (xla_ffi::SetTfFormHooks(&kTfFormHooks), true);

}  // namespace

XLA_FFI_REGISTER_HANDLER(::xla::ffi::GetXlaFfiApi(), "fusedopt_adafactor", "Host",
                         xla_ffi::AdafactorHandler());
XLA_FFI_REGISTER_HANDLER(::xla::ffi::GetXlaFfiApi(), "fusedopt_apply", "Host",
                         xla_ffi::FusedApplyHandler());

}  // namespace tf
}  // namespace fusedopt
