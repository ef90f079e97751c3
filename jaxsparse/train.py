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

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxsparse import masks as masks_lib

PyTree = Any
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
    """

    params: PyTree
    model_state: PyTree
    opt_state: PyTree
    masks: PyTree
    step: jax.Array
    key: jax.Array
    hook_state: tuple


class Hook(NamedTuple):
    """An optax-like pair of pure functions run inside the compiled step.

    ``init(state) -> hook_state`` is called by :func:`init_state` (``state.hook_state`` is
    ``()`` at that point); ``update(hook_state, state) -> hook_state`` after every update,
    with the new state (``state.step`` = number of updates done, including this one).
    """

    init: Callable[[TrainState], PyTree]
    update: Callable[[PyTree, TrainState], PyTree]


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

    def update(snap: PyTree, state: TrainState) -> PyTree:
        hit = state.step == step
        return jax.tree.map(lambda new, old: jnp.where(hit, new, old), state.params, snap)

    return Hook(init, update)


# ---------------------------------------------------------------------------------------
# State and step


def init_state(
    params: PyTree,
    tx: optax.GradientTransformation,
    *,
    key: jax.Array,
    model_state: PyTree | None = None,
    masks: PyTree | None = None,
    hooks: Sequence[Hook] = (),
) -> TrainState:
    """A fresh :class:`TrainState`: masked params, ``tx.init``, step 0, hook states.

    Pure and vmappable (e.g. ``jax.vmap(lambda p, k: init_state(p, tx, key=k))``).

    Args:
      params: initial parameters.
      tx: the optax optimizer; ``tx.init`` builds ``opt_state`` from the masked params.
      key: base key of the run (data order, augmentation).
      model_state: batch-norm statistics etc.; default ``{}``.
      masks: bool masks; default all-kept (:func:`jaxsparse.masks.ones_like`).
      hooks: the same hooks later given to :func:`make_step` / :func:`fit`.
    """
    if masks is None:
        masks = masks_lib.ones_like(params)
    if not any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves((params, masks))):
        masks_lib.validate(params, masks)  # clear errors naming the leaf; needs concrete values
    params = masks_lib.apply_masks(params, masks)
    state = TrainState(
        params=params,
        model_state={} if model_state is None else model_state,
        opt_state=tx.init(params),
        masks=masks,
        step=jnp.zeros((), jnp.int32),
        key=key,
        hook_state=(),
    )
    return state._replace(hook_state=tuple(h.init(state) for h in hooks))


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-example softmax cross-entropy with integer labels (shape ``[batch]``)."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def _tx_update(tx, grads, opt_state, params, masks):
    if isinstance(tx, optax.GradientTransformationExtraArgs):
        return tx.update(grads, opt_state, params, masks=masks)
    return tx.update(grads, opt_state, params)


def make_step(
    apply_fn: ApplyFn,
    tx: optax.GradientTransformation,
    *,
    loss_fn: LossFn = cross_entropy,
    hooks: Sequence[Hook] = (),
    augment: Augment | None = None,
) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]:
    """One masked training update: ``step(state, (x, y)) -> (state, {"loss", "accuracy"})``.

    Pure; jit it, ``lax.scan`` it, or ``jax.vmap`` it over stacked states.

    Args:
      apply_fn: ``apply_fn(params, model_state, x, *, train, key) -> (logits, model_state)``
        (see :func:`jaxsparse.models.functional`).
      tx: optax optimizer (its state is ``state.opt_state``).
      loss_fn: per-example loss ``loss_fn(logits, labels) -> [batch]``; the step minimises
        its mean.
      hooks: run after the update, in order, on ``state.hook_state``.
      augment: optional ``augment(x, *, key) -> x`` applied to the batch on device, e.g.
        :func:`jaxsparse.data.augment_cifar`.
    """
    hooks = tuple(hooks)

    def step(state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
        x, y = batch
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
        grads = masks_lib.apply_masks(grads, state.masks)
        updates, opt_state = _tx_update(tx, grads, state.opt_state, state.params, state.masks)
        params = masks_lib.apply_masks(optax.apply_updates(state.params, updates), state.masks)
        new = state._replace(params=params, model_state=new_ms, opt_state=opt_state,
                             step=state.step + 1)
        if len(hooks) != len(state.hook_state):
            raise ValueError(f"state has {len(state.hook_state)} hook states but the step was "
                             f"made with {len(hooks)} hooks; pass the same hooks to init_state")
        hook_state = tuple(h.update(hs, new) for h, hs in zip(hooks, state.hook_state,
                                                              strict=True))
        new = new._replace(hook_state=hook_state)
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
    unroll: int | bool = 1,
) -> Callable[[TrainState, jax.Array, jax.Array], tuple[TrainState, dict[str, jax.Array]]]:
    """``num_steps`` training iterations as one ``lax.scan``: ``chunk(state, x, y)``.

    ``x``/``y`` are the whole (device-resident) training set; batches are gathered on device
    (see :func:`batch_indices`). Returns the new state and per-step metrics
    ``{"loss", "accuracy"}`` of shape ``[num_steps]``. Pure: ``jax.jit`` it once and call
    it for every chunk (it does not recompile: ``state.step`` is traced), or
    ``jax.vmap(chunk, in_axes=(0, None, None))`` for a population sharing the data.

    ``unroll`` is passed to ``lax.scan``. Known XLA:CPU limitation: the kernel-gradient
    convolution inside a loop body is ~30x slower than the same op at the top level
    (measured here: 10 Conv-4 steps on digits, scan 6.5 s vs 10 jitted calls 0.19 s; a
    3x3x64x64 weight-gradient conv in ``fori_loop`` 3.2 s vs 0.11 s). For conv models on CPU
    use ``unroll=num_steps`` (no loop; compile time grows with ``num_steps``) or keep chunks
    short. GPU and TPU are not affected; dense models (LeNet) are not affected.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    step_fn = make_step(apply_fn, tx, loss_fn=loss_fn, hooks=hooks, augment=augment)

    def chunk(state: TrainState, x: jax.Array, y: jax.Array):
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"x has {x.shape[0]} examples but y has {y.shape[0]}")
        idx = batch_indices(state.key, state.step, num_examples=x.shape[0],
                            batch_size=batch_size, num_steps=num_steps)

        def body(st, ix):
            return step_fn(st, (jnp.take(x, ix, axis=0), jnp.take(y, ix, axis=0)))

        return jax.lax.scan(body, state, idx, unroll=unroll)

    return chunk


def make_eval(
    apply_fn: ApplyFn, *, batch_size: int = 1000, loss_fn: LossFn = cross_entropy
) -> Callable[..., dict[str, jax.Array]]:
    """``eval_fn(params, model_state, masks, x, y) -> {"loss", "accuracy"}`` over a whole set.

    One ``lax.scan`` over batches of ``batch_size`` (the last batch is padded and the padding
    weighted out), ``train=False``, masked params. Pure and vmappable over params.
    """

    def eval_fn(params, model_state, masks, x, y):
        params = masks_lib.apply_masks(params, masks)
        n = x.shape[0]
        bs = min(batch_size, n)
        nb = -(-n // bs)
        pad = nb * bs - n
        xp = jnp.concatenate([x, jnp.zeros((pad, *x.shape[1:]), x.dtype)]) if pad else x
        yp = jnp.concatenate([y, jnp.zeros((pad,), y.dtype)]) if pad else y
        wp = (jnp.arange(nb * bs) < n).astype(jnp.float32)
        xs = xp.reshape(nb, bs, *x.shape[1:])
        ys, ws = yp.reshape(nb, bs), wp.reshape(nb, bs)

        def body(carry, batch):
            xb, yb, wb = batch
            logits, _ = apply_fn(params, model_state, xb, train=False, key=jax.random.key(0))
            loss = jnp.sum(loss_fn(logits, yb) * wb)
            correct = jnp.sum((jnp.argmax(logits, -1) == yb).astype(jnp.float32) * wb)
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


def early_stop(history: dict[str, list]) -> dict[str, float]:
    """Metrics at the evaluation of minimum validation loss (earliest on ties).

    Falls back to the last evaluation when there is no validation split.
    """
    val = [v for v in history.get("val_loss", [])]
    if not history.get("step"):
        return {}
    if val and not all(math.isnan(v) for v in val):
        i = int(np.nanargmin(np.asarray(val, dtype=np.float64)))
    else:
        i = len(history["step"]) - 1
    out = {"step": int(history["step"][i])}
    for name in ("val_loss", "val_accuracy", "test_loss", "test_accuracy"):
        if name in history:
            out[name] = float(history[name][i])
    return out


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
    loss_fn: LossFn = cross_entropy,
    augment: Augment | None = None,
    eval_batch_size: int = 1000,
    callback: Callable[[int, dict[str, float]], None] | None = None,
    checkpoint_dir: str | None = None,
    checkpoint_every: int | None = None,
    keep: int = 2,
) -> FitResult:
    """Trains ``state`` to iteration ``num_steps``, evaluating every ``eval_every``.

    Each chunk of ``eval_every`` iterations is one compiled scan (compiled once; a last,
    shorter chunk compiles once more). After each chunk (and at step 0) the val and test
    splits are evaluated; the evaluation of minimum val loss gives the early-stop iteration.

    With ``checkpoint_dir``, the state and the history so far are saved (asynchronously,
    through :mod:`jaxsparse.checkpoint`) every ``checkpoint_every`` iterations (a multiple
    of ``eval_every``; default ``eval_every``) and at the end, keeping the ``keep`` newest.
    If the directory already holds a checkpoint the run resumes from the newest one, and
    the final params and history are bitwise those of an uninterrupted run; a finished run
    returns immediately. ``state`` is then only the template (structure, dtypes).

    Args:
      apply_fn, tx, loss_fn, augment: as in :func:`make_step`.
      state: from :func:`init_state` with the same ``hooks``.
      data: a :class:`jaxsparse.data.Dataset` or ``{"train": (x, y), "val": ..., "test": ...}``.
      num_steps: total number of iterations (absolute: a state at step 300 with
        ``num_steps=1000`` trains 700 more).
      batch_size: training batch size.
      eval_every: iterations between evaluations.
      hooks: as given to :func:`init_state`.
      eval_batch_size: batch size of the evaluation scan.
      callback: ``callback(step, record)`` after every evaluation, ``record`` a dict of the
        :data:`METRIC_NAMES` floats (for progress bars / logging).
      checkpoint_dir, checkpoint_every, keep: see above.

    Returns:
      :class:`FitResult` ``(state, history, early_stop)``.
    """
    if eval_every < 1 or num_steps < 0:
        raise ValueError(f"need eval_every >= 1 and num_steps >= 0, got {eval_every}, {num_steps}")
    checkpoint_every = eval_every if checkpoint_every is None else checkpoint_every
    if checkpoint_every % eval_every:
        raise ValueError(f"checkpoint_every ({checkpoint_every}) must be a multiple of "
                         f"eval_every ({eval_every})")
    splits = _splits(data)
    x_tr, y_tr = splits["train"]
    eval_fn = jax.jit(make_eval(apply_fn, batch_size=eval_batch_size, loss_fn=loss_fn))
    chunks: dict[int, Callable] = {}

    def chunk_fn(k: int) -> Callable:
        if k not in chunks:
            chunks[k] = jax.jit(make_train_chunk(
                apply_fn, tx, batch_size=batch_size, num_steps=k, loss_fn=loss_fn,
                hooks=hooks, augment=augment))
        return chunks[k]

    history: dict[str, list] = {"step": [], **{m: [] for m in METRIC_NAMES}}
    ckpt = None
    if checkpoint_dir is not None:
        from jaxsparse import checkpoint as ckpt_lib

        ckpt = ckpt_lib.Checkpointer(checkpoint_dir, keep=keep)
        latest = ckpt.latest_step()
        if latest is not None:
            state, meta = ckpt.restore(latest, target=state)
            history = {k: list(v) for k, v in meta["history"].items()}

    def record(st: TrainState, train_metrics: dict[str, jax.Array] | None) -> dict:
        rec = {"train_loss": float("nan"), "train_accuracy": float("nan")}
        if train_metrics is not None:
            rec["train_loss"] = float(jnp.mean(train_metrics["loss"]))
            rec["train_accuracy"] = float(jnp.mean(train_metrics["accuracy"]))
        for split in ("val", "test"):
            if split in splits:
                out = eval_fn(st.params, st.model_state, st.masks, *splits[split])
                rec[f"{split}_loss"] = float(out["loss"])
                rec[f"{split}_accuracy"] = float(out["accuracy"])
            else:
                rec[f"{split}_loss"] = rec[f"{split}_accuracy"] = float("nan")
        step = int(st.step)
        history["step"].append(step)
        for m in METRIC_NAMES:
            history[m].append(rec[m])
        return rec

    step = int(state.step)
    if not history["step"]:
        rec = record(state, None)
        if callback is not None:
            callback(step, rec)
    try:
        while step < num_steps:
            k = min(eval_every, num_steps - step)
            state, metrics = chunk_fn(k)(state, x_tr, y_tr)
            step += k
            rec = record(state, metrics)
            if ckpt is not None and (step % checkpoint_every == 0 or step == num_steps):
                # A copy: the async writer must not see later appends.
                snapshot = {k: list(v) for k, v in history.items()}
                ckpt.save(step, state, metadata={"history": snapshot})
            if callback is not None:  # after the (async) save was issued
                callback(step, rec)
    finally:
        if ckpt is not None:
            ckpt.close()  # waits for pending async saves
    return FitResult(state, history, early_stop(history))
