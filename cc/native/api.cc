// The TensorFlow-free C ABI (fusedopt_native.h): validation, planning
// (cc/core), and the run on the CPU loops or the CUDA launchers.
#include "cc/native/fusedopt_native.h"
#include "cc/native/api_internal.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <exception>
#include <list>
#include <mutex>
#include <new>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "cc/core/adafactor.h"
#include "cc/core/checked_size.h"
#include "cc/core/cpu_run.h"
#include "cc/core/driver.h"
#include "cc/core/grad_options.h"
#include "cc/core/plan.h"
#include "cc/cpu/kernels.h"
#if defined(FUSEDOPT_WITH_CUDA)
#include "cc/cuda/launchers.h"
#endif

#ifndef FUSEDOPT_VERSION
#define FUSEDOPT_VERSION "unknown"
#endif
#ifndef FUSEDOPT_CUDA_ARCHS
#define FUSEDOPT_CUDA_ARCHS ""
#endif

namespace fusedopt {
namespace native {
namespace {

// An error: code and message, or ok.
struct Status {
  int code = FUSEDOPT_OK;
  std::string msg;
  bool ok() const { return code == FUSEDOPT_OK; }
};
Status Invalid(std::string m) { return Status{FUSEDOPT_INVALID_ARGUMENT, std::move(m)}; }

// Writes `msg` (n bytes) into err, cut to err_len - 1 bytes and
// NUL-terminated; returns code. Allocates nothing.
int ReportText(int code, const char* msg, size_t n, char* err, size_t err_len) noexcept {
  if (err != nullptr && err_len > 0) {
    const size_t k = std::min(err_len - 1, n);
    if (k > 0) std::memcpy(err, msg, k);
    err[k] = '\0';
  }
  return code;
}

int Report(const Status& s, char* err, size_t err_len) noexcept {
  return ReportText(s.code, s.msg.data(), s.msg.size(), err, err_len);
}

// Runs an entry point's body and reports its Status: no C++ exception leaves
// the C ABI. Every allocation of a call happens before its first write (the
// plans, sorted indices, compact gradients, scratch and work lists), so a
// failed allocation leaves every buffer as it was: FUSEDOPT_OUT_OF_MEMORY.
// Anything else thrown is a bug: FUSEDOPT_INTERNAL_ERROR, with its message.
template <typename Body>
int Guarded(char* err, size_t err_len, const Body& body) noexcept {
  static const char kOom[] = "out of host memory for the call's scratch space; nothing was updated";
  static const char kLength[] =
      "the call's scratch space would exceed what one allocation can hold; nothing was updated";
  static const char kUnknown[] = "internal error: an unknown exception; please report it";
  try {
    return Report(body(), err, err_len);
  } catch (const std::bad_alloc&) {
    return ReportText(FUSEDOPT_OUT_OF_MEMORY, kOom, sizeof(kOom) - 1, err, err_len);
  } catch (const std::length_error&) {
    return ReportText(FUSEDOPT_OUT_OF_MEMORY, kLength, sizeof(kLength) - 1, err, err_len);
  } catch (const std::exception& e) {
    const char* what = e.what();
    return ReportText(FUSEDOPT_INTERNAL_ERROR, what, std::strlen(what), err, err_len);
  } catch (...) {
    return ReportText(FUSEDOPT_INTERNAL_ERROR, kUnknown, sizeof(kUnknown) - 1, err, err_len);
  }
}

#define RETURN_IF_ERROR(expr)      \
  do {                             \
    Status _s = (expr);            \
    if (!_s.ok()) return _s;       \
  } while (0)


// Runs chunks on num_threads std::threads (a shared counter hands them out);
// results never depend on the thread count (Note [chunks]).
ParallelFor ThreadsFor(int num_threads) {
  return [num_threads](const std::vector<cpu::Chunk>& chunks, int,
                       const std::function<void(const cpu::Chunk&)>& work) {
    int threads = num_threads > 0 ? num_threads
                                  : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    threads = static_cast<int>(std::min<size_t>(threads, chunks.size()));
    if (threads <= 1) {
      for (const cpu::Chunk& c : chunks) work(c);
      return;
    }
    std::atomic<size_t> next{0};
    auto loop = [&] {
      for (size_t k = next++; k < chunks.size(); k = next++) work(chunks[k]);
    };
    // Threads that cannot be started (a process at its thread limit) leave
    // their chunks to the others: the work is shared through `next`, so the
    // call completes, with the same bits, on however many threads started.
    std::vector<std::thread> pool;
    try {
      pool.reserve(threads - 1);
      for (int t = 1; t < threads; ++t) pool.emplace_back(loop);
    } catch (const std::exception&) {
    }
    loop();
    for (std::thread& th : pool) th.join();
  };
}

// Note [options of a rule]: a C ABI call's options that its rule does not
// use must keep fusedopt_call_init's defaults. A caller who sets nesterov for
// a rule without momentum, or schedule_decay for a rule without that schedule,
// expects an effect it would not get; an unknown option is refused like an unknown hyperparameter name.
// grappler_form and constant_folding describe a whole Grappler-optimized
// graph (every rule reads what applies to it) and are not checked. The XLA
// handler, which fills every field from an op's attributes, plans through
// ApplyCpu without this check.
Status CheckRuleOptions(const fusedopt_call* call, Rule rule, const RuleInfo& info) {
  auto refuse = [&](const char* option, const std::string& value, const char* rules) {
    return Invalid("the option " + std::string(option) + " (" + value + ") is not one of " +
                   info.name + "'s; it applies to " + rules + " only: leave it at its default");
  };
  // The rules that take an option, from the registry: "a, b and c".
  auto rules_with = [](auto has) {
    std::vector<std::string> names;
    for (const RuleInfo& r : kRuleInfos) {
      if (has(r)) names.push_back(r.name);
    }
    std::string out;
    for (size_t k = 0; k < names.size(); ++k) {
      out += (k == 0 ? "" : (k + 1 == names.size() ? " and " : ", ")) + names[k];
    }
    return out;
  };
  auto with_attr = [&](unsigned bit) {
    return rules_with([bit](const RuleInfo& r) { return (r.attrs & bit) != 0; });
  };
  if (call->nesterov != 0 && !(info.attrs & kAttrNesterov)) {
    return refuse("nesterov", "set", with_attr(kAttrNesterov).c_str());
  }
  if (call->epsilon_outside_sqrt != 0 && !(info.attrs & kAttrEpsilonOutsideSqrt)) {
    return refuse("epsilon_outside_sqrt", "set", with_attr(kAttrEpsilonOutsideSqrt).c_str());
  }
  if (!(call->schedule_decay == 1.0) && !(info.attrs & kAttrScheduleDecay)) {
    char v[32];
    std::snprintf(v, sizeof(v), "%.17g", call->schedule_decay);
    return refuse("schedule_decay", v, with_attr(kAttrScheduleDecay).c_str());
  }
  // (state_format and stochastic_rounding of a rule without state: MakeCallPlan's
  // message, the TensorFlow ops'.)
  if (call->rounding_seed != 0 && NumStateVariants(rule) == 0) {
    return refuse("rounding_seed", std::to_string(call->rounding_seed),
                  rules_with([](const RuleInfo& r) { return NumStateVariants(r.rule) > 0; })
                      .c_str());
  }
  if (call->step != 0 && !info.has_step) {
    const std::string stepped =
        "the bias-corrected rules (" + rules_with([](const RuleInfo& r) { return r.has_step; });
    return refuse("step", std::to_string(call->step), (stepped + ")").c_str());
  }
  return Status{};
}

// Note [finite state]: beyond the ranges Keras' constructors enforce (which
// MakeCallPlan checks for every path, Note [hyperparameter checks]), a C ABI
// call refuses hyperparameters that turn finite state non-finite by
// themselves: a decay rate (beta_1, beta_2, rho, momentum) outside [0, 1]
// makes a moment grow without bound or change sign (a negative second moment
// has no square root), and a negative epsilon can cancel a denominator to 0.
// Keras runs such values (and gets inf/NaN); the TensorFlow ops keep Keras'
// behaviour, the native layer, which has no such contract, refuses them.
Status CheckFiniteState(const fusedopt_call* call, const RuleInfo& info) {
  for (int k = 0; k < info.num_scalars; ++k) {
    const std::string_view name = info.scalars[k];
    const double x = call->scalars[k];
    if (!std::isfinite(x)) continue;  // MakeCallPlan's message: must be finite
    auto shown = [x] {
      char v[32];
      std::snprintf(v, sizeof(v), "%.17g", x);
      return std::string(v);
    };
    if ((name == "beta_1" || name == "beta_2" || name == "rho" || name == "momentum") &&
        !(x >= 0.0 && x <= 1.0)) {
      return Invalid("'" + std::string(name) + "' must be in [0, 1] (a decay rate), got " +
                     shown() + "; nothing was updated");
    }
    if (name == "epsilon" && !(x >= 0.0)) {
      return Invalid("'epsilon' must be >= 0, got " + shown() + "; nothing was updated");
    }
  }
  return Status{};
}

// Checks the call's settings and makes its plan; `strict`: the public C ABI's
// call (Note [options of a rule]).
Status PlanCall(const fusedopt_call* call, const fusedopt_tensors* t, bool rank0_plan,
                bool strict, Plan* plan, GradOptions* options) {
  if (call == nullptr) return Invalid("call must not be NULL");
  if (t == nullptr) return Invalid("tensors must not be NULL");
  if (call->rule < 0 || call->rule >= kNumRules) {
    return Invalid("unknown rule index " + std::to_string(call->rule));
  }
  const Rule rule = static_cast<Rule>(call->rule);
  const RuleInfo& info = InfoOf(rule);
  if (call->dtype < 0 || call->dtype > 3) {
    return Invalid("unknown dtype code " + std::to_string(call->dtype) +
                   " (0 float16, 1 bfloat16, 2 float32, 3 float64)");
  }
  if (call->device != FUSEDOPT_DEVICE_CPU && call->device != FUSEDOPT_DEVICE_CUDA) {
    return Invalid("unknown device code " + std::to_string(call->device));
  }
  if (call->state_format < 0 || call->state_format >= kNumStateFormats) {
    return Invalid("unknown state_format code " + std::to_string(call->state_format) +
                   " (0 the variables' dtype, 1 bfloat16, 2 int8)");
  }
  if (call->num_scalars != info.num_scalars) {
    return Invalid(std::string(info.name) + " takes " + std::to_string(info.num_scalars) +
                   " hyperparameters, got " + std::to_string(call->num_scalars));
  }
  if (info.num_scalars > 0 && call->scalars == nullptr) {
    return Invalid("scalars is NULL but " + std::string(info.name) + " takes " +
                   std::to_string(info.num_scalars) + " hyperparameters");
  }
  if (strict) {
    RETURN_IF_ERROR(CheckRuleOptions(call, rule, info));
    RETURN_IF_ERROR(CheckFiniteState(call, info));
  }
  if (t->n < 0) return Invalid("the tensor count must be >= 0");
  PlanInput in;
  in.f64 = call->dtype == 3;
  in.grappler_form = call->grappler_form != 0;
  in.constant_folding = call->constant_folding != 0;
  in.attrs.nesterov = call->nesterov != 0;
  in.attrs.epsilon_outside_sqrt = call->epsilon_outside_sqrt != 0;
  in.attrs.tf_training_op_form = call->tf_training_op_form != 0;
  in.attrs.schedule_decay = call->schedule_decay;
  in.attrs.state_format = static_cast<StateFormat>(call->state_format);
  in.attrs.stochastic_rounding = call->stochastic_rounding != 0;
  in.rounding_seed = call->rounding_seed;
  in.scalars.assign(call->scalars, call->scalars + info.num_scalars);
  in.step = call->step;
  for (int k = 0; k < info.num_slots; ++k) {
    const bool given = t->slot_given[k] != 0;
    if (!given && !info.slots[k].optional) {
      return Invalid(std::string(info.name) + " needs the slot '" + info.slots[k].name + "'");
    }
    in.slot_given.push_back(given);
  }
  for (int k = info.num_slots; k < kMaxSlots; ++k) {
    if (t->slot_given[k] != 0) {
      return Invalid(std::string(info.name) + " has " + std::to_string(info.num_slots) +
                     " slot lists; slot_given[" + std::to_string(k) + "] must be 0");
    }
  }
  options->grad_scale = call->grad_scale;
  options->clip_value = call->clip_value;
  options->clip_norm = call->clip_norm;
  options->global_clip_norm = call->global_clip_norm;
  options->skip_nonfinite = call->skip_nonfinite != 0;
  std::string err = ValidateGradOptions(*options);
  if (!err.empty()) return Invalid(err);
  err = MakeCallPlan(rule, in, rank0_plan, plan, call->dtype);
  if (!err.empty()) return Invalid(err);
  return Status{};
}

// A buffer of a call, for the overlap check: [begin, end) and whether the
// call writes it; `tag` lets the caller name it in a message.
struct Span {
  uintptr_t begin, end;
  bool written;
  int tag;
};

// Any overlap involving a written buffer is an error (reads may share);
// `name(tag)` names a buffer in the message. Sorts `spans` by begin (the
// order Note [concurrent calls] needs).
template <typename NameOf>
Status CheckDisjoint(std::vector<Span>* spans, const NameOf& name) {
  std::sort(spans->begin(), spans->end(),
            [](const Span& a, const Span& b) { return a.begin < b.begin; });
  uintptr_t written_end = 0, any_end = 0;
  const Span* last_written = nullptr;
  const Span* last_any = nullptr;
  for (const Span& r : *spans) {
    const Span* clash = nullptr;
    if (last_written != nullptr && r.begin < written_end) clash = last_written;
    if (clash == nullptr && r.written && last_any != nullptr && r.begin < any_end) {
      clash = last_any;
    }
    if (clash != nullptr) {
      return Invalid(name(r.tag) + " overlaps " + name(clash->tag) +
                     "; every variable and slot must be its own memory");
    }
    if (r.written && r.end > written_end) {
      written_end = r.end;
      last_written = &r;
    }
    if (r.end > any_end) {
      any_end = r.end;
      last_any = &r;
    }
  }
  return Status{};
}

// A call's buffers for CheckDisjoint: each non-empty one is checked (not
// NULL, aligned to its elements) and recorded with its (tensor, role), which
// `name(tag)` turns into a message's words.
struct BufferSpans {
  explicit BufferSpans(int elem_bytes) : eb(elem_bytes) {}
  // elem_bytes: the buffer's element size (0: eb).
  template <typename NameOf>
  Status Add(const void* p, int64_t elements, int tensor, int role, bool written,
             const NameOf& name, int elem_bytes = 0) {
    if (elements == 0) return Status{};
    const int eb = elem_bytes > 0 ? elem_bytes : this->eb;
    roles.emplace_back(tensor, role);
    const int tag = static_cast<int>(roles.size()) - 1;
    const uintptr_t begin = reinterpret_cast<uintptr_t>(p);
    if (p == nullptr) return Invalid(name(tag) + " is NULL");
    if (begin % eb != 0) {
      return Invalid(name(tag) + " is not aligned to its " + std::to_string(eb) +
                     "-byte elements");
    }
    uintptr_t end = 0;
    if (!CheckedExtent(begin, elements, eb, &end)) {
      return Invalid(name(tag) + " would span " + std::to_string(elements) + " elements of " +
                     std::to_string(eb) + " bytes from its address: more than the address " +
                     "space holds");
    }
    spans.push_back(Span{begin, end, written, tag});
    return Status{};
  }
  int eb;
  std::vector<std::pair<int, int>> roles;  // [tag]
  std::vector<Span> spans;
};

// Note [concurrent calls]: TensorFlow's training ops lock their variables;
// the C ABI, whose CPU calls may come from many threads at once (the Python
// module releases the GIL), does the same for memory: a CPU call registers
// its buffers (sorted spans, CheckDisjoint's order) once it is checked and
// waits while an in-flight call writes memory it touches or touches memory it
// writes. So calls that share written memory run one after the other, each
// whole, and calls on disjoint memory run concurrently. A waiting call holds
// nothing, so calls cannot deadlock. CUDA calls are not registered: their
// work runs later, in stream order, which the caller controls.
bool SpansConflict(const std::vector<Span>& a, const std::vector<Span>& b) {
  // One merged sweep by begin: a span clashes with the other call's written
  // spans that started before it and end after its begin, and, if written,
  // with any of the other call's spans that do.
  uintptr_t written_end[2] = {0, 0}, any_end[2] = {0, 0};
  size_t i = 0, j = 0;
  while (i < a.size() || j < b.size()) {
    const bool from_a = j >= b.size() || (i < a.size() && a[i].begin <= b[j].begin);
    const Span& r = from_a ? a[i++] : b[j++];
    const int me = from_a ? 0 : 1, other = 1 - me;
    if (r.begin < written_end[other] || (r.written && r.begin < any_end[other])) return true;
    if (r.written) written_end[me] = std::max(written_end[me], r.end);
    any_end[me] = std::max(any_end[me], r.end);
  }
  return false;
}

class InFlightCalls {
 public:
  // Registers `spans` (sorted by begin) once no registered call conflicts.
  void Enter(const std::vector<Span>* spans) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] {
      for (const std::vector<Span>* other : calls_) {
        if (SpansConflict(*spans, *other)) return false;
      }
      return true;
    });
    calls_.push_back(spans);
  }
  void Leave(const std::vector<Span>* spans) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      calls_.remove(spans);
    }
    cv_.notify_all();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::list<const std::vector<Span>*> calls_;
};

InFlightCalls& Calls() {
  static InFlightCalls* calls = new InFlightCalls;  // never destroyed: calls at exit
  return *calls;
}

// Holds a call's registration for its lifetime (nothing when `spans` is NULL).
class CallScope {
 public:
  explicit CallScope(const std::vector<Span>* spans) : spans_(spans) {
    if (spans_ != nullptr && !spans_->empty()) Calls().Enter(spans_);
  }
  ~CallScope() {
    if (spans_ != nullptr && !spans_->empty()) Calls().Leave(spans_);
  }
  CallScope(const CallScope&) = delete;
  CallScope& operator=(const CallScope&) = delete;

 private:
  const std::vector<Span>* spans_;
};

// The operands of a call: pointers checked (non-NULL where there are
// elements, aligned to the element size) and the written buffers (variables,
// slots, int8 state's absmax) disjoint from each other and from the
// gradients. `layouts`: int8 state's, one per tensor (else empty); slots hold
// elements of the call's state format. *spans: the call's buffers, sorted
// (Note [concurrent calls]).
Status GatherOperands(const fusedopt_call* call, const fusedopt_tensors* t,
                      const std::vector<int64_t>& grad_elements,
                      const std::vector<QuantLayout>& layouts, Operands* ops,
                      std::vector<Span>* spans) {
  const RuleInfo& info = InfoOf(static_cast<Rule>(call->rule));
  const int eb = ElemBytesOf(call->dtype);
  const StateFormat format = static_cast<StateFormat>(call->state_format);
  const bool int8 = format == StateFormat::kInt8;
  const int slot_eb = SlotElemBytes(format, eb);
  const int n = t->n;
  if (n > 0 && (t->vars == nullptr || t->grads == nullptr || t->sizes == nullptr)) {
    return Invalid("vars, grads and sizes must not be NULL");
  }
  std::vector<int> given;
  for (int k = 0; k < info.num_slots; ++k) {
    if (t->slot_given[k]) given.push_back(k);
  }
  if (n > 0 && !given.empty() && t->slots == nullptr) return Invalid("slots must not be NULL");
  if (!int8 && t->absmax != nullptr) {
    return Invalid(std::string("absmax is for state_format int8 (") +
                   StateFormatName(StateFormat::kInt8) + "), got state_format " +
                   StateFormatName(format) + "; pass NULL");
  }
  if (int8 && n > 0 && !given.empty() && t->absmax == nullptr) {
    return Invalid("int8 state needs absmax: one float32 array per slot of every tensor, one "
                   "entry per quantization block");
  }
  ops->n = n;
  ops->num_slots = static_cast<int>(given.size());
  // Buffers by (tensor, role); names are built only for an error message.
  // A span's tag indexes `roles`: (tensor, role), role -2 variable, -1
  // gradient, k in [0, kMaxSlots) slot list k, kMaxSlots + k its absmax.
  BufferSpans buffers(eb);
  auto name = [&](int tag) {
    const auto [tensor, role] = buffers.roles[tag];
    const std::string t = "tensor " + std::to_string(tensor);
    if (role == -2) return "the variable of " + t;
    if (role == -1) return "the gradient of " + t;
    if (role >= kMaxSlots) {
      return std::string("the absmax of slot '") + info.slots[role - kMaxSlots].name + "' of " + t;
    }
    return std::string("slot '") + info.slots[role].name + "' of " + t;
  };
  auto check = [&](const void* p, int64_t elements, int tensor, int role, int elem_bytes) {
    return buffers.Add(p, elements, tensor, role, /*written=*/role != -1, name, elem_bytes);
  };
  for (int i = 0; i < n; ++i) {
    if (t->sizes[i] < 0) return Invalid("sizes[" + std::to_string(i) + "] is negative");
    void* var = t->vars[i];
    RETURN_IF_ERROR(check(var, t->sizes[i], i, -2, eb));
    RETURN_IF_ERROR(check(t->grads[i], grad_elements[i], i, -1, eb));
    std::array<void*, kMaxSlots> s{};
    std::array<float*, kMaxSlots> a{};
    for (size_t j = 0; j < given.size(); ++j) {
      s[j] = t->slots[kMaxSlots * i + given[j]];
      RETURN_IF_ERROR(check(s[j], t->sizes[i], i, given[j], slot_eb));
      if (int8) {
        // Note [quantization blocks]: one float32 per block of the layout.
        a[j] = t->absmax[kMaxSlots * i + given[j]];
        RETURN_IF_ERROR(check(a[j], layouts[i].NumBlocks(), i, kMaxSlots + given[j],
                              static_cast<int>(sizeof(float))));
      }
    }
    ops->vars.push_back(var);
    ops->slots.push_back(s);
    if (int8) ops->absmax.push_back(a);
    ops->grads.push_back(t->grads[i]);
    ops->rank0.push_back(t->rank0 != nullptr && t->rank0[i] != 0 ? 1 : 0);
  }
  if (int8) ops->layouts = layouts;
  RETURN_IF_ERROR(CheckDisjoint(&buffers.spans, name));
  *spans = std::move(buffers.spans);
  return Status{};
}

// Note [quantization blocks] in the C ABI: a dense call's int8 layouts, the
// TensorFlow op's QuantLayoutOf(shape) from the flat sizes and the caller's
// row_sizes (rows of the first dimension; NULL: one row each). Checked before
// GatherOperands reads a size.
Status DenseLayouts(const fusedopt_tensors* t, std::vector<QuantLayout>* layouts) {
  for (int i = 0; i < t->n; ++i) {
    const int64_t size = t->sizes[i];
    if (size < 0) return Invalid("sizes[" + std::to_string(i) + "] is negative");
    QuantLayout l;
    l.rows = 1;
    l.row_size = size;
    if (t->row_sizes != nullptr) {
      const int64_t r = t->row_sizes[i];
      const std::string which = "row_sizes[" + std::to_string(i) + "]";
      if (r < 0) return Invalid(which + " is negative");
      if (size > 0 && (r == 0 || size % r != 0)) {
        return Invalid(which + " (" + std::to_string(r) + ") does not divide tensor " +
                       std::to_string(i) + "'s " + std::to_string(size) +
                       " elements into rows (the elements per row of its first dimension)");
      }
      if (size > 0) {
        l.rows = size / r;
        l.row_size = r;
      }
    }
    layouts->push_back(l);
  }
  return Status{};
}

// Low-precision state has CUDA kernels for dense calls (cc/cuda/state.cuh);
// a sparse CUDA call with state is refused before any of its arrays is read.
Status RefuseCudaSparseState(const fusedopt_call* call, const Plan& plan) {
  if (call->device != FUSEDOPT_DEVICE_CUDA || !plan.LowPrecision()) return Status{};
  return Status{FUSEDOPT_UNAVAILABLE,
                "sparse updates with low-precision state (state_format, stochastic_rounding) "
                "run on the CPU only for now (device 0); nothing was updated"};
}

// A status of the call pipeline (cc/core/driver.h), whose codes are ours.
Status FromCall(CallStatus c) { return Status{c.code, std::move(c.message)}; }

Status CudaUnavailableStatus() { return FromCall(CudaUsableStatus()); }

// fusedopt_apply; `strict`: a public C ABI call (Note [options of a rule],
// Note [finite state], Note [concurrent calls]).
Status Apply(const fusedopt_call* call, const fusedopt_tensors* t, int* skipped, bool strict,
             const ParallelFor* cpu_pool = nullptr, const TfFormsMaker* tf_forms = nullptr) {
  if (skipped != nullptr) *skipped = 0;
  Plan plan;
  GradOptions options;
  RETURN_IF_ERROR(PlanCall(call, t, /*rank0_plan=*/true, strict, &plan, &options));
  const Rule rule = static_cast<Rule>(call->rule);
  Operands ops;
  if (t->n > 0 && t->sizes == nullptr) return Invalid("sizes must not be NULL");
  std::vector<int64_t> sizes(t->sizes, t->sizes + t->n);
  std::vector<QuantLayout> layouts;
  if (plan.state_format == StateFormat::kInt8) RETURN_IF_ERROR(DenseLayouts(t, &layouts));
  std::vector<Span> spans;
  RETURN_IF_ERROR(GatherOperands(call, t, sizes, layouts, &ops, &spans));
  ops.sizes = sizes;
  CallDesc d;
  d.rule = rule;
  d.dt = call->dtype;
  d.options = options;
  CallHooks hooks;
  bool skip = false;
  if (call->device == FUSEDOPT_DEVICE_CPU) {
    const CallScope scope(strict ? &spans : nullptr);
    hooks.pfor = cpu_pool != nullptr ? *cpu_pool : ThreadsFor(call->num_threads);
    if (tf_forms != nullptr) hooks.tf_forms = *tf_forms;
    RETURN_IF_ERROR(FromCall(RunDenseCall(d, plan, &ops, hooks, &skip)));
  } else {
    d.device = CallDevice::kCuda;
    d.stream = call->stream;
    d.cuda_state = true;  // (the path scripts/gpu_check.sh verifies the state kernels on)
    RETURN_IF_ERROR(FromCall(RunDenseCall(d, plan, &ops, hooks, &skip)));
  }
  if (skipped != nullptr) *skipped = skip ? 1 : 0;
  return Status{};
}

Status SparseApply(const fusedopt_call* call, const fusedopt_tensors* t, const fusedopt_sparse* sp,
                   int* skipped) {
  if (skipped != nullptr) *skipped = 0;
  Plan plan;
  GradOptions options;
  RETURN_IF_ERROR(PlanCall(call, t, /*rank0_plan=*/false, /*strict=*/true, &plan, &options));
  plan.rsqrt_forms = false;  // Keras' sparse updates are other ops: no rsqrt form
  const Rule rule = static_cast<Rule>(call->rule);
  RETURN_IF_ERROR(RefuseCudaSparseState(call, plan));
  if (sp == nullptr) return Invalid("the sparse description must not be NULL");
  CallDesc d;
  d.rule = rule;
  d.dt = call->dtype;
  d.options = options;
  d.device = call->device == FUSEDOPT_DEVICE_CPU ? CallDevice::kCpu : CallDevice::kCuda;
  // (RunSparseCall refuses lazy LAMB and a GPU call before it reads anything.)
  SparseDesc desc;
  desc.exact = sp->exact != 0;
  const int n = t->n;
  if (n > 0 && (t->sizes == nullptr || sp->indices == nullptr || sp->counts == nullptr ||
                sp->rows == nullptr || sp->row_sizes == nullptr)) {
    return Invalid("sizes, indices, counts, rows and row_sizes must not be NULL");
  }
  std::vector<int64_t> grad_elements(n);
  std::vector<QuantLayout> layouts;
  const bool int8 = plan.state_format == StateFormat::kInt8;
  for (int i = 0; i < n; ++i) {
    const std::string label = "tensor " + std::to_string(i);
    if (sp->rows[i] < 0 || sp->row_sizes[i] < 0 || sp->counts[i] < 0) {
      return Invalid("rows, row_sizes and counts of " + label + " must be >= 0");
    }
    int64_t elements = 0;
    if (!CheckedMul(sp->rows[i], sp->row_sizes[i], &elements) || elements != t->sizes[i]) {
      return Invalid(label + " has " + std::to_string(t->sizes[i]) + " elements, not rows (" +
                     std::to_string(sp->rows[i]) + ") x row_size (" +
                     std::to_string(sp->row_sizes[i]) + ")");
    }
    if (sp->counts[i] > 0 && sp->indices[i] == nullptr) return Invalid("indices of " + label + " is NULL");
    if (!CheckedMul(sp->counts[i], sp->row_sizes[i], &grad_elements[i])) {
      return Invalid("the gradient of " + label + " would hold counts (" +
                     std::to_string(sp->counts[i]) + ") x row_size (" +
                     std::to_string(sp->row_sizes[i]) + ") elements: more than int64 counts");
    }
    if (int8) {
      // Note [quantization blocks]: the blocks follow the sparse rows.
      if (t->row_sizes != nullptr && t->row_sizes[i] != sp->row_sizes[i] && elements > 0) {
        return Invalid("row_sizes[" + std::to_string(i) + "] (" +
                       std::to_string(t->row_sizes[i]) + ") differs from the sparse row_size (" +
                       std::to_string(sp->row_sizes[i]) + ") of " + label +
                       ": int8 blocks follow the rows");
      }
      QuantLayout l;
      if (sp->rows[i] > 0) {
        l.rows = sp->rows[i];
        l.row_size = sp->row_sizes[i];
      }
      layouts.push_back(l);
    }
    desc.indices.push_back(sp->indices[i]);
    desc.counts.push_back(sp->counts[i]);
    desc.rows.push_back(sp->rows[i]);
    desc.row_sizes.push_back(sp->row_sizes[i]);
    desc.labels.push_back("vars[" + std::to_string(i) + "]");
  }
  Operands ops;
  std::vector<Span> spans;
  RETURN_IF_ERROR(GatherOperands(call, t, grad_elements, layouts, &ops, &spans));
  // The pipeline sums the duplicates into compact buffers, registered (Note
  // [concurrent calls]); nothing is written before its index checks.
  const CallScope scope(&spans);
  CallHooks hooks;
  hooks.pfor = ThreadsFor(call->num_threads);
  bool skip = false;
  RETURN_IF_ERROR(FromCall(RunSparseCall(d, plan, &ops, desc, hooks, &skip)));
  if (skipped != nullptr) *skipped = skip ? 1 : 0;
  return Status{};
}

Status GradStats(int dtype, int device, void* stream, int num_threads, int n,
                 const void* const* grads, const int64_t* sizes, double* sum_sq, int* nonfinite) {
  if (dtype < 0 || dtype > 3) return Invalid("unknown dtype code " + std::to_string(dtype));
  if (n < 0) return Invalid("the tensor count must be >= 0");
  if (n > 0 && (grads == nullptr || sizes == nullptr || sum_sq == nullptr)) {
    return Invalid("grads, sizes and sum_sq must not be NULL");
  }
  if (nonfinite == nullptr) return Invalid("nonfinite must not be NULL");
  const int eb = ElemBytesOf(dtype);
  Operands ops;
  ops.n = n;
  std::vector<Span> spans;
  for (int i = 0; i < n; ++i) {
    const std::string which = "grads[" + std::to_string(i) + "]";
    if (sizes[i] < 0) return Invalid("sizes[" + std::to_string(i) + "] is negative");
    if (sizes[i] > 0 && grads[i] == nullptr) return Invalid(which + " is NULL");
    const uintptr_t begin = reinterpret_cast<uintptr_t>(grads[i]);
    if (begin % eb != 0) return Invalid(which + " is not aligned to its elements");
    uintptr_t end = 0;
    if (!CheckedExtent(begin, sizes[i], eb, &end)) {
      return Invalid(which + " would span " + std::to_string(sizes[i]) + " elements of " +
                     std::to_string(eb) + " bytes: more than the address space holds");
    }
    if (sizes[i] > 0) spans.push_back(Span{begin, end, /*written=*/false, i});
    ops.grads.push_back(grads[i]);
    ops.sizes.push_back(sizes[i]);
  }
  std::vector<double> sums;
  bool bad = false;
  if (device == FUSEDOPT_DEVICE_CPU) {
    std::sort(spans.begin(), spans.end(),
              [](const Span& a, const Span& b) { return a.begin < b.begin; });
    const CallScope scope(&spans);
    GradStatsCpu(ThreadsFor(num_threads), ops, dtype, eb, &sums, &bad);
  } else if (device == FUSEDOPT_DEVICE_CUDA) {
    RETURN_IF_ERROR(FromCall(CudaUsableStatus()));
    int d = -1;
    RETURN_IF_ERROR(FromCall(CudaDeviceOfOperands(ops, &d)));
    RETURN_IF_ERROR(FromCall(GradStatsOnCuda(ops, dtype, stream, &sums, &bad)));
  } else {
    return Invalid("unknown device code " + std::to_string(device));
  }
  std::copy(sums.begin(), sums.end(), sum_sq);
  *nonfinite = bad ? 1 : 0;
  return Status{};
}

// fusedopt_adafactor_apply: every input checked (Note [Adafactor passes]
// runs only on valid calls), then the three passes on the CPU.
Status AdafactorApply(int dtype, int device, int num_threads, const double* scalars,
                      int64_t step, int grappler_form, int n, void* const* vars,
                      void* const* r, void* const* c, void* const* v, const void* const* grads,
                      const int64_t* const* shapes, const int* ranks) {
  if (dtype < 0 || dtype > 3) return Invalid("dtype must be 0..3, got " + std::to_string(dtype));
  if (device == FUSEDOPT_DEVICE_CUDA) {
    return Status{FUSEDOPT_UNAVAILABLE,
                  "Adafactor has no CUDA kernel yet: run it on the CPU (device 0)"};
  }
  if (device != FUSEDOPT_DEVICE_CPU) {
    return Invalid("device must be FUSEDOPT_DEVICE_CPU or FUSEDOPT_DEVICE_CUDA");
  }
  if (n < 0) return Invalid("n is negative");
  if (scalars == nullptr) return Invalid("scalars must not be NULL");
  if (n > 0 && (vars == nullptr || r == nullptr || c == nullptr || v == nullptr ||
                grads == nullptr || ranks == nullptr || shapes == nullptr)) {
    return Invalid("vars, r, c, v, grads, shapes and ranks must not be NULL");
  }
  const AdafactorScalars s = AdafactorScalarsFrom(scalars, step, grappler_form != 0);
  const std::string bad = CheckAdafactorScalars(s);
  if (!bad.empty()) return Invalid(bad);
  // Note [finite state]: epsilon_1 < 0 can make the second moment negative
  // (its reciprocal square root NaN), epsilon_2 < 0 the step size negative,
  // and beta_2_decay > 0 gives a decay 1 - t^beta_2_decay below 0 from t = 2.
  if (!(s.epsilon_1 >= 0)) {
    return Invalid("'epsilon_1' must be >= 0, got " + std::to_string(s.epsilon_1) +
                   "; nothing was updated");
  }
  if (!(s.epsilon_2 >= 0)) {
    return Invalid("'epsilon_2' must be >= 0, got " + std::to_string(s.epsilon_2) +
                   "; nothing was updated");
  }
  if (!(s.beta_2_decay <= 0)) {
    return Invalid("'beta_2_decay' must be <= 0, got " + std::to_string(s.beta_2_decay) +
                   "; nothing was updated");
  }

  const int eb = ElemBytesOf(dtype);
  static const char* const kRoles[5] = {"the variable", "the gradient", "r", "c", "v"};
  BufferSpans buffers(eb);  // roles: (tensor, index into kRoles)
  auto name = [&](int tag) {
    return std::string(kRoles[buffers.roles[tag].second]) + " of tensor " +
           std::to_string(buffers.roles[tag].first);
  };
  auto check = [&](const void* p, int64_t elements, int tensor, int role) {
    return buffers.Add(p, elements, tensor, role, /*written=*/role != 1, name);
  };
  std::vector<AdafactorTensor> ts(n);
  for (int i = 0; i < n; ++i) {
    const std::string which = "tensor " + std::to_string(i);
    if (ranks[i] < 0 || (ranks[i] > 0 && shapes[i] == nullptr)) {
      return Invalid(which + " has a negative rank or no shape");
    }
    AdafactorTensor& t = ts[i];
    for (int d = 0; d < ranks[i]; ++d) {
      if (shapes[i][d] < 0) return Invalid(which + " has a negative dimension");
    }
    // Note [checked sizes]: the shape's product, and so every product of its
    // dimensions below, fits int64.
    int64_t size = 1;
    if (!CheckedElementCount(shapes[i], ranks[i], &size)) {
      return Invalid(which + "'s shape has more elements than int64 counts");
    }
    t.factored = ranks[i] >= 2;
    if (t.factored) {
      t.cols = shapes[i][ranks[i] - 1];
      t.rows = shapes[i][ranks[i] - 2];
      // batch * rows and batch * cols are at most the product when no
      // dimension is 0; with a 0 they are checked for themselves.
      if (!CheckedElementCount(shapes[i], ranks[i] - 2, &t.batch)) {
        return Invalid(which + "'s shape has more elements than int64 counts");
      }
      int64_t unused = 0;
      if (!CheckedMul(t.batch, t.rows, &unused) || !CheckedMul(t.batch, t.cols, &unused)) {
        return Invalid(which + "'s factored moments have more elements than int64 counts");
      }
    } else {
      t.cols = size;
    }
    RETURN_IF_ERROR(check(vars[i], size, i, 0));
    RETURN_IF_ERROR(check(grads[i], size, i, 1));
    RETURN_IF_ERROR(check(v[i], size, i, 4));
    t.var = vars[i];
    t.grad = grads[i];
    t.v = v[i];
    if (t.factored) {
      RETURN_IF_ERROR(check(r[i], t.batch * t.rows, i, 2));
      RETURN_IF_ERROR(check(c[i], t.batch * t.cols, i, 3));
      t.r = r[i];
      t.c = c[i];
    }
  }
  RETURN_IF_ERROR(CheckDisjoint(&buffers.spans, name));
  const CallScope scope(&buffers.spans);
  RunAdafactorCpu(ThreadsFor(num_threads), dtype, s, ts);
  return Status{};
}

}  // namespace

int ApplyCpu(const fusedopt_call* call, const fusedopt_tensors* t, const ParallelFor& pfor,
             int* skipped, std::string* err, const TfFormsMaker& tf_forms) {
  if (call != nullptr && call->device != FUSEDOPT_DEVICE_CPU) {
    *err = "ApplyCpu runs CPU calls only";
    return FUSEDOPT_INVALID_ARGUMENT;
  }
  char buf[1024];
  const int code = Guarded(buf, sizeof(buf), [&] {
    return Apply(call, t, skipped, /*strict=*/false, &pfor, &tf_forms);
  });
  if (code != FUSEDOPT_OK) *err = buf;
  return code;
}

}  // namespace native
}  // namespace fusedopt

using fusedopt::InfoOf;
using fusedopt::kNumRules;
using fusedopt::Rule;

extern "C" {

int fusedopt_rule_count(void) { return kNumRules; }

static bool ValidRule(int rule) { return rule >= 0 && rule < kNumRules; }

const char* fusedopt_rule_name(int rule) {
  return ValidRule(rule) ? InfoOf(static_cast<Rule>(rule)).name : nullptr;
}
int fusedopt_rule_index(const char* name) {
  if (name == nullptr) return -1;
  for (int r = 0; r < kNumRules; ++r) {
    if (std::strcmp(name, InfoOf(static_cast<Rule>(r)).name) == 0) return r;
  }
  return -1;
}
int fusedopt_rule_num_scalars(int rule) {
  return ValidRule(rule) ? InfoOf(static_cast<Rule>(rule)).num_scalars : -1;
}
const char* fusedopt_rule_scalar_name(int rule, int k) {
  if (!ValidRule(rule)) return nullptr;
  const auto& info = InfoOf(static_cast<Rule>(rule));
  return k >= 0 && k < info.num_scalars ? info.scalars[k] : nullptr;
}
int fusedopt_rule_num_slots(int rule) {
  return ValidRule(rule) ? InfoOf(static_cast<Rule>(rule)).num_slots : -1;
}
const char* fusedopt_rule_slot_name(int rule, int k) {
  if (!ValidRule(rule)) return nullptr;
  const auto& info = InfoOf(static_cast<Rule>(rule));
  return k >= 0 && k < info.num_slots ? info.slots[k].name : nullptr;
}
int fusedopt_rule_slot_optional(int rule, int k) {
  if (!ValidRule(rule)) return -1;
  const auto& info = InfoOf(static_cast<Rule>(rule));
  return k >= 0 && k < info.num_slots ? (info.slots[k].optional ? 1 : 0) : -1;
}
int fusedopt_rule_has_step(int rule) {
  return ValidRule(rule) ? (InfoOf(static_cast<Rule>(rule)).has_step ? 1 : 0) : -1;
}
int fusedopt_rule_takes_option(int rule, const char* option, int sparse) {
  if (!ValidRule(rule) || option == nullptr) return -1;
  // The fusedopt_call fields that are a rule's options, and the registry's
  // attribute of each (Note [options of a rule]).
  static constexpr struct {
    const char* name;
    unsigned attr;
  } kOptions[] = {{"nesterov", fusedopt::kAttrNesterov},
                  {"epsilon_outside_sqrt", fusedopt::kAttrEpsilonOutsideSqrt},
                  {"schedule_decay", fusedopt::kAttrScheduleDecay},
                  {"tf_training_op_form", fusedopt::kAttrTfTrainingOpForm}};
  for (const auto& o : kOptions) {
    if (std::strcmp(option, o.name) == 0) {
      return fusedopt::TakesAttr(InfoOf(static_cast<Rule>(rule)), o.attr, sparse != 0) ? 1 : 0;
    }
  }
  // Low-precision state: the rules with state loops, dense and sparse.
  for (const char* state_option : {"state_format", "stochastic_rounding", "rounding_seed"}) {
    if (std::strcmp(option, state_option) == 0) {
      return fusedopt::NumStateVariants(static_cast<Rule>(rule)) > 0 ? 1 : 0;
    }
  }
  return -1;
}

int fusedopt_native_abi_version(void) { return FUSEDOPT_NATIVE_ABI_VERSION; }

void fusedopt_call_init(fusedopt_call* call) {
  if (call == nullptr) return;
  std::memset(call, 0, sizeof(*call));
  call->schedule_decay = 1.0;
  call->grad_scale = 1.0;
  call->clip_value = INFINITY;
  call->clip_norm = INFINITY;
  call->global_clip_norm = INFINITY;
}

int fusedopt_apply(const fusedopt_call* call, const fusedopt_tensors* t, int* skipped, char* err,
                   size_t err_len) {
  return fusedopt::native::Guarded(
      err, err_len, [&] { return fusedopt::native::Apply(call, t, skipped, /*strict=*/true); });
}

int fusedopt_sparse_apply(const fusedopt_call* call, const fusedopt_tensors* t,
                          const fusedopt_sparse* sp, int* skipped, char* err, size_t err_len) {
  return fusedopt::native::Guarded(
      err, err_len, [&] { return fusedopt::native::SparseApply(call, t, sp, skipped); });
}

int fusedopt_adafactor_apply(int dtype, int device, int num_threads, const double* scalars,
                             int64_t step, int grappler_form, int n, void* const* vars,
                             void* const* r, void* const* c, void* const* v,
                             const void* const* grads, const int64_t* const* shapes,
                             const int* ranks, char* err, size_t err_len) {
  return fusedopt::native::Guarded(err, err_len, [&] {
    return fusedopt::native::AdafactorApply(dtype, device, num_threads, scalars, step,
                                            grappler_form, n, vars, r, c, v, grads, shapes, ranks);
  });
}

int fusedopt_grad_stats(int dtype, int device, void* stream, int num_threads, int n,
                        const void* const* grads, const int64_t* sizes, double* sum_sq,
                        int* nonfinite, char* err, size_t err_len) {
  return fusedopt::native::Guarded(err, err_len, [&] {
    return fusedopt::native::GradStats(dtype, device, stream, num_threads, n, grads, sizes,
                                       sum_sq, nonfinite);
  });
}

int fusedopt_native_cuda_built(void) {
#if defined(FUSEDOPT_WITH_CUDA)
  return 1;
#else
  return 0;
#endif
}

int fusedopt_native_cuda_status(char* err, size_t err_len) {
  return fusedopt::native::Guarded(err, err_len,
                                   [] { return fusedopt::native::CudaUnavailableStatus(); });
}

int fusedopt_native_cuda_runtime_version(void) {
#if defined(FUSEDOPT_WITH_CUDA)
  return fusedopt_cuda_runtime_version();
#else
  return 0;
#endif
}

int fusedopt_native_cuda_driver_version(void) {
#if defined(FUSEDOPT_WITH_CUDA)
  return fusedopt_cuda_driver_version();
#else
  return 0;
#endif
}

const char* fusedopt_native_cuda_archs(void) { return FUSEDOPT_CUDA_ARCHS; }
const char* fusedopt_native_version(void) { return FUSEDOPT_VERSION; }
const char* fusedopt_native_cpu_isa(void) { return fusedopt::cpu::SelectedKernels().isa; }

const char* fusedopt_native_cpu_isas(void) {
  try {
    static const std::string isas = [] {
      std::string s;
      for (const std::string& isa : fusedopt::cpu::CompiledIsas()) {
        if (fusedopt::cpu::KernelsForIsa(isa) == nullptr) continue;
        s += (s.empty() ? "" : ",") + isa;
      }
      return s;
    }();
    return isas.c_str();
  } catch (...) {
    return "";  // out of memory on the first call: retried on the next
  }
}

int fusedopt_native_cuda_device_count(void) {
#if defined(FUSEDOPT_WITH_CUDA)
  return fusedopt_cuda_device_count();
#else
  return 0;
#endif
}

}  // extern "C"
