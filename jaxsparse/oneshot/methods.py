"""One-shot pruning of one ``[in, out]`` kernel from its input statistics: magnitude, Wanda,
SparseGPT (unstructured and N:M), and OWL's layerwise sparsities.

Every kernel is a 2-D matrix ``W [K, N]`` used as ``y = x @ W``: ``K`` inputs (the reduction
axis, axis 0, along which N:M groups run) and ``N`` outputs. The calibration statistics of
its inputs ``X [rows, K]`` are :class:`Stats`: ``xtx = X^T X`` (SparseGPT's Hessian up to the
factor ``2 / rows``, which changes nothing: the algorithm is invariant to scaling ``H``) and
``sq_norm = diag(X^T X)`` (Wanda's ``||X_j||_2^2``).

Counts follow :func:`jaxsparse.num_pruned` (``sparsity`` is the fraction *removed*); ties
keep the lower (row-major) index, as everywhere in jaxsparse; N:M keeps the ``n`` best of every
``m`` consecutive inputs (:func:`jaxsparse.nm.nm_keep`).

=============  =====================================  ===========================================
method         score (higher = keep)                  selection (unstructured)
=============  =====================================  ===========================================
magnitude      ``|W_ij|``                             per layer: ``num_pruned(s, K*N)``
Wanda          ``|W_ij| * ||X_i||_2``                 per output (column): ``num_pruned(s, K)``
SparseGPT      ``W_ij^2 / U_ii^2`` (running ``W``)    per block of ``blocksize`` inputs, exact
                                                      total ``num_pruned(s, K*N)``; kept
                                                      weights updated (OBS)
=============  =====================================  ===========================================

>>> w = jnp.array([[1.0, -2.0], [3.0, 0.5], [-0.1, 4.0], [2.0, 1.0]])
>>> sq_norm = jnp.array([1.0, 0.01, 1.0, 1.0])  # input 1 is almost never active
>>> wanda(w, sq_norm, sparsity=0.5).mask.astype(int).T  # per output, 2 of 4 inputs kept
Array([[1, 0, 0, 1],
       [1, 0, 1, 0]], dtype=int32)

References:
  Sun, Liu, Bair, Kolter 2023, "A Simple and Effective Pruning Approach for Large Language
  Models" (Wanda).
  Frantar & Alistarh 2023 (ICML), "SparseGPT: Massive Language Models Can Be Accurately
  Pruned in One-Shot".
  Yin et al. 2024 (ICML), "Outlier Weighed Layerwise Sparsity (OWL)".
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxsparse import nm as nm_lib
from jaxsparse import select

HIGHEST = jax.lax.Precision.HIGHEST


class Stats(NamedTuple):
    """Calibration statistics of one kernel's inputs ``X [rows, K]``.

    Attributes:
      sq_norm: ``[K]`` float32, ``sum_rows X_j^2`` (Wanda's squared input norms).
      count: int32 scalar, number of rows (tokens) seen.
      xtx: ``[K, K]`` float32 ``X^T X``, or ``None`` when not collected.
    """

    sq_norm: jax.Array
    count: jax.Array
    xtx: jax.Array | None = None


class Pruned(NamedTuple):
    """A pruned kernel: ``weight`` (exact zeros where pruned) and its bool ``mask`` (kept)."""

    weight: jax.Array
    mask: jax.Array


def check_kernel(w: Any, sparsity: Any, structure: nm_lib.NM | None, path: str) -> None:
    """Raises a clear error (naming ``path``) for a bad kernel / sparsity / N:M combination."""
    if np.ndim(w) != 2:
        raise ValueError(f"one-shot at {path!r}: expected a 2-D [in, out] kernel, got shape "
                         f"{np.shape(w)}")
    if (sparsity is None) == (structure is None):
        raise ValueError(f"one-shot at {path!r}: give exactly one of sparsity= (unstructured) "
                         f"or structure=NM(n, m), got sparsity={sparsity!r}, "
                         f"structure={structure!r}")
    if structure is not None:
        if not isinstance(structure, nm_lib.NM):
            raise TypeError(f"one-shot at {path!r}: structure must be jaxsparse.NM(n, m), got "
                            f"{structure!r}")
        k = np.shape(w)[0]
        if k % structure.m:
            raise ValueError(
                f"N:M at {path!r}: the reduction axis 0 of shape {tuple(np.shape(w))} has size "
                f"{k}, not divisible by m={structure.m}; exclude the layer with a rule")
    elif not isinstance(sparsity, jax.core.Tracer):
        s = np.asarray(sparsity)
        if s.shape != () or not 0.0 <= float(s) <= 1.0:
            raise ValueError(f"one-shot at {path!r}: sparsity must be a number in [0, 1], got "
                             f"{sparsity!r}")


def magnitude(w: jax.Array, *, sparsity: float | jax.Array | None = None,
              structure: nm_lib.NM | None = None, path: str = "<array>") -> Pruned:
    """Magnitude pruning of one kernel: per layer (unstructured) or N:M along axis 0.

    >>> magnitude(jnp.array([[1.0], [-4.0], [3.0], [2.0]]), structure=js.NM(2, 4)).mask[:, 0]
    Array([False,  True,  True, False], dtype=bool)
    """
    check_kernel(w, sparsity, structure, path)
    w = jnp.asarray(w)
    if structure is not None:
        keep = nm_lib.nm_keep(w, structure.n, structure.m, axis=0, path=path, magnitude=True)
    else:
        keep = select.top_along(jnp.abs(w), w.size - select.num_pruned(sparsity, w.size))
    return Pruned(jnp.where(keep, w, jnp.zeros((), w.dtype)), keep)


def wanda(w: jax.Array, sq_norm: jax.Array, *, sparsity: float | jax.Array | None = None,
          structure: nm_lib.NM | None = None, path: str = "<array>") -> Pruned:
    """Wanda: keep the largest ``|W_ij| * ||X_i||_2`` per output (column), or per N:M group.

    Args:
      w: kernel ``[K, N]``.
      sq_norm: ``[K]`` squared input norms ``sum_rows X_i^2`` (:class:`Stats`).
      sparsity: fraction pruned in every output column (``num_pruned(sparsity, K)`` each).
      structure: ``NM(n, m)`` instead: ``n`` of every ``m`` consecutive inputs per output.
      path: for error messages.

    Returns:
      :class:`Pruned`; weights are not updated (only masked).
    """
    check_kernel(w, sparsity, structure, path)
    w = jnp.asarray(w)
    if np.shape(sq_norm) != (w.shape[0],):
        raise ValueError(f"wanda at {path!r}: sq_norm has shape {np.shape(sq_norm)}, expected "
                         f"({w.shape[0]},) for a kernel of shape {w.shape}")
    score = jnp.abs(w).astype(jnp.float32) * jnp.sqrt(jnp.asarray(sq_norm, jnp.float32))[:, None]
    if structure is not None:
        keep = nm_lib.nm_keep(score, structure.n, structure.m, axis=0, path=path)
    else:
        keep = select.top_along(score, w.shape[0] - select.num_pruned(sparsity, w.shape[0]), axis=0)
    return Pruned(jnp.where(keep, w, jnp.zeros((), w.dtype)), keep)


def _inverse_cholesky(xtx: jax.Array, percdamp: jax.Array) -> tuple[jax.Array, jax.Array,
                                                                      jax.Array]:
    """Dead-input fix, dampening, and the upper Cholesky factor ``U`` of ``H^-1``.

    ``ok`` is False when ``H`` is singular in float32: the factorisation is not finite, or a
    pivot keeps less than ``4 K eps`` of its diagonal entry (that input is, to rounding, a
    combination of the earlier ones).
    """
    h = jnp.asarray(xtx, jnp.float32)
    k = h.shape[0]
    diag = jnp.diagonal(h)
    dead = diag == 0
    eye = jnp.eye(k, dtype=jnp.float32)
    h = h + jnp.diag(dead.astype(jnp.float32))  # H_jj = 1 for inputs that are never active
    damp = percdamp * jnp.mean(jnp.diagonal(h))
    h = h + damp * eye
    lower = jnp.linalg.cholesky(h)
    hinv = jax.scipy.linalg.cho_solve((lower, True), eye)
    u = jnp.linalg.cholesky(hinv).T  # H^-1 = U^T U, U upper triangular
    pivot = jnp.diagonal(lower) ** 2 / jnp.diagonal(h)
    ok = (jnp.all(jnp.isfinite(u)) & jnp.all(jnp.isfinite(lower))
          & (jnp.min(pivot) > 4 * k * jnp.finfo(jnp.float32).eps))
    return u, dead, ok


def _sub_block(bs: int, m: int) -> int:
    """Inputs per loop step: about 8, a multiple of ``m``, dividing the block size ``bs``."""
    for g in (m * max(1, 8 // m), m):
        if g <= bs and bs % g == 0:
            return g
    return m


@functools.partial(jax.jit, static_argnames=("n", "m", "blocksize"))
def _sparsegpt(w, xtx, sparsity, percdamp, *, n, m, blocksize):
    dtype = w.dtype
    u, dead, ok = _inverse_cholesky(xtx, percdamp)
    w = jnp.where(dead[:, None], 0.0, w.astype(jnp.float32))
    k, cols = w.shape
    nm = n > 0
    out_w, out_k = [], []
    for i1 in range(0, k, blocksize):
        i2 = min(i1 + blocksize, k)
        bs = i2 - i1
        g = _sub_block(bs, m if nm else 1)
        w1, u1 = w[i1:i2], u[i1:i2, i1:i2]
        d = jnp.diagonal(u1)
        if nm:
            keep1 = jnp.zeros((bs, cols), bool)
        else:  # the block's mask, from the weights as the earlier blocks left them
            n_prune = (select.num_pruned(sparsity, i2 * cols)
                       - select.num_pruned(sparsity, i1 * cols))
            keep1 = select.top_along(w1 ** 2 / (d ** 2)[:, None], bs * cols - n_prune)

        def step(si, carry, u1=u1, g=g):
            # One sub-block of g inputs: the paper's column loop on its g rows only, then
            # their accumulated correction to the later rows of the block as one matmul
            # (the lazy update once more, one level down: the same arithmetic, reordered).
            w1, keep1, err1 = carry
            a = si * g
            wsub = jax.lax.dynamic_slice_in_dim(w1, a, g, 0)  # [g, N]
            usub = jax.lax.dynamic_slice_in_dim(u1, a, g, 0)  # [g, bs], zero left of a
            uloc = jax.lax.dynamic_slice_in_dim(usub, a, g, 1)  # [g, g] upper triangular
            ksub = jax.lax.dynamic_slice_in_dim(keep1, a, g, 0)
            esub = []
            for r in range(g):
                if nm and r % m == 0:  # this group's n of m, from the running weights
                    sc = wsub[r:r + m] ** 2 / (jnp.diagonal(uloc)[r:r + m] ** 2)[:, None]
                    ksub = ksub.at[r:r + m].set(nm_lib.nm_keep(sc, n, m, axis=0))
                row = wsub[r]
                err = (row - jnp.where(ksub[r], row, 0.0)) / uloc[r, r]
                wsub = wsub - uloc[r][:, None] * err[None, :]  # rows >= r; row r becomes q
                esub.append(err)
            esub = jnp.stack(esub)
            w1 = w1 - jnp.matmul(usub.T, esub, precision=HIGHEST)  # rows after the sub-block
            w1 = jax.lax.dynamic_update_slice_in_dim(w1, jnp.where(ksub, wsub, 0.0), a, 0)
            keep1 = jax.lax.dynamic_update_slice_in_dim(keep1, ksub, a, 0)
            err1 = jax.lax.dynamic_update_slice_in_dim(err1, esub, a, 0)
            return w1, keep1, err1

        w1, keep1, err1 = jax.lax.fori_loop(
            0, bs // g, step, (w1, keep1, jnp.zeros((bs, cols), jnp.float32)))
        out_w.append(jnp.where(keep1, w1, 0.0))
        out_k.append(keep1)
        if i2 < k:  # the lazy batch update of every later input
            w = w.at[i2:].add(-jnp.matmul(u[i1:i2, i2:].T, err1, precision=HIGHEST))
    weight = jnp.concatenate(out_w).astype(dtype)
    return weight, jnp.concatenate(out_k), ok


def sparsegpt(w: jax.Array, xtx: jax.Array, *, sparsity: float | jax.Array | None = None,
              structure: nm_lib.NM | None = None, blocksize: int = 128,
              percdamp: float = 0.01, path: str = "<array>") -> Pruned:
    """SparseGPT: prune one kernel and update its kept weights to reconstruct ``X W``.

    The paper's algorithm with ``W [K, N]`` (inputs along axis 0): dead inputs
    (``H_jj = 0``) get ``W_j = 0`` and ``H_jj = 1``; ``H += percdamp * mean(diag H) * I``;
    ``U`` is the upper Cholesky factor of ``H^-1``. Inputs are processed in blocks of
    ``blocksize``: the block's mask prunes the smallest ``W_ij^2 / U_ii^2`` (unstructured;
    block counts from cumulative :func:`jaxsparse.num_pruned`, so the layer total is exactly
    ``num_pruned(sparsity, K*N)``), or, for N:M, each group of ``m`` inputs keeps its ``n``
    best per output when the loop reaches it. For each input ``i`` in order:
    ``err = (w_i - q_i) / U_ii`` and the later inputs of the block get
    ``W_j -= U_ij err``; after the block the rest of the matrix gets the accumulated
    correction ``W[i2:] -= U[i1:i2, i2:]^T Err`` (lazy batch update). Computed in float32.

    Args:
      w: kernel ``[K, N]``.
      xtx: ``[K, K]`` ``X^T X`` of its calibration inputs (any positive scale).
      sparsity: fraction pruned (unstructured), or
      structure: ``NM(n, m)`` (``blocksize % m == 0``).
      blocksize: inputs per lazy block (128 in the paper).
      percdamp: dampening as a fraction of the mean diagonal (0.01 in the paper).
      path: for error messages.

    Returns:
      :class:`Pruned`: updated weights (exact zeros where pruned; ``w``'s dtype) and mask.

    Raises:
      ValueError: (concrete inputs) when the dampened ``H`` is not positive definite, e.g. a
      singular ``X^T X`` with ``percdamp=0``.

    >>> x = jax.random.normal(jax.random.key(0), (64, 8))
    >>> w = jax.random.normal(jax.random.key(1), (8, 3))
    >>> out = sparsegpt(w, x.T @ x, structure=js.NM(2, 4))
    >>> js.is_nm({"kernel": out.weight}, 2, 4), bool((out.weight != w).any())
    (True, True)
    """
    check_kernel(w, sparsity, structure, path)
    k = np.shape(w)[0]
    if np.shape(xtx) != (k, k):
        raise ValueError(f"sparsegpt at {path!r}: X^T X has shape {np.shape(xtx)}, expected "
                         f"({k}, {k}) for a kernel of shape {tuple(np.shape(w))}")
    if blocksize < 1 or (structure is not None and blocksize % structure.m):
        raise ValueError(f"sparsegpt at {path!r}: blocksize={blocksize} must be a positive "
                         f"multiple of m={structure.m if structure else 1}")
    weight, mask, ok = sparsegpt_traced(w, xtx, sparsity=sparsity, structure=structure,
                                        blocksize=blocksize, percdamp=percdamp)
    if not isinstance(ok, jax.core.Tracer) and not bool(ok):
        raise ValueError(hessian_error(path, k, percdamp))
    return Pruned(weight, mask)


def sparsegpt_traced(w: jax.Array, xtx: jax.Array, *, sparsity: Any, structure: Any,
                     blocksize: int, percdamp: float) -> tuple[jax.Array, jax.Array, jax.Array]:
    """:func:`sparsegpt` without checks: ``(weight, mask, ok)``, ``ok`` False when the
    dampened Hessian was not positive definite (for callers inside ``jit``)."""
    n, m = (structure.n, structure.m) if structure is not None else (0, 1)
    sp = jnp.asarray(0.0 if sparsity is None else sparsity, jnp.float32)
    return _sparsegpt(jnp.asarray(w), jnp.asarray(xtx), sp, jnp.asarray(percdamp, jnp.float32),
                      n=n, m=m, blocksize=int(blocksize))


def hessian_error(path: str, k: int, percdamp: float) -> str:
    """The error text for a Hessian that is not positive definite."""
    return (f"sparsegpt at {path!r}: the {k}x{k} Hessian X^T X (dampened by percdamp="
            f"{percdamp}) is singular / not positive definite, so its Cholesky factor is not "
            "finite; use percdamp > 0 (the paper's 0.01) or more calibration data")


# ---------------------------------------------------------------------------------------
# The methods as values for jaxsparse.oneshot.prune.


@dataclasses.dataclass(frozen=True)
class Magnitude:
    """Magnitude pruning (per layer; N:M along the inputs). Needs no calibration data."""

    needs: ClassVar[str] = "none"

    def __call__(self, w, stats: Stats, *, sparsity=None, structure=None, path="<array>"):
        pruned = magnitude(w, sparsity=sparsity, structure=structure, path=path)
        return pruned, jnp.ones((), bool)


@dataclasses.dataclass(frozen=True)
class Wanda:
    """Wanda (Sun et al. 2023): ``|W| * ||X||`` compared per output; no weight update."""

    needs: ClassVar[str] = "norms"

    def __call__(self, w, stats: Stats, *, sparsity=None, structure=None, path="<array>"):
        return (wanda(w, stats.sq_norm, sparsity=sparsity, structure=structure, path=path),
                jnp.ones((), bool))


@dataclasses.dataclass(frozen=True)
class SparseGPT:
    """SparseGPT (Frantar & Alistarh 2023): OBS updates, lazy blocks (see :func:`sparsegpt`).

    Args:
      blocksize: inputs per lazy block (128 in the paper).
      percdamp: dampening as a fraction of the mean Hessian diagonal (0.01 in the paper).
    """

    blocksize: int = 128
    percdamp: float = 0.01
    needs: ClassVar[str] = "hessian"

    def __call__(self, w, stats: Stats, *, sparsity=None, structure=None, path="<array>"):
        weight, mask, ok = sparsegpt_traced(w, stats.xtx, sparsity=sparsity,
                                            structure=structure, blocksize=self.blocksize,
                                            percdamp=self.percdamp)
        return Pruned(weight, mask), ok


Method = Magnitude | Wanda | SparseGPT


# ---------------------------------------------------------------------------------------
# OWL: outlier-weighted layerwise sparsity.


def outlier_ratio(scores: Sequence[jax.Array], m: float = 5.0) -> float:
    """Share of the scores above ``m`` times their mean (over all given arrays together).

    OWL's "layerwise outlier distribution": the scores are the Wanda scores
    ``|W_ij| * ||X_i||_2`` of every kernel of one layer (transformer block).

    >>> round(outlier_ratio([jnp.array([1.0] * 9 + [91.0])], m=5.0), 6)  # 91 > 5 * 10
    0.1
    """
    flat = jnp.concatenate([jnp.ravel(jnp.asarray(s, jnp.float32)) for s in scores])
    return float(jnp.mean(flat > m * jnp.mean(flat)))


def owl_sparsities(ratios: Sequence[float], sparsity: float, lam: float = 0.08) -> np.ndarray:
    """OWL's layer sparsities: more outliers -> less pruning, averaging to ``sparsity``.

    As in the OWL code, the outlier ratios are normalised to ``[0, 2 lam]`` and centred,
    ``dev_l = 2 lam (r_l - min r) / (max r - min r) - mean``, and ``s_l = sparsity - dev_l``.
    The paper also keeps every ``s_l`` in ``[sparsity - lam, sparsity + lam]``; where the
    centred values leave that band they are clipped and shifted by the one constant that
    restores the mean (found by bisection), so the mean stays ``sparsity`` (equal-sized
    layers: the global sparsity). Equal ratios give ``sparsity`` everywhere.

    >>> owl_sparsities([0.01, 0.02, 0.03], 0.7, lam=0.08).round(4).tolist()
    [0.78, 0.7, 0.62]
    """
    r = np.asarray(ratios, np.float64)
    if r.ndim != 1 or r.size == 0:
        raise ValueError(f"owl_sparsities: need a 1-D sequence of ratios, got shape {r.shape}")
    if not 0.0 <= lam <= min(sparsity, 1.0 - sparsity):
        raise ValueError(f"owl_sparsities: lam={lam} must be in [0, min(sparsity, 1 - "
                         f"sparsity)] = [0, {min(sparsity, 1 - sparsity)}] for sparsity "
                         f"{sparsity}")
    span = r.max() - r.min()
    if span == 0 or lam == 0:
        return np.full(r.shape, float(sparsity))
    dev = 2.0 * lam * (r - r.min()) / span
    dev = dev - dev.mean()
    lo, hi = -2.0 * lam, 2.0 * lam  # mean(clip(dev - c)) is decreasing in c
    for _ in range(200):
        c = 0.5 * (lo + hi)
        if np.clip(dev - c, -lam, lam).mean() > 0:
            lo = c
        else:
            hi = c
    if np.abs(dev).max() <= lam:
        c = 0.0  # already inside the band: exactly the OWL code's values
    return sparsity - np.clip(dev - c, -lam, lam)
