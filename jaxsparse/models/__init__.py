"""Reference architectures of the sparsity papers, NNX first-class, plus a functional view.

Every model is an ``nnx.Module`` whose ``__call__(x, *, train=False)`` takes NHWC images and
returns logits; the output layer is always named ``head`` (so ``("head", 0.1)`` is the
lottery paper's "output layer at 10%" rule on every model). Constructors take
``input_shape`` / ``num_classes`` / a width so the same architectures fit 8x8 digits.

=============  ==========================================  ===================================
factory        model                                       init
=============  ==========================================  ===================================
``lenet300``   LeNet-300-100 (784-300-100-10, ReLU)         Glorot normal, zero biases
``gpt``        decoder-only byte-level GPT ([B, T] tokens)  normal(0.02), zero biases
``conv2/4/6``  Conv-2/4/6 (Frankle & Carbin 2019), no BN    Glorot normal, zero biases
``resnet20``   CIFAR ResNet-20 (16-32-64, BN)              Kaiming normal (fan-in)
``vgg16``      VGG-16 with BN                              Kaiming normal (fan-in)
=============  ==========================================  ===================================

:func:`functional` turns a model into pure functions on plain nested dicts of arrays, the form
the trainer, the pruners, ``jax.vmap`` populations and checkpoints use:

>>> fn = functional(lenet300(key=jax.random.key(0), input_shape=(8, 8, 1)))
>>> logits, _ = fn.apply_fn(fn.params, fn.model_state, jnp.zeros((2, 8, 8, 1)), train=False,
...                         key=jax.random.key(1))
>>> logits.shape
(2, 10)
>>> params, state = jax.vmap(fn.init_fn)(jax.random.split(jax.random.key(0), 5))  # population
>>> params["fc0"]["kernel"].shape
(5, 64, 300)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
from flax import linen as nn
from flax import nnx

from jaxsparse import flax_utils
from jaxsparse.models.conv import ConvNet, conv2, conv4, conv6
from jaxsparse.models.lenet import LeNet300, LeNet300Linen, lenet300
from jaxsparse.models.resnet import ResNet, resnet20
from jaxsparse.models.transformer import Transformer, gpt
from jaxsparse.models.vgg import VGG16, vgg16
from jaxsparse.typing import PyTree

__all__ = [
    "ConvNet", "Functional", "LeNet300", "LeNet300Linen", "ResNet", "VGG16", "conv2", "conv4",
    "conv6", "functional", "gpt", "lenet300", "resnet20", "vgg16", "Transformer",
]


class Functional(NamedTuple):
    """A model as pure functions on nested dicts (see :func:`functional`).

    Attributes:
      apply_fn: ``apply_fn(params, model_state, x, *, train: bool, key) -> (logits,
        new_model_state)``. With ``train=True`` batch norm uses batch statistics and the
        returned state holds the updated running averages; with ``train=False`` the state
        comes back unchanged. ``key`` feeds stochastic layers (none in the reference models).
      params: the trainable parameters (``nnx.Param`` leaves) as a nested dict of arrays.
      model_state: every other variable (batch-norm statistics) as a nested dict; ``{}``
        for models without any.
      init_fn: ``init_fn(key) -> (params, model_state)``: a fresh draw with the model's own
        (paper) initialisation; pure, jittable and vmappable over keys.
    """

    apply_fn: Callable[..., tuple[jax.Array, PyTree]]
    params: PyTree
    model_state: PyTree
    init_fn: Callable[[jax.Array], tuple[PyTree, PyTree]]


_pure = flax_utils.to_pure  # nnx.to_pure_dict (flax >= 0.12) or State.to_pure_dict (0.11)
_replace = flax_utils.replace_by_pure


def _nnx_functional(model: nnx.Module, init: Callable[[jax.Array], nnx.Module] | None):
    if init is None:
        config = getattr(model, "config", None)
        if not isinstance(config, dict):
            raise ValueError(
                f"{type(model).__name__} has no `config` dict of constructor arguments; pass "
                "`init=lambda key: MyModel(..., rngs=nnx.Rngs(key))` to functional()"
            )
        cls = type(model)
        init = lambda key: cls(**config, rngs=nnx.Rngs(key))  # noqa: E731
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    # Shape templates (only their structure is used) to rebuild the module from pure dicts.
    p_template = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), params)
    s_template = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), rest)

    def apply_fn(params: PyTree, model_state: PyTree, x: jax.Array, *, train: bool,
                 key: jax.Array | None = None) -> tuple[jax.Array, PyTree]:
        del key  # the reference models are deterministic given (params, state, x, train)
        # Fresh State copies made inside the current trace: on flax 0.11, Variables split
        # from a module built outside the trace refuse batch-norm updates under jit
        # ("Cannot mutate BatchStat from a different trace level").
        p_state = jax.tree.map(lambda a: a, p_template)
        s_state = jax.tree.map(lambda a: a, s_template)
        _replace(p_state, params)
        _replace(s_state, model_state)
        m = nnx.merge(graphdef, p_state, s_state)
        logits = m(x, train=train)
        new_state = _pure(nnx.state(m, nnx.Not(nnx.Param))) if train else model_state
        return logits, new_state

    def init_fn(key: jax.Array) -> tuple[PyTree, PyTree]:
        _, p, s = nnx.split(init(key), nnx.Param, ...)
        return _pure(p), _pure(s)

    return Functional(apply_fn, _pure(params), _pure(rest), init_fn)


def _linen_functional(module: nn.Module, input_shape: Sequence[int] | None, key: jax.Array):
    shape = input_shape if input_shape is not None else getattr(module, "input_shape", None)
    if shape is None:
        raise ValueError("functional(linen_module) needs input_shape=(H, W, C) to initialise")
    sample = jax.numpy.zeros((1, *shape), jax.numpy.float32)

    def init_fn(key: jax.Array) -> tuple[PyTree, PyTree]:
        variables = dict(module.init(key, sample))
        params = variables.pop("params")
        return params, variables

    def apply_fn(params: PyTree, model_state: PyTree, x: jax.Array, *, train: bool,
                 key: jax.Array | None = None) -> tuple[jax.Array, PyTree]:
        del key
        variables = {"params": params, **model_state}
        if train and model_state:
            logits, new = module.apply(variables, x, train=True, mutable=list(model_state))
            return logits, dict(new)
        return module.apply(variables, x, train=train), model_state

    params, state = init_fn(key)
    return Functional(apply_fn, params, state, init_fn)


def functional(
    model: nnx.Module | nn.Module,
    *,
    init: Callable[[jax.Array], nnx.Module] | None = None,
    input_shape: Sequence[int] | None = None,
    key: jax.Array | None = None,
) -> Functional:
    """Pure ``apply_fn`` / ``init_fn`` and dict-valued ``params`` / ``model_state`` of a model.

    Args:
      model: an NNX module (one of ours, or any whose ``__call__(x, *, train)`` returns
        logits), or a Linen module (``__call__(x, *, train)``).
      init: for an NNX module that is not one of ours: ``init(key) -> module`` used by
        ``init_fn``. Ours re-create themselves from their ``config``.
      input_shape: Linen only: one example's shape for ``module.init`` (default: the
        module's ``input_shape`` attribute).
      key: Linen only: key for the returned ``params`` (default ``jax.random.key(0)``).

    Returns:
      :class:`Functional` ``(apply_fn, params, model_state, init_fn)``; ``params`` are the
      model's current values (for NNX) so ``functional(model).params`` is what you trained.
    """
    if isinstance(model, nnx.Module):
        return _nnx_functional(model, init)
    if isinstance(model, nn.Module):
        return _linen_functional(model, input_shape,
                                 jax.random.key(0) if key is None else key)
    raise TypeError(f"functional() expects an nnx.Module or a linen Module, got {type(model)}")
