"""fusedopt-bench's table suites: fused kernels side by side with tf.raw_ops, Keras (with and
without XLA) and the memory-bandwidth roofline, in one process.

Method: every contender updates its own copy of the same variables with the
same gradients. Before timing, each contender takes one step from a known
state and is compared with the float64 reference (--check, on by default): a
wrong contender is reported as WRONG and not timed. Then, after warm-up, the
contenders run interleaved for --repeats rounds; each round is one
tf.function call running K steps in a graph loop (K grows as the problem
shrinks, so Python's per-call cost does not swamp small problems); the median
and the spread (min-max) of the per-step times are reported. GB/s uses the
rule's bytes per element; the roofline is an in-place triad probe
(a = a * s + b, 12 bytes/element) over as many bytes as the rule moves, on the
same thread pool, timed in the same rounds.

Keras contenders with XLA are built as Keras 3's `model.fit` builds them: the
step is compiled, and a separate uncompiled loop calls it K times (see
fusedopt.bench.runner.fit_style_loop), so each step is one XLA launch.
The fit suite times model.fit itself: each round trains every contender's
model for one epoch, and its check compares each loss curve with Keras'.
The ps suite (only when asked for: it starts server processes) times training
steps of a recommender under ParameterServerStrategy on a local cluster,
fusedopt.legacy against tf_keras' built-ins, each contender's first step
checked against the float64 reference; see fusedopt.bench.ps for its method.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict
from typing import Any, Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import ml_dtypes  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.progress import Progress  # noqa: E402
from rich.table import Table  # noqa: E402

import fusedopt.ops as fops  # noqa: E402
from fusedopt import _atomic  # noqa: E402
from fusedopt.bench import cases  # noqa: E402
from fusedopt.bench import shapes as model_shapes  # noqa: E402
from fusedopt.bench import timing  # noqa: E402
from fusedopt.bench.algorithms import ALGORITHMS, Algorithm  # noqa: E402
from fusedopt.bench.results import Row, machine_info  # noqa: E402

# A wide table even when stdout is a pipe or a file (CI logs, tests).
console = Console(width=None if os.isatty(1) else 150)
tf.get_logger().setLevel("ERROR")

# ---- contenders ----------------------------------------------------------------------

ONE = tf.constant(1)


def fit_style_loop(step: Callable[[], None], jit: bool) -> Callable[[tf.Tensor], None]:
    """A tf.function running `step` `steps` times, built the way Keras 3's
    `model.fit` builds its train function.

    Keras compiles one training step, `tf.function(jit_compile=...)`, and calls it
    from a separate, never-compiled tf.function that loops over
    `steps_per_execution` steps (keras/src/backend/tensorflow/trainer.py,
    `one_step_on_data` and `multi_step_on_iterator`). So under XLA every step is
    one launch of the compiled cluster, which looks up and snapshots every
    resource variable it touches. Compiling the whole loop as one cluster
    instead would pay that once per call and hide it: a structure Keras never
    runs. Without XLA the inner function is inlined and this is a plain loop.
    """
    compiled_step = tf.function(step, jit_compile=jit)

    @tf.function
    def run(steps):
        for _ in tf.range(steps):
            compiled_step()

    return run


def _np_dtype(name: str):
    return ml_dtypes.bfloat16 if name == "bfloat16" else np.dtype(name)


class Case:
    """One algorithm, dtype and list of shapes; builds every contender."""

    def __init__(self, algo: Algorithm, dtype: str, shapes, rng, xla: bool, inject_wrong: bool,
                 per_variable: bool = True):
        self.algo, self.dtype, self.shapes = algo, dtype, [tuple(s) for s in shapes]
        self.elements = int(sum(int(np.prod(s)) for s in self.shapes))
        self.init = [rng.standard_normal(s).astype(_np_dtype(dtype)) for s in self.shapes]
        self.grads_np = [rng.standard_normal(s).astype(_np_dtype(dtype)) for s in self.shapes]
        self.grads = [tf.constant(g) for g in self.grads_np]
        self.itemsize = np.dtype(_np_dtype(dtype)).itemsize
        self.bytes = algo.bytes_per_element * self.itemsize // 4 * self.elements
        # Steps per tf.function call: enough that one call moves >= ~2 GB, so
        # Python's per-call cost (~1.5 us per captured tensor) stays small.
        # A tensor argument, so the step count never retraces the functions.
        self.k = tf.constant(int(max(1, min(50, 2e9 // max(self.bytes, 1)))))
        self.contenders: dict[str, dict[str, Any]] = {}
        self._add_keras("fusedopt", algo.fused_cls, jit=False)
        if per_variable:  # (--quick leaves it out: tracing 200 calls costs seconds)
            self._add_per_variable()
        if algo.raw is not None and dtype in ("float32", "float64", "float16"):
            self._add_raw()
        self._add_keras("keras", algo.keras_cls, jit=False)
        if xla:
            # The fused op lowered into the compiled step (Note [XLA lowering]).
            self._add_keras("fusedopt+XLA", algo.fused_cls, jit=True)
            self._add_keras("keras+XLA", algo.keras_cls, jit=True)
        if inject_wrong:
            self._add_wrong()
        self._add_roofline()

    def _variables(self):
        return [keras.Variable(x, dtype=self.dtype) for x in self.init]

    def _slot_lists(self, opt, variables):
        return [[getattr(opt, attr)[opt._get_variable_index(v)] for v in variables]
                for attr in self.algo.slots]

    def _add_keras(self, name, cls, jit):
        variables = self._variables()
        opt = cls(**self.algo.config)
        opt.build(variables)
        grads, k = self.grads, self.k
        run = fit_style_loop(lambda: opt.apply(grads, variables), jit)
        self.contenders[name] = dict(run=lambda: run(k), step=lambda: run(ONE), vars=variables,
                                     slots=self._slot_lists(opt, variables), opt=opt)

    def _add_per_variable(self):
        variables = self._variables()
        opt = self.algo.fused_cls(**self.algo.config)
        opt.build(variables)
        grads, k = self.grads, self.k
        tvars = [v.value for v in variables]

        def step():
            # One optimizer step as _backend_update_step makes it, but one op
            # call per variable instead of one per group: the rule's per-step
            # state (a running product some rules' calls take as a scalar) is
            # computed before the calls and assigned after them
            # (_fused_prepare_step, _fused_finish_step), and the step counter
            # advances, so step t runs the rule's step t.
            with _atomic.step_scope():
                opt._fused_prepare_step()
                updates = [opt._fused_apply([v], [g], opt.learning_rate, 0.0)
                           for v, g in zip(tvars, grads)]
                done = [u for u in tf.nest.flatten(updates)
                        if isinstance(u, (tf.Tensor, tf.Operation))]
                opt._fused_finish_step(done)
                with tf.control_dependencies(done):
                    opt.iterations.assign_add(1)

        @tf.function
        def run(steps):
            for _ in tf.range(steps):
                step()

        self.contenders["fusedopt per-variable"] = dict(
            run=lambda: run(k), step=lambda: run(ONE), vars=variables,
            slots=self._slot_lists(opt, variables), opt=opt)

    def _add_raw(self):
        variables = self._variables()
        holder = self.algo.keras_cls(**self.algo.config)  # creates Keras-initialized slots
        holder.build(variables)
        slots = self._slot_lists(holder, variables)
        grads, k, raw = self.grads, self.k, self.algo.raw
        # (The float32 learning rate of the Keras contenders and the check.)
        lr = float(np.float32(self.algo.config["learning_rate"]))
        dt = tf.as_dtype(self.dtype)

        @tf.function
        def run(steps):
            for _ in tf.range(steps):
                for i, (v, g) in enumerate(zip(variables, grads)):
                    raw(v.value, [s[i].value for s in slots], g, tf.constant(lr, dt),
                        tf.constant(1, tf.int64))

        self.contenders["tf.raw_ops loop"] = dict(run=lambda: run(k), step=lambda: run(ONE),
                                                  vars=variables, slots=slots, opt=holder)

    def _add_wrong(self):
        """A deliberately wrong contender (tests inject it to prove --check works)."""
        variables = self._variables()
        opt = self.algo.fused_cls(**self.algo.config)
        opt.build(variables)
        grads, k = [g * 1.5 for g in self.grads], self.k

        @tf.function
        def run(steps):
            for _ in tf.range(steps):
                opt.apply(grads, variables)

        self.contenders["injected-wrong"] = dict(run=lambda: run(k), step=lambda: run(ONE),
                                                 vars=variables,
                                                 slots=self._slot_lists(opt, variables), opt=opt)

    def _add_roofline(self):
        n = max(1, self.bytes // 12)
        a = tf.Variable(np.ones(n, np.float32))
        b = tf.constant(np.ones(n, np.float32))
        k = self.k

        @tf.function
        def run(steps):
            for _ in tf.range(steps):
                fops.stream_triad(a, b, 0.5)

        self.contenders["roofline"] = dict(run=lambda: run(k), step=None)

    # -- check -------------------------------------------------------------------

    def check(self, name: str) -> str:
        c = self.contenders[name]
        if c.get("step") is None:
            return "n/a"
        before_vars = [v.numpy().astype(np.float64) for v in c["vars"]]
        before_slots = [[s.numpy().astype(np.float64) for s in lst] for lst in c["slots"]]
        c["step"]()
        tol = {"float64": 1e-9, "float32": 1e-5, "float16": 2e-3, "bfloat16": 2e-2}[self.dtype]
        lr = float(np.float32(self.algo.config["learning_rate"]))
        worst = 0.0
        bad = total = 0
        for i, g in enumerate(self.grads_np):
            slots = {name: before_slots[k][i] for k, name in enumerate(self.algo.slot_names)}
            want_var, want_slots = self.algo.reference(before_vars[i], g.astype(np.float64), slots,
                                                       lr, 1)
            pairs = [(c["vars"][i], want_var)] + [
                (c["slots"][k][i], want_slots[name])
                for k, name in enumerate(self.algo.slot_names)]
            for got_v, want in pairs:
                got = got_v.numpy().astype(np.float64)
                scale = max(1.0, float(np.max(np.abs(want)))) if want.size else 1.0
                err = np.abs(got - want) > tol * (np.abs(want) + scale)
                bad += int(err.sum())
                total += want.size
                if want.size:
                    worst = max(worst, float(np.max(np.abs(got - want) / (np.abs(want) + scale))))
        # A rule's sign() can flip on exact-tie elements at float32 rounding: allow a
        # vanishing fraction of mismatches, never a systematic error.
        if bad > max(0, total * 1e-5):
            return f"WRONG: {bad} of {total} values off (max rel err {worst:.1e})"
        return "ok"


class SparseCase:
    """The sparse suite's rule (fusedopt.bench.cases.SPARSE_RULE) on one
    embedding table with an IndexedSlices gradient of `k` rows (with
    duplicates): fusedopt exact and lazy, Keras' built-in, roofline."""

    def __init__(self, rows: int, dim: int, k: int, rng, xla: bool, inject_wrong: bool):
        self.algo = algo = ALGORITHMS[cases.SPARSE_RULE]
        self.dtype, self.shapes = "float32", [(rows, dim)]
        self.elements = rows * dim
        self.init = rng.standard_normal((rows, dim)).astype(np.float32)
        idx = rng.integers(0, rows, size=k)
        idx[: k // 8] = idx[k // 8: k // 4]  # duplicates
        self.idx = idx.astype(np.int64)
        self.vals = rng.standard_normal((k, dim)).astype(np.float32)
        self.grad = tf.IndexedSlices(tf.constant(self.vals), tf.constant(self.idx),
                                     tf.constant([rows, dim], tf.int64))
        # Exact mode and the built-in touch the whole table.
        self.bytes = algo.bytes_per_element * self.elements
        self.lazy_bytes = algo.bytes_per_element * len(np.unique(self.idx)) * dim
        # Non-zero starting slots, the same for every contender, so the check
        # tells the exact and lazy semantics apart (from zero moments, rows
        # without a gradient would not move in either).
        positive = cases.positive_slots(algo.name)
        self.slots0 = {
            name: ((0.1 + np.abs(rng.standard_normal((rows, dim)))) if name in positive
                   else 0.1 * rng.standard_normal((rows, dim))).astype(np.float32)
            for name in algo.slot_names}
        self.k = tf.constant(int(max(1, min(50, 2e9 // self.bytes))))
        self.contenders: dict[str, dict[str, Any]] = {}
        fused, builtin = algo.fused_cls, algo.keras_cls
        for name, cls, cfg, jit in [
            ("fusedopt exact", fused, dict(sparse_mode="exact"), False),
            ("fusedopt lazy", fused, dict(sparse_mode="lazy"), False),
            ("keras", builtin, {}, False),
        ] + ([("keras+XLA", builtin, {}, True)] if xla else []) + (
                [("injected-wrong", fused, dict(sparse_mode="lazy"), False)]
                if inject_wrong else []):
            self._add(name, cls, cfg, jit)
        n = max(1, self.bytes // 12)
        a, b = tf.Variable(np.ones(n, np.float32)), tf.constant(np.ones(n, np.float32))

        @tf.function
        def triad(steps):
            for _ in tf.range(steps):
                fops.stream_triad(a, b, 0.5)

        self.contenders["roofline"] = dict(run=lambda: triad(self.k), step=None)

    def _add(self, name, cls, cfg, jit):
        var = keras.Variable(self.init)
        opt = cls(**self.algo.config, **cfg)
        opt.build([var])
        for slot, attr in self.algo.slot_attrs.items():
            getattr(opt, attr)[0].assign(self.slots0[slot])
        grad = self.grad
        if name == "injected-wrong":  # the lazy op applied to the exact mode's question
            name_check = "exact"
        else:
            name_check = {"fusedopt exact": "exact", "fusedopt lazy": "lazy"}.get(name, "keras")
        run = fit_style_loop(lambda: opt.apply([grad], [var]), jit)
        self.contenders[name] = dict(run=lambda: run(self.k), step=lambda: run(ONE), var=var,
                                     opt=opt, semantics=name_check)

    def check(self, name: str) -> str:
        c = self.contenders[name]
        if c.get("step") is None:
            return "n/a"
        from fusedopt import reference as ref

        algo = self.algo
        var0 = c["var"].numpy().astype(np.float64)
        slots0 = {slot: getattr(c["opt"], attr)[0].numpy().astype(np.float64)
                  for slot, attr in algo.slot_attrs.items()}
        c["step"]()
        rows = np.unique(self.idx)
        summed = np.zeros((len(rows), self.vals.shape[1]))
        sq = np.zeros_like(summed)
        pos = np.searchsorted(rows, self.idx)
        np.add.at(summed, pos, self.vals.astype(np.float64))
        np.add.at(sq, pos, self.vals.astype(np.float64) ** 2)
        f = lambda x: float(np.float32(x))  # noqa: E731
        hp = dict(lr=f(algo.config["learning_rate"]), **{k: f(v) for k, v in algo.hparams.items()})
        want = var0.copy()
        if c["semantics"] == "lazy":
            want[rows], _ = ref.apply_rule(algo.name, var0[rows], summed,
                                           {k: v[rows] for k, v in slots0.items()}, step=1, **hp)
        else:
            dense = np.zeros_like(var0)
            dense[rows] = summed
            if c["semantics"] == "exact":
                want, _ = ref.apply_rule(algo.name, var0, dense, slots0, step=1, **hp)
            else:
                # Keras' built-in on IndexedSlices (e.g. squaring the slices
                # before their duplicates are summed).
                dense_sq = np.zeros_like(var0)
                dense_sq[rows] = sq
                want, _ = ref.apply_keras_indexed_slices(algo.name, var0, dense, dense_sq, slots0,
                                                         step=1, **hp)
        got = c["var"].numpy().astype(np.float64)
        bad = int(np.sum(np.abs(got - want) > 1e-5 * (np.abs(want) + 1.0)))
        return "ok" if bad == 0 else f"WRONG: {bad} of {got.size} values off"


def run_sparse_case(label: str, case: SparseCase, args, rows_out: list[Row]) -> None:
    status = {n: (case.check(n) if args.check else "skipped") for n in case.contenders}
    timed = [n for n in case.contenders if not status[n].startswith("WRONG")]
    times = time_contenders(case, timed, args.repeats, args.warmup)
    med = timing.medians(times)
    for name in case.contenders:
        row = Row(suite="sparse", case=label, algorithm=case.algo.name, dtype="float32", tensors=1,
                  elements=case.elements, contender=name, check=status[name],
                  extra=dict(gradient_rows=len(case.idx), unique_rows=int(len(np.unique(case.idx)))))
        if name in med:
            row.ms, row.ms_min, row.ms_max = med[name], min(times[name]), max(times[name])
            moved = case.lazy_bytes if name == "fusedopt lazy" else case.bytes
            row.gb_per_s = moved / (row.ms * 1e-3) / 1e9
            if "roofline" in med and name != "roofline":
                roof_ms = med["roofline"] * moved / case.bytes
                row.pct_roofline = roof_ms / row.ms * 100
            if "keras" in med and name != "roofline":
                row.speedup_vs_keras = med["keras"] / row.ms
        rows_out.append(row)


def time_contenders(case, names: list[str], repeats: int, warmup: int) -> dict[str, list]:
    """The contenders' rounds (fusedopt.bench.timing), in ms per step (a
    call runs case.k steps)."""
    times = timing.rounds({n: case.contenders[n]["run"] for n in names}, repeats, warmup,
                          per=int(case.k))
    return {n: [t * 1e3 for t in ts] for n, ts in times.items()}


def run_case(suite: str, label: str, case: Case, args, rows: list[Row]) -> None:
    status = {}
    for name in case.contenders:
        status[name] = case.check(name) if args.check else "skipped"
    timed = [n for n in case.contenders if not status[n].startswith("WRONG")]
    times = time_contenders(case, timed, args.repeats, args.warmup)
    med = timing.medians(times)
    roof_ms = med["roofline"] * (case.bytes / 12) / max(1, case.bytes // 12) if "roofline" in med else None
    for name in case.contenders:
        row = Row(suite=suite, case=label, algorithm=case.algo.name, dtype=case.dtype,
                  tensors=len(case.shapes), elements=case.elements, contender=name,
                  check=status[name])
        if name in med:
            row.ms, row.ms_min, row.ms_max = med[name], min(times[name]), max(times[name])
            row.gb_per_s = case.bytes / (row.ms * 1e-3) / 1e9
            if roof_ms:
                row.pct_roofline = roof_ms / row.ms * 100
            if "tf.raw_ops loop" in med and name != "roofline":
                row.speedup_vs_raw = med["tf.raw_ops loop"] / row.ms
            if "keras" in med and name != "roofline":
                row.speedup_vs_keras = med["keras"] / row.ms
        rows.append(row)


class ShapesLayer(keras.layers.Layer):
    """Trainable weights of given shapes with a dummy forward pass: the output
    is sum(x) times the sum of every weight's mean, so every weight gets a
    dense gradient while the forward and backward passes cost one read of
    the weights and one gradient fill. A model.fit step is then mostly the
    optimizer's."""

    def __init__(self, shapes, **kwargs):
        super().__init__(**kwargs)
        self.shapes = [tuple(s) for s in shapes]

    def build(self, input_shape):
        init = keras.initializers.RandomNormal(stddev=0.05, seed=0)
        self.ws = [self.add_weight(shape=s, initializer=init, name=f"w{i}")
                   for i, s in enumerate(self.shapes)]

    def call(self, x):
        total = tf.add_n([tf.reduce_mean(w) for w in self.ws])
        return tf.reduce_sum(x, axis=1, keepdims=True) * total


class _EpochTimer(keras.callbacks.Callback):
    """Wall time of each epoch, from on_epoch_begin to on_epoch_end: the
    training steps without fit()'s per-call setup."""

    def __init__(self):
        super().__init__()
        self.times: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self._t0 = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.times.append(time.perf_counter() - self._t0)


def _fit_cases(quick: bool, models: list[str]):
    """(label, make_model, x, y, batch, loss) for each model of the fit suite
    named in `models` ("mlp", "resnet50")."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x, y = (x / 16.0).astype(np.float32), y.astype(np.int64)

    def mlp():
        return keras.Sequential([keras.Input((64,)), keras.layers.Dense(512, activation="relu"),
                                 keras.layers.Dense(512, activation="relu"),
                                 keras.layers.Dense(10)])

    if "mlp" in models:
        yield ("MLP 64-512-512-10 on digits, batch 64", mlp, x, y, 64,
               keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    if "resnet50" not in models:
        return
    shapes = model_shapes.resnet50()
    rng = np.random.default_rng(0)
    n = 128 if quick else 512
    xr = rng.standard_normal((n, 8)).astype(np.float32)
    # The target needs the weights' means to sum to 0.5 (they start near 0), so
    # the loss curve follows every step of the optimizer and a wrong update shows.
    yr = 0.5 * xr.sum(axis=1, keepdims=True)
    yield (f"ResNet-50 variables ({len(shapes)}), dummy forward, batch 32",
           lambda: keras.Sequential([keras.Input((8,)), ShapesLayer(shapes)]), xr, yr, 32,
           keras.losses.MeanSquaredError())


def _max_rel_diff(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-30))) if a.size else 0.0


# XLA's own arithmetic (fused element-wise kernels, its reductions) moves
# Keras' loss curve by about this much; far above it is a wrong update.
_XLA_CHECK_RTOL = 1e-2


def _fit_checks(losses: dict[str, list[float]]) -> dict[str, str]:
    """Each contender's loss curve against Keras' (run_fit's docstring)."""
    ref = losses["keras"]
    xla_diff = _max_rel_diff(losses["keras+XLA"], ref) if "keras+XLA" in losses else None
    tol = max(10 * xla_diff, 1e-7) if xla_diff is not None else 1e-7
    checks = {}
    for name, curve in losses.items():
        diff = _max_rel_diff(curve, ref)
        if name == "keras":
            checks[name] = "ok (reference)"
        elif name in ("keras+XLA", "fusedopt+XLA"):
            checks[name] = (f"ok (max rel diff {diff:.1e}: XLA's arithmetic)"
                            if diff <= _XLA_CHECK_RTOL else
                            f"WRONG: loss curve differs from Keras' by {diff:.1e} (rel)")
        elif np.array_equal(np.asarray(curve), np.asarray(ref)):
            checks[name] = "ok (identical to Keras)"
        elif diff <= tol:
            checks[name] = f"ok (max rel diff {diff:.1e} <= {tol:.1e}, from Keras vs XLA)"
        else:
            checks[name] = (f"WRONG: loss curve differs from Keras' by {diff:.1e} (rel), "
                            f"tolerance {tol:.1e}")
    return checks


def run_fit(args, rows: list[Row]) -> None:
    """model.fit step time of the fit suite's rule (fusedopt.bench.cases.FIT_RULE):
    fusedopt and Keras, each without and with
    jit_compile, one model each, trained one epoch at a time in --repeats
    interleaved rounds after --warmup epochs. The check compares each loss
    curve with Keras' (after the run): fusedopt's must be identical (the fused
    optimizer gives Keras' numbers bit for bit), or at most within the tolerance
    measured from Keras vs Keras + XLA (10x its largest relative difference,
    at least 1e-7), which the check states; the two XLA contenders (whose
    forward and backward passes XLA compiles) within _XLA_CHECK_RTOL of Keras';
    a wrong update is far off."""
    fused, builtin = ALGORITHMS[cases.FIT_RULE].fused_cls, ALGORITHMS[cases.FIT_RULE].keras_cls
    contenders = [("fusedopt", lambda: fused(1e-3), False), ("keras", lambda: builtin(1e-3), False)]
    if args.xla:
        contenders.append(("fusedopt+XLA", lambda: fused(1e-3), True))
        contenders.append(("keras+XLA", lambda: builtin(1e-3), True))
    if args.inject_wrong:  # twice the learning rate: the check must catch it
        contenders.append(("injected-wrong", lambda: fused(2e-3), False))
    for label, make_model, x, y, batch, loss in _fit_cases(args.quick, args.fit_models):
        models, timers, curves = {}, {}, {}
        for name, make_optimizer, jit in contenders:
            keras.utils.set_random_seed(0)
            model = make_model()
            model.compile(optimizer=make_optimizer(), jit_compile=jit, loss=loss)
            models[name], timers[name], curves[name] = model, _EpochTimer(), []

        def epoch(name):
            """One epoch (one fit() call) of a contender; returns its time."""
            hist = models[name].fit(x, y, batch_size=batch, epochs=1, verbose=0, shuffle=False,
                                    callbacks=[timers[name]])
            curves[name] += hist.history["loss"]
            return timers[name].times[-1]

        # The warm-up epochs (each its own fit() call) trace the train function
        # and settle what a model's first fit() calls set up; they are not timed
        # and their losses are not part of the curve.
        times = timing.rounds({name: (lambda name=name: epoch(name)) for name in models},
                              args.fit_repeats, args.fit_warmup, clock=timing.reported)
        losses = {name: curve[args.fit_warmup:] for name, curve in curves.items()}
        steps = int(np.ceil(len(x) / batch))
        ms = {k: timing.median(t) / steps * 1e3 for k, t in times.items()}
        weights = models["keras"].trainable_variables
        elements = int(sum(int(np.prod(v.shape)) for v in weights))
        checks = _fit_checks(losses)
        for name in models:
            same = not checks[name].startswith("WRONG")
            rows.append(Row(suite="fit", case=label, algorithm=cases.FIT_RULE, dtype="float32",
                            tensors=len(weights), elements=elements, contender=name,
                            check=checks[name],
                            ms=ms[name] if same else None,
                            ms_min=min(times[name]) / steps * 1e3 if same else None,
                            ms_max=max(times[name]) / steps * 1e3 if same else None,
                            speedup_vs_keras=ms["keras"] / ms[name] if same else None,
                            extra=dict(losses=[float(v) for v in losses[name]])))
        del models


def run_ps(args, rows: list[Row], progress: Callable[[str], None]) -> None:
    """The ps suite (fusedopt.bench.ps): a local cluster, a chief process;
    its results as rows. A step row's speedup_vs_keras is tf_keras' built-in
    step time (same algorithm) over the contender's; an 'update alone' row's
    is the built-in's update alone over the contender's."""
    from fusedopt.bench import ps

    config = ps.PSConfig(rows=args.ps_table[0], dim=args.ps_table[1], batch=args.ps_batch[0],
                         ids=args.ps_batch[1], steps=args.ps_steps, repeats=args.ps_repeats,
                         warmup=args.ps_warmup, workers=args.ps_workers, check=args.check,
                         inject_wrong=args.inject_wrong)
    result = ps.run_cluster_benchmark(config, progress=progress)
    med = {(r["algorithm"], r["name"]): timing.median(r["seconds_per_step"]) * 1e3
           for r in result["results"] if r["seconds_per_step"]}
    for r in result["results"]:
        row = Row(suite="ps", case=result["label"], algorithm=r["algorithm"], dtype="float32",
                  tensors=r["tensors"], elements=r["elements"], contender=r["name"],
                  check=r["check"],
                  extra=dict(kind=r["kind"], semantics=r["semantics"], workers=config.workers,
                             ps=config.ps, steps_per_round=config.steps,
                             cluster=result["cluster"], ms_per_round=None))
        times = r["seconds_per_step"]
        if times:
            row.ms = med[(r["algorithm"], r["name"])]
            row.ms_min, row.ms_max = min(times) * 1e3, max(times) * 1e3
            row.extra["steps_per_s"] = 1e3 / row.ms
            row.extra["ms_per_round"] = [t * 1e3 for t in times]
            if r["kind"] == "step":
                builtin = med.get((r["algorithm"], ps.BUILTIN))
            elif r["name"].startswith("split: update alone"):
                builtin = med.get((r["algorithm"], f"split: update alone on ps:0, {ps.BUILTIN}"))
            else:
                builtin = None
            if builtin:
                row.speedup_vs_keras = builtin / row.ms
        rows.append(row)


def print_ps_table(rows: list[Row]) -> None:
    table = Table(title="suite: ps (ParameterServerStrategy, local cluster)", show_lines=False)
    for col in ["case", "algorithm", "contender", "check", "steps/s", "ms/step", "min-max",
                "vs tf_keras"]:
        table.add_column(col, justify="left" if col in ("case", "algorithm", "contender",
                                                         "check") else "right")
    last = None
    for r in rows:
        if r.suite != "ps":
            continue
        case = r.case if r.case != last else ""
        last = r.case
        f = lambda v, fmt: "-" if v is None else format(v, fmt)  # noqa: E731
        table.add_row(case, r.algorithm, r.contender, r.check,
                      f(r.extra.get("steps_per_s"), ".1f"), f(r.ms, ".2f"),
                      "-" if r.ms_min is None else f"{r.ms_min:.2f}-{r.ms_max:.2f}",
                      f(r.speedup_vs_keras, ".2f"))
    console.print(table)


def print_table(rows: list[Row], suite: str) -> None:
    table = Table(title=f"suite: {suite}", show_lines=False)
    for col in ["case", "contender", "check", "ms/step", "min-max", "GB/s", "% roof", "vs raw",
                "vs keras"]:
        table.add_column(col, justify="left" if col in ("case", "contender", "check") else "right")
    last = None
    for r in rows:
        if r.suite != suite:
            continue
        case = f"{r.case} {r.algorithm} {r.dtype}" if r.case != last else ""
        last = r.case
        f = lambda v, fmt: "-" if v is None else format(v, fmt)  # noqa: E731
        table.add_row(case, r.contender, r.check, f(r.ms, ".3f"),
                      "-" if r.ms_min is None else f"{r.ms_min:.3f}-{r.ms_max:.3f}",
                      f(r.gb_per_s, ".1f"), f(r.pct_roofline, ".0f"),
                      f(r.speedup_vs_raw, ".2f"), f(r.speedup_vs_keras, ".2f"))
    console.print(table)


def plot(rows: list[Row], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    styles = {"sizes": dict(marker="o", linestyle="-"), "many": dict(marker="s", linestyle="--")}
    for suite, style in styles.items():
        for algo in sorted({r.algorithm for r in rows if r.suite == suite}):
            pts_rows = [r for r in rows if r.suite == suite and r.algorithm == algo
                        and r.dtype == "float32" and r.contender == "fusedopt" and r.ms is not None]
            if not pts_rows:
                continue
            what = "1 variable" if suite == "sizes" else "many variables"
            for key, label, color in [("speedup_vs_raw", "vs tf.raw_ops", "C0"),
                                      ("speedup_vs_keras", "vs Keras", "C1")]:
                pts = sorted((r.elements, getattr(r, key)) for r in pts_rows if getattr(r, key))
                if pts:
                    ax1.plot(*zip(*pts), color=color, label=f"{algo} {label} ({what})", **style)
            pts = sorted((r.elements, r.pct_roofline) for r in pts_rows if r.pct_roofline)
            if pts:
                ax2.plot(*zip(*pts), color="C2", label=f"{algo} ({what})", **style)
    ax1.set_xscale("log")
    ax1.set_xlabel("elements updated per step (float32)")
    ax1.set_ylabel("fusedopt speedup (x)")
    ax1.axhline(1.0, color="grey", lw=0.8)
    ax1.legend(fontsize=8)
    ax2.set_xscale("log")
    ax2.set_xlabel("elements updated per step (float32)")
    ax2.set_ylabel("fusedopt, % of bandwidth roofline")
    ax2.axhline(100.0, color="grey", lw=0.8)
    ax2.legend(fontsize=8)
    fig.suptitle("fusedopt-bench (sizes and many suites)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    # Every contender on the CPU: the roofline probe is a CPU kernel, and GPU
    # columns are not implemented yet (see the README's status).
    with tf.device("/CPU:0"):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    rng = np.random.default_rng(0)
    info = machine_info()
    console.print(f"fusedopt-bench: {info['cpu']}, {info['cores']} cores, {info['memory_gib']} GiB; "
                  f"TensorFlow {info['tensorflow']}; fusedopt {info['fusedopt']['fusedopt_version']} "
                  f"(CPU kernels {info['fusedopt']['cpu_simd_selected']}); "
                  f"GPUs: {', '.join(info['gpus']) or 'none visible'} (CPU columns only)")
    plans: list[tuple[str, str, Callable[[], list]]] = []
    for suite in args.suite:
        if suite == "sizes":
            for n in args.sizes:
                plans.append((suite, f"1 x {n:,}", lambda n=n: [(n,)]))
        elif suite == "many":
            for count, size in args.many:
                plans.append((suite, f"{count} x {size:,}", lambda c=count, s=size: [(s,)] * c))
        elif suite == "models":
            plans += [(suite, *model_shapes.MODELS[m]) for m in args.models]
    sparse_cases = []
    if "sparse" in args.suite:
        rows_, dim, k = (200_000, 64, 4096) if args.quick else (1_000_000, 64, 4096)
        sparse_cases.append((f"{rows_:,} x {dim} table, {k} rows", rows_, dim, k))
    rows: list[Row] = []
    ps_failed = False
    todo = [(s, label, shapes, a, d) for s, label, shapes in plans for a in args.algorithms
            for d in args.dtypes]
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("benchmarking",
                                 total=len(todo) + len(sparse_cases) + ("fit" in args.suite)
                                 + ("ps" in args.suite))
        for suite, label, shapes, a, d in todo:
            progress.update(task, description=f"{suite}: {label} {a} {d}")
            case = Case(ALGORITHMS[a], d, shapes(), rng, args.xla, args.inject_wrong,
                        per_variable=not args.quick)
            run_case(suite, label, case, args, rows)
            del case
            progress.advance(task)
        for label, r_, d_, k_ in sparse_cases:
            progress.update(task, description=f"sparse: {label}")
            run_sparse_case(label, SparseCase(r_, d_, k_, rng, args.xla, args.inject_wrong), args,
                            rows)
            progress.advance(task)
        if "fit" in args.suite:
            progress.update(task, description="fit: model.fit, MLP and ResNet-50 variables")
            run_fit(args, rows)
            progress.advance(task)
        if "ps" in args.suite:
            def say(message: str) -> None:
                progress.update(task, description=f"ps: {message}")
                console.print(f"ps: {message}")

            try:
                run_ps(args, rows, say)
            except RuntimeError as e:  # (a server or the chief failed: said, not raised)
                console.print(f"[red]ps suite failed[/red]: {e}")
                ps_failed = True
            progress.advance(task)
    for suite in args.suite:
        if suite == "ps":
            print_ps_table(rows)
        else:
            print_table(rows, suite)
    wrong = [r for r in rows if r.check.startswith("WRONG")]
    for r in wrong:
        console.print(f"[red]WRONG[/red] {r.suite} {r.case} {r.algorithm} {r.dtype} "
                      f"{r.contender}: {r.check} (not timed)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(dict(schema="fusedopt-bench/1", machine=info,
                           args={k: v for k, v in vars(args).items()},
                           method=__doc__,
                           rows=[asdict(r) for r in rows]), fh, indent=1, default=str)
        console.print(f"wrote {args.json}")
    if args.plot:
        plot(rows, args.plot)
        console.print(f"wrote {args.plot}")
    return 1 if ps_failed or any(r.contender.startswith("fusedopt") for r in wrong) else 0
