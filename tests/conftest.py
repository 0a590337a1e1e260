"""Shared test helpers: dtypes, tolerances, random inputs, storage rounding."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import ml_dtypes
import numpy as np
import pytest

DTYPES = ["float16", "bfloat16", "float32", "float64"]

# One tolerance per dtype (relative, with the same absolute floor for values
# near zero): one rounding of the stored result.
TOLERANCE = {"float64": 1e-12, "float32": 1e-6, "float16": 1e-3, "bfloat16": 1e-2}

# Sizes that exercise tails, empties and several chunks.
SHAPES = [(), (0,), (1,), (7,), (4097,), (3, 5, 7), (70001,)]


def np_dtype(name: str):
    return ml_dtypes.bfloat16 if name == "bfloat16" else np.dtype(name)


def tf_dtype(name: str):
    """The tf.DType of `name` (TensorFlow is imported here, not at collection,
    so TensorFlow-free tests such as test_native_module run without it)."""
    import tensorflow as tf

    return tf.as_dtype(name)


def rounded(x, dtype: str) -> np.ndarray:
    """x rounded to `dtype` storage (nearest even), back in float64."""
    return np.asarray(x, np.float64).astype(np.float32 if dtype != "float64" else np.float64).astype(
        np_dtype(dtype)
    ).astype(np.float64)


def random_array(rng: np.random.Generator, shape, dtype: str, scale: float = 1.0) -> np.ndarray:
    """Fresh random values (never all zeros), rounded to `dtype`, as float64."""
    x = rng.standard_normal(shape) * scale
    x = np.where(np.abs(x) < 1e-3, 1e-3, x)  # keep every element away from zero
    return rounded(x, dtype)


def assert_close(actual, expected, dtype: str, what: str = "", cond: float = 1.0) -> None:
    """Within the dtype's tolerance (times a stated condition factor)."""
    tol = TOLERANCE[dtype] * cond
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    scale = max(1.0, float(np.max(np.abs(expected)))) if expected.size else 1.0
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol * scale, err_msg=what)


@pytest.fixture
def rng() -> np.random.Generator:
    """A freshly seeded generator per test: new inputs every run.

    The seed is printed (shown by pytest on failure); set FUSEDOPT_TEST_SEED
    to replay a failure.
    """
    seed = int(os.environ.get("FUSEDOPT_TEST_SEED") or np.random.SeedSequence().entropy % 2**63)
    print(f"FUSEDOPT_TEST_SEED={seed}")
    return np.random.default_rng(seed)
