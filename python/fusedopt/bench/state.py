"""Low-precision optimizer state (issue #31): training quality, speed and
memory of ``state_dtype`` float32, bfloat16 and int8, side by side.

Quality: three small Keras 3 models, each trained with one fusedopt.keras
class (``--state-optimizer``; default: the class of the featured rule,
fusedopt.bench.cases.DEFAULT_ALGORITHM) under each state_dtype, over several
seeds (the seed sets the initial weights and the batch order; the data and its
train/test split are fixed):

  * digits-mlp: the 8x8 digits of scikit-learn (``load_digits``, bundled with
    the package, offline), 1,437 train / 360 test images, a 64-256-128-10 MLP;
  * digits-convnet: the same images as 8x8x1, two 3x3 convolutions (32, 64),
    2x2 max-pooling and a 128-unit dense layer;
  * transformer: sort a sequence of SEQ_LEN tokens drawn uniformly from
    VOCAB (generated from seed 0: 4,000 train / 1,000 test sequences), two
    post-norm self-attention blocks (keras.layers.MultiHeadAttention, 4 heads
    of 16, learned position embeddings), accuracy per token.

For each task and state_dtype: the mean over seeds of the final epoch's
training loss and of the test accuracy, their relative difference to float32
state, and the issue's criterion (both within 1 %, either way) as pass/miss;
the float32 runs' own spread over seeds (standard deviation / mean) is shown
beside it. Also measured: the fraction of parameters whose slots are
low-precision (int8 keeps float32 state under MIN_QUANTIZED_ELEMENTS elements)
and the optimizer's slot bytes per parameter.

Speed: one step of the featured rule's first dense case (fusedopt.ops, one
float32 variable of 16M elements) with each state format, every format's
result first checked against the float64 reference from the same (exactly
representable) state, then timed in interleaved rounds (fusedopt.bench.timing);
ratios to float32 state beside the bandwidth bound (the bytes a step moves per
element, float32 over the format's). Memory: state bytes per parameter
(fusedopt.state.bytes_per_element) and a 100M-parameter model's optimizer state.

Usage: fusedopt-bench --suite state [--quick] [--seeds N] [--state-tasks a,b]
[--state-optimizer NAME[:key=value,...]] [--sizes N] [--repeats R] [--warmup W]
[--json PATH]
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import statistics
import sys
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import fusedopt.keras as fk  # noqa: E402
from fusedopt import reference as ref  # noqa: E402
from fusedopt import state as st  # noqa: E402
from fusedopt.bench import cases, dense, results, timing  # noqa: E402
from fusedopt.bench.algorithms import fused_class  # noqa: E402

DEFAULTS = dict(seeds=3, repeats=21, warmup=3, size=16 * 1024 * 1024)
QUICK = dict(seeds=1, repeats=5, warmup=1, size=1 << 20)
TOLERANCE = 0.01  # the criterion: within 1 % (relative) of float32 state
MODEL_PARAMETERS = 100_000_000  # the model whose optimizer memory is reported
SEQ_LEN, VOCAB = 16, 16
# The speed suite's case: the featured rule's first dense case.
CASE = next(c for c in cases.DENSE if c.rule == cases.DEFAULT_ALGORITHM)


class StateUsageError(Exception):
    """Bad input to this suite (reported like the CLI's usage errors)."""


# ---- the quality tasks ---------------------------------------------------------------------


@lru_cache(maxsize=None)
def _digits():
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # pragma: no cover - scikit-learn is in the dev environment
        raise StateUsageError("the digits tasks need scikit-learn (its bundled load_digits)") from e
    d = load_digits()
    order = np.random.default_rng(0).permutation(len(d.target))
    x = (d.images[order] / 16.0).astype(np.float32)
    y = d.target[order].astype(np.int32)
    cut = len(y) - 360
    return x[:cut], y[:cut], x[cut:], y[cut:]


def digits_flat():
    xtr, ytr, xte, yte = _digits()
    return xtr.reshape(-1, 64), ytr, xte.reshape(-1, 64), yte


def digits_images():
    xtr, ytr, xte, yte = _digits()
    return xtr[..., None], ytr, xte[..., None], yte


@lru_cache(maxsize=None)
def sorting():
    """Sequences of SEQ_LEN tokens in [0, VOCAB) and the same sorted (seed 0)."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, VOCAB, size=(5000, SEQ_LEN)).astype(np.int32)
    y = np.sort(x, axis=1)
    return x[:4000], y[:4000], x[4000:], y[4000:]


def mlp():
    return keras.Sequential([keras.Input((64,)), keras.layers.Dense(256, activation="relu"),
                             keras.layers.Dense(128, activation="relu"), keras.layers.Dense(10)])


def convnet():
    return keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
        keras.layers.Conv2D(64, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(2), keras.layers.Flatten(),
        keras.layers.Dense(128, activation="relu"), keras.layers.Dense(10)])


class PositionEmbedding(keras.layers.Layer):
    """Adds a learned embedding of each position."""

    def build(self, input_shape):
        self.table = self.add_weight(shape=tuple(input_shape[1:]), initializer="glorot_uniform",
                                     name="positions")

    def call(self, x):
        return x + self.table


def transformer(dim=64, heads=4, ffn=128, blocks=2):
    tokens = keras.Input((SEQ_LEN,), dtype="int32")
    x = PositionEmbedding()(keras.layers.Embedding(VOCAB, dim)(tokens))
    for _ in range(blocks):
        attended = keras.layers.MultiHeadAttention(heads, dim // heads)(x, x)
        x = keras.layers.LayerNormalization()(x + attended)
        h = keras.layers.Dense(ffn, activation="relu")(x)
        x = keras.layers.LayerNormalization()(x + keras.layers.Dense(dim)(h))
    return keras.Model(tokens, keras.layers.Dense(VOCAB)(x))


@dataclass(frozen=True)
class Task:
    name: str
    description: str
    data: Callable[[], tuple]  # () -> (x_train, y_train, x_test, y_test)
    model: Callable[[], keras.Model]
    epochs: int
    quick_epochs: int
    batch_size: int = 32


TASKS = {t.name: t for t in [
    Task("digits-mlp", "sklearn digits (1,437/360), MLP 64-256-128-10", digits_flat, mlp, 20, 3),
    Task("digits-convnet", "sklearn digits 8x8x1 (1,437/360), conv 32-64, dense 128",
         digits_images, convnet, 12, 2),
    Task("transformer", f"sort {SEQ_LEN} tokens of {VOCAB} (4,000/1,000), 2 attention blocks",
         sorting, transformer, 8, 2, batch_size=64),
]}


def optimizer_factory(spec: str | None) -> tuple[str, Callable[[str], keras.optimizers.Optimizer]]:
    """(label, state_dtype -> a new optimizer) of ``--state-optimizer``:
    a fusedopt.keras class name, optionally with constructor arguments
    (``NAME:key=value,...``, values as Python literals); default the featured
    rule's class with its table configuration."""
    if spec is None:
        cls = fused_class(cases.DEFAULT_ALGORITHM)
        config = dict(cases.TABLE.get(cases.DEFAULT_ALGORITHM).config)
    else:
        name, _, rest = spec.partition(":")
        cls = getattr(fk, name, None)
        if not isinstance(cls, type) or not issubclass(cls, keras.optimizers.Optimizer):
            raise StateUsageError(f"--state-optimizer: fusedopt.keras has no optimizer class "
                                  f"{name!r}")
        config = {}
        for item in filter(None, rest.split(",")):
            key, eq, value = item.partition("=")
            try:
                config[key.strip()] = ast.literal_eval(value.strip())
            except (ValueError, SyntaxError):
                raise StateUsageError(f"--state-optimizer: {item!r} is not key=<Python literal>")
            if not eq:
                raise StateUsageError(f"--state-optimizer: {item!r} is not key=value")
    for state_dtype in st.STATE_DTYPES:  # refused configurations fail before training
        try:
            cls(**config, state_dtype=state_dtype)
        except (TypeError, ValueError) as e:
            raise StateUsageError(f"--state-optimizer: {cls.__name__}({config}): {e}")
    label = cls.__name__ + (f"({', '.join(f'{k}={v!r}' for k, v in config.items())})"
                            if config else "")
    return label, lambda state_dtype: cls(**config, state_dtype=state_dtype)


def _elements(v) -> int:
    return int(np.prod(v.shape)) if len(v.shape) else 1


def train(task: Task, make_optimizer, state_dtype: str, seed: int, epochs: int) -> dict:
    """One training run: final training loss, test accuracy, the fraction of
    parameters with low-precision slots and the slot bytes per parameter."""
    keras.utils.set_random_seed(seed)
    xtr, ytr, xte, yte = task.data()
    model = task.model()
    opt = make_optimizer(state_dtype)
    model.compile(opt, keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"], jit_compile=False)
    history = model.fit(xtr, ytr, batch_size=task.batch_size, epochs=epochs, verbose=0,
                        shuffle=True)
    test = model.evaluate(xte, yte, batch_size=512, verbose=0, return_dict=True)
    params = sum(_elements(v) for v in model.trainable_variables)
    low = sum(_elements(v) for v in model.trainable_variables
              if opt._fused_state_of(v) != "float32")
    # Slot variables (codes, absmax included), not the step counter and scalars.
    slot_bytes = sum(_elements(v) * np.dtype(v.dtype).itemsize for v in opt.variables
                     if len(v.shape))
    loss = float(history.history["loss"][-1])
    if not np.isfinite(loss):
        raise FloatingPointError(f"{task.name}, state {state_dtype}, seed {seed}: loss {loss}")
    return dict(loss=loss, accuracy=float(test["accuracy"]), parameters=params,
                low_precision_fraction=low / params, state_bytes_per_parameter=slot_bytes / params)


def _spread(xs: list[float]) -> float:
    return statistics.stdev(xs) if len(xs) > 1 else 0.0


def _se_of_difference(a: list[float], b: list[float]) -> float:
    """The standard error of mean(a) - mean(b) (independent runs)."""
    return (_spread(a) ** 2 / len(a) + _spread(b) ** 2 / len(b)) ** 0.5


def quality(tasks: list[Task], make_optimizer, seeds: list[int], quick: bool) -> list[dict]:
    """Every task under every state_dtype and seed: one row per task and
    state_dtype (means over seeds and the comparison with float32 state)."""
    rows = []
    for task in tasks:
        epochs = task.quick_epochs if quick else task.epochs
        runs = {}
        for state_dtype in st.STATE_DTYPES:
            runs[state_dtype] = []
            for seed in seeds:
                print(f"\r{task.name}: state {state_dtype}, seed {seed}      ", end="",
                      file=sys.stderr, flush=True)
                runs[state_dtype].append(train(task, make_optimizer, state_dtype, seed, epochs))
        base_loss = statistics.mean(r["loss"] for r in runs["float32"])
        base_acc = statistics.mean(r["accuracy"] for r in runs["float32"])
        for state_dtype, rs in runs.items():
            loss = statistics.mean(r["loss"] for r in rs)
            acc = statistics.mean(r["accuracy"] for r in rs)
            rel_loss, rel_acc = loss / base_loss - 1, acc / base_acc - 1
            # The seed-to-seed noise of those differences: the standard error
            # of a difference of two means over the seeds, relative to float32
            # state's mean (0 with one seed: no estimate).
            se_loss = _se_of_difference([r["loss"] for r in rs],
                                        [r["loss"] for r in runs["float32"]]) / base_loss
            se_acc = _se_of_difference([r["accuracy"] for r in rs],
                                       [r["accuracy"] for r in runs["float32"]]) / base_acc
            rows.append(dict(
                task=task.name, description=task.description, epochs=epochs,
                state_dtype=state_dtype, seeds=list(seeds),
                loss=loss, loss_std=_spread([r["loss"] for r in rs]),
                accuracy=acc, accuracy_std=_spread([r["accuracy"] for r in rs]),
                rel_loss=rel_loss, rel_accuracy=rel_acc,
                rel_loss_se=0.0 if state_dtype == "float32" else se_loss,
                rel_accuracy_se=0.0 if state_dtype == "float32" else se_acc,
                within_1pct=abs(rel_loss) <= TOLERANCE and abs(rel_acc) <= TOLERANCE,
                parameters=rs[0]["parameters"],
                low_precision_fraction=rs[0]["low_precision_fraction"],
                state_bytes_per_parameter=rs[0]["state_bytes_per_parameter"],
                runs=rs))
    print(file=sys.stderr)
    return rows


# ---- speed and memory ----------------------------------------------------------------------


def _blocks_of(x: np.ndarray) -> np.ndarray:
    return x.reshape(-1, st.BLOCK)


def quantize(x: np.ndarray, signed: bool) -> tuple[np.ndarray, np.ndarray]:
    """fusedopt.state.quantize of a rank-1 array of whole blocks, vectorized
    (blocks with a nonzero absmax)."""
    blocks = _blocks_of(x.astype(np.float32))
    absmax = np.abs(blocks).max(axis=1)
    inv = np.float32(1.0) / absmax
    return st.encode(blocks * inv[:, None], signed=signed).reshape(-1), absmax


def dequantize(codes: np.ndarray, absmax: np.ndarray, signed: bool) -> np.ndarray:
    """fusedopt.state.dequantize of a rank-1 array of whole blocks, vectorized."""
    return (_blocks_of(st.decode(codes, signed=signed)) * absmax[:, None]).reshape(-1)


def _bfloat16_values(t) -> np.ndarray:
    return tf.cast(t, tf.float32).numpy()


@dataclass
class Format:
    """One state format's contender: its op call and its variables."""

    state_dtype: str
    run: Callable[[], object]
    var: tf.Variable
    start: dict  # slot -> the float32 values of its initial state
    stored: dict  # slot -> its variable (int8: codes)
    absmax: dict  # slot -> its absmax variable (int8)

    def slot_values(self, slot: str) -> np.ndarray:
        v = self.stored[slot]
        if self.state_dtype == "int8":
            return dequantize(v.numpy(), self.absmax[slot].numpy(),
                              signed=slot not in cases.positive_slots(CASE.rule))
        return _bfloat16_values(v) if self.state_dtype == "bfloat16" else v.numpy()


def make_formats(n: int, rng: np.random.Generator) -> tuple[list[Format], np.ndarray, np.ndarray]:
    """A contender per state format over the same variable, gradient and
    (rounded to the format) slot values; each has its own variables."""
    var0 = rng.standard_normal(n).astype(np.float32)
    grad = rng.standard_normal(n).astype(np.float32)
    g = tf.constant(grad)
    positive = cases.positive_slots(CASE.rule)
    slots0 = {}
    for k in CASE.slots:
        x = rng.standard_normal(n).astype(np.float32)
        slots0[k] = (x * x + 0.1) * 1e-2 if k in positive else x * 0.1
    step = dense.step_of(CASE)
    formats = []
    for fmt in st.STATE_DTYPES:
        start, stored, absmax = {}, {}, {}
        for k, x in slots0.items():
            if fmt == "int8":
                codes, amax = quantize(x, signed=k not in positive)
                stored[k], absmax[k] = tf.Variable(codes), tf.Variable(amax)
                start[k] = dequantize(codes, amax, signed=k not in positive)
            elif fmt == "bfloat16":
                stored[k] = tf.Variable(tf.cast(x, tf.bfloat16))
                start[k] = _bfloat16_values(stored[k])
            else:
                stored[k] = tf.Variable(x)
                start[k] = x
        var = tf.Variable(var0)
        options = dict(state_dtype=fmt) if fmt != "float32" else {}
        if fmt == "int8":
            options["absmax"] = {k: [a] for k, a in absmax.items()}
        call = dense.fused_call(CASE, [var], [g], {k: [s] for k, s in stored.items()}, step,
                                **options)
        formats.append(Format(fmt, call, var, start, stored, absmax))
    return formats, var0, grad


def check(f: Format, var0: np.ndarray, grad: np.ndarray) -> str:
    """One step of ``f`` against the float64 reference from its initial
    state: the variable to float32 accuracy, each slot to its format's
    rounding (bfloat16: one unit in the last place; int8: a code step, 1/16
    of the value, or the bottom code's spacing times the block's absmax)."""
    hp = dict(CASE.hparams)
    step = dense.step_of(CASE)
    want_var, want = ref.apply_rule(
        CASE.rule, var0.astype(np.float64), grad.astype(np.float64),
        {k: v.astype(np.float64) for k, v in f.start.items()}, step=step, **hp)
    f.run()
    got = f.var.numpy()
    err = np.abs(got - want_var)
    if not np.all(err <= 1e-5 * np.abs(want_var) + 1e-6 * np.abs(want_var).max()):
        return f"WRONG: variable off by up to {err.max():.3g}"
    positive = cases.positive_slots(CASE.rule)
    for k in f.start:
        w = want[k]
        g = f.slot_values(k)
        # (float32 arithmetic: relative error 1e-5, and cancellation near 0.)
        tol = np.abs(w) * 1e-5 + 1e-6 * np.abs(w).max()
        if f.state_dtype == "int8":
            bottom = 2.0 ** (-17 if k not in positive else -33)
            scale = np.repeat(f.absmax[k].numpy().astype(np.float64), st.BLOCK)
            tol += np.abs(w) / 16 + bottom * scale
        elif f.state_dtype == "bfloat16":
            tol += np.abs(w) * 2.0 ** -7
        bad = np.abs(g - w) > tol
        if bad.any():
            return f"WRONG: slot {k}: {int(bad.sum())} of {bad.size} values off"
    return "ok"


def bytes_moved(state_dtype: str, n: int) -> float:
    """Bytes a step moves per element: the variable read and written, the
    gradient read, each slot (and int8's absmax) read and written."""
    return 12 + 2 * st.bytes_per_element(state_dtype, len(CASE.slots), (n,))


def speed(n: int, repeats: int, warmup: int, do_check: bool) -> list[dict]:
    formats, var0, grad = make_formats(n, np.random.default_rng(0))
    checks = {f.state_dtype: check(f, var0, grad) if do_check else "skipped" for f in formats}
    timed = {f.state_dtype: f.run for f in formats if not checks[f.state_dtype].startswith("WRONG")}

    def progress(r: int, total: int, is_timed: bool) -> None:
        if is_timed:
            print(f"\rspeed: round {r - warmup}/{repeats}", end="", file=sys.stderr, flush=True)

    times = timing.rounds(timed, repeats, warmup, on_round=progress)
    print(file=sys.stderr)
    med = timing.medians(times)
    base = med.get("float32")
    rows = []
    for f in formats:
        fmt, t = f.state_dtype, med.get(f.state_dtype)
        moved = bytes_moved(fmt, n)
        rows.append(dict(
            state_dtype=fmt, check=checks[fmt], elements=n,
            ms=t * 1e3 if t else None,
            ms_min=min(times[fmt]) * 1e3 if t else None,
            ms_max=max(times[fmt]) * 1e3 if t else None,
            gb_per_s=moved * n / t / 1e9 if t else None,
            speedup_vs_float32=base / t if t and base else None,
            bytes_moved_per_element=moved, bound_vs_float32=bytes_moved("float32", n) / moved))
    return rows


def memory() -> list[dict]:
    """State bytes per parameter (fusedopt.state.bytes_per_element, large
    variables) and a MODEL_PARAMETERS-parameter model's optimizer state."""
    rows = []
    for fmt in st.STATE_DTYPES:
        per = st.bytes_per_element(fmt, len(CASE.slots))
        rows.append(dict(state_dtype=fmt, slots=len(CASE.slots), bytes_per_parameter=per,
                         model_parameters=MODEL_PARAMETERS,
                         model_state_mb=per * MODEL_PARAMETERS / 1e6))
    return rows


# ---- the suite -----------------------------------------------------------------------------


def _header(text: str) -> None:
    print(text)
    print("-" * len(text))


def _pct(x: float) -> str:
    return f"{x * 100:+.2f}%"


def print_quality(rows: list[dict], label: str) -> None:
    print(f"\nQuality: {label}, mean over seeds {rows[0]['seeds']} (std in parentheses); "
          f"criterion: loss and accuracy within {TOLERANCE:.0%} of float32 state; "
          f"se: the seeds' noise in that difference (standard error of the difference of "
          f"the means; a difference within 2 se is not resolved)")
    header = (f"{'task':<16}{'state':<10}{'epochs':>6}{'train loss':>20}{'test acc':>18}"
              f"{'d loss':>9}{'se':>7}{'d acc':>9}{'se':>7}{'  1%':<6}{'low-prec':>9}"
              f"{'B/param':>9}")
    _header(header)
    for r in rows:
        base = r["state_dtype"] == "float32"
        verdict = "-" if base else ("pass" if r["within_1pct"] else "MISS")
        se = (lambda x: "" if base or len(r["seeds"]) < 2 else f"{x * 100:.1f}%")
        print(f"{r['task']:<16}{r['state_dtype']:<10}{r['epochs']:>6}"
              f"{r['loss']:>10.4f} ({r['loss_std']:.4f}){r['accuracy']:>10.4f} "
              f"({r['accuracy_std']:.4f})"
              f"{'' if base else _pct(r['rel_loss']):>9}{se(r['rel_loss_se']):>7}"
              f"{'' if base else _pct(r['rel_accuracy']):>9}{se(r['rel_accuracy_se']):>7}"
              f"  {verdict:<4}{r['low_precision_fraction'] * 100:>8.1f}%"
              f"{r['state_bytes_per_parameter']:>9.3f}")


def print_speed(rows: list[dict], mem: list[dict], repeats: int) -> None:
    n = rows[0]["elements"]
    print(f"\nSpeed: {CASE.label}, one float32 variable of {n:,} elements, fusedopt.ops, "
          f"median of {repeats} interleaved rounds (min-max)")
    header = (f"{'state':<10}{'check':<8}{'ms':>8}{'min-max':>16}{'GB/s':>7}{'vs float32':>12}"
              f"{'B moved/elem':>14}{'bound':>8}")
    _header(header)
    for r in rows:
        ratio = r["speedup_vs_float32"]
        t = (f"{r['ms']:>8.2f}{r['ms_min']:>8.2f}-{r['ms_max']:<7.2f}{r['gb_per_s']:>7.1f}"
             + (f"{ratio:>11.2f}x" if ratio else f"{'-':>12}") if r["ms"]
             else f"{'-':>8}{'':>16}{'':>7}{'':>12}")
        print(f"{r['state_dtype']:<10}{r['check'][:7]:<8}{t}{r['bytes_moved_per_element']:>14.2f}"
              f"{r['bound_vs_float32']:>7.2f}x")
    for r in rows:
        if r["check"].startswith("WRONG"):
            print(f"  {r['state_dtype']}: {r['check']}")
    print(f"\nMemory: {CASE.label} state ({mem[0]['slots']} slots), large variables")
    for m in mem:
        print(f"  {m['state_dtype']:<10}{m['bytes_per_parameter']:7.3f} bytes/parameter;  "
              f"{m['model_parameters'] / 1e6:.0f}M parameters: {m['model_state_mb']:7.1f} MB")


def run(args: argparse.Namespace) -> int:
    """``fusedopt-bench --suite state`` (args from fusedopt.bench.cli)."""
    preset = QUICK if args.quick else DEFAULTS
    try:
        names = (args.state_tasks or ",".join(TASKS)).split(",")
        unknown = [t for t in names if t not in TASKS]
        if unknown:
            raise StateUsageError(f"unknown --state-tasks {unknown[0]!r}; choose from "
                                  f"{', '.join(TASKS)}")
        size = args.sizes[0] if args.sizes else preset["size"]
        if size % st.BLOCK:
            raise StateUsageError(f"--suite state takes a size that is a multiple of {st.BLOCK}")
        seeds = list(range(args.seeds or preset["seeds"]))
        label, make_optimizer = optimizer_factory(args.state_optimizer)
    except StateUsageError as e:
        print(f"fusedopt-bench: error: {e}", file=sys.stderr)
        return 2
    repeats = args.repeats or preset["repeats"]
    warmup = preset["warmup"] if args.warmup is None else args.warmup
    machine = results.machine_info()
    print(f"fusedopt {machine['fusedopt']['fusedopt_version']}, TensorFlow "
          f"{machine['tensorflow']}, Keras {keras.__version__}, {machine['cpu']}, "
          f"{machine['cores']} cores, {machine['date']}")
    speed_rows = speed(size, repeats, warmup, args.check)
    mem = memory()
    print_speed(speed_rows, mem, repeats)
    tasks = [TASKS[t] for t in names]
    quality_rows = quality(tasks, make_optimizer, seeds, args.quick)
    print_quality(quality_rows, label)
    for t in tasks:
        print(f"  {t.name}: {t.description}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(dict(schema="fusedopt-bench-state/1", machine=machine, optimizer=label,
                           tolerance=TOLERANCE, quality=quality_rows, speed=speed_rows,
                           memory=mem), fh, indent=1)
    wrong = any(r["check"].startswith("WRONG") for r in speed_rows)
    return 1 if wrong else 0
