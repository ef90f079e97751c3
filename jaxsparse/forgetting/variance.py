"""Variance of Gradients (VoG): how much an example's input gradient moves during training.

For checkpoints ``θ_1..θ_K`` of one training run, ``S_k = ∂A_y(x; θ_k) / ∂x`` is the
gradient of the true-class score (the pre-softmax logit, or the softmax probability) with
respect to the input. VoG is the per-pixel standard deviation over checkpoints, averaged
over pixels::

    VoG(x) = mean_p sqrt( mean_k (S_k - mean_k S)_p^2 )

and is compared within a class after normalising, ``(VoG - mean_c) / std_c`` over the
examples of class ``c`` (:func:`class_normalise`). :func:`vog_windows` splits the
checkpoints into early / middle / late windows; each window's mean is the mean over that
window's own checkpoints (the original toy script divides a sum over *all* checkpoints by
the window length; not here).

>>> s = jnp.stack([jnp.zeros((1, 2)), 2 * jnp.ones((1, 2))])  # K=2 checkpoints, N=1, 2 pixels
>>> vog(s).tolist()  # per pixel: values 0 and 2, std 1
[1.0]

References:
  Agarwal, D'souza, Hooker 2022, "Estimating Example Difficulty Using Variance of
  Gradients" (CVPR).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from jaxsparse.typing import PyTree

TARGETS = ("logit", "prob")


def input_gradients(
    apply_fn: Callable[..., tuple[jax.Array, PyTree]],
    params: PyTree,
    x: jax.Array,
    y: jax.Array,
    *,
    model_state: PyTree | None = None,
    target: Literal["logit", "prob"] = "logit",
    batch_size: int = 512,
) -> jax.Array:
    """``[N, *x.shape[1:]]``: the gradient of each example's true-class score w.r.t. its input.

    The model runs in eval mode (``train=False``), where examples do not interact, so one
    backward pass of the batch sum gives every example's own gradient. Pure: ``jax.vmap`` it
    over stacked checkpoints and over a population.

    Args:
      apply_fn: ``apply_fn(params, model_state, x, *, train, key) -> (logits, state)``.
      params: one checkpoint's params.
      x, y: inputs ``[N, ...]`` and int labels ``[N]``.
      model_state: batch-norm statistics etc. (default ``{}``).
      target: ``"logit"`` (pre-softmax true-class logit) or ``"prob"`` (its softmax).
      batch_size: examples per backward pass (a ``lax.map`` over batches; the last is padded).

    >>> w = jnp.array([[1.0, 2.0], [3.0, 4.0]])  # logits = x @ w
    >>> f = lambda p, s, x, *, train, key: (x.reshape(x.shape[0], -1) @ p, s)
    >>> input_gradients(f, w, jnp.ones((2, 2)), jnp.array([0, 1])).tolist()  # columns of w
    [[1.0, 3.0], [2.0, 4.0]]
    """
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    x, y = jnp.asarray(x), jnp.asarray(y)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x has {x.shape[0]} examples but y has {y.shape[0]}")
    ms = {} if model_state is None else model_state
    n = x.shape[0]
    bs = max(1, min(int(batch_size), n))
    nb = -(-n // bs)
    pad = nb * bs - n
    xp = jnp.concatenate([x, jnp.zeros((pad, *x.shape[1:]), x.dtype)]) if pad else x
    yp = jnp.concatenate([y, jnp.zeros((pad,), y.dtype)]) if pad else y

    def score(xb, yb):
        logits, _ = apply_fn(params, ms, xb, train=False, key=jax.random.key(0))
        if target == "prob":
            logits = jax.nn.softmax(logits, axis=-1)
        return jnp.sum(jnp.take_along_axis(logits, yb[:, None], axis=1))

    grads = jax.lax.map(lambda b: jax.grad(score)(*b),
                        (xp.reshape(nb, bs, *x.shape[1:]), yp.reshape(nb, bs)))
    return grads.reshape(nb * bs, *x.shape[1:])[:n]


def vog(gradients: jax.Array) -> jax.Array:
    """float32 ``[N]``: VoG from input gradients ``[K, N, ...]`` over ``K >= 2`` checkpoints.

    Standard deviation over checkpoints with ``1/K`` (``ddof=0``), per input entry, then
    the mean over the input entries (pixels × channels).
    """
    g = jnp.asarray(gradients, jnp.float32)
    if g.ndim < 2 or g.shape[0] < 2:
        raise ValueError(f"vog needs gradients [K >= 2 checkpoints, N, ...], got shape "
                         f"{tuple(g.shape)}")
    mean = jnp.mean(g, axis=0, keepdims=True)
    std = jnp.sqrt(jnp.mean(jnp.square(g - mean), axis=0))  # [N, ...]
    return jnp.mean(std.reshape(std.shape[0], -1), axis=1)


def vog_windows(
    gradients: jax.Array,
    *,
    names: Sequence[str] = ("early", "middle", "late"),
) -> dict[str, jax.Array]:
    """VoG over consecutive windows of the checkpoints: ``{name: [N]}``.

    The ``K`` checkpoints are split into ``len(names)`` contiguous windows as
    ``numpy.array_split`` does (the first windows get one more when ``K`` does not divide);
    each window needs at least 2 checkpoints. Each window's VoG is :func:`vog` of its own
    checkpoints (its own mean).

    >>> g = jnp.arange(6.0).reshape(6, 1, 1) ** 2  # 6 checkpoints, growing steps
    >>> {k: v.tolist() for k, v in vog_windows(g).items()}
    {'early': [0.5], 'middle': [2.5], 'late': [4.5]}
    """
    g = jnp.asarray(gradients)
    k = g.shape[0]
    if k < 2 * len(names):
        raise ValueError(f"{len(names)} windows of >= 2 checkpoints need >= {2 * len(names)} "
                         f"checkpoints, got {k}")
    bounds = np.cumsum([0] + [len(part) for part in np.array_split(np.arange(k), len(names))])
    return {name: vog(g[int(lo):int(hi)])
            for name, lo, hi in zip(names, bounds[:-1], bounds[1:], strict=True)}


def class_normalise(scores: jax.Array, labels: jax.Array, *, num_classes: int) -> jax.Array:
    """float32 ``[N]``: ``(score - mean_c) / std_c`` within each example's (true) class.

    ``std_c`` uses ``1/n_c`` (``ddof=0``); a class whose scores are all equal (or that has
    one example) maps to 0.

    >>> class_normalise(jnp.array([1.0, 3.0, 5.0, 5.0]), jnp.array([0, 0, 1, 1]),
    ...                 num_classes=2).tolist()
    [-1.0, 1.0, 0.0, 0.0]
    """
    s = jnp.asarray(scores, jnp.float32)
    labels = jnp.asarray(labels)
    # segment sums, not one-hot matmuls: exact float32 adds on every backend (TPU matmuls
    # default to bf16 passes).
    seg = lambda v: jax.ops.segment_sum(v, labels, num_segments=num_classes)  # noqa: E731
    n = jnp.maximum(seg(jnp.ones_like(s)), 1.0)
    centred = s - (seg(s) / n)[labels]
    # Two passes (centre, then square): no E[x^2] - E[x]^2 cancellation.
    sd = jnp.sqrt(seg(jnp.square(centred)) / n)[labels]
    return jnp.where(sd > 0, centred / jnp.where(sd > 0, sd, 1.0), 0.0)
