// Note [variable semantics]: the fused ops keep TensorFlow's own rules for
// resource variables, with two deliberate strengthenings.
//  * Every variable of a call is locked exclusively (TF's training ops take a
//    shared lock unless use_locking=True), in address order, so two fused
//    calls over overlapping variable sets cannot deadlock.
//  * All validation happens after locking and before the first write: a bad
//    input fails the call with every variable unchanged.
// Copy-on-write is TF's: if a variable's buffer is referenced by anyone else
// (a tensor some op read earlier and still holds) or the variable is in
// copy-on-read mode, the update goes to a fresh copy and the old buffer stays
// as the reader saw it. The copy is written here rather than through
// PrepareToUpdateVariable, whose GPU instantiation needs a symbol that only
// libtensorflow_cc exports.
#include "absl/strings/str_cat.h"
#include "cc/tf/variable_access.h"

#include <algorithm>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"

#include "tensorflow/core/framework/resource_mgr.h"
#include "tensorflow/core/framework/tensor_shape.h"
#include "tensorflow/core/framework/types.h"

namespace fusedopt {
namespace tf {

using tensorflow::DataType;
using tensorflow::DataTypeString;
using tensorflow::OpKernelContext;
using tensorflow::Tensor;
using tensorflow::TensorShape;
using tensorflow::Var;
namespace errors = tensorflow::errors;

absl::Status CpuCopy(OpKernelContext*, void* dst, const void* src, int64_t bytes) {
  if (bytes > 0) std::memcpy(dst, src, static_cast<size_t>(bytes));
  return absl::OkStatus();
}

VariableSet::~VariableSet() {
  for (auto it = locked_.rbegin(); it != locked_.rend(); ++it) (*it)->unlock();
}

std::string VariableSet::label(int i) const {
  const Origin& o = origins_[i];
  return absl::StrCat(o.input, "[", o.index, "] ('",
                      tensorflow::HandleFromInput(ctx_, o.input_pos).name(), "')");
}

absl::Status VariableSet::Lookup(const char* input_name, int* first) {
  int start = 0, stop = 0;
  TF_RETURN_IF_ERROR(ctx_->op_kernel().InputRange(input_name, &start, &stop));
  *first = size();
  vars_.reserve(vars_.size() + (stop - start));
  for (int i = start; i < stop; ++i) {
    const tensorflow::ResourceHandle& handle = tensorflow::HandleFromInput(ctx_, i);
    tensorflow::core::RefCountPtr<Var> var;
    absl::Status s = tensorflow::LookupResource(ctx_, handle, &var);
    origins_.push_back(Origin{input_name, i - start, i});
    if (!s.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(label(size()), " could not be found: ",
                                                     s.message(),
                                                     " (was it initialized, or deleted?)"));
    }
    vars_.push_back(std::move(var));
  }
  return absl::OkStatus();
}

absl::Status VariableSet::CheckDistinctAndLock() {
  // Sorting by address finds duplicates in O(n log n) and is the lock order.
  std::vector<std::pair<Var*, int>> order;
  order.reserve(vars_.size());
  for (int i = 0; i < size(); ++i) order.emplace_back(vars_[i].get(), i);
  std::sort(order.begin(), order.end());
  for (size_t k = 1; k < order.size(); ++k) {
    if (order[k].first == order[k - 1].first) {
      const int a = std::max(order[k].second, order[k - 1].second);
      const int b = std::min(order[k].second, order[k - 1].second);
      return absl::InvalidArgumentError(absl::StrCat(
          label(a), " and ", label(b),
          " are the same variable; each variable may appear only once in a call"));
    }
  }
  locked_.reserve(order.size());
  for (const auto& [var, index] : order) {
    var->mu()->lock();
    locked_.push_back(var->mu());
  }
  return absl::OkStatus();
}

absl::Status VariableSet::ValidateDtype(int i, DataType dtype) const {
  const Tensor& t = *vars_[i]->tensor();
  if (!vars_[i]->is_initialized || !t.IsInitialized()) {
    return absl::InvalidArgumentError(absl::StrCat(label(i), " is not initialized"));
  }
  if (t.dtype() != dtype) {
    return absl::InvalidArgumentError(absl::StrCat(label(i), " has dtype ", DTypeName(t.dtype()),
                                                   ", but the call's gradients are ",
                                                   DTypeName(dtype)));
  }
  return absl::OkStatus();
}

absl::Status VariableSet::ValidateShape(int i, const TensorShape& shape,
                                        const std::string& what) const {
  const TensorShape& have = vars_[i]->tensor()->shape();
  if (have != shape) {
    return absl::InvalidArgumentError(absl::StrCat(label(i), " has shape ", have.DebugString(), " but ", what,
                                   " has shape ", shape.DebugString()));
  }
  return absl::OkStatus();
}

namespace {

// Gives the variable's tensor `t` a private buffer holding its values (the
// copy step of TF's copy-on-write), so readers of the old buffer keep it.
absl::Status CopyToPrivateBuffer(OpKernelContext* ctx, DeviceCopyFn copy, Tensor* t) {
  Tensor fresh;
  tensorflow::AllocatorAttributes attr;
  attr.set_gpu_compatible(true);
  attr.set_nic_compatible(true);
  TF_RETURN_IF_ERROR(ctx->allocate_temp(t->dtype(), t->shape(), &fresh, attr));
  TF_RETURN_IF_ERROR(copy(ctx, const_cast<char*>(fresh.tensor_data().data()),
                          t->tensor_data().data(),
                          static_cast<int64_t>(t->tensor_data().size())));
  *t = fresh;
  return absl::OkStatus();
}

}  // namespace

absl::Status VariableSet::PrepareForWrite(DeviceCopyFn copy) {
  for (auto& var : vars_) {
    Tensor* t = var->tensor();
    if (!var->copy_on_read_mode.load() && t->RefCountIsOne()) continue;
    TF_RETURN_IF_ERROR(CopyToPrivateBuffer(ctx_, copy, t));
  }
  return absl::OkStatus();
}

// Note [sparse access]: PrepareForWrite's rule (copy whenever the variable
// is in copy-on-read mode) is TF's for dense updates (PrepareToUpdateVariable).
// For the sparse ops it would copy the whole table on every step of any model
// whose lookup is a ResourceGather (tf_keras' Embedding, tf.nn.embedding_lookup
// of a variable, every ParameterServerStrategy shard): ResourceGather sets
// copy-on-read mode, so every update copied each shard, var and slots (12 ms
// instead of 0.6 ms for a lazy two-slot step on a 500,000 x 64 table;
// docs/benchmarks.md, "Parameter servers"). TF's sparse training ops instead
// keep the mode and write in place, which is safe: in copy-on-read mode every
// ReadVariableOp copies the buffer under the variable's lock, ResourceGather
// reads under the shared lock, and this op holds the exclusive lock.
absl::Status VariableSet::PrepareForSparseWrite(DeviceCopyFn copy) {
  for (auto& var : vars_) {
    if (var->copy_on_read_mode.load()) continue;
    Tensor* t = var->tensor();
    if (!t->RefCountIsOne()) TF_RETURN_IF_ERROR(CopyToPrivateBuffer(ctx_, copy, t));
    var->copy_on_read_mode.store(true);
  }
  return absl::OkStatus();
}

absl::Status ReadScalar(OpKernelContext* ctx, const std::string& name, double* out) {
  const Tensor* t = nullptr;
  TF_RETURN_IF_ERROR(ctx->input(name, &t));
  if (!tensorflow::TensorShapeUtils::IsScalar(t->shape())) {
    return absl::InvalidArgumentError(absl::StrCat("hyperparameter '", name, "' must be a scalar, got shape ",
                                   t->shape().DebugString()));
  }
  switch (t->dtype()) {
    case tensorflow::DT_FLOAT:
      *out = t->scalar<float>()();
      return absl::OkStatus();
    case tensorflow::DT_DOUBLE:
      *out = t->scalar<double>()();
      return absl::OkStatus();
    default:
      return absl::InvalidArgumentError(absl::StrCat("hyperparameter '", name, "' must be float32 or float64, got ",
                                                     DTypeName(t->dtype())));
  }
}

std::string DTypeName(DataType dtype) {
  switch (dtype) {
    case tensorflow::DT_HALF:
      return "float16";
    case tensorflow::DT_FLOAT:
      return "float32";
    case tensorflow::DT_DOUBLE:
      return "float64";
    default:
      return DataTypeString(dtype);
  }
}

int DTypeIndex(DataType dtype) {
  switch (dtype) {
    case tensorflow::DT_HALF:
      return 0;
    case tensorflow::DT_BFLOAT16:
      return 1;
    case tensorflow::DT_FLOAT:
      return 2;
    case tensorflow::DT_DOUBLE:
      return 3;
    default:
      return -1;
  }
}

}  // namespace tf
}  // namespace fusedopt
