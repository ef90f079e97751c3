"""The inputs of every linear layer of any JAX function, by intercepting its ``dot_general``s.

One-shot pruning needs, for each kernel ``W`` of a model, statistics of the activations ``X``
that multiply it (Wanda: ``||X_j||_2`` per input feature; SparseGPT: ``H = X^T X``). Models
are arbitrary JAX functions of a params tree (Linen, NNX through its functional view, plain
functions), so instead of asking the user to thread hooks through their code we trace the
function once (``jax.make_jaxpr``), tag the kernel leaves, and evaluate the jaxpr with a small
interpreter that, whenever a ``dot_general`` consumes a tagged kernel, hands the *other*
operand to the caller. The interpreter re-binds every primitive, so it runs inside ``jit``
(the statistics are computed on device, and sharded like the activations).

What is recognised:

* a kernel used directly by ``dot_general`` (``x @ W``, ``jnp.dot``, ``jnp.einsum``,
  ``lax.dot_general``, ``nnx.Linear``, ``nn.Dense``), also after ``convert_element_type``
  (mixed precision) or ``copy``;
* inside nested ``jit`` / ``pjit``, ``closed_call``, ``remat`` / ``checkpoint``,
  ``custom_jvp_call`` and ``custom_vjp_call`` (their bodies are evaluated inline).

Not recognised (the kernel then counts as never reached, and the caller's error says which
primitive consumed it): kernels that go through ``reshape`` / ``transpose`` / slicing before
the product, or into ``scan`` / ``while`` / ``cond`` bodies (scan-over-layers models: give
one block at a time, see :class:`jaxsparse.oneshot.Blocks`).

>>> w = jnp.arange(6.0).reshape(3, 2)
>>> fn = lambda p, x: jnp.tanh(x @ p["w"])
>>> out, acts = linear_inputs(fn, {"w": w}, jnp.ones((4, 3)), targets=["w"])
>>> acts["w"][0].shape  # the activation that multiplied "w", as rows x in-features
(4, 3)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.extend.core as jex
import jax.numpy as jnp
import numpy as np

from jaxsparse import rules as rules_lib
from jaxsparse.typing import PyTree

# Primitives whose single output is the (re-typed / copied) kernel itself.
_TRANSPARENT = frozenset({"convert_element_type", "copy", "copy_p", "pvary",
                          "sharding_constraint", "optimization_barrier"})
# Call-like primitives whose body is a jaxpr with the same inputs and outputs as the equation.
_CALLS = frozenset({"pjit", "jit", "closed_call", "core_call", "remat2", "checkpoint",
                    "remat", "custom_jvp_call", "custom_vjp_call", "custom_vjp_call_jaxpr"})
_BODY_KEYS = ("jaxpr", "call_jaxpr", "fun_jaxpr")
_DROP_VAR = getattr(jex, "DropVar", ())  # () where jax.extend.core lacks it: nothing matches


class Use(NamedTuple):
    """One product of a tagged kernel: the activation and how it was contracted."""

    activation: jax.Array
    act_dims: tuple[int, ...]
    kernel_dims: tuple[int, ...]
    batch_dims: tuple


class Trace(NamedTuple):
    """What the interpreter saw: products per kernel path, and other consumers of kernels."""

    uses: dict[str, list[Use]]
    other: dict[str, set[str]]


def _body(eqn: Any) -> tuple[Any, Sequence[Any]] | None:
    if eqn.primitive.name not in _CALLS:
        return None
    for key in _BODY_KEYS:
        j = eqn.params.get(key)
        if isinstance(j, jex.ClosedJaxpr):
            j, consts = j.jaxpr, j.consts
        elif isinstance(j, jex.Jaxpr):
            consts = ()
        else:
            continue
        if len(j.invars) == len(eqn.invars) and len(j.outvars) == len(eqn.outvars):
            return j, consts
    return None


def _bind(eqn: Any, invals: list[Any]) -> list[Any]:
    params = eqn.primitive.get_bind_params(eqn.params)
    subfuns: list[Any] = []
    if isinstance(params, tuple):  # older jax: (subfuns, params)
        subfuns, params = params
    ctx = getattr(getattr(eqn, "ctx", None), "manager", None)
    if ctx is not None:
        with ctx:
            ans = eqn.primitive.bind(*subfuns, *invals, **params)
    else:
        ans = eqn.primitive.bind(*subfuns, *invals, **params)
    return list(ans) if eqn.primitive.multiple_results else [ans]


def _eval(jaxpr: Any, consts: Sequence[Any], args: Sequence[Any],
          tags: Sequence[str | None], trace: Trace) -> list[Any]:
    env: dict[Any, Any] = {}
    tag: dict[Any, str] = {}

    def read(v):
        return v.val if isinstance(v, jex.Literal) else env[v]

    def write(v, val, t=None):
        if isinstance(v, _DROP_VAR):
            return
        env[v] = val
        if t is not None:
            tag[v] = t

    for v, c in zip(jaxpr.constvars, consts, strict=True):
        write(v, c)
    for v, a, t in zip(jaxpr.invars, args, tags, strict=True):
        write(v, a, t)
    for eqn in jaxpr.eqns:
        invals = [read(v) for v in eqn.invars]
        intags = [None if isinstance(v, jex.Literal) else tag.get(v) for v in eqn.invars]
        name = eqn.primitive.name
        out_tags: list[str | None] = [None] * len(eqn.outvars)
        if any(t is not None for t in intags):
            body = _body(eqn)
            if body is not None:
                outs = _eval(body[0], body[1], invals, intags, trace)
                for v, val in zip(eqn.outvars, outs, strict=True):
                    write(v, val)
                continue
            if name == "dot_general" and (intags[0] is None) != (intags[1] is None):
                (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
                k = 1 if intags[1] is not None else 0
                act_dims, kernel_dims = (tuple(lc), tuple(rc)) if k == 1 else (tuple(rc),
                                                                                tuple(lc))
                trace.uses.setdefault(intags[k], []).append(
                    Use(invals[1 - k], act_dims, kernel_dims, (tuple(lb), tuple(rb))))
            elif name in _TRANSPARENT and intags[0] is not None and len(eqn.outvars) == 1:
                out_tags = [intags[0]]
            else:
                for t in intags:
                    if t is not None:
                        trace.other.setdefault(t, set()).add(name)
        outs = _bind(eqn, invals)
        for v, val, t in zip(eqn.outvars, outs, out_tags, strict=True):
            write(v, val, t)
    return [read(v) for v in jaxpr.outvars]


def trace_linear(fn: Callable[..., Any], params: PyTree, *args: Any,
                 targets: Sequence[str]) -> tuple[Any, Trace]:
    """Runs ``fn(params, *args)`` and records every ``dot_general`` use of the target kernels.

    Args:
      fn: any JAX function whose first argument is the params tree.
      params: the params tree; its leaves are addressed by path strings
        (:func:`jaxsparse.rules.leaves_with_paths`).
      *args: the other arguments of ``fn`` (arrays or pytrees).
      targets: the paths of the kernels to watch.

    Returns:
      ``(fn's output, Trace)``: the output is computed by re-binding the traced primitives
      (so it equals ``fn(params, *args)``); ``Trace.uses[path]`` lists every product of
      the kernel at ``path``, ``Trace.other[path]`` the names of other primitives that
      consumed it. Works under ``jit``.
    """
    targets = set(targets)
    closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(params, *args)
    flat_params = rules_lib.leaves_with_paths(params)
    n_rest = len(jax.tree.leaves(args))
    tags = [p if p in targets else None for p, _ in flat_params] + [None] * n_rest
    leaves = [leaf for _, leaf in flat_params] + jax.tree.leaves(args)
    trace = Trace({}, {})
    outs = _eval(closed.jaxpr, closed.consts, leaves, tags, trace)
    return jax.tree.unflatten(jax.tree.structure(out_shape), outs), trace


def rows(use: Use, *, path: str = "<kernel>", kernel_shape: Sequence[int] = ()) -> jax.Array:
    """The activation of one product as a ``[rows, in_features]`` matrix.

    Requires the kernel to be a 2-D ``[in, out]`` matrix contracted along axis 0 with no
    batch dimensions (``nnx.Linear`` / ``nn.Dense`` / ``x @ W``); anything else is an error
    naming the kernel, its shape and the contraction.
    """
    if use.kernel_dims != (0,) or any(use.batch_dims) or len(kernel_shape) != 2:
        raise ValueError(
            f"one-shot: kernel {path!r} of shape {tuple(kernel_shape)} is contracted along "
            f"its axes {use.kernel_dims} (batch dims {use.batch_dims}); one-shot pruning needs "
            "2-D [in, out] kernels contracted along axis 0 (x @ W). Exclude it with a rule "
            f"such as ({path!r}, False)"
        )
    x = jnp.moveaxis(use.activation, use.act_dims[0], -1)
    return x.reshape(-1, x.shape[-1]).astype(jnp.float32)


def linear_inputs(fn: Callable[..., Any], params: PyTree, *args: Any,
                  targets: Sequence[str]) -> tuple[Any, dict[str, list[jax.Array]]]:
    """``fn(params, *args)`` and, per target kernel, its input activations as row matrices.

    Args:
      fn, params, args, targets: as in :func:`trace_linear`.

    Returns:
      ``(output, {path: [x_rows, ...]})`` with one ``[rows, in]`` float32 matrix per product
      of the kernel (a kernel applied twice has two). Targets never used by a product are
      absent from the dict.
    """
    out, trace = trace_linear(fn, params, *args, targets=targets)
    shapes = dict((p, np.shape(leaf)) for p, leaf in rules_lib.leaves_with_paths(params))
    acts = {p: [rows(u, path=p, kernel_shape=shapes[p]) for u in us]
            for p, us in trace.uses.items()}
    return out, acts


def unreached_message(path: str, trace: Trace, where: str) -> str:
    """The error text for a target kernel ``where`` never multiplies (names the consumers)."""
    other = sorted(trace.other.get(path, ()))
    how = (f"it only reaches the primitive(s) {other}, which one-shot capture does not look "
           "through (reshape/transpose/slicing of a kernel, or scan/while/cond bodies)"
           if other else "it is never used")
    return (f"one-shot: layer {path!r} is never reached by a dot_general in {where}: {how}. "
            f"Exclude it with a rule such as ({path!r}, False), or decompose the model so "
            "that the kernel is used as x @ W")
