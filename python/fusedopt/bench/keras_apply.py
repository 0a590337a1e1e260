"""Keras-level benchmark: ``optimizer.apply`` of the fusedopt.keras class of
fusedopt.bench.cases.KERAS_APPLY_RULE against its Keras built-in, in
tf.function without XLA (Keras' CPU default) and with XLA (jit_compile=True),
float32.

Suites: one variable of 16M elements; 200 variables x 10,000 elements.

Two ways of running the steps, both reported:
  * in-graph loop: each contender is a tf.function running STEPS_PER_CALL steps
    in a graph loop, structured as Keras 3's model.fit structures its train
    function (fusedopt.bench.runner.fit_style_loop: under XLA each step is one
    launch of the compiled step). Python's per-call cost is paid once per
    STEPS_PER_CALL steps. For reference, the Keras built-in is also timed with the
    whole loop compiled as one XLA cluster, a structure Keras never runs
    (it looks up the variables once per call instead of once per step);
  * one step per call: a tf.function call per step, as model.fit runs with
    its default steps_per_execution=1. Every contender pays Python's cost of
    feeding the captured variables and gradients on every step.

Rounds are interleaved (fusedopt.bench.timing); the median per-step time is
reported.

Usage: fusedopt-bench --suite keras-apply [--repeats R] [--warmup W] [--json PATH]
(default: 10 rounds after 2 warm-up rounds).
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import fusedopt  # noqa: E402
from fusedopt.bench import cases  # noqa: E402
from fusedopt.bench.algorithms import fused_class  # noqa: E402
from fusedopt.bench.multi import measure  # noqa: E402
from fusedopt.bench.runner import fit_style_loop  # noqa: E402

STEPS_PER_CALL = 20
DEFAULTS = dict(repeats=10, warmup=2)
FUSED = fused_class(cases.KERAS_APPLY_RULE)
BUILTIN = FUSED._fused_builtin()
BASE = f"fusedopt.keras.{FUSED.__name__}"


def contender(cls, shapes, rng, jit: bool, mode: str):
    """A no-argument callable running STEPS_PER_CALL steps ("loop", "one
    cluster") or one step ("per call") of `cls` over fresh variables."""
    variables = [keras.Variable(rng.standard_normal(s).astype(np.float32)) for s in shapes]
    grads = [tf.constant(rng.standard_normal(s).astype(np.float32)) for s in shapes]
    opt = cls(learning_rate=1e-3)
    opt.build(variables)
    if mode == "loop":
        run = fit_style_loop(lambda: opt.apply(grads, variables), jit)
        steps = tf.constant(STEPS_PER_CALL)
        return lambda: run(steps)
    if mode == "one cluster":

        @tf.function(jit_compile=jit)
        def whole():
            for _ in tf.range(STEPS_PER_CALL):
                opt.apply(grads, variables)

        return whole

    @tf.function(jit_compile=jit)
    def one():
        opt.apply(grads, variables)

    return one


def run(args: argparse.Namespace) -> int:
    """``fusedopt-bench --suite keras-apply`` (args from fusedopt.bench.cli)."""
    args.repeats = args.repeats or DEFAULTS["repeats"]
    args.warmup = DEFAULTS["warmup"] if args.warmup is None else args.warmup
    rng = np.random.default_rng(0)
    info = fusedopt.build_info()
    print(f"fusedopt {info['fusedopt_version']}, TensorFlow {info['tensorflow_running']}, "
          f"Keras {keras.__version__}, {os.cpu_count()} cores; float32 {BUILTIN.__name__}.apply, "
          "per-step median")
    builtin, fused, name_of = BUILTIN, FUSED, BUILTIN.__name__
    results = {}
    for name, shapes in [("1 x 16M", [(16 * 1024 * 1024,)]), ("200 x 10,000", [(10_000,)] * 200)]:
        for mode, label, steps in [("loop", f"in-graph loop, {STEPS_PER_CALL} steps per call",
                                    STEPS_PER_CALL),
                                   ("per call", "one step per call", 1)]:
            fns = {
                BASE: contender(fused, shapes, rng, False, mode),
                f"keras.optimizers.{name_of}": contender(builtin, shapes, rng, False, mode),
                f"keras.optimizers.{name_of} + XLA": contender(builtin, shapes, rng, True, mode),
            }
            if mode == "loop":
                fns[f"keras {name_of}, whole loop one XLA cluster"] = contender(
                    builtin, shapes, rng, True, "one cluster")
            med = {k: v * 1e3 for k, v in
                   measure(fns, args.repeats, args.warmup, f"{name}, {label}", steps).items()}
            results[f"{name}, {label}"] = med
            print(f"\n{name}, {label}:")
            for k, v in med.items():
                ratio = "" if k == BASE else f"  (fusedopt is {v / med[BASE]:.2f}x faster)"
                print(f"  {k:<42}{v:9.2f} ms{ratio}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(dict(build_info=info, per_step_ms=results), fh, indent=1)
    return 0

