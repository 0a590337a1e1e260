"""fusedopt-bench: the one command line of fusedopt's benchmarks.

Every suite is a ``--suite`` of this command (also ``python -m fusedopt.bench``),
timed by one timer (fusedopt.bench.timing: warm-up rounds, then the median of
interleaved timed rounds) on one table of model shapes (fusedopt.bench.shapes),
with the rule list read from the registry (fusedopt.bench.rules). This module
imports neither TensorFlow nor a suite until the suite runs, so the gpu suite
runs where TensorFlow is not installed.

The table suites (sizes, many, models, sparse, fit, ps; fusedopt.bench.runner,
its docstring has the method) run together in one process and write rich
tables, JSON (schema fusedopt-bench/1) and a plot: fused kernels side by side
with tf.raw_ops, Keras (with and without XLA) and the memory-bandwidth roofline,
each contender checked against the float64 reference before it is timed. The
ps suite (only when asked for: it starts server processes) times training steps
of a recommender under ParameterServerStrategy on a local cluster; see
fusedopt.bench.ps for its method.

The focused suites each run alone, with their own output: dense (every fused
rule on one 16M variable against tf.raw_ops; fusedopt.bench.dense), multi (one
fused call over many variables; fusedopt.bench.multi), keras-apply (Keras'
``optimizer.apply``, fusedopt against keras.optimizers, with and without XLA;
fusedopt.bench.keras_apply), state (low-precision optimizer state: training
quality of three small models and the step's speed and memory per state_dtype;
fusedopt.bench.state) and gpu (fusedopt._native on a CUDA device, without
TensorFlow; fusedopt.bench.gpu).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from fusedopt.bench.cases import DEFAULT_ALGORITHM
from fusedopt.bench.shapes import MODELS

# The table suites (fusedopt.bench.runner), run together.
TABLE_SUITES = ["sizes", "many", "models", "sparse", "fit", "ps"]
# The focused suites: each runs alone, by its module's run function.
ALONE_SUITES = {"dense": ("fusedopt.bench.dense", "run"),
                "multi": ("fusedopt.bench.multi", "run"),
                "keras-apply": ("fusedopt.bench.keras_apply", "run"),
                "state": ("fusedopt.bench.state", "run"),
                "gpu": ("fusedopt.bench.gpu", "run_suite")}
SUITES = TABLE_SUITES + list(ALONE_SUITES)
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


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="fusedopt-bench",
        description="Benchmark fusedopt's fused optimizer kernels against tf.raw_ops, Keras "
        "(with and without XLA) and the memory-bandwidth roofline.",
    )
    p.add_argument("--suite", action="append", default=None,
                   help=f"suite to run, repeatable: {', '.join(TABLE_SUITES)} (default: all but "
                   "ps; --quick: all but models and ps); or one of "
                   f"{', '.join(ALONE_SUITES)}, alone")
    p.add_argument("--algorithms", default=None,
                   help="comma-separated algorithms (registry names) for sizes/many/models "
                   f"(default: {DEFAULT_ALGORITHM}), or the gpu suite's cases (default: all); "
                   "'all' for every one")
    p.add_argument("--dtypes", default=None,
                   help=f"comma-separated: {', '.join(DTYPES)} (default: float32; gpu: "
                   "float32,bfloat16)")
    p.add_argument("--quick", action="store_true",
                   help="a short run of the table suites (under 2 minutes on 2 cores); "
                   "state: one seed, a few epochs, a 1M-element step")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed rounds per case (default: the suite's)")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed rounds per case (default 2; --quick: 1 for the fit suite; "
                   "dense, multi, gpu: 3)")
    p.add_argument("--sizes", default=None,
                   help="comma-separated element counts for 'sizes'; for 'dense' one count "
                   "(default 16777216)")
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
    p.add_argument("--json", default=None,
                   help="JSON output path (default: fusedopt-bench.json for the table suites, "
                   "none for the others)")
    p.add_argument("--plot", default=None,
                   help="PNG plot path of the table suites ('' for none; default "
                   "fusedopt-bench.png)")
    s = p.add_argument_group("state suite (low-precision optimizer state)")
    s.add_argument("--seeds", type=int, default=None,
                   help="training runs per task and state_dtype (default 3; --quick: 1)")
    s.add_argument("--state-tasks", default=None,
                   help="comma-separated: digits-mlp, digits-convnet, transformer (default all)")
    s.add_argument("--state-optimizer", default=None, metavar="NAME[:key=value,...]",
                   help="the fusedopt.keras class trained (default: the featured rule's, as "
                   "--algorithms' default), with constructor arguments as Python literals, "
                   "e.g. NAME:momentum=0.9")
    g = p.add_argument_group("gpu suite (fusedopt._native on a CUDA device, no TensorFlow)")
    g.add_argument("--markdown", default=None,
                   help="write a Markdown table here (default: print it)")
    g.add_argument("--backend", choices=["cupy", "torch"], default=None,
                   help="array library (default: CuPy if importable, else PyTorch)")
    g.add_argument("--no-torch-optim", action="store_true", help="skip the torch.optim rows")
    g.add_argument("--no-state", action="store_true",
                   help="skip the low-precision state rows (float32, bfloat16 and int8 slots)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                   help="cpu: a smoke test of the suite on tiny CPU arrays, not a benchmark")
    g.add_argument("--scale", type=float, default=None,
                   help="multiply the sizes (default 1 on cuda, 1e-3 on cpu)")
    p.add_argument("--inject-wrong", action="store_true", help=argparse.SUPPRESS)
    # The ps suite's chief process (fusedopt.bench.ps.run_cluster_benchmark starts it).
    p.add_argument("--ps-chief", default=None, metavar="JSON", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    return args


def _names(text: str, known: list[str], what: str) -> list[str]:
    names = list(known) if text == "all" else [x for x in text.split(",") if x]
    for n in names:
        if n not in known:
            raise UsageError(f"unknown {what} {n!r}; choose from {', '.join(known)}"
                             + (" or all" if what == "algorithm" else ""))
    return names


def _outputs(args: argparse.Namespace) -> None:
    for label, path in [("--json", args.json), ("--plot", args.plot),
                        ("--markdown", args.markdown)]:
        if not path:
            continue
        target = Path(path)
        parent = target.parent if str(target.parent) else Path(".")
        if not parent.is_dir():
            raise UsageError(f"cannot write {label} output {path!r}: no directory {str(parent)!r}")
        if target.is_dir() or not os.access(target if target.exists() else parent, os.W_OK):
            raise UsageError(f"cannot write {label} output {path!r}: not writable")


def _sizes(args: argparse.Namespace) -> None:
    if args.sizes:
        try:
            args.sizes = [int(x) for x in args.sizes.split(",")]
        except ValueError:
            raise UsageError(f"--sizes takes comma-separated integers, got {args.sizes!r}")
        if any(n < 1 for n in args.sizes):
            raise UsageError("--sizes must be positive")


def validate(args: argparse.Namespace) -> None:
    if args.ps_chief is not None:
        return
    suites = args.suite or (["sizes", "many", "sparse", "fit"] if args.quick else
                            ["sizes", "many", "models", "sparse", "fit"])
    for s in suites:
        if s not in SUITES:
            raise UsageError(f"unknown suite {s!r}; choose from {', '.join(SUITES)}")
    alone = [s for s in suites if s in ALONE_SUITES]
    if alone and len(suites) > 1:
        raise UsageError(f"--suite {alone[0]} runs alone, not with "
                         f"{', '.join(s for s in suites if s != alone[0])}")
    args.suite = suites
    if alone:
        _validate_alone(args, alone[0])
    else:
        _validate_tables(args)
    _outputs(args)


def _validate_alone(args: argparse.Namespace, suite: str) -> None:
    if args.repeats is not None and args.repeats < 1 or args.warmup is not None and args.warmup < 0:
        raise UsageError("--repeats must be >= 1 and --warmup >= 0")
    _sizes(args)
    if suite in ("dense", "state") and args.sizes and len(args.sizes) != 1:
        raise UsageError(f"--suite {suite} takes one size (--sizes N)")
    if args.seeds is not None and args.seeds < 1:
        raise UsageError("--seeds must be >= 1")
    if suite != "gpu":
        return
    from fusedopt.bench import gpu  # (no TensorFlow)

    args.rules = _names(args.algorithms or "all", list(gpu.RULES), "algorithm")
    args.dtypes = (_names(args.dtypes, DTYPES, "dtype") if args.dtypes
                   else list(gpu.DEFAULTS["dtypes"]))
    args.repeats = args.repeats or gpu.DEFAULTS["repeats"]
    args.warmup = gpu.DEFAULTS["warmup"] if args.warmup is None else args.warmup
    if args.scale is None:
        args.scale = 1.0 if args.device == "cuda" else 1e-3


def _validate_tables(args: argparse.Namespace) -> None:
    from fusedopt.bench.algorithms import ALGORITHMS

    args.algorithms = _names(args.algorithms or DEFAULT_ALGORITHM, list(ALGORITHMS), "algorithm")
    args.dtypes = _names(args.dtypes or "float32", DTYPES, "dtype")
    if args.json is None:
        args.json = "fusedopt-bench.json"
    if args.plot is None:
        args.plot = "fusedopt-bench.png"
    preset = QUICK if args.quick else FULL
    _sizes(args)
    if not args.sizes:
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
    known_models = list(MODELS)
    for m in args.models:
        if m not in known_models:
            raise UsageError(f"unknown model {m!r}; choose from {', '.join(known_models)}")
    explicit_repeats, explicit_warmup = args.repeats is not None, args.warmup is not None
    args.repeats = args.repeats or preset["repeats"]
    args.warmup = 2 if args.warmup is None else args.warmup
    if args.repeats < 1 or args.warmup < 0:
        raise UsageError("--repeats must be >= 1 and --warmup >= 0")
    # The fit suite's rounds (epochs): as given, else the preset's.
    args.fit_repeats = args.repeats if explicit_repeats else preset.get("fit_repeats",
                                                                        args.repeats)
    args.fit_warmup = args.warmup if explicit_warmup else preset.get("fit_warmup", args.warmup)
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


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
        validate(args)
    except UsageError as e:
        print(f"fusedopt-bench: error: {e}", file=sys.stderr)
        return 2
    if args.ps_chief is not None:
        from fusedopt.bench import ps

        return ps.chief_main(args.ps_chief)
    suite = args.suite[0]
    if suite in ALONE_SUITES:
        import importlib

        module, function = ALONE_SUITES[suite]
        return getattr(importlib.import_module(module), function)(args)
    from fusedopt.bench import runner

    return runner.run(args)


if __name__ == "__main__":
    sys.exit(main())
