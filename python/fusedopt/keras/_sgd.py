from __future__ import annotations

import keras

from fusedopt import ops
from fusedopt.keras._base import FusedOptimizerMixin


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

    def _fused_apply(self, variables, grads, learning_rate, weight_decay, **options):
        momenta = None
        if self.momentum != 0:
            momenta = [self.momentums[self._get_variable_index(v)] for v in variables]
        return ops.apply_sgd(
            variables,
            grads,
            learning_rate,
            momenta=momenta,
            momentum=self.momentum,
            nesterov=bool(self.nesterov) and momenta is not None,
            weight_decay=weight_decay,
            **options,
        )


SGD.__doc__ = (SGD.__doc__ or "") + "\n" + (keras.optimizers.SGD.__doc__ or "")
