"""Supermasks: trainable masks over frozen weights (straight-through estimators).

Three ways to find a subnetwork of an *untrained* network that performs:

* **Learned supermask** (Zhou et al. 2019): a logit ``s`` per prunable weight; the forward pass
  samples ``m ~ Bernoulli(sigmoid(s))`` (in training *and* evaluation); the backward pass is
  straight-through: ``dL/ds = dL/dm * sigmoid(s) * (1 - sigmoid(s))``. See :func:`bernoulli_ste`.
* **Edge-popup** (Ramanujan et al. 2020): a score per weight; the forward pass keeps the
  top-k of ``|score|`` in each layer, where the paper's **k is the fraction KEPT**, i.e.
  ``sparsity = 1 - k`` here (every jaxsparse signature speaks sparsity, the fraction pruned);
  the backward pass is straight-through *to* ``|score|`` and the chain rule through the
  absolute value gives ``dL/ds = dL/dm * sign(s)``. See :func:`topk_ste`.
* **Supermask at initialisation** (Zhou et al. 2019): a lottery-ticket mask (e.g. the
  ``large_final_same_sign`` criterion) applied to the untrained initial weights. See
  :func:`at_init`.

:func:`supermask` turns any functional model ``apply_fn(params, model_state, x, *, train, key)``
into a supermask model with the same calling convention whose trainable params are the scores
(so any optax optimizer and the :mod:`jaxsparse.train` loop train them) and whose frozen weights
travel, never modified, in the model state. :func:`export` gives back an ordinary
dense-with-zeros params tree plus bool masks; :func:`jaxsparse.masks.compact_report` counts
the units a mask disconnects.

Estimator masks are float 0/1 arrays (the weights are multiplied by them, because a select
``jnp.where`` would have no gradient w.r.t. the mask); frozen weights are finite, so the product
equals the select exactly. Exported masks are ``bool``, as everywhere else in jaxsparse.

>>> m = topk_ste(jnp.array([0.3, -2.0, 0.1, 1.0]), 0.5)   # prune 50% of |score|
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
from typing import Any, Literal, NamedTuple, get_args

import jax
import jax.numpy as jnp
import numpy as np

from jaxsparse import masks as masks_lib
from jaxsparse import rules as rules_lib
from jaxsparse import scores as scores_lib
from jaxsparse import select
from jaxsparse.typing import Key, Masks, Params, PyTree, Scores

ApplyFn = Callable[..., tuple[jax.Array, PyTree]]

Estimator = Literal["bernoulli", "topk"]
WeightInit = Literal["init", "signed_constant", "signed_kaiming_constant", "kaiming_normal"]
ScoreInit = Literal["kaiming_uniform", "uniform", "constant"]
ESTIMATORS: tuple[str, ...] = get_args(Estimator)
WEIGHT_INITS: tuple[str, ...] = get_args(WeightInit)
SCORE_INITS: tuple[str, ...] = get_args(ScoreInit)


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


@jax.custom_vjp
def _topk_st(values: jax.Array, sparsity: jax.Array) -> jax.Array:
    # jaxsparse.prune's exact, sort-free selection (bisection on the value bits; on CPU ~35x
    # faster than an argsort at 235k entries) with its rounding and tie rules.
    return select.topk_mask(values, sparsity).astype(values.dtype)


def _topk_fwd(values, sparsity):
    return _topk_st(values, sparsity), sparsity


def _topk_bwd(sparsity, g):
    # Straight-through: the mask's gradient goes to the values it was selected from unchanged.
    return g, jnp.zeros_like(sparsity)


_topk_st.defvjp(_topk_fwd, _topk_bwd)


def topk_ste(scores: jax.Array, sparsity: float | jax.Array) -> jax.Array:
    """Edge-popup mask: keep the top-k of ``|scores|``, pruning the fraction ``sparsity``.

    Forward: a float 0/1 array keeping exactly ``jaxsparse.select.num_kept(sparsity,
    scores.size)`` entries with the largest ``|score|`` (nearest integer, exact halves keep
    fewer; ties toward the lower flat index, as in :func:`jaxsparse.prune`).
    Backward: straight-through to ``|score|``; the chain rule through the absolute value then
    gives ``dL/ds = dL/dm * sign(s)`` (``+1`` at ``s == 0``, JAX's convention for ``|x|``, so a
    zero score is not stuck). Handing the gradient to the raw score
    instead pushes negative scores the wrong way and the network stays at chance.

    Args:
      scores: one layer's scores.
      sparsity: fraction of entries PRUNED, in ``[0, 1]``: ``1 - k`` for the paper's k (its
        ``--prune-rate``, the fraction kept). May be a traced scalar.

    Returns:
      A float 0/1 array of ``scores``' shape and dtype.

    >>> topk_ste(jnp.array([[0.3, -2.0], [0.1, 1.0]]), 0.75)
    Array([[0., 1.],
           [0., 0.]], dtype=float32)

    References:
      Ramanujan et al. 2020, "What's Hidden in a Randomly Weighted Neural Network?", Alg. 1.
    """
    scores = jnp.asarray(scores)
    if not jnp.issubdtype(scores.dtype, jnp.floating):
        raise TypeError(f"topk_ste: scores must be floating, got dtype {scores.dtype}")
    if isinstance(sparsity, int | float):
        select.num_kept(sparsity, 1)  # range check
    return _topk_st(jnp.abs(scores), jnp.asarray(sparsity, jnp.float32))


# ---------------------------------------------------------------------------------------
# Estimators on score trees. A score tree has the params' structure: prunable leaves carry a
# full-shape float array, non-prunable leaves a scalar 0.0 placeholder (never used).


def _is_score(leaf: Any) -> bool:
    return np.ndim(leaf) > 0


def bernoulli_masks(scores: Scores, *, key: Key) -> PyTree:
    """:func:`bernoulli_ste` on every prunable leaf (independent keys); scalars give ``1.0``."""
    leaves, treedef = jax.tree_util.tree_flatten(scores)
    keys = jax.random.split(key, max(len(leaves), 1))
    out = [bernoulli_ste(s, key=keys[i]) if _is_score(s) else jnp.ones((), jnp.float32)
           for i, s in enumerate(leaves)]
    return jax.tree_util.tree_unflatten(treedef, out)


def topk_masks(scores: Scores, sparsity: float | jax.Array) -> PyTree:
    """:func:`topk_ste` per layer on every prunable leaf; scalars give ``1.0``."""
    return jax.tree.map(
        lambda s: topk_ste(s, sparsity) if _is_score(s) else jnp.ones((), jnp.float32), scores)


def expected_masks(scores: Scores) -> Masks:
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
    params: Params, *, init: WeightInit = "init", rules: rules_lib.Rules | None = None,
    key: Key | None = None,
) -> Params:
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
    params: Params, *, key: Key, init: ScoreInit = "kaiming_uniform", scale: float = 1.0,
    rules: rules_lib.Rules | None = None,
) -> Scores:
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
    estimator: Estimator = "bernoulli",
    sparsity: float | jax.Array | None = None,
    weights: WeightInit = "init",
    score_init: ScoreInit = "uniform",
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
      sparsity: for ``"topk"``: the fraction of each layer's weights PRUNED (``1 - k`` for
        the paper's k, the fraction kept).
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

        sm = supermask(apply_fn, estimator="topk", sparsity=0.5)
        sm_params, sm_state = sm.init(params, model_state, key=jax.random.key(0))
        logits, sm_state = sm.apply(sm_params, sm_state, x, train=True, key=key)
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    if estimator == "topk":
        if sparsity is None:
            raise ValueError("estimator='topk' needs sparsity= (the fraction of weights pruned)")
        if isinstance(sparsity, int | float):
            select.num_kept(sparsity, 1)  # range check
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
            return topk_masks(scores, sparsity)
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
    apply_fn: ApplyFn, *, weights: WeightInit = "init", rescale: bool = False,
    score_init: ScoreInit = "uniform", score_scale: float = 1.0, **kwargs: Any,
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
    apply_fn: ApplyFn, sparsity: float | jax.Array, *,
    weights: WeightInit = "signed_kaiming_constant", score_init: ScoreInit = "kaiming_uniform",
    score_scale: float = 1.0, **kwargs: Any,
) -> Supermask:
    """Ramanujan et al.'s edge-popup: :func:`supermask` with per-layer top-k of ``|score|``.

    ``sparsity`` = the fraction of each layer's weights PRUNED, ``1 - k`` for the paper's k
    (their ``--prune-rate``, the fraction kept: k = 0.3 is ``sparsity=0.7``).
    Frozen weights default to the signed Kaiming constant ``+-sqrt(2 / fan_in)`` (use
    ``weights="kaiming_normal"`` for Kaiming normal), scores to Kaiming uniform; biases and
    norm parameters stay frozen at init unless ``train_other=True``. Recipe: SGD lr 0.1 cosine,
    momentum 0.9, weight decay 1e-4 on the scores, batch 128.

    References:
      Ramanujan et al. 2020, "What's Hidden in a Randomly Weighted Neural Network?".
    """
    return supermask(apply_fn, estimator="topk", sparsity=sparsity, weights=weights,
                     score_init=score_init, score_scale=score_scale, **kwargs)


# ---------------------------------------------------------------------------------------
# Supermasks at initialisation (Zhou et al. 2019, Section 5).


def at_init(
    init_params: Params,
    final_params: Params | None = None,
    *,
    sparsity: float | jax.Array | None = None,
    criterion: str | Callable[[Params, Params], Scores] = "large_final_same_sign",
    masks: Masks | None = None,
    signed_constant: bool = False,
    scope: Literal["layerwise", "global"] = "layerwise",
    rules: rules_lib.Rules | None = None,
    key: Key | None = None,
) -> tuple[Params, Masks]:
    """A supermask applied to the *untrained* initial weights: ``(masked init params, masks)``.

    The mask prunes, in one shot, the ``sparsity`` fraction of prunable weights with the
    lowest ``criterion(init_params, final_params)`` score (:func:`jaxsparse.scores.criterion`,
    e.g. ``large_final``, ``large_final_same_sign``, ``magnitude_increase``; ``"random"``
    needs ``key``), or is given directly as ``masks`` (e.g. an iterative lottery-ticket mask).
    ``scope="layerwise"`` prunes ``sparsity`` of every layer (Zhou et al. prune per layer).

    Args:
      init_params: the untrained initial weights (what the mask is applied to).
      final_params: the trained weights of the same network (for the criterion).
      sparsity: fraction of prunable weights PRUNED (ignored when ``masks`` is given).
      criterion: a name of :func:`jaxsparse.scores.criterion` or a callable
        ``f(init, final)``.
      masks: a ready-made bool mask tree (skips the criterion).
      signed_constant: replace the kept init weights by ``sign(w_init) * std(layer init)``
        (the sign-preserving variant).
      scope: ``"layerwise"`` or ``"global"`` (passed to :func:`jaxsparse.prune`).
      rules: which leaves are prunable.
      key: PRNG key for the ``"random"`` criterion.

    Example (``w0`` the initial weights, ``w_final`` the trained ones)::

        params, masks = at_init(w0, w_final, sparsity=0.8)

    References:
      Zhou et al. 2019, "Deconstructing Lottery Tickets", Section 5 ("Supermasks").
    """
    if masks is None:
        if final_params is None and criterion != "random":
            raise ValueError(f"criterion {criterion!r} needs final_params (the trained weights)")
        if sparsity is None:
            raise ValueError("at_init needs sparsity= (fraction pruned) or masks=")
        final = init_params if final_params is None else final_params  # "random": shapes only
        sc = scores_lib.criterion(criterion)(init_params, final, key=key)
        masks = select.prune(sc, masks_lib.ones_like(init_params, rules), sparsity=sparsity,
                             scope=scope)
    masks_lib.validate(init_params, masks)
    w = frozen_weights(init_params, init="signed_constant", rules=rules) if signed_constant \
        else init_params
    return masks_lib.apply_masks(w, masks), masks
