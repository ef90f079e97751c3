"""Transposable N:M masks (jaxsparse.nm.transposable): legal both ways, exact = brute force."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxsparse import nm


def test_transposable_patterns_count():
    assert nm.transposable_patterns(2, 4).shape == (90, 16)
    assert nm.transposable_patterns(1, 4).shape == (24, 16)
    p = nm.transposable_patterns(2, 4).reshape(-1, 4, 4)
    assert (p.sum(1) == 2).all() and (p.sum(2) == 2).all()
    assert len({x.tobytes() for x in p}) == 90


def test_transposable_masks_valid_both_ways_and_exact_beats_greedy():
    w = jax.random.normal(jax.random.key(3), (16, 12))
    mag = np.abs(np.asarray(w))
    exact = np.asarray(nm.transposable_mask(w, method="exact"))
    greedy = np.asarray(nm.transposable_mask(w, method="greedy"))
    assert nm.is_nm({"k": exact}, 2, 4, exact=True)
    assert nm.is_nm({"k": exact.T}, 2, 4, exact=True)
    assert nm.is_nm({"k": greedy}, 2, 4) and nm.is_nm({"k": greedy.T}, 2, 4)
    assert mag[exact].sum() >= mag[greedy].sum() - 1e-5
    # exact is the brute-force optimum of every 4x4 block
    pats = nm.transposable_patterns(2, 4).reshape(-1, 4, 4)
    for i in range(0, 16, 4):
        for j in range(0, 12, 4):
            blk = mag[i:i + 4, j:j + 4]
            best = max((blk * p).sum() for p in pats)
            np.testing.assert_allclose((blk * exact[i:i + 4, j:j + 4]).sum(), best, rtol=1e-6)
    conv = nm.transposable_mask(jax.random.normal(jax.random.key(4), (3, 3, 8, 8)))
    assert nm.is_nm({"c/kernel": conv}, 2, 4, exact=True)
    assert nm.is_nm({"c/kernel": jnp.swapaxes(conv, -1, -2)}, 2, 4, exact=True)


def test_greedy_transposable_can_fall_short_but_stays_legal():
    # greedy fills rows 0-2 first and leaves row 3 with one legal column
    blk = np.array([[9, 8, 0, 0], [7, 0, 6, 0], [0, 5, 4, 0], [1, 1, 1, 1]], np.float32) + 0.1
    g = np.asarray(nm.transposable_mask(blk, method="greedy"))
    e = np.asarray(nm.transposable_mask(blk, method="exact"))
    assert g.sum() == 7 and e.sum() == 8
    assert (g.sum(0) <= 2).all() and (g.sum(1) <= 2).all()
