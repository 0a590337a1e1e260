// Fusedopt>BuildInfo: how this library was built, as JSON.
#include <string>

#include "cc/cpu/kernels.h"
#include "tensorflow/core/framework/op_kernel.h"
#if defined(FUSEDOPT_WITH_CUDA)
#include "cc/cuda/launchers.h"
#endif

#ifndef FUSEDOPT_VERSION
#error "FUSEDOPT_VERSION must be defined by the build"
#endif

namespace fusedopt {
namespace tf {
namespace {

// A JSON string (the CUDA status texts are plain ASCII; quotes and
// backslashes are escaped all the same).
std::string Quote(const std::string& s) {
  std::string out = "\"";
  for (char ch : s) {
    if (ch == '"' || ch == '\\') out += '\\';
    out += ch;
  }
  return out + "\"";
}

std::string JsonList(const std::vector<std::string>& items) {
  std::string out = "[";
  for (size_t i = 0; i < items.size(); ++i) out += (i ? ", " : "") + Quote(items[i]);
  return out + "]";
}

std::vector<std::string> Split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::string cur;
  for (char ch : s) {
    if (ch == sep) {
      if (!cur.empty()) out.push_back(cur);
      cur.clear();
    } else {
      cur += ch;
    }
  }
  if (!cur.empty()) out.push_back(cur);
  return out;
}

// The rules with low-precision state (Note [low-precision state]) and, for
// each, its slots that hold non-negative values (the unsigned 8-bit code).
std::string LowPrecisionStateJson() {
  std::string j = "{";
  bool first = true;
  for (const RuleInfo& r : kRuleInfos) {
    if (NumStateVariants(r.rule) == 0) continue;
    std::vector<std::string> nonneg;
    for (int k = 0; k < r.num_slots; ++k) {
      if ((r.nonneg_slots >> k) & 1u) nonneg.push_back(r.slots[k].name);
    }
    j += (first ? "" : ", ") + Quote(r.name) + ": {\"nonneg_slots\": " + JsonList(nonneg) + "}";
    first = false;
  }
  return j + "}";
}

std::string BuildInfoJson() {
  std::string j = "{";
  j += "\"fusedopt_version\": " + Quote(FUSEDOPT_VERSION);
  j += ", \"tensorflow_built_against\": " + Quote(FUSEDOPT_TF_VERSION);
  j += ", \"compiler\": " + Quote(FUSEDOPT_COMPILER);
  j += ", \"cpu_simd_compiled\": " + JsonList(cpu::CompiledIsas());
  j += ", \"cpu_simd_selected\": " + Quote(cpu::SelectedKernels().isa);
  j += ", \"low_precision_state\": " + LowPrecisionStateJson();
#if defined(FUSEDOPT_WITH_CUDA)
  j += ", \"cuda\": true";
  j += ", \"cuda_version\": " + Quote(FUSEDOPT_CUDA_VERSION);
  j += ", \"cuda_architectures\": " + JsonList(Split(FUSEDOPT_CUDA_ARCHS, ','));
  j += ", \"cuda_runtime_version\": " + std::to_string(fusedopt_cuda_runtime_version());
  j += ", \"cuda_driver_version\": " + std::to_string(fusedopt_cuda_driver_version());
  // Whether the kernels can launch in this process (a device, and a driver
  // new enough for the CUDA runtime linked in): checked once per process.
  const int usable = fusedopt_cuda_check_usable();
  j += std::string(", \"cuda_usable\": ") + (usable == 0 ? "true" : "false");
  j += ", \"cuda_status\": " + Quote(usable == 0 ? "ok" : fusedopt_cuda_error_string(usable));
#else
  j += ", \"cuda\": false, \"cuda_version\": null, \"cuda_architectures\": []";
  j += ", \"cuda_usable\": false, \"cuda_status\": \"built without CUDA\"";
#endif
  return j + "}";
}

class BuildInfoOp : public tensorflow::OpKernel {
 public:
  using OpKernel::OpKernel;
  void Compute(tensorflow::OpKernelContext* ctx) override {
    tensorflow::Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, tensorflow::TensorShape({}), &out));
    out->scalar<tensorflow::tstring>()() = BuildInfoJson();
  }
};

REGISTER_KERNEL_BUILDER(Name("Fusedopt>BuildInfo").Device(tensorflow::DEVICE_CPU), BuildInfoOp);

}  // namespace
}  // namespace tf
}  // namespace fusedopt
