"""experiments/supermask.py population mode: the replicates train as one sharded population."""

import csv
import os

import jax
import numpy as np
import pytest

from experiments import common
from experiments import supermask as driver

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EDGE_POPUP = os.path.join(ROOT, "experiments", "configs", "supermask", "digits_edgepopup.py")
LEARNED = os.path.join(ROOT, "experiments", "configs", "supermask", "digits_supermask.py")


def tiny_config(path, replicates):
    config = common.load_config(path)
    config.model_kwargs.hidden = (16, 8)  # the recipes leave model_kwargs empty
    common.apply_overrides(config, ["num_steps=40", "eval_every=20"])
    config.replicates = replicates
    return config


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def run_dir(out):
    (path,) = [os.path.join(out, d) for d in os.listdir(out)]
    return path


@pytest.fixture(scope="module")
def edge_popup_4(tmp_path_factory):
    # One run of 4 edge-popup replicates, recording every population program it calls.
    from jaxsparse import population, testing

    calls = []
    real = population.population_map
    out = str(tmp_path_factory.mktemp("ep4"))
    with pytest.MonkeyPatch.context() as mp, testing.compilations() as compiled:

        def spy(fn, **kw):
            f = real(fn, **kw)

            def g(*args):
                before = len(compiled)
                out = f(*args)  # and the names of what XLA compiled for this call:
                calls.append((kw["in_axes"], out, f, compiled[before:]))
                return out

            return g

        mp.setattr(population, "population_map", spy)
        results = driver.run_training(tiny_config(EDGE_POPUP, 4), out, show_progress=False)
    return results, run_dir(out), calls


def test_edge_popup_replicates_run_as_one_sharded_population(edge_popup_4):
    from jaxsparse import population

    results, path, calls = edge_popup_4
    chunks = [(out, f, names) for axes, out, f, names in calls if axes == (0, None, None, None)]
    assert len(chunks) == 2  # 40 iterations, a chunk of 20 between evaluations
    assert all(f is chunks[0][1] for _, f, _ in chunks) and len(chunks[0][1].compiled) == 1
    # One population program, compiled at the first chunk (named "chunk" when a device runs
    # several members as a vmap, "run" for the per-device program of one member per device)
    # and not again.
    first, second = chunks[0][2], chunks[1][2]
    assert sum(n in ("chunk", "run") for n in first) == 1 and second == []
    for (state, _), _, _ in chunks:
        for leaf in jax.tree.leaves((state.params, state.model_state)):
            assert leaf.shape[0] == 4 and leaf.sharding.spec[0] == population.POPULATION_AXIS
            assert len(leaf.sharding.device_set) == jax.device_count() == 4
    assert results["replicates"] == 4 and results["weights_unchanged"] is True
    test_acc = results["final"]["test_accuracy"]
    assert len(test_acc) == 4 and len({round(v, 6) for v in results["final"]["val_loss"]}) == 4
    assert results["final_mean"]["test_accuracy"] == pytest.approx(np.mean(test_acc))
    # the one spread of every driver: the sample std (ddof 1), labelled in results.json
    assert results["final_std"]["test_accuracy"] == pytest.approx(np.std(test_acc, ddof=1))
    assert results["spread"] == "sample std (ddof=1)"
    assert results["density"] == [0.5] * 4  # top-k keeps exactly k per layer
    assert np.asarray(results["history"]["val_loss"]).shape == (3, 4)  # [evaluations, R]
    rows = read_csv(os.path.join(path, "replicates.csv"))
    assert [int(r["replicate"]) for r in rows] == [0, 1, 2, 3]
    assert [float(r["final_test_accuracy"]) for r in rows] == pytest.approx(test_acc)
    for name in ("metrics.csv", "curves.png", "results.json", "export/params.npz",
                 "export/masks.npz"):
        assert os.path.getsize(os.path.join(path, name)) > 0


@pytest.fixture(scope="module")
def single(edge_popup_4):
    # The pieces of the same run, built outside the driver, and one replicate's init, jitted.
    config = tiny_config(EDGE_POPUP, 4)
    dataset = common.load_dataset(config)
    fn = common.build_model(config, dataset)
    sm = driver.build_supermask(config, fn.apply_fn)
    tx = driver.build_optimizer(config, config.num_steps)
    init = jax.jit(lambda k: driver.init_member(fn, sm, tx, k))
    return config, dataset, sm, tx, init


def test_exported_replicate_0_keeps_its_frozen_initial_weights(edge_popup_4, single):
    # Independent of the driver's own bitwise check: replicate 0's exported subnetwork is its
    # re-derived frozen initial weights (signed Kaiming constants) under its mask.
    from jaxsparse import rules

    _, path, _ = edge_popup_4
    config, _, _, _, init = single
    state0 = init(driver.replicate_keys(config.seed, 4)[0])
    w0 = dict(rules.leaves_with_paths(state0.model_state["weights"]))
    with np.load(os.path.join(path, "export", "params.npz")) as p, \
            np.load(os.path.join(path, "export", "masks.npz")) as m:
        kernels = [k for k in p.files if k.endswith("kernel")]
        assert len(kernels) == 3
        for k in kernels:
            np.testing.assert_array_equal(p[k], np.where(m[k], np.asarray(w0[k]), 0.0))


def test_replicate_does_not_depend_on_the_count_and_matches_single_training(edge_popup_4,
                                                                           single):
    # Replicate i of a population of N is the single-model run from keys that do not depend
    # on N: its keys are the same for every N, and training it inside the population (here
    # replicate 3, on the 4th device) matches training it alone with `train.fit`.
    from jaxsparse import train

    results, _, _ = edge_popup_4
    k2, k4 = (jax.random.key_data(driver.replicate_keys(0, n)) for n in (2, 4))
    np.testing.assert_array_equal(k2, k4[:2])
    assert len({tuple(np.ravel(k)) for k in np.asarray(k4).reshape(4, -1)}) == 4
    config, dataset, sm, tx, init = single
    state = init(driver.replicate_keys(config.seed, 4)[3])
    alone = train.fit(sm.apply, tx, state, dataset, num_steps=40, batch_size=config.batch_size,
                      eval_every=20)
    h = results["history"]
    np.testing.assert_allclose(alone.history["val_loss"], np.asarray(h["val_loss"])[:, 3],
                               rtol=1e-5)
    np.testing.assert_allclose(alone.history["test_accuracy"],
                               np.asarray(h["test_accuracy"])[:, 3], atol=1e-6)


def test_learned_population_reports_expected_mask_accuracy_per_replicate(tmp_path):
    results = driver.run_training(tiny_config(LEARNED, 2), str(tmp_path), show_progress=False)
    em = results["expected_mask_test_accuracy"]
    assert len(em) == 2 and all(0.0 < v <= 1.0 for v in em)
    assert results["expected_mask_test_accuracy_mean"] == pytest.approx(np.mean(em))
    assert results["weights_unchanged"] is True
    assert len(results["density"]) == 2 and all(0.2 < d < 0.8 for d in results["density"])
    assert results["density"][0] != results["density"][1]  # Bernoulli masks: per replicate
    rows = read_csv(os.path.join(run_dir(str(tmp_path)), "replicates.csv"))
    assert [float(r["expected_mask_test_accuracy"]) for r in rows] == pytest.approx(em)


def test_cli_replicates_flags(monkeypatch, capsys):
    seen = []
    monkeypatch.setattr(driver, "run_training", lambda config, out, **kw: seen.append(config))
    driver.main(["--config", EDGE_POPUP, "--replicates", "3", "--cpu-devices", "4"])
    driver.main(["--config", EDGE_POPUP, "--set", "replicates=2"])
    driver.main(["--config", EDGE_POPUP, "--replicates", "1"])
    driver.main(["--config", EDGE_POPUP])
    assert [c.get("replicates") for c in seen] == [3, 2, None, None]
    # a single run keeps its run directory: --replicates 1 adds nothing to the hash
    assert common.config_hash(seen[2]) == common.config_hash(seen[3])
    # a user error: argparse-style exit 2 naming the problem, before anything runs
    with pytest.raises(SystemExit) as e:
        driver.main(["--config", EDGE_POPUP, "--replicates", "2", "--mode", "at_init"])
    assert e.value.code == 2
    assert "replicates > 1" in capsys.readouterr().err
