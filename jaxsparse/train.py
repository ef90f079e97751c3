"""The on-device training engine: pure masked steps, compiled-scan chunks, evaluation, fit.

Data for small datasets lives on the device; a *chunk* of ``num_steps`` iterations (an epoch,
or the ``eval_every`` iterations between two evaluations) is ONE compiled ``lax.scan`` whose
batches are gathered on device from a per-epoch permutation derived from the state's key. No
per-step Python, no host transfer. Everything is a pure function of arrays: ``jax.vmap`` it
over stacked states for populations (per-member learning rates via
``optax.inject_hyperparams`` live in the stacked ``opt_state``).

Masks are applied inside the step. The invariant is that ``state.params`` is zero at every
pruned entry: :func:`init_state` masks the params once, the step zeroes the gradients of
pruned entries before the optimizer and masks the new params after the update, so pruned
weights are exactly zero after every step whatever the optimizer (weight decay, momentum).
The forward pass therefore needs no mask of its own (a select per kernel in the forward and
backward pass measured 5-8% on a LeNet step; ``benchmarks/bench_masked_step.py``).

If ``tx`` is an ``optax.GradientTransformationExtraArgs`` (every optax
alias and ``jaxsparse.masked(tx)`` are) the step passes ``masks=state.masks`` to
``tx.update``, so ``jaxsparse.masked`` also keeps pruned moments at zero.

Randomness: ``state.key`` never changes. Epoch ``e``'s data order is
``permutation(fold_in(fold_in(key, 0), e))`` (the last ``n % batch_size`` examples of each
epoch's permutation are dropped); step ``t``'s augmentation / model key is
``fold_in(fold_in(key, 1), t)``. The training trajectory is therefore a function of the state
alone, which is what makes a resumed run bitwise identical to an uninterrupted one.

>>> fn = models.functional(models.lenet300(key=jax.random.key(0), input_shape=(8, 8, 1)))
>>> tx = optax.adam(1.2e-3)
>>> state = init_state(fn.params, tx, key=jax.random.key(1), model_state=fn.model_state)
>>> result = fit(fn.apply_fn, tx, state, data.digits(), num_steps=400, batch_size=60,
...              eval_every=100)  # doctest: +SKIP
>>> result.early_stop["step"], result.early_stop["test_accuracy"]  # doctest: +SKIP

References:
  Frankle & Carbin 2019, "The Lottery Ticket Hypothesis" (ICLR): early-stop iteration =
  iteration of minimum validation loss.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxsparse import masks as masks_lib
from jaxsparse import optim
from jaxsparse.pruners.base import Pruner
from jaxsparse.typing import PyTree

Batch = tuple[jax.Array, jax.Array]
ApplyFn = Callable[..., tuple[jax.Array, PyTree]]
LossFn = Callable[[jax.Array, jax.Array], jax.Array]
Augment = Callable[..., jax.Array]

METRIC_NAMES = (
    "train_loss", "train_accuracy", "val_loss", "val_accuracy", "test_loss", "test_accuracy",
)


class TrainState(NamedTuple):
    """Everything a training run needs to continue (and what a checkpoint holds).

    Attributes:
      params: trainable parameters (a nested dict, or any pytree), pruned entries exactly 0.
      model_state: non-trainable model variables (batch-norm statistics); ``{}`` if none.
      opt_state: the optax state of ``tx``.
      masks: bool masks with the params' structure (see :mod:`jaxsparse.masks`).
      step: int32 scalar, number of updates done so far.
      key: base PRNG key of the run's data order and step randomness; never changes.
      hook_state: tuple with one state per hook, in the order the hooks were given.
      pruner_state: the state of the pruner (:mod:`jaxsparse.pruners`); ``()`` without one.
      trainable: ``()`` (every kept entry trains) or a bool tree like the masks: entries
        where it is False keep their value, whatever the optimizer (zero gradient and zero
        update) — the pruned weights of a mask-0 "frozen" ticket, which stay in the forward
        pass at their rewind-point value (masks all True, ``trainable`` = the ticket's masks).
    """

    params: PyTree
    model_state: PyTree
    opt_state: PyTree
    masks: PyTree
    step: jax.Array
    key: jax.Array
    hook_state: tuple
    pruner_state: Any = ()
    trainable: Any = ()


class StepInfo(NamedTuple):
    """What a hook sees of one iteration, besides the new state.

    Attributes:
      prev: the :class:`TrainState` before the update.
      grads: dense gradient of the batch loss at ``prev.params`` (pruned entries included,
        before any masking).
      batch: ``(x, y)`` as trained on (after augmentation).
      indices: int32 ``[batch]``: the examples' indices in the training set.
      logits: train-mode logits of the batch at ``prev.params``.
      loss: mean batch loss (scalar).
      step: the step clock (int32 scalar) = ``prev.step``; shared by all members of a
        population (never batched), so a hook may branch on it with ``lax.cond``.
    """

    prev: TrainState
    grads: PyTree
    batch: tuple
    indices: jax.Array
    logits: jax.Array
    loss: jax.Array
    step: jax.Array


class Hook(NamedTuple):
    """An optax-like pair of pure functions run inside the compiled step.

    ``init(state) -> hook_state`` is called by :func:`init_state` (``state.hook_state`` is
    ``()`` at that point); ``update(hook_state, state, info) -> hook_state`` after every
    update, with the new state (``state.step`` = number of updates done, including this one)
    and a :class:`StepInfo` (the previous state, the dense gradients, the batch, its example
    indices, logits and loss, the shared step clock). Hooks observe: a hook that should change
    the masks is a pruner (:mod:`jaxsparse.pruners`).
    """

    init: Callable[[TrainState], PyTree]
    update: Callable[[PyTree, TrainState, StepInfo], PyTree]


class FitResult(NamedTuple):
    """What :func:`fit` returns.

    Attributes:
      state: the final :class:`TrainState`.
      history: dict of equal-length lists: ``step`` plus :data:`METRIC_NAMES` (train metrics
        are the mean over the chunk before the evaluation; ``nan`` at step 0).
      early_stop: ``{"step", "val_loss", "val_accuracy", "test_loss", "test_accuracy"}`` at
        the evaluation of minimum validation loss (earliest on ties).
    """

    state: TrainState
    history: dict[str, list]
    early_stop: dict[str, float]


# ---------------------------------------------------------------------------------------
# Hooks


def snapshot_at(step: int) -> Hook:
    """A hook that stores the params as they are after ``step`` updates.

    ``step=0`` stores the initial params. The stored tree has the params' structure; before
    iteration ``step`` is reached it holds the initial params. Used for late rewinding.

    >>> hook = snapshot_at(2)
    >>> state = init_state({"w": jnp.zeros((2, 2))}, optax.sgd(1.0), key=jax.random.key(0),
    ...                    hooks=[hook])  # state.hook_state[0] is the snapshot

    References:
      Frankle et al. 2020, "Linear Mode Connectivity and the Lottery Ticket Hypothesis".
    """
    if step < 0:
        raise ValueError(f"snapshot_at: step must be >= 0, got {step}")

    def init(state: TrainState) -> PyTree:
        return jax.tree.map(jnp.asarray, state.params)

    def update(snap: PyTree, state: TrainState, info: StepInfo) -> PyTree:
        del info
        hit = state.step == step
        return jax.tree.map(lambda new, old: jnp.where(hit, new, old), state.params, snap)

    return Hook(init, update)


# ---------------------------------------------------------------------------------------
# State and step


def _concrete(tree: PyTree) -> bool:
    return not any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(tree))


def init_state(
    params: PyTree,
    tx: optax.GradientTransformation,
    *,
    key: jax.Array,
    model_state: PyTree | None = None,
    masks: PyTree | None = None,
    hooks: Sequence[Hook] = (),
    pruner: Pruner | None = None,
    trainable: PyTree | None = None,
) -> TrainState:
    """A fresh :class:`TrainState`: masked params, ``tx.init``, step 0, hook and pruner states.

    Pure and vmappable (e.g. ``jax.vmap(lambda p, k: init_state(p, tx, key=k))``).

    Args:
      params: initial parameters.
      tx: the optax optimizer; ``tx.init`` builds ``opt_state`` from the masked params.
      key: base key of the run (data order, augmentation, pruner randomness).
      model_state: batch-norm statistics etc.; default ``{}``.
      masks: bool masks; default all-kept (:func:`jaxsparse.masks.ones_like`).
      hooks: the same hooks later given to :func:`make_step` / :func:`fit`.
      pruner: the same pruner later given to :func:`make_step` / :func:`fit`
        (``pruner.init(params, masks)`` gives ``state.pruner_state``).
      trainable: bool tree like the masks: entries that never move (see
        :class:`TrainState`); default: all trainable.
    """
    if masks is None:
        masks = masks_lib.ones_like(params)
    if _concrete((params, masks)):
        masks_lib.validate(params, masks)  # clear errors naming the leaf; needs concrete values
        if trainable is not None:
            masks_lib.validate(params, trainable)
    params = masks_lib.apply_masks(params, masks)
    state = TrainState(
        params=params,
        model_state={} if model_state is None else model_state,
        opt_state=tx.init(params),
        masks=masks,
        step=jnp.zeros((), jnp.int32),
        key=key,
        hook_state=(),
        pruner_state=() if pruner is None else pruner.init(params, masks),
        trainable=() if trainable is None else trainable,
    )
    return state._replace(hook_state=tuple(h.init(state) for h in hooks))


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-example softmax cross-entropy with integer labels (shape ``[batch]``)."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def _tx_update(tx, grads, opt_state, params, masks):
    if isinstance(tx, optax.GradientTransformationExtraArgs):
        return tx.update(grads, opt_state, params, masks=masks)
    return tx.update(grads, opt_state, params)


def change_masks(
    params: PyTree, opt_state: PyTree, old: PyTree, new: PyTree
) -> tuple[PyTree, PyTree, PyTree]:
    """What the trainer does when a pruner changes the masks from ``old`` to ``new``.

    Dropped params become exactly 0 (grown ones already are: they were pruned), and every
    optimizer buffer (momentum, Adam moments) is zeroed wherever the entry is not kept in
    both masks, so no stale moment leaks into a regrown weight. Returns ``(params,
    opt_state, update_masks)``: ``update_masks = old & new`` is what the iteration's update
    then uses, so a grown weight ends the iteration at exactly 0 with zero moments (it is
    trained from the next iteration on) and a dropped one stays 0.

    >>> old = {"w": jnp.array([True, False])}
    >>> new = {"w": jnp.array([False, True])}
    >>> p, _, upd = change_masks({"w": jnp.array([3.0, 0.0])}, (), old, new)
    >>> p["w"], upd["w"]
    (Array([0., 0.], dtype=float32), Array([False, False], dtype=bool))
    """
    both = masks_lib.intersect(old, new)
    return (masks_lib.apply_masks(params, new), optim.reset_moments(opt_state, both), both)


def make_step(
    apply_fn: ApplyFn,
    tx: optax.GradientTransformation,
    *,
    loss_fn: LossFn = cross_entropy,
    hooks: Sequence[Hook] = (),
    augment: Augment | None = None,
    pruner: Pruner | None = None,
) -> Callable[..., tuple[TrainState, dict[str, jax.Array]]]:
    """One masked training update: ``step(state, (x, y)) -> (state, {"loss", "accuracy"})``.

    Pure; jit it, ``lax.scan`` it, or ``jax.vmap`` it over stacked states. The full
    signature is ``step(state, batch, *, indices=None, clock=None)``: ``indices`` are the
    batch's example indices (for hooks; default ``-1``), ``clock`` the step clock that
    schedules the pruner and that hooks see (default ``state.step``; a population passes
    one unbatched clock so that ``lax.cond`` on it stays a branch, not a select).

    Order inside an iteration: forward and dense gradient at ``state.params``; the pruner
    (``lax.cond`` on ``pruner.due(clock)``) may change the masks (:func:`change_masks`);
    the gradient is masked and ``tx`` updates the entries kept; the new params are masked
    (pruned entries exactly 0 whatever the optimizer); hooks run on the new state.

    Args:
      apply_fn: ``apply_fn(params, model_state, x, *, train, key) -> (logits, model_state)``
        (see :func:`jaxsparse.models.functional`).
      tx: optax optimizer (its state is ``state.opt_state``).
      loss_fn: per-example loss ``loss_fn(logits, labels) -> [batch]``; the step minimises
        its mean.
      hooks: run after the update, in order, on ``state.hook_state``.
      augment: optional ``augment(x, *, key) -> x`` applied to the batch on device, e.g.
        :func:`jaxsparse.data.augment_cifar`.
      pruner: a :class:`jaxsparse.pruners.Pruner` run on the step clock (its state is
        ``state.pruner_state``; give the same pruner to :func:`init_state`).
    """
    hooks = tuple(hooks)
    if pruner is not None and not isinstance(pruner, Pruner):
        raise TypeError(f"pruner must be a jaxsparse.pruners.Pruner, got {type(pruner).__name__}")

    def prune(state: TrainState, grads: PyTree, clock: jax.Array):
        key = jax.random.fold_in(jax.random.fold_in(state.key, 2), state.step)

        def run(args):
            masks, pstate, params, opt_state = args
            new, pstate = pruner.update(masks, pstate, params, grads=grads, step=clock, key=key)
            params, opt_state, upd = change_masks(params, opt_state, masks, new)
            return new, pstate, params, opt_state, upd

        def skip(args):
            masks, pstate, params, opt_state = args
            return masks, pstate, params, opt_state, masks

        args = (state.masks, state.pruner_state, state.params, state.opt_state)
        if pruner.due is None:
            return run(args)
        return jax.lax.cond(pruner.due(clock), run, skip, args)

    def step(state: TrainState, batch: Batch, *, indices: jax.Array | None = None,
             clock: jax.Array | None = None) -> tuple[TrainState, dict[str, jax.Array]]:
        if len(hooks) != len(state.hook_state):
            raise ValueError(f"state has {len(state.hook_state)} hook states but the step was "
                             f"made with {len(hooks)} hooks; pass the same hooks to init_state")
        if (pruner is None) != (state.pruner_state == ()):
            raise ValueError("the state's pruner_state does not match the step's pruner: pass "
                             "the same pruner to init_state and make_step / fit")
        x, y = batch
        clock = state.step if clock is None else jnp.asarray(clock, jnp.int32)
        step_key = jax.random.fold_in(jax.random.fold_in(state.key, 1), state.step)
        aug_key, model_key = jax.random.split(step_key)
        if augment is not None:
            x = augment(x, key=aug_key)

        def loss(params):
            # No forward mask: state.params is already zero at pruned entries (invariant).
            logits, new_ms = apply_fn(params, state.model_state, x, train=True, key=model_key)
            return jnp.mean(loss_fn(logits, y)), (logits, new_ms)

        (loss_val, (logits, new_ms)), grads = jax.value_and_grad(loss, has_aux=True)(
            state.params
        )
        masks, pstate, params, opt_state = (state.masks, state.pruner_state, state.params,
                                            state.opt_state)
        upd_masks = masks
        if pruner is not None:
            masks, pstate, params, opt_state, upd_masks = prune(state, grads, clock)
        step_grads = masks_lib.apply_masks(grads, upd_masks)
        frozen = not isinstance(state.trainable, tuple) or state.trainable != ()
        if frozen:
            step_grads = masks_lib.apply_masks(step_grads, state.trainable)
        updates, opt_state = _tx_update(tx, step_grads, opt_state, params, upd_masks)
        if frozen:  # whatever the optimizer does (weight decay, momentum), frozen entries stay
            updates = masks_lib.apply_masks(updates, state.trainable)
        params = masks_lib.apply_masks(optax.apply_updates(params, updates), masks)
        new = state._replace(params=params, model_state=new_ms, opt_state=opt_state,
                             masks=masks, pruner_state=pstate, step=state.step + 1)
        if hooks:
            if indices is None:
                indices = jnp.full(y.shape[:1], -1, jnp.int32)
            info = StepInfo(prev=state, grads=grads, batch=(x, y), indices=indices,
                            logits=logits, loss=loss_val, step=clock)
            new = new._replace(hook_state=tuple(
                h.update(hs, new, info) for h, hs in zip(hooks, state.hook_state, strict=True)))
        acc = jnp.mean((jnp.argmax(logits, -1) == y).astype(jnp.float32))
        return new, {"loss": loss_val, "accuracy": acc}

    return step


def batch_indices(key: jax.Array, step: jax.Array, *, num_examples: int, batch_size: int,
                  num_steps: int) -> jax.Array:
    """Example indices ``[num_steps, batch_size]`` for iterations ``step .. step+num_steps-1``.

    Epoch ``e`` is ``permutation(fold_in(fold_in(key, 0), e), num_examples)`` truncated to
    ``num_examples // batch_size`` whole batches. Only the epochs the chunk touches are
    permuted (a static count), so the cost does not grow with ``step`` and the function
    vmaps without control flow.
    """
    per_epoch = num_examples // batch_size
    if per_epoch == 0:
        raise ValueError(f"batch_size {batch_size} is larger than the {num_examples} examples")
    num_epochs = num_steps // per_epoch + 2  # epochs a chunk can touch
    first = step // per_epoch
    data_key = jax.random.fold_in(key, 0)

    def perm(e):
        p = jax.random.permutation(jax.random.fold_in(data_key, e), num_examples)
        return p[: per_epoch * batch_size]

    flat = jax.vmap(perm)(first + jnp.arange(num_epochs)).reshape(-1)
    start = (step - first * per_epoch) * batch_size
    chunk = jax.lax.dynamic_slice(flat, (start,), (num_steps * batch_size,))
    return chunk.reshape(num_steps, batch_size)


def make_train_chunk(
    apply_fn: ApplyFn,
    tx: optax.GradientTransformation,
    *,
    batch_size: int,
    num_steps: int,
    loss_fn: LossFn = cross_entropy,
    hooks: Sequence[Hook] = (),
    augment: Augment | None = None,
    pruner: Pruner | None = None,
    unroll: int | bool = 1,
) -> Callable[..., tuple[TrainState, dict[str, jax.Array]]]:
    """``num_steps`` training iterations as one ``lax.scan``: ``chunk(state, x, y, clock=None)``.

    ``x``/``y`` are the whole (device-resident) training set; batches are gathered on device
    (see :func:`batch_indices`). Returns the new state and per-step metrics
    ``{"loss", "accuracy"}`` of shape ``[num_steps]``. Pure: ``jax.jit`` it once and call
    it for every chunk (it does not recompile: ``state.step`` is traced), or
    ``jax.vmap(chunk, in_axes=(0, None, None, None))`` for a population sharing the data and
    the step clock ``clock`` (the step the chunk starts at; default ``state.step``).

    ``unroll`` is passed to ``lax.scan``. Known XLA:CPU limitation: the kernel-gradient
    convolution inside a loop body is ~30x slower than the same op at the top level
    (measured here: 10 Conv-4 steps on digits, scan 6.5 s vs 10 jitted calls 0.19 s; a
    3x3x64x64 weight-gradient conv in ``fori_loop`` 3.2 s vs 0.11 s). For conv models on CPU
    use ``unroll=num_steps`` (no loop; compile time grows with ``num_steps``) or keep chunks
    short. GPU and TPU are not affected; dense models (LeNet) are not affected.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    step_fn = make_step(apply_fn, tx, loss_fn=loss_fn, hooks=hooks, augment=augment,
                        pruner=pruner)

    def chunk(state: TrainState, x: jax.Array, y: jax.Array, clock: jax.Array | None = None):
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"x has {x.shape[0]} examples but y has {y.shape[0]}")
        start = state.step if clock is None else jnp.asarray(clock, jnp.int32)
        idx = batch_indices(state.key, state.step, num_examples=x.shape[0],
                            batch_size=batch_size, num_steps=num_steps)

        def body(st, inp):
            i, ix = inp
            return step_fn(st, (jnp.take(x, ix, axis=0), jnp.take(y, ix, axis=0)),
                           indices=ix.astype(jnp.int32), clock=start + i)

        return jax.lax.scan(body, state, (jnp.arange(num_steps, dtype=jnp.int32), idx),
                            unroll=unroll)

    return chunk


def make_eval(
    apply_fn: ApplyFn, *, batch_size: int = 1000, loss_fn: LossFn = cross_entropy
) -> Callable[..., dict[str, jax.Array]]:
    """``eval_fn(params, model_state, masks, x, y) -> {"loss", "accuracy"}`` over a whole set.

    One ``lax.scan`` over batches of ``batch_size`` (the last batch is padded and the padding
    weighted out), ``train=False``, masked params. Pure and vmappable over params. Labels may
    carry trailing axes (a language model's ``[batch, time]`` next-token targets): an
    example's loss and accuracy are then the means over them.
    """

    def eval_fn(params, model_state, masks, x, y):
        params = masks_lib.apply_masks(params, masks)
        n = x.shape[0]
        bs = min(batch_size, n)
        nb = -(-n // bs)
        pad = nb * bs - n
        xp = jnp.concatenate([x, jnp.zeros((pad, *x.shape[1:]), x.dtype)]) if pad else x
        yp = jnp.concatenate([y, jnp.zeros((pad, *y.shape[1:]), y.dtype)]) if pad else y
        wp = (jnp.arange(nb * bs) < n).astype(jnp.float32)
        xs = xp.reshape(nb, bs, *x.shape[1:])
        ys, ws = yp.reshape(nb, bs, *y.shape[1:]), wp.reshape(nb, bs)

        def per_example(v):
            return jnp.mean(v.reshape(v.shape[0], -1).astype(jnp.float32), axis=1)

        def body(carry, batch):
            xb, yb, wb = batch
            logits, _ = apply_fn(params, model_state, xb, train=False, key=jax.random.key(0))
            loss = jnp.sum(per_example(loss_fn(logits, yb)) * wb)
            correct = jnp.sum(per_example(jnp.argmax(logits, -1) == yb) * wb)
            return (carry[0] + loss, carry[1] + correct), None

        zero = jnp.zeros((), jnp.float32)
        (loss, correct), _ = jax.lax.scan(body, (zero, zero), (xs, ys, ws))
        return {"loss": loss / n, "accuracy": correct / n}

    return eval_fn


def evaluate(
    apply_fn: ApplyFn,
    params: PyTree,
    x: jax.Array,
    y: jax.Array,
    *,
    model_state: PyTree | None = None,
    masks: PyTree | None = None,
    batch_size: int = 1000,
    loss_fn: LossFn = cross_entropy,
) -> dict[str, float]:
    """Mean loss and accuracy of ``params`` on ``(x, y)`` (Python floats; compiles per call).

    For repeated evaluation inside a loop, ``jax.jit(make_eval(...))`` once instead.
    """
    masks = masks_lib.ones_like(params) if masks is None else masks
    fn = jax.jit(make_eval(apply_fn, batch_size=batch_size, loss_fn=loss_fn))
    out = fn(params, {} if model_state is None else model_state, masks, jnp.asarray(x),
             jnp.asarray(y))
    return {k: float(v) for k, v in out.items()}


# ---------------------------------------------------------------------------------------
# fit


def _splits(data: Any) -> dict[str, tuple[Any, Any]]:
    """Accepts a ``jaxsparse.data.Dataset`` or a dict ``{"train": (x, y), "val": ..., ...}``."""
    if isinstance(data, dict):
        splits = dict(data)
    else:
        splits = {s: getattr(data, s) for s in ("train", "val", "test") if hasattr(data, s)}
    if "train" not in splits:
        raise ValueError("fit: data needs a 'train' split")
    return {k: (jnp.asarray(v[0]), jnp.asarray(v[1])) for k, v in splits.items()
            if v is not None and len(v[0])}


def early_stop(history: dict[str, list]) -> dict[str, Any]:
    """Metrics at the evaluation of minimum validation loss (earliest on ties).

    Falls back to the last evaluation when there is no validation split. For a population
    history (each value a list of per-member values) every entry is a per-member list.
    """
    if not history.get("step"):
        return {}
    names = [n for n in ("val_loss", "val_accuracy", "test_loss", "test_accuracy")
             if n in history]
    val = np.asarray(history.get("val_loss", []), dtype=np.float64)
    if val.ndim == 2:  # a population: [evaluations, members]
        members = val.shape[1]
        idx = [int(np.nanargmin(val[:, r])) if not np.all(np.isnan(val[:, r]))
               else val.shape[0] - 1 for r in range(members)]
        out: dict[str, Any] = {"step": [int(history["step"][i]) for i in idx]}
        for name in names:
            out[name] = [float(history[name][i][r]) for r, i in enumerate(idx)]
        return out
    if val.size and not np.all(np.isnan(val)):
        i = int(np.nanargmin(val))
    else:
        i = len(history["step"]) - 1
    out = {"step": int(history["step"][i])}
    for name in names:
        out[name] = float(history[name][i])
    return out


def is_population(state: TrainState) -> bool:
    """Whether ``state`` is a stacked population (``state.step`` has a member axis)."""
    return np.ndim(state.step) == 1


class Trainer:
    """The one trainer: compiled chunks, evaluation, checkpoint / resume, for one model or a
    population; a pruner on the step clock and hooks inside the compiled step.

    Holds its compiled programs, so several :meth:`fit` calls (IMP levels, generations of
    forget-and-relearn, controls) compile each chunk length once. A *population* is a
    :class:`TrainState` stacked along a leading member axis (``jax.vmap`` over
    :func:`init_state`); it runs as ONE program through
    :func:`jaxsparse.population.population_map` (sharded over the devices; every member sees the
    same data arrays in its own order, and all share the step clock).

    Args:
      apply_fn, tx, loss_fn, augment, hooks, pruner: as in :func:`make_step`.
      batch_size: training batch size.
      eval_batch_size: batch size of the evaluation scan.
      unroll: passed to :func:`make_train_chunk`.
      mesh, backend: the population layout (:func:`jaxsparse.population.population_map`).
    """

    def __init__(
        self,
        apply_fn: ApplyFn,
        tx: optax.GradientTransformation,
        *,
        batch_size: int,
        loss_fn: LossFn = cross_entropy,
        hooks: Sequence[Hook] = (),
        pruner: Pruner | None = None,
        augment: Augment | None = None,
        eval_batch_size: int = 1000,
        unroll: int | bool = 1,
        mesh: Any = None,
        backend: Literal["sharding", "pmap"] = "sharding",
    ):
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.apply_fn, self.tx, self.loss_fn = apply_fn, tx, loss_fn
        self.hooks, self.pruner, self.augment = tuple(hooks), pruner, augment
        self.batch_size, self.unroll = int(batch_size), unroll
        self.eval_batch_size = eval_batch_size
        self.mesh, self.backend = mesh, backend
        self._chunks: dict[tuple[int, bool], Callable] = {}
        self._evals: dict[bool, Callable] = {}

    def init_state(self, params: PyTree, *, key: jax.Array, model_state: PyTree | None = None,
                   masks: PyTree | None = None) -> TrainState:
        """:func:`init_state` with this trainer's optimizer, hooks and pruner."""
        return init_state(params, self.tx, key=key, model_state=model_state, masks=masks,
                          hooks=self.hooks, pruner=self.pruner)

    def chunk(self, num_steps: int, population: bool = False) -> Callable:
        """The compiled chunk of ``num_steps`` iterations: ``chunk(state, x, y, clock)``."""
        key = (int(num_steps), bool(population))
        if key not in self._chunks:
            raw = make_train_chunk(self.apply_fn, self.tx, batch_size=self.batch_size,
                                   num_steps=int(num_steps), loss_fn=self.loss_fn,
                                   hooks=self.hooks, augment=self.augment, pruner=self.pruner,
                                   unroll=self.unroll)
            if population:
                from jaxsparse.population import population_map

                self._chunks[key] = population_map(
                    raw, in_axes=(0, None, None, None), mesh=self.mesh, backend=self.backend)
            else:
                self._chunks[key] = jax.jit(raw)
        return self._chunks[key]

    def evaluator(self, population: bool = False) -> Callable:
        """``eval(params, model_state, masks, x, y) -> {"loss", "accuracy"}`` (per member)."""
        if population not in self._evals:
            raw = make_eval(self.apply_fn, batch_size=self.eval_batch_size, loss_fn=self.loss_fn)
            if population:
                from jaxsparse.population import population_map

                self._evals[population] = population_map(
                    raw, in_axes=(0, 0, 0, None, None), mesh=self.mesh, backend=self.backend)
            else:
                self._evals[population] = jax.jit(raw)
        return self._evals[population]

    def _check_state(self, state: TrainState) -> None:
        if len(state.hook_state) != len(self.hooks):
            raise ValueError(f"state has {len(state.hook_state)} hook states but the trainer "
                             f"has {len(self.hooks)} hooks; build the state with the same hooks "
                             "(Trainer.init_state or init_state(..., hooks=...))")
        if (self.pruner is None) != (state.pruner_state == ()):
            raise ValueError("the state's pruner_state does not match the trainer's pruner: "
                             "build the state with init_state(..., pruner=the same pruner)")
        if is_population(state):
            steps = np.asarray(jax.device_get(state.step))
            if steps.size and np.any(steps != steps[0]):
                raise ValueError(f"population members are at different steps {steps.tolist()}: "
                                 "a population shares one step clock")

    def fit(
        self,
        state: TrainState,
        data: Any,
        *,
        num_steps: int,
        eval_every: int,
        callback: Callable[[int, dict[str, Any]], None] | None = None,
        checkpoint_dir: str | None = None,
        checkpoint_every: int | None = None,
        keep: int = 2,
        on_checkpoint: Callable[[int], None] | None = None,
    ) -> FitResult:
        """Trains ``state`` to iteration ``num_steps``, evaluating every ``eval_every``.

        Each chunk of ``eval_every`` iterations is one compiled scan (compiled once; a last,
        shorter chunk compiles once more). After each chunk (and at step 0) the val and test
        splits are evaluated; the evaluation of minimum val loss gives the early-stop
        iteration.

        With ``checkpoint_dir``, the state (pruner and hook states included) and the history
        so far are saved (asynchronously, through :mod:`jaxsparse.checkpoint`) every
        ``checkpoint_every`` iterations (a multiple of ``eval_every``; default
        ``eval_every``) and at the end, keeping the ``keep`` newest. If the directory already
        holds a checkpoint the run resumes from the newest one, and the final state and
        history are bitwise those of an uninterrupted run; a finished run returns
        immediately. ``state`` is then only the template (structure, dtypes).

        Args:
          state: from :func:`init_state` (or :meth:`init_state`) with the same hooks and
            pruner; stacked along a leading axis for a population.
          data: a :class:`jaxsparse.data.Dataset` or ``{"train": (x, y), "val": ..., ...}``.
          num_steps: total number of iterations (absolute: a state at step 300 with
            ``num_steps=1000`` trains 700 more).
          eval_every: iterations between evaluations.
          callback: ``callback(step, record)`` after every evaluation, ``record`` a dict of
            the :data:`METRIC_NAMES` (floats; per-member lists for a population).
          checkpoint_dir, checkpoint_every, keep: see above.
          on_checkpoint: ``on_checkpoint(step)`` once the checkpoint of ``step`` is on disk
            (waits for the write; for fault-injection tests and job schedulers).

        Returns:
          :class:`FitResult` ``(state, history, early_stop)``; for a population every
          history and early-stop value is a per-member list.
        """
        if int(eval_every) < 1 or int(num_steps) < 0:
            raise ValueError(f"need eval_every >= 1 and num_steps >= 0, got eval_every="
                             f"{eval_every}, num_steps={num_steps}")
        checkpoint_every = eval_every if checkpoint_every is None else checkpoint_every
        if checkpoint_every % eval_every:
            raise ValueError(f"checkpoint_every ({checkpoint_every}) must be a multiple of "
                             f"eval_every ({eval_every})")
        self._check_state(state)
        pop = is_population(state)
        splits = _splits(data)
        x_tr, y_tr = splits["train"]
        eval_fn = self.evaluator(pop)
        history: dict[str, list] = {"step": [], **{m: [] for m in METRIC_NAMES}}
        ckpt = None
        if checkpoint_dir is not None:
            from jaxsparse import checkpoint as ckpt_lib

            ckpt = ckpt_lib.Checkpointer(checkpoint_dir, keep=keep)
            latest = ckpt.latest_step()
            if latest is not None:
                state, meta = ckpt.restore(latest, target=state)
                history = {k: list(v) for k, v in meta["history"].items()}

        def value(x):
            x = jax.device_get(x)
            return [float(v) for v in np.ravel(x)] if pop else float(x)

        def record(st: TrainState, train_metrics: dict[str, jax.Array] | None) -> dict:
            nan = value(jnp.full(np.shape(st.step), jnp.nan))
            rec = {"train_loss": nan, "train_accuracy": nan}
            if train_metrics is not None:
                rec["train_loss"] = value(jnp.mean(train_metrics["loss"], axis=-1))
                rec["train_accuracy"] = value(jnp.mean(train_metrics["accuracy"], axis=-1))
            for split in ("val", "test"):
                if split in splits:
                    out = eval_fn(st.params, st.model_state, st.masks, *splits[split])
                    rec[f"{split}_loss"] = value(out["loss"])
                    rec[f"{split}_accuracy"] = value(out["accuracy"])
                else:
                    rec[f"{split}_loss"] = rec[f"{split}_accuracy"] = nan
            history["step"].append(step)
            for m in METRIC_NAMES:
                history[m].append(rec[m])
            return rec

        step = int(np.ravel(jax.device_get(state.step))[0]) if np.size(state.step) else 0
        if not history["step"]:
            rec = record(state, None)
            if callback is not None:
                callback(step, rec)
        try:
            while step < num_steps:
                k = min(eval_every, num_steps - step)
                state, metrics = self.chunk(k, pop)(state, x_tr, y_tr, jnp.int32(step))
                step += k
                rec = record(state, metrics)
                if ckpt is not None and (step % checkpoint_every == 0 or step == num_steps):
                    # A copy: the async writer must not see later appends.
                    snapshot = {k_: list(v) for k_, v in history.items()}
                    ckpt.save(step, state, metadata={"history": snapshot})
                    if on_checkpoint is not None:
                        ckpt.wait()
                        on_checkpoint(step)
                if callback is not None:  # after the (async) save was issued
                    callback(step, rec)
        finally:
            if ckpt is not None:
                ckpt.close()  # waits for pending async saves
        return FitResult(state, history, early_stop(history))


def fit(
    apply_fn: ApplyFn,
    tx: optax.GradientTransformation,
    state: TrainState,
    data: Any,
    *,
    num_steps: int,
    batch_size: int,
    eval_every: int,
    hooks: Sequence[Hook] = (),
    pruner: Pruner | None = None,
    loss_fn: LossFn = cross_entropy,
    augment: Augment | None = None,
    eval_batch_size: int = 1000,
    callback: Callable[[int, dict[str, Any]], None] | None = None,
    checkpoint_dir: str | None = None,
    checkpoint_every: int | None = None,
    keep: int = 2,
    on_checkpoint: Callable[[int], None] | None = None,
) -> FitResult:
    """Trains ``state`` (one model or a stacked population) to iteration ``num_steps``.

    A one-off :class:`Trainer` (see :meth:`Trainer.fit` for every argument); build a
    :class:`Trainer` yourself to reuse its compiled programs across runs.

    >>> params = {"w": jnp.zeros((4, 3))}
    >>> apply_fn = lambda p, ms, x, *, train, key: (x @ p["w"], ms)
    >>> x = jax.random.normal(jax.random.key(0), (32, 4)); y = jnp.argmax(x[:, :3], -1)
    >>> tx = optax.sgd(0.5)
    >>> state = init_state(params, tx, key=jax.random.key(1))
    >>> out = fit(apply_fn, tx, state, {"train": (x, y), "val": (x, y)}, num_steps=20,
    ...           batch_size=8, eval_every=10)
    >>> out.history["step"], out.history["val_accuracy"][-1] > 0.5
    ([0, 10, 20], True)
    """
    trainer = Trainer(apply_fn, tx, batch_size=batch_size, loss_fn=loss_fn, hooks=hooks,
                      pruner=pruner, augment=augment, eval_batch_size=eval_batch_size)
    return trainer.fit(state, data, num_steps=num_steps, eval_every=eval_every,
                       callback=callback, checkpoint_dir=checkpoint_dir,
                       checkpoint_every=checkpoint_every, keep=keep, on_checkpoint=on_checkpoint)
