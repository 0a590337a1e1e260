"""Multi-tensor benchmark: one fused call over many variables against a
tf.function loop of tf.raw_ops (one op per variable), and the cost of fused
global-norm clipping.

Suites (float32; the first dense case of fusedopt.bench.cases.MULTI_RULE):
  * 200 variables x 10,000 elements;
  * the trainable-variable shapes of ResNet-50 (keras.applications.ResNet50,
    weights=None: built offline, 214 tensors, ~25.6M parameters).
Each contender is a tf.function running STEPS_PER_CALL steps in a graph loop
(so Python's per-call cost of feeding ~800 captured tensors, ~1 ms here and
the same for every contender, does not dilute the comparison); contenders run
interleaved per round, after warm-up; the median per-step time is reported. The roofline is the in-place triad probe
(12 B/element) over one buffer as large as all the variables together.

Usage: fusedopt-bench --suite multi [--repeats R] [--warmup W] [--json PATH]
(default: 20 rounds after 3 warm-up rounds, timed by fusedopt.bench.timing).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import fusedopt  # noqa: E402
import fusedopt.ops as fops  # noqa: E402
from fusedopt.bench import cases, dense  # noqa: E402
from fusedopt.bench import shapes as model_shapes  # noqa: E402
from fusedopt.bench import timing  # noqa: E402


STEPS_PER_CALL = 20
DEFAULTS = dict(repeats=20, warmup=3)


# The suite's case: its rule's first dense case (hyperparameters, slots, step).
CASE = next(c for c in cases.DENSE if c.rule == cases.MULTI_RULE)


def make_suite(shapes, rng):
    mk = lambda pos=False: [  # noqa: E731
        tf.Variable((np.abs(rng.standard_normal(s)) + 0.1 if pos else rng.standard_normal(s)).astype(np.float32))
        for s in shapes
    ]
    grads = [tf.constant(rng.standard_normal(s).astype(np.float32)) for s in shapes]

    def lists():  # the variables, then each slot's list
        return mk(), {k: mk(k in CASE.positive) for k in CASE.slots}

    step = dense.step_of(CASE)
    fv, fs = lists()
    cv, cs = lists()
    rv, rs = lists()
    fused_once = dense.fused_call(CASE, fv, grads, fs, step)
    clip_once = dense.fused_call(CASE, cv, grads, cs, step, global_clipnorm=1.0)

    @tf.function
    def fused():
        for _ in tf.range(STEPS_PER_CALL):
            fused_once()

    @tf.function
    def fused_clip():
        for _ in tf.range(STEPS_PER_CALL):
            clip_once()

    raws = [dense.raw_call(CASE, v, g, {k: rs[k][i] for k in CASE.slots}, step)
            for i, (v, g) in enumerate(zip(rv, grads))]

    @tf.function
    def raw_loop():
        for _ in tf.range(STEPS_PER_CALL):
            for raw in raws:
                raw()

    total = sum(int(np.prod(s)) for s in shapes)
    ta = tf.Variable(rng.standard_normal(total).astype(np.float32))
    tb = tf.constant(rng.standard_normal(total).astype(np.float32))

    @tf.function
    def triad():
        for _ in tf.range(STEPS_PER_CALL):
            fops.stream_triad(ta, tb, 0.5)

    return dict(fused=fused, fused_global_clipnorm=fused_clip, raw_loop=raw_loop, triad=triad), total


def measure(fns: dict, repeats: int, warmup: int, label: str,
            steps_per_call: int = STEPS_PER_CALL) -> dict[str, float]:
    """Warm-up, then `repeats` interleaved rounds (fusedopt.bench.timing);
    median seconds per step."""
    def progress(r: int, total: int, timed: bool) -> None:
        if timed:
            print(f"\r{label}: round {r - warmup}/{repeats}", end="", file=sys.stderr, flush=True)

    times = timing.rounds(fns, repeats, warmup, per=steps_per_call, on_round=progress)
    print(file=sys.stderr)
    return timing.medians(times)


def run(args: argparse.Namespace) -> int:
    """``fusedopt-bench --suite multi`` (args from fusedopt.bench.cli)."""
    args.repeats = args.repeats or DEFAULTS["repeats"]
    args.warmup = DEFAULTS["warmup"] if args.warmup is None else args.warmup
    rng = np.random.default_rng(0)
    info = fusedopt.build_info()
    print(f"fusedopt {info['fusedopt_version']}, TensorFlow {info['tensorflow_running']}, "
          f"CPU kernels {info['cpu_simd_selected']}, {os.cpu_count()} cores; float32 "
          f"{CASE.label}, "
          f"median of {args.repeats} interleaved rounds\n")
    results = {}
    for name, shapes in [("200 x 10,000", [(10_000,)] * 200),
                         ("ResNet-50 shapes", model_shapes.resnet50())]:
        fns, total = make_suite(shapes, rng)
        med = measure(fns, args.repeats, args.warmup, name)
        bw = 12 * total / med["triad"] / 1e9
        gbs = dense.bytes_per_element(CASE) * total / med["fused"] / 1e9
        row = dict(
            tensors=len(shapes), elements=total, fused_ms=med["fused"] * 1e3,
            fused_global_clipnorm_ms=med["fused_global_clipnorm"] * 1e3,
            raw_loop_ms=med["raw_loop"] * 1e3, triad_gb_per_s=bw, fused_gb_per_s=gbs,
            pct_roofline=gbs / bw * 100, speedup_vs_raw_loop=med["raw_loop"] / med["fused"],
            global_clipnorm_cost=med["fused_global_clipnorm"] / med["fused"],
        )
        results[name] = row
        print(f"{name}: {len(shapes)} tensors, {total:,} elements")
        print(f"  fused (1 call)          {row['fused_ms']:8.2f} ms  {gbs:5.1f} GB/s  "
              f"{row['pct_roofline']:5.1f}% of roofline ({bw:.1f} GB/s)")
        print(f"  fused + global_clipnorm {row['fused_global_clipnorm_ms']:8.2f} ms  "
              f"({row['global_clipnorm_cost']:.2f}x the step without it)")
        print(f"  raw_ops loop            {row['raw_loop_ms']:8.2f} ms  "
              f"(fused is {row['speedup_vs_raw_loop']:.2f}x faster)\n")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(dict(build_info=info, repeats=args.repeats, results=results), fh, indent=1)
    return 0

