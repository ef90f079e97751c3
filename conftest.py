"""Root pytest configuration, shared by ``tests/`` and the doctests of ``jaxsparse/``.

``pytest`` (see ``[tool.pytest.ini_options]``) also runs every docstring example of the library
(``--doctest-modules jaxsparse``). The library modules may be collected before
``tests/conftest.py`` is imported, so the device setup lives here: 4 faked CPU devices and
strict rank promotion, set before jax initialises a backend. This file sits outside the
``jaxsparse`` package, so it is neither packaged nor imported by ``import jaxsparse``.
"""

import functools
import importlib
import os
import pkgutil

# Multi-device behaviour is tested on CPU with faked devices. Must be set before jax loads.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")


@functools.cache
def _doctest_names() -> dict:
    """The names docstring examples use without importing them (the usual conventions)."""
    import jax.numpy as jnp
    import numpy as np
    import optax
    from flax import linen as nn
    from flax import nnx

    import jaxsparse

    names = {"jax": jax, "jnp": jnp, "np": np, "optax": optax, "nnx": nnx, "nn": nn,
             "js": jaxsparse, "jaxsparse": jaxsparse}
    # Every submodule under its own name: ``models.lenet300``, ``masks.ones_like``, ``data``...
    for info in pkgutil.iter_modules(jaxsparse.__path__):
        names[info.name] = importlib.import_module(f"jaxsparse.{info.name}")
    return names


@pytest.fixture(autouse=True)
def _doctest_imports(request, doctest_namespace):
    """Puts :func:`_doctest_names` into a doctest's globals, never over the module's own names.

    pytest copies ``doctest_namespace`` over the module's globals, so e.g. the function
    ``jaxsparse.supermask.supermask`` would be shadowed by the submodule of the same name.
    The (session-wide) namespace is therefore rebuilt per doctest without the names its
    module defines.
    """
    dtest = getattr(request.node, "dtest", None)  # only doctest items have one
    if dtest is None:
        return
    doctest_namespace.clear()
    doctest_namespace.update(
        {k: v for k, v in _doctest_names().items() if k not in dtest.globs}
    )


# The slowest items, marked so a quick local loop can skip them (``pytest -m "not slow"``,
# ``make test-fast``); ``make test`` runs everything. Test modules mark themselves
# (``pytestmark``); doctests cannot, so the expensive ones are listed here.
_SLOW_DOCTESTS = ("jaxsparse/models/", "jaxsparse/lottery/loop.py::jaxsparse.lottery.loop.imp")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if isinstance(item, pytest.DoctestItem) and item.nodeid.startswith(_SLOW_DOCTESTS):
            item.add_marker(pytest.mark.slow)
