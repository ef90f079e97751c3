"""Helpers for tests of jitted code (usable in users' test suites too)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def cache_size(jitted: Callable[..., Any]) -> int:
    """Number of compiled executables a ``jax.jit``-wrapped function holds."""
    return jitted._cache_size()  # noqa: SLF001 - public on every jax we support


def assert_compiles_once(jitted: Callable[..., Any], *calls: tuple[tuple, dict]) -> None:
    """Calls ``jitted`` with each ``(args, kwargs)`` and asserts one compilation in total.

    >>> f = jax.jit(lambda x: x + 1)
    >>> assert_compiles_once(f, ((jnp.ones(3),), {}), ((jnp.zeros(3),), {}))
    """
    if len(calls) < 2:
        raise ValueError("give at least two calls to check that the second one does not recompile")
    before = cache_size(jitted)
    for args, kwargs in calls:
        out = jitted(*args, **kwargs)
    del out
    grown = cache_size(jitted) - before
    if grown != 1:
        raise AssertionError(f"expected exactly 1 compilation over {len(calls)} calls, got {grown}")
