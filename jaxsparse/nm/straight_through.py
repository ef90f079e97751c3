"""Training N:M networks from scratch: straight-through (STE) and SR-STE sparse weights.

* **One-shot + fine-tune (NVIDIA ASP)**: ``masks = nm_masks(trained_params, 2, 4)`` then train
  with those fixed masks (the engine's masked training / :func:`jaxsparse.masked`) on the
  original schedule. Nothing new is needed here beyond :func:`jaxsparse.nm.nm_masks`.
* **STE / SR-STE** (Zhou et al. 2021): the forward pass uses ``w * m(w)`` with the mask
  recomputed from ``|w|`` every step; the backward pass is straight-through, plus
  ``lambda_w * (1 - m) * w`` added to the dense weights' gradient (SR-STE; ``lambda_w = 0``
  is plain STE). :func:`sparse_weight` is a ``jax.custom_vjp`` leaf function and
  :func:`sr_ste` applies it to every prunable leaf of a params tree, so it drops into any
  loss: ``loss(sr_ste(params), batch)``. :func:`sr_ste_decay` is the same regulariser as an
  optax gradient transformation, for a forward pass that already uses plain STE.

References:
  Zhou et al. 2021 (ICLR), "Learning N:M Fine-grained Structured Sparse Neural Networks From
  Scratch" (SR-STE).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxsparse import rules as rules_lib
from jaxsparse.nm.axes import AxisRules
from jaxsparse.nm.masks import NM, check_nm, nm_mask
from jaxsparse.typing import Params

if TYPE_CHECKING:
    import optax

SR_STE_LAMBDA = 2e-4  # lambda_w of Zhou et al. 2021


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4))
def sparse_weight(w: jax.Array, n: int, m: int, axis: int, lambda_w: float) -> jax.Array:
    """``w`` with all but the ``n`` largest ``|w|`` per group of ``m`` along ``axis`` zeroed;
    straight-through gradient plus ``lambda_w * (1 - mask) * w`` (SR-STE).

    Args:
      w: a weight array.
      n, m, axis: the N:M structure (static).
      lambda_w: SR-STE decay of the pruned weights; ``0.0`` gives plain STE (static).

    Returns:
      ``where(mask, w, 0)``; its VJP maps a cotangent ``g`` to ``g + lambda_w * (1-mask) * w``.

    >>> g = jax.grad(lambda w: sparse_weight(w, 1, 2, 0, 0.5).sum())(jnp.array([1.0, 3.0]))
    >>> g  # kept: 1; pruned: 1 + 0.5 * 1.0
    Array([1.5, 1. ], dtype=float32)

    References:
      Zhou et al. 2021 (ICLR), SR-STE.
    """
    mask = nm_mask(w, n, m, axis=axis)
    return jnp.where(mask, w, jnp.zeros((), w.dtype))


def _sparse_weight_fwd(w, n, m, axis, lambda_w):
    mask = nm_mask(w, n, m, axis=axis)
    return jnp.where(mask, w, jnp.zeros((), w.dtype)), (mask, w)


def _sparse_weight_bwd(n, m, axis, lambda_w, res, g):
    mask, w = res
    if lambda_w == 0:
        return (g,)
    decay = jnp.where(mask, jnp.zeros((), w.dtype), w)
    return (g + jnp.asarray(lambda_w, g.dtype) * decay.astype(g.dtype),)


sparse_weight.defvjp(_sparse_weight_fwd, _sparse_weight_bwd)


def sr_ste(
    params: Params,
    n: int = 2,
    m: int = 4,
    *,
    lambda_w: float = SR_STE_LAMBDA,
    rules: rules_lib.Rules | None = None,
    axis_rules: AxisRules | None = None,
) -> Params:
    """Applies :func:`sparse_weight` to every prunable leaf (along its reduction axis).

    Use inside the loss: ``logits = apply_fn(sr_ste(params), x)``; the optimizer updates the
    dense ``params``; export ``sr_ste(params)`` (or ``nm_masks(params)``) at the end.

    Args:
      params: any pytree of arrays.
      n, m: N:M structure.
      lambda_w: SR-STE decay (2e-4 in the paper); ``0.0`` = plain STE (see :func:`ste`).
      rules: which leaves are prunable (as :func:`jaxsparse.ones_like`).
      axis_rules: per-path reduction-axis overrides (see :class:`jaxsparse.NM`).

    Returns:
      The params with every prunable leaf N:M-sparse (non-prunable leaves unchanged).

    >>> p = sr_ste({"kernel": jnp.arange(8.0).reshape(4, 2), "bias": jnp.ones(2)})
    >>> p["kernel"][:, 0]
    Array([0., 0., 4., 6.], dtype=float32)

    References:
      Zhou et al. 2021 (ICLR), SR-STE.
    """
    structure = NM(n, m, axis_rules=tuple(axis_rules or ()))
    rules = rules_lib.check_rules(rules)

    def one(path: str, p: Any) -> Any:
        if not rules_lib.prunable(rules, path, p):
            return p
        axis = structure.axis_for(path, np.shape(p))
        return sparse_weight(p, n, m, axis, float(lambda_w))

    return rules_lib.map_with_path(one, params)


def ste(
    params: Params,
    n: int = 2,
    m: int = 4,
    *,
    rules: rules_lib.Rules | None = None,
    axis_rules: AxisRules | None = None,
) -> Params:
    """Plain straight-through N:M: :func:`sr_ste` with ``lambda_w=0`` (no decay).

    >>> g = jax.grad(lambda p: ste(p)["kernel"].sum())({"kernel": jnp.arange(4.0)[:, None]})
    >>> g["kernel"][:, 0]  # the dense gradient, pruned entries included
    Array([1., 1., 1., 1.], dtype=float32)
    """
    return sr_ste(params, n, m, lambda_w=0.0, rules=rules, axis_rules=axis_rules)


class SRSTEDecayState(NamedTuple):
    """State of :func:`sr_ste_decay`: the number of updates so far."""

    count: jax.Array


def sr_ste_decay(
    n: int = 2,
    m: int = 4,
    *,
    lambda_w: float = SR_STE_LAMBDA,
    rules: rules_lib.Rules | None = None,
    axis_rules: AxisRules | None = None,
) -> optax.GradientTransformation:
    """Optax transformation adding ``lambda_w * (1 - m(w)) * w`` to the updates (gradients).

    Chain it *before* the optimizer (``optax.chain(sr_ste_decay(), optax.sgd(...))``) with a
    forward pass that uses :func:`ste`; the result equals :func:`sr_ste`'s gradient.

    Args:
      n, m: N:M structure.
      lambda_w: SR-STE decay (2e-4 in the paper).
      rules: which leaves are prunable; axis_rules: per-path reduction-axis overrides.

    Returns:
      An ``optax.GradientTransformation`` whose ``update`` needs ``params``.

    >>> tx = sr_ste_decay(1, 2, lambda_w=0.5)
    >>> p = {"kernel": jnp.array([[1.0], [3.0]])}
    >>> tx.update({"kernel": jnp.zeros((2, 1))}, tx.init(p), p)[0]["kernel"][:, 0]
    Array([0.5, 0. ], dtype=float32)

    References:
      Zhou et al. 2021 (ICLR), SR-STE.
    """
    import optax  # optax is a core dependency; imported here to keep module import light

    check_nm(n, m)
    structure = NM(n, m, axis_rules=tuple(axis_rules or ()))
    rules = rules_lib.check_rules(rules)

    def init(params):
        del params
        return SRSTEDecayState(count=jnp.zeros((), jnp.int32))

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("sr_ste_decay needs params: call update(updates, state, params)")

        def one(path, u, p):
            if not rules_lib.prunable(rules, path, p):
                return u
            mask = nm_mask(p, n, m, axis=structure.axis_for(path, np.shape(p)))
            return u + lambda_w * jnp.where(mask, jnp.zeros((), p.dtype), p).astype(u.dtype)

        return rules_lib.map_with_path(one, updates, params), SRSTEDecayState(state.count + 1)

    return optax.GradientTransformation(init, update)
