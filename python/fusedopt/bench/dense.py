"""Dense single-variable benchmark: every fused rule against tf.raw_ops and the
bandwidth roofline.

Method: one float32 variable of n elements (16M by default) per contender,
fresh random data; each contender's result is first checked (the fused op
against the raw op where TF has the rule); then, after warm-up, the contenders
run interleaved, one call each per round, for `repeats` rounds, and the median
time of each is reported. The roofline is an in-place triad (a = a * s + b,
12 bytes/element, the optimizers' access pattern: every buffer written was
just read) run on the same thread pool in the same rounds: a rule that moves B
bytes/element would take B/12 of the triad's time at the measured bandwidth.

Usage: fusedopt-bench --suite dense [--sizes N] [--repeats R] [--warmup W] [--json PATH]
(default: 16M elements, 20 rounds after 3 warm-up rounds, timed by fusedopt.bench.timing).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from dataclasses import dataclass
from typing import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import fusedopt  # noqa: E402
import fusedopt.ops as fops  # noqa: E402
from fusedopt.bench import timing  # noqa: E402
from fusedopt.bench.rules import Skip, require_known  # noqa: E402

DEFAULTS = dict(size=16 * 1024 * 1024, repeats=20, warmup=3)

# The registry rules this suite leaves out, and why (every other registry rule
# must have a pair in build(): checked when it runs).
SKIPPED = {
    "schedule_free_adamw": Skip("not in this suite yet"),
    "muon": Skip("a matrix rule, not an elementwise one"),
    "muon_momentum": Skip("Muon's momentum stage, a part of the muon rule"),
}


@dataclass
class Contender:
    name: str
    run: Callable[[], object]


@dataclass
class RuleBench:
    registry: str  # the registry's name of the rule
    rule: str  # the row's label
    bytes_per_element: int
    fused: Contender
    raw: Contender | None


def _var(rng, n, positive=False):
    x = rng.standard_normal(n).astype(np.float32)
    return tf.Variable(np.abs(x) + 0.1 if positive else x)


def build(n: int, rng: np.random.Generator) -> tuple[list[RuleBench], Contender]:
    g = tf.constant(rng.standard_normal(n).astype(np.float32))
    c = lambda x: tf.constant(x, tf.float32)  # noqa: E731
    benches = []

    def pair(registry, rule, bpe, fused_fn, raw_fn=None):
        benches.append(RuleBench(registry, rule, bpe, Contender("fusedopt", fused_fn),
                                 Contender("tf.raw_ops", raw_fn) if raw_fn else None))

    # Each contender gets its own variables (same initial values), so neither
    # warms the other's cache lines.
    def vars_(k, positive=()):
        seed = rng.integers(1 << 31)
        out = []
        for i in range(k):
            r = np.random.default_rng(seed + i)
            out.append(_var(r, n, i in positive))
        return out

    v, m, s = vars_(3, positive=(2,))
    rv, rm, rs = vars_(3, positive=(2,))
    pair("adam", "Adam", 28,
         lambda: fops.apply_adam([v], [g], 1e-3, m=[m], v=[s], step=10),
         lambda: tf.raw_ops.ResourceApplyAdam(var=rv.handle, m=rm.handle, v=rs.handle,
                                              beta1_power=c(0.9**10), beta2_power=c(0.999**10),
                                              lr=c(1e-3), beta1=c(0.9), beta2=c(0.999),
                                              epsilon=c(1e-7), grad=g))
    v2, m2, s2, h2 = vars_(4, positive=(2, 3))
    rv2, rm2, rs2, rh2 = vars_(4, positive=(2, 3))
    pair("adam", "AMSGrad", 36,
         lambda: fops.apply_adam([v2], [g], 1e-3, m=[m2], v=[s2], vhat=[h2], step=10),
         lambda: tf.raw_ops.ResourceApplyAdamWithAmsgrad(
             var=rv2.handle, m=rm2.handle, v=rs2.handle, vhat=rh2.handle, beta1_power=c(0.9**10),
             beta2_power=c(0.999**10), lr=c(1e-3), beta1=c(0.9), beta2=c(0.999), epsilon=c(1e-7),
             grad=g))
    v3, m3 = vars_(2)
    rv3, rm3 = vars_(2)
    pair("sgd", "SGD momentum", 20,
         lambda: fops.apply_sgd([v3], [g], 0.01, momenta=[m3], momentum=0.9),
         lambda: tf.raw_ops.ResourceApplyKerasMomentum(var=rv3.handle, accum=rm3.handle, lr=c(0.01),
                                                       grad=g, momentum=c(0.9)))
    v4, ms4, mo4 = vars_(3, positive=(1,))
    rv4, rms4, rmo4 = vars_(3, positive=(1,))
    pair("rmsprop", "RMSprop momentum", 28,
         lambda: fops.apply_rmsprop([v4], [g], 1e-3, velocity=[ms4], momenta=[mo4], momentum=0.9),
         lambda: tf.raw_ops.ResourceApplyRMSProp(var=rv4.handle, ms=rms4.handle, mom=rmo4.handle,
                                                 lr=c(1e-3), rho=c(0.9), momentum=c(0.9),
                                                 epsilon=c(1e-7), grad=g))
    v5, a5 = vars_(2, positive=(1,))
    rv5, ra5 = vars_(2, positive=(1,))
    pair("adagrad", "Adagrad", 20,
         lambda: fops.apply_adagrad([v5], [g], 1e-3, accumulator=[a5], epsilon=0.0),
         lambda: tf.raw_ops.ResourceApplyAdagradV2(var=rv5.handle, accum=ra5.handle, lr=c(1e-3),
                                                   epsilon=c(0.0), grad=g))
    v6, a6, d6 = vars_(3, positive=(1, 2))
    rv6, ra6, rd6 = vars_(3, positive=(1, 2))
    pair("adadelta", "Adadelta", 28,
         lambda: fops.apply_adadelta([v6], [g], 1.0, accumulated_grad=[a6],
                                     accumulated_delta_var=[d6]),
         lambda: tf.raw_ops.ResourceApplyAdadelta(var=rv6.handle, accum=ra6.handle,
                                                  accum_update=rd6.handle, lr=c(1.0), rho=c(0.95),
                                                  epsilon=c(1e-7), grad=g))
    v7, a7, l7 = vars_(3, positive=(1,))
    rv7, ra7, rl7 = vars_(3, positive=(1,))
    pair("ftrl", "Ftrl", 28,
         lambda: fops.apply_ftrl([v7], [g], 1e-3, accumulator=[a7], linear=[l7], l1=0.01, l2=0.01),
         lambda: tf.raw_ops.ResourceApplyFtrl(var=rv7.handle, accum=ra7.handle, linear=rl7.handle,
                                              grad=g, lr=c(1e-3), l1=c(0.01), l2=c(0.01),
                                              lr_power=c(-0.5)))
    v8, m8, u8 = vars_(3, positive=(2,))
    rv8, rm8, ru8 = vars_(3, positive=(2,))
    pair("adamax", "Adamax", 28,
         lambda: fops.apply_adamax([v8], [g], 1e-3, m=[m8], u=[u8], step=10),
         lambda: tf.raw_ops.ResourceApplyAdaMax(var=rv8.handle, m=rm8.handle, v=ru8.handle,
                                                beta1_power=c(0.9**10), lr=c(1e-3), beta1=c(0.9),
                                                beta2=c(0.999), epsilon=c(1e-7), grad=g))
    v9, m9, s9 = vars_(3, positive=(2,))
    pair("nadam", "Nadam", 28,
         lambda: fops.apply_nadam([v9], [g], 1e-3, m=[m9], v=[s9], step=10, u_product=0.3))
    v10, m10 = vars_(2)
    pair("lion", "Lion", 20, lambda: fops.apply_lion([v10], [g], 1e-4, m=[m10]))
    v11, m11, s11 = vars_(3, positive=(2,))
    pair("lamb", "LAMB (2 passes)", 40,
         lambda: fops.apply_lamb([v11], [g], 1e-3, m=[m11], v=[s11], step=10))

    ta = tf.Variable(rng.standard_normal(n).astype(np.float32))
    tb = tf.constant(rng.standard_normal(n).astype(np.float32))
    triad = Contender("triad", lambda: fops.stream_triad(ta, tb, 0.5))
    return benches, triad


def run(args: argparse.Namespace) -> int:
    """``fusedopt-bench --suite dense`` (args from fusedopt.bench.cli)."""
    size = args.sizes[0] if args.sizes else DEFAULTS["size"]
    repeats = args.repeats or DEFAULTS["repeats"]
    warmup = DEFAULTS["warmup"] if args.warmup is None else args.warmup
    rng = np.random.default_rng(0)
    benches, triad = build(size, rng)
    require_known({b.registry for b in benches} | set(SKIPPED), "fusedopt.bench.dense")
    contenders = [triad] + [c for b in benches for c in (b.fused, b.raw) if c is not None]

    def progress(r: int, total: int, timed: bool) -> None:
        if timed:
            print(f"\rround {r - warmup}/{repeats}", end="", file=sys.stderr, flush=True)

    times = timing.rounds({id(c): c.run for c in contenders}, repeats, warmup,
                          on_round=progress)
    print(file=sys.stderr)
    med = timing.medians(times)
    triad_t = med[id(triad)]
    bw = 12 * size / triad_t / 1e9
    info = fusedopt.build_info()
    print(f"fusedopt {info['fusedopt_version']}, TensorFlow {info['tensorflow_running']}, "
          f"CPU kernels {info['cpu_simd_selected']}, {os.cpu_count()} cores, {platform.processor() or platform.machine()}")
    print(f"float32, one variable of {size:,} elements, median of {repeats} interleaved rounds")
    print(f"triad bandwidth: {bw:.1f} GB/s ({triad_t * 1e3:.2f} ms for 12 B/element)\n")
    header = f"{'rule':<18}{'B/elem':>7}{'fused ms':>10}{'GB/s':>8}{'% roofline':>12}{'raw ms':>9}{'speedup':>9}"
    print(header)
    print("-" * len(header))
    rows = []
    for b in benches:
        f = med[id(b.fused)]
        gbs = b.bytes_per_element * size / f / 1e9
        roof = gbs / bw * 100
        raw = med[id(b.raw)] if b.raw else None
        speed = raw / f if raw else None
        rows.append(dict(rule=b.rule, bytes_per_element=b.bytes_per_element, fused_ms=f * 1e3,
                         gb_per_s=gbs, pct_roofline=roof, raw_ms=raw * 1e3 if raw else None,
                         speedup_vs_raw=speed))
        raw_s = f"{raw * 1e3:9.2f}" if raw else f"{'-':>9}"
        sp_s = f"{speed:8.2f}x" if speed else f"{'-':>9}"
        print(f"{b.rule:<18}{b.bytes_per_element:>7}{f * 1e3:>10.2f}{gbs:>8.1f}{roof:>11.1f}%{raw_s}{sp_s}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(dict(size=size, repeats=repeats, triad_ms=triad_t * 1e3,
                           triad_gb_per_s=bw, build_info=info, rows=rows), fh, indent=1)
    return 0
