// Kernels of the fused apply ops (CPU, and GPU when built with CUDA).
//
// One generic kernel, FusedApplyOp, does what every op shares (Note
// [variable semantics]): look up variables and slots, lock, validate, copy on
// write, then run the rule over a flat chunk list (CPU) or launch it per
// tensor (GPU). Each algorithm contributes a Spec: its slot and scalar input
// names, and a Plan() that turns the scalars and attrs into the variant and
// the per-call coefficients (Note [coefficients]).
#define EIGEN_USE_THREADS

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "cc/cpu/chunking.h"
#include "cc/cpu/kernels.h"
#include "cc/rules/coefficients.h"
#include "cc/rules/update_rules.h"
#include "cc/tf/fused_op_util.h"
#include "cc/tf/variable_access.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/register_types.h"
#if defined(FUSEDOPT_WITH_CUDA)
#include "cc/cuda/launchers.h"
#endif

namespace fusedopt {
namespace tf {
namespace {

using tensorflow::OpInputList;
using tensorflow::OpKernel;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;

absl::Status Invalid(const std::string& msg) { return absl::InvalidArgumentError(msg); }

// What Plan() sees: scalar hyperparameters by position in Spec::kScalars, the
// step (when the op has one), and which optional slot lists were given.
struct PlanInput {
  bool f64 = false;  // float64 variables: coefficients in double, else float
  bool grappler_form = false;  // Note [Grappler form] in coefficients.h
  bool constant_folding = false;  // Grappler's constant folding (reciprocals)
  bool rank0 = false;          // the plan for rank-0 variables (no MinimizeBroadcasts)
  bool MinimizeBroadcasts() const { return grappler_form && !rank0; }
  std::vector<double> scalars;
  int64_t step = 0;
  std::vector<bool> slot_given;
};

struct Plan {
  int variant = 0;
  // Rules that divide by a square root, under grappler_form: the variant
  // stride of the rsqrt forms (Note [TF rsqrt]); 0 keeps the division.
  int rsqrt_stride = 0;
  bool f64 = false;
  Coeffs coeffs{};
  // For rank-0 variables: Grappler's MinimizeBroadcasts leaves a chain of
  // scalars alone (Note [Grappler form]), so these keep Keras' written weight
  // decay (and ScheduleFree its variant 2).
  Coeffs rank0_coeffs{};
  int rank0_variant = 0;
  const Coeffs& For(bool rank0) const { return rank0 ? rank0_coeffs : coeffs; }
  int VariantFor(bool rank0) const { return rank0 ? rank0_variant : variant; }
};

// A rule's coefficients computed in the variables' opmath (Note [Keras
// arithmetic] in coefficients.h).
#define FUSEDOPT_COEFFS(in, fn, ...) \
  ((in).f64 ? coeffs::fn<double>(__VA_ARGS__) : coeffs::fn<float>(__VA_ARGS__))

absl::Status ReadStep(OpKernelContext* ctx, int64_t* step) {
  const tensorflow::Tensor* t = nullptr;
  TF_RETURN_IF_ERROR(ctx->input("step", &t));
  if (!tensorflow::TensorShapeUtils::IsScalar(t->shape())) {
    return Invalid(absl::StrCat("'step' must be a scalar, got shape ", t->shape().DebugString()));
  }
  *step = t->scalar<int64_t>()();
  if (*step < 1) return Invalid(absl::StrCat("'step' must be >= 1, got ", *step));
  return absl::OkStatus();
}

// The fusedopt storage type of a TensorFlow element type (same bits).
template <typename T>
struct StorageOf {
  using type = T;
};
template <>
struct StorageOf<Eigen::half> {
  using type = Half;
};
template <>
struct StorageOf<Eigen::bfloat16> {
  using type = BFloat16;
};

// ---- Specs -------------------------------------------------------------------

struct SlotSpec {
  const char* input;
  bool optional;
};

struct SgdSpec {
  static constexpr Algo kAlgo = Algo::kSgd;
  static constexpr std::array<SlotSpec, 1> kSlots{{{"momenta", true}}};
  static constexpr std::array<const char*, 3> kScalars{"lr", "momentum", "weight_decay"};
  static constexpr bool kHasStep = false;
  bool nesterov = false;
  explicit SgdSpec(OpKernelConstruction* c) { OP_REQUIRES_OK(c, c->GetAttr("nesterov", &nesterov)); }
  absl::Status MakePlan(const PlanInput& in, Plan* p) const {
    const auto& s = in.scalars;
    if (nesterov && !in.slot_given[0]) {
      return Invalid("nesterov=True needs momentum slots (momenta is empty)");
    }
    p->variant = !in.slot_given[0] ? 0 : (nesterov ? 2 : 1);
    p->coeffs = FUSEDOPT_COEFFS(in, Sgd, s[0], s[1], s[2], in.MinimizeBroadcasts());
    return absl::OkStatus();
  }
};

struct AdamSpec {
  static constexpr Algo kAlgo = Algo::kAdam;
  static constexpr std::array<SlotSpec, 3> kSlots{{{"m", false}, {"v", false}, {"vhat", true}}};
  static constexpr std::array<const char*, 5> kScalars{"lr", "beta_1", "beta_2", "epsilon",
                                                       "weight_decay"};
  static constexpr bool kHasStep = true;
  explicit AdamSpec(OpKernelConstruction*) {}
  absl::Status MakePlan(const PlanInput& in, Plan* p) const {
    const auto& s = in.scalars;
    p->variant = in.slot_given[2] ? 1 : 0;
    p->coeffs = FUSEDOPT_COEFFS(in, Adam, s[0], s[1], s[2], s[3], s[4], in.step, in.MinimizeBroadcasts());
    return absl::OkStatus();
  }
};

struct NadamSpec {
  static constexpr Algo kAlgo = Algo::kNadam;
  static constexpr std::array<SlotSpec, 2> kSlots{{{"m", false}, {"v", false}}};
  static constexpr std::array<const char*, 6> kScalars{"lr", "beta_1", "beta_2", "epsilon",
                                                       "weight_decay", "u_product"};
  static constexpr bool kHasStep = true;
  float schedule_decay = 1.0f;
  explicit NadamSpec(OpKernelConstruction* c) {
    OP_REQUIRES_OK(c, c->GetAttr("schedule_decay", &schedule_decay));
  }
  absl::Status MakePlan(const PlanInput& in, Plan* p) const {
    const auto& s = in.scalars;
    p->coeffs = FUSEDOPT_COEFFS(in, Nadam, s[0], s[1], s[2], s[3], s[4], s[5], in.step, schedule_decay, in.MinimizeBroadcasts());
    return absl::OkStatus();
  }
};

struct AdamaxSpec {
  static constexpr Algo kAlgo = Algo::kAdamax;
  static constexpr std::array<SlotSpec, 2> kSlots{{{"m", false}, {"u", false}}};
  static constexpr std::array<const char*, 5> kScalars{"lr", "beta_1", "beta_2", "epsilon",
                                                       "weight_decay"};
  static constexpr bool kHasStep = true;
  explicit AdamaxSpec(OpKernelConstruction*) {}
  absl::Status MakePlan(const PlanInput& in, Plan* p) const {
    const auto& s = in.scalars;
    p->coeffs = FUSEDOPT_COEFFS(in, Adamax, s[0], s[1], s[2], s[3], s[4], in.step, in.MinimizeBroadcasts());
    return absl::OkStatus();
  }
};

struct RmspropSpec {
  static constexpr Algo kAlgo = Algo::kRmsprop;
  static constexpr std::array<SlotSpec, 3> kSlots{
      {{"velocity", false}, {"momenta", true}, {"average_gradient", true}}};
  static constexpr std::array<const char*, 5> kScalars{"lr", "rho", "momentum", "epsilon",
                                                       "weight_decay"};
  static constexpr bool kHasStep = false;
  bool epsilon_outside_sqrt = false;
  explicit RmspropSpec(OpKernelConstruction* c) {
    OP_REQUIRES_OK(c, c->GetAttr("epsilon_outside_sqrt", &epsilon_outside_sqrt));
  }
  absl::Status MakePlan(const PlanInput& in, Plan* p) const {
    const auto& s = in.scalars;
    p->variant = (in.slot_given[1] ? 1 : 0) | (in.slot_given[2] ? 2 : 0);
    if (in.grappler_form && !epsilon_outside_sqrt) p->rsqrt_stride = RmspropRule::kRsqrtStride;
    p->coeffs = FUSEDOPT_COEFFS(in, Rmsprop, s[0], s[1], s[2], s[3], s[4], epsilon_outside_sqrt, in.MinimizeBroadcasts());
    return absl::OkStatus();
  }
};

struct AdagradSpec {
  static constexpr Algo kAlgo = Algo::kAdagrad;
  static constexpr std::array<SlotSpec, 1> kSlots{{{"accumulator", false}}};
  static constexpr std::array<const char*, 3> kScalars{"lr", "epsilon", "weight_decay"};
  static constexpr bool kHasStep = false;
  bool epsilon_outside_sqrt = false;
  explicit AdagradSpec(OpKernelConstruction* c) {
    OP_REQUIRES_OK(c, c->GetAttr("epsilon_outside_sqrt", &epsilon_outside_sqrt));
  }
  absl::Status MakePlan(const PlanInput& in, Plan* p) const {
    const auto& s = in.scalars;
    if (in.grappler_form && !epsilon_outside_sqrt) p->rsqrt_stride = AdagradRule::kRsqrtStride;
    p->coeffs = FUSEDOPT_COEFFS(in, Adagrad, s[0], s[1], s[2], epsilon_outside_sqrt, in.MinimizeBroadcasts());
    return absl::OkStatus();
  }
};

struct AdadeltaSpec {
  static constexpr Algo kAlgo = Algo::kAdadelta;
  static constexpr std::array<SlotSpec, 2> kSlots{
      {{"accumulated_grad", false}, {"accumulated_delta_var", false}}};
  static constexpr std::array<const char*, 4> kScalars{"lr", "rho", "epsilon", "weight_decay"};
  static constexpr bool kHasStep = false;
  explicit AdadeltaSpec(OpKernelConstruction*) {}
  absl::Status MakePlan(const PlanInput& in, Plan* p) const {
    const auto& s = in.scalars;
    if (in.grappler_form) p->rsqrt_stride = AdadeltaRule::kRsqrtStride;
    p->coeffs = FUSEDOPT_COEFFS(in, Adadelta, s[0], s[1], s[2], s[3], in.MinimizeBroadcasts());
    return absl::OkStatus();
  }
};

struct FtrlSpec {
  static constexpr Algo kAlgo = Algo::kFtrl;
  static constexpr std::array<SlotSpec, 2> kSlots{{{"accumulator", false}, {"linear", false}}};
  static constexpr std::array<const char*, 7> kScalars{
      "lr", "learning_rate_power", "l1", "l2", "l2_shrinkage", "beta", "weight_decay"};
  static constexpr bool kHasStep = false;
  explicit FtrlSpec(OpKernelConstruction*) {}
  absl::Status MakePlan(const PlanInput& in, Plan* p) const {
    const auto& s = in.scalars;
    if (s[0] <= 0) return Invalid(absl::StrCat("Ftrl needs lr > 0, got ", s[0]));
    if (s[1] > 0) {
      return Invalid(absl::StrCat("learning_rate_power must be <= 0, got ", s[1]));
    }
    p->variant = s[1] == -0.5 ? 1 : 0;
    p->coeffs = FUSEDOPT_COEFFS(in, Ftrl, s[0], s[1], s[2], s[3], s[4], s[5], s[6], in.MinimizeBroadcasts());
    return absl::OkStatus();
  }
};

struct LionSpec {
  static constexpr Algo kAlgo = Algo::kLion;
  static constexpr std::array<SlotSpec, 1> kSlots{{{"m", false}}};
  static constexpr std::array<const char*, 4> kScalars{"lr", "beta_1", "beta_2", "weight_decay"};
  static constexpr bool kHasStep = false;
  explicit LionSpec(OpKernelConstruction*) {}
  absl::Status MakePlan(const PlanInput& in, Plan* p) const {
    const auto& s = in.scalars;
    p->coeffs = FUSEDOPT_COEFFS(in, Lion, s[0], s[1], s[2], s[3], in.MinimizeBroadcasts());
    return absl::OkStatus();
  }
};

struct ScheduleFreeSpec {
  static constexpr Algo kAlgo = Algo::kScheduleFree;
  static constexpr std::array<SlotSpec, 2> kSlots{{{"momentum", false}, {"velocity", false}}};
  static constexpr std::array<const char*, 6> kScalars{"lr", "beta_1", "beta_2", "epsilon",
                                                       "warmup_steps", "weight_decay"};
  static constexpr bool kHasStep = true;
  explicit ScheduleFreeSpec(OpKernelConstruction*) {}
  absl::Status MakePlan(const PlanInput& in, Plan* p) const {
    const auto& s = in.scalars;
    if (!(s[1] > 0)) return Invalid(absl::StrCat("'beta_1' must be > 0, got ", s[1]));
    if (!(s[4] >= 0)) return Invalid(absl::StrCat("'warmup_steps' must be >= 0, got ", s[4]));
    p->variant = !in.constant_folding ? 0 : (in.MinimizeBroadcasts() ? 1 : 2);
    p->coeffs = FUSEDOPT_COEFFS(in, ScheduleFree, s[0], s[1], s[2], s[3], s[4], s[5], in.step,
                                in.constant_folding, in.MinimizeBroadcasts());
    return absl::OkStatus();
  }
};

// LAMB: the same plumbing, a two-pass run (see LambRule).
struct LambSpec {
  static constexpr Algo kAlgo = Algo::kAdam;  // unused: LAMB runs its own two passes
  static constexpr std::array<SlotSpec, 2> kSlots{{{"m", false}, {"v", false}}};
  static constexpr std::array<const char*, 5> kScalars{"lr", "beta_1", "beta_2", "epsilon",
                                                       "weight_decay"};
  static constexpr bool kHasStep = true;
  explicit LambSpec(OpKernelConstruction*) {}
  absl::Status MakePlan(const PlanInput& in, Plan* p) const {
    const auto& s = in.scalars;
    p->coeffs = FUSEDOPT_COEFFS(in, Lamb, s[0], s[1], s[2], s[3], s[4], in.step, in.MinimizeBroadcasts());
    return absl::OkStatus();
  }
};

// ---- Gradient options (Note [gradient transform]) --------------------------------

// The per-call gradient options every fused op takes.
struct GradOptions {
  double grad_scale = 1.0;        // multiplies every gradient (1 / loss_scale)
  double clip_value = INFINITY;   // clip each element to [-v, v]
  double clip_norm = INFINITY;    // clip each variable's gradient to this L2 norm
  double global_clip_norm = INFINITY;  // clip all gradients to this global L2 norm
  bool skip_nonfinite = false;    // any inf/NaN gradient: write nothing, report it

  bool NeedsStats() const {
    return std::isfinite(clip_norm) || std::isfinite(global_clip_norm) || skip_nonfinite;
  }
  bool Transforms() const {
    return grad_scale != 1.0 || std::isfinite(clip_value) || std::isfinite(clip_norm) ||
           std::isfinite(global_clip_norm);
  }
};

absl::Status ReadGradOptions(OpKernelContext* ctx, bool skip_nonfinite, GradOptions* o) {
  TF_RETURN_IF_ERROR(ReadScalar(ctx, "grad_scale", &o->grad_scale));
  TF_RETURN_IF_ERROR(ReadScalar(ctx, "clip_value", &o->clip_value));
  TF_RETURN_IF_ERROR(ReadScalar(ctx, "clip_norm", &o->clip_norm));
  TF_RETURN_IF_ERROR(ReadScalar(ctx, "global_clip_norm", &o->global_clip_norm));
  o->skip_nonfinite = skip_nonfinite;
  int active = 0;
  for (const auto& [name, v] : {std::pair<const char*, double>{"clip_value", o->clip_value},
                                {"clip_norm", o->clip_norm},
                                {"global_clip_norm", o->global_clip_norm}}) {
    if (!(v > 0)) {
      return Invalid(absl::StrCat("'", name, "' must be > 0 (+inf disables it), got ", v));
    }
    active += std::isfinite(v) ? 1 : 0;
  }
  if (active > 1) {
    return Invalid(
        "at most one of clip_value, clip_norm and global_clip_norm may be set (finite), as in "
        "Keras");
  }
  return absl::OkStatus();
}

// Per-tensor transforms from the gradient statistics, as Keras computes them:
// clip_norm: g * c / max(|g|, c); global: g * c * min(1/G, 1/c) + (G - G)
// (NaN everywhere when G is not finite). Norms are of the scaled gradients.
std::vector<GradXform> MakeXforms(const GradOptions& o, const std::vector<double>& sum_sq) {
  const int n = static_cast<int>(sum_sq.size());
  const double gs = o.grad_scale;
  std::vector<GradXform> x(n, GradXform{gs, o.clip_value});
  if (std::isfinite(o.clip_norm)) {
    for (int i = 0; i < n; ++i) {
      const double norm = std::fabs(gs) * std::sqrt(sum_sq[i]);
      const double denom = std::isnan(norm) ? norm : std::max(norm, o.clip_norm);
      x[i].scale = gs * (o.clip_norm / denom);
    }
  } else if (std::isfinite(o.global_clip_norm)) {
    double total = 0;
    for (int i = 0; i < n; ++i) total += sum_sq[i];
    const double g = std::fabs(gs) * std::sqrt(total);
    const double c = o.global_clip_norm;
    const double scale = c * std::min(1.0 / g, 1.0 / c) + (g - g);
    for (int i = 0; i < n; ++i) x[i].scale = gs * scale;
  }
  return x;
}

// ---- Running a rule over validated operands ---------------------------------

// The variables and slots of one call, after validation, as raw pointers.
struct Operands {
  int n = 0;
  int num_slots = 0;                                // slot lists given, in rule order
  std::vector<void*> vars;                          // [n]
  std::vector<std::array<void*, kMaxSlots>> slots;  // [n][num_slots]
  std::vector<const void*> grads;                   // [n]
  std::vector<int64_t> sizes;                       // [n]
  std::vector<GradXform> xforms;                    // [n]
  std::vector<char> rank0;                          // [n]: a scalar variable
  bool transform = false;
  bool IsRank0(int i) const { return !rank0.empty() && rank0[i] != 0; }
};

// One contiguous run of elements: var and slots from `offset`, gradient from
// `grad`, `length` elements.
struct Item {
  int tensor;
  int64_t offset;
  const void* grad;
  int64_t length;
};

// The CPU loops' view of a call: per tensor, the base of the variable and of
// each slot (after copy-on-write), and the element size.
struct CpuTargets {
  std::vector<char*> var;
  std::vector<std::array<char*, kMaxSlots>> slots;
  int num_slots = 0;
  int elem_bytes = 0;
};

// Runs a call's items on the intra-op pool, for the dense and the sparse ops
// alike: an elementwise rule in one pass, or LAMB's two passes with per-item
// partial norms combined per tensor in item order (Note [deterministic sums]).
// `lamb` selects LAMB; otherwise `algo` and `variant` name the rule.
void RunItemsCpu(OpKernelContext* ctx, const std::vector<Item>& items, const CpuTargets& t,
                 const Operands& ops, const Plan& plan, bool lamb, Algo algo, bool decay,
                 int dt) {
  std::vector<cpu::Chunk> chunks;  // chunk.tensor is the item's index
  chunks.reserve(items.size());
  for (size_t k = 0; k < items.size(); ++k) {
    chunks.push_back(cpu::Chunk{static_cast<int32_t>(k), 0, items[k].length});
  }
  auto pointers = [&](const Item& it, void** var, std::array<void*, kMaxSlots>* slots) {
    const int64_t off = it.offset * t.elem_bytes;
    *var = t.var[it.tensor] + off;
    for (int k = 0; k < t.num_slots; ++k) (*slots)[k] = t.slots[it.tensor][k] + off;
  };
  const cpu::KernelTable& table = cpu::SelectedKernels();
  const int bytes = t.elem_bytes * (3 + 2 * t.num_slots);
  if (!lamb) {
    const auto& fns = table.elementwise[static_cast<int>(algo)][dt];
    if (plan.rsqrt_stride == 0) {
      RunChunks(ctx, chunks, bytes, [&](const cpu::Chunk& c) {
        const Item& it = items[c.tensor];
        void* var;
        std::array<void*, kMaxSlots> slots{};
        pointers(it, &var, &slots);
        const bool rank0 = ops.IsRank0(it.tensor);
        fns[plan.VariantFor(rank0)][decay][ops.transform](
            plan.For(rank0), ops.xforms[it.tensor], var, slots.data(), it.grad, 0, it.length);
      });
      return;
    }
    // Note [TF rsqrt]: the packet form on each tensor's first n - n % 8
    // elements, the scalar form on the rest (dense items only: `offset` is
    // the element offset in the tensor).
    RunChunks(ctx, chunks, bytes, [&](const cpu::Chunk& c) {
      const Item& it = items[c.tensor];
      void* var;
      std::array<void*, kMaxSlots> slots{};
      pointers(it, &var, &slots);
      const int variant = plan.VariantFor(ops.IsRank0(it.tensor));
      const cpu::ElementwiseFn packet =
          fns[variant + plan.rsqrt_stride * kPacketRsqrt][decay][ops.transform];
      const cpu::ElementwiseFn scalar =
          fns[variant + plan.rsqrt_stride * kScalarRsqrt][decay][ops.transform];
      const int64_t n = ops.sizes[it.tensor];
      const int64_t split = std::clamp<int64_t>(n - n % kTfRsqrtPacket - it.offset, 0, it.length);
      const Coeffs& co = plan.For(ops.IsRank0(it.tensor));
      if (split > 0) packet(co, ops.xforms[it.tensor], var, slots.data(), it.grad, 0, split);
      if (split < it.length) {
        scalar(co, ops.xforms[it.tensor], var, slots.data(), it.grad, split, it.length);
      }
    });
    return;
  }
  std::vector<double> w_sq(items.size(), 0.0), u_sq(items.size(), 0.0);
  RunChunks(ctx, chunks, bytes, [&](const cpu::Chunk& c) {
    const Item& it = items[c.tensor];
    void* var;
    std::array<void*, kMaxSlots> slots{};
    pointers(it, &var, &slots);
    table.lamb_pass1[dt][decay][ops.transform](plan.For(ops.IsRank0(it.tensor)), ops.xforms[it.tensor], var,
                                               slots.data(), it.grad, 0, it.length,
                                               &w_sq[c.tensor], &u_sq[c.tensor]);
  });
  const int n = ops.n;
  std::vector<double> w(n, 0.0), u(n, 0.0), ratio_lr(n);
  for (size_t k = 0; k < items.size(); ++k) {
    w[items[k].tensor] += w_sq[k];
    u[items[k].tensor] += u_sq[k];
  }
  for (int i = 0; i < n; ++i) {
    const double lr = plan.coeffs.c[LambRule::kLr];
    ratio_lr[i] = plan.f64 ? LambRule::RatioLr<double>(w[i], u[i], lr)
                           : LambRule::RatioLr<float>(w[i], u[i], lr);
  }
  RunChunks(ctx, chunks, t.elem_bytes * 4, [&](const cpu::Chunk& c) {
    const Item& it = items[c.tensor];
    void* var;
    std::array<void*, kMaxSlots> slots{};
    pointers(it, &var, &slots);
    table.lamb_pass2[dt][decay](plan.For(ops.IsRank0(it.tensor)), ratio_lr[it.tensor], var, slots.data(), 0,
                                it.length);
  });
}

// The dense ops' items: fixed-size chunks (Note [chunks]) of every tensor.
std::vector<Item> DenseItems(const Operands& ops, int elem_bytes) {
  std::vector<Item> items;
  for (const cpu::Chunk& c : cpu::PlanChunks(ops.sizes)) {
    items.push_back(Item{c.tensor, c.begin,
                         static_cast<const char*>(ops.grads[c.tensor]) + c.begin * elem_bytes,
                         c.end - c.begin});
  }
  return items;
}

CpuTargets TargetsOf(const Operands& ops, int elem_bytes) {
  CpuTargets t;
  t.num_slots = ops.num_slots;
  t.elem_bytes = elem_bytes;
  for (int i = 0; i < ops.n; ++i) {
    t.var.push_back(static_cast<char*>(ops.vars[i]));
    std::array<char*, kMaxSlots> s{};
    for (int k = 0; k < ops.num_slots; ++k) s[k] = static_cast<char*>(ops.slots[i][k]);
    t.slots.push_back(s);
  }
  return t;
}

// Pass 0 (CPU): per-tensor sum of squares and any non-finite element.
// Per-chunk partials, combined in chunk order (Note [deterministic sums]).
void GradStatsCpu(OpKernelContext* ctx, const Operands& ops, int dt, int elem_bytes,
                  std::vector<double>* sum_sq, bool* nonfinite) {
  const cpu::GradStatsFn fn = cpu::SelectedKernels().grad_stats[dt];
  const std::vector<cpu::Chunk> chunks = cpu::PlanChunks(ops.sizes);
  std::vector<double> partial(chunks.size(), 0.0);
  std::vector<char> bad(chunks.size(), 0);
  RunChunks(ctx, chunks, elem_bytes, [&](const cpu::Chunk& c) {
    const size_t idx = &c - chunks.data();
    bool b = false;
    fn(ops.grads[c.tensor], c.begin, c.end, &partial[idx], &b);
    bad[idx] = b;
  });
  sum_sq->assign(ops.n, 0.0);
  *nonfinite = false;
  for (size_t i = 0; i < chunks.size(); ++i) {
    (*sum_sq)[chunks[i].tensor] += partial[i];
    *nonfinite |= bad[i] != 0;
  }
}

template <Backend B, typename T>
absl::Status RunElementwise(OpKernelContext* ctx, const Operands& ops, Algo algo, const Plan& plan,
                            bool decay, int dt) {
  if constexpr (B == Backend::kCpu) {
    const int eb = static_cast<int>(sizeof(T));
    RunItemsCpu(ctx, DenseItems(ops, eb), TargetsOf(ops, eb), ops, plan, false, algo, decay, dt);
    return absl::OkStatus();
  } else {
#if defined(FUSEDOPT_WITH_CUDA)
    void* stream = GpuStream(ctx);
    for (int i = 0; i < ops.n; ++i) {
      TF_RETURN_IF_ERROR(CudaStatus(
          fusedopt_cuda_elementwise(static_cast<int>(algo), dt,
                                    plan.VariantFor(ops.IsRank0(i)) +
                                        plan.rsqrt_stride * kPacketRsqrt,
                                    decay ? 1 : 0,
                                    plan.For(ops.IsRank0(i)).c, ops.transform ? 1 : 0,
                                    ops.xforms[i].scale,
                                    ops.xforms[i].clip_value, ops.vars[i], ops.slots[i].data(),
                                    ops.grads[i], ops.sizes[i], stream),
          "elementwise update"));
    }
    return absl::OkStatus();
#else
    return absl::InternalError("fusedopt was built without CUDA");
#endif
  }
}

template <Backend B, typename T>
absl::Status RunLamb(OpKernelContext* ctx, const Operands& ops, const Plan& plan, bool decay,
                     int dt) {
  if constexpr (B == Backend::kCpu) {
    const int eb = static_cast<int>(sizeof(T));
    RunItemsCpu(ctx, DenseItems(ops, eb), TargetsOf(ops, eb), ops, plan, true, Algo::kAdam, decay,
                dt);
    return absl::OkStatus();
  } else {
#if defined(FUSEDOPT_WITH_CUDA)
    void* stream = GpuStream(ctx);
    for (int i = 0; i < ops.n; ++i) {
      const int64_t scratch_bytes = fusedopt_cuda_lamb_scratch_bytes(ops.sizes[i]);
      tensorflow::Tensor scratch;
      TF_RETURN_IF_ERROR(ctx->allocate_temp(tensorflow::DT_INT8,
                                            tensorflow::TensorShape({scratch_bytes}), &scratch));
      TF_RETURN_IF_ERROR(CudaStatus(
          fusedopt_cuda_lamb(dt, decay ? 1 : 0, plan.For(ops.IsRank0(i)).c, ops.transform ? 1 : 0,
                             ops.xforms[i].scale, ops.xforms[i].clip_value, ops.vars[i],
                             ops.slots[i].data(), ops.grads[i], ops.sizes[i],
                             const_cast<char*>(scratch.tensor_data().data()), stream),
          "LAMB update"));
    }
    return absl::OkStatus();
#else
    return absl::InternalError("fusedopt was built without CUDA");
#endif
  }
}

// A call's plan (Note [coefficients]). With rank0_plan and grappler_form,
// also the plan for its rank-0 variables, which Grappler's MinimizeBroadcasts
// leaves in Keras' written form (Note [Grappler form]).
template <typename Spec>
absl::Status MakeCallPlan(const Spec& spec, const PlanInput& in, bool rank0_plan, Plan* plan) {
  TF_RETURN_IF_ERROR(spec.MakePlan(in, plan));
  plan->f64 = in.f64;
  plan->rank0_coeffs = plan->coeffs;
  plan->rank0_variant = plan->variant;
  if (rank0_plan && in.grappler_form) {
    PlanInput rank0 = in;
    rank0.rank0 = true;
    Plan p0;
    TF_RETURN_IF_ERROR(spec.MakePlan(rank0, &p0));
    plan->rank0_coeffs = p0.coeffs;
    plan->rank0_variant = p0.variant;
  }
  return absl::OkStatus();
}

// Reads a call's scalars, step and options, and looks up its variables and
// slot lists (checking the list lengths); shared by the dense and sparse ops.
template <typename Spec>
absl::Status ReadCall(OpKernelContext* ctx, const Spec& spec, bool skip_nonfinite, int n,
                      PlanInput* in, GradOptions* options, VariableSet* vars, int* var0,
                      std::vector<int>* slot_first) {
  in->scalars.resize(Spec::kScalars.size());
  for (size_t k = 0; k < Spec::kScalars.size(); ++k) {
    TF_RETURN_IF_ERROR(ReadScalar(ctx, Spec::kScalars[k], &in->scalars[k]));
  }
  if constexpr (Spec::kHasStep) TF_RETURN_IF_ERROR(ReadStep(ctx, &in->step));
  TF_RETURN_IF_ERROR(ReadGradOptions(ctx, skip_nonfinite, options));
  TF_RETURN_IF_ERROR(vars->Lookup("vars", var0));
  for (const SlotSpec& slot : Spec::kSlots) {
    int first = 0;
    TF_RETURN_IF_ERROR(vars->Lookup(slot.input, &first));
    const int count = vars->size() - first;
    if (count == 0 && slot.optional) {
      in->slot_given.push_back(false);
      continue;
    }
    if (count != n) {
      return Invalid(absl::StrCat(slot.input, " has ", count, " entries but there are ", n,
                                  " variables", slot.optional ? " (give none or one each)" : ""));
    }
    in->slot_given.push_back(true);
    slot_first->push_back(first);
  }
  return absl::OkStatus();
}

// ---- The generic kernel ------------------------------------------------------

template <Backend B, typename T, typename Spec>
class FusedApplyOp : public OpKernel {
 public:
  explicit FusedApplyOp(OpKernelConstruction* c) : OpKernel(c), spec_(c) {
    OP_REQUIRES_OK(c, c->GetAttr("skip_nonfinite", &skip_nonfinite_));
    OP_REQUIRES_OK(c, c->GetAttr("grappler_form", &grappler_form_));
    OP_REQUIRES_OK(c, c->GetAttr("grappler_constant_folding", &constant_folding_));
  }

  void Compute(OpKernelContext* ctx) override { OP_REQUIRES_OK(ctx, DoCompute(ctx)); }

 private:
  absl::Status DoCompute(OpKernelContext* ctx) {
    const tensorflow::DataType dtype = tensorflow::DataTypeToEnum<T>::value;
    OpInputList grads;
    TF_RETURN_IF_ERROR(ctx->input_list("grads", &grads));
    const int n = grads.size();

    PlanInput in;
    in.f64 = std::is_same_v<T, double>;
    in.grappler_form = grappler_form_;
    in.constant_folding = constant_folding_;
    GradOptions options;
    VariableSet vars(ctx);
    int var0 = 0;
    std::vector<int> slot_first;  // first index in `vars` of each given slot list
    TF_RETURN_IF_ERROR(ReadCall<Spec>(ctx, spec_, skip_nonfinite_, n, &in, &options, &vars, &var0,
                                      &slot_first));
    Plan plan;
    TF_RETURN_IF_ERROR(MakeCallPlan(spec_, in, /*rank0_plan=*/true, &plan));

    tensorflow::Tensor* skipped = nullptr;
    TF_RETURN_IF_ERROR(ctx->allocate_output("skipped", tensorflow::TensorShape({}), &skipped));
    skipped->scalar<bool>()() = false;

    TF_RETURN_IF_ERROR(vars.CheckDistinctAndLock());
    for (int i = 0; i < n; ++i) {
      const std::string gname = absl::StrCat("grads[", i, "]");
      TF_RETURN_IF_ERROR(vars.ValidateDtype(var0 + i, dtype));
      TF_RETURN_IF_ERROR(vars.ValidateShape(var0 + i, grads[i].shape(), gname));
      for (int first : slot_first) {
        TF_RETURN_IF_ERROR(vars.ValidateDtype(first + i, dtype));
        TF_RETURN_IF_ERROR(vars.ValidateShape(first + i, grads[i].shape(), gname));
      }
    }

    Operands ops;
    ops.n = n;
    ops.num_slots = static_cast<int>(slot_first.size());
    for (int i = 0; i < n; ++i) {
      ops.grads.push_back(grads[i].tensor_data().data());
      ops.sizes.push_back(grads[i].NumElements());
      ops.rank0.push_back(grads[i].dims() == 0 ? 1 : 0);
    }
    const int dt = DTypeIndex(dtype);

    // Pass 0, only when an option needs it: norms and the non-finite check,
    // before anything is written (a skipped step writes nothing at all).
    std::vector<double> sum_sq(n, 0.0);
    if (options.NeedsStats()) {
      if constexpr (B == Backend::kCpu) {
        bool nonfinite = false;
        GradStatsCpu(ctx, ops, dt, static_cast<int>(sizeof(T)), &sum_sq, &nonfinite);
        if (nonfinite && options.skip_nonfinite) {
          skipped->scalar<bool>()() = true;
          return absl::OkStatus();
        }
      } else {
        return absl::UnimplementedError(
            "clip_norm, global_clip_norm and skip_nonfinite are not implemented on GPU yet; "
            "clip in TensorFlow before the call, or run the update on CPU");
      }
    }
    ops.xforms = MakeXforms(options, sum_sq);
    ops.transform = options.Transforms();

    if constexpr (B == Backend::kCpu) {
      TF_RETURN_IF_ERROR(vars.PrepareForWrite(&CpuCopy));
    } else {
#if defined(FUSEDOPT_WITH_CUDA)
      TF_RETURN_IF_ERROR(CheckGpuUsable());
      TF_RETURN_IF_ERROR(vars.PrepareForWrite(&GpuCopy));
#endif
    }
    for (int i = 0; i < n; ++i) {
      ops.vars.push_back(vars.data(var0 + i));
      std::array<void*, kMaxSlots> s{};
      for (int k = 0; k < ops.num_slots; ++k) s[k] = vars.data(slot_first[k] + i);
      ops.slots.push_back(s);
    }
    const bool decay = plan.coeffs.c[kDecay] != 0.0 || plan.rank0_coeffs.c[kDecay] != 0.0;
    if constexpr (std::is_same_v<Spec, LambSpec>) {
      return RunLamb<B, T>(ctx, ops, plan, decay, dt);
    } else {
      return RunElementwise<B, T>(ctx, ops, Spec::kAlgo, plan, decay, dt);
    }
  }

  Spec spec_;
  bool skip_nonfinite_ = false;
  bool grappler_form_ = false;
  bool constant_folding_ = false;
};

// ---- Sparse (IndexedSlices) updates ----------------------------------------------
//
// Note [sparse updates]: gradient rows arrive as (values [K, ...], indices [K])
// for a variable of rank >= 1. Before anything is written, every index is
// checked against the variable's row count (the first bad one is named), and
// duplicates are summed, deterministically, into a compact buffer of the
// unique rows in row order (each row's duplicates added in position order).
// Then:
//  * exact: every row of the variable is updated, rows without a gradient with
//    a zero gradient (so their slots decay as in Keras' densified update), in
//    one pass; no dense gradient is materialized (runs of gradient-less rows
//    read one shared zero buffer);
//  * lazy: only the unique rows are updated (TF Addons' LazyAdam semantics),
//    weight decay included; cost proportional to the rows touched.
// The gradient options act on the summed rows (norms equal the densified
// gradient's). LAMB has only the exact form: its trust ratio needs the whole
// variable.


template <typename T, typename Index>
absl::Status DedupRows(OpKernelContext* ctx, int i, const tensorflow::Tensor& values,
                       const tensorflow::Tensor& indices, int64_t rows, int64_t row_size,
                       const std::string& var_label, std::vector<int64_t>* unique_rows,
                       tensorflow::Tensor* compact) {
  using M = opmath_t<typename StorageOf<T>::type>;
  using S = typename StorageOf<T>::type;
  const auto idx = indices.flat<Index>();
  const int64_t k = idx.size();
  for (int64_t p = 0; p < k; ++p) {
    const int64_t r = static_cast<int64_t>(idx(p));
    if (r < 0 || r >= rows) {
      return Invalid(absl::StrCat("grad_indices[", i, "] has index ", r, " at position ", p,
                                  ", outside [0, ", rows, ") for ", var_label,
                                  "; nothing was updated"));
    }
  }
  std::vector<int64_t> order(k);
  for (int64_t p = 0; p < k; ++p) order[p] = p;
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return idx(a) < idx(b); });
  unique_rows->clear();
  for (int64_t q = 0; q < k; ++q) {
    const int64_t r = static_cast<int64_t>(idx(order[q]));
    if (unique_rows->empty() || unique_rows->back() != r) unique_rows->push_back(r);
  }
  const int64_t u = static_cast<int64_t>(unique_rows->size());
  TF_RETURN_IF_ERROR(ctx->allocate_temp(tensorflow::DataTypeToEnum<T>::value,
                                        tensorflow::TensorShape({u * row_size}), compact));
  const S* src = reinterpret_cast<const S*>(values.tensor_data().data());
  S* dst = reinterpret_cast<S*>(const_cast<char*>(compact->tensor_data().data()));
  std::vector<M> acc(row_size);
  int64_t q = 0;
  for (int64_t j = 0; j < u; ++j) {
    std::fill(acc.begin(), acc.end(), M(0));
    for (; q < k && static_cast<int64_t>(idx(order[q])) == (*unique_rows)[j]; ++q) {
      const S* row = src + order[q] * row_size;
      for (int64_t e = 0; e < row_size; ++e) acc[e] += Load(row[e]);
    }
    for (int64_t e = 0; e < row_size; ++e) dst[j * row_size + e] = Store<S>(acc[e]);
  }
  return absl::OkStatus();
}

// Splits the work of tensor i into items of at most kChunkElements elements.
void PlanItems(int i, bool exact, int64_t rows, int64_t row_size,
               const std::vector<int64_t>& unique_rows, const char* compact, const char* zeros,
               int64_t zero_elements, int elem_bytes, std::vector<Item>* items) {
  if (row_size == 0) return;
  const int64_t max_len = std::max<int64_t>(cpu::kChunkElements, row_size);
  auto emit = [&](int64_t offset, const char* grad, int64_t length, bool zero) {
    // Zero-gradient runs restart at the buffer's start; gradient runs advance.
    for (int64_t done = 0; done < length;) {
      const int64_t limit = zero ? zero_elements : max_len;
      const int64_t len = std::min(length - done, limit);
      items->push_back(Item{i, offset + done, zero ? zeros : grad + done * elem_bytes, len});
      done += len;
    }
  };
  const int64_t u = static_cast<int64_t>(unique_rows.size());
  int64_t j = 0, row = 0;
  while (j < u) {
    const int64_t start = unique_rows[j];
    if (exact && row < start) emit(row * row_size, nullptr, (start - row) * row_size, true);
    int64_t end = j + 1;
    while (end < u && unique_rows[end] == unique_rows[end - 1] + 1) ++end;
    emit(start * row_size, compact + j * row_size * elem_bytes, (end - j) * row_size, false);
    row = unique_rows[end - 1] + 1;
    j = end;
  }
  if (exact && row < rows) emit(row * row_size, nullptr, (rows - row) * row_size, true);
}

template <typename T, typename Spec, typename Index>
class SparseApplyOp : public OpKernel {
 public:
  explicit SparseApplyOp(OpKernelConstruction* c) : OpKernel(c), spec_(c) {
    OP_REQUIRES_OK(c, c->GetAttr("skip_nonfinite", &skip_nonfinite_));
    OP_REQUIRES_OK(c, c->GetAttr("grappler_form", &grappler_form_));
    OP_REQUIRES_OK(c, c->GetAttr("grappler_constant_folding", &constant_folding_));
    std::string mode;
    OP_REQUIRES_OK(c, c->GetAttr("mode", &mode));
    exact_ = mode == "exact";
    constexpr bool kIsLamb = std::is_same_v<Spec, LambSpec>;
    OP_REQUIRES(c, exact_ || !kIsLamb,
                Invalid("LAMB has no lazy sparse mode (its trust ratio needs the whole "
                        "variable); use mode='exact'"));
  }

  void Compute(OpKernelContext* ctx) override { OP_REQUIRES_OK(ctx, DoCompute(ctx)); }

 private:
  absl::Status DoCompute(OpKernelContext* ctx) {
    using S = typename StorageOf<T>::type;
    const tensorflow::DataType dtype = tensorflow::DataTypeToEnum<T>::value;
    OpInputList values, indices;
    TF_RETURN_IF_ERROR(ctx->input_list("grad_values", &values));
    TF_RETURN_IF_ERROR(ctx->input_list("grad_indices", &indices));
    const int n = values.size();

    PlanInput in;
    in.f64 = std::is_same_v<T, double>;
    in.grappler_form = grappler_form_;
    in.constant_folding = constant_folding_;
    GradOptions options;
    VariableSet vars(ctx);
    int var0 = 0;
    std::vector<int> slot_first;
    TF_RETURN_IF_ERROR(ReadCall<Spec>(ctx, spec_, skip_nonfinite_, n, &in, &options, &vars, &var0,
                                      &slot_first));
    Plan plan;
    // Sparse variables have rank >= 1: no rank-0 plan.
    TF_RETURN_IF_ERROR(MakeCallPlan(spec_, in, /*rank0_plan=*/false, &plan));
    plan.rsqrt_stride = 0;  // Keras' sparse updates are other ops: no rsqrt form
    tensorflow::Tensor* skipped = nullptr;
    TF_RETURN_IF_ERROR(ctx->allocate_output("skipped", tensorflow::TensorShape({}), &skipped));
    skipped->scalar<bool>()() = false;

    TF_RETURN_IF_ERROR(vars.CheckDistinctAndLock());
    std::vector<int64_t> rows(n), row_size(n);
    for (int i = 0; i < n; ++i) {
      TF_RETURN_IF_ERROR(vars.ValidateDtype(var0 + i, dtype));
      const tensorflow::TensorShape& shape = vars.tensor(var0 + i)->shape();
      if (shape.dims() < 1) {
        return Invalid(absl::StrCat(vars.label(var0 + i),
                                    " is a scalar; sparse updates need rank >= 1"));
      }
      const tensorflow::Tensor& iv = indices[i];
      if (iv.dims() != 1) {
        return Invalid(absl::StrCat("grad_indices[", i, "] must be a vector, got shape ",
                                    iv.shape().DebugString()));
      }
      tensorflow::TensorShape want = shape;
      want.set_dim(0, iv.dim_size(0));
      if (values[i].shape() != want) {
        return Invalid(absl::StrCat("grad_values[", i, "] has shape ",
                                    values[i].shape().DebugString(), " but ", vars.label(var0 + i),
                                    " of shape ", shape.DebugString(), " with ", iv.dim_size(0),
                                    " indices needs ", want.DebugString()));
      }
      for (int first : slot_first) {
        TF_RETURN_IF_ERROR(vars.ValidateDtype(first + i, dtype));
        TF_RETURN_IF_ERROR(vars.ValidateShape(first + i, shape, vars.label(var0 + i)));
      }
      rows[i] = shape.dim_size(0);
      row_size[i] = rows[i] == 0 ? 0 : shape.num_elements() / rows[i];
    }

    // Index validation and duplicate summing: still nothing written.
    std::vector<std::vector<int64_t>> unique(n);
    std::vector<tensorflow::Tensor> compact(n);
    Operands ops;
    ops.n = n;
    ops.num_slots = static_cast<int>(slot_first.size());
    int64_t max_row = 0;
    for (int i = 0; i < n; ++i) {
      TF_RETURN_IF_ERROR(DedupRows<T, Index>(ctx, i, values[i], indices[i], rows[i], row_size[i],
                                             vars.label(var0 + i), &unique[i], &compact[i]));
      ops.grads.push_back(compact[i].tensor_data().data());
      ops.sizes.push_back(compact[i].NumElements());
      max_row = std::max(max_row, row_size[i]);
    }
    const int dt = DTypeIndex(dtype);
    std::vector<double> sum_sq(n, 0.0);
    if (options.NeedsStats()) {
      bool nonfinite = false;
      GradStatsCpu(ctx, ops, dt, static_cast<int>(sizeof(S)), &sum_sq, &nonfinite);
      if (nonfinite && options.skip_nonfinite) {
        skipped->scalar<bool>()() = true;
        return absl::OkStatus();
      }
    }
    ops.xforms = MakeXforms(options, sum_sq);
    ops.transform = options.Transforms();
    TF_RETURN_IF_ERROR(vars.PrepareForWrite(&CpuCopy));

    // A shared zero gradient for exact mode's gradient-less rows.
    tensorflow::Tensor zeros;
    const int64_t zero_elements = std::max<int64_t>(cpu::kChunkElements, max_row);
    if (exact_) {
      TF_RETURN_IF_ERROR(ctx->allocate_temp(dtype, tensorflow::TensorShape({zero_elements}),
                                            &zeros));
      std::memset(const_cast<char*>(zeros.tensor_data().data()), 0, zeros.tensor_data().size());
    }
    std::vector<Item> items;
    for (int i = 0; i < n; ++i) {
      PlanItems(i, exact_, rows[i], row_size[i], unique[i], compact[i].tensor_data().data(),
                exact_ ? zeros.tensor_data().data() : nullptr, zero_elements,
                static_cast<int>(sizeof(S)), &items);
    }
    CpuTargets targets;
    targets.num_slots = ops.num_slots;
    targets.elem_bytes = static_cast<int>(sizeof(S));
    for (int i = 0; i < n; ++i) {
      targets.var.push_back(static_cast<char*>(vars.data(var0 + i)));
      std::array<char*, kMaxSlots> base{};
      for (int k = 0; k < ops.num_slots; ++k) {
        base[k] = static_cast<char*>(vars.data(slot_first[k] + i));
      }
      targets.slots.push_back(base);
    }
    const bool decay = plan.coeffs.c[kDecay] != 0.0 || plan.rank0_coeffs.c[kDecay] != 0.0;
    RunItemsCpu(ctx, items, targets, ops, plan, std::is_same_v<Spec, LambSpec>, Spec::kAlgo, decay,
                dt);
    return absl::OkStatus();
  }

  Spec spec_;
  bool skip_nonfinite_ = false;
  bool grappler_form_ = false;
  bool constant_folding_ = false;
  bool exact_ = true;
};

// ---- Registration --------------------------------------------------------------

#define FUSEDOPT_REGISTER_CPU(OP, SPEC, T)                                               \
  REGISTER_KERNEL_BUILDER(                                                              \
      Name("Fusedopt>" OP).Device(tensorflow::DEVICE_CPU).TypeConstraint<T>("T"),       \
      FusedApplyOp<Backend::kCpu, T, SPEC>);

#define FUSEDOPT_REGISTER_ALL_CPU(OP, SPEC)          \
  FUSEDOPT_REGISTER_CPU(OP, SPEC, Eigen::half)       \
  FUSEDOPT_REGISTER_CPU(OP, SPEC, Eigen::bfloat16)   \
  FUSEDOPT_REGISTER_CPU(OP, SPEC, float)             \
  FUSEDOPT_REGISTER_CPU(OP, SPEC, double)

FUSEDOPT_REGISTER_ALL_CPU("ApplySGD", SgdSpec)
FUSEDOPT_REGISTER_ALL_CPU("ApplyAdam", AdamSpec)
FUSEDOPT_REGISTER_ALL_CPU("ApplyNadam", NadamSpec)
FUSEDOPT_REGISTER_ALL_CPU("ApplyAdamax", AdamaxSpec)
FUSEDOPT_REGISTER_ALL_CPU("ApplyRmsprop", RmspropSpec)
FUSEDOPT_REGISTER_ALL_CPU("ApplyAdagrad", AdagradSpec)
FUSEDOPT_REGISTER_ALL_CPU("ApplyAdadelta", AdadeltaSpec)
FUSEDOPT_REGISTER_ALL_CPU("ApplyFtrl", FtrlSpec)
FUSEDOPT_REGISTER_ALL_CPU("ApplyLion", LionSpec)
FUSEDOPT_REGISTER_ALL_CPU("ApplyLamb", LambSpec)
FUSEDOPT_REGISTER_ALL_CPU("ApplyScheduleFreeAdamW", ScheduleFreeSpec)

#define FUSEDOPT_REGISTER_SPARSE_CPU(OP, SPEC, T, I)                                     \
  REGISTER_KERNEL_BUILDER(Name("Fusedopt>Sparse" OP)                                    \
                              .Device(tensorflow::DEVICE_CPU)                           \
                              .TypeConstraint<T>("T")                                   \
                              .TypeConstraint<I>("Tindices"),                           \
                          SparseApplyOp<T, SPEC, I>);
#define FUSEDOPT_REGISTER_SPARSE_ALL_CPU(OP, SPEC)                   \
  FUSEDOPT_REGISTER_SPARSE_CPU(OP, SPEC, Eigen::half, int32_t)       \
  FUSEDOPT_REGISTER_SPARSE_CPU(OP, SPEC, Eigen::bfloat16, int32_t)   \
  FUSEDOPT_REGISTER_SPARSE_CPU(OP, SPEC, float, int32_t)             \
  FUSEDOPT_REGISTER_SPARSE_CPU(OP, SPEC, double, int32_t)            \
  FUSEDOPT_REGISTER_SPARSE_CPU(OP, SPEC, Eigen::half, int64_t)       \
  FUSEDOPT_REGISTER_SPARSE_CPU(OP, SPEC, Eigen::bfloat16, int64_t)   \
  FUSEDOPT_REGISTER_SPARSE_CPU(OP, SPEC, float, int64_t)             \
  FUSEDOPT_REGISTER_SPARSE_CPU(OP, SPEC, double, int64_t)

FUSEDOPT_REGISTER_SPARSE_ALL_CPU("ApplySGD", SgdSpec)
FUSEDOPT_REGISTER_SPARSE_ALL_CPU("ApplyAdam", AdamSpec)
FUSEDOPT_REGISTER_SPARSE_ALL_CPU("ApplyNadam", NadamSpec)
FUSEDOPT_REGISTER_SPARSE_ALL_CPU("ApplyAdamax", AdamaxSpec)
FUSEDOPT_REGISTER_SPARSE_ALL_CPU("ApplyRmsprop", RmspropSpec)
FUSEDOPT_REGISTER_SPARSE_ALL_CPU("ApplyAdagrad", AdagradSpec)
FUSEDOPT_REGISTER_SPARSE_ALL_CPU("ApplyAdadelta", AdadeltaSpec)
FUSEDOPT_REGISTER_SPARSE_ALL_CPU("ApplyFtrl", FtrlSpec)
FUSEDOPT_REGISTER_SPARSE_ALL_CPU("ApplyLion", LionSpec)
FUSEDOPT_REGISTER_SPARSE_ALL_CPU("ApplyLamb", LambSpec)
FUSEDOPT_REGISTER_SPARSE_ALL_CPU("ApplyScheduleFreeAdamW", ScheduleFreeSpec)

#if defined(FUSEDOPT_WITH_CUDA)
// Note [GPU hyperparameters]: for now the scalar hyperparameters (and the
// step) are host-memory inputs, turned into coefficients on the host and
// passed to the launchers by value.
#define FUSEDOPT_REGISTER_GPU(OP, SPEC, HOST, T)                                          \
  REGISTER_KERNEL_BUILDER(                                                               \
      Name("Fusedopt>" OP).Device(tensorflow::DEVICE_GPU).TypeConstraint<T>("T") HOST,  \
      FusedApplyOp<Backend::kGpu, T, SPEC>);
#define FUSEDOPT_REGISTER_ALL_GPU(OP, SPEC, HOST)         \
  FUSEDOPT_REGISTER_GPU(OP, SPEC, HOST, Eigen::half)      \
  FUSEDOPT_REGISTER_GPU(OP, SPEC, HOST, Eigen::bfloat16)  \
  FUSEDOPT_REGISTER_GPU(OP, SPEC, HOST, float)            \
  FUSEDOPT_REGISTER_GPU(OP, SPEC, HOST, double)

#define H(x) .HostMemory(x)
#define OPTS H("grad_scale") H("clip_value") H("clip_norm") H("global_clip_norm") H("skipped")
FUSEDOPT_REGISTER_ALL_GPU("ApplySGD", SgdSpec, OPTS H("lr") H("momentum") H("weight_decay"))
FUSEDOPT_REGISTER_ALL_GPU("ApplyAdam", AdamSpec,
                          OPTS H("lr") H("beta_1") H("beta_2") H("epsilon") H("weight_decay") H("step"))
FUSEDOPT_REGISTER_ALL_GPU("ApplyNadam", NadamSpec,
                          OPTS H("lr") H("beta_1") H("beta_2") H("epsilon") H("weight_decay")
                              H("u_product") H("step"))
FUSEDOPT_REGISTER_ALL_GPU("ApplyAdamax", AdamaxSpec,
                          OPTS H("lr") H("beta_1") H("beta_2") H("epsilon") H("weight_decay") H("step"))
FUSEDOPT_REGISTER_ALL_GPU("ApplyRmsprop", RmspropSpec,
                          OPTS H("lr") H("rho") H("momentum") H("epsilon") H("weight_decay"))
FUSEDOPT_REGISTER_ALL_GPU("ApplyAdagrad", AdagradSpec, OPTS H("lr") H("epsilon") H("weight_decay"))
FUSEDOPT_REGISTER_ALL_GPU("ApplyAdadelta", AdadeltaSpec,
                          OPTS H("lr") H("rho") H("epsilon") H("weight_decay"))
FUSEDOPT_REGISTER_ALL_GPU("ApplyFtrl", FtrlSpec,
                          OPTS H("lr") H("learning_rate_power") H("l1") H("l2") H("l2_shrinkage")
                              H("beta") H("weight_decay"))
FUSEDOPT_REGISTER_ALL_GPU("ApplyLion", LionSpec,
                          OPTS H("lr") H("beta_1") H("beta_2") H("weight_decay"))
FUSEDOPT_REGISTER_ALL_GPU("ApplyLamb", LambSpec,
                          OPTS H("lr") H("beta_1") H("beta_2") H("epsilon") H("weight_decay") H("step"))
FUSEDOPT_REGISTER_ALL_GPU("ApplyScheduleFreeAdamW", ScheduleFreeSpec,
                          OPTS H("lr") H("beta_1") H("beta_2") H("epsilon") H("warmup_steps")
                              H("weight_decay") H("step"))
#undef OPTS
#undef H
#endif

}  // namespace
}  // namespace tf
}  // namespace fusedopt
