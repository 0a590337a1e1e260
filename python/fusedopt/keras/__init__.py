"""Drop-in Keras 3 (tf.keras in TensorFlow 2.21) optimizers on fused kernels.

Swap the import and nothing else::

    optimizer = fusedopt.keras.SGD(learning_rate=0.1, momentum=0.9)

Each class subclasses the built-in of the same name: same arguments, defaults,
config, slot variables and checkpoints. See Note [fused Keras step] in
``fusedopt/keras/_base.py`` for when the fused kernels run.
"""

from fusedopt.keras._sgd import SGD

__all__ = ["SGD"]
