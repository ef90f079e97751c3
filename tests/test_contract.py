"""Contract test: every criterion x every scope on a realistic mixed tree.

Checks per case: mask structure == params structure, exact kept counts (rounding rule),
monotone under repeated pruning (never revives), deterministic, jit without recompiling on the
second call, and vmap over a population with per-member sparsity.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsparse as js
from jaxsparse import select
from jaxsparse.testing import MIXED_PRUNABLE, assert_compiles_once, mixed_tree

INIT = mixed_tree(jax.random.key(0))
FINAL = jax.tree.map(lambda a, b: a + 0.5 * b, INIT, mixed_tree(jax.random.key(1)))
MASKS = js.ones_like(INIT)
PRUNABLE = list(MIXED_PRUNABLE)

CRITERIA = {
    name: (lambda f=f, name=name: f(INIT, FINAL, key=jax.random.key(2)) if name == "random"
           else f(INIT, FINAL))
    for name, f in js.scores.CRITERIA.items()
}
CRITERIA["magnitude"] = lambda: js.scores.magnitude(FINAL)
CRITERIA["snip"] = lambda: js.scores.snip(
    lambda p, x: jnp.sum((x @ p["dense"]["kernel"] @ p["head"]["kernel"]) ** 2)
    + jnp.sum(p["conv"]["kernel"] ** 3) + jnp.sum(jnp.tanh(p["embed"]["embedding"])),
    FINAL, jnp.ones((2, 72)),
)

SCOPES = {
    "global": dict(scope="global"),
    "layerwise": dict(scope="layerwise"),
    "erk": dict(allocation="erk"),
    "rates": None,  # per-leaf fraction of the remaining
    "block": dict(structure=js.Block(2, 1)),
}
RATES = [("head", 0.1), ("embed", 0.3), (".*", 0.2)]

# One jitted function per scope, shared by all criteria (compiled once per scope).
_JIT = {
    name: jax.jit(
        (lambda s, m: js.prune(s, m, rates=RATES)) if kw is None
        else (lambda s, m, sp, kw=kw: js.prune(s, m, sparsity=sp, **kw))
    )
    for name, kw in SCOPES.items()
}


def run(scope, scores, masks, sparsity):
    fn = _JIT[scope]
    return fn(scores, masks) if SCOPES[scope] is None else fn(scores, masks, sparsity)


def expected(scope, masks, sparsity):
    """Per-leaf (or total) kept counts from the rounding rule."""
    leaves = [np.asarray(m) for m in jax.tree.leaves(masks) if np.ndim(m)]
    kept = [int(m.sum()) for m in leaves]
    sizes = [m.size for m in leaves]
    if scope == "global":
        return sum(sizes) - select.num_pruned(sparsity, sum(sizes))
    if scope == "layerwise":
        return [n - select.num_pruned(sparsity, n) for n in sizes]
    if scope == "rates":
        rates = [0.2, 0.2, 0.3, 0.1]  # conv, dense, embed, head (first match wins)
        return [k - select.num_pruned(r, k) for k, r in zip(kept, rates, strict=True)]
    if scope == "block":
        blocks = sum(n // 2 for n in sizes)
        return 2 * (blocks - select.num_pruned(sparsity, blocks))
    # erk: exact per-leaf counts of the ERK allocation (total = the uniform budget)
    shapes = [m.shape for m in leaves]
    return [int(k) for k in select.erk_kept(shapes, sparsity)]


@pytest.fixture(scope="module")
def all_scores():
    return jax.jit(lambda: {name: f() for name, f in CRITERIA.items()})()  # one compilation


@pytest.mark.parametrize("scope", list(SCOPES))
def test_contract(scope, all_scores):
    assert js.masks.prunable_paths(MASKS) == PRUNABLE
    for name, scores in all_scores.items():
        m1 = run(scope, scores, MASKS, 0.5)
        # structure and validity
        assert jax.tree.structure(m1) == jax.tree.structure(INIT), name
        js.validate(INIT, m1)
        # exact counts
        want = expected(scope, MASKS, 0.5)
        per_leaf = [int(x.sum()) for x in jax.tree.leaves(m1) if np.ndim(x)]
        if isinstance(want, list):
            assert per_leaf == want, (name, per_leaf, want)
        else:
            assert sum(per_leaf) == want, (name, per_leaf, want)
        if scope == "erk":  # and the total is exactly the uniform budget
            total = js.count_total(MASKS)
            assert sum(per_leaf) == total - select.num_pruned(0.5, total)
        # monotone: a second round only removes entries, and never revives
        m2 = run(scope, scores, m1, 0.75)
        for a, b in zip(jax.tree.leaves(m1), jax.tree.leaves(m2), strict=True):
            assert not np.any(np.asarray(b) & ~np.asarray(a)), name
        assert int(js.count_kept(m2)) < int(js.count_kept(m1))
        # deterministic
        assert js.masks.equal(run(scope, scores, MASKS, 0.5), m1), name
        # the eager call (concrete checks) agrees with the jitted one
        if name == "large_final":
            kw = SCOPES[scope]
            eager = (js.prune(scores, MASKS, rates=RATES) if kw is None
                     else js.prune(scores, MASKS, sparsity=0.5, **kw))
            assert js.masks.equal(eager, m1), name


@pytest.mark.parametrize("scope", ["global", "erk"])  # layerwise/block share the code path
def test_contract_compiles_once_and_vmaps(scope, all_scores):
    fresh = jax.jit(lambda s, m, sp: js.prune(s, m, sparsity=sp, **SCOPES[scope]))
    scores = all_scores["large_final"]
    assert_compiles_once(fresh, ((scores, MASKS, 0.3), {}), ((scores, MASKS, 0.8), {}))
    names = ["large_final", "movement", "random"]
    pop = js.masks.stack([all_scores[n] for n in names])
    pop_masks = js.masks.stack([MASKS] * len(names))
    sps = jnp.array([0.2, 0.5, 0.9])
    out = jax.vmap(fresh)(pop, pop_masks, sps)
    for i, n in enumerate(names):
        member = jax.tree.map(lambda x, i=i: x[i], out)
        assert js.masks.equal(member, fresh(all_scores[n], MASKS, sps[i])), n
