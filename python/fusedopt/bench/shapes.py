"""The benchmark's one table of model shapes (lists of trainable-variable
shapes), in plain Python: no TensorFlow, so the GPU suite (on machines
without it) and the CPU suites time the very same lists.

``resnet50()`` is ResNet-50 as Keras builds it
(``keras.applications.ResNet50(weights=None).trainable_variables``: every
convolution has a bias), 214 tensors, 25,583,592 elements, in Keras' order;
tests/test_bench_cli.py checks it against Keras itself. The 161-tensor list
the GPU benchmark used before was torchvision's layout (convolutions without
biases, 25,557,032 elements): not what a Keras model trains.
"""

from __future__ import annotations

import math

Shape = tuple[int, ...]


def resnet50() -> list[Shape]:
    """ResNet-50's 214 trainable-variable shapes in Keras' order (the
    functional graph's topological order): per convolution its kernel (HWIO)
    and bias, per batch norm its gamma and beta. In a stage's first block the
    projection shortcut's convolution (``_0_conv``) comes after ``_2_bn``,
    beside ``_3_conv``, and the two batch norms ``_0_bn``, ``_3_bn`` follow;
    the classifier last."""
    def conv(k: int, cin: int, cout: int) -> list[Shape]:
        return [(k, k, cin, cout), (cout,)]  # kernel, bias

    def bn(c: int) -> list[Shape]:
        return [(c,), (c,)]  # gamma, beta

    shapes = conv(7, 3, 64) + bn(64)
    cin = 64
    for blocks, mid, out in [(3, 64, 256), (4, 128, 512), (6, 256, 1024), (3, 512, 2048)]:
        for b in range(blocks):
            shapes += conv(1, cin, mid) + bn(mid) + conv(3, mid, mid) + bn(mid)
            if b == 0:  # the projection shortcut
                shapes += conv(1, cin, out) + conv(1, mid, out) + bn(out) + bn(out)
            else:
                shapes += conv(1, mid, out) + bn(out)
            cin = out
    return shapes + [(2048, 1000), (1000,)]


def bert_base() -> list[Shape]:
    h, f = 768, 3072
    shapes: list[Shape] = [(30522, h), (512, h), (2, h), (h,), (h,)]
    for _ in range(12):
        shapes += [(h, h), (h,)] * 4 + [(h,), (h,), (h, f), (f,), (f, h), (h,), (h,), (h,)]
    return shapes + [(h, h), (h,)]


def recommender() -> list[Shape]:
    return [(1_000_000, 64), (200_000, 32), (50_000, 16), (112, 512), (512,), (512, 256), (256,),
            (256, 1), (1,)]


# name -> (label, shapes): the models suite's --models, and the GPU suite's workload.
MODELS = {
    "resnet50": ("ResNet-50", resnet50),
    "bert-base": ("BERT-base", bert_base),
    "recommender": ("recommender", recommender),
}


def mixed(scale: float = 1.0, count: int = 1000, seed: int = 1) -> list[Shape]:
    """`count` tensors with sizes log-uniform from 16 to 2**18 elements (times
    `scale`), a fixed draw: the many-tensor workload of the CUDA issue."""
    import numpy as np

    r = np.random.default_rng(seed)
    sizes = np.exp(r.uniform(np.log(16), np.log(2**18), size=count)) * scale
    return [(max(1, int(n)),) for n in sizes]


def scaled(shapes: list[Shape], scale: float) -> list[Shape]:
    """Each shape with every dimension times scale**(1/rank) (at least 1):
    the same list of tensors, about `scale` times the elements."""
    if scale >= 1:
        return list(shapes)
    return [tuple(max(1, int(round(d * scale ** (1 / len(s))))) for d in s) for s in shapes]


def elements(shapes: list[Shape]) -> int:
    return sum(math.prod(s) for s in shapes)
