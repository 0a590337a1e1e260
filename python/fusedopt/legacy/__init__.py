"""Fused optimizers for tf_keras (Keras 2): OptimizerV2 subclasses.

``fusedopt.legacy.Adam`` is a drop-in for ``tf_keras.optimizers.legacy.Adam``
(and for ``tf.keras.optimizers.legacy.Adam`` under ``TF_USE_LEGACY_KERAS=1``):
same constructor, ``get_config()``, slot names and numbers, so checkpoints are
interchangeable. Each step makes one fused op call per (device, dtype) group of
variables (Note [fused legacy step] in ``_base``).

Classes: SGD, Adam, AdamW, Nadam, Adamax, RMSprop, Adagrad, Adadelta, Ftrl,
Lion, Lamb. AdamW, Lion and Lamb have no tf_keras legacy built-in; they follow
Keras 3's update rules with OptimizerV2's conventions.

Needs the optional ``tf-keras`` package: ``pip install "fusedopt[legacy]"``.
"""

from __future__ import annotations

try:
    import tf_keras  # noqa: F401
except ImportError as e:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "fusedopt.legacy needs the tf-keras package (Keras 2 for TensorFlow 2.21), which is not "
        "installed. Install it with: pip install \"fusedopt[legacy]\"  (or: pip install "
        "\"tf-keras>=2.21,<2.22\"). The rest of fusedopt (fusedopt.ops, fusedopt.keras) works "
        f"without it. ({e})"
    ) from e

from fusedopt.legacy._optimizers import (  # noqa: E402
    SGD,
    Adadelta,
    Adagrad,
    Adam,
    Adamax,
    AdamW,
    Ftrl,
    Lamb,
    Lion,
    Nadam,
    RMSprop,
)

__all__ = ["SGD", "Adam", "AdamW", "Nadam", "Adamax", "RMSprop", "Adagrad", "Adadelta", "Ftrl",
           "Lion", "Lamb"]
