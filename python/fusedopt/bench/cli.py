"""fusedopt-bench: fused kernels side by side with tf.raw_ops, Keras (with and
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
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

SUITES = ["sizes", "many", "models", "sparse", "fit", "ps"]
DTYPES = ["float32", "float16", "bfloat16", "float64"]
# --quick must finish in under 2 minutes on 2 cores: fewer rounds, and the fit
# suite (one model.fit call per epoch, ~0.3 s of Keras overhead each) fewer still.
QUICK = dict(sizes=[65_536, 1_048_576, 16_777_216], many=[(200, 10_000)], repeats=5,
             fit_repeats=3, fit_warmup=1)
FULL = dict(
    sizes=[1_024, 16_384, 262_144, 4_194_304, 67_108_864],
    many=[(10, 10_000), (200, 10_000), (2_000, 1_000)],
    repeats=15,
)


# The ps suite (never in --quick, nor in the default run: it starts a local
# cluster of server processes): rounds and their steps, short by default
# (about a minute on 2 cores; --repeats/--warmup/--ps-steps change them).
PS_DEFAULTS = dict(repeats=5, warmup=1, steps=20, table=(1_000_000, 64), batch=(512, 8))


class UsageError(Exception):
    """Bad command-line input: reported without a traceback, exit code 2."""


@dataclass
class Row:
    suite: str
    case: str
    algorithm: str
    dtype: str
    tensors: int
    elements: int
    contender: str
    check: str  # "ok", "WRONG: ...", "skipped"
    ms: float | None = None
    ms_min: float | None = None
    ms_max: float | None = None
    gb_per_s: float | None = None
    pct_roofline: float | None = None
    speedup_vs_raw: float | None = None
    speedup_vs_keras: float | None = None
    extra: dict = field(default_factory=dict)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="fusedopt-bench",
        description="Benchmark fusedopt's fused optimizer kernels against tf.raw_ops, Keras "
        "(with and without XLA) and the memory-bandwidth roofline.",
    )
    p.add_argument("--suite", action="append", default=None,
                   help=f"suite to run, repeatable: {', '.join(SUITES)} (default: all but ps; "
                   "--quick: all but models and ps)")
    p.add_argument("--algorithms", default="adam",
                   help="comma-separated algorithms for sizes/many/models (default: adam; "
                   "'all' for every one)")
    p.add_argument("--dtypes", default="float32", help=f"comma-separated: {', '.join(DTYPES)}")
    p.add_argument("--quick", action="store_true", help="a short run (under 2 minutes on 2 cores)")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds per case")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed rounds per case (default 2; --quick: 1 for the fit suite)")
    p.add_argument("--sizes", default=None, help="comma-separated element counts for 'sizes'")
    p.add_argument("--many", default=None,
                   help="comma-separated COUNTxSIZE cases for 'many' (e.g. 200x10000)")
    p.add_argument("--models", default="resnet50,bert-base,recommender",
                   help="comma-separated models for 'models': resnet50, bert-base, recommender")
    p.add_argument("--fit-models", default=None,
                   help="comma-separated models for 'fit': mlp, resnet50 (default both; "
                        "--quick: mlp)")
    p.add_argument("--ps-steps", type=int, default=PS_DEFAULTS["steps"], metavar="N",
                   help="ps suite: steps each contender runs per round (default "
                        f"{PS_DEFAULTS['steps']}; rounds: --repeats, default "
                        f"{PS_DEFAULTS['repeats']}, after --warmup, default {PS_DEFAULTS['warmup']})")
    p.add_argument("--ps-table", default="x".join(map(str, PS_DEFAULTS["table"])),
                   metavar="ROWSxDIM", help="ps suite: the embedding table (default "
                   "%(default)s), sharded over the 2 parameter servers")
    p.add_argument("--ps-batch", default="x".join(map(str, PS_DEFAULTS["batch"])),
                   metavar="BATCHxIDS", help="ps suite: examples per step x ids per example "
                   "(default %(default)s)")
    p.add_argument("--ps-workers", type=int, default=1, choices=[1, 2],
                   help="ps suite: worker processes (default 1)")
    p.add_argument("--no-check", dest="check", action="store_false",
                   help="skip the correctness check before timing")
    p.add_argument("--no-xla", dest="xla", action="store_false", help="skip the XLA contender")
    p.add_argument("--json", default="fusedopt-bench.json", help="JSON output path")
    p.add_argument("--plot", default="fusedopt-bench.png", help="PNG plot path ('' for none)")
    p.add_argument("--inject-wrong", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    return args


def validate(args: argparse.Namespace) -> None:
    from fusedopt.bench.algorithms import ALGORITHMS

    suites = args.suite or (["sizes", "many", "sparse", "fit"] if args.quick else
                            ["sizes", "many", "models", "sparse", "fit"])
    for s in suites:
        if s not in SUITES:
            raise UsageError(f"unknown suite {s!r}; choose from {', '.join(SUITES)}")
    args.suite = suites
    algos = list(ALGORITHMS) if args.algorithms == "all" else args.algorithms.split(",")
    for a in algos:
        if a not in ALGORITHMS:
            raise UsageError(f"unknown algorithm {a!r}; choose from {', '.join(ALGORITHMS)} or all")
    args.algorithms = algos
    dtypes = args.dtypes.split(",")
    for d in dtypes:
        if d not in DTYPES:
            raise UsageError(f"unknown dtype {d!r}; choose from {', '.join(DTYPES)}")
    args.dtypes = dtypes
    preset = QUICK if args.quick else FULL
    if args.sizes:
        try:
            args.sizes = [int(x) for x in args.sizes.split(",")]
        except ValueError:
            raise UsageError(f"--sizes takes comma-separated integers, got {args.sizes!r}")
        if any(n < 1 for n in args.sizes):
            raise UsageError("--sizes must be positive")
    else:
        args.sizes = preset["sizes"]
    if args.many:
        try:
            args.many = [tuple(int(v) for v in item.split("x")) for item in args.many.split(",")]
            assert all(len(t) == 2 and t[0] > 0 and t[1] > 0 for t in args.many)
        except (ValueError, AssertionError):
            raise UsageError(f"--many takes COUNTxSIZE items like 200x10000, got {args.many!r}")
    else:
        args.many = preset["many"]
    if args.fit_models is None:
        args.fit_models = "mlp" if args.quick else "mlp,resnet50"
    args.fit_models = args.fit_models.split(",")
    for m in args.fit_models:
        if m not in ("mlp", "resnet50"):
            raise UsageError(f"unknown fit model {m!r}; choose from mlp, resnet50")
    args.models = args.models.split(",")
    known_models = ["resnet50", "bert-base", "recommender"]
    for m in args.models:
        if m not in known_models:
            raise UsageError(f"unknown model {m!r}; choose from {', '.join(known_models)}")
    explicit_repeats, explicit_warmup = args.repeats is not None, args.warmup is not None
    args.repeats = args.repeats or preset["repeats"]
    args.warmup = 2 if args.warmup is None else args.warmup
    # The fit suite's rounds (epochs): as given, else the preset's.
    args.fit_repeats = args.repeats if explicit_repeats else preset.get("fit_repeats",
                                                                        args.repeats)
    args.fit_warmup = args.warmup if explicit_warmup else preset.get("fit_warmup", args.warmup)
    if args.repeats < 1 or args.warmup < 0:
        raise UsageError("--repeats must be >= 1 and --warmup >= 0")
    # The ps suite's rounds: as given, else its own (short) defaults.
    args.ps_repeats = args.repeats if explicit_repeats else PS_DEFAULTS["repeats"]
    args.ps_warmup = args.warmup if explicit_warmup else PS_DEFAULTS["warmup"]
    if args.ps_steps < 1:
        raise UsageError("--ps-steps must be >= 1")
    for name in ("ps_table", "ps_batch"):
        text = getattr(args, name)
        flag = "--" + name.replace("_", "-")
        try:
            a, b = (int(v) for v in str(text).split("x"))
            assert a > 0 and b > 0
        except (ValueError, AssertionError):
            raise UsageError(f"{flag} takes two positive integers like "
                             f"{'1000000x64' if name == 'ps_table' else '512x8'}, got {text!r}")
        setattr(args, name, (a, b))
    if args.ps_table[0] < 2:
        raise UsageError("--ps-table needs at least 2 rows (one per parameter server)")
    for label, path in [("--json", args.json), ("--plot", args.plot)]:
        if not path:
            continue
        target = Path(path)
        parent = target.parent if str(target.parent) else Path(".")
        if not parent.is_dir():
            raise UsageError(f"cannot write {label} output {path!r}: no directory {str(parent)!r}")
        if target.is_dir() or not os.access(target if target.exists() else parent, os.W_OK):
            raise UsageError(f"cannot write {label} output {path!r}: not writable")


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gib = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    import tensorflow as tf

    import fusedopt

    return dict(cpu=cpu, cores=os.cpu_count(), memory_gib=mem_gib, python=platform.python_version(),
                tensorflow=tf.__version__, fusedopt=fusedopt.build_info(),
                gpus=[d.name for d in tf.config.list_physical_devices("GPU")],
                date=time.strftime("%Y-%m-%d %H:%M:%S %Z"))


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
        validate(args)
    except UsageError as e:
        print(f"fusedopt-bench: error: {e}", file=sys.stderr)
        return 2
    from fusedopt.bench import runner

    return runner.run(args)


if __name__ == "__main__":
    sys.exit(main())
