"""Conv-2 / Conv-4 / Conv-6: the VGG-like CIFAR-10 networks of the lottery-ticket paper.

3x3 same-padding convolutions in blocks ``64, 64, pool [, 128, 128, pool [, 256, 256, pool]]``
followed by fully connected ``256, 256`` and the output layer ``head``; ReLU, Glorot-normal
init, zero biases, no batch norm. Layer names: ``conv0 ... conv{2n-1}``, ``fc0``, ``fc1``,
``head``. ``width`` scales the channel counts (``width=64`` is the paper's first block), so
small versions fit the 8x8 digits data.

References:
  Frankle & Carbin 2019, "The Lottery Ticket Hypothesis" (ICLR), Figure 2.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
from flax import nnx

GLOROT = nnx.initializers.glorot_normal()
ZEROS = nnx.initializers.zeros_init()


def _max_pool(x: jax.Array) -> jax.Array:
    # SAME padding so a 1x1 feature map (tiny inputs such as 8x8 digits) stays 1x1.
    return nnx.max_pool(x, window_shape=(2, 2), strides=(2, 2), padding="SAME")


class ConvNet(nnx.Module):
    """Conv-2/4/6 family (NNX): ``blocks`` conv blocks of two convs each, then FC layers.

    Args:
      blocks: 1, 2 or 3 (Conv-2, Conv-4, Conv-6).
      input_shape: one example's shape (H, W, C); ``(32, 32, 3)`` for CIFAR-10.
      num_classes: width of ``head``.
      width: channels of the first block (doubles per block); 64 in the paper.
      fc: widths of the hidden fully connected layers; ``(256, 256)`` in the paper.
      rngs: ``nnx.Rngs`` for the initialisation.

    >>> model = ConvNet(blocks=2, input_shape=(8, 8, 1), width=8, fc=(32, 32), rngs=nnx.Rngs(0))
    >>> model(jnp.zeros((2, 8, 8, 1))).shape
    (2, 10)
    """

    def __init__(
        self,
        *,
        blocks: int,
        input_shape: Sequence[int] = (32, 32, 3),
        num_classes: int = 10,
        width: int = 64,
        fc: Sequence[int] = (256, 256),
        rngs: nnx.Rngs,
    ):
        if blocks not in (1, 2, 3):
            raise ValueError(f"blocks must be 1, 2 or 3 (Conv-2/4/6), got {blocks}")
        h, w, c = (int(d) for d in input_shape)
        self.config = dict(blocks=int(blocks), input_shape=(h, w, c),
                           num_classes=int(num_classes), width=int(width), fc=tuple(fc))
        chans = c
        for b in range(blocks):
            out = width * 2**b
            for j in range(2):
                setattr(self, f"conv{2 * b + j}", nnx.Conv(
                    chans, out, kernel_size=(3, 3), padding="SAME", kernel_init=GLOROT,
                    bias_init=ZEROS, rngs=rngs))
                chans = out
            h, w = -(-h // 2), -(-w // 2)
        widths = [h * w * chans, *fc]
        for i, (a, b_) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
            setattr(self, f"fc{i}", nnx.Linear(a, b_, kernel_init=GLOROT, bias_init=ZEROS,
                                                rngs=rngs))
        self.head = nnx.Linear(widths[-1], num_classes, kernel_init=GLOROT, bias_init=ZEROS,
                               rngs=rngs)

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        del train  # no dropout / batch norm
        for b in range(self.config["blocks"]):
            x = nnx.relu(getattr(self, f"conv{2 * b}")(x))
            x = nnx.relu(getattr(self, f"conv{2 * b + 1}")(x))
            x = _max_pool(x)
        x = x.reshape(x.shape[0], -1)
        for i in range(len(self.config["fc"])):
            x = nnx.relu(getattr(self, f"fc{i}")(x))
        return self.head(x)


def conv2(*, key: jax.Array, **kwargs) -> ConvNet:
    """Conv-2 (one block of two 3x3 convs), freshly initialised from ``key``."""
    return ConvNet(blocks=1, rngs=nnx.Rngs(key), **kwargs)


def conv4(*, key: jax.Array, **kwargs) -> ConvNet:
    """Conv-4 (two blocks), freshly initialised from ``key``."""
    return ConvNet(blocks=2, rngs=nnx.Rngs(key), **kwargs)


def conv6(*, key: jax.Array, **kwargs) -> ConvNet:
    """Conv-6 (three blocks), freshly initialised from ``key``."""
    return ConvNet(blocks=3, rngs=nnx.Rngs(key), **kwargs)
