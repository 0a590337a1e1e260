"""Keras-level benchmark: ``optimizer.apply`` of fusedopt.keras.Adam against
keras.optimizers.Adam, in tf.function without XLA (Keras' CPU default) and
with XLA (jit_compile=True), float32.

Suites: one variable of 16M elements; 200 variables x 10,000 elements. Each
contender is a tf.function running STEPS_PER_CALL optimizer steps in a graph
loop; rounds are interleaved; the median per-step time is reported.

Usage: python -m fusedopt.bench.keras_apply [--repeats R] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import fusedopt  # noqa: E402
import fusedopt.keras  # noqa: E402
from fusedopt.bench.multi import measure  # noqa: E402

STEPS_PER_CALL = 20


def contender(cls, shapes, rng, jit):
    variables = [keras.Variable(rng.standard_normal(s).astype(np.float32)) for s in shapes]
    grads = [tf.constant(rng.standard_normal(s).astype(np.float32)) for s in shapes]
    opt = cls(learning_rate=1e-3)
    opt.build(variables)

    @tf.function(jit_compile=jit)
    def run():
        for _ in tf.range(STEPS_PER_CALL):
            opt.apply(grads, variables)

    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="fusedopt Keras optimizer benchmark")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--json", type=str, default=None)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    info = fusedopt.build_info()
    print(f"fusedopt {info['fusedopt_version']}, TensorFlow {info['tensorflow_running']}, "
          f"Keras {keras.__version__}, {os.cpu_count()} cores; float32 Adam.apply, per-step median")
    results = {}
    for name, shapes in [("1 x 16M", [(16 * 1024 * 1024,)]), ("200 x 10,000", [(10_000,)] * 200)]:
        fns = {
            "fusedopt.keras.Adam": contender(fusedopt.keras.Adam, shapes, rng, False),
            "keras.optimizers.Adam": contender(keras.optimizers.Adam, shapes, rng, False),
            "keras.optimizers.Adam (XLA)": contender(keras.optimizers.Adam, shapes, rng, True),
        }
        med = {k: v * 1e3 for k, v in
               measure(fns, args.repeats, args.warmup, name, STEPS_PER_CALL).items()}
        base = med["fusedopt.keras.Adam"]
        results[name] = med
        print(f"\n{name}:")
        for k, v in med.items():
            ratio = "" if k.startswith("fusedopt") else f"  (fusedopt is {v / base:.2f}x faster)"
            print(f"  {k:<30}{v:9.2f} ms{ratio}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(dict(build_info=info, per_step_ms=results), fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
