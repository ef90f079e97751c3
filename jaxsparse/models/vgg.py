"""VGG-16 with batch norm for CIFAR (the open_lth / Frankle et al. 2020 variant).

13 3x3 conv + BN + ReLU layers in the plan ``64,64,M,128,128,M,256x3,M,512x3,M,512x3``
(``M`` = 2x2 max pool), global average pooling and one output layer ``head``. Kaiming-normal
conv init. ``width`` scales every channel count (64 = the paper's), so it fits 8x8 digits.
Layer names: ``conv{i}``, ``bn{i}`` for i = 0..12, ``head``.

References:
  Simonyan & Zisserman 2015, "Very Deep Convolutional Networks" (ICLR).
  Frankle et al. 2020, "Linear Mode Connectivity and the Lottery Ticket Hypothesis" (ICML).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

KAIMING = nnx.initializers.variance_scaling(2.0, "fan_in", "normal")
ZEROS = nnx.initializers.zeros_init()
PLAN = (1, 1, "M", 2, 2, "M", 4, 4, 4, "M", 8, 8, 8, "M", 8, 8, 8)  # multiples of width


class VGG16(nnx.Module):
    """VGG-16 with BN (NNX).

    Args:
      input_shape: one example's shape (H, W, C).
      num_classes: width of ``head``.
      width: channels of the first conv (64 in the paper); others scale with it.
      rngs: ``nnx.Rngs`` for the initialisation.

    >>> model = VGG16(input_shape=(8, 8, 1), width=2, rngs=nnx.Rngs(0))
    >>> model(jnp.zeros((2, 8, 8, 1))).shape
    (2, 10)
    """

    def __init__(
        self,
        *,
        input_shape: Sequence[int] = (32, 32, 3),
        num_classes: int = 10,
        width: int = 64,
        rngs: nnx.Rngs,
    ):
        h, w, c = (int(d) for d in input_shape)
        self.config = dict(input_shape=(h, w, c), num_classes=int(num_classes), width=int(width))
        i = 0
        for item in PLAN:
            if item == "M":
                continue
            out = width * item
            setattr(self, f"conv{i}", nnx.Conv(c, out, kernel_size=(3, 3), padding="SAME",
                                               kernel_init=KAIMING, bias_init=ZEROS, rngs=rngs))
            setattr(self, f"bn{i}", nnx.BatchNorm(out, momentum=0.9, epsilon=1e-5, rngs=rngs))
            c, i = out, i + 1
        self.head = nnx.Linear(c, num_classes, kernel_init=KAIMING, bias_init=ZEROS, rngs=rngs)

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        i = 0
        for item in PLAN:
            if item == "M":
                # SAME padding keeps a 1x1 map 1x1 for tiny inputs.
                x = nnx.max_pool(x, window_shape=(2, 2), strides=(2, 2), padding="SAME")
                continue
            x = getattr(self, f"bn{i}")(getattr(self, f"conv{i}")(x), use_running_average=not train)
            x, i = nnx.relu(x), i + 1
        return self.head(jnp.mean(x, axis=(1, 2)))


def vgg16(*, key: jax.Array, **kwargs) -> VGG16:
    """VGG-16 (BN), freshly initialised from ``key``."""
    return VGG16(rngs=nnx.Rngs(key), **kwargs)
