"""Scores for pruning: pytrees with the params' structure, **higher score = keep**.

Feed them to :func:`jaxsparse.prune`. Every function is pure and jit/vmap-able.

* ``magnitude(params)``: ``|w|``.
* ``random(params, *, key)``: i.i.d. uniform ``[0, 1)`` scores (a random mask of the same
  per-leaf or global counts).
* Zhou et al. 2019 mask criteria ``f(init, final)``: ``large_final``, ``small_final``,
  ``large_init``, ``small_init``, ``large_init_large_final``, ``small_init_small_final``,
  ``magnitude_increase``, ``movement``, each with a ``<name>_same_sign`` variant, collected in
  :data:`CRITERIA` (plus ``"random"``, which takes ``key=`` as a keyword).
* ``snip(loss_fn, params, batch)``: connection sensitivity ``|g * w|`` on one batch.
* ``synflow(apply_fn, params, input_shape)``: data-free synaptic flow (single shot); the
  iterative version (score, prune, repeat) is :func:`jaxsparse.pruners.synflow_masks`.
* :func:`criterion` turns a criterion's name into its function (the one place that does).

>>> init = {"w": jnp.array([1.0, -2.0, 0.5])}
>>> final = {"w": jnp.array([2.0, 1.0, -0.1])}
>>> magnitude_increase(init, final)["w"]
Array([ 1. , -1. , -0.4], dtype=float32)

References:
  Zhou, Lan, Liu, Yosinski 2019 (NeurIPS), "Deconstructing Lottery Tickets: Zeros, Signs, and
  the Supermask". Lee et al. 2019 (ICLR), "SNIP: Single-shot Network Pruning based on
  Connection Sensitivity". Tanaka et al. 2020 (NeurIPS), "Pruning neural networks without any
  data by iteratively conserving synaptic flow".
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from jaxsparse.typing import Key, Params, PyTree, Scores


def _float(x: jax.Array) -> jax.Array:
    x = jnp.asarray(x)
    return x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(jnp.float32)


def _map(fn: Callable[..., jax.Array], *trees: PyTree) -> PyTree:
    return jax.tree.map(lambda *xs: fn(*map(_float, xs)), *trees)


def magnitude(params: Params) -> Scores:
    """``|w|`` for every leaf.

    >>> magnitude({"w": jnp.array([-3.0, 1.0])})["w"]
    Array([3., 1.], dtype=float32)
    """
    return _map(jnp.abs, params)


def random(params: Params, *, key: Key) -> Scores:
    """Uniform ``[0, 1)`` float32 scores, independent per leaf (``key`` folded with the index).

    >>> s = random({"w": jnp.zeros((2, 3))}, key=jax.random.key(0))
    >>> s["w"].shape
    (2, 3)
    """
    leaves, treedef = jax.tree_util.tree_flatten(params)
    out = [
        jax.random.uniform(jax.random.fold_in(key, i), jnp.shape(x), jnp.float32)
        for i, x in enumerate(leaves)
    ]
    return jax.tree_util.tree_unflatten(treedef, out)


# ---------------------------------------------------------------------------------------
# Zhou et al. 2019 criteria: f(init, final) -> scores.


def large_final(init: Params, final: Params) -> Scores:
    """``|w_f|``: keep weights that ended large (the lottery-ticket criterion)."""
    return _map(lambda i, f: jnp.abs(f), init, final)


def small_final(init: Params, final: Params) -> Scores:
    """``-|w_f|``: keep weights that ended small."""
    return _map(lambda i, f: -jnp.abs(f), init, final)


def large_init(init: Params, final: Params) -> Scores:
    """``|w_i|``: keep weights that started large."""
    return _map(lambda i, f: jnp.abs(i), init, final)


def small_init(init: Params, final: Params) -> Scores:
    """``-|w_i|``: keep weights that started small."""
    return _map(lambda i, f: -jnp.abs(i), init, final)


def large_init_large_final(init: Params, final: Params) -> Scores:
    """``min(|w_i|, |w_f|)``: keep weights large at both ends.

    A threshold ``t`` on this score keeps exactly ``|w_i| > t and |w_f| > t``: the square
    upper-right region of Zhou et al.'s Figure 2 (one threshold on both magnitudes).
    """
    return _map(lambda i, f: jnp.minimum(jnp.abs(i), jnp.abs(f)), init, final)


def small_init_small_final(init: Params, final: Params) -> Scores:
    """``-max(|w_i|, |w_f|)``: keep weights small at both ends (square lower-left region)."""
    return _map(lambda i, f: -jnp.maximum(jnp.abs(i), jnp.abs(f)), init, final)


def magnitude_increase(init: Params, final: Params) -> Scores:
    """``|w_f| - |w_i|``: keep weights whose magnitude grew most."""
    return _map(lambda i, f: jnp.abs(f) - jnp.abs(i), init, final)


def movement(init: Params, final: Params) -> Scores:
    """``|w_f - w_i|``: keep weights that moved most."""
    return _map(lambda i, f: jnp.abs(f - i), init, final)


def same_sign(
    criterion: Callable[[Params, Params], Scores],
) -> Callable[[Params, Params], Scores]:
    """The ``_same_sign`` variant of a criterion: sign-flipped weights rank below all others.

    A weight "kept its sign" when ``jnp.sign(w_i) == jnp.sign(w_f)`` (zero is its own sign).
    Scores of weights that kept their sign are unchanged. Scores of weights whose sign changed
    are shifted down by one constant, computed over the whole tree, so that the highest of them
    lies below the lowest same-sign score (by a margin of ``max(1, 2**-10 * scale)``): they are
    pruned first, in any scope, and among themselves keep the base criterion's order. The shift
    overflows only for scores near the float32 limit (~1e38).

    >>> f = same_sign(large_final)
    >>> f({"w": jnp.array([1.0, 1.0, -1.0])}, {"w": jnp.array([3.0, -5.0, -0.5])})["w"]
    Array([ 3. , -0.5,  0.5], dtype=float32)
    """

    def variant(init: Params, final: Params) -> Scores:
        base = criterion(init, final)
        same = jax.tree.map(lambda i, f: jnp.sign(_float(i)) == jnp.sign(_float(f)), init, final)
        b_leaves, treedef = jax.tree_util.tree_flatten(base)
        s_leaves = jax.tree_util.tree_leaves(same)
        inf = jnp.asarray(jnp.inf, jnp.float32)
        lo_same = inf
        hi_flip = -inf
        for b, s in zip(b_leaves, s_leaves, strict=True):
            if b.size:
                lo_same = jnp.minimum(lo_same, jnp.min(jnp.where(s, b, inf)))
                hi_flip = jnp.maximum(hi_flip, jnp.max(jnp.where(s, -inf, b)))
        both = jnp.isfinite(lo_same) & jnp.isfinite(hi_flip)
        margin = jnp.maximum(1.0, 2.0**-10 * (jnp.abs(lo_same) + jnp.abs(hi_flip)))
        shift = jnp.where(both, jnp.maximum(hi_flip - lo_same, 0.0) + margin, 0.0)
        pairs = zip(b_leaves, s_leaves, strict=True)
        out = [jnp.where(s, b, b - shift.astype(b.dtype)) for b, s in pairs]
        return jax.tree_util.tree_unflatten(treedef, out)

    variant.__name__ = f"{criterion.__name__}_same_sign"
    variant.__doc__ = (
        f"{criterion.__name__} with sign-flipped weights pruned first (see same_sign)."
    )
    return variant


large_final_same_sign = same_sign(large_final)
small_final_same_sign = same_sign(small_final)
large_init_same_sign = same_sign(large_init)
small_init_same_sign = same_sign(small_init)
large_init_large_final_same_sign = same_sign(large_init_large_final)
small_init_small_final_same_sign = same_sign(small_init_small_final)
magnitude_increase_same_sign = same_sign(magnitude_increase)
movement_same_sign = same_sign(movement)


def random_criterion(init: Params, final: Params, *, key: Key) -> Scores:
    """The ``"random"`` criterion: :func:`random` scores (``init`` and ``final`` unused)."""
    del init
    return random(final, key=key)


_BASE = (
    large_final,
    small_final,
    large_init,
    small_init,
    large_init_large_final,
    small_init_small_final,
    magnitude_increase,
    movement,
)
CRITERIA: dict[str, Callable[..., PyTree]] = {f.__name__: f for f in _BASE}
CRITERIA.update({f"{f.__name__}_same_sign": globals()[f"{f.__name__}_same_sign"] for f in _BASE})
CRITERIA["random"] = random_criterion
"""Name -> ``fn(init, final)``; ``CRITERIA["random"]`` also needs ``key=`` (keyword)."""


def criterion(
    name: str | Callable[[Params, Params], Scores],
) -> Callable[..., Scores]:
    """The mask criterion called ``name``, as ``fn(init, final, *, key=None) -> scores``.

    The one place a criterion's name becomes a function: ``"magnitude"`` (``|w_final|``, the
    same scores as ``"large_final"``), ``"random"`` (needs ``key``) and every name of
    :data:`CRITERIA`. A callable ``f(init, final)`` is returned wrapped to the same signature
    (``key`` is not passed to it).

    Raises:
      ValueError: an unknown name (lists the known ones); ``key`` missing for ``"random"``.

    >>> f = criterion("magnitude_increase")
    >>> f({"w": jnp.array([1.0, -2.0])}, {"w": jnp.array([2.0, 1.0])})["w"]
    Array([ 1., -1.], dtype=float32)
    """
    if callable(name):
        fn = name

        def custom(init: Params, final: Params, *, key: Key | None = None) -> Scores:
            del key
            return fn(init, final)

        return custom
    if name == "magnitude":
        return lambda init, final, *, key=None: magnitude(final)
    if name == "random":

        def rand(init: Params, final: Params, *, key: Key | None = None) -> Scores:
            if key is None:
                raise ValueError("criterion 'random' needs key=")
            return random_criterion(init, final, key=key)

        return rand
    if name not in CRITERIA:
        raise ValueError(f"unknown criterion {name!r}; expected 'magnitude' or one of "
                         f"{sorted(CRITERIA)}")
    fn_named = CRITERIA[name]
    return lambda init, final, *, key=None: fn_named(init, final)


# ---------------------------------------------------------------------------------------
# Prune-at-init saliencies.


def snip(
    loss_fn: Callable[[PyTree, Any], jax.Array],
    params: PyTree,
    batch: Any,
    *,
    masks: PyTree | None = None,
) -> PyTree:
    """SNIP connection sensitivity ``|dL/dw * w|`` on one batch.

    This is ``|dL/dc|`` at ``c = 1`` for multiplicative gates ``c`` on the weights. With
    ``masks``, the gradient is taken at the masked params (pruned entries then score 0).

    Args:
      loss_fn: ``loss_fn(params, batch) -> scalar``.
      params: the (usually freshly initialised) params.
      batch: anything ``loss_fn`` accepts.
      masks: optional current masks.

    >>> loss = lambda p, x: jnp.sum(x @ p["w"])
    >>> snip(loss, {"w": jnp.array([[2.0], [-1.0]])}, jnp.ones((1, 2)))["w"]
    Array([[2.],
           [1.]], dtype=float32)

    References:
      Lee, Ajanthan, Torr 2019 (ICLR), "SNIP: Single-shot Network Pruning based on Connection
      Sensitivity".
    """
    if masks is not None:
        from jaxsparse.masks import apply_masks

        params = apply_masks(params, masks)
    grads = jax.grad(loss_fn)(params, batch)
    return _map(lambda g, w: jnp.abs(g * w), grads, params)


def _column_l1(x: jax.Array) -> jax.Array:
    """Mean L1 norm of the kernel's output columns (gain of ``|W|`` on an all-ones input)."""
    a = jnp.abs(x)
    return jnp.sum(a) / x.shape[-1]


def synflow(
    apply_fn: Callable[[PyTree, jax.Array], Any],
    params: PyTree,
    input_shape: Sequence[int],
    *,
    masks: PyTree | None = None,
    rescale: bool | None = None,
) -> PyTree:
    """Single-shot SynFlow scores ``|w * dR/dw|``, ``R = sum(f_{|w|}(1))``, data-free.

    The network is linearised by taking ``|w|`` of every parameter (masked ones are 0), fed
    one all-ones input of ``input_shape`` (batch axis included, e.g. ``(1, 28, 28, 1)``), and
    ``R`` is the sum of its outputs. Computed in float32, as ``w * d(log R)/dw`` (= the SynFlow
    score divided by the constant ``R``: same ranking, no overflow of ``R`` itself).

    Overflow: in deep nets ``R`` (a product of layer gains) exceeds float32. With
    ``rescale=True`` every leaf of ``ndim >= 2`` is divided by its mean column L1 norm before
    the forward pass, so each layer maps ones to about ones. For a network without biases whose
    layers are positively homogeneous (ReLU, max/avg pooling, linear/conv) this multiplies
    every score by one constant, so the ranking is exactly SynFlow's; with biases it changes
    how much the bias paths count. ``rescale=None`` (default) rescales only when the plain
    ``R`` is not finite (chosen inside ``jit`` with ``lax.cond``).

    ``apply_fn(params, x)`` must be deterministic (BatchNorm in inference mode, no dropout). For
    the iterative algorithm of the paper use :func:`jaxsparse.pruners.synflow_masks`.

    >>> apply = lambda p, x: x @ p["w1"] @ p["w2"]
    >>> p = {"w1": jnp.array([[1.0, -2.0]]), "w2": jnp.array([[3.0], [1.0]])}
    >>> synflow(apply, p, (1, 1))["w1"]  # R = 1*3 + 2*1 = 5; scores w*dR/dw / R
    Array([[0.6, 0.4]], dtype=float32)

    References:
      Tanaka, Kunin, Yamins, Ganguli 2020 (NeurIPS), "Pruning neural networks without any
      data by iteratively conserving synaptic flow".
    """
    if masks is not None:
        from jaxsparse.masks import apply_masks

        params = apply_masks(params, masks)
    lin = jax.tree.map(lambda w: jnp.abs(_float(w).astype(jnp.float32)), params)
    x = jnp.ones(tuple(input_shape), jnp.float32)

    def log_r(p):
        out = apply_fn(p, x)
        total = sum(jnp.sum(o.astype(jnp.float32)) for o in jax.tree_util.tree_leaves(out))
        return jnp.log(total)

    def scores_of(p):
        lr, g = jax.value_and_grad(log_r)(p)
        return jax.tree.map(lambda w, gw: jnp.abs(w * gw), p, g), lr

    def rescaled(p):
        scaled = jax.tree.map(lambda w: w / _column_l1(w) if w.ndim >= 2 else w, p)
        return scores_of(scaled)[0]

    if rescale is True:
        return rescaled(lin)
    plain, lr = scores_of(lin)
    if rescale is False:
        return plain
    return jax.lax.cond(jnp.isfinite(lr), lambda _: plain, lambda _: rescaled(lin), None)
