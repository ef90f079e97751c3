"""jaxsparse: a JAX-native sparsity toolkit.

Pure functions on pytrees: mask pytrees, scores, exact selection, optax integration,
lottery tickets, supermasks, N:M sparsity and population sweeps. Importing jaxsparse is
light: flax, orbax, tensorflow-datasets and matplotlib load only in the modules that use them.
"""

from jaxsparse import masks, rules, testing
from jaxsparse.masks import (
    apply_masks,
    count_kept,
    count_total,
    density,
    difference,
    intersect,
    invert,
    ones_like,
    report,
    sparsity,
    union,
    validate,
)

__version__ = "0.1.0"
