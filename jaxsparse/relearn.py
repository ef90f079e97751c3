"""Forget-and-relearn: forgetting operators on params, and generations over the one trainer.

Training alternates a *forgetting* step (re-initialise, shrink, perturb part of the network)
with relearning (ordinary training). Zhou et al. 2022 argue that forgetting hits what the
network fits only weakly — mislabeled or atypical examples — harder than what it learned well,
so relearning on the same data can end in a better network; :func:`generations` measures it.

Every forgetting operator here is a pure function ``op(params, *, key, init_fn) -> params``,
where ``init_fn(key) -> params`` draws fresh parameters (for a ``jaxsparse.models.functional``
model: ``lambda k: fn.init_fn(k)[0]``). The fresh draw is ``init_fn(key)``; any other
randomness (random masks, noise) comes from ``jax.random.fold_in(key, 1)``. Which leaves an
operator touches is decided by path rules (:mod:`jaxsparse.rules`: ``[(regex or predicate,
bool), ...]``, first match wins, a leaf no rule matches is left alone, a rule that matches no
leaf is an error naming it); ``rules=None`` means every leaf. Untouched leaves come back as
the very same arrays.

* :func:`reinit`: re-initialise the selected leaves.
* :func:`later_layers`: LLF, re-initialise every leaf from a named layer onward (tree order).
* :func:`knowledge_evolution`: KE, keep a fit hypothesis (the first ``fraction`` of the
  channels, or a fixed random weight-level mask), re-initialise the rest.
* :func:`shrink_perturb`: ``λ θ + σ ε`` (Ash & Adams 2020).
* :func:`random_reinit`: re-initialise a random ``fraction`` of each selected leaf's entries.
* :func:`imp`: IMP's prune-and-rewind (``jaxsparse.lottery.prune_and_rewind``) as a forgetting
  operator that also changes the masks (a :class:`MaskedForget`).

:func:`generations` runs ``N`` generations of ``jaxsparse.train.fit`` with an operator between
them (or, with ``forget=None``, the same number of plain training steps as one continued run)
and returns per-generation tables — test accuracy; training accuracy on clean and on noisy
examples; right after each forgetting step, how much of what was fitted was forgotten in each
group — and per-example logits (:func:`write_records` stores them in the Parquet record of
:mod:`jaxsparse.forgetting.records`). :func:`inject_label_noise` makes the noisy subset.

>>> params = {"a": {"kernel": jnp.ones((2, 2))}, "b": {"kernel": jnp.ones((2, 2))}}
>>> init_fn = lambda key: jax.tree.map(jnp.zeros_like, params)
>>> new = later_layers("b")(params, key=jax.random.key(0), init_fn=init_fn)
>>> float(new["a"]["kernel"].sum()), float(new["b"]["kernel"].sum())
(4.0, 0.0)

References:
  Zhou, Vani, Larochelle & Courville 2022, "Fortuitous Forgetting in Connectionist Networks",
  ICLR.
  Taha, Shrivastava & Davis 2021, "Knowledge Evolution in Neural Networks", CVPR.
  Ash & Adams 2020, "On Warm-Starting Neural Network Training", NeurIPS (shrink and perturb).
  Frankle & Carbin 2019, "The Lottery Ticket Hypothesis", ICLR (prune and rewind).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxsparse import rules as rules_lib
from jaxsparse import select
from jaxsparse import train as train_lib
from jaxsparse.typing import PyTree

InitFn = Callable[[jax.Array], PyTree]
Forget = Callable[..., PyTree]


# ---------------------------------------------------------------------------------------
# Selecting leaves and applying a per-leaf rule


def selected(params: PyTree, rules: rules_lib.Rules | None, *, name: str = "rules") -> list[bool]:
    """Per leaf (tree order), whether ``rules`` select it: first match wins, unmatched: no.

    ``rules=None`` selects every leaf. A rule that matches no leaf is an error naming it.

    >>> selected({"fc0": {"kernel": 1.0, "bias": 0.0}}, [("kernel", True)])
    [False, True]
    """
    if rules is None:
        return [True] * len(jax.tree.leaves(params))
    tree = rules_lib.resolve(rules, params, default=False, name=name, require_all_used=True)
    return [bool(v) for v in jax.tree.leaves(tree)]


def _fresh(init_fn: InitFn | None, key: jax.Array, params: PyTree, what: str) -> list:
    if init_fn is None:
        raise ValueError(f"{what} re-initialises parameters: pass init_fn=(key -> params)")
    draw = init_fn(key)
    if jax.tree.structure(draw) != jax.tree.structure(params):
        raise ValueError(f"{what}: init_fn(key) returned a tree with leaves "
                         f"{rules_lib.leaf_paths(draw)}, the params have "
                         f"{rules_lib.leaf_paths(params)}")
    out = []
    for (path, p), d in zip(rules_lib.leaves_with_paths(params), jax.tree.leaves(draw),
                            strict=True):
        if np.shape(d) != np.shape(p):
            raise ValueError(f"{what}: init_fn draw at {path!r} has shape {np.shape(d)}, the "
                             f"param has {np.shape(p)}")
        out.append(d)
    return out


def _map_selected(params: PyTree, sel: list[bool], fn: Callable[..., jax.Array]) -> PyTree:
    """``fn(i, path, leaf)`` on the selected leaves; the others are returned as they are."""
    leaves = rules_lib.leaves_with_paths(params)
    out = [fn(i, path, leaf) if s else leaf
           for i, ((path, leaf), s) in enumerate(zip(leaves, sel, strict=True))]
    return jax.tree.unflatten(jax.tree.structure(params), out)


def _exact_random_mask(key: jax.Array, shape: tuple[int, ...], count: int) -> jax.Array:
    """A bool array of ``shape`` with exactly ``count`` True entries, uniformly at random."""
    size = int(np.prod(shape))
    rank = jnp.argsort(jnp.argsort(jax.random.uniform(key, (size,))))
    return (rank < count).reshape(shape)


def _check_fraction(value: float, what: str) -> None:
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{what} must be a fraction in [0, 1], got {value!r}")


# ---------------------------------------------------------------------------------------
# Forgetting operators


def reinit(rules: rules_lib.Rules | None = None) -> Forget:
    """Re-initialises the leaves ``rules`` select with the fresh draw ``init_fn(key)``.

    >>> op = reinit([("head", True)])
    >>> p = {"fc0": {"kernel": jnp.ones(2)}, "head": {"kernel": jnp.ones(2)}}
    >>> op(p, key=jax.random.key(0), init_fn=lambda k: jax.tree.map(jnp.zeros_like, p))["head"]
    {'kernel': Array([0., 0.], dtype=float32)}
    """
    rules_lib.check_rules(rules, "reinit rules")

    def op(params: PyTree, *, key: jax.Array, init_fn: InitFn | None = None) -> PyTree:
        sel = selected(params, rules, name="reinit rules")
        fresh = _fresh(init_fn, key, params, "reinit")
        return _map_selected(params, sel, lambda i, path, x: fresh[i].astype(x.dtype))

    return op


def later_layers(from_path: str) -> Forget:
    """LLF: re-initialises every leaf from the first one whose path matches ``from_path`` on.

    "Onward" is the params' tree order (``jaxsparse.rules.leaf_paths``; dict keys sorted, so
    ``conv0 … conv5, fc0, fc1, head``). For ResNet-18 the paper re-initialises ``layer4`` and
    the classifier every generation.

    Args:
      from_path: a regex searched in the leaf paths; the first matching leaf starts the
        re-initialised block. An error names it if no leaf matches.

    References:
      Zhou et al. 2022, "Fortuitous Forgetting in Connectionist Networks", ICLR.
    """
    rules_lib.check_rules([(from_path, True)], "later_layers")

    def op(params: PyTree, *, key: jax.Array, init_fn: InitFn | None = None) -> PyTree:
        paths = rules_lib.leaf_paths(params)
        start = None
        for i, path in enumerate(paths):
            if rules_lib.match([(from_path, True)], path, default=False):
                start = i
                break
        if start is None:
            raise ValueError(f"later_layers: {from_path!r} matches no parameter; leaf paths "
                             f"are {paths}")
        sel = [i >= start for i in range(len(paths))]
        fresh = _fresh(init_fn, key, params, "later_layers")
        return _map_selected(params, sel, lambda i, path, x: fresh[i].astype(x.dtype))

    return op


def _leaf_axes(axes: Any, path: str, leaf: Any) -> tuple[int, ...]:
    if all(isinstance(a, int) for a in axes):
        return tuple(axes)
    value = rules_lib.match(axes, path, leaf, default=(-1,))
    return (value,) if isinstance(value, int) else tuple(value)


def fit_hypothesis(
    params: PyTree,
    fraction: float,
    *,
    mode: Literal["channels", "random"] = "channels",
    axes: Sequence[int] | rules_lib.Rules = (-1,),
    rules: rules_lib.Rules | None = None,
    mask_key: jax.Array | None = None,
) -> PyTree:
    """KE's fit-hypothesis mask: ``True`` = kept across generations, ``False`` = re-initialised.

    ``mode="channels"``: the entries whose index along each of ``axes`` (those the leaf has;
    ``-1`` = output channels / units) is below ``num_pruned(fraction, size)`` (the library's
    rounding rule: the nearest integer, halves up). ``axes`` may be path rules ``[(regex,
    axes), ...]`` (first match wins; default ``(-1,)``), e.g. for a slim dense fit hypothesis
    of an MLP: ``[("fc0", (-1,)), ("head/kernel", (-2,)), ("head/bias", ()), (".*", (-2, -1))]``
    (the first layer keeps every input, the classifier every class). ``mode="random"``: exactly
    ``num_pruned(fraction, leaf size)`` entries per leaf, uniformly at random from
    ``mask_key`` (the same key every generation: the fit hypothesis is fixed). Leaves
    ``rules`` do not select are all ``True`` (never re-initialised).

    >>> m = fit_hypothesis({"w": jnp.ones((2, 5))}, 0.8)["w"]
    >>> m.astype(int).tolist()
    [[1, 1, 1, 1, 0], [1, 1, 1, 1, 0]]
    """
    _check_fraction(fraction, "knowledge_evolution fraction")
    if mode not in ("channels", "random"):
        raise ValueError(f"knowledge_evolution mode must be 'channels' or 'random', got {mode!r}")
    if mode == "random" and mask_key is None:
        raise ValueError("knowledge_evolution mode='random' needs mask_key= (fixed across "
                         "generations)")
    sel = selected(params, rules, name="knowledge_evolution rules")

    def one(i: int, path: str, x: Any) -> jax.Array:
        shape = tuple(np.shape(x))
        if mode == "random":
            k = select.num_pruned(fraction, int(np.prod(shape)))
            return _exact_random_mask(jax.random.fold_in(mask_key, i), shape, k)
        keep = jnp.ones(shape, bool)
        for ax in _leaf_axes(axes, path, x):
            if not -len(shape) <= ax < len(shape):
                continue  # an axis the leaf does not have (a bias has no input axis)
            a = ax % len(shape)
            k = select.num_pruned(fraction, shape[a])
            idx = jnp.arange(shape[a]).reshape([-1 if d == a else 1 for d in range(len(shape))])
            keep = keep & jnp.broadcast_to(idx < k, shape)
        return keep

    ones = jax.tree.map(lambda x: jnp.ones(np.shape(x), bool), params)
    leaves = rules_lib.leaves_with_paths(params)
    out = [one(i, path, x) if s else m
           for i, ((path, x), s, m) in enumerate(zip(leaves, sel, jax.tree.leaves(ones),
                                                      strict=True))]
    return jax.tree.unflatten(jax.tree.structure(params), out)


def knowledge_evolution(
    fraction: float = 0.8,
    *,
    mode: Literal["channels", "random"] = "channels",
    axes: Sequence[int] | rules_lib.Rules = (-1,),
    rules: rules_lib.Rules | None = None,
    mask_key: jax.Array | None = None,
) -> Forget:
    """KE: keeps the fit hypothesis (see :func:`fit_hypothesis`), re-initialises the rest.

    Args:
      fraction: share of each selected leaf kept (0.8: the first 80% of the channels).
      mode: ``"channels"`` (first ``fraction`` along ``axes``) or ``"random"`` (a fixed
        weight-level mask drawn from ``mask_key``).
      axes: channel axes for ``mode="channels"``: ``(-1,)`` output channels, or per-leaf path
        rules (see :func:`fit_hypothesis`) for a slim dense sub-network.
      rules: which leaves are split (default: all).
      mask_key: the fixed key of the random mask.

    References:
      Taha, Shrivastava & Davis 2021, "Knowledge Evolution in Neural Networks", CVPR.
    """
    _check_fraction(fraction, "knowledge_evolution fraction")
    rules_lib.check_rules(rules, "knowledge_evolution rules")

    def op(params: PyTree, *, key: jax.Array, init_fn: InitFn | None = None) -> PyTree:
        fit = jax.tree.leaves(fit_hypothesis(params, fraction, mode=mode, axes=axes,
                                             rules=rules, mask_key=mask_key))
        sel = selected(params, rules, name="knowledge_evolution rules")
        fresh = _fresh(init_fn, key, params, "knowledge_evolution")
        return _map_selected(params, sel, lambda i, path, x: jnp.where(
            fit[i], x, fresh[i].astype(x.dtype)))

    return op


def shrink_perturb(
    shrink: float,
    noise: float,
    *,
    kind: Literal["normal", "init"] = "normal",
    rules: rules_lib.Rules | None = None,
) -> Forget:
    """Shrink and perturb: ``θ ← shrink · θ + noise · ε`` on the selected leaves.

    ``kind="normal"``: ``ε ~ N(0, 1)`` per entry (the paper's ``θ ← λθ + p``, ``p ~ N(0,
    σ²)``); ``kind="init"``: ``ε`` = the fresh draw ``init_fn(key)`` (noise scaled like each
    layer's initialisation). No defaults: the paper tunes both per task.

    >>> op = shrink_perturb(0.5, 0.0)
    >>> op({"w": jnp.array([2.0, -4.0])}, key=jax.random.key(0))["w"]
    Array([ 1., -2.], dtype=float32)

    References:
      Ash & Adams 2020, "On Warm-Starting Neural Network Training", NeurIPS.
    """
    if kind not in ("normal", "init"):
        raise ValueError(f"shrink_perturb kind must be 'normal' or 'init', got {kind!r}")
    rules_lib.check_rules(rules, "shrink_perturb rules")

    def op(params: PyTree, *, key: jax.Array, init_fn: InitFn | None = None) -> PyTree:
        sel = selected(params, rules, name="shrink_perturb rules")
        fresh = _fresh(init_fn, key, params, "shrink_perturb") if kind == "init" else None
        noise_key = jax.random.fold_in(key, 1)

        def one(i, path, x):
            x = jnp.asarray(x)
            eps = (fresh[i].astype(x.dtype) if fresh is not None else jax.random.normal(
                jax.random.fold_in(noise_key, i), x.shape, x.dtype))
            return jnp.asarray(shrink, x.dtype) * x + jnp.asarray(noise, x.dtype) * eps

        return _map_selected(params, sel, one)

    return op


def random_reinit(fraction: float, *, rules: rules_lib.Rules | None = None) -> Forget:
    """Re-initialises exactly ``num_pruned(fraction, size)`` random entries of each selected leaf.

    The entries are drawn anew every call from ``fold_in(key, 1)``; their new values come
    from ``init_fn(key)``.
    """
    _check_fraction(fraction, "random_reinit fraction")
    rules_lib.check_rules(rules, "random_reinit rules")

    def op(params: PyTree, *, key: jax.Array, init_fn: InitFn | None = None) -> PyTree:
        sel = selected(params, rules, name="random_reinit rules")
        fresh = _fresh(init_fn, key, params, "random_reinit")
        mask_key = jax.random.fold_in(key, 1)

        def one(i, path, x):
            shape = tuple(np.shape(x))
            k = select.num_pruned(fraction, int(np.prod(shape)))
            hit = _exact_random_mask(jax.random.fold_in(mask_key, i), shape, k)
            return jnp.where(hit, fresh[i].astype(jnp.result_type(x)), x)

        return _map_selected(params, sel, one)

    return op


class MaskedForget(NamedTuple):
    """A forgetting operator that also changes the masks.

    ``update(params, masks, *, key, init_fn, rewind) -> (params, masks)``; ``rewind`` is the
    first generation's starting params (the rewind point). Made by :func:`imp`.
    """

    update: Callable[..., tuple[PyTree, PyTree]]


def imp(plan: Any) -> MaskedForget:
    """IMP's prune-and-rewind as a forgetting operator: one ``jaxsparse.lottery`` level.

    Prunes ``plan``'s rates of the remaining weights by its criterion
    (``jaxsparse.lottery.prune_and_rewind``) and restarts from the rewind point (the first
    generation's starting params) with the new masks.

    >>> op = imp(lottery.Plan(rate=0.5))
    >>> p = {"w": jnp.array([[1.0, -3.0], [2.0, 0.5]])}
    >>> start, m = op.update(p, masks.ones_like(p), key=jax.random.key(0), init_fn=None,
    ...                     rewind=p)
    >>> m["w"].tolist()
    [[False, True], [True, False]]

    References:
      Frankle & Carbin 2019, "The Lottery Ticket Hypothesis", ICLR.
    """
    from jaxsparse import lottery

    if not isinstance(plan, lottery.Plan):
        raise TypeError(f"imp needs a jaxsparse.lottery.Plan, got {type(plan).__name__}")

    def update(params, masks, *, key, init_fn=None, rewind):
        needs_init = plan.mask1 in ("reinit", "signed_reinit")
        new_masks, start = lottery.prune_and_rewind(params, masks, rewind, plan=plan, key=key,
                                                    init_fn=init_fn if needs_init else None)
        return start, new_masks

    return MaskedForget(update)


# ---------------------------------------------------------------------------------------
# Label noise


def inject_label_noise(labels: Any, fraction: float, *, num_classes: int,
                       key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Relabels exactly ``num_pruned(fraction, N)`` random examples to a different random class.

    Returns ``(noisy_labels, is_noisy)``; ``is_noisy[i]`` iff example ``i`` was relabelled
    (its new label always differs from the original).

    >>> y, noisy = inject_label_noise(jnp.zeros(10, jnp.int32), 0.3, num_classes=10,
    ...                               key=jax.random.key(0))
    >>> int(noisy.sum()), bool(jnp.all((y != 0) == noisy))
    (3, True)
    """
    _check_fraction(fraction, "label noise fraction")
    labels = jnp.asarray(labels, jnp.int32)
    if labels.ndim != 1:
        raise ValueError(f"labels must be [N], got shape {labels.shape}")
    if num_classes < 2:
        raise ValueError(f"label noise needs num_classes >= 2, got {num_classes}")
    n = labels.shape[0]
    k_pick, k_shift = jax.random.split(key)
    is_noisy = _exact_random_mask(k_pick, (n,), select.num_pruned(fraction, n))
    shift = jax.random.randint(k_shift, (n,), 1, num_classes)
    return jnp.where(is_noisy, (labels + shift) % num_classes, labels), is_noisy


# ---------------------------------------------------------------------------------------
# Generations over the one trainer


class RelearnResult(NamedTuple):
    """What :func:`generations` returns.

    Attributes:
      state: the last generation's final ``TrainState``.
      table: one dict per generation (see :func:`generations`).
      histories: ``train.fit`` histories, one per generation.
      logits: float32 ``[G, N, C]``: training-set logits at the end of each generation.
      logits_after_forget: ``[G, N, C]`` right after the forgetting step that starts each
        generation (generation 0 and ``forget=None``: NaN).
      labels: int32 ``[N]`` the training labels (noisy ones included).
      noisy: bool ``[N]`` or ``None``. steps: cumulative training steps per generation.
    """

    state: Any
    table: list[dict[str, float]]
    histories: list[dict[str, list]]
    logits: np.ndarray
    logits_after_forget: np.ndarray
    labels: np.ndarray
    noisy: np.ndarray | None
    steps: list[int]


def _train_split(data: Any) -> tuple[jax.Array, jax.Array]:
    split = data["train"] if isinstance(data, dict) else data.train
    return jnp.asarray(split[0]), jnp.asarray(split[1], jnp.int32)


def _logits_fn(apply_fn: Callable, batch_size: int) -> Callable:
    def logits(params, model_state, x):
        n = x.shape[0]
        bs = min(batch_size, n)
        nb = -(-n // bs)
        pad = nb * bs - n
        xp = jnp.concatenate([x, jnp.zeros((pad, *x.shape[1:]), x.dtype)]) if pad else x
        out = jax.lax.map(lambda xb: apply_fn(params, model_state, xb, train=False,
                                              key=jax.random.key(0))[0],
                          xp.reshape(nb, bs, *x.shape[1:]))
        return out.reshape(nb * bs, -1)[:n]

    return jax.jit(logits)


def _accuracy(correct: np.ndarray, subset: np.ndarray | None) -> float:
    if subset is None:
        return float(correct.mean())
    return float(correct[subset].mean()) if subset.any() else float("nan")


def generations(
    apply_fn: Callable[..., tuple[jax.Array, PyTree]],
    tx: optax.GradientTransformation,
    params: PyTree,
    data: Any,
    *,
    forget: Forget | MaskedForget | None,
    num_generations: int,
    num_steps: int,
    batch_size: int,
    eval_every: int,
    key: jax.Array,
    init_fn: InitFn | None = None,
    model_state: PyTree | None = None,
    masks: PyTree | None = None,
    noisy: Any = None,
    true_labels: Any = None,
    hooks: Sequence[train_lib.Hook] = (),
    pruner: Any = None,
    loss_fn: Callable = train_lib.cross_entropy,
    eval_batch_size: int = 1000,
    unroll: int | bool = 1,
    checkpoint_dir: str | None = None,
    callback: Callable[[int, dict[str, float]], None] | None = None,
) -> RelearnResult:
    """Forget-and-relearn: ``num_generations`` runs of the one trainer, forgetting in between.

    All generations share one ``jaxsparse.train.Trainer`` (each chunk length compiles once).

    Generation 0 trains ``params`` for ``num_steps``. Each later generation applies
    ``forget`` to the previous generation's final params (key ``fold_in(key, 1000 + g)``; a
    :class:`MaskedForget` may change the masks too), then trains them for ``num_steps`` with
    a fresh optimizer state, fresh hook states and the data order of ``fold_in(key, g)``.
    ``forget=None`` is the control: the same number of plain training steps as ONE continued
    run (optimizer state and data order carry on), read at the same boundaries; its
    generation 0 is bitwise the relearning run's generation 0.

    Table row of generation ``g``: ``generation``, ``step`` (cumulative training steps),
    ``test_accuracy`` / ``val_accuracy`` (the last evaluation of the generation; NaN without
    the split), ``train_accuracy`` on the training labels, ``clean_accuracy`` /
    ``noisy_accuracy`` (on the noisy subset: the rate of fitting the *noisy* labels),
    ``noisy_true_accuracy`` (noisy subset against ``true_labels``), and for ``g >= 1`` with
    ``forget``: ``test_accuracy_after_forget``, ``clean_accuracy_after_forget``,
    ``noisy_accuracy_after_forget`` and ``forgotten_all`` / ``forgotten_clean`` /
    ``forgotten_noisy``: of the examples of that group fitted (predicted as their training
    label) at the end of generation ``g - 1``, the fraction no longer fitted right after
    forgetting (NaN where it does not apply).

    Args:
      apply_fn, tx, loss_fn: as for ``train.fit``.
      params: generation 0's starting params (also the rewind point of :func:`imp`).
      data: a ``jaxsparse.data.Dataset`` or ``{"train": (x, y), "val": ..., "test": ...}``
        (the training labels may be noisy).
      forget: a forgetting operator, a :class:`MaskedForget`, or ``None`` (plain training).
      num_generations: ``>= 1``.
      num_steps: training iterations per generation.
      batch_size, eval_every: as for ``train.fit`` (``num_steps`` should be a multiple of
        ``eval_every``).
      key: the run's key.
      init_fn: ``key -> params`` for the operators that re-initialise.
      model_state, masks: the model's non-trainable state and masks (generation 0).
      noisy: bool ``[N]``: the noisy subset of the training set (or ``None``).
      true_labels: ``[N]`` the clean labels, for ``noisy_true_accuracy``.
      hooks, pruner: passed to ``train.init_state`` and ``train.fit`` every generation.
      eval_batch_size: batch size of the evaluations.
      unroll: passed to ``train.Trainer`` (conv models on CPU: see ``make_train_chunk``).
      checkpoint_dir: checkpoint (and resume) each generation in ``<dir>/gen_<g>``
        (``forget=None``: one run in ``<dir>/plain``).
      callback: ``callback(generation, row)`` after each generation.

    Returns:
      A :class:`RelearnResult`.

    References:
      Zhou et al. 2022, "Fortuitous Forgetting in Connectionist Networks", ICLR.
    """
    if int(num_generations) < 1:
        raise ValueError(f"generations: num_generations must be >= 1, got {num_generations!r}")
    if int(num_steps) < 1:
        raise ValueError(f"generations: num_steps must be >= 1, got {num_steps!r}")
    if forget is not None and not callable(forget) and not isinstance(forget, MaskedForget):
        raise TypeError(f"forget must be an operator op(params, *, key, init_fn), a "
                        f"MaskedForget or None, got {type(forget).__name__}")
    x_tr, y_tr = _train_split(data)
    n = int(x_tr.shape[0])
    noisy_np = None if noisy is None else np.asarray(noisy, bool)
    if noisy_np is not None and noisy_np.shape != (n,):
        raise ValueError(f"noisy must be a bool [N={n}] array, got shape {noisy_np.shape}")
    true_np = None if true_labels is None else np.asarray(true_labels)
    if true_np is not None and true_np.shape != (n,):
        raise ValueError(f"true_labels must be [N={n}], got shape {true_np.shape}")
    labels = np.asarray(y_tr)
    clean_np = None if noisy_np is None else ~noisy_np
    logits_fn = _logits_fn(apply_fn, eval_batch_size)
    # One trainer for every generation: each chunk length compiles once.
    trainer = train_lib.Trainer(apply_fn, tx, batch_size=batch_size, loss_fn=loss_fn,
                                hooks=hooks, pruner=pruner, eval_batch_size=eval_batch_size,
                                unroll=unroll)
    eval_fn = trainer.evaluator()
    test = None
    if isinstance(data, dict):
        test = data.get("test")
    elif getattr(data, "test", None) is not None and len(data.test[0]):
        test = data.test

    def fit(state, total, directory):
        return trainer.fit(state, data, num_steps=total, eval_every=eval_every,
                           checkpoint_dir=directory)

    def start(p, ms, m, g):
        return trainer.init_state(p, key=jax.random.fold_in(key, g), model_state=ms, masks=m)

    def group_rows(correct: np.ndarray, suffix: str = "") -> dict[str, float]:
        return {f"clean_accuracy{suffix}": _accuracy(correct, clean_np),
                f"noisy_accuracy{suffix}": _accuracy(correct, noisy_np)}

    nan = float("nan")
    table, histories, all_logits, after_logits, steps = [], [], [], [], []
    state = start(params, model_state, masks, 0)
    rewind = state.params
    prev_correct = None
    for g in range(int(num_generations)):
        row: dict[str, float] = {"generation": g}
        after = None
        if g > 0 and forget is not None:
            k = jax.random.fold_in(key, 1000 + g)
            if isinstance(forget, MaskedForget):
                new_params, new_masks = forget.update(state.params, state.masks, key=k,
                                                      init_fn=init_fn, rewind=rewind)
            else:
                new_params, new_masks = forget(state.params, key=k, init_fn=init_fn), state.masks
            state = start(new_params, state.model_state, new_masks, g)
            after = np.asarray(logits_fn(state.params, state.model_state, x_tr), np.float32)
            correct_after = after.argmax(-1) == labels
            row |= group_rows(correct_after, "_after_forget")
            if test is not None:
                out = eval_fn(state.params, state.model_state, state.masks,
                              jnp.asarray(test[0]), jnp.asarray(test[1]))
                row["test_accuracy_after_forget"] = float(out["accuracy"])
            for name, group in (("all", np.ones(n, bool)), ("clean", clean_np),
                                ("noisy", noisy_np)):
                fitted = None if group is None else prev_correct & group
                row[f"forgotten_{name}"] = (float((fitted & ~correct_after).sum() / fitted.sum())
                                            if fitted is not None and fitted.any() else nan)
        if forget is None:
            total = (g + 1) * int(num_steps)
            directory = None if checkpoint_dir is None else os.path.join(checkpoint_dir, "plain")
        else:
            total = int(num_steps)
            directory = (None if checkpoint_dir is None
                         else os.path.join(checkpoint_dir, f"gen_{g:02d}"))
        result = fit(state, total, directory)
        state = result.state
        h = result.history
        histories.append(h)
        logits = np.asarray(logits_fn(state.params, state.model_state, x_tr), np.float32)
        correct = logits.argmax(-1) == labels
        steps.append((g + 1) * int(num_steps))
        row |= {"step": steps[-1],
                "test_accuracy": float(h["test_accuracy"][-1]),
                "val_accuracy": float(h["val_accuracy"][-1]),
                "train_accuracy": float(correct.mean())}
        row |= group_rows(correct)
        row["noisy_true_accuracy"] = (_accuracy(logits.argmax(-1) == true_np, noisy_np)
                                      if true_np is not None and noisy_np is not None else nan)
        for name in ("test_accuracy_after_forget", "clean_accuracy_after_forget",
                     "noisy_accuracy_after_forget", "forgotten_all", "forgotten_clean",
                     "forgotten_noisy"):
            row.setdefault(name, nan)
        table.append(row)
        all_logits.append(logits)
        after_logits.append(np.full_like(logits, np.nan) if after is None else after)
        prev_correct = correct
        if callback is not None:
            callback(g, row)
    return RelearnResult(state, table, histories, np.stack(all_logits), np.stack(after_logits),
                         labels, noisy_np, steps)


def write_records(root: str, result: RelearnResult, *, name: str = "relearn") -> list[str]:
    """Writes the per-example logits of every generation to the Parquet record at ``root``.

    One part per generation, ``<name>_gen_<g>``, with the variants ``"<name>/gen=<g>"`` (end
    of the generation) and, after a forgetting step, ``"<name>/gen=<g>/after_forget"``;
    split ``"train"``, checkpoint = cumulative step, example ids = training-set indices
    (:mod:`jaxsparse.forgetting.records`; read back with ``records.load``). Returns the paths.
    """
    from jaxsparse.forgetting import predictions, records

    paths = []
    for g, step in enumerate(result.steps):
        tables = [records.to_table(predictions.population(
            f"{name}/gen={g}", labels=result.labels, logits=result.logits[g][None],
            split="train", checkpoint=step))]
        if not np.isnan(result.logits_after_forget[g]).any():
            tables.append(records.to_table(predictions.population(
                f"{name}/gen={g}/after_forget", labels=result.labels,
                logits=result.logits_after_forget[g][None], split="train",
                checkpoint=result.steps[g - 1])))
        paths.append(records.write_part(root, f"{name}_gen_{g:02d}", tables))
    return paths


def table_text(table: Sequence[dict[str, float]], columns: Sequence[str] | None = None) -> str:
    """A fixed-width text table of :func:`generations` rows (NaN shown as ``-``)."""
    columns = list(columns or table[0].keys())
    fmt = lambda v: "-" if isinstance(v, float) and math.isnan(v) else (  # noqa: E731
        f"{v:.4f}" if isinstance(v, float) else str(v))
    body = [[fmt(r.get(c, float("nan"))) for c in columns] for r in table]
    widths = [max(len(c), *(len(b[i]) for b in body)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(b, widths, strict=True)) for b in body]
    return "\n".join(lines)


__all__ = [
    "MaskedForget", "RelearnResult", "fit_hypothesis", "generations", "imp",
    "inject_label_noise", "knowledge_evolution", "later_layers", "random_reinit", "reinit",
    "selected", "shrink_perturb", "table_text", "write_records",
]
