"""Trains a small MLP on scikit-learn's digits with fusedopt.keras.SGD.

The same model, data order and seed are trained with keras.optimizers.SGD
beside it, and the script reports both: the fused optimizer must reach the same
loss and accuracy (it computes the same update) while taking one fused op call
per step instead of several ops per variable.

Usage: python examples/train_digits.py [--epochs N] [--momentum M] [--nesterov]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

import fusedopt  # noqa: E402
import fusedopt.keras  # noqa: E402


def make_model(seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(10),
        ]
    )


class EpochPrinter(keras.callbacks.Callback):
    def __init__(self, label: str):
        super().__init__()
        self.label = label
        self.start = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        print(
            f"  {self.label:<28} epoch {epoch + 1:>2}  loss {logs['loss']:.4f}  "
            f"acc {logs['accuracy']:.4f}  val_acc {logs['val_accuracy']:.4f}  "
            f"({time.perf_counter() - self.start:.2f} s)",
            flush=True,
        )


def train(optimizer: keras.optimizers.Optimizer, label: str, data, epochs: int, seed: int):
    x_train, x_test, y_train, y_test = data
    model = make_model(seed)
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    hist = model.fit(
        x_train, y_train, batch_size=32, epochs=epochs, shuffle=False, verbose=0,
        validation_data=(x_test, y_test), callbacks=[EpochPrinter(label)],
    )
    _, test_acc = model.evaluate(x_test, y_test, verbose=0)
    return model, hist.history, test_acc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=0.05)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--nesterov", action="store_true")
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    info = fusedopt.build_info()
    print(
        f"fusedopt {info['fusedopt_version']} (TensorFlow {info['tensorflow_running']}, "
        f"CPU kernels: {info['cpu_simd_selected']}, CUDA kernels: {info['cuda']})"
    )
    x, y = load_digits(return_X_y=True)
    data = train_test_split(
        (x / 16.0).astype(np.float32), y.astype(np.int64), test_size=0.25, random_state=args.seed
    )
    print(f"digits: {len(data[0])} training and {len(data[1])} test images of 8x8 pixels\n")

    cfg = dict(
        learning_rate=args.learning_rate, momentum=args.momentum, nesterov=args.nesterov,
        weight_decay=args.weight_decay,
    )
    fused_model, fused_hist, fused_acc = train(
        fusedopt.keras.SGD(**cfg), "fusedopt.keras.SGD", data, args.epochs, args.seed
    )
    ref_model, ref_hist, ref_acc = train(
        keras.optimizers.SGD(**cfg), "keras.optimizers.SGD", data, args.epochs, args.seed
    )
    max_diff = max(
        float(np.max(np.abs(a.numpy() - b.numpy())))
        for a, b in zip(fused_model.weights, ref_model.weights)
    )
    print(
        f"\ntest accuracy: fusedopt.keras.SGD {fused_acc:.4f}, keras.optimizers.SGD {ref_acc:.4f}"
        f"\nfinal loss:    fusedopt.keras.SGD {fused_hist['loss'][-1]:.5f}, "
        f"keras.optimizers.SGD {ref_hist['loss'][-1]:.5f}"
        f"\nlargest weight difference between the two after training: {max_diff:.2e}"
    )
    ok = fused_acc > 0.9 and abs(fused_acc - ref_acc) < 0.01
    print("OK: the fused optimizer trains like the built-in one" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
