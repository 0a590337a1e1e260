"""Drop-in Keras 3 (tf.keras in TensorFlow 2.21) optimizers on fused kernels.

Swap the import and nothing else: ``fusedopt.keras.<Name>`` takes the place of
``keras.optimizers.<Name>``, with the same arguments. Each class subclasses
the built-in of the same name: same arguments, defaults, config, slot
variables and checkpoints. See Note [fused Keras step] in
``fusedopt/keras/_base.py`` for when the fused kernels run.
"""

from fusedopt.keras import _family
from fusedopt.keras._family import *  # noqa: F401,F403

__all__ = list(_family.__all__)

import keras as _keras  # noqa: E402

# Each class's built-in (its _fused_builtin()), in __all__'s order.
_FUSED_BY_BUILTIN = {cls._fused_builtin(): cls for cls in (globals()[n] for n in __all__)}


def from_keras(optimizer: _keras.optimizers.Optimizer, *, state_dtype: str = "float32",
               stochastic_rounding: bool = False) -> _keras.optimizers.Optimizer:
    """The fused equivalent of a built-in Keras optimizer instance.

    Same config; if ``optimizer`` is already built, the result is built on the
    same variables and takes over its state (iterations, learning rate, every
    slot), so training continues with the same numbers.

    With ``state_dtype`` "bfloat16" or "int8" (and ``stochastic_rounding``),
    the fused optimizer keeps its state in that format (see the classes'
    ``state_dtype``): a built optimizer's float32 slots are converted, rounded
    to bfloat16 or quantized (fusedopt.state), so training continues from
    the nearest low-precision state.

    Raises:
        ValueError: for an optimizer class fusedopt has no fused version of
            (the message lists the supported ones), or a state_dtype the
            class cannot have.
    """
    if type(optimizer) in _FUSED_BY_BUILTIN.values():
        if state_dtype == "float32" and not stochastic_rounding:
            return optimizer
        raise ValueError("from_keras converts a built-in optimizer; make the fused one with "
                         "state_dtype directly")
    cls = _FUSED_BY_BUILTIN.get(type(optimizer))
    if cls is None:
        supported = ", ".join(f"keras.optimizers.{c.__name__}" for c in _FUSED_BY_BUILTIN)
        raise ValueError(
            f"fusedopt has no fused version of {type(optimizer).__module__}."
            f"{type(optimizer).__name__}; supported: {supported}"
        )
    config = optimizer.get_config()
    if state_dtype != "float32":
        config["state_dtype"] = state_dtype
    if stochastic_rounding:
        config["stochastic_rounding"] = True
    fused = cls.from_config(config)
    if optimizer.built:
        fused.build(optimizer._trainable_variables)
        fused._fused_take_state(optimizer.variables)
    return fused


__all__.append("from_keras")
