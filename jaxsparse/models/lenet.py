"""LeNet-300-100: the fully connected MNIST network of the lottery-ticket papers.

784-300-100-10 with ReLU, Glorot-normal kernels and zero biases. Layer names are ``fc0``,
``fc1`` and ``head`` (the output layer) in both the NNX and the Linen version, so the same
path rules (e.g. "prune the output layer at 10%": ``("head", 0.1)``) serve both.

References:
  LeCun et al. 1998, "Gradient-based learning applied to document recognition".
  Frankle & Carbin 2019, "The Lottery Ticket Hypothesis" (ICLR), Figure 2 / Appendix.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
from flax import linen as nn
from flax import nnx

GLOROT = nnx.initializers.glorot_normal()
ZEROS = nnx.initializers.zeros_init()


class LeNet300(nnx.Module):
    """LeNet-300-100 (NNX). Input NHWC images (or already flat vectors), output logits.

    Args:
      input_shape: one example's shape, e.g. ``(28, 28, 1)`` (MNIST) or ``(8, 8, 1)`` (digits).
      num_classes: width of the output layer ``head``.
      hidden: hidden widths; ``(300, 100)`` is the paper's.
      rngs: ``nnx.Rngs`` for the initialisation.

    >>> model = LeNet300(input_shape=(8, 8, 1), rngs=nnx.Rngs(0))
    >>> model(jnp.zeros((2, 8, 8, 1))).shape
    (2, 10)
    """

    def __init__(
        self,
        *,
        input_shape: Sequence[int] = (28, 28, 1),
        num_classes: int = 10,
        hidden: Sequence[int] = (300, 100),
        rngs: nnx.Rngs,
    ):
        # Constructor arguments, kept so `models.functional` can re-initialise from a key.
        self.config = dict(
            input_shape=tuple(input_shape), num_classes=int(num_classes), hidden=tuple(hidden)
        )
        fan_in = 1
        for d in input_shape:
            fan_in *= int(d)
        widths = [fan_in, *hidden]
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
            setattr(self, f"fc{i}",
                    nnx.Linear(a, b, kernel_init=GLOROT, bias_init=ZEROS, rngs=rngs))
        self.head = nnx.Linear(widths[-1], num_classes, kernel_init=GLOROT, bias_init=ZEROS,
                               rngs=rngs)

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        del train  # no dropout / batch norm
        x = x.reshape(x.shape[0], -1)
        for i in range(len(self.config["hidden"])):
            x = nnx.relu(getattr(self, f"fc{i}")(x))
        return self.head(x)


class LeNet300Linen(nn.Module):
    """LeNet-300-100 as a Linen module (same layer names and init as :class:`LeNet300`).

    >>> m = LeNet300Linen(input_shape=(8, 8, 1))
    >>> params = m.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))["params"]
    >>> sorted(params)
    ['fc0', 'fc1', 'head']
    """

    input_shape: Sequence[int] = (28, 28, 1)
    num_classes: int = 10
    hidden: Sequence[int] = (300, 100)

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        del train
        x = x.reshape(x.shape[0], -1)
        for i, width in enumerate(self.hidden):
            x = nn.relu(nn.Dense(width, kernel_init=GLOROT, bias_init=ZEROS, name=f"fc{i}")(x))
        return nn.Dense(self.num_classes, kernel_init=GLOROT, bias_init=ZEROS, name="head")(x)


def lenet300(*, key: jax.Array, **kwargs) -> LeNet300:
    """A freshly initialised :class:`LeNet300` (keyword arguments as the class)."""
    return LeNet300(rngs=nnx.Rngs(key), **kwargs)


__all__ = ["LeNet300", "LeNet300Linen", "lenet300"]
