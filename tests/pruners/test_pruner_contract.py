"""One contract over every pruner, run by the one trainer on a small LeNet and the digits.

Per pruner: the masks keep the params' structure (bool leaves, scalar True on biases), the
kept counts are exactly what the algorithm promises, the training chunk compiles once, a
vmapped population's member equals the same member trained alone, and a run killed after
its first chunk resumes bitwise (pruner state included).

"imp_level" is IMP's pruning step as a pruner: Frankle & Carbin's per-level rates (20% of the
remaining hidden weights, 10% of the output layer) applied once; the rewinding between levels
is :func:`jaxsparse.lottery.imp`'s.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxsparse as js
from jaxsparse import data, models, pruners, select, train
from jaxsparse.testing import compilations

DATA = data.digits()
FN = models.functional(models.lenet300(key=jax.random.key(0), input_shape=(8, 8, 1),
                                       hidden=(16, 8)))
DENSE = js.ones_like(FN.params)
SIZES = {"fc0/kernel": 64 * 16, "fc1/kernel": 16 * 8, "head/kernel": 8 * 10}
TOTAL = sum(SIZES.values())
ERK = pruners.random_erk(FN.params, sparsity=0.5, key=jax.random.key(4))
STEPS, EVERY = 20, 10


def kept_per_leaf(masks):
    return {row.path: row.kept for row in js.report(masks).rows}


def forward(p, x):
    return FN.apply_fn(p, FN.model_state, x, train=False, key=None)[0]


def one_shot_global(kept):
    return TOTAL - select.num_pruned(0.5, TOTAL) == sum(kept.values())


def layerwise(fraction):
    def check(kept):
        return kept == {k: n - select.num_pruned(fraction, n) for k, n in SIZES.items()}
    return check


def same_as_start(kept):
    return kept == kept_per_leaf(ERK)


def imp_counts(kept):
    rate = {"head/kernel": 0.1}
    return kept == {k: n - select.num_pruned(rate.get(k, 0.2), n) for k, n in SIZES.items()}


def nm_counts(kept):
    return kept == {k: n // 2 for k, n in SIZES.items()}


CASES = {
    "one_shot": (lambda: pruners.one_shot(step=5, sparsity=0.5), DENSE, one_shot_global),
    "imp_level": (lambda: pruners.one_shot(step=5, rates=[("head", 0.1), (".*", 0.2)]),
                  DENSE, imp_counts),
    "nm_2_4": (lambda: pruners.one_shot(step=0, structure=js.NM(2, 4)), DENSE, nm_counts),
    "gmp": (lambda: pruners.gmp(final_sparsity=0.75, begin_step=2, end_step=12, frequency=5),
            DENSE, layerwise(0.75)),
    "set": (lambda: pruners.set_(begin_step=0, end_step=15, frequency=5, drop_fraction=0.3),
            ERK, same_as_start),
    "rigl": (lambda: pruners.rigl(begin_step=0, end_step=15, frequency=5, drop_fraction=0.3),
             ERK, same_as_start),
    "static": (pruners.static, ERK, same_as_start),
    "snip": (lambda: pruners.snip(0.5), DENSE, one_shot_global),
    "synflow": (lambda: pruners.synflow(forward, (1, 8, 8, 1), 0.5, iterations=3), DENSE,
                one_shot_global),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request):
    make, masks0, counts = CASES[request.param]
    pruner = make()
    tr = train.Trainer(FN.apply_fn, js.masked(optax.adam(3e-3)), batch_size=30, pruner=pruner)
    keys = jax.random.split(jax.random.key(11), 2)
    pop = jax.vmap(lambda k: tr.init_state(FN.params, key=k, masks=masks0))(keys)
    pop_out = tr.fit(pop, DATA, num_steps=STEPS, eval_every=EVERY)
    single = tr.fit(tr.init_state(FN.params, key=keys[1], masks=masks0), DATA,
                    num_steps=STEPS, eval_every=EVERY)
    return request.param, tr, keys, masks0, counts, pop_out, single


def test_structure_and_exact_counts(case):
    name, _, _, _, counts, _, single = case
    masks = single.state.masks
    assert jax.tree.structure(masks) == jax.tree.structure(FN.params)
    for path, m in js.rules.leaves_with_paths(masks):
        assert m.dtype == jnp.bool_
        assert m.shape == (() if path.endswith("bias") else FN.params[path.split("/")[0]][
            path.split("/")[1]].shape), path
    assert counts(kept_per_leaf(masks)), (name, kept_per_leaf(masks))
    assert js.masks.nonzero_pruned(single.state.params, masks) == {}  # pruned entries exact 0
    if name in ("set", "rigl"):  # the connections moved, the counts did not
        assert not js.masks.equal(masks, ERK)
    if name == "static":
        assert js.masks.equal(masks, ERK)
    if name == "nm_2_4":  # legal along every kernel's reduction axis, exactly 2 of each 4
        assert js.is_nm(masks, 2, 4, exact=True)


def test_population_member_equals_single_run(case):
    _, _, _, _, _, pop_out, single = case
    member = jax.tree.map(lambda a: a[1], (pop_out.state.params, pop_out.state.masks))
    for a, b in zip(jax.tree.leaves(member), jax.tree.leaves((single.state.params,
                                                              single.state.masks)), strict=True):
        if a.dtype == jnp.bool_:
            assert np.array_equal(np.asarray(a), np.asarray(b))
        else:
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=1e-6)


def test_chunk_compiles_once(case):
    _, tr, keys, masks0, _, pop_out, _ = case
    # two chunks of EVERY iterations: one population program for every chunk, and a second
    # run from scratch compiles nothing (masks change on device, inside the program)
    assert len(tr.chunk(EVERY, True).compiled) == 1
    pop = jax.vmap(lambda k: tr.init_state(FN.params, key=k, masks=masks0))(keys)
    with compilations() as again:
        out = tr.fit(pop, DATA, num_steps=STEPS, eval_every=EVERY)
    assert [n for n in again if n in ("chunk", "run", "eval_fn")] == []
    assert np.array_equal(np.asarray(out.state.masks["fc0"]["kernel"]),
                          np.asarray(pop_out.state.masks["fc0"]["kernel"]))


def test_kill_and_resume_is_bitwise(case, tmp_path):
    _, tr, keys, masks0, _, _, single = case
    state = tr.init_state(FN.params, key=keys[1], masks=masks0)
    ck = str(tmp_path / "ck")
    tr.fit(state, DATA, num_steps=EVERY, eval_every=EVERY, checkpoint_dir=ck)  # "killed"
    resumed = tr.fit(state, DATA, num_steps=STEPS, eval_every=EVERY, checkpoint_dir=ck)
    for a, b in zip(jax.tree.leaves((single.state.params, single.state.masks,
                                     single.state.opt_state, single.state.pruner_state)),
                    jax.tree.leaves((resumed.state.params, resumed.state.masks,
                                     resumed.state.opt_state, resumed.state.pruner_state)),
                    strict=True):
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
