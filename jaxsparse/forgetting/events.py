"""Training-time example statistics: forgetting events, parameter snapshots, EL2N and GraNd.

**Forgetting events** (Toneva et al. 2019): an example is *forgotten* when it is classified
correctly at one presentation during training and incorrectly at its next one. The
:func:`forgetting_events` hook counts these transitions per example, on device, from the
logits the trainer computes anyway (``info.logits``: the prediction at the parameters the
batch is trained at, before the update) and the batch's example indices
(``info.indices``). Examples that are never correctly classified are *never learned*
(ranked as forgotten infinitely often in the paper); examples learned at some point and
never forgotten are *unforgettable*. :func:`count_forgetting` counts the same from a
``[T, N]`` correctness matrix (one row per presentation round).

**EL2N and GraNd** (Paul et al. 2021), scores of example difficulty early in training:
``EL2N = ||softmax(f(x)) - onehot(y)||_2`` (:func:`el2n`) and ``GraNd = ||∇_θ ℓ(f(x), y)||_2``,
one gradient per example (:func:`grand`, ``vmap`` of ``grad``); both are averaged over a
population of independently trained models, a few epochs into training. The
:func:`param_snapshots` hook stores a run's params at chosen steps (for those scores and
for VoG's checkpoints).

>>> c = jnp.array([[1, 0, 0], [0, 0, 1], [1, 0, 1]], bool)  # 3 rounds, 3 examples
>>> f = count_forgetting(c)
>>> f.events.tolist(), f.never_learned.tolist(), f.unforgettable.tolist()
([1, 0, 0], [False, True, False], [False, False, True])

References:
  Toneva, Sordoni, des Combes, Trischler, Bengio, Gordon 2019 (ICLR), "An Empirical Study
  of Example Forgetting during Deep Neural Network Learning".
  Paul, Ganguli, Dziugaite 2021 (NeurIPS), "Deep Learning on a Data Diet: Finding
  Important Examples Early in Training".
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxsparse.typing import PyTree


class Forgetting(NamedTuple):
    """Per-example forgetting statistics.

    Attributes:
      events: int32 ``[N]`` correct -> incorrect transitions between consecutive
        presentations.
      presentations: int32 ``[N]`` number of presentations.
      never_learned: bool ``[N]`` presented but never classified correctly.
      unforgettable: bool ``[N]`` classified correctly at least once and never forgotten.
    """

    events: jax.Array
    presentations: jax.Array
    never_learned: jax.Array
    unforgettable: jax.Array


def count_forgetting(correct: jax.Array, presented: jax.Array | None = None) -> Forgetting:
    """:class:`Forgetting` from a ``[T, N]`` bool correctness matrix (row = presentation round).

    Args:
      correct: bool ``[T, N]``, whether example ``n`` was classified correctly at round ``t``.
      presented: optional bool ``[T, N]``: example ``n`` was presented at round ``t`` (default
        all). Transitions are counted between an example's consecutive presentations.
    """
    c = jnp.asarray(correct, bool)
    if c.ndim != 2:
        raise ValueError(f"correct must be [T, N], got shape {tuple(c.shape)}")
    p = jnp.ones_like(c) if presented is None else jnp.asarray(presented, bool)
    if p.shape != c.shape:
        raise ValueError(f"presented has shape {tuple(p.shape)}, correct {tuple(c.shape)}")

    def body(carry, row):
        last, seen, events, learned = carry
        ok, pres = row
        events = events + (pres & seen & last & ~ok).astype(jnp.int32)
        last = jnp.where(pres, ok, last)
        return (last, seen | pres, events, learned | (pres & ok)), None

    n = c.shape[1]
    init = (jnp.zeros(n, bool), jnp.zeros(n, bool), jnp.zeros(n, jnp.int32), jnp.zeros(n, bool))
    (_, seen, events, learned), _ = jax.lax.scan(body, init, (c, p))
    count = jnp.sum(p.astype(jnp.int32), axis=0)
    return Forgetting(events, count, seen & ~learned, learned & (events == 0))


class ForgettingState(NamedTuple):
    """Hook state of :func:`forgetting_events` (per member of a population).

    Attributes:
      count: int32, number of updates seen.
      last_correct: bool ``[N]`` correctness at the latest presentation.
      learned: bool ``[N]`` correct at some presentation.
      presentations: int32 ``[N]``.
      events: int32 ``[N]`` forgetting events so far.
    """

    count: jax.Array
    last_correct: jax.Array
    learned: jax.Array
    presentations: jax.Array
    events: jax.Array


def forgetting_events(num_examples: int):
    """A :class:`jaxsparse.train.Hook` that counts forgetting events of the training set.

    At every iteration, for the batch's examples (``info.indices``; indices outside
    ``[0, num_examples)``, e.g. the ``-1`` of a step called without indices, are ignored):
    correct = ``argmax(info.logits) == info.batch[1]`` (the labels as trained on — noisy
    labels if the training set has them); a presentation that is wrong after a correct one
    adds a forgetting event. Each example should appear at most once per batch (the
    trainer's epoch batches guarantee it). Read the result with :func:`forgetting_summary`.

    Args:
      num_examples: the training set size ``N``.

    >>> hook = forgetting_events(1197)
    >>> state = train.init_state({"w": jnp.zeros((64, 10))}, optax.sgd(0.1),
    ...                          key=jax.random.key(0), hooks=[hook])
    >>> state.hook_state[0].events.shape
    (1197,)

    References:
      Toneva et al. 2019 (ICLR).
    """
    from jaxsparse import train

    n = int(num_examples)
    if n < 1:
        raise ValueError(f"num_examples must be >= 1, got {num_examples}")

    def init(state) -> ForgettingState:
        del state
        return ForgettingState(jnp.zeros((), jnp.int32), jnp.zeros(n, bool), jnp.zeros(n, bool),
                               jnp.zeros(n, jnp.int32), jnp.zeros(n, jnp.int32))

    def update(hs: ForgettingState, state, info) -> ForgettingState:
        del state
        idx = jnp.asarray(info.indices, jnp.int32)
        valid = (idx >= 0) & (idx < n)
        idx = jnp.where(valid, idx, n)  # out of range: dropped by the scatters below
        ok = jnp.argmax(info.logits, axis=-1) == info.batch[1]
        seen = hs.presentations.at[idx].get(mode="fill", fill_value=0) > 0
        last = hs.last_correct.at[idx].get(mode="fill", fill_value=False)
        forgot = (seen & last & ~ok & valid).astype(jnp.int32)
        return ForgettingState(
            hs.count + 1,
            hs.last_correct.at[idx].set(ok, mode="drop"),
            hs.learned.at[idx].set(
                hs.learned.at[idx].get(mode="fill", fill_value=False) | ok, mode="drop"),
            hs.presentations.at[idx].add(1, mode="drop"),
            hs.events.at[idx].add(forgot, mode="drop"),
        )

    return train.Hook(init, update)


def forgetting_summary(state: ForgettingState) -> Forgetting:
    """The :class:`Forgetting` statistics of a :func:`forgetting_events` hook state.

    Works on a population's stacked hook state too (leading member axis).
    """
    seen = state.presentations > 0
    return Forgetting(state.events, state.presentations, seen & ~state.learned,
                      state.learned & (state.events == 0))


def param_snapshots(steps: Sequence[int]):
    """A :class:`jaxsparse.train.Hook` storing the params after each of ``steps`` updates.

    The hook state is the params' tree with a leading axis of ``len(steps)`` (step order);
    entry ``i`` holds the params after ``steps[i]`` updates once that step is reached
    (``0``: the initial params) and the initial params before. The write runs under
    ``lax.cond`` on the shared step clock ``info.step``, so for a population it is a branch
    taken on the listed steps only, not a select over the buffer at every step.

    >>> hook = param_snapshots([0, 10, 20])
    >>> state = train.init_state({"w": jnp.ones((3, 2))}, optax.sgd(0.1), key=jax.random.key(0),
    ...                          hooks=[hook])
    >>> state.hook_state[0]["w"].shape
    (3, 3, 2)
    """
    from jaxsparse import train

    steps = [int(s) for s in steps]
    if not steps or steps[0] < 0 or any(b <= a for a, b in zip(steps, steps[1:], strict=False)):
        raise ValueError("param_snapshots: steps must be a non-empty increasing list of steps "
                         f">= 0, got {steps}")
    steps_np = np.asarray(steps, np.int32)
    count = len(steps_np)

    def init(state) -> PyTree:
        return jax.tree.map(lambda p: jnp.broadcast_to(p, (count, *jnp.shape(p))), state.params)

    def update(buf: PyTree, state, info) -> PyTree:
        done = jnp.asarray(info.step, jnp.int32) + 1  # updates done after this one
        table = jnp.asarray(steps_np)
        i = jnp.clip(jnp.searchsorted(table, done), 0, count - 1)
        hit = table[i] == done

        def write(b):
            return jax.tree.map(lambda s, p: s.at[i].set(p), b, state.params)

        return jax.lax.cond(hit, write, lambda b: b, buf)

    return train.Hook(init, update)


def el2n(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """float32 ``[..., N]``: ``||softmax(logits) - onehot(label)||_2`` per example.

    ``logits`` may carry leading axes (members); average them for the population score.

    >>> round(float(el2n(jnp.array([[0.0, 0.0]]), jnp.array([1]))[0]), 4)
    0.7071
    """
    logits = jnp.asarray(logits, jnp.float32)
    onehot = jnp.broadcast_to(jax.nn.one_hot(labels, logits.shape[-1]), logits.shape)
    err = jax.nn.softmax(logits, axis=-1) - onehot
    return jnp.sqrt(jnp.sum(jnp.square(err), axis=-1))


def grand(
    apply_fn: Callable[..., tuple[jax.Array, PyTree]],
    params: PyTree,
    x: jax.Array,
    y: jax.Array,
    *,
    model_state: PyTree | None = None,
    masks: PyTree | None = None,
    loss_fn: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
    batch_size: int = 128,
) -> jax.Array:
    """float32 ``[N]``: the L2 norm of each example's loss gradient w.r.t. all params (GraNd).

    ``vmap`` of ``grad`` of the one-example loss (eval mode, ``train=False``), in
    ``lax.map`` batches of ``batch_size`` examples. With ``masks``, pruned entries' gradients
    are left out (the norm over the weights that exist). Pure: vmap it over a population.

    Args:
      apply_fn: ``apply_fn(params, model_state, x, *, train, key) -> (logits, state)``.
      params: the model's params (e.g. a snapshot a few epochs into training).
      x, y: examples ``[N, ...]`` and int labels ``[N]``.
      model_state: batch statistics etc. (default ``{}``).
      masks: optional bool masks of the params.
      loss_fn: per-example ``loss_fn(logits [B, C], labels [B]) -> [B]`` (default softmax
        cross-entropy).
      batch_size: examples per vmapped group.

    >>> f = lambda p, s, x, *, train, key: (x @ p["w"], s)
    >>> g = grand(f, {"w": jnp.zeros((2, 2))}, jnp.array([[3.0, 4.0]]), jnp.array([0]))
    >>> round(float(g[0]), 4)  # ||x|| * ||softmax - onehot|| = 5 * sqrt(0.5)
    3.5355
    """
    import optax

    from jaxsparse import masks as masks_lib

    loss_fn = optax.softmax_cross_entropy_with_integer_labels if loss_fn is None else loss_fn
    ms = {} if model_state is None else model_state
    x, y = jnp.asarray(x), jnp.asarray(y)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x has {x.shape[0]} examples but y has {y.shape[0]}")

    def one(xi, yi):
        def loss(p):
            logits, _ = apply_fn(p, ms, xi[None], train=False, key=jax.random.key(0))
            return loss_fn(logits, yi[None])[0]

        g = jax.grad(loss)(params)
        if masks is not None:
            g = masks_lib.apply_masks(g, masks)
        return jnp.sqrt(sum(jnp.sum(jnp.square(leaf)) for leaf in jax.tree.leaves(g)))

    n = x.shape[0]
    bs = max(1, min(int(batch_size), n))
    nb = -(-n // bs)
    pad = nb * bs - n
    xp = jnp.concatenate([x, jnp.zeros((pad, *x.shape[1:]), x.dtype)]) if pad else x
    yp = jnp.concatenate([y, jnp.zeros((pad,), y.dtype)]) if pad else y
    out = jax.lax.map(lambda b: jax.vmap(one)(*b),
                      (xp.reshape(nb, bs, *x.shape[1:]), yp.reshape(nb, bs)))
    return out.reshape(-1)[:n]
