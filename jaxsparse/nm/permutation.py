"""Channel permutations that raise the magnitude an N:M mask keeps (Pool & Yu 2021).

N:M groups are fixed runs of ``m`` consecutive input channels. Reordering a layer's input
channels — and, to keep the network function unchanged, the producing layer's output
channels, its bias and any per-channel normalisation in between — changes which channels share
a group, and so how much magnitude the N:M mask can keep.

``search_permutation`` is a greedy channel-swap search: at every step it evaluates every swap
of two channels in different groups (exactly, by recomputing the two groups' kept magnitude)
and applies the best one, until no swap improves by more than ``tol`` or ``max_swaps`` is
reached. It starts from the identity, so the result never keeps less than no permutation.
``permute`` applies a permutation to the named leaves of a params tree.

>>> w = jnp.array([[9.0], [8.0], [7.0], [6.0], [1.0], [1.0], [1.0], [1.0]])
>>> perm, info = search_permutation(w, 2, 4)
>>> info["before"], info["after"]
(19.0, 30.0)

References:
  Pool & Yu 2021 (NeurIPS), "Channel Permutations for N:M Sparsity".
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxsparse import rules as rules_lib
from jaxsparse.nm.axes import group_axis
from jaxsparse.nm.masks import check_nm, group_keep, nm_mask
from jaxsparse.typing import Params


def retained_magnitude(
    w: jax.Array, n: int = 2, m: int = 4, *, axis: int | None = None
) -> jax.Array:
    """Sum of ``|w|`` kept by the magnitude N:M mask along ``axis`` (default: the reduction axis).

    >>> retained_magnitude(jnp.array([[1.0], [-4.0], [3.0], [2.0]]), 2, 4)
    Array(7., dtype=float32)
    """
    w = jnp.asarray(w)
    return jnp.sum(jnp.where(nm_mask(w, n, m, axis=axis), jnp.abs(w), 0))


def _topn_sum(x: jax.Array, n: int) -> jax.Array:
    """Sum over columns of the n largest entries along axis -2 (size m)."""
    keep = group_keep(x, n, x.shape[-2], x.ndim - 2)  # sort-free, as in nm_mask
    return jnp.sum(jnp.where(keep, x, 0), axis=(-2, -1))


def _group_replacements(a: jax.Array, members: jax.Array, n: int, m: int) -> jax.Array:
    """``r[p, c]``: kept magnitude of the group ``members`` with slot ``p`` replaced by
    channel ``c``; ``a`` is ``(K, C)`` |w| rows per channel."""
    base = a[members]  # (m, C)
    out = []
    for p in range(m):
        grp = jnp.broadcast_to(base[None], (a.shape[0],) + base.shape)
        grp = grp.at[:, p, :].set(a)  # (K, m, C)
        out.append(_topn_sum(grp, n))
    return jnp.stack(out)  # (m, K)


def _search(a: jax.Array, n: int, m: int, max_swaps: int, tol: float):
    k = a.shape[0]
    g = k // m
    group_of = jnp.arange(k) // m
    same = group_of[:, None] == group_of[None, :]

    def all_r(perm):
        members = perm.reshape(g, m)
        # lax.map, not vmap: one group at a time keeps memory at O(K * m * C)
        return jax.lax.map(lambda mem: _group_replacements(a, mem, n, m), members).reshape(k, k)

    def cur_of(perm):
        return _topn_sum(a[perm].reshape(g, m, -1), n)  # (g,)

    def best_swap(perm, r, cur):
        rp = r[:, perm]  # rp[s, t]: slot s's group with slot s replaced by the channel at t
        delta = rp + rp.T - cur[group_of][:, None] - cur[group_of][None, :]
        delta = jnp.where(same, -jnp.inf, delta)
        flat = jnp.argmax(delta)
        return flat // k, flat % k, delta.reshape(-1)[flat]

    def cond(state):
        _, _, _, it, gain = state
        return (it < max_swaps) & (gain > tol)

    def body(state):
        perm, r, cur, it, _ = state
        s, t, gain = best_swap(perm, r, cur)
        new = perm.at[s].set(perm[t]).at[t].set(perm[s])
        gs, gt = s // m, t // m
        for grp in (gs, gt):  # only the two touched groups change
            members = jax.lax.dynamic_slice(new, (grp * m,), (m,))
            rows = _group_replacements(a, members, n, m)
            r = jax.lax.dynamic_update_slice(r, rows, (grp * m, 0))
        cur = cur_of(new)
        keep = gain > tol
        perm = jnp.where(keep, new, perm)
        return perm, r, cur, it + keep.astype(jnp.int32), gain

    perm0 = jnp.arange(k)
    r0, cur0 = all_r(perm0), cur_of(perm0)
    state = (perm0, r0, cur0, jnp.zeros((), jnp.int32), jnp.asarray(jnp.inf, a.dtype))
    perm, _, cur, swaps, _ = jax.lax.while_loop(cond, body, state)
    return perm, jnp.sum(cur0), jnp.sum(cur), swaps


def search_permutation(
    w: jax.Array,
    n: int = 2,
    m: int = 4,
    *,
    axis: int | None = None,
    max_swaps: int = 1000,
    tol: float = 1e-6,
    path: str = "<array>",
) -> tuple[np.ndarray, dict[str, float]]:
    """Greedy best-swap search for an input-channel permutation of ``w``.

    Args:
      w: the consuming layer's kernel (its reduction axis holds the channels to permute).
      n, m: N:M structure.
      axis: channel axis (default :func:`jaxsparse.nm.reduction_axis`).
      max_swaps: stop after this many swaps.
      tol: a swap must raise the kept magnitude by more than ``tol * total |w|``.
      path: for error messages.

    Returns:
      ``(perm, info)``: ``w`` permuted with ``jnp.take(w, perm, axis)`` keeps ``info["after"]``
      of magnitude under N:M, versus ``info["before"]`` unpermuted; ``info`` also has
      ``"total"`` (sum of ``|w|``), ``"swaps"`` and ``"improvement"`` (after / before - 1).

    References:
      Pool & Yu 2021 (NeurIPS), "Channel Permutations for N:M Sparsity".
    """
    check_nm(n, m)
    w = jnp.asarray(w)
    axis = group_axis("search_permutation", path, w.shape, m, axis)
    a = jnp.abs(jnp.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)).astype(jnp.float32)
    total = float(jnp.sum(a))
    perm, before, after, swaps = jax.jit(_search, static_argnums=(1, 2, 3))(
        a, n, m, max_swaps, tol * total
    )
    before, after = float(before), float(after)
    return np.asarray(perm), dict(
        before=before, after=after, total=total, swaps=int(swaps),
        improvement=after / before - 1.0 if before else 0.0,
    )


def permute(
    params: Params, perm: Any, targets: Sequence[tuple[rules_lib.Pattern, int]]
) -> Params:
    """Permutes the leaves matched by ``targets`` along their given axis by ``perm``.

    Args:
      params: params tree.
      perm: the channel permutation (``new[..., i, ...] = old[..., perm[i], ...]``).
      targets: ``[(path regex or predicate, axis), ...]``, first match wins; every pattern
        must match at least one leaf. For ``Dense_0 -> relu -> Dense_1`` permuting Dense_1's
        inputs: ``[("Dense_1/kernel", 0), ("Dense_0/kernel", 1), ("Dense_0/bias", 0)]``
        (add BatchNorm scale/bias/mean/var of the producer with axis 0, conv kernels with
        axis -2 for the consumer and -1 for the producer).

    Returns:
      The params with those leaves permuted; the network function is unchanged when the
      targets cover every use of the channels.

    >>> permute({"w": jnp.arange(3.0)}, jnp.array([2, 0, 1]), [("w", 0)])["w"]
    Array([2., 0., 1.], dtype=float32)
    """
    perm = jnp.asarray(perm)
    targets = rules_lib.check_rules(targets, "targets")
    used = [False] * len(targets)

    def one(path: str, p: Any) -> Any:
        for i, (pattern, axis) in enumerate(targets):
            hit = pattern(path, p) if callable(pattern) else re.search(pattern, path)
            if hit:
                used[i] = True
                if np.shape(p)[axis] != perm.shape[0]:
                    raise ValueError(
                        f"permute: leaf {path!r} of shape {np.shape(p)} has size "
                        f"{np.shape(p)[axis]} on axis {axis}, permutation has {perm.shape[0]}"
                    )
                return jnp.take(p, perm, axis=axis)
        return p

    out = rules_lib.map_with_path(one, params)
    unused = [targets[i][0] for i, u in enumerate(used) if not u]
    if unused:
        raise ValueError(
            f"permute: target(s) {unused!r} match no leaf; paths: {rules_lib.leaf_paths(params)}"
        )
    return out
