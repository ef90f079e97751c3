"""Helpers for tests of jitted code and pytrees (usable in users' test suites too)."""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Callable, Iterator
from typing import Any

_COMPILED = re.compile(r"Finished XLA compilation of (?:jit\()?([^\s()]+)\)? in")


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


class _Collect(logging.Handler):
    def __init__(self, names: list[str]):
        super().__init__(logging.DEBUG)
        self.names = names

    def emit(self, record: logging.LogRecord) -> None:
        match = _COMPILED.search(record.getMessage())
        if match:
            self.names.append(match.group(1))


@contextlib.contextmanager
def compilations() -> Iterator[list[str]]:
    """Collects the name of every function XLA compiles inside the block.

    Unlike :func:`cache_size` (entries of a jitted function's dispatch cache, which can
    grow for the same executable when only the arguments' placement differs) this counts
    real XLA compilations, of any function, e.g. inside a driver that builds its own.

    >>> with compilations() as names:
    ...     f = jax.jit(lambda x: x * 2, inline=False)
    ...     _ = f(jnp.ones(2)), f(jnp.zeros(2))
    >>> names.count("<lambda>")
    1
    """
    import jax

    names: list[str] = []
    handler = _Collect(names)
    logger = logging.getLogger("jax")
    logger.addHandler(handler)
    before = jax.config.jax_log_compiles
    jax.config.update("jax_log_compiles", True)
    try:
        yield names
    finally:
        jax.config.update("jax_log_compiles", before)
        logger.removeHandler(handler)


MIXED_PRUNABLE = ("conv/kernel", "dense/kernel", "embed/embedding", "head/kernel")


def mixed_tree(key: Any) -> dict[str, Any]:
    """A realistic params tree: conv kernel + bias, norm scale / bias, dense, embedding, head.

    The default path rules prune the four leaves of :data:`MIXED_PRUNABLE` (shapes
    ``(3, 3, 2, 8)``, ``(72, 20)``, ``(30, 6)``, ``(20, 5)``) and keep biases and the norm.

    >>> t = mixed_tree(jax.random.key(0))
    >>> sorted(t), t["conv"]["kernel"].shape
    (['bn', 'conv', 'dense', 'embed', 'head'], (3, 3, 2, 8))
    """
    import jax
    import jax.numpy as jnp

    ks = jax.random.split(key, 4)
    return {
        "conv": {"kernel": jax.random.normal(ks[0], (3, 3, 2, 8)), "bias": jnp.zeros(8)},
        "bn": {"scale": jnp.ones(8), "bias": jnp.zeros(8)},
        "dense": {"kernel": jax.random.normal(ks[1], (72, 20)), "bias": jnp.zeros(20)},
        "embed": {"embedding": jax.random.normal(ks[2], (30, 6))},
        "head": {"kernel": jax.random.normal(ks[3], (20, 5)), "bias": jnp.zeros(5)},
    }
