/* The TensorFlow-free C ABI of fusedopt: every fused rule, dense and sparse,
 * many tensors per call, on the CPU (the per-ISA loops of cc/cpu) or on a
 * CUDA device (the launchers of cc/cuda), with the gradient options (scale,
 * clipping, non-finite skip) and the gradient statistics pass.
 *
 * Coefficients and variants come from cc/core/plan.h, the code the
 * TensorFlow ops use, so a call here with the same inputs gives the ops' bits
 * on the CPU. The Python module fusedopt._native is a thin layer over this.
 *
 * Every entry point validates all of its inputs before writing anything and
 * returns FUSEDOPT_OK or an error code with a message in `err` (err_len
 * bytes, NUL-terminated; may be NULL). On an error nothing was written. No
 * C++ exception leaves an entry point, and every size product and byte
 * extent is computed with overflow checks (Note [checked sizes]).
 *
 * Concurrency (Note [concurrent calls]): CPU calls may come from many threads
 * at once. Calls whose written memory (variables, slots) overlaps memory that
 * another in-flight call reads or writes run one after the other, each
 * entirely (every element sees one serial order of the calls); calls on
 * disjoint memory run concurrently. CUDA calls are ordered by their streams
 * only: two calls on different streams that share memory race, as any two
 * kernels would, unless the caller orders the streams.
 *
 * See docs/native.md for the whole contract.
 */
#ifndef FUSEDOPT_CC_NATIVE_FUSEDOPT_NATIVE_H_
#define FUSEDOPT_CC_NATIVE_FUSEDOPT_NATIVE_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif
/* The ABI is exported from the _native module (dlopen it to call it from C). */
#pragma GCC visibility push(default)

enum {
  FUSEDOPT_OK = 0,
  FUSEDOPT_INVALID_ARGUMENT = 1,   /* bad input: nothing written */
  FUSEDOPT_UNAVAILABLE = 2,        /* CUDA not built in, or no usable device/driver */
  FUSEDOPT_DEVICE_ERROR = 3,       /* a CUDA call failed */
  FUSEDOPT_OUT_OF_MEMORY = 4,      /* host memory for scratch ran out: nothing written */
  FUSEDOPT_INTERNAL_ERROR = 5,     /* a bug in fusedopt (please report it): nothing written */
};

enum { FUSEDOPT_DEVICE_CPU = 0, FUSEDOPT_DEVICE_CUDA = 1 };

/* The ABI's version. fusedopt_call and fusedopt_tensors grow at their ends
 * when an ABI version adds fields, so a caller built against another
 * version's header passes structs of another size: it checks at load time
 * that fusedopt_native_abi_version() is the FUSEDOPT_NATIVE_ABI_VERSION it
 * was built with. Version 2 added low-precision state (state_format,
 * stochastic_rounding, rounding_seed; absmax, row_sizes). */
#define FUSEDOPT_NATIVE_ABI_VERSION 2
int fusedopt_native_abi_version(void);

/* Storage formats of a rule's slots (Note [low-precision state];
 * fusedopt_call.state_format): the variables' dtype; bfloat16 (stochastic
 * rounding); int8 codes (uint8) in blocks of at most 256 elements along the
 * rows of the variable's first dimension, one float32 absmax per block
 * (fusedopt_tensors.absmax, row_sizes). */
enum { FUSEDOPT_STATE_SAME = 0, FUSEDOPT_STATE_BFLOAT16 = 1, FUSEDOPT_STATE_INT8 = 2 };

/* dtype codes: 0 float16, 1 bfloat16, 2 float32, 3 float64. */

/* The rule table: names, hyperparameter (scalar) names in call order, slot
 * names in call order and whether each is optional, and whether the rule is
 * bias-corrected (takes step >= 1). Indices are 0..fusedopt_rule_count()-1. */
int fusedopt_rule_count(void);
const char* fusedopt_rule_name(int rule);
int fusedopt_rule_index(const char* name); /* -1 if unknown */
int fusedopt_rule_num_scalars(int rule);
const char* fusedopt_rule_scalar_name(int rule, int k);
int fusedopt_rule_num_slots(int rule);
const char* fusedopt_rule_slot_name(int rule, int k);
int fusedopt_rule_slot_optional(int rule, int k);
int fusedopt_rule_has_step(int rule);
/* Whether the rule's calls take an option of fusedopt_call ("nesterov",
 * "epsilon_outside_sqrt", "schedule_decay", "tf_training_op_form", and the
 * low-precision state's "state_format", "stochastic_rounding" and
 * "rounding_seed", which the rules with state take): 1 or 0,
 * -1 for an unknown rule or option. sparse: 0 for fusedopt_apply, 1 for
 * fusedopt_sparse_apply. A call that sets an option its rule does not take
 * (away from fusedopt_call_init's default) is refused. */
int fusedopt_rule_takes_option(int rule, const char* option, int sparse);

/* One call's settings. Start from fusedopt_call_init(), which sets every
 * option to its default (gradient options off: grad_scale 1, clip_* +inf;
 * schedule_decay 1), then set what you need. */
typedef struct fusedopt_call {
  int rule;
  int dtype;
  int device;              /* FUSEDOPT_DEVICE_CPU or FUSEDOPT_DEVICE_CUDA */
  void* stream;            /* CUDA: a cudaStream_t (NULL: the legacy default stream) */
  int num_threads;         /* CPU: worker threads (0: one per core) */
  const double* scalars;   /* [fusedopt_rule_num_scalars(rule)], exact Python values */
  int num_scalars;
  int64_t step;            /* bias-corrected rules: >= 1 */
  /* The rule options (fusedopt_rule_takes_option says which rules take each): */
  int nesterov;            /* Nesterov momentum */
  int epsilon_outside_sqrt;/* tf_keras' legacy x / (sqrt(y) + eps) form */
  double schedule_decay;   /* the momentum schedule's 0.96^(d t): 1 (Keras 3), tf_keras' 0.004 */
  int grappler_form;       /* Note [Grappler form]: Keras' tf.function numbers */
  int constant_folding;    /* Grappler's reciprocals (the rules that divide by a constant) */
  double grad_scale;       /* multiplies every gradient */
  double clip_value, clip_norm, global_clip_norm; /* > 0; +inf: off; at most one finite */
  int skip_nonfinite;
  int tf_training_op_form; /* a rule option: TF's ResourceApply* arithmetic, tf_keras' forms */
  /* ABI version 2. Low-precision state (the rules that take "state_format";
   * float32 or bfloat16 variables, Keras' forms; dense calls on the CPU and on
   * CUDA (kernels not yet run on a GPU: docs/gpu.md), sparse calls on the CPU
   * only: a sparse CUDA call is FUSEDOPT_UNAVAILABLE): */
  int state_format;        /* FUSEDOPT_STATE_*: how the slots are stored */
  int stochastic_rounding; /* bfloat16 variables stored with stochastic rounding */
  uint64_t rounding_seed;  /* seeds the rounding bits (bfloat16 stores): fold the step into it */
} fusedopt_call;

void fusedopt_call_init(fusedopt_call* call);

/* The tensors of a call. slots is row-major [n][3]: slot list k of tensor i
 * at slots[3 * i + k], in the rule's slot order; slot_given[k] says whether
 * list k was given (an optional list may be absent; its entries are then
 * ignored). Dense calls: grads[i] has sizes[i] elements, like vars[i].
 * rank0[i] (may be NULL): tensor i is a scalar variable (Note [Grappler form]).
 * Slots hold sizes[i] elements of the variables' dtype, or of the
 * call's state_format: bfloat16, or uint8 codes for int8.
 *
 * int8 state (ABI version 2; memset the struct to 0 first, so that older
 * callers' fields read as NULL): absmax is row-major [n][3] like slots, the
 * float32 absmax of slot list k of tensor i at absmax[3 * i + k], one per
 * quantization block (NULL for other formats). The blocks follow the rows of
 * a variable's first dimension: row_sizes[i] is the elements per row, the
 * product of the dimensions after the first for rank >= 2 (fusedopt.state.
 * layout), a divisor of sizes[i]; row_sizes NULL (or, for a rank-0 or rank-1
 * variable, row_sizes[i] = sizes[i]) makes a tensor one row. A row of r
 * elements has ceil(r / 256) blocks, so absmax[3 * i + k] holds
 * sizes[i] / r * ceil(r / 256) floats. fusedopt_sparse_apply's blocks follow
 * its rows (fusedopt_sparse.row_sizes; row_sizes, if given, must agree). */
typedef struct fusedopt_tensors {
  int n;
  int slot_given[3];
  void* const* vars;
  void* const* slots;
  const void* const* grads;
  const int64_t* sizes;
  const unsigned char* rank0;
  float* const* absmax;     /* ABI version 2: int8 state's absmax, [n][3] */
  const int64_t* row_sizes; /* ABI version 2: int8 state's rows (NULL: one row each) */
} fusedopt_tensors;

/* A dense update. *skipped is set to 1 when skip_nonfinite found an inf or
 * NaN gradient (nothing was written), else 0. */
int fusedopt_apply(const fusedopt_call* call, const fusedopt_tensors* t, int* skipped, char* err,
                   size_t err_len);

/* A sparse (IndexedSlices) update, CPU only for now: tensor i has rows[i]
 * rows of row_sizes[i] elements (sizes[i] = rows * row_size); grads[i] holds
 * counts[i] gradient rows for the rows indices[i][0..counts[i]) (int64; any
 * order, duplicates summed). exact: 1 updates every row (gradient-less rows
 * with a zero gradient), 0 only the rows with a gradient (lazy). With int8
 * state the quantization blocks follow these rows, so an update rewrites the
 * codes and absmax of the rows it updates only (Note [quantization blocks]);
 * a rank-1 variable's rows are single elements, whose blocks are not its
 * dense layout's (one row): give rank-1 variables with int8 state dense
 * updates (the TensorFlow ops and fusedopt._native refuse sparse ones). */
typedef struct fusedopt_sparse {
  const int64_t* const* indices;
  const int64_t* counts;
  const int64_t* rows;
  const int64_t* row_sizes;
  int exact;
} fusedopt_sparse;

int fusedopt_sparse_apply(const fusedopt_call* call, const fusedopt_tensors* t,
                          const fusedopt_sparse* sp, int* skipped, char* err, size_t err_len);

/* Adafactor (keras.optimizers.Adafactor; three passes per tensor, sums in
 * double in a fixed order), CPU only for now (CUDA: FUSEDOPT_UNAVAILABLE).
 * Tensor i has ranks[i] dimensions shapes[i][0..ranks[i]); grads[i] and v[i]
 * have its shape; for rank >= 2 (shape [..., R, C]) r[i] holds [..., R] and
 * c[i] [..., C] (the factored second moments), for lower ranks r[i] and c[i]
 * are ignored (may be NULL) and v[i] is the second moment. scalars: lr,
 * beta_2_decay, epsilon_1, epsilon_2, clip_threshold, weight_decay (Keras'
 * order); step >= 1; grappler_form: Keras' tf.function weight decay. */
int fusedopt_adafactor_apply(int dtype, int device, int num_threads, const double* scalars,
                             int64_t step, int grappler_form, int n, void* const* vars,
                             void* const* r, void* const* c, void* const* v,
                             const void* const* grads, const int64_t* const* shapes,
                             const int* ranks, char* err, size_t err_len);

/* Gradient statistics: per tensor the sum of squares (double accumulation,
 * deterministic) and whether any element is inf or NaN. Results on the host. */
int fusedopt_grad_stats(int dtype, int device, void* stream, int num_threads, int n,
                        const void* const* grads, const int64_t* sizes, double* sum_sq,
                        int* nonfinite, char* err, size_t err_len);

/* Build and platform facts. */
int fusedopt_native_cuda_built(void);
/* FUSEDOPT_OK when CUDA is built in and a device is usable; else the reason. */
int fusedopt_native_cuda_status(char* err, size_t err_len);
int fusedopt_native_cuda_runtime_version(void);
int fusedopt_native_cuda_driver_version(void);
const char* fusedopt_native_cuda_archs(void);
const char* fusedopt_native_version(void);
int fusedopt_native_cuda_device_count(void); /* 0 without CUDA or a device */
/* The CPU loops' ISA in use ("baseline", "avx2", "avx512"; FUSEDOPT_CPU_ISA
 * forces one), and those compiled in and supported here, comma-separated. */
const char* fusedopt_native_cpu_isa(void);
const char* fusedopt_native_cpu_isas(void);

#pragma GCC visibility pop
#ifdef __cplusplus
}  /* extern "C" */
#endif

#endif  /* FUSEDOPT_CC_NATIVE_FUSEDOPT_NATIVE_H_ */
