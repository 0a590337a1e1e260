// Op registrations: signatures, shape functions and docs of every fused op,
// generated from the rule registry (cc/rules/registry.h); the kernels are in
// fused_ops.cc (and adafactor_op.cc, xla_ops.cc).
#include "absl/strings/str_cat.h"
#include "cc/rules/registry.h"
#include "tensorflow/core/framework/common_shape_fns.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace fusedopt {
namespace tf {
namespace {

using tensorflow::shape_inference::InferenceContext;
using tensorflow::shape_inference::ShapeHandle;

// Hyperparameter inputs must be scalars; the rest is checked by the kernel
// against the variables' actual shapes.
absl::Status ScalarInput(InferenceContext* c, const char* name) {
  std::vector<ShapeHandle> shapes;
  TF_RETURN_IF_ERROR(c->input(name, &shapes));
  ShapeHandle unused;
  if (!c->WithRank(shapes[0], 0, &unused).ok()) {
    return absl::InvalidArgumentError(absl::StrCat("hyperparameter '", name,
                                                   "' must be a scalar, got shape ",
                                                   c->DebugString(shapes[0])));
  }
  return absl::OkStatus();
}

absl::Status ScalarInputs(InferenceContext* c, std::initializer_list<const char*> names) {
  for (const char* name : names) TF_RETURN_IF_ERROR(ScalarInput(c, name));
  return absl::OkStatus();
}

}  // namespace

REGISTER_OP("Fusedopt>BuildInfo")
    .Output("info: string")
    .SetShapeFn(tensorflow::shape_inference::ScalarShape)
    .Doc(R"doc(
Returns a JSON object describing how the fusedopt op library was built: the
TensorFlow version it was compiled against, its own version, whether CUDA
kernels are compiled in (with the CUDA version and architectures), the CPU SIMD
variants compiled in and the one selected for this CPU.
)doc");

constexpr char kOptionsDoc[] = R"doc(
Gradient options, fused into the same pass (Keras' order: unscale, clip,
then decay and update): every gradient is multiplied by grad_scale (1 / loss
scale); then at most one clipping applies: clip_value clips elements to
[-clip_value, clip_value]; clip_norm scales each variable's gradient to L2 norm
at most clip_norm; global_clip_norm scales all N gradients by
clip / max(global norm, clip) (NaN if the norm is not finite, as in Keras).
+inf disables a clipping. The norms take one extra read of the gradients, a
deterministic fixed-order reduction. With skip_nonfinite, a call in which any
gradient the update would use (after grad_scale and clipping) is inf or NaN,
or whose scale is not finite, writes nothing and returns skipped = true.

Every hyperparameter must be finite, and the ranges Keras' constructors
enforce hold (each rule checks its own, such as a momentum in [0, 1] or a
regularization strength >= 0); otherwise the op fails with InvalidArgument
naming the input, and nothing is written.

Every op of this family updates N variables in one call, in one pass over
memory (LAMB: two), computing in float32 for 16-bit variables and in the
variable's type otherwise, storing rounded to nearest even. Keras' decoupled
weight decay, var -= var * weight_decay * lr, is applied first, in the same
pass (weight_decay = 0 disables it).

Hyperparameters arrive as exact values (Tscalar float64 keeps a Python
float unrounded) and the op computes every coefficient the way Keras'
update_step does for the variables' dtype (float32 for 16-bit variables):
`ops.cast(beta, dtype)` rounds through float32, `1 - beta` is rounded once from
double, powers and bias corrections are computed in that dtype. With
grappler_form=true the weight decay is var - var * (weight_decay * lr), the form
Keras' graph takes after Grappler's arithmetic optimizer (MinimizeBroadcasts);
Keras' own ops in a tf.function compute that, eager Keras the unrewritten
(var * weight_decay) * lr; it also selects Grappler's x * rsqrt(y) for x / sqrt(y)
(the rules that divide by a square root). grappler_constant_folding=true:
divisions by constants become multiplications by their reciprocals (the rules
that divide by constants), as Grappler's constant folding does. Slots have their variable's shape and
dtype. All inputs are validated before anything is written: on bad input
(uninitialized or repeated variable, dtype or shape mismatch, list lengths,
non-scalar hyperparameter) the op raises InvalidArgument and no variable
changes.
)doc";

constexpr char kSparseDoc[] = R"doc(
Sparse twin of the dense op of the same name (Fusedopt>Apply...): grad_values[i]
holds rows grad_indices[i] of the gradient of vars[i] (rank >= 1). Same rule,
slots, hyperparameters, gradient options and validation as the dense op, plus:
every index must lie in [0, rows) (the first bad one is named; nothing is
written), and duplicate indices are summed, deterministically, before the
update. With mode='exact' every row is updated, rows without a gradient as if
their gradient were zero, which is the dense op's result on the densified
gradient, without materializing it. With mode='lazy' only the rows present are
updated (weight decay included), at a cost proportional to them (the semantics
of TF Addons' LazyAdam). LAMB supports only 'exact'. CPU only for now.
)doc";

constexpr char kStateDoc[] = R"doc(
Low-precision state (state_format; Note [low-precision state] in
cc/rules/state_format.h): 'same' keeps the slots in the variables' dtype.
'bfloat16' stores them as bfloat16, computed in float32 and rounded
stochastically (unbiased). 'int8' stores each slot as uint8 codes of the
variable's shape plus a float32 absmax per block (absmax: the blocks' absmax
variables, slot list by slot list, each of shape [rows * ceil(row_size / 256)]
where rows is the variable's first dimension and row_size the product of the
others, one row for rank 0 and 1): a signed code for momenta, an unsigned one
for second moments and accumulators, each a small float relative to the
block's absmax. Float32 and bfloat16 variables; Keras' forms only (no
tf_training_op_form, epsilon_outside_sqrt or Grappler forms). With
stochastic_rounding, bfloat16 variables are stored with stochastic rounding
too. rounding_seed seeds the rounding bits (a counter-based hash of the seed,
the tensor's position in the call and the element): the same seed gives the
same bits; callers fold the step into it. Ignored when nothing rounds
stochastically.
)doc";

namespace {

// Every rule's ops, from the registry (Note [rule registry]): for each rule
// Fusedopt>Apply<Op> and its sparse twin Fusedopt>SparseApply<Op>, with the
// frame above around the rule's slot lists, scalars, step and attributes:
//   vars: N * resource, <slots>, <gradients>, <scalars>, [step: int64],
//   <gradient options>
// An optional slot list is counted by its own attribute (0 or N). The doc is
// the rule's (its struct's kOpDoc in cc/rules/update_rules.h) and then
// kOptionsDoc; the sparse op's is kSparseDoc.
template <Rule R>
const char* OpDocOf() {
  return RuleStruct<R>::type::kOpDoc;
}

const char* OpDoc(Rule rule) {
  switch (rule) {
#define FUSEDOPT_RULE_DOC(ID, ...) \
  case Rule::ID:                   \
    return OpDocOf<Rule::ID>();
    FUSEDOPT_FOR_EACH_RULE(FUSEDOPT_RULE_DOC)
#undef FUSEDOPT_RULE_DOC
  }
  return "";
}

void RegisterFusedOp(const RuleInfo& info, bool sparse) {
  const std::string name =
      std::string(sparse ? "Fusedopt>SparseApply" : "Fusedopt>Apply") + info.op;
  tensorflow::register_op::OpDefBuilderWrapper op(name.c_str());
  op.Input("vars: N * resource");
  for (int k = 0; k < info.num_slots; ++k) {
    const SlotInfo& slot = info.slots[k];
    op.Input(absl::StrCat(slot.name, ": ", slot.optional ? slot.count_attr : "N", " * resource"));
  }
  if (sparse) {
    op.Input("grad_values: N * T").Input("grad_indices: N * Tindices");
  } else {
    op.Input("grads: N * T");
  }
  for (int k = 0; k < info.num_scalars; ++k) op.Input(absl::StrCat(info.scalars[k], ": Tscalar"));
  if (info.has_step) op.Input("step: int64");
  // Low-precision state (Note [low-precision state]): for int8, each slot
  // list's absmax variables (slot-major: Q = N * slot lists given), and
  // the rounding seed.
  const bool state = NumStateVariants(info.rule) > 0;
  if (state) op.Input("absmax: Q * resource").Input("rounding_seed: int64");
  for (int k = 0; k < info.num_slots; ++k) {
    if (info.slots[k].optional) op.Attr(absl::StrCat(info.slots[k].count_attr, ": int >= 0"));
  }
  if (info.attrs & kAttrNesterov) op.Attr("nesterov: bool = false");
  if (info.attrs & kAttrScheduleDecay) {
    op.Attr("schedule_decay: float = 1.0").Attr("schedule_decay_bits: int = 0");
  }
  if (info.attrs & kAttrEpsilonOutsideSqrt) op.Attr("epsilon_outside_sqrt: bool = false");
  if (info.attrs & kAttrTfPow) op.Attr("tf_pow: bool = false");
  if (info.attrs & (kAttrTfTrainingOpForm | kAttrTfPow)) {
    op.Attr("tf_training_op_form: bool = false");
  }
  if (info.attrs & kAttrTfNorms) op.Attr("tf_norms: bool = false");
  if (state) {
    op.Attr("Q: int >= 0 = 0")
        .Attr("state_format: {'same', 'bfloat16', 'int8'} = 'same'")
        .Attr("stochastic_rounding: bool = false");
  }
  op.Input("grad_scale: Tscalar")
      .Input("clip_value: Tscalar")
      .Input("clip_norm: Tscalar")
      .Input("global_clip_norm: Tscalar")
      .Output("skipped: bool")
      .Attr("N: int >= 1")
      .Attr("T: {half, bfloat16, float, double}")
      .Attr("Tscalar: {float, double}")
      .Attr("skip_nonfinite: bool = false")
      .Attr("grappler_form: bool = false")
      .Attr("grappler_constant_folding: bool = false");
  if (sparse) op.Attr("Tindices: {int32, int64}").Attr("mode: {'exact', 'lazy'} = 'exact'");
  // Hyperparameter inputs (and the step) must be scalars; the output is one.
  op.SetShapeFn([&info](InferenceContext* c) -> absl::Status {
    std::vector<const char*> names(info.scalars, info.scalars + info.num_scalars);
    if (info.has_step) names.push_back("step");
    if (NumStateVariants(info.rule) > 0) names.push_back("rounding_seed");
    for (const char* o : {"grad_scale", "clip_value", "clip_norm", "global_clip_norm"}) {
      names.push_back(o);
    }
    for (const char* n : names) TF_RETURN_IF_ERROR(ScalarInput(c, n));
    c->set_output(0, c->Scalar());
    return absl::OkStatus();
  });
  const char* state_doc = state ? kStateDoc : "";
  op.Doc(sparse ? std::string(kSparseDoc) + state_doc
                : std::string(OpDoc(info.rule)) + kOptionsDoc + state_doc);
  op();
}

[[maybe_unused]] const bool kFusedOpsRegistered = [] {
  for (const RuleInfo& info : kRuleInfos) {
    RegisterFusedOp(info, false);
    RegisterFusedOp(info, true);
  }
  return true;
}();

}  // namespace


REGISTER_OP("Fusedopt>StreamTriad")
    .Input("a: resource")
    .Input("b: float")
    .Input("s: float")
    .SetShapeFn([](InferenceContext* c) { return ScalarInputs(c, {"s"}); })
    .Doc(R"doc(
Memory-bandwidth probe for benchmarks: a = a * s + b in place over float32
(12 bytes per element: two reads, one in-place write, the access pattern of the
optimizer updates, which write only buffers they have just read), run on the
same thread pool and chunking as the fused ops.
)doc");

}  // namespace tf
}  // namespace fusedopt
