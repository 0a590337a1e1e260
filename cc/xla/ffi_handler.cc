// The XLA custom-call handlers of the fused ops (Note [XLA lowering] in
// cc/tf/xla_ops.cc; Note [one handler, two XLAs] in ffi_handler.h): typed-FFI
// handlers for the "Host" platform that run a dense fused update in place on
// the buffers XLA hands them, through the same validation, plan and per-ISA
// loops as the op kernels (cc/native, cc/core). Only XLA's FFI API headers are
// included here, no TensorFlow header: TensorFlow's numeric forms arrive as
// TfFormHooks from the op library (cc/tf/xla_ffi_registration.cc), which also
// registers the handlers with TensorFlow's XLA; fusedopt._native builds this
// file without them and hands the handlers to JAX (fusedopt.jax).
#include "cc/xla/ffi_handler.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "cc/core/adafactor.h"
#include "cc/core/plan.h"
#include "cc/native/api_internal.h"
#include "xla/ffi/api/ffi.h"

namespace fusedopt {
namespace xla_ffi {
namespace {

namespace ffi = ::xla::ffi;

// This library's hooks (SetTfFormHooks), set while the library loads, before
// any handler is registered or called.
const TfFormHooks* g_hooks = nullptr;

// Runs chunks on XLA's intra-op thread pool and on the calling thread. The
// caller returns once every chunk is done; a task the pool starts later
// finds no chunk left and touches only the shared counters it co-owns.
ParallelFor PoolFor(ffi::ThreadPool* pool) {
  return [pool](const std::vector<cpu::Chunk>& chunks, int,
                const std::function<void(const cpu::Chunk&)>& work) {
    struct Shared {
      std::atomic<size_t> next{0};
      size_t total = 0;
      std::mutex mu;
      std::condition_variable cv;
      size_t done = 0;
      const std::vector<cpu::Chunk>* chunks = nullptr;
      const std::function<void(const cpu::Chunk&)>* work = nullptr;
    };
    auto shared = std::make_shared<Shared>();
    shared->total = chunks.size();
    shared->chunks = &chunks;
    shared->work = &work;
    auto run = [](const std::shared_ptr<Shared>& s) {
      size_t mine = 0;
      for (size_t k = s->next++; k < s->total; k = s->next++) {
        (*s->work)((*s->chunks)[k]);
        ++mine;
      }
      if (mine > 0) {
        std::lock_guard<std::mutex> lock(s->mu);
        s->done += mine;
        if (s->done == s->total) s->cv.notify_all();
      }
    };
    const int64_t threads = std::max<int64_t>(1, pool->num_threads());
    const size_t helpers = std::min<size_t>(static_cast<size_t>(threads), chunks.size()) - 1;
    for (size_t h = 0; h + 1 < chunks.size() && h < helpers; ++h) {
      pool->Schedule([shared, run] { run(shared); });
    }
    run(shared);
    std::unique_lock<std::mutex> lock(shared->mu);
    shared->cv.wait(lock, [&] { return shared->done == shared->total; });
  };
}

int DTypeCode(ffi::DataType t) {
  switch (t) {
    case ffi::DataType::F16:
      return 0;
    case ffi::DataType::BF16:
      return 1;
    case ffi::DataType::F32:
      return 2;
    case ffi::DataType::F64:
      return 3;
    default:
      return -1;
  }
}

// Note [scalar operands]: a scalar operand is an f64 or f32 scalar (and s64
// where `allow_s64`), or a u32 pair holding the bits of a double (low word
// first): fusedopt.jax passes a Python number that way when JAX runs without
// float64 (jax_enable_x64 off), so `beta_1=0.9` keeps the double the TF ops
// get (1 - 0.9 in double is Keras' arithmetic, Note [Keras arithmetic]).
bool ReadScalarArg(const ffi::RemainingArgs& args, size_t j, bool allow_s64, double* v) {
  auto b = args.get<ffi::AnyBuffer>(j);
  if (!b.has_value()) return false;
  if (b->element_type() == ffi::DataType::U32 && b->element_count() == 2) {
    const auto* words = static_cast<const uint32_t*>(b->untyped_data());
    const uint64_t bits = static_cast<uint64_t>(words[0]) | (static_cast<uint64_t>(words[1]) << 32);
    std::memcpy(v, &bits, sizeof(bits));
    return true;
  }
  if (b->element_count() != 1) return false;
  switch (b->element_type()) {
    case ffi::DataType::F64:
      *v = *static_cast<const double*>(b->untyped_data());
      return true;
    case ffi::DataType::F32:
      *v = *static_cast<const float*>(b->untyped_data());
      return true;
    case ffi::DataType::S64:
      if (!allow_s64) return false;
      *v = static_cast<double>(*static_cast<const int64_t*>(b->untyped_data()));
      return true;
    default:
      return false;
  }
}

// The step operand: an s64 scalar (TensorFlow), or s32 (JAX without 64-bit
// types).
bool ReadStepArg(const ffi::RemainingArgs& args, size_t j, int64_t* step) {
  auto b = args.get<ffi::AnyBuffer>(j);
  if (!b.has_value() || b->element_count() != 1) return false;
  if (b->element_type() == ffi::DataType::S64) {
    *step = *static_cast<const int64_t*>(b->untyped_data());
    return true;
  }
  if (b->element_type() == ffi::DataType::S32) {
    *step = *static_cast<const int32_t*>(b->untyped_data());
    return true;
  }
  return false;
}

bool SameDims(const ffi::AnyBuffer& a, const ffi::AnyBuffer& b) {
  const auto da = a.dimensions();
  const auto db = b.dimensions();
  if (da.size() != db.size()) return false;
  for (size_t d = 0; d < da.size(); ++d) {
    if (da[d] != db[d]) return false;
  }
  return true;
}

// The first `count` operands are written in place: decodes each with its
// result, checks they all have one supported element type (*dtype: -1 on
// entry, or a DTypeCode they must have), and gives the result buffers (a
// result XLA did not alias with its operand starts as a copy of it).
// `operands` (if not null) receives the decoded operands.
ffi::Error InPlaceBuffers(const ffi::RemainingArgs& args, const ffi::RemainingRets& rets,
                          size_t count, int* dtype, std::vector<void*>* out,
                          std::vector<ffi::AnyBuffer>* operands = nullptr) {
  out->assign(count, nullptr);
  for (size_t j = 0; j < count; ++j) {
    auto in = args.get<ffi::AnyBuffer>(j);
    auto res = rets.get<ffi::AnyBuffer>(j);
    if (!in.has_value() || !res.has_value()) {
      return ffi::Error::Internal("fusedopt: cannot decode a custom-call buffer");
    }
    const ffi::AnyBuffer ib = *in;
    ffi::AnyBuffer ob = **res;
    const int code = DTypeCode(ib.element_type());
    if (code < 0 || (*dtype >= 0 && code != *dtype)) {
      return ffi::Error::InvalidArgument("fusedopt: unsupported or mixed element types");
    }
    if (ob.element_type() != ib.element_type() || !SameDims(ob, ib)) {
      return ffi::Error::InvalidArgument("fusedopt: result " + std::to_string(j) +
                                         " differs from its operand in type or shape");
    }
    *dtype = code;
    if (ob.untyped_data() != ib.untyped_data() && ib.size_bytes() > 0) {
      std::memcpy(ob.untyped_data(), ib.untyped_data(), ib.size_bytes());
    }
    (*out)[j] = ob.untyped_data();
    if (operands != nullptr) operands->push_back(ib);
  }
  return ffi::Error::Success();
}

// Operands: vars [n], given slot lists [k * n] (slot-major), grads [n], the
// rule's scalars, step (s64 or s32), grad_scale, clip_value, clip_norm,
// global_clip_norm (scalars: Note [scalar operands]). Results: vars [n],
// slots [k * n], skipped (pred); each var and slot result aliases its
// operand. Every slot and gradient has its variable's shape and element type
// (checked here too: JAX code can call the handler directly).
ffi::Error FusedApplyHost(ffi::ThreadPool pool, ffi::RemainingArgs args, ffi::RemainingRets rets,
                          int32_t rule, int32_t n, int32_t slot_mask, int32_t nesterov,
                          int32_t epsilon_outside_sqrt, int32_t tf_training_op_form,
                          double schedule_decay,
                          int32_t grappler_form, int32_t constant_folding,
                          int32_t skip_nonfinite, int32_t tf_norms, int32_t tf_pow,
                          int32_t tf_tensor_pow) {
  if (rule < 0 || rule >= kNumRules || n < 0) {
    return ffi::Error::InvalidArgument("fusedopt: bad custom-call attributes");
  }
  const RuleInfo& info = InfoOf(static_cast<Rule>(rule));
  std::vector<int> given;
  for (int k = 0; k < info.num_slots; ++k) {
    if (slot_mask & (1 << k)) given.push_back(k);
  }
  const int k_given = static_cast<int>(given.size());
  const size_t written = static_cast<size_t>(n) * (1 + k_given);
  const size_t want_args = written + n + info.num_scalars + 5;
  if (args.size() != want_args || rets.size() != written + 1) {
    return ffi::Error::InvalidArgument("fusedopt: the custom call has " +
                                       std::to_string(args.size()) + " operands and " +
                                       std::to_string(rets.size()) + " results, expected " +
                                       std::to_string(want_args) + " and " +
                                       std::to_string(written + 1));
  }
  std::vector<void*> out;
  std::vector<ffi::AnyBuffer> written_in;
  int dtype = -1;
  if (ffi::Error e = InPlaceBuffers(args, rets, written, &dtype, &out, &written_in); e.failure()) {
    return e;
  }
  if ((tf_norms != 0 || tf_pow != 0) && (g_hooks == nullptr || g_hooks->apply_forms == nullptr)) {
    return ffi::Error::InvalidArgument(
        "fusedopt: tf_norms and tf_pow need TensorFlow's kernels; this build of the handler "
        "(fusedopt._native) has none");
  }
  std::vector<int64_t> sizes(n);
  std::vector<unsigned char> rank0(n);
  for (int i = 0; i < n; ++i) {
    sizes[i] = static_cast<int64_t>(written_in[i].element_count());
    rank0[i] = written_in[i].dimensions().size() == 0 ? 1 : 0;
  }
  for (size_t j = n; j < written; ++j) {
    if (!SameDims(written_in[j], written_in[j % n])) {
      return ffi::Error::InvalidArgument("fusedopt: slot operand " + std::to_string(j) +
                                         " differs in shape from variable " +
                                         std::to_string(j % n));
    }
  }
  std::vector<const void*> grads(n);
  for (int i = 0; i < n; ++i) {
    auto g = args.get<ffi::AnyBuffer>(written + i);
    if (!g.has_value()) return ffi::Error::Internal("fusedopt: cannot decode a gradient");
    if (g->element_type() != written_in[i].element_type() || !SameDims(*g, written_in[i])) {
      return ffi::Error::InvalidArgument("fusedopt: gradient " + std::to_string(i) +
                                         " differs from its variable in type or shape");
    }
    grads[i] = g->untyped_data();
  }
  size_t at = written + n;
  std::vector<double> scalars(info.num_scalars);
  for (int k = 0; k < info.num_scalars; ++k) {
    if (!ReadScalarArg(args, at++, /*allow_s64=*/true, &scalars[k])) {
      return ffi::Error::InvalidArgument("fusedopt: bad scalar");
    }
  }
  int64_t step = 0;
  if (!ReadStepArg(args, at++, &step)) {
    return ffi::Error::InvalidArgument("fusedopt: the step must be an int64 or int32 scalar");
  }
  double options[4];
  for (double& o : options) {
    if (!ReadScalarArg(args, at++, /*allow_s64=*/true, &o)) {
      return ffi::Error::InvalidArgument("fusedopt: bad gradient option");
    }
  }

  fusedopt_call call;
  fusedopt_call_init(&call);
  call.rule = rule;
  call.dtype = dtype < 0 ? 2 : dtype;
  call.device = FUSEDOPT_DEVICE_CPU;
  call.scalars = scalars.data();
  call.num_scalars = info.num_scalars;
  call.step = step;
  call.nesterov = nesterov;
  call.epsilon_outside_sqrt = epsilon_outside_sqrt;
  call.tf_training_op_form = tf_training_op_form;
  call.schedule_decay = schedule_decay;
  call.grappler_form = grappler_form;
  call.constant_folding = constant_folding;
  call.grad_scale = options[0];
  call.clip_value = options[1];
  call.clip_norm = options[2];
  call.global_clip_norm = options[3];
  call.skip_nonfinite = skip_nonfinite;

  std::vector<void*> vars(out.begin(), out.begin() + n);
  std::vector<void*> slot_ptrs(static_cast<size_t>(kMaxSlots) * n, nullptr);
  fusedopt_tensors t;
  std::memset(&t, 0, sizeof(t));
  for (int j = 0; j < k_given; ++j) {
    t.slot_given[given[j]] = 1;
    for (int i = 0; i < n; ++i) slot_ptrs[kMaxSlots * i + given[j]] = out[n + j * n + i];
  }
  t.n = n;
  t.vars = vars.data();
  t.slots = slot_ptrs.data();
  t.grads = grads.data();
  t.sizes = sizes.data();
  t.rank0 = rank0.data();
  int skipped = 0;
  std::string err;
  // LAMB's norms and Ftrl's powers as the uncompiled op computes them with
  // tf_norms / tf_pow (and tf_tensor_pow, the Ftrl op's tf_training_op_form;
  // cc/tf/tf_numerics.h): TF's kernels on a device the size of XLA's
  // intra-op pool, through the op library's hooks.
  TfFormsMaker forms;
  if (tf_norms != 0 || tf_pow != 0) {
    RuleAttrs attrs;
    attrs.tf_norms = tf_norms != 0;
    attrs.tf_pow = tf_pow != 0;
    attrs.tf_tensor_pow = tf_tensor_pow != 0;
    const int threads = static_cast<int>(pool.num_threads());
    const auto apply_forms = g_hooks->apply_forms;
    const int dt = call.dtype;
    forms = [=](const Operands& ops, const Plan& plan) {
      return apply_forms(threads, static_cast<Rule>(rule), attrs, ops, plan, dt,
                         grappler_form != 0);
    };
  }
  const int code = native::ApplyCpu(&call, &t, PoolFor(&pool), &skipped, &err, forms);
  if (code != FUSEDOPT_OK) return ffi::Error::InvalidArgument(err);
  auto flag = rets.get<ffi::AnyBuffer>(written);
  if (!flag.has_value()) return ffi::Error::Internal("fusedopt: cannot decode 'skipped'");
  *static_cast<bool*>((**flag).untyped_data()) = skipped != 0;
  return ffi::Error::Success();
}

// Fusedopt>ApplyAdafactor's call (AdafactorXlaOp in cc/tf/xla_ops.cc):
// operands vars [n], r and c of each factored variable (rank >= 2, in
// variable order), v [n], grads [n], lr, beta_2_decay, epsilon_1, epsilon_2,
// clip_threshold, weight_decay (Note [scalar operands]), step (s64 or s32);
// results the written operands (aliased) and skipped (pred, false). Note
// [Adafactor passes]. r has the variable's shape without its last dimension,
// c without its second to last; v and the gradient the variable's.
ffi::Error AdafactorHost(ffi::ThreadPool pool, ffi::RemainingArgs args, ffi::RemainingRets rets,
                         int32_t n, int32_t grappler_form, int32_t tf_reductions) {
  if (n < 0 || args.size() < static_cast<size_t>(3 * n + 7)) {
    return ffi::Error::InvalidArgument("fusedopt: bad Adafactor custom-call operands");
  }
  auto buffer = [&](size_t j) { return args.get<ffi::AnyBuffer>(j); };
  std::vector<AdafactorTensor> ts(n);
  int factored = 0;
  int dtype = -1;
  for (int i = 0; i < n; ++i) {
    auto var = buffer(i);
    if (!var.has_value()) return ffi::Error::Internal("fusedopt: cannot decode a variable");
    const int code = DTypeCode(var->element_type());
    if (code < 0 || (dtype >= 0 && code != dtype)) {
      return ffi::Error::InvalidArgument("fusedopt: unsupported or mixed element types");
    }
    dtype = code;
    auto dims = var->dimensions();
    AdafactorTensor& t = ts[i];
    t.factored = dims.size() >= 2;
    t.scalar = dims.size() == 0;
    if (t.factored) {
      t.cols = dims[dims.size() - 1];
      t.rows = dims[dims.size() - 2];
      for (size_t d = 0; d + 2 < dims.size(); ++d) t.batch *= dims[d];
      ++factored;
    } else {
      t.cols = static_cast<int64_t>(var->element_count());
    }
  }
  const size_t written = static_cast<size_t>(2 * n + 2 * factored);
  if (args.size() != written + n + 7 || rets.size() != written + 1) {
    return ffi::Error::InvalidArgument("fusedopt: the Adafactor custom call has " +
                                       std::to_string(args.size()) + " operands and " +
                                       std::to_string(rets.size()) + " results, expected " +
                                       std::to_string(written + n + 7) + " and " +
                                       std::to_string(written + 1));
  }
  if (tf_reductions != 0 &&
      (g_hooks == nullptr || g_hooks->adafactor_has_tf_form == nullptr ||
       g_hooks->adafactor_tf_reductions == nullptr)) {
    return ffi::Error::InvalidArgument(
        "fusedopt: tf_reductions needs TensorFlow's kernels; this build of the handler "
        "(fusedopt._native) has none");
  }
  std::vector<void*> out;
  std::vector<ffi::AnyBuffer> written_in;
  if (ffi::Error e = InPlaceBuffers(args, rets, written, &dtype, &out, &written_in); e.failure()) {
    return e;
  }
  // Whether operand `b` has the dimensions of variable `i` less dimension
  // `drop` counted from the end (0: none dropped).
  auto shaped = [&](const ffi::AnyBuffer& b, int i, size_t drop) {
    const auto vd = written_in[i].dimensions();
    const auto bd = b.dimensions();
    if (bd.size() + (drop > 0 ? 1 : 0) != vd.size()) return false;
    for (size_t d = 0, e = 0; d < vd.size(); ++d) {
      if (drop > 0 && d == vd.size() - drop) continue;
      if (bd[e++] != vd[d]) return false;
    }
    return true;
  };
  size_t rc = n;  // the next r (then c) operand
  for (int i = 0; i < n; ++i) {
    AdafactorTensor& t = ts[i];
    t.var = out[i];
    if (t.factored) {
      if (!shaped(written_in[rc], i, 1) || !shaped(written_in[rc + 1], i, 2)) {
        return ffi::Error::InvalidArgument("fusedopt: Adafactor's r or c of variable " +
                                           std::to_string(i) + " has the wrong shape");
      }
      t.r = out[rc++];
      t.c = out[rc++];
    }
    const size_t vj = n + 2 * factored + i;
    if (!SameDims(written_in[vj], written_in[i])) {
      return ffi::Error::InvalidArgument("fusedopt: Adafactor's v of variable " +
                                         std::to_string(i) + " differs in shape");
    }
    t.v = out[vj];
    auto g = buffer(written + i);
    if (!g.has_value() || g->element_type() != written_in[i].element_type() ||
        !SameDims(*g, written_in[i])) {
      return ffi::Error::InvalidArgument("fusedopt: Adafactor gradient " + std::to_string(i) +
                                         " differs from its variable in type or shape");
    }
    t.grad = g->untyped_data();
  }
  double scalars[6];
  size_t at = written + n;
  for (double& x : scalars) {
    if (!ReadScalarArg(args, at++, /*allow_s64=*/false, &x)) {
      return ffi::Error::InvalidArgument("fusedopt: bad scalar");
    }
  }
  int64_t step = 0;
  if (!ReadStepArg(args, at, &step)) {
    return ffi::Error::InvalidArgument("fusedopt: the step must be an int64 or int32 scalar");
  }
  const AdafactorScalars s = AdafactorScalarsFrom(scalars, step, grappler_form != 0);
  const std::string err = CheckAdafactorScalars(s);
  if (!err.empty()) return ffi::Error::InvalidArgument(err);
  const int dt = dtype < 0 ? 2 : dtype;
  if (tf_reductions != 0 && g_hooks->adafactor_has_tf_form(dt)) {
    // Note [TF reductions]: Keras' ops on a device the size of XLA's pool.
    try {
      g_hooks->adafactor_tf_reductions(static_cast<int>(pool.num_threads()), dt, s, ts);
    } catch (const std::bad_alloc&) {
      return ffi::Error(ffi::ErrorCode::kResourceExhausted,
                        "fusedopt: no memory for Adafactor's TF reductions");
    }
  } else {
    RunAdafactorCpu(PoolFor(&pool), dt, s, ts);
  }
  auto flag = rets.get<ffi::AnyBuffer>(written);
  if (!flag.has_value()) return ffi::Error::Internal("fusedopt: cannot decode 'skipped'");
  *static_cast<bool*>((**flag).untyped_data()) = false;
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER(kAdafactorHost, AdafactorHost,
                       ffi::Ffi::Bind()
                           .Ctx<ffi::ThreadPool>()
                           .RemainingArgs()
                           .RemainingRets()
                           .Attr<int32_t>("n")
                           .Attr<int32_t>("grappler_form")
                           .Attr<int32_t>("tf_reductions"));

XLA_FFI_DEFINE_HANDLER(kFusedApplyHost, FusedApplyHost,
                       ffi::Ffi::Bind()
                           .Ctx<ffi::ThreadPool>()
                           .RemainingArgs()
                           .RemainingRets()
                           .Attr<int32_t>("rule")
                           .Attr<int32_t>("n")
                           .Attr<int32_t>("slot_mask")
                           .Attr<int32_t>("nesterov")
                           .Attr<int32_t>("epsilon_outside_sqrt")
                           .Attr<int32_t>("tf_training_op_form")
                           .Attr<double>("schedule_decay")
                           .Attr<int32_t>("grappler_form")
                           .Attr<int32_t>("constant_folding")
                           .Attr<int32_t>("skip_nonfinite")
                           .Attr<int32_t>("tf_norms")
                           .Attr<int32_t>("tf_pow")
                           .Attr<int32_t>("tf_tensor_pow"));

void SetTfFormHooks(const TfFormHooks* hooks) { g_hooks = hooks; }

XLA_FFI_Handler* FusedApplyHandler() { return kFusedApplyHost; }

XLA_FFI_Handler* AdafactorHandler() { return kAdafactorHost; }

bool HandlerApiVersion(XLA_FFI_Handler* handler, int* major, int* minor) {
  XLA_FFI_Metadata metadata;
  std::memset(&metadata, 0, sizeof(metadata));
  metadata.struct_size = XLA_FFI_Metadata_STRUCT_SIZE;
  XLA_FFI_Metadata_Extension extension;
  std::memset(&extension, 0, sizeof(extension));
  extension.extension_base.struct_size = XLA_FFI_Metadata_Extension_STRUCT_SIZE;
  extension.extension_base.type = XLA_FFI_Extension_Metadata;
  extension.metadata = &metadata;
  XLA_FFI_CallFrame frame;
  std::memset(&frame, 0, sizeof(frame));
  frame.struct_size = XLA_FFI_CallFrame_STRUCT_SIZE;
  frame.extension_start = &extension.extension_base;
  // No API: a handler reads it only to create an error, which a metadata
  // call cannot meet (the struct sizes are this header's own).
  frame.api = nullptr;
  if (handler(&frame) != nullptr) return false;
  *major = metadata.api_version.major_version;
  *minor = metadata.api_version.minor_version;
  return true;
}

}  // namespace xla_ffi
}  // namespace fusedopt
