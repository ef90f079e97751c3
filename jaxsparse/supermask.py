"""Supermasks: trainable masks over frozen weights (straight-through estimators).

Three ways to find a subnetwork of an *untrained* network that performs:

* **Learned supermask** (Zhou et al. 2019): a logit ``s`` per prunable weight; the forward pass
  samples ``m ~ Bernoulli(sigmoid(s))`` (in training *and* evaluation); the backward pass is
  straight-through: ``dL/ds = dL/dm * sigmoid(s) * (1 - sigmoid(s))``. See :func:`bernoulli_ste`.
* **Edge-popup** (Ramanujan et al. 2020): a score per weight; the forward pass keeps the
  top-k of ``|score|`` in each layer, where **k is the fraction KEPT** (density); the backward
  pass is straight-through *to* ``|score|`` and the chain rule through the absolute value gives
  ``dL/ds = dL/dm * sign(s)``. See :func:`topk_ste`.
* **Supermask at initialisation** (Zhou et al. 2019): a lottery-ticket mask (e.g. the
  ``large_final_same_sign`` criterion) applied to the untrained initial weights. See
  :func:`at_init`.

:func:`supermask` turns any functional model ``apply_fn(params, model_state, x, *, train, key)``
into a supermask model with the same calling convention whose trainable params are the scores
(so any optax optimizer and the :mod:`jaxsparse.train` loop train them) and whose frozen weights
travel, never modified, in the model state. :func:`export` gives back an ordinary
dense-with-zeros params tree plus bool masks; :func:`compact_report` counts dead units.

Estimator masks are float 0/1 arrays (the weights are multiplied by them, because a select
``jnp.where`` would have no gradient w.r.t. the mask); frozen weights are finite, so the product
equals the select exactly. Exported masks are ``bool``, as everywhere else in jaxsparse.

>>> m = topk_ste(jnp.array([0.3, -2.0, 0.1, 1.0]), 0.5)   # keep 50% of |score|
>>> m
Array([0., 1., 0., 1.], dtype=float32)

References:
  Zhou, Lan, Liu, Yosinski 2019, "Deconstructing Lottery Tickets: Zeros, Signs, and the
  Supermask" (NeurIPS).
  Ramanujan, Wortsman, Kembhavi, Farhadi, Rastegari 2020, "What's Hidden in a Randomly Weighted
  Neural Network?" (CVPR).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxsparse import masks as masks_lib
from jaxsparse import rules as rules_lib
from jaxsparse import scores as scores_lib
from jaxsparse import select
from jaxsparse.typing import PyTree

ApplyFn = Callable[..., tuple[jax.Array, PyTree]]

ESTIMATORS = ("bernoulli", "topk")
WEIGHT_INITS = ("init", "signed_constant", "signed_kaiming_constant", "kaiming_normal")
SCORE_INITS = ("kaiming_uniform", "uniform", "constant")


# ---------------------------------------------------------------------------------------
# Straight-through estimators on one array.


@jax.custom_vjp
def _bernoulli_st(scores: jax.Array, u: jax.Array) -> jax.Array:
    return (u < jax.nn.sigmoid(scores)).astype(scores.dtype)


def _bernoulli_fwd(scores, u):
    p = jax.nn.sigmoid(scores)
    return (u < p).astype(scores.dtype), (p, u)


def _bernoulli_bwd(res, g):
    p, u = res
    # Straight-through to the probability p = sigmoid(s), then the chain rule through sigmoid.
    return g * p * (1 - p), jnp.zeros_like(u)


_bernoulli_st.defvjp(_bernoulli_fwd, _bernoulli_bwd)


def bernoulli_ste(scores: jax.Array, *, key: jax.Array) -> jax.Array:
    """Samples ``m ~ Bernoulli(sigmoid(scores))`` with Zhou et al.'s straight-through gradient.

    Forward: ``m = 1[u < sigmoid(s)]`` with ``u ~ U[0, 1)`` drawn from ``key`` (same key, same
    mask). Backward: the gradient w.r.t. the sampled mask is passed straight through to the
    keep-probability ``p = sigmoid(s)``, so ``dL/ds = dL/dm * sigmoid(s) * (1 - sigmoid(s))``.

    Args:
      scores: mask logits, any shape, floating dtype.
      key: PRNG key for the sample.

    Returns:
      A float 0/1 array of ``scores``' shape and dtype.

    >>> bernoulli_ste(jnp.array([-100.0, 100.0]), key=jax.random.key(0))
    Array([0., 1.], dtype=float32)

    References:
      Zhou et al. 2019, "Deconstructing Lottery Tickets", Section 5 (learned supermasks).
    """
    scores = jnp.asarray(scores)
    if not jnp.issubdtype(scores.dtype, jnp.floating):
        raise TypeError(f"bernoulli_ste: scores must be floating, got dtype {scores.dtype}")
    u = jax.random.uniform(key, scores.shape, dtype=scores.dtype)
    return _bernoulli_st(scores, u)


def num_kept(density: float | jax.Array, n: int) -> jax.Array | int:
    """Entries kept out of ``n`` at fraction-kept ``density``: ``n - num_pruned(1 - density, n)``.

    The count follows :func:`jaxsparse.select.num_pruned`'s rounding rule (the one every
    jaxsparse function uses) on the pruned fraction ``1 - density``: the nearest integer to
    ``density * n``, exact halves keeping FEWER (pruning more), e.g. ``num_kept(0.5, 3) == 1``.
    A Python float gives a Python int and a traced density an int32 array with the same value
    (one density per population member under ``vmap``).

    >>> num_kept(0.5, 3), num_kept(0.3, 10), num_kept(0.7, 5)
    (1, 3, 3)
    """
    if isinstance(density, int | float):
        if not 0.0 <= density <= 1.0:
            raise ValueError(f"density (fraction kept) must be in [0, 1], got {density}")
        # Evaluated eagerly even while tracing: the count must stay a static Python int.
        with jax.ensure_compile_time_eval():
            return int(n) - select.num_pruned(1.0 - density, n)
    d = jnp.clip(jnp.asarray(density, jnp.float32), 0.0, 1.0)
    pruned = select.num_pruned(1.0 - d, jnp.asarray(n, jnp.int32))
    return (n - pruned).astype(jnp.int32)


def _keep_top(values: jax.Array, density: float | jax.Array) -> jax.Array:
    # jaxsparse.prune's exact, sort-free selection (bisection on the value bits; on CPU ~35x
    # faster than an argsort at 235k entries) with its rounding and tie rules. The count it
    # keeps is n - num_pruned(1 - density, n) == num_kept(density, n).
    ones = jnp.ones(values.shape, bool)
    if isinstance(density, int | float):
        if density == 0.0:
            return ~ones  # sparsity 1 is outside prune's range
        return select.prune({"v": values}, {"v": ones}, sparsity=1.0 - density,
                            scope="layerwise")["v"]
    d = jnp.asarray(density, jnp.float32)
    sparsity = jnp.where(d > 0, 1.0 - d, 0.0)  # density 0: select nothing (below)
    m = select.prune({"v": values}, {"v": ones}, sparsity=sparsity, scope="layerwise")["v"]
    return m & (d > 0)


def topk_mask(values: jax.Array, density: float | jax.Array) -> jax.Array:
    """Bool mask keeping exactly ``num_kept(density, size)`` largest entries of ``values``.

    Selection is by value (not absolute value; :func:`topk_ste` takes ``|score|`` itself), with
    :func:`jaxsparse.prune`'s rules: ties are broken toward the lower flat (row-major) index,
    so the count is always exact; ``-0.0 == 0.0``. ``density`` is the fraction KEPT and may be
    traced.

    >>> topk_mask(jnp.array([1.0, 3.0, 3.0, 2.0]), 0.5)
    Array([False,  True,  True, False], dtype=bool)
    """
    values = jnp.asarray(values)
    if isinstance(density, int | float):
        num_kept(density, 1)  # range check
    return _keep_top(values, density)


@jax.custom_vjp
def _topk_st(values: jax.Array, density: jax.Array) -> jax.Array:
    return _keep_top(values, density).astype(values.dtype)


def _topk_fwd(values, density):
    return _topk_st(values, density), density


def _topk_bwd(density, g):
    # Straight-through: the mask's gradient goes to the values it was selected from unchanged.
    return g, jnp.zeros_like(density)


_topk_st.defvjp(_topk_fwd, _topk_bwd)


def topk_ste(scores: jax.Array, density: float | jax.Array) -> jax.Array:
    """Edge-popup mask: keep the top-k of ``|scores|``, k = ``density`` = fraction KEPT.

    Forward: a float 0/1 array keeping exactly ``num_kept(density, scores.size)`` entries with
    the largest ``|score|`` (nearest integer, exact halves keep fewer; ties toward the lower
    flat index, as in :func:`jaxsparse.prune`).
    Backward: straight-through to ``|score|``; the chain rule through the absolute value then
    gives ``dL/ds = dL/dm * sign(s)`` (``+1`` at ``s == 0``, JAX's convention for ``|x|``, so a
    zero score is not stuck). Handing the gradient to the raw score
    instead pushes negative scores the wrong way and the network stays at chance.

    Args:
      scores: one layer's scores.
      density: fraction of entries KEPT, in ``[0, 1]`` (the paper's ``--prune-rate``). May be a
        traced scalar.

    Returns:
      A float 0/1 array of ``scores``' shape and dtype.

    >>> topk_ste(jnp.array([[0.3, -2.0], [0.1, 1.0]]), 0.25)
    Array([[0., 1.],
           [0., 0.]], dtype=float32)

    References:
      Ramanujan et al. 2020, "What's Hidden in a Randomly Weighted Neural Network?", Alg. 1.
    """
    scores = jnp.asarray(scores)
    if not jnp.issubdtype(scores.dtype, jnp.floating):
        raise TypeError(f"topk_ste: scores must be floating, got dtype {scores.dtype}")
    if isinstance(density, int | float):
        num_kept(density, 1)  # range check
    return _topk_st(jnp.abs(scores), jnp.asarray(density, jnp.float32))


# ---------------------------------------------------------------------------------------
# Estimators on score trees. A score tree has the params' structure: prunable leaves carry a
# full-shape float array, non-prunable leaves a scalar 0.0 placeholder (never used).


def _is_score(leaf: Any) -> bool:
    return np.ndim(leaf) > 0


def bernoulli_masks(scores: PyTree, *, key: jax.Array) -> PyTree:
    """:func:`bernoulli_ste` on every prunable leaf (independent keys); scalars give ``1.0``."""
    leaves, treedef = jax.tree_util.tree_flatten(scores)
    keys = jax.random.split(key, max(len(leaves), 1))
    out = [bernoulli_ste(s, key=keys[i]) if _is_score(s) else jnp.ones((), jnp.float32)
           for i, s in enumerate(leaves)]
    return jax.tree_util.tree_unflatten(treedef, out)


def topk_masks(scores: PyTree, density: float | jax.Array) -> PyTree:
    """:func:`topk_ste` per layer on every prunable leaf; scalars give ``1.0``."""
    return jax.tree.map(
        lambda s: topk_ste(s, density) if _is_score(s) else jnp.ones((), jnp.float32), scores)


def expected_masks(scores: PyTree) -> PyTree:
    """Deterministic Bernoulli masks ``sigmoid(s) > 0.5`` (i.e. ``s > 0``), bool mask tree."""
    return jax.tree.map(lambda s: s > 0 if _is_score(s) else jnp.ones((), bool), scores)


# ---------------------------------------------------------------------------------------
# Frozen weights and score initialisation.


def fan_in(shape: tuple[int, ...]) -> int:
    """Fan-in of a Flax kernel (last axis = outputs): ``prod(shape[:-1])``."""
    return int(np.prod(shape[:-1])) if len(shape) > 1 else int(shape[0])


def _signed(w: jax.Array, c: jax.Array | float) -> jax.Array:
    # sign 0 (an exact zero init) counts as +: every kept weight must have magnitude c.
    return jnp.where(w >= 0, c, -c).astype(w.dtype)


def frozen_weights(
    params: PyTree, *, init: str = "init", rules: rules_lib.Rules | None = None,
    key: jax.Array | None = None,
) -> PyTree:
    """The frozen weights of a supermask model, from a network's initial params.

    Args:
      params: the initial params (any pytree).
      init: what prunable leaves become; non-prunable leaves are returned unchanged.
        ``"init"``: as given. ``"signed_constant"``: ``sign(w) * std(w)`` with the leaf's
        (empirical) std, i.e. sigma of the layer's init distribution (Zhou et al.).
        ``"signed_kaiming_constant"``: ``sign(w) * sqrt(2 / fan_in)`` (Ramanujan et al.).
        ``"kaiming_normal"``: a fresh draw ``N(0, 2 / fan_in)`` (needs ``key``).
      rules: prunable rules (see :func:`jaxsparse.masks.ones_like`).
      key: PRNG key, for ``"kaiming_normal"`` only.
    """
    if init not in WEIGHT_INITS:
        raise ValueError(f"init must be one of {WEIGHT_INITS}, got {init!r}")
    if init == "kaiming_normal" and key is None:
        raise ValueError("init='kaiming_normal' draws fresh weights: pass key=")
    pmask = masks_lib.ones_like(params, rules)
    n = len(jax.tree_util.tree_leaves(params))
    keys = list(jax.random.split(key, n)) if key is not None else [None] * n
    counter = iter(range(n))

    def one(path: str, w: jax.Array, m: jax.Array) -> jax.Array:
        i = next(counter)
        if not masks_lib.is_prunable(m) or init == "init":
            return w
        if init == "signed_constant":
            return _signed(w, jnp.std(w))
        std = np.sqrt(2.0 / fan_in(np.shape(w)))
        if init == "signed_kaiming_constant":
            return _signed(w, std)
        return (std * jax.random.normal(keys[i], np.shape(w))).astype(w.dtype)

    return rules_lib.map_with_path(one, params, pmask)


def init_scores(
    params: PyTree, *, key: jax.Array, init: str = "kaiming_uniform", scale: float = 1.0,
    rules: rules_lib.Rules | None = None,
) -> PyTree:
    """A score tree for ``params``: prunable leaves float32 scores, others scalar ``0.0``.

    Args:
      params: the network's params (only shapes and paths are used).
      key: PRNG key.
      init: ``"kaiming_uniform"``: ``U(-b, b)``, ``b = scale / sqrt(fan_in)`` (edge-popup; with
        ``scale=1`` this is PyTorch's default ``kaiming_uniform_(a=sqrt(5))`` bound).
        ``"uniform"``: ``U(-scale, scale)``. ``"constant"``: every score ``= scale``.
      scale: see ``init``.
      rules: prunable rules.
    """
    if init not in SCORE_INITS:
        raise ValueError(f"score init must be one of {SCORE_INITS}, got {init!r}")
    pmask = masks_lib.ones_like(params, rules)
    leaves = jax.tree_util.tree_leaves(pmask)
    keys = iter(jax.random.split(key, max(len(leaves), 1)))

    def one(m: jax.Array) -> jax.Array:
        k = next(keys)
        if not masks_lib.is_prunable(m):
            return jnp.zeros((), jnp.float32)
        shape = np.shape(m)
        if init == "constant":
            return jnp.full(shape, scale, jnp.float32)
        b = scale / np.sqrt(fan_in(shape)) if init == "kaiming_uniform" else scale
        return jax.random.uniform(k, shape, jnp.float32, -b, b)

    return jax.tree.map(one, pmask)


# ---------------------------------------------------------------------------------------
# Supermask models: any functional model -> trainable scores over frozen weights.


class Supermask(NamedTuple):
    """A supermask model: pure functions, in the calling convention of ``models.functional``.

    Attributes:
      init: ``init(params, model_state, *, key) -> (sm_params, sm_state)``. ``params`` are the
        network's initial params; ``sm_params = {"scores": S, "other": O}`` are the trainable
        params (``S``: a score tree, see :func:`init_scores`; ``O``: the non-prunable params
        when ``train_other``, else scalar placeholders); ``sm_state = {"weights": frozen params,
        "model": model_state}``. Pure and vmappable over ``key``.
      apply: ``apply(sm_params, sm_state, x, *, train, key=None, deterministic=None) ->
        (logits, sm_state)``. Masks are drawn in the forward pass, in training and evaluation;
        ``sm_state["weights"]`` is returned untouched (bitwise), ``sm_state["model"]`` updated
        by the model (batch-norm statistics). ``deterministic=True`` uses the expected mask
        ``sigmoid(s) > 0.5`` for a Bernoulli supermask (no effect for top-k).
      masks: ``masks(sm_params, *, key=None) -> bool masks``: a Bernoulli sample with ``key``,
        the expected mask without; the top-k mask for edge-popup.
      export: ``export(sm_params, sm_state, *, key=None) -> (params, masks)``: an ordinary
        dense-with-zeros params tree (rescaling included) and its bool masks, such that
        ``apply_fn(params, sm_state["model"], x, ...)`` equals ``apply(..., deterministic=True)``
        (or the sample drawn with ``key``).
    """

    init: Callable[..., tuple[PyTree, PyTree]]
    apply: ApplyFn
    masks: Callable[..., PyTree]
    export: Callable[..., tuple[PyTree, PyTree]]


def _placeholder() -> jax.Array:
    return jnp.zeros((), jnp.float32)


def supermask(
    apply_fn: ApplyFn,
    *,
    estimator: str = "bernoulli",
    density: float | jax.Array | None = None,
    weights: str = "init",
    score_init: str = "uniform",
    score_scale: float = 1.0,
    rescale: bool = False,
    train_other: bool = False,
    deterministic: bool = False,
    rules: rules_lib.Rules | None = None,
) -> Supermask:
    """Turns a functional model into a supermask model (trainable scores, frozen weights).

    Args:
      apply_fn: ``apply_fn(params, model_state, x, *, train, key) -> (logits, model_state)``,
        e.g. ``jaxsparse.models.functional(model).apply_fn``.
      estimator: ``"bernoulli"`` (learned supermask, :func:`bernoulli_ste`) or ``"topk"``
        (edge-popup, :func:`topk_ste` per layer).
      density: for ``"topk"``: the fraction of each layer's weights KEPT (the paper's k).
      weights: frozen-weight init, see :func:`frozen_weights`.
      score_init, score_scale: score init, see :func:`init_scores`.
      rescale: multiply each layer's kept weights by ``total / kept`` (Zhou et al.'s dynamic
        weight rescaling; the factor is a constant for the gradient).
      train_other: also train the non-prunable params (biases, norm scale/offset). Off by
        default: they stay frozen at their init (zero biases, scale 1 / offset 0), which is the
        papers' "no biases, non-affine batch norm".
      deterministic: default for ``apply``'s ``deterministic``.
      rules: which leaves are prunable (scored); see :func:`jaxsparse.masks.ones_like`.

    Returns:
      A :class:`Supermask`.

    Example (``apply_fn``, ``params``, ``model_state`` from ``jaxsparse.models.functional``;
    ``tests/test_supermask.py`` runs it)::

        sm = supermask(apply_fn, estimator="topk", density=0.5)
        sm_params, sm_state = sm.init(params, model_state, key=jax.random.key(0))
        logits, sm_state = sm.apply(sm_params, sm_state, x, train=True, key=key)
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    if estimator == "topk":
        if density is None:
            raise ValueError("estimator='topk' needs density= (the fraction of weights KEPT)")
        if isinstance(density, int | float):
            num_kept(density, 1)  # range check
    if weights not in WEIGHT_INITS:
        raise ValueError(f"weights must be one of {WEIGHT_INITS}, got {weights!r}")
    if score_init not in SCORE_INITS:
        raise ValueError(f"score_init must be one of {SCORE_INITS}, got {score_init!r}")
    rules = rules_lib.check_rules(rules)

    def init(params: PyTree, model_state: PyTree, *, key: jax.Array) -> tuple[PyTree, PyTree]:
        k_w, k_s = jax.random.split(key)
        frozen = frozen_weights(params, init=weights, rules=rules, key=k_w)
        scores = init_scores(params, key=k_s, init=score_init, scale=score_scale, rules=rules)
        other = jax.tree.map(
            lambda p, s: p if (train_other and not _is_score(s)) else _placeholder(),
            params, scores)
        return {"scores": scores, "other": other}, {"weights": frozen, "model": model_state}

    def float_masks(scores: PyTree, key: jax.Array | None, det: bool) -> PyTree:
        if estimator == "topk":
            return topk_masks(scores, density)
        if det:
            return jax.tree.map(lambda m: m.astype(jnp.float32), expected_masks(scores))
        if key is None:
            raise ValueError("a Bernoulli supermask samples its mask: pass key= "
                             "(or deterministic=True for the expected mask)")
        return bernoulli_masks(scores, key=key)

    def combine(sm_params: PyTree, frozen: PyTree, fmasks: PyTree) -> PyTree:
        def one(w, m, o):
            if not _is_score(m):
                return o if train_other else w
            w_eff = w * m.astype(w.dtype)
            if rescale:
                kept = jnp.maximum(jax.lax.stop_gradient(jnp.sum(m)), 1.0)
                w_eff = w_eff * (m.size / kept).astype(w.dtype)
            return w_eff
        return jax.tree.map(one, frozen, fmasks, sm_params["other"])

    def apply(sm_params: PyTree, sm_state: PyTree, x: jax.Array, *, train: bool,
              key: jax.Array | None = None, deterministic: bool | None = None):
        det = deterministic_default if deterministic is None else deterministic
        k_mask = k_model = key
        if key is not None:
            k_mask, k_model = jax.random.split(key)
        fm = float_masks(sm_params["scores"], k_mask, det)
        params = combine(sm_params, sm_state["weights"], fm)
        logits, new_model_state = apply_fn(params, sm_state["model"], x, train=train,
                                           key=k_model)
        return logits, {"weights": sm_state["weights"], "model": new_model_state}

    def masks(sm_params: PyTree, *, key: jax.Array | None = None) -> PyTree:
        fm = float_masks(sm_params["scores"], key, key is None)
        return jax.tree.map(lambda m: m > 0 if _is_score(m) else jnp.ones((), bool), fm)

    def export(sm_params: PyTree, sm_state: PyTree, *,
               key: jax.Array | None = None) -> tuple[PyTree, PyTree]:
        bmasks = masks(sm_params, key=key)
        fm = jax.tree.map(lambda m: m.astype(jnp.float32), bmasks)
        params = combine(sm_params, sm_state["weights"], fm)
        return masks_lib.apply_masks(params, bmasks), bmasks

    deterministic_default = deterministic
    return Supermask(init, apply, masks, export)


def learned_supermask(
    apply_fn: ApplyFn, *, weights: str = "init", rescale: bool = False,
    score_init: str = "uniform", score_scale: float = 1.0, **kwargs: Any,
) -> Supermask:
    """Zhou et al.'s learned (Bernoulli) supermask: :func:`supermask` with ``"bernoulli"``.

    Use ``weights="signed_constant"`` for the signed-constant variant and ``rescale=True`` for
    dynamic weight rescaling. Recipe: SGD lr 100, momentum 0.9 on the scores.

    References:
      Zhou et al. 2019, "Deconstructing Lottery Tickets", Section 5.
    """
    return supermask(apply_fn, estimator="bernoulli", weights=weights, rescale=rescale,
                     score_init=score_init, score_scale=score_scale, **kwargs)


def edge_popup(
    apply_fn: ApplyFn, density: float | jax.Array, *,
    weights: str = "signed_kaiming_constant", score_init: str = "kaiming_uniform",
    score_scale: float = 1.0, **kwargs: Any,
) -> Supermask:
    """Ramanujan et al.'s edge-popup: :func:`supermask` with per-layer top-k of ``|score|``.

    ``density`` = k = the fraction of each layer's weights KEPT (their ``--prune-rate``).
    Frozen weights default to the signed Kaiming constant ``+-sqrt(2 / fan_in)`` (use
    ``weights="kaiming_normal"`` for Kaiming normal), scores to Kaiming uniform; biases and
    norm parameters stay frozen at init unless ``train_other=True``. Recipe: SGD lr 0.1 cosine,
    momentum 0.9, weight decay 1e-4 on the scores, batch 128.

    References:
      Ramanujan et al. 2020, "What's Hidden in a Randomly Weighted Neural Network?".
    """
    return supermask(apply_fn, estimator="topk", density=density, weights=weights,
                     score_init=score_init, score_scale=score_scale, **kwargs)


# ---------------------------------------------------------------------------------------
# Supermasks at initialisation (Zhou et al. 2019, Section 5).


def at_init(
    init_params: PyTree,
    final_params: PyTree | None = None,
    *,
    density: float | jax.Array | None = None,
    criterion: str | Callable[[PyTree, PyTree], PyTree] = "large_final_same_sign",
    masks: PyTree | None = None,
    signed_constant: bool = False,
    scope: str = "layerwise",
    rules: rules_lib.Rules | None = None,
    key: jax.Array | None = None,
) -> tuple[PyTree, PyTree]:
    """A supermask applied to the *untrained* initial weights: ``(masked init params, masks)``.

    The mask keeps, in one shot, the ``density`` fraction (KEPT) of prunable weights with the
    highest ``criterion(init_params, final_params)`` score (``jaxsparse.scores``, e.g.
    ``large_final``, ``large_final_same_sign``, ``magnitude_increase``; ``"random"`` needs
    ``key``), or is given directly as ``masks`` (e.g. an iterative lottery-ticket mask).
    ``scope="layerwise"`` keeps ``density`` of every layer (Zhou et al. prune per layer).

    Args:
      init_params: the untrained initial weights (what the mask is applied to).
      final_params: the trained weights of the same network (for the criterion).
      density: fraction of prunable weights KEPT (ignored when ``masks`` is given).
      criterion: a name in ``jaxsparse.scores.CRITERIA`` or a callable ``f(init, final)``.
      masks: a ready-made bool mask tree (skips the criterion).
      signed_constant: replace the kept init weights by ``sign(w_init) * std(layer init)``
        (the sign-preserving variant).
      scope: ``"layerwise"`` or ``"global"`` (passed to :func:`jaxsparse.prune`).
      rules: which leaves are prunable.
      key: PRNG key for the ``"random"`` criterion.

    Example (``w0`` the initial weights, ``w_final`` the trained ones)::

        params, masks = at_init(w0, w_final, density=0.2)

    References:
      Zhou et al. 2019, "Deconstructing Lottery Tickets", Section 5 ("Supermasks").
    """
    if masks is None:
        if final_params is None and criterion != "random":
            raise ValueError(f"criterion {criterion!r} needs final_params (the trained weights)")
        if density is None:
            raise ValueError("at_init needs density= (fraction kept) or masks=")
        if criterion == "random":
            if key is None:
                raise ValueError("criterion 'random' needs key=")
            sc = scores_lib.random(init_params, key=key)
        elif callable(criterion):
            sc = criterion(init_params, final_params)
        else:
            if criterion not in scores_lib.CRITERIA:
                raise ValueError(f"unknown criterion {criterion!r}; known: "
                                 f"{sorted(scores_lib.CRITERIA)}")
            sc = scores_lib.CRITERIA[criterion](init_params, final_params)
        masks = select.prune(sc, masks_lib.ones_like(init_params, rules),
                             sparsity=1.0 - density, scope=scope)
    masks_lib.validate(init_params, masks)
    w = frozen_weights(init_params, init="signed_constant", rules=rules) if signed_constant \
        else init_params
    return masks_lib.apply_masks(w, masks), masks


# ---------------------------------------------------------------------------------------
# Compacted report: units left with no incoming or no outgoing weight.


def compact_report(masks: PyTree, *, order: list[str] | None = None) -> dict[str, Any]:
    """Counts the units a mask disconnects, per layer and between consecutive layers.

    For a prunable kernel of shape ``(..., in, out)`` (Dense ``(in, out)``, conv
    ``(h, w, in, out)``): an *output* unit with no kept incoming weight is ``dead_out``; an
    *input* unit with no kept outgoing weight is ``dead_in``. Consecutive prunable layers (in
    ``order``, default tree order) whose widths match are linked: a hidden unit between them
    is ``removable`` if it is dead on either side (it receives nothing but its bias, or feeds
    nothing). The compacted network drops the removable units.

    Returns:
      ``{"layers": [{path, shape, n_in, dead_in, n_out, dead_out}, ...],
      "links": [{from, to, units, removable}, ...], "removable": int, "hidden_units": int}``.

    >>> compact_report({"a": jnp.array([[True, False], [False, False]])})["layers"][0]["dead_out"]
    1
    """
    rows = {}
    for path, m in rules_lib.leaves_with_paths(masks):
        if not masks_lib.is_prunable(m):
            continue
        m = np.asarray(m, bool)
        m2 = m.reshape(-1, m.shape[-2], m.shape[-1]) if m.ndim >= 2 else m.reshape(1, -1, 1)
        has_out = m2.any(axis=(0, 2))  # per input unit: some kept outgoing weight
        has_in = m2.any(axis=(0, 1))   # per output unit: some kept incoming weight
        rows[path] = dict(path=path, shape=tuple(m.shape), n_in=int(has_out.size),
                          dead_in=int((~has_out).sum()), n_out=int(has_in.size),
                          dead_out=int((~has_in).sum()), _has_out=has_out, _has_in=has_in)
    order = list(rows) if order is None else order
    links = []
    for a, b in zip(order[:-1], order[1:], strict=True):
        ra, rb = rows[a], rows[b]
        if ra["n_out"] != rb["n_in"]:
            continue
        alive = ra["_has_in"] & rb["_has_out"]
        links.append({"from": a, "to": b, "units": ra["n_out"],
                      "removable": int((~alive).sum())})
    layers = [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows.values()]
    return {"layers": layers, "links": links,
            "removable": sum(x["removable"] for x in links),
            "hidden_units": sum(x["units"] for x in links)}
