// Resource-variable access for the fused ops: lookup, duplicate detection,
// locking in address order, validation and copy-on-write, all before anything
// is written. See Note [variable semantics] in variable_access.cc.
#ifndef FUSEDOPT_CC_TF_VARIABLE_ACCESS_H_
#define FUSEDOPT_CC_TF_VARIABLE_ACCESS_H_

#include <string>
#include <vector>

#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/resource_var.h"

namespace fusedopt {
namespace tf {

// Copies `bytes` bytes between two buffers of the op's device.
using DeviceCopyFn = absl::Status (*)(tensorflow::OpKernelContext* ctx, void* dst,
                                      const void* src, int64_t bytes);

absl::Status CpuCopy(tensorflow::OpKernelContext* ctx, void* dst, const void* src, int64_t bytes);

// The resource variables of one op call, from one or more list inputs.
// Usage: Lookup(), then Lock() (exclusive, address order; released by the
// destructor), then Validate*(), then PrepareForWrite(), then write through
// tensor(i).
class VariableSet {
 public:
  explicit VariableSet(tensorflow::OpKernelContext* ctx) : ctx_(ctx) {}
  ~VariableSet();
  VariableSet(const VariableSet&) = delete;
  VariableSet& operator=(const VariableSet&) = delete;

  // Looks up the variables of list input `input_name`; returns the index of
  // its first variable within this set.
  absl::Status Lookup(const char* input_name, int* first);

  // Rejects a variable that appears twice in the set (under any input) with
  // InvalidArgument naming both positions, then takes every variable's mutex,
  // exclusively, in address order. Nothing is locked when it fails.
  absl::Status CheckDistinctAndLock();

  // Checks that variable i is initialized and has dtype `dtype`.
  absl::Status ValidateDtype(int i, tensorflow::DataType dtype) const;
  // Checks that variable i has shape `shape`; `what` names where the
  // expected shape comes from (e.g. "grads[3]").
  absl::Status ValidateShape(int i, const tensorflow::TensorShape& shape,
                             const std::string& what) const;

  // Copy-on-write: gives every variable whose buffer is shared (or that is
  // in copy-on-read mode) a private copy, so no reader sees it change.
  absl::Status PrepareForWrite(DeviceCopyFn copy);

  // The sparse ops' access, TensorFlow's EnsureSparseVariableAccess: a
  // variable in copy-on-read mode (set by any sparse op, ResourceGather
  // included: an embedding lookup) is written in place, because its readers
  // copy it; otherwise a shared buffer is copied once and the variable enters
  // copy-on-read mode. Note [sparse access] in variable_access.cc.
  absl::Status PrepareForSparseWrite(DeviceCopyFn copy);

  int size() const { return static_cast<int>(vars_.size()); }
  tensorflow::Tensor* tensor(int i) { return vars_[i]->tensor(); }
  const tensorflow::Tensor& tensor(int i) const { return *vars_[i]->tensor(); }
  // "vars[3] ('dense/kernel')": built on demand, for error messages.
  std::string label(int i) const;
  void* data(int i) { return const_cast<char*>(vars_[i]->tensor()->tensor_data().data()); }

 private:
  tensorflow::OpKernelContext* ctx_;
  struct Origin {
    const char* input;
    int index;
    int input_pos;  // position among the op's inputs, for the handle's name
  };
  std::vector<tensorflow::core::RefCountPtr<tensorflow::Var>> vars_;
  std::vector<Origin> origins_;
  std::vector<tensorflow::mutex*> locked_;
};

// Reads a scalar float/double hyperparameter input into a double; rejects a
// non-scalar with InvalidArgument naming the input.
absl::Status ReadScalar(tensorflow::OpKernelContext* ctx, const std::string& name, double* out);

// The dtype's name as NumPy and tf.as_dtype spell it (float32, not "float").
std::string DTypeName(tensorflow::DataType dtype);

// The fusedopt::DType index of a TensorFlow dtype, or -1.
int DTypeIndex(tensorflow::DataType dtype);

}  // namespace tf
}  // namespace fusedopt

#endif  // FUSEDOPT_CC_TF_VARIABLE_ACCESS_H_
