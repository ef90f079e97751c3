"""The type aliases every jaxsparse module speaks, defined once.

* ``PyTree``: any pytree (nested dicts / lists / tuples / NamedTuples / NNX states of arrays).
* ``Params``: a pytree of arrays (Linen ``params``, ``nnx.state(model, nnx.Param)``, a dict).
* ``Masks``: a pytree with exactly the params' structure and ``bool`` leaves; a prunable leaf has
  a full-shape array, a leaf that is not prunable a scalar ``True``.
* ``Scores``: a pytree with the params' structure and float leaves; higher means keep.
* ``Key``: a ``jax.random.key`` (randomness is always an explicit keyword ``key``).

>>> from jaxsparse.typing import Masks, Params
>>> def density_of(params: Params, masks: Masks) -> float: ...
"""

from __future__ import annotations

from typing import Any

import jax

PyTree = Any

Params = PyTree
Masks = PyTree
Scores = PyTree
Key = jax.Array

__all__ = ["Key", "Masks", "Params", "PyTree", "Scores"]
