"""Shared by the N:M tests: an independent NumPy reference of the N:M selection rule."""

import numpy as np
import pytest


def _reference_mask(w, n, m, axis):
    """numpy reference: stable sort by (-|w|, index) inside each group."""
    a = np.moveaxis(np.abs(np.asarray(w, np.float64)), axis, -1)
    g = a.reshape(a.shape[:-1] + (-1, m))
    order = np.argsort(-g, axis=-1, kind="stable")  # equal values: lower index first
    keep = np.zeros(g.shape, bool)
    np.put_along_axis(keep, order[..., :n], True, axis=-1)
    return np.moveaxis(keep.reshape(a.shape), -1, axis)


@pytest.fixture(scope="session")
def reference_mask():
    """``reference_mask(w, n, m, axis)``: keep the ``n`` largest ``|w|`` per group of ``m``
    along ``axis``, ties to the lower index (session-scoped, so hypothesis tests can use it)."""
    return _reference_mask
