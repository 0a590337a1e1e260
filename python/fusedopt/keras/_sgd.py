from __future__ import annotations

import keras

from fusedopt.keras._base import FusedCall, FusedOptimizerMixin


@keras.saving.register_keras_serializable(package="fusedopt")
class SGD(FusedOptimizerMixin, keras.optimizers.SGD):
    """Drop-in for ``keras.optimizers.SGD`` running fused kernels.

    Same constructor, defaults, ``get_config()``, slot variables ("momentum",
    created only when ``momentum != 0``) and numbers as the built-in class;
    each training step makes one ``Fusedopt>ApplySGD`` call per
    (device, dtype) group of variables, with weight decay fused in.

    Two arguments beyond the built-in's (in ``get_config()`` only when not
    default): ``sparse_mode`` and ``clip_after_aggregation`` (see
    ``FusedOptimizerMixin``).
    """

    _fused_call = FusedCall(
        "apply_sgd",
        # (Keras makes the momentum slots only when momentum != 0.)
        slots={"momenta": ("momentums", lambda opt: opt.momentum != 0)},
        hypers={"momentum": "momentum",
                "nesterov": lambda opt: bool(opt.nesterov) and opt.momentum != 0},
    )


SGD.__doc__ = (SGD.__doc__ or "") + "\n" + (keras.optimizers.SGD.__doc__ or "")
