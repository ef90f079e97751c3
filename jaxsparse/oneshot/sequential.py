"""Calibration and one-shot pruning of whole models: sequential block by block, on device.

Two ways to give a model:

* :class:`Blocks` ``(embed, block, paths)`` - **sequential**, as in the SparseGPT paper: the
  calibration batches are embedded once; then for each block in order its linear layers'
  input statistics are collected (from the outputs of the blocks *already pruned*), every
  kernel of the block is pruned, and the block is re-run with its pruned weights to give the
  next block its inputs. ``block(block_params, h) -> h`` runs one block on its own subtree of
  the params (``paths[i]``, e.g. ``"block0"`` or ``"layers/3"``).
* a plain ``apply_fn(params, x)`` - **one pass**: the statistics of every kernel come from
  one run of the dense model (no sequential propagation).

The linear layers are found by intercepting ``dot_general`` (:mod:`jaxsparse.oneshot.capture`):
any Linen / NNX / plain-JAX block works as long as its kernels are ``[in, out]`` and used as
``x @ W``. Which kernels to prune is decided by path rules (:mod:`jaxsparse.rules`; default:
the ``ndim >= 2`` leaves that are not biases / norms) on the full leaf paths; in sequential
mode only leaves inside the blocks are considered. A prunable kernel that the function never
multiplies is an error naming it.

Statistics are summed over the calibration batches with one compiled ``lax.scan`` per block
(``jit``, on device). With several devices, each batch is split along its batch axis over a
1-D mesh and the sums are reduced across devices by XLA (data parallel).

>>> from jaxsparse.models import transformer as tf
>>> model = tf.gpt(key=jax.random.key(0), d_model=16, num_layers=2, num_heads=2,
...                        d_ff=32, max_len=8)
>>> tokens = jax.random.randint(jax.random.key(1), (2, 4, 8), 0, 256)  # 2 batches of 4
>>> stats = calibrate(oneshot.gpt_blocks(model), models.functional(model).params, tokens)
>>> stats["block1/mlp/fc2/kernel"].xtx.shape, int(stats["block1/mlp/fc2/kernel"].count)
((32, 32), 64)
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxsparse import nm as nm_lib
from jaxsparse import rules as rules_lib
from jaxsparse.oneshot import capture
from jaxsparse.oneshot import methods as methods_lib
from jaxsparse.oneshot.methods import Stats
from jaxsparse.typing import PyTree

HIGHEST = jax.lax.Precision.HIGHEST
DATA_AXIS = "data"


class Blocks(NamedTuple):
    """A model decomposed for sequential calibration.

    Attributes:
      embed: ``embed(params, x) -> h``: the full params and one calibration batch to the
        first block's input.
      block: ``block(block_params, h) -> h`` for every block (or a sequence, one per block).
      paths: where each block's subtree lives in the params (``"/"``-joined keys).
    """

    embed: Callable[[PyTree, jax.Array], jax.Array]
    block: Callable[[PyTree, jax.Array], jax.Array] | Sequence[Callable]
    paths: Sequence[str]


class LayerReport(NamedTuple):
    """One pruned kernel: achieved sparsity and reconstruction error on its calibration inputs.

    ``error = ||X W - X W_hat||_F`` over every calibration token the layer saw (in sequential
    mode: the inputs produced by the already-pruned blocks), ``relative = error /
    ||X W||_F``; ``nan`` when ``errors=False``.
    """

    path: str
    shape: tuple[int, ...]
    target: float
    sparsity: float
    error: float
    relative: float


class Result(NamedTuple):
    """What :func:`prune` returns.

    Attributes:
      params: the params with every pruned kernel replaced (pruned entries exactly zero;
        SparseGPT's kept weights updated); all other leaves unchanged.
      masks: bool masks with the params' structure: full-shape for the pruned kernels,
        scalar ``True`` for every other leaf (so ``jaxsparse.sparsity(masks)`` is the
        sparsity of the pruned kernels).
      layers: ``{path: LayerReport}`` in pruning order.
      block_sparsity: the target sparsity of each block (sequential mode), else ``()``.
      outlier_ratios: OWL's per-block outlier ratios (:func:`owl`), else ``()``.
    """

    params: PyTree
    masks: PyTree
    layers: dict[str, LayerReport]
    block_sparsity: tuple[float, ...] = ()
    outlier_ratios: tuple[float, ...] = ()


# ---------------------------------------------------------------------------------------
# Input checks and placement.


def check_batches(batches: Any) -> jax.Array:
    """Stacks calibration batches into ``[num_batches, batch, ...]`` with clear errors.

    Accepts a sequence of equally shaped arrays, or one array whose leading axis counts the
    batches. Every batch needs a batch axis; all must share shape and dtype.
    """
    if isinstance(batches, jax.Array | np.ndarray):
        if np.ndim(batches) < 2:
            raise ValueError(f"calibration batches: expected [num_batches, batch, ...], got "
                             f"an array of shape {np.shape(batches)}")
        return jnp.asarray(batches)
    batches = list(batches)
    if not batches:
        raise ValueError("calibration batches: got none")
    first = batches[0]
    shape0, dtype0 = np.shape(first), np.asarray(first).dtype
    if len(shape0) < 1:
        raise ValueError("calibration batch 0 is a scalar; batches need a batch axis")
    for i, b in enumerate(batches):
        shape, dtype = np.shape(b), np.asarray(b).dtype
        if shape != shape0 or dtype != dtype0:
            raise ValueError(f"calibration batch {i} has shape {shape} and dtype {dtype}, but "
                             f"batch 0 has shape {shape0} and dtype {dtype0}: all batches "
                             "must match")
    return jnp.stack([jnp.asarray(b) for b in batches])


def data_mesh(batch_size: int, devices: Sequence[Any] | None = None) -> Mesh:
    """A 1-D ``data`` mesh over the most of ``devices`` (default: this process's devices) that
    divides ``batch_size``."""
    devices = list(jax.local_devices() if devices is None else devices)
    count = math.gcd(int(batch_size), len(devices)) or 1
    return Mesh(np.asarray(devices[:count]), (DATA_AXIS,))


def _place(xs: jax.Array, mesh: Mesh) -> jax.Array:
    axis = mesh.axis_names[0]
    if xs.shape[1] % mesh.shape[axis]:
        raise ValueError(f"calibration batches of {xs.shape[1]} examples cannot be split over "
                         f"the {mesh.shape[axis]} devices of the mesh axis {axis!r}")
    return jax.device_put(xs, NamedSharding(mesh, P(None, axis)))


# ---------------------------------------------------------------------------------------
# Sub-trees by path.


def _key(node: Any, part: str, path: str) -> Any:
    if isinstance(node, dict) or hasattr(node, "keys"):
        for k in node.keys():
            if str(k) == part:
                return k
        raise KeyError(f"one-shot: block path {path!r} not found in the params: no key "
                       f"{part!r} among {sorted(map(str, node.keys()))}")
    if isinstance(node, list | tuple) and part.isdigit() and int(part) < len(node):
        return int(part)
    raise KeyError(f"one-shot: block path {path!r} not found in the params (at {part!r})")


def get_subtree(params: PyTree, path: str) -> PyTree:
    """The subtree of ``params`` at a ``"/"``-joined path (dict keys or list indices)."""
    node = params
    for part in path.split("/"):
        node = node[_key(node, part, path)]
    return node


def set_subtree(params: PyTree, path: str, value: PyTree) -> PyTree:
    """A copy of ``params`` with the subtree at ``path`` replaced (containers copied)."""
    def go(node, parts):
        if not parts:
            return value
        k = _key(node, parts[0], path)
        if isinstance(node, list | tuple):
            items = list(node)
            items[k] = go(node[k], parts[1:])
            return type(node)(items)
        new = dict(node)
        new[k] = go(node[k], parts[1:])
        return type(node)(new) if not isinstance(node, dict) else new

    return go(params, path.split("/"))


# ---------------------------------------------------------------------------------------
# Statistics.


def _stats(xs: list[jax.Array], needs: str) -> Stats:
    sq = sum(jnp.sum(x * x, axis=0) for x in xs)
    count = jnp.asarray(sum(x.shape[0] for x in xs), jnp.int32)
    xtx = None
    if needs == "hessian":
        xtx = sum(jnp.matmul(x.T, x, precision=HIGHEST) for x in xs)
    return Stats(sq, count, xtx)


def _one_batch(fn: Callable, targets: tuple[str, ...], needs: str, params: PyTree,
               x: jax.Array) -> dict[str, Stats]:
    _, acts = capture.linear_inputs(fn, params, x, targets=targets)
    return {p: _stats(a, needs) for p, a in acts.items()}


@functools.partial(jax.jit, static_argnames=("fn", "targets", "needs"))
def _collect(params: PyTree, xs: jax.Array, *, fn: Callable, targets: tuple[str, ...],
             needs: str) -> dict[str, Stats]:
    """``{path: Stats}`` summed over ``xs [num_batches, ...]`` in one scan. Compiled once per
    (block function, targets, shapes): the same ``fn`` object reuses the program."""
    one = functools.partial(_one_batch, fn, targets, needs)
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(one, params, xs[0]))

    def body(acc, x):
        return jax.tree.map(jnp.add, acc, one(params, x)), None

    return jax.lax.scan(body, zeros, xs)[0]


@functools.partial(jax.jit, static_argnames=("fn",))
def _map(params: PyTree, xs: jax.Array, *, fn: Callable) -> jax.Array:
    """``fn(params, x)`` for every batch ``x`` of ``xs`` (one compiled ``lax.map``)."""
    return jax.lax.map(lambda x: fn(params, x), xs)


def _check_reached(fn: Callable, params: PyTree, x: jax.Array, targets: Sequence[str],
                   found: Sequence[str], where: str, prefix: str = "") -> None:
    missing = [t for t in targets if t not in found]
    if not missing:
        return
    traces = []
    jax.eval_shape(lambda p, x: traces.append(capture.trace_linear(fn, p, x, targets=missing)
                                              [1]) or 0, params, x)
    raise ValueError(capture.unreached_message(prefix + missing[0], traces[0]._replace(
        other={prefix + k: v for k, v in traces[0].other.items()}), where))


def _targets(tree: PyTree, rules: rules_lib.Rules | None, prefix: str) -> list[str]:
    return [p for p, leaf in rules_lib.leaves_with_paths(tree)
            if rules_lib.prunable(rules, prefix + p, leaf)]


# ---------------------------------------------------------------------------------------
# The walk over blocks.


def _block_fns(model: Blocks) -> list[Callable]:
    paths = list(model.paths)
    if callable(model.block):
        return [model.block] * len(paths)
    fns = list(model.block)
    if len(fns) != len(paths):
        raise ValueError(f"Blocks: {len(fns)} block functions for {len(paths)} paths")
    return fns


def _walk(model: Blocks | Callable, params: PyTree, batches: Any, needs: str,
          rules: rules_lib.Rules | None, mesh: Mesh | None,
          on_layers: Callable[[int, str, PyTree, list[str], dict[str, Stats]], PyTree]) -> PyTree:
    """Calls ``on_layers(index, prefix, subtree, targets, stats)`` per block (or once for the
    whole model) and continues with the subtree it returns; returns the final params."""
    rules = rules_lib.check_rules(rules)
    xs = check_batches(batches)
    mesh = data_mesh(xs.shape[1]) if mesh is None else mesh
    xs = _place(xs, mesh)

    def collect(fn, p, xs, targets):
        return _collect(p, xs, fn=fn, targets=tuple(targets), needs=needs)

    if not isinstance(model, Blocks):
        if not callable(model):
            raise TypeError(f"one-shot: model must be Blocks(embed, block, paths) or an "
                            f"apply_fn(params, x), got {type(model).__name__}")
        targets = _targets(params, rules, "")
        if not targets:
            raise ValueError("one-shot: no prunable kernel in the params (check the rules)")
        stats = collect(model, params, xs, targets)
        _check_reached(model, params, xs[0], targets, list(stats), "the apply function")
        return on_layers(0, "", params, targets, stats)

    fns = _block_fns(model)
    h = _map(params, xs, fn=model.embed)
    for i, (path, fn) in enumerate(zip(model.paths, fns, strict=True)):
        bp = get_subtree(params, path)
        prefix = f"{path}/"
        targets = _targets(bp, rules, prefix)
        if not targets:
            raise ValueError(f"one-shot: block {path!r} has no prunable kernel (leaves: "
                             f"{rules_lib.leaf_paths(bp)})")
        stats = collect(fn, bp, h, targets)
        _check_reached(fn, bp, h[0], targets, list(stats), f"block {path!r}", prefix)
        bp = on_layers(i, prefix, bp, targets, stats)
        params = set_subtree(params, path, bp)
        if i + 1 < len(fns):
            h = _map(bp, h, fn=fn)
    return params


def calibrate(model: Blocks | Callable, params: PyTree, batches: Any, *,
              needs: Literal["norms", "hessian"] = "hessian", rules: rules_lib.Rules | None = None,
              mesh: Mesh | None = None) -> dict[str, Stats]:
    """The input statistics of every prunable kernel of the dense model.

    Args:
      model: :class:`Blocks` or ``apply_fn(params, x)``.
      params: the params tree.
      batches: calibration batches (:func:`check_batches`).
      needs: ``"norms"`` (``sq_norm`` and ``count`` only) or ``"hessian"`` (also ``X^T X``).
      rules: which leaves are prunable (see the module docstring).
      mesh: 1-D mesh to split the batches over (default :func:`data_mesh`).

    Returns:
      ``{full leaf path: Stats}``.
    """
    if needs not in ("norms", "hessian"):
        raise ValueError(f"calibrate: needs must be 'norms' or 'hessian', got {needs!r}")
    out: dict[str, Stats] = {}

    def on_layers(i, prefix, bp, targets, stats):
        out.update({prefix + t: stats[t] for t in targets})
        return bp

    _walk(model, params, batches, needs, rules, mesh, on_layers)
    return out


# ---------------------------------------------------------------------------------------
# Pruning.


@functools.partial(jax.jit, static_argnames=("method", "structure"))
def _prune_leaf(w: jax.Array, stats: Stats, sparsity: jax.Array, *, method: Any,
                structure: nm_lib.NM | None) -> tuple[Any, jax.Array, jax.Array, jax.Array]:
    """One kernel: ``(Pruned, ok, error, ||X W||)`` (compiled once per method, shape)."""
    pruned, ok = method(w, stats, sparsity=None if structure is not None else sparsity,
                        structure=structure)
    if stats.xtx is None:
        nan = jnp.full((), jnp.nan, jnp.float32)
        return pruned, ok, nan, nan
    w32 = jnp.asarray(w, jnp.float32)
    delta = w32 - pruned.weight.astype(jnp.float32)
    err = jnp.sum(delta * jnp.matmul(stats.xtx, delta, precision=HIGHEST))
    base = jnp.sum(w32 * jnp.matmul(stats.xtx, w32, precision=HIGHEST))
    return pruned, ok, jnp.sqrt(jnp.maximum(err, 0.0)), jnp.sqrt(jnp.maximum(base, 0.0))


def _subtree_leaf(tree: PyTree, rel: str) -> Any:
    return get_subtree(tree, rel)


def prune(
    model: Blocks | Callable,
    params: PyTree,
    batches: Any,
    method: methods_lib.Method,
    *,
    sparsity: float | Sequence[float] | None = None,
    structure: nm_lib.NM | None = None,
    rules: rules_lib.Rules | None = None,
    mesh: Mesh | None = None,
    errors: bool = True,
) -> Result:
    """One-shot pruning of every prunable kernel with calibration data.

    Args:
      model: :class:`Blocks` (sequential, block by block) or ``apply_fn(params, x)`` (one
        pass over the dense model).
      params: the params tree (e.g. ``jaxsparse.models.functional(model).params``).
      batches: calibration batches, ``[num_batches, batch, ...]`` or a list of batches.
      method: ``Magnitude()``, ``Wanda()`` or ``SparseGPT(blocksize=128, percdamp=0.01)``.
      sparsity: fraction of each kernel pruned (unstructured); with :class:`Blocks` also a
        sequence, one target per block (what :func:`owl` passes).
      structure: ``jaxsparse.NM(n, m)`` instead of ``sparsity``: N:M along each kernel's
        inputs (axis 0, the reduction axis).
      rules: which leaves are prunable (first match wins; default: kernels, not biases or
        norms; in sequential mode only leaves inside the blocks).
      mesh: 1-D mesh to split every batch over (default: all devices that divide the batch).
      errors: also compute each layer's reconstruction error (needs ``X^T X`` per layer).

    Returns:
      :class:`Result` ``(params, masks, layers, block_sparsity, outlier_ratios)``; the
      pruned kernels and masks go straight to ``jaxsparse.nm.compress(w, n, m, mask=mask)``.

    >>> w = jax.random.normal(jax.random.key(0), (8, 4))
    >>> apply_fn = lambda p, x: jnp.tanh(x @ p["l"]["kernel"] + p["l"]["bias"][None])
    >>> params = {"l": {"kernel": w, "bias": jnp.zeros(4)}}
    >>> xs = jax.random.normal(jax.random.key(1), (2, 16, 8))  # 2 batches of 16
    >>> out = prune(apply_fn, params, xs, oneshot.SparseGPT(), structure=js.NM(2, 4))
    >>> js.is_nm(out.params, 2, 4), out.masks["l"]["bias"].shape
    (True, ())
    """
    if (sparsity is None) == (structure is None):
        raise ValueError(f"prune: give exactly one of sparsity= or structure=, got "
                         f"sparsity={sparsity!r}, structure={structure!r}")
    if not isinstance(method, methods_lib.Magnitude | methods_lib.Wanda
                      | methods_lib.SparseGPT):
        raise TypeError(f"prune: method must be Magnitude(), Wanda() or SparseGPT(), got "
                        f"{method!r}")
    n_blocks = len(model.paths) if isinstance(model, Blocks) else 1
    if sparsity is not None and not np.isscalar(sparsity):
        if not isinstance(model, Blocks):
            raise ValueError("prune: per-block sparsities need a Blocks model")
        targets_sp = [float(s) for s in sparsity]
        if len(targets_sp) != n_blocks:
            raise ValueError(f"prune: {len(targets_sp)} sparsities for {n_blocks} blocks")
    else:
        targets_sp = [float("nan") if sparsity is None else float(sparsity)] * n_blocks
    for s in targets_sp:
        if not (math.isnan(s) or 0.0 <= s <= 1.0):
            raise ValueError(f"prune: sparsity must be in [0, 1], got {s}")
    needs = "hessian" if errors else method.needs
    if needs == "none":
        needs = "norms"  # magnitude needs nothing, but the walk still propagates
    layers: dict[str, LayerReport] = {}
    masks_by_path: dict[str, jax.Array] = {}

    def on_layers(i, prefix, bp, targets, stats):
        sp = targets_sp[i]
        new = {}
        for t in targets:
            path = prefix + t
            w = _subtree_leaf(bp, t)
            if structure is not None:
                axis = structure.axis_for(path, np.shape(w))
                if np.ndim(w) == 2 and axis != 0:
                    raise ValueError(f"N:M at {path!r}: the structure's axis {axis} is not the "
                                     "reduction axis 0 that x @ W contracts")
            methods_lib.check_kernel(w, None if structure is not None else sp, structure, path)
            sp_arr = jnp.float32(0.0 if math.isnan(sp) else sp)
            pruned, ok, err, base = _prune_leaf(w, stats[t], sp_arr, method=method,
                                                structure=structure)
            if not bool(ok):
                raise ValueError(methods_lib.hessian_error(
                    path, np.shape(w)[0], getattr(method, "percdamp", 0.0)))
            new[t] = pruned.weight
            masks_by_path[path] = pruned.mask
            kept = int(jnp.sum(pruned.mask))
            err, base = float(err), float(base)
            layers[path] = LayerReport(
                path, tuple(np.shape(w)), sp if structure is None else 1 - structure.n
                / structure.m, 1.0 - kept / pruned.mask.size, err,
                err / base if base > 0 else float("nan"))
        return rules_lib.map_with_path(lambda p, leaf: new.get(p, leaf), bp)

    params = _walk(model, params, batches, needs, rules, mesh, on_layers)
    masks = rules_lib.map_with_path(
        lambda p, leaf: masks_by_path.get(p, jnp.ones((), bool)), params)
    block_sp = tuple(targets_sp) if isinstance(model, Blocks) and structure is None else ()
    return Result(params, masks, layers, block_sp)


def owl(
    model: Blocks,
    params: PyTree,
    batches: Any,
    method: methods_lib.Method | None = None,
    *,
    sparsity: float = 0.7,
    m: float = 5.0,
    lam: float = 0.08,
    rules: rules_lib.Rules | None = None,
    mesh: Mesh | None = None,
    errors: bool = True,
) -> Result:
    """OWL: per-block sparsities from the blocks' outlier ratios, then :func:`prune`.

    A first sequential pass over the dense model gives each block's Wanda scores
    ``|W_ij| ||X_i||_2`` (all its kernels together) and their outlier ratio (share above ``m``
    times the mean, :func:`jaxsparse.oneshot.outlier_ratio`); :func:`owl_sparsities` turns the
    ratios into block sparsities in ``[sparsity - lam, sparsity + lam]`` averaging to
    ``sparsity``; the blocks are then pruned sequentially with ``method`` (default Wanda,
    as in the paper). Unstructured only.

    Returns:
      :class:`Result` with ``block_sparsity`` and ``outlier_ratios`` filled in.

    References:
      Yin et al. 2024 (ICML), "Outlier Weighed Layerwise Sparsity (OWL): A Missing Secret
      Sauce for Pruning LLMs to High Sparsity" (M = 5, lambda = 0.08).
    """
    if not isinstance(model, Blocks):
        raise TypeError("owl: needs a Blocks model (per-block sparsities)")
    method = methods_lib.Wanda() if method is None else method
    ratios: list[float] = []

    def on_layers(i, prefix, bp, targets, stats):
        scores = [jnp.abs(_subtree_leaf(bp, t)) * jnp.sqrt(stats[t].sq_norm)[:, None]
                  for t in targets]
        ratios.append(methods_lib.outlier_ratio(scores, m))
        return bp

    _walk(model, params, batches, "norms", rules, mesh, on_layers)
    sps = methods_lib.owl_sparsities(ratios, sparsity, lam)
    out = prune(model, params, batches, method, sparsity=[float(s) for s in sps],
                rules=rules, mesh=mesh, errors=errors)
    return out._replace(outlier_ratios=tuple(ratios))
