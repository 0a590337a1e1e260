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
from fusedopt import reference as ref  # noqa: E402
from fusedopt.bench import cases, timing  # noqa: E402
from fusedopt.bench.rules import Skip, registry, require_known  # noqa: E402

DEFAULTS = dict(size=16 * 1024 * 1024, repeats=20, warmup=3)

# The rules of fusedopt.reference this suite leaves out (its cases are
# fusedopt.bench.cases.DENSE; the registry's rules are checked when it runs).
SKIPPED = {rule: Skip("not in this suite yet") for rule in ref.RULES
           if rule not in {c.rule for c in cases.DENSE}}


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


def bytes_per_element(case: cases.DenseCase) -> int:
    """float32 bytes a step moves per element: var and each slot read and
    written, grad read (a whole-tensor rule reads var and its slots again)."""
    accesses = 2 * (1 + len(case.slots)) + 1
    if ref.RULES[case.rule].whole_tensor:
        accesses += 1 + len(case.slots)
    return 4 * accesses


def fused_call(case: cases.DenseCase, variables: list, grads: list, slots: dict,
               step: int | None, **options):
    """A no-argument call of the case's fusedopt.ops function on the lists
    ``variables``, ``grads`` and ``slots`` (by registry name)."""
    fn = getattr(fops, f"apply_{case.rule}")
    hp = dict(case.hparams)
    lr = hp.pop("lr")
    kw = dict(hp, **({"step": step} if step is not None else {}), **options)
    return lambda: fn(variables, grads, lr, **slots, **kw)


def raw_call(case: cases.DenseCase, var, grad, slots: dict, step: int | None):
    """A no-argument call of TensorFlow's training op for the case (its
    hyperparameters over the reference's defaults, float32 constants made at
    each call), or None where TensorFlow has none."""
    op = cases.raw_op(case.rule, case.slots)
    if op is None:
        return None
    hp = dict(ref.rule_defaults(case.rule), **case.hparams)
    c = lambda x: tf.constant(x, tf.float32)  # noqa: E731
    handles = {k: v.handle for k, v in slots.items()}
    return lambda: op.call(tf.raw_ops, var.handle, grad, handles, scalar=lambda k: c(hp[k]),
                           power=lambda k: c(hp[k] ** step))


def step_of(case: cases.DenseCase) -> int | None:
    """The step the case's op takes (None: the rule takes none)."""
    return cases.DENSE_STEP if registry()[case.rule].step else None


def build(n: int, rng: np.random.Generator) -> tuple[list[RuleBench], Contender]:
    g = tf.constant(rng.standard_normal(n).astype(np.float32))
    benches = []

    # Each contender gets its own variables (same initial values), so neither
    # warms the other's cache lines.
    def vars_(k, positive=()):
        seed = rng.integers(1 << 31)
        out = []
        for i in range(k):
            r = np.random.default_rng(seed + i)
            out.append(_var(r, n, i in positive))
        return out

    for case in cases.DENSE:
        step = step_of(case)
        positive = tuple(1 + case.slots.index(s) for s in case.positive)
        v, *fused_slots = vars_(1 + len(case.slots), positive)
        fused = fused_call(case, [v], [g], {k: [x] for k, x in zip(case.slots, fused_slots)},
                           step)
        raw = None
        if cases.raw_op(case.rule, case.slots) is not None:
            rv, *raw_slots = vars_(1 + len(case.slots), positive)
            raw = raw_call(case, rv, g, dict(zip(case.slots, raw_slots)), step)
        benches.append(RuleBench(case.rule, case.label, bytes_per_element(case),
                                 Contender("fusedopt", fused),
                                 Contender("tf.raw_ops", raw) if raw else None))

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
