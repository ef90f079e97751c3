"""jaxsparse.lottery: exact IMP counts, bitwise rewinding, mask-1/mask-0 actions, controls."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxsparse
from jaxsparse import lottery, scores
from jaxsparse import masks as masks_lib
from jaxsparse.testing import assert_compiles_once

RATES = [("head", 0.1), (".*", 0.2)]
PLAN = lottery.Plan(rates=RATES)


def make_params(key, scale=1.0):
    k = jax.random.split(key, 4)
    return {
        "conv0": {"kernel": scale * jax.random.normal(k[0], (3, 3, 2, 4)), "bias": jnp.zeros(4)},
        "fc0": {"kernel": scale * jax.random.normal(k[1], (36, 20)), "bias": jnp.zeros(20)},
        "norm": {"scale": jnp.ones(20)},
        "head": {"kernel": scale * jax.random.normal(k[2], (20, 7)), "bias": jnp.zeros(7)},
    }


@pytest.fixture(scope="module")
def init():
    return make_params(jax.random.key(0))


def expected_pruned(fraction: float, n: int) -> int:
    """The documented rounding rule, written independently of jaxsparse.select."""
    q = int(np.rint(np.float64(np.float32(fraction)) * 2**24))  # round half even on the grid
    return (q * n + 2**23) // 2**24


def bits(x):
    return np.asarray(x).view(np.uint32)


def prunable_items(tree, masks):
    pl = jax.tree_util.tree_leaves_with_path(tree)
    ml = jax.tree_util.tree_leaves(masks)
    return [(jax.tree_util.keystr(kp), x, m) for (kp, x), m in zip(pl, ml, strict=True)
            if masks_lib.is_prunable(m)]


# ---------------------------------------------------------------------------------------
# IMP exactness


def test_levels_keep_exact_counts_and_rewind_bitwise(init):
    masks = masks_lib.ones_like(init)
    expected = {p: np.size(x) for p, x, _ in prunable_items(init, masks)}
    levels = 6
    for level in range(1, levels + 1):
        # A different "trained" tree each level: scores must not be tied to the init.
        final = make_params(jax.random.key(100 + level), scale=0.5)
        old = masks
        masks, start = lottery.prune_and_rewind(final, masks, init, plan=PLAN)
        for path, _, m in prunable_items(init, masks):
            rate = 0.1 if "head" in path else 0.2
            expected[path] -= expected_pruned(rate, expected[path])
            assert int(np.sum(m)) == expected[path], (level, path)
        # never revived: new masks are a subset of the old ones
        for (_, _, m), (_, _, mo) in zip(prunable_items(init, masks),
                                         prunable_items(init, old), strict=True):
            assert not np.any(np.asarray(m) & ~np.asarray(mo))
        # kept = init bitwise, pruned = +0.0 bitwise
        for (path, s, m), (_, x0, _) in zip(prunable_items(start, masks),
                                            prunable_items(init, masks), strict=True):
            m = np.asarray(m)
            np.testing.assert_array_equal(bits(s)[m], bits(x0)[m], err_msg=path)
            assert np.all(bits(s)[~m] == 0), path
        # non-prunable leaves rewound bitwise
        np.testing.assert_array_equal(bits(start["norm"]["scale"]), bits(init["norm"]["scale"]))
    # the counts follow 0.8^L / 0.9^L up to the per-level rounding
    n_fc0 = int(np.sum(masks["fc0"]["kernel"]))
    assert abs(n_fc0 - 36 * 20 * 0.8**levels) <= levels
    n_head = int(np.sum(masks["head"]["kernel"]))
    assert abs(n_head - 20 * 7 * 0.9**levels) <= levels


def test_magnitude_keeps_the_largest_trained_weights(init):
    final = make_params(jax.random.key(5))
    masks, _ = lottery.prune_and_rewind(final, masks_lib.ones_like(init), init, plan=PLAN)
    w, m = np.abs(np.asarray(final["fc0"]["kernel"])), np.asarray(masks["fc0"]["kernel"])
    assert w[m].min() >= w[~m].max()


def test_global_rate_counts(init):
    plan = lottery.Plan(scope="global", rate=0.2)
    masks = masks_lib.ones_like(init)
    kept = masks_lib.count_total(masks)
    for level in range(4):
        final = make_params(jax.random.key(200 + level))
        masks, start = lottery.prune_and_rewind(final, masks, init, plan=plan)
        kept -= expected_pruned(0.2, kept)
        assert int(masks_lib.count_kept(masks)) == kept
        for _, s, m in prunable_items(start, masks):
            assert np.all(bits(s)[~np.asarray(m)] == 0)


def test_trained_weights_mode_keeps_final(init):
    """Learning-rate rewinding / fine-tuning: next weights = trained weights, masked."""
    final = make_params(jax.random.key(9))
    plan = lottery.Plan(rates=RATES, weights="trained")
    masks, start = lottery.prune_and_rewind(final, masks_lib.ones_like(init), init, plan=plan)
    for (_, s, m), (_, f, _) in zip(prunable_items(start, masks), prunable_items(final, masks),
                                    strict=True):
        m = np.asarray(m)
        np.testing.assert_array_equal(bits(s)[m], bits(f)[m])
        assert np.all(bits(s)[~m] == 0)


def test_step_compiles_once_and_vmaps_over_replicates(init):
    R = 3
    keys = jax.random.split(jax.random.key(1), R)
    inits = jax.vmap(make_params)(keys)
    finals = jax.vmap(lambda k: make_params(k, 0.5))(jax.random.split(jax.random.key(2), R))
    masks = masks_lib.stack([masks_lib.ones_like(init)] * R)
    plan = lottery.Plan(rates=RATES, mask1="reshuffle")
    step = jax.jit(jax.vmap(functools.partial(lottery.prune_and_rewind, plan=plan)))
    assert_compiles_once(step, ((finals, masks, inits), dict(key=keys[::-1])),
                         ((inits, masks, finals), dict(key=keys)))
    m1, s1 = step(finals, masks, inits, key=keys)
    # the unjitted step compiles once too (plan static, masks/params traced)
    single = (_member(finals, 0), _member(masks, 0), _member(inits, 0))
    assert_compiles_once(lottery.prune_and_rewind, (single, dict(plan=plan, key=keys[0])),
                         ((_member(finals, 1), _member(m1, 1), _member(inits, 1)),
                          dict(plan=plan, key=keys[1])))
    # each population member equals the unbatched step
    for r in range(R):
        mr, sr = lottery.prune_and_rewind(_member(finals, r), _member(masks, r),
                                          _member(inits, r), plan=plan, key=keys[r])
        assert masks_lib.equal(mr, _member(m1, r))
        for a, b in zip(jax.tree.leaves(sr), jax.tree.leaves(_member(s1, r)), strict=True):
            np.testing.assert_array_equal(bits(a), bits(b))


def _member(tree, r):
    return jax.tree.map(lambda x: x[r], tree)


# ---------------------------------------------------------------------------------------
# Mask-1 / mask-0 actions, against references


@pytest.fixture(scope="module")
def ticket(init):
    final = make_params(jax.random.key(3))
    masks = masks_lib.ones_like(init)
    for _ in range(3):
        masks, _ = lottery.prune_and_rewind(final, masks, init, plan=PLAN)
    return masks


@pytest.mark.parametrize("mask0", lottery.MASK0_ACTIONS)
@pytest.mark.parametrize("action", lottery.MASK1_ACTIONS)
def test_actions_against_reference(init, ticket, action, mask0):
    key = jax.random.key(11)
    draw = make_params(jax.random.key(12))
    init_fn = lambda k: draw  # noqa: E731 - a fixed "fresh draw" to compare against
    out = lottery.rewind(init, ticket, action=action, mask0=mask0, key=key, init_fn=init_fn,
                         std=0.25)
    for (path, o, m), (_, x, _), (_, d, _) in zip(prunable_items(out, ticket),
                                                  prunable_items(init, ticket),
                                                  prunable_items(draw, ticket), strict=True):
        o, x, d, m = map(np.asarray, (o, x, d, m))
        kept, sign = o[m], np.where(x[m] < 0, -1.0, 1.0)
        if action == "rewind":
            np.testing.assert_array_equal(bits(kept), bits(x[m]))
        elif action == "reinit":
            np.testing.assert_array_equal(kept, d[m])
        elif action == "signed_reinit":
            np.testing.assert_array_equal(kept, sign * np.abs(d[m]))
        elif action == "reshuffle":
            np.testing.assert_array_equal(np.sort(kept), np.sort(x[m]))
            assert not np.array_equal(kept, x[m]), path  # actually moved
        elif action == "signed_reshuffle":
            np.testing.assert_array_equal(np.sign(kept), sign)
            np.testing.assert_array_equal(np.sort(np.abs(kept)), np.sort(np.abs(x[m])))
        else:  # signed_constant
            np.testing.assert_array_equal(kept, (sign * 0.25).astype(np.float32))
        if mask0 == "zero":
            assert np.all(bits(o[~m]) == 0), path
        else:
            np.testing.assert_array_equal(bits(o[~m]), bits(x[~m]))
    for name in ("bias",):
        np.testing.assert_array_equal(out["fc0"][name], init["fc0"][name])


def test_reinit_without_init_fn_uses_leaf_std(init, ticket):
    big = {"w": 0.3 * jax.random.normal(jax.random.key(0), (200, 100))}
    m = {"w": jax.random.uniform(jax.random.key(1), (200, 100)) < 0.5}
    out = lottery.rewind(big, m, action="reinit", key=jax.random.key(2))
    kept = np.asarray(out["w"])[np.asarray(m["w"])]
    assert abs(kept.std() - 0.3) < 0.02  # drawn with the leaf's empirical std
    assert not np.any(kept == np.asarray(big["w"])[np.asarray(m["w"])])
    sc = lottery.rewind(big, m, action="signed_constant")
    expected_sigma = np.float32(np.std(np.asarray(big["w"])))
    np.testing.assert_allclose(np.abs(np.asarray(sc["w"])[np.asarray(m["w"])]), expected_sigma,
                               rtol=1e-6)
    # rules for std: first match wins
    rs = lottery.rewind(big, m, action="signed_constant", std=[("w", 0.5)])
    assert set(np.unique(np.abs(np.asarray(rs["w"])))) == {0.0, 0.5}


def test_random_actions_need_a_key_and_names_are_checked(init, ticket):
    with pytest.raises(ValueError, match="key"):
        lottery.rewind(init, ticket, action="reshuffle")
    with pytest.raises(ValueError, match="mask-1"):
        lottery.rewind(init, ticket, action="shuffle")
    with pytest.raises(ValueError, match="mask-0"):
        lottery.rewind(init, ticket, mask0="frozn")
    with pytest.raises(ValueError, match="fraction"):
        lottery.Plan(rates=[(".*", 1.2)])
    with pytest.raises(ValueError, match="criterion"):
        lottery.Plan(rates=RATES, criterion="largest")


# ---------------------------------------------------------------------------------------
# Controls


def test_random_masks_like_keeps_per_leaf_counts(ticket):
    keys = jax.random.split(jax.random.key(4), 3)
    pop = jax.vmap(lambda k: jaxsparse.select.random_masks_like(ticket, key=k))(keys)
    for r in range(3):
        rm = _member(pop, r)
        for (path, _, a), (_, _, b) in zip(prunable_items(rm, rm), prunable_items(ticket, ticket),
                                           strict=True):
            assert int(np.sum(a)) == int(np.sum(b)), path
    a, b = (np.asarray(pop["fc0"]["kernel"][i]) for i in (0, 1))
    assert not np.array_equal(a, b)
    assert not np.array_equal(a, np.asarray(ticket["fc0"]["kernel"]))


def test_branches_share_one_function(init, ticket):
    final = make_params(jax.random.key(3))
    prev_masks, key = masks_lib.ones_like(init), jax.random.key(7)
    m, p = lottery.branch_start(final, prev_masks, init, ticket, branch=lottery.reinit_control(),
                                plan=PLAN, key=key)
    assert masks_lib.equal(m, ticket)
    assert not np.array_equal(p["fc0"]["kernel"], lottery.rewind(init, ticket)["fc0"]["kernel"])
    m, p = lottery.branch_start(final, prev_masks, init, ticket,
                                branch=lottery.random_pruning_control(), plan=PLAN, key=key)
    assert masks_lib.report(m).as_dicts()[1]["kept"] == masks_lib.report(ticket).as_dicts()[1][
        "kept"]
    for _, x, mm in prunable_items(p, m):
        assert np.all(bits(x)[~np.asarray(mm)] == 0)
    crit = lottery.criterion_branch("magnitude_increase")
    m, _ = lottery.branch_start(final, prev_masks, init, ticket, branch=crit, plan=PLAN, key=key)
    expected = jaxsparse.prune(scores.magnitude_increase(init, final), prev_masks, rates=RATES,
                               scope="layerwise")
    assert masks_lib.equal(m, expected)


# ---------------------------------------------------------------------------------------
# Frozen mask-0 training and export


@pytest.mark.parametrize("tx", [optax.adam(1e-2), optax.adamw(1e-2, weight_decay=0.1)])
def test_trainable_keeps_frozen_weights_constant(init, ticket, tx):
    from jaxsparse import train

    start = lottery.rewind(init, ticket, mask0="frozen")
    full = jax.tree.map(lambda p: jnp.ones(p.shape, bool), init)

    def apply_fn(params, ms, x, *, train, key):
        h = jnp.mean(x) * params["fc0"]["kernel"].sum(0) + params["fc0"]["bias"]
        return jnp.broadcast_to(h[:7] @ params["head"]["kernel"][:7], (x.shape[0], 7)), ms

    state = train.init_state(start, tx, key=jax.random.key(0), masks=full, trainable=ticket)
    step = jax.jit(train.make_step(apply_fn, tx))
    x, y = jnp.ones((4, 2)), jnp.arange(4) % 7
    for _ in range(3):
        state, _ = step(state, (x, y))
    for (path, s, m), (_, x0, _) in zip(prunable_items(state.params, ticket),
                                        prunable_items(start, ticket), strict=True):
        m = np.asarray(m)
        np.testing.assert_array_equal(bits(s)[~m], bits(x0)[~m], err_msg=path)
        if "fc0" in path:
            assert not np.array_equal(np.asarray(s)[m], np.asarray(x0)[m])


def test_export_and_load_ticket_into_flax_model(tmp_path):
    from flax import nnx

    from jaxsparse import models

    model = models.lenet300(key=jax.random.key(0), input_shape=(4, 4, 1), hidden=(6, 5))
    fn = models.functional(model)
    masks = masks_lib.ones_like(fn.params)
    final = jax.tree.map(lambda p: p + 1.0, fn.params)
    masks, start = lottery.prune_and_rewind(final, masks, fn.params, plan=PLAN)
    lottery.export_ticket(tmp_path / "t", start, masks, metadata={"level": 1})
    params, loaded_masks = lottery.load_ticket(tmp_path / "t", like=fn.params)
    assert masks_lib.equal(loaded_masks, masks)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(start), strict=True):
        np.testing.assert_array_equal(bits(a), bits(b))
    # into the NNX model
    fresh = models.lenet300(key=jax.random.key(5), input_shape=(4, 4, 1), hidden=(6, 5))
    state = nnx.state(fresh, nnx.Param)
    nnx.replace_by_pure_dict(state, params)
    nnx.update(fresh, state)
    np.testing.assert_array_equal(np.asarray(fresh.fc0.kernel[...]), np.asarray(start["fc0"][
        "kernel"]))
    import json

    rep = json.loads((tmp_path / "t" / "density.json").read_text())
    assert rep["kept"] == int(masks_lib.count_kept(masks)) and rep["metadata"]["level"] == 1
    with pytest.raises(ValueError, match="shape"):
        bad = models.functional(models.lenet300(key=jax.random.key(0), input_shape=(4, 4, 1),
                                                hidden=(7, 5))).params
        lottery.load_ticket(tmp_path / "t", like=bad)
