"""Loss Change Allocation (LCA): which parameters, neurons and layers moved the loss, and when.

For one update ``θ_t → θ_{t+1}`` (``Δθ = θ_{t+1} − θ_t``) the change of a loss ``L`` on a
FIXED evaluation set is a path integral along the straight line between the two points::

    L(θ_{t+1}) − L(θ_t) = Σ_i Δθ_i ∫_0^1 ∂_i L(θ_t + s Δθ) ds = Σ_i LCA_{t,i}

``LCA_{t,i} < 0``: parameter ``i`` *helped* (lowered the loss) at iteration ``t``; ``> 0``: it
hurt. The integral is Simpson's rule (the fourth-order Runge-Kutta weights ``1/6, 4/6, 1/6`` at
the start, midpoint and end), or composite Simpson over ``substeps`` equal pieces; the first
order estimate (the gradient at ``θ_t`` alone) is biased. Simpson is exact when ``L`` is a
polynomial of degree <= 4 along the step (a quadratic loss, for one).

* :func:`lca_of_step` is the pure allocation of one step, for tests and for users.
* :func:`recorder` makes a ``jaxsparse.train.Hook`` that allocates every step of a training run
  inside the compiled step: the gradient at ``θ_{t+1}`` is carried to the next step as its
  start point, so a step costs ``2 * substeps`` extra gradient evaluations on the evaluation
  set. Everything is aggregated on the device as it streams: per parameter (summed over
  steps), per neuron / channel, per layer per iteration (``[num_steps, layers]``), per
  iteration, and the counts of helping / hurting parameters per iteration. The full
  ``[steps, params]`` tensor never exists. :func:`summarise` reads a hook state back
  (NumPy), with the telescoping check ``Σ_{t,i} LCA`` vs ``L(θ_T) − L(θ_0)`` and its error.
* Analyses (pure NumPy): :func:`fraction_helping`, :func:`layer_totals`,
  :func:`hurting_layers`, :func:`learning_peaks`, :func:`peak_synchrony`,
  :func:`input_image`.

Pruned weights contribute exactly zero: the trainer keeps them at exactly 0, so ``Δθ = 0``;
the recorder also zeroes their allocation with a select (a NaN gradient cannot leak in) and
counts any pruned entry that moved (:func:`summarise` raises if one did). Masks that change
during the run (a pruner) are refused unless the recorder keeps the mask history
(``mask_history=True``): then each iteration also records the entries dropped and grown and the
LCA of the dropped entries (pruning a weight moves it to 0, a legitimate step whose loss change
is allocated to it), and the helping fractions use the entries in force at that iteration.

>>> A = jnp.array([[2.0, 0.5], [0.5, 1.0]])
>>> loss = lambda p: 0.5 * p["w"] @ A @ p["w"]
>>> t0, t1 = {"w": jnp.array([1.0, -1.0])}, {"w": jnp.array([0.5, -0.5])}
>>> a = lca_of_step(loss, t0, t1)["w"]
>>> bool(jnp.allclose(a.sum(), loss(t1) - loss(t0)))  # exact for a quadratic
True

References:
  Lan, Liu, Zhou & Yosinski 2019, "LCA: Loss Change Allocation for Neural Network Training",
  NeurIPS.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxsparse import rules as rules_lib
from jaxsparse import train as train_lib
from jaxsparse.typing import PyTree

KEEP_OPTIONS = ("per_param", "per_neuron", "per_layer", "per_iteration", "helping")
DEFAULT_KEEP = ("per_param", "per_layer", "per_iteration", "helping")


# ---------------------------------------------------------------------------------------
# The allocation of one step


def simpson_weights(substeps: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Points ``s_k = k / (2 n)`` and composite-Simpson weights on ``[0, 1]`` (``n = substeps``).

    ``n = 1`` gives ``(0, 1/2, 1)`` with weights ``(1/6, 4/6, 1/6)``. The weights sum to 1.

    >>> s, w = simpson_weights(2)
    >>> s.tolist(), (w * 12).tolist()
    ([0.0, 0.25, 0.5, 0.75, 1.0], [1.0, 4.0, 2.0, 4.0, 1.0])
    """
    n = int(substeps)
    if n < 1:
        raise ValueError(f"substeps must be >= 1, got {substeps!r}")
    k = np.arange(2 * n + 1)
    w = np.where(k % 2 == 1, 4.0, 2.0)
    w[0] = w[-1] = 1.0
    return k / (2 * n), w / (6 * n)


def _tree_axpy(a: float, x: PyTree, y: PyTree) -> PyTree:
    return jax.tree.map(lambda xi, yi: yi + jnp.asarray(a, yi.dtype) * xi, x, y)


def _allocate(value_and_grad: Callable, theta0: PyTree, theta1: PyTree, g0: PyTree,
              substeps: int) -> tuple[PyTree, jax.Array, PyTree]:
    """``(LCA tree, L(θ1), ∇L(θ1))`` of one step given ``∇L(θ0) = g0``; 2n gradient calls."""
    s, w = simpson_weights(substeps)
    delta = jax.tree.map(jnp.subtract, theta1, theta0)
    gbar = jax.tree.map(lambda g: g * jnp.asarray(w[0], g.dtype), g0)
    for sk, wk in zip(s[1:-1], w[1:-1], strict=True):
        point = _tree_axpy(float(sk), delta, theta0)
        _, g = value_and_grad(point)
        gbar = _tree_axpy(float(wk), g, gbar)
    loss1, g1 = value_and_grad(theta1)  # the end point exactly (it is the next start)
    gbar = _tree_axpy(float(w[-1]), g1, gbar)
    return jax.tree.map(jnp.multiply, delta, gbar), loss1, g1


def lca_of_step(
    loss_fn: Callable[[PyTree], jax.Array],
    theta0: PyTree,
    theta1: PyTree,
    substeps: int = 1,
) -> PyTree:
    """Loss change allocation of the step ``theta0 → theta1``: a tree like the params.

    ``LCA_i = Δθ_i × (composite Simpson estimate of ∫_0^1 ∂_i L(θ0 + s Δθ) ds)``; its sum
    approximates ``loss_fn(theta1) − loss_fn(theta0)`` (exactly when ``L`` is a polynomial of
    degree <= 4 along the step). Pure; jit it with ``substeps`` static.

    Args:
      loss_fn: ``loss_fn(params) -> scalar`` (the loss on the fixed evaluation set).
      theta0, theta1: the parameters before and after the step (same structure).
      substeps: Simpson pieces ``n``; ``2n + 1`` gradient evaluations.

    Returns:
      The per-entry allocation, with ``theta0``'s structure.

    >>> loss = lambda p: jnp.sum(p["w"] ** 2)
    >>> lca_of_step(loss, {"w": jnp.array([1.0, 2.0])}, {"w": jnp.array([0.0, 2.0])})["w"]
    Array([-1.,  0.], dtype=float32)

    References:
      Lan et al. 2019, "LCA: Loss Change Allocation for Neural Network Training", NeurIPS.
    """
    jax.tree.map(lambda a, b: _same_shape(a, b), theta0, theta1)
    vg = jax.value_and_grad(loss_fn)
    _, g0 = vg(theta0)
    lca, _, _ = _allocate(vg, theta0, theta1, g0, substeps)
    return lca


def _same_shape(a: Any, b: Any) -> None:
    if np.shape(a) != np.shape(b):
        raise ValueError(f"theta0 leaf of shape {np.shape(a)} vs theta1 leaf of shape "
                         f"{np.shape(b)}")


# ---------------------------------------------------------------------------------------
# The streaming recorder (a train.Hook)


class LCAState(NamedTuple):
    """The recorder's hook state (on device; checkpointed with the train state).

    Attributes:
      count: int32, steps recorded.
      grad: ``∇L`` at the current params (the next step's Simpson start point).
      loss_start: ``L(θ_0)``. loss: ``L`` at the current params (the running end loss).
      total: ``Σ_{t,i} LCA`` so far (float32).
      per_param: per-entry sums over steps (params' structure).
      per_neuron: per-leaf sums over all axes but the neuron axis.
      per_layer: ``[num_steps, layers]`` per-iteration per-layer sums.
      per_iteration / loss_change: ``[num_steps]`` Σ LCA of each iteration and the exact
        ``L(θ_{t+1}) − L(θ_t)``.
      helping / hurting / active: ``[num_steps, layers]`` int32 counts of entries with LCA
        ``< 0`` / ``> 0`` / in force at that iteration.
      pruned_moved: int32, pruned entries whose value changed (must stay 0).
      mask_steps: int32, iterations whose update changed the masks; first_mask_step: the first
        such iteration (``-1``: none).
      dropped / grown / pruning: ``[num_steps]`` entries dropped and grown and the LCA of the
        dropped entries per iteration (with ``mask_history``).

    An aggregate that is not kept is an empty dict ``{}``.
    """

    count: jax.Array
    grad: PyTree
    loss_start: jax.Array
    loss: jax.Array
    total: jax.Array
    per_param: PyTree
    per_neuron: PyTree
    per_layer: jax.Array
    per_iteration: jax.Array
    loss_change: jax.Array
    helping: jax.Array
    hurting: jax.Array
    active: jax.Array
    pruned_moved: jax.Array
    mask_steps: jax.Array
    first_mask_step: jax.Array
    dropped: jax.Array
    grown: jax.Array
    pruning: jax.Array


def _layer_of(path: str, layers: Any) -> str:
    if layers == "module":
        return path.rsplit("/", 1)[0] if "/" in path else path
    if layers == "leaf":
        return path
    name = rules_lib.match(layers, path, default=None)
    return path if name is None else str(name)


def layer_names(params: PyTree, layers: Any = "module") -> tuple[str, ...]:
    """The layer groups of ``params``, in tree order, under the grouping rule ``layers``.

    ``"module"``: a leaf's path without its last component (``fc0/kernel`` and ``fc0/bias``
    form ``fc0``); ``"leaf"``: every leaf alone; or path rules ``[(regex, name), ...]``
    (first match wins; an unmatched leaf is its own group).

    >>> layer_names({"fc0": {"kernel": jnp.ones((2, 3)), "bias": jnp.ones(3)},
    ...              "head": {"kernel": jnp.ones((3, 1))}})
    ('fc0', 'head')
    """
    out: list[str] = []
    for path in rules_lib.leaf_paths(params):
        name = _layer_of(path, layers)
        if name not in out:
            out.append(name)
    return tuple(out)


def _neuron_axes(params: PyTree, neuron_axis: int | rules_lib.Rules) -> list[int | None]:
    out = []
    for path, leaf in rules_lib.leaves_with_paths(params):
        ndim = np.ndim(leaf)
        axis = neuron_axis if isinstance(neuron_axis, int) else rules_lib.match(
            neuron_axis, path, leaf, default=-1)
        if ndim == 0:
            out.append(None)
            continue
        if not -ndim <= int(axis) < ndim:
            raise ValueError(f"neuron_axis {axis} is out of range for leaf {path!r} of shape "
                             f"{np.shape(leaf)}")
        out.append(int(axis) % ndim)
    return out


def _reduce_neuron(x: jax.Array, axis: int | None) -> jax.Array:
    if axis is None:
        return x
    return jnp.sum(x, axis=tuple(a for a in range(x.ndim) if a != axis))


def _eval_value_and_grad(apply_fn, x, y, *, loss_fn, batch_size, train_mode):
    """``vg(params, model_state) -> (L, ∇L)``, L = mean loss over the whole set ``(x, y)``."""
    n = int(x.shape[0])

    def batch_loss(params, model_state, xb, yb, wb):
        logits, _ = apply_fn(params, model_state, xb, train=train_mode, key=jax.random.key(0))
        return jnp.sum(loss_fn(logits, yb) * wb) / n

    vg = jax.value_and_grad(batch_loss)
    if batch_size is None or batch_size >= n:
        ones = jnp.ones((n,), jnp.float32)
        return lambda params, model_state: vg(params, model_state, x, y, ones)
    bs = int(batch_size)
    nb = -(-n // bs)
    pad = nb * bs - n
    xs = jnp.concatenate([x, jnp.zeros((pad, *x.shape[1:]), x.dtype)]).reshape(nb, bs,
                                                                               *x.shape[1:])
    ys = jnp.concatenate([y, jnp.zeros((pad,), y.dtype)]).reshape(nb, bs)
    ws = (jnp.arange(nb * bs) < n).astype(jnp.float32).reshape(nb, bs)

    def full(params, model_state):
        def body(carry, batch):
            loss, grad = vg(params, model_state, *batch)
            return (carry[0] + loss, jax.tree.map(jnp.add, carry[1], grad)), None

        zero = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, params))
        out, _ = jax.lax.scan(body, zero, (xs, ys, ws))
        return out

    return full


def _tree_bytes(tree: PyTree) -> int:
    return int(sum(int(np.prod(np.shape(x))) * jnp.result_type(x).itemsize
                   for x in jax.tree.leaves(tree)))


def _is_static_pruner(pruner: Any) -> bool:
    due = getattr(pruner, "due", None)
    return due is not None and getattr(due, "__name__", "") == "never"


@dataclasses.dataclass(frozen=True, eq=False)
class Recorder:
    """An LCA recorder: pass ``recorder.hook`` to ``train.init_state`` and ``train.fit``.

    Made by :func:`recorder`; read the hook state back with :func:`summarise`.
    """

    apply_fn: Callable
    x: jax.Array
    y: jax.Array
    num_steps: int
    keep: tuple[str, ...]
    loss_fn: Callable
    substeps: int
    eval_batch_size: int | None
    train_mode: bool
    layers: Any
    neuron_axis: Any
    mask_history: bool
    memory_bytes: int | None
    memory_fraction: float

    @property
    def hook(self) -> train_lib.Hook:
        """The ``train.Hook`` (``init``, ``update``)."""
        return train_lib.Hook(self.init, self.update)

    def _vg(self):
        return _eval_value_and_grad(self.apply_fn, self.x, self.y, loss_fn=self.loss_fn,
                                    batch_size=self.eval_batch_size,
                                    train_mode=self.train_mode)

    def _groups(self, params: PyTree) -> tuple[tuple[str, ...], list[int]]:
        names = layer_names(params, self.layers)
        ids = [names.index(_layer_of(p, self.layers)) for p in rules_lib.leaf_paths(params)]
        return names, ids

    def _check(self, state: train_lib.TrainState) -> None:
        x1 = jax.ShapeDtypeStruct((1, *self.x.shape[1:]), self.x.dtype)
        try:
            logits = jax.eval_shape(
                lambda p, ms, xb: self.apply_fn(p, ms, xb, train=self.train_mode,
                                                key=jax.random.key(0))[0],
                state.params, state.model_state, x1)
        except Exception as e:  # noqa: BLE001 - re-raised with the shapes that matter
            raise ValueError(f"LCA evaluation set: the model does not accept inputs of shape "
                             f"{tuple(self.x.shape[1:])} (x has shape {tuple(self.x.shape)}): "
                             f"{type(e).__name__}: {e}") from None
        if len(logits.shape) != 2 or logits.shape[0] != 1:
            raise ValueError(f"LCA evaluation set: the model returns logits of shape "
                             f"{logits.shape} for one example; expected (1, classes)")
        total = self._state_bytes(state.params) + _tree_bytes((self.x, self.y))
        budget = self._budget()
        if total > budget:
            raise ValueError(
                f"LCA evaluation set does not fit: the set ({tuple(self.x.shape)} "
                f"{self.x.dtype}, {_tree_bytes((self.x, self.y))} bytes) and the recorder "
                f"state ({self._state_bytes(state.params)} bytes) need {total} bytes, more "
                f"than {self.memory_fraction:.0%} of the device memory ({budget} of "
                f"{self._device_bytes()} bytes); use a smaller evaluation subset, fewer "
                f"kept aggregates (keep=) or a shorter run (num_steps=)")

    def _device_bytes(self) -> int:
        if self.memory_bytes is not None:
            return int(self.memory_bytes)
        from jaxsparse.population import device_memory_bytes

        return device_memory_bytes()

    def _budget(self) -> int:
        return int(self.memory_fraction * self._device_bytes())

    def _state_bytes(self, params: PyTree) -> int:
        p = _tree_bytes(params)
        n_layers = len(self._groups(params)[0])
        per_param = p * (("per_param" in self.keep) + ("per_neuron" in self.keep))  # bound
        per_t = 4 * self.num_steps * (n_layers * (("per_layer" in self.keep)
                                                  + 3 * ("helping" in self.keep))
                                      + 2 * ("per_iteration" in self.keep)
                                      + 3 * self.mask_history)
        return 2 * p + per_param + per_t  # grad + Simpson accumulator + aggregates

    def init(self, state: train_lib.TrainState) -> LCAState:
        """``L(θ_0)``, ``∇L(θ_0)`` and empty aggregates (see :class:`LCAState`)."""
        self._check(state)
        params = state.params
        names, _ = self._groups(params)
        n_layers = len(names)
        axes = _neuron_axes(params, self.neuron_axis)
        loss0, g0 = self._vg()(params, state.model_state)
        t = self.num_steps
        zeros_f = lambda *shape: jnp.zeros(shape, jnp.float32)  # noqa: E731
        zeros_i = lambda *shape: jnp.zeros(shape, jnp.int32)  # noqa: E731
        keep = self.keep
        leaves, treedef = jax.tree.flatten(params)
        per_neuron = {}
        if "per_neuron" in keep:
            per_neuron = jax.tree.unflatten(treedef, [
                _reduce_neuron(jnp.zeros(np.shape(x), jnp.float32), a)
                for x, a in zip(leaves, axes, strict=True)])
        off = {}  # a disabled aggregate: an empty subtree (checkpoints reject empty arrays)
        on = lambda option, value: value if option in keep else off  # noqa: E731
        history = lambda value: value if self.mask_history else off  # noqa: E731
        return LCAState(
            count=zeros_i(),
            grad=g0,
            loss_start=jnp.asarray(loss0, jnp.float32),
            loss=jnp.asarray(loss0, jnp.float32),
            total=zeros_f(),
            per_param=on("per_param", jax.tree.map(
                lambda x: jnp.zeros(np.shape(x), jnp.float32), params)),
            per_neuron=per_neuron,
            per_layer=on("per_layer", zeros_f(t, n_layers)),
            per_iteration=on("per_iteration", zeros_f(t)),
            loss_change=on("per_iteration", zeros_f(t)),
            helping=on("helping", zeros_i(t, n_layers)),
            hurting=on("helping", zeros_i(t, n_layers)),
            active=on("helping", zeros_i(t, n_layers)),
            pruned_moved=zeros_i(),
            mask_steps=zeros_i(),
            first_mask_step=jnp.full((), -1, jnp.int32),
            dropped=history(zeros_i(t)),
            grown=history(zeros_i(t)),
            pruning=history(zeros_f(t)),
        )

    def update(self, hs: LCAState, state: train_lib.TrainState,
               info: train_lib.StepInfo) -> LCAState:
        """Allocates the step ``info.prev.params → state.params`` and folds it in."""
        theta0, theta1 = info.prev.params, state.params
        vg = self._vg()
        lca, loss1, g1 = _allocate(lambda p: vg(p, state.model_state), theta0, theta1,
                                   hs.grad, self.substeps)
        names, ids = self._groups(theta0)
        n_layers = len(names)
        axes = _neuron_axes(theta0, self.neuron_axis)
        m0 = jax.tree.leaves(info.prev.masks)
        m1 = jax.tree.leaves(state.masks)
        d = jax.tree.leaves(jax.tree.map(jnp.subtract, theta1, theta0))
        raw = jax.tree.leaves(lca)
        treedef = jax.tree.structure(lca)
        live = [a | b for a, b in zip(m0, m1, strict=True)]
        leaves = [jnp.where(lv, x, jnp.zeros((), x.dtype)).astype(jnp.float32)
                  for lv, x in zip(live, raw, strict=True)]
        moved = sum(jnp.sum(~lv & (dx != 0), dtype=jnp.int32)
                    for lv, dx in zip(live, d, strict=True))
        changed = sum(jnp.sum(a != b, dtype=jnp.int32) for a, b in zip(m0, m1, strict=True))
        i = hs.count
        step_sum = sum(jnp.sum(x) for x in leaves)

        def by_layer(values):
            out = [jnp.zeros((), values[0].dtype)] * n_layers
            for v, g in zip(values, ids, strict=True):
                out[g] = out[g] + v
            return jnp.stack(out)

        def put(buf, value):
            return buf.at[i].set(value, mode="drop")

        new = hs._replace(
            count=i + 1, grad=g1, loss=jnp.asarray(loss1, jnp.float32),
            total=hs.total + step_sum,
            pruned_moved=hs.pruned_moved + moved,
            mask_steps=hs.mask_steps + (changed > 0).astype(jnp.int32),
            first_mask_step=jnp.where((hs.first_mask_step < 0) & (changed > 0), info.step,
                                      hs.first_mask_step),
        )
        if "per_param" in self.keep:
            new = new._replace(per_param=jax.tree.map(
                jnp.add, hs.per_param, jax.tree.unflatten(treedef, leaves)))
        if "per_neuron" in self.keep:
            new = new._replace(per_neuron=jax.tree.map(jnp.add, hs.per_neuron, jax.tree.unflatten(
                treedef, [_reduce_neuron(x, a) for x, a in zip(leaves, axes, strict=True)])))
        if "per_layer" in self.keep:
            new = new._replace(per_layer=put(hs.per_layer, by_layer([jnp.sum(x) for x in leaves])))
        if "per_iteration" in self.keep:
            new = new._replace(per_iteration=put(hs.per_iteration, step_sum),
                               loss_change=put(hs.loss_change, loss1 - hs.loss))
        if "helping" in self.keep:
            count = lambda pred: by_layer([  # noqa: E731
                jnp.sum(pred(x), dtype=jnp.int32) for x in leaves])
            shapes = [x.shape for x in leaves]
            act = by_layer([jnp.sum(jnp.broadcast_to(lv, s), dtype=jnp.int32)
                            for lv, s in zip(live, shapes, strict=True)])
            new = new._replace(helping=put(hs.helping, count(lambda x: x < 0)),
                               hurting=put(hs.hurting, count(lambda x: x > 0)),
                               active=put(hs.active, act))
        if self.mask_history:
            drop = [a & ~b for a, b in zip(m0, m1, strict=True)]
            new = new._replace(
                dropped=put(hs.dropped, sum(jnp.sum(x, dtype=jnp.int32) for x in drop)),
                grown=put(hs.grown, sum(jnp.sum(~a & b, dtype=jnp.int32)
                                        for a, b in zip(m0, m1, strict=True))),
                pruning=put(hs.pruning, sum(jnp.sum(jnp.where(dr, x, 0.0))
                                            for dr, x in zip(drop, leaves, strict=True))))
        return new


def recorder(
    apply_fn: Callable[..., tuple[jax.Array, PyTree]],
    eval_data: tuple[Any, Any],
    *,
    num_steps: int,
    keep: Sequence[str] = DEFAULT_KEEP,
    loss_fn: Callable[[jax.Array, jax.Array], jax.Array] = train_lib.cross_entropy,
    substeps: int = 1,
    eval_batch_size: int | None = None,
    train_mode: bool = False,
    layers: str | rules_lib.Rules = "module",
    neuron_axis: int | rules_lib.Rules = -1,
    mask_history: bool = False,
    pruner: Any = None,
    memory_bytes: int | None = None,
    memory_fraction: float = 0.5,
) -> Recorder:
    """An LCA recorder for a training run of the one trainer (a ``train.Hook``).

    The loss is ``L(θ) = mean_j loss_fn(apply_fn(θ, model_state, x_j, train=train_mode), y_j)``
    over the fixed evaluation set (the training set in Lan et al.), with the model state of
    the step's end (models with running statistics: the change of the statistics themselves
    is not allocated and shows up in the telescoping error; ``train_mode=True`` evaluates with
    batch statistics, a function of ``θ`` alone). The set is a constant of the compiled step:
    it must fit on the device (checked at ``init`` against ``memory_fraction`` of
    ``jaxsparse.population.device_memory_bytes()``, or of ``memory_bytes``).

    Args:
      apply_fn: as for ``jaxsparse.train.make_step``.
      eval_data: ``(x, y)``, the fixed evaluation set.
      num_steps: iterations the per-iteration buffers hold (the run's length).
      keep: aggregates kept, from :data:`KEEP_OPTIONS`: ``"per_param"`` (per entry, summed
        over steps), ``"per_neuron"`` (summed over every axis but ``neuron_axis``),
        ``"per_layer"`` (``[num_steps, layers]``), ``"per_iteration"`` (Σ LCA and the exact
        loss change per iteration), ``"helping"`` (per-iteration per-layer counts of helping,
        hurting and in-force entries). The total and the telescoping check are always kept.
      loss_fn: per-example loss ``loss_fn(logits, labels) -> [batch]``.
      substeps: composite Simpson pieces (``2 * substeps`` extra gradient evaluations per step).
      eval_batch_size: evaluate the set in batches of this size (a ``lax.scan``; bounds the
        activation memory); ``None``: one batch.
      train_mode: the ``train`` flag of ``apply_fn`` for the evaluation.
      layers: grouping of leaves into layers (see :func:`layer_names`).
      neuron_axis: the neuron / channel axis kept by ``"per_neuron"``: an int for every leaf
        or path rules ``[(regex, axis), ...]`` (default ``-1``: output units; ``0`` on a first
        layer kernel gives per-input-pixel sums).
      mask_history: record the masks' changes (required when masks change during the run).
      pruner: the run's pruner, if any: one that can change masks (anything but a static
        pruner) needs ``mask_history=True``.
      memory_bytes: device memory to check against (default: the device's).
      memory_fraction: share of the device memory the set and the recorder may use.

    Returns:
      A :class:`Recorder`; pass ``recorder.hook`` to ``train.init_state`` and ``train.fit``.

    >>> apply_fn = lambda p, ms, x, *, train, key: (x @ p["w"] + p["b"][None, :], ms)
    >>> x = jax.random.normal(jax.random.key(0), (64, 4)); y = jnp.argmax(x[:, :3], -1)
    >>> rec = recorder(apply_fn, (x, y), num_steps=20)
    >>> tx = optax.sgd(0.5)
    >>> params = {"w": jnp.zeros((4, 3)), "b": jnp.zeros(3)}
    >>> state = train.init_state(params, tx, key=jax.random.key(1), hooks=[rec.hook])
    >>> out = train.fit(apply_fn, tx, state, {"train": (x, y)}, num_steps=20, batch_size=16,
    ...                 eval_every=20, hooks=[rec.hook])
    >>> res = summarise(rec, out.state.hook_state[0])
    >>> res.steps, res.layers, abs(res.error) < 1e-3 * abs(res.loss_end - res.loss_start)
    (20, ('b', 'w'), True)

    References:
      Lan et al. 2019, "LCA: Loss Change Allocation for Neural Network Training", NeurIPS.
    """
    keep = tuple(keep)
    bad = [k for k in keep if k not in KEEP_OPTIONS]
    if bad:
        raise ValueError(f"unknown keep option(s) {bad}; expected some of {KEEP_OPTIONS}")
    if int(num_steps) < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps!r}")
    simpson_weights(substeps)  # validates
    if pruner is not None and not mask_history and not _is_static_pruner(pruner):
        raise ValueError(
            "LCA of a run whose pruner can change the masks needs the mask history: make the "
            "recorder with mask_history=True (records the entries dropped / grown and the LCA "
            "of the dropped entries per iteration), or use a static pruner")
    if not 0.0 < memory_fraction <= 1.0:
        raise ValueError(f"memory_fraction must be in (0, 1], got {memory_fraction!r}")
    x, y = eval_data
    if np.ndim(y) != 1 or np.shape(x)[0] != np.shape(y)[0]:
        raise ValueError(f"LCA evaluation set: x has shape {np.shape(x)} and y has shape "
                         f"{np.shape(y)}; expected x [n, ...] and integer labels y [n]")
    if np.shape(x)[0] == 0:
        raise ValueError("LCA evaluation set is empty")
    if not np.issubdtype(np.asarray(y[:1]).dtype, np.integer):
        raise ValueError(f"LCA evaluation set: labels must be integers, got {np.asarray(y).dtype}")
    data_bytes = int(np.prod(np.shape(x))) * np.dtype(np.asarray(x[:1]).dtype).itemsize
    rec = Recorder(apply_fn, None, None, int(num_steps), keep, loss_fn, int(substeps),
                   eval_batch_size, bool(train_mode), layers, neuron_axis, bool(mask_history),
                   memory_bytes, float(memory_fraction))
    if data_bytes > rec._budget():  # before copying it to the device
        raise ValueError(
            f"LCA evaluation set does not fit: x {np.shape(x)} takes {data_bytes} bytes, more "
            f"than {memory_fraction:.0%} of the device memory ({rec._budget()} of "
            f"{rec._device_bytes()} bytes); use a smaller evaluation subset")
    return dataclasses.replace(rec, x=jnp.asarray(x), y=jnp.asarray(y, jnp.int32))


# ---------------------------------------------------------------------------------------
# Reading a run back


@dataclasses.dataclass(frozen=True)
class LCAResult:
    """A recorded run, as NumPy (see :func:`summarise`).

    Attributes:
      steps: iterations recorded. layers: layer names (columns of the per-layer arrays).
      loss_start, loss_end: ``L(θ_0)`` and ``L(θ_T)``. total: ``Σ_{t,i} LCA``.
      error: ``total − (loss_end − loss_start)``, the integrator's (and float32's) error.
      per_param, per_neuron: trees of arrays (``None`` when not kept).
      per_layer: ``[steps, layers]``; per_iteration, loss_change: ``[steps]``;
      helping, hurting, active: ``[steps, layers]`` counts (``None`` when not kept).
      mask_steps: iterations whose masks changed; dropped, grown, pruning: ``[steps]`` (``None``
      without mask history).
    """

    steps: int
    layers: tuple[str, ...]
    loss_start: float
    loss_end: float
    total: float
    error: float
    per_param: PyTree | None
    per_neuron: PyTree | None
    per_layer: np.ndarray | None
    per_iteration: np.ndarray | None
    loss_change: np.ndarray | None
    helping: np.ndarray | None
    hurting: np.ndarray | None
    active: np.ndarray | None
    mask_steps: int
    dropped: np.ndarray | None
    grown: np.ndarray | None
    pruning: np.ndarray | None

    @property
    def relative_error(self) -> float:
        """``|error| / |loss_end − loss_start|``."""
        change = self.loss_end - self.loss_start
        return abs(self.error) / abs(change) if change else float("inf")


def summarise(rec: Recorder, hook_state: LCAState) -> LCAResult:
    """Reads a single run's :class:`LCAState` back to NumPy, with the telescoping check.

    For a population, take one member first (``jaxsparse.population.take_member``).

    Raises:
      ValueError: a pruned entry moved; the masks changed without ``mask_history``; or the
        run was longer than the recorder's ``num_steps``.
    """
    hs = jax.device_get(hook_state)
    if np.ndim(hs.count) != 0:
        raise ValueError(f"hook state has a leading population axis (count shape "
                         f"{np.shape(hs.count)}); take one member with population.take_member")
    steps = int(hs.count)
    if int(hs.pruned_moved):
        raise ValueError(f"{int(hs.pruned_moved)} pruned entries changed value during the run; "
                         "their allocation was zeroed, so the LCA does not add up (the trainer "
                         "must keep pruned params at exactly 0)")
    if int(hs.mask_steps) and not rec.mask_history:
        raise ValueError(
            f"the masks changed at {int(hs.mask_steps)} iterations (first at iteration "
            f"{int(hs.first_mask_step)}) but the recorder has no mask history; make it with "
            "mask_history=True (and pass pruner=)")
    if steps > rec.num_steps:
        raise ValueError(f"{steps} steps recorded but the recorder holds {rec.num_steps}: "
                         "per-iteration records were dropped; make it with num_steps >= "
                         f"{steps}")
    names = layer_names(hs.grad, rec.layers)
    keep = rec.keep
    cut = lambda a, on: np.asarray(a)[:steps] if on else None  # noqa: E731
    loss_start, loss_end, total = float(hs.loss_start), float(hs.loss), float(hs.total)
    return LCAResult(
        steps=steps, layers=names, loss_start=loss_start, loss_end=loss_end, total=total,
        error=total - (loss_end - loss_start),
        per_param=hs.per_param if "per_param" in keep else None,
        per_neuron=hs.per_neuron if "per_neuron" in keep else None,
        per_layer=cut(hs.per_layer, "per_layer" in keep),
        per_iteration=cut(hs.per_iteration, "per_iteration" in keep),
        loss_change=cut(hs.loss_change, "per_iteration" in keep),
        helping=cut(hs.helping, "helping" in keep),
        hurting=cut(hs.hurting, "helping" in keep),
        active=cut(hs.active, "helping" in keep),
        mask_steps=int(hs.mask_steps),
        dropped=cut(hs.dropped, rec.mask_history),
        grown=cut(hs.grown, rec.mask_history),
        pruning=cut(hs.pruning, rec.mask_history),
    )


# ---------------------------------------------------------------------------------------
# Analyses (NumPy)


def _need(res: LCAResult, field: str, option: str) -> np.ndarray:
    value = getattr(res, field)
    if value is None:
        raise ValueError(f"this analysis needs {field!r}: record with keep including {option!r}")
    return value


def fraction_helping(res: LCAResult, layer: str | None = None, *,
                     exclude_zero: bool = False) -> np.ndarray:
    """Per iteration, the fraction of entries with LCA < 0 (all layers, or one).

    The denominator is the entries in force at that iteration, or with ``exclude_zero`` only
    those whose LCA is not exactly 0 (an entry whose gradient vanishes on the whole
    evaluation set, e.g. a weight out of a dead ReLU unit, has LCA exactly 0).

    >>> r = LCAResult(2, ("a",), 0, 0, 0, 0, None, None, None, None, None,
    ...               np.array([[3], [1]]), np.array([[1], [1]]), np.array([[4], [4]]), 0,
    ...               None, None, None)
    >>> fraction_helping(r).tolist(), fraction_helping(r, exclude_zero=True).tolist()
    ([0.75, 0.25], [0.75, 0.5])
    """
    helping = _need(res, "helping", "helping")
    other = _need(res, "hurting" if exclude_zero else "active", "helping")
    if layer is not None:
        if layer not in res.layers:
            raise ValueError(f"unknown layer {layer!r}; layers are {res.layers}")
        j = res.layers.index(layer)
        helping, other = helping[:, j:j + 1], other[:, j:j + 1]
    total = helping.sum(1) + other.sum(1) if exclude_zero else other.sum(1)
    return helping.sum(1) / np.maximum(total, 1)


def layer_totals(res: LCAResult) -> dict[str, float]:
    """Each layer's LCA summed over the run (negative = the layer helped overall)."""
    per_layer = _need(res, "per_layer", "per_layer")
    return {name: float(v) for name, v in zip(res.layers, per_layer.sum(0), strict=True)}


def hurting_layers(res: LCAResult) -> list[str]:
    """The layers whose total LCA is positive: they raised the loss over the run."""
    return [name for name, v in layer_totals(res).items() if v > 0]


def learning_peaks(series: np.ndarray, *, top: float = 0.1) -> np.ndarray:
    """Iterations where a layer learns most: local maxima of ``-LCA`` in its top ``top`` share.

    A peak is an iteration ``t`` with ``-LCA[t] > -LCA[t-1]``, ``-LCA[t] >= -LCA[t+1]`` and
    ``-LCA[t] > 0``, among the ``ceil(top * T)`` largest values of ``-LCA``.

    >>> learning_peaks(np.array([0.0, -1.0, 0.0, -3.0, -2.0, 0.0]), top=0.34).tolist()
    [1, 3]
    """
    a = -np.asarray(series, np.float64)
    if a.ndim != 1 or a.size < 3:
        raise ValueError(f"learning_peaks needs a 1-D series of >= 3 iterations, got {a.shape}")
    k = max(1, int(np.ceil(top * a.size)))
    threshold = np.sort(a)[-k]
    t = np.arange(1, a.size - 1)
    local = (a[t] > a[t - 1]) & (a[t] >= a[t + 1]) & (a[t] >= threshold) & (a[t] > 0)
    return t[local]


def _cooccur(pa: np.ndarray, pb: np.ndarray, tolerance: int, n: int, shift: int = 0) -> float:
    if pa.size == 0:
        return float("nan")
    hit = np.zeros(n, bool)
    for d in range(-tolerance, tolerance + 1):
        hit[(pb + shift + d) % n] = True
    return float(hit[pa].mean())


def peak_synchrony(per_layer: np.ndarray, *, top: float = 0.1, tolerance: int = 1,
                   shifts: int = 200, seed: int = 0) -> dict[str, Any]:
    """How synchronised the layers' learning peaks are, against a shifted-peaks null.

    For layers ``a, b``: the fraction of ``a``'s :func:`learning_peaks` that have a peak of
    ``b`` within ``±tolerance`` iterations (``observed[a, b]``), and the same fraction after
    circularly shifting ``b``'s peaks by random offsets (``null[a, b]``, mean over ``shifts``
    draws), which keeps each layer's peak count and spacing but breaks their alignment.

    Returns:
      ``{"observed", "null"}`` ``[layers, layers]`` arrays (NaN where ``a`` has no peak),
      ``"mean_observed"`` and ``"mean_null"`` (off-diagonal means), ``"peaks"`` per layer.

    >>> s = np.zeros((40, 2)); s[[5, 20, 33], :] = -1.0
    >>> out = peak_synchrony(s, top=0.1)
    >>> out["mean_observed"], out["mean_null"] < 0.5
    (1.0, True)
    """
    per_layer = np.asarray(per_layer, np.float64)
    if per_layer.ndim != 2:
        raise ValueError(f"per_layer must be [iterations, layers], got {per_layer.shape}")
    n, n_layers = per_layer.shape
    peaks = [learning_peaks(per_layer[:, j], top=top) for j in range(n_layers)]
    rng = np.random.default_rng(seed)
    offsets = rng.integers(tolerance + 1, max(tolerance + 2, n - tolerance), size=shifts)
    observed = np.full((n_layers, n_layers), np.nan)
    null = np.full((n_layers, n_layers), np.nan)
    for a in range(n_layers):
        for b in range(n_layers):
            observed[a, b] = _cooccur(peaks[a], peaks[b], tolerance, n)
            null[a, b] = np.mean([_cooccur(peaks[a], peaks[b], tolerance, n, int(s))
                                  for s in offsets]) if peaks[a].size else np.nan
    off = ~np.eye(n_layers, dtype=bool)

    def mean(a: np.ndarray) -> float:  # NaN (no peaks) entries left out; all NaN: NaN
        a = a[np.isfinite(a)]
        return float(a.mean()) if a.size else float("nan")

    return {"observed": observed, "null": null, "mean_observed": mean(observed[off]),
            "mean_null": mean(null[off]), "peaks": peaks}


def input_image(res: LCAResult, path: str, shape: Sequence[int]) -> np.ndarray:
    """Per-input LCA of a first-layer kernel ``[inputs, units]`` summed over units, reshaped.

    E.g. ``input_image(res, "fc0/kernel", (28, 28))`` for an MNIST fully connected network.
    Uses ``per_param`` (or ``per_neuron`` if it was recorded with axis 0 for that leaf).
    """
    tree = res.per_param if res.per_param is not None else res.per_neuron
    if tree is None:
        raise ValueError("input_image needs per_param (or per_neuron with axis 0) recorded")
    found = dict(rules_lib.leaves_with_paths(tree))
    if path not in found:
        raise ValueError(f"no leaf {path!r}; leaves are {sorted(found)}")
    leaf = np.asarray(found[path])
    values = leaf.sum(axis=tuple(range(1, leaf.ndim))) if leaf.ndim > 1 else leaf
    if values.size != int(np.prod(shape)):
        raise ValueError(f"leaf {path!r} has {values.size} inputs, not {tuple(shape)}")
    return values.reshape(tuple(shape))


__all__ = [
    "DEFAULT_KEEP", "KEEP_OPTIONS", "LCAResult", "LCAState", "Recorder", "fraction_helping",
    "hurting_layers", "input_image", "layer_names", "layer_totals", "lca_of_step",
    "learning_peaks", "peak_synchrony", "recorder", "simpson_weights", "summarise",
]
