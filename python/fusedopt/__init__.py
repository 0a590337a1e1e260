"""fusedopt: fused optimizer kernels for TensorFlow.

Hand-written CPU (and CUDA) kernels that apply an optimizer update to many
variables in one pass over memory, and drop-in Keras optimizers that use them::

    import fusedopt.keras
    # fusedopt.keras.<Name>(...) in the place of keras.optimizers.<Name>(...),
    # or the fused twin of a Keras optimizer instance:
    model.compile(optimizer=fusedopt.keras.from_keras(keras_optimizer), ...)

Importing this package is cheap: TensorFlow and the op library are loaded on
first use of :mod:`fusedopt.ops` or :mod:`fusedopt.keras`. :mod:`fusedopt.jax`
(experimental) calls the same kernels from JAX, without TensorFlow.
"""

from __future__ import annotations

import importlib
from typing import Any

from fusedopt._version import __version__

__all__ = ["__version__", "build_info", "ops", "keras"]

_LAZY_SUBMODULES = ("ops", "keras", "jax")


def build_info() -> dict[str, Any]:
    """Describes how the loaded op library was built and what it runs here.

    Returns a dict with: ``fusedopt_version``, ``tensorflow_built_against``,
    ``tensorflow_running``, ``cuda`` (whether CUDA kernels are compiled in),
    ``cuda_version``, ``cuda_architectures``, ``cuda_usable`` and
    ``cuda_status`` (whether the CUDA kernels can run in this process, and if
    not why: no device, a driver older than the CUDA runtime linked in, or a
    build without CUDA; GPU variables then take the Keras built-in update,
    after one warning), ``cpu_simd_compiled`` (the CPU
    instruction-set variants in the library), ``cpu_simd_selected`` (the one
    used on this CPU), ``low_precision_state`` (the rules that take
    ``state_dtype`` "bfloat16" and "int8", each with its slots that hold
    non-negative values), ``compiler`` and ``library_path``.

    Raises:
        ImportError: if the op library is missing or was built for another
            TensorFlow version.
    """
    from fusedopt import _loader

    return _loader.build_info()


def __getattr__(name: str) -> Any:
    if name in _LAZY_SUBMODULES:
        return importlib.import_module(f"fusedopt.{name}")
    raise AttributeError(f"module 'fusedopt' has no attribute {name!r}")
