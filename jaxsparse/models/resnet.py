"""CIFAR ResNet-20 (He et al. 2016, Section 4.2) with batch norm and Kaiming-normal init.

Three stages of ``n = 3`` basic blocks with ``width, 2 width, 4 width`` channels (16-32-64),
stride 2 at the start of stages 2 and 3, a 1x1 conv + BN projection shortcut where the shape
changes, global average pooling and the output layer ``head``. Conv kernels use Kaiming normal
(fan-in, gain sqrt 2, untruncated) as in open_lth; BN scale 1, offset 0.

Layer names: ``stem``, ``stem_bn``, ``s{stage}b{block}`` (with ``conv1``, ``bn1``, ``conv2``,
``bn2`` and optionally ``proj``, ``proj_bn``), ``head``.

References:
  He et al. 2016, "Deep Residual Learning for Image Recognition" (CVPR).
  Frankle et al. 2020, "Linear Mode Connectivity and the Lottery Ticket Hypothesis" (ICML).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

KAIMING = nnx.initializers.variance_scaling(2.0, "fan_in", "normal")
ZEROS = nnx.initializers.zeros_init()


def _conv(cin: int, cout: int, k: int, stride: int, rngs: nnx.Rngs) -> nnx.Conv:
    return nnx.Conv(cin, cout, kernel_size=(k, k), strides=(stride, stride), padding="SAME",
                    use_bias=False, kernel_init=KAIMING, rngs=rngs)


def _bn(c: int, rngs: nnx.Rngs) -> nnx.BatchNorm:
    # momentum 0.9 = PyTorch's 0.1 running-average rate, as in the reference code.
    return nnx.BatchNorm(c, momentum=0.9, epsilon=1e-5, rngs=rngs)


class BasicBlock(nnx.Module):
    """Two 3x3 conv + BN layers with an identity or 1x1-projection shortcut."""

    def __init__(self, cin: int, cout: int, stride: int, *, rngs: nnx.Rngs):
        self.conv1 = _conv(cin, cout, 3, stride, rngs)
        self.bn1 = _bn(cout, rngs)
        self.conv2 = _conv(cout, cout, 3, 1, rngs)
        self.bn2 = _bn(cout, rngs)
        self.has_proj = stride != 1 or cin != cout
        if self.has_proj:
            self.proj = _conv(cin, cout, 1, stride, rngs)
            self.proj_bn = _bn(cout, rngs)

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        ura = not train
        y = nnx.relu(self.bn1(self.conv1(x), use_running_average=ura))
        y = self.bn2(self.conv2(y), use_running_average=ura)
        short = self.proj_bn(self.proj(x), use_running_average=ura) if self.has_proj else x
        return nnx.relu(y + short)


class ResNet(nnx.Module):
    """CIFAR ResNet of depth ``6 n + 2`` (ResNet-20: ``n=3``).

    Args:
      depth: 20, 32, 44, 56, 110 ... (``(depth - 2) % 6 == 0``).
      input_shape: one example's shape (H, W, C).
      num_classes: width of ``head``.
      width: channels of the first stage (16 in the paper).
      rngs: ``nnx.Rngs`` for the initialisation.

    >>> model = ResNet(depth=8, input_shape=(8, 8, 1), width=4, rngs=nnx.Rngs(0))
    >>> model(jnp.zeros((2, 8, 8, 1)), train=True).shape
    (2, 10)
    """

    def __init__(
        self,
        *,
        depth: int = 20,
        input_shape: Sequence[int] = (32, 32, 3),
        num_classes: int = 10,
        width: int = 16,
        rngs: nnx.Rngs,
    ):
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 with n >= 1, got {depth}")
        h, w, c = (int(d) for d in input_shape)
        n = (depth - 2) // 6
        self.config = dict(depth=int(depth), input_shape=(h, w, c),
                           num_classes=int(num_classes), width=int(width))
        self.stem = _conv(c, width, 3, 1, rngs)
        self.stem_bn = _bn(width, rngs)
        cin = width
        for s in range(3):
            cout = width * 2**s
            for b in range(n):
                stride = 2 if (s > 0 and b == 0) else 1
                setattr(self, f"s{s}b{b}", BasicBlock(cin, cout, stride, rngs=rngs))
                cin = cout
        self.head = nnx.Linear(cin, num_classes, kernel_init=KAIMING, bias_init=ZEROS, rngs=rngs)

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        n = (self.config["depth"] - 2) // 6
        x = nnx.relu(self.stem_bn(self.stem(x), use_running_average=not train))
        for s in range(3):
            for b in range(n):
                x = getattr(self, f"s{s}b{b}")(x, train=train)
        return self.head(jnp.mean(x, axis=(1, 2)))


def resnet20(*, key: jax.Array, **kwargs) -> ResNet:
    """CIFAR ResNet-20 (16-32-64, BN), freshly initialised from ``key``."""
    return ResNet(depth=20, rngs=nnx.Rngs(key), **kwargs)
