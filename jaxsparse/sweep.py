"""Deprecated alias of :mod:`jaxsparse.population` (kept for one release).

``jaxsparse.sweep.<name>`` warns ``DeprecationWarning`` and returns
``jaxsparse.population.<name>``. ``train_population`` is gone: a stacked ``TrainState``
population trains with the one trainer, :class:`jaxsparse.train.Trainer`.
"""

import warnings

from jaxsparse import population as _population


def __getattr__(name: str):
    if name.startswith("__") or not hasattr(_population, name):
        raise AttributeError(f"module 'jaxsparse.sweep' has no attribute {name!r}")
    warnings.warn("jaxsparse.sweep is deprecated; use jaxsparse.population", DeprecationWarning,
                  stacklevel=2)
    return getattr(_population, name)
