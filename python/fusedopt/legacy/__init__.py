"""Fused optimizers for tf_keras (Keras 2): OptimizerV2 subclasses.

``fusedopt.legacy.<Name>`` is a drop-in for ``tf_keras.optimizers.legacy.<Name>``
(and for ``tf.keras.optimizers.legacy.<Name>`` under ``TF_USE_LEGACY_KERAS=1``):
same constructor, ``get_config()``, slot names and numbers, so checkpoints are
interchangeable. Each step makes one fused op call per (device, dtype) group of
variables (Note [fused legacy step] in ``_base``).

Needs the optional ``tf-keras`` package: ``pip install "fusedopt[legacy]"``.
"""

from __future__ import annotations

import textwrap as _textwrap

try:
    import tf_keras  # noqa: F401
except ImportError as e:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "fusedopt.legacy needs the tf-keras package (Keras 2 for TensorFlow 2.21), which is not "
        "installed. Install it with: pip install \"fusedopt[legacy]\"  (or: pip install "
        "\"tf-keras>=2.21,<2.22\"). The rest of fusedopt (fusedopt.ops, fusedopt.keras) works "
        f"without it. ({e})"
    ) from e

from fusedopt.legacy import _optimizers  # noqa: E402
from fusedopt.legacy._optimizers import *  # noqa: E402,F401,F403

__all__ = list(_optimizers.__all__)

__doc__ += "\n" + _textwrap.fill(  # noqa: A001
    f"Classes: {', '.join(__all__)}. Those without a tf_keras legacy built-in ("
    + ", ".join(n for n in __all__ if globals()[n]._fused_builtin() is None)
    + ") follow Keras 3's update rules with OptimizerV2's conventions.", 79) + "\n"
