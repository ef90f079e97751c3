"""experiments/lottery.py: a tiny IMP run, kill-and-resume mid-level, relaunch skips levels."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from experiments import common
from experiments import lottery as driver

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(ROOT, "experiments", "configs", "lottery", "digits_lenet.py")
OVERRIDES = [
    "model_kwargs.hidden=(16, 8)", "num_steps=60", "eval_every=20", "checkpoint_every=20",
    "replicates=2", "levels=1", "branches=('reinit',)", "rates=(('head', 0.1), ('.*', 0.2))",
]


def tiny_config():
    return common.apply_overrides(common.load_config(CONFIG), OVERRIDES)


DRIVER = driver



def read(path, name):
    with open(os.path.join(path, name)) as f:
        return f.read()


def test_table_plots_and_exact_densities(finished_run):
    _, path, rows = finished_run
    assert [(r["level"], r["branch"]) for r in rows] == [(0, "ticket"), (1, "ticket"),
                                                          (1, "reinit")]
    # 64*16 and 16*8 hidden kernels lose 20%, the 8*10 head 10% (the rounding rule:
    # round(0.2 * 1024) = 205, round(0.2 * 128) = 26, 0.1 * 80 = 8)
    fc0, fc1, head = 1024 - 205, 128 - 26, 80 - 8
    last = rows[1]
    assert last["density[fc0/kernel]"] == fc0 / (64 * 16)
    assert last["density[fc1/kernel]"] == fc1 / (16 * 8)
    assert last["density[head/kernel]"] == head / 80
    assert rows[2]["percent_remaining"] == last["percent_remaining"]  # same mask, reinit
    for r in rows:
        assert 0 <= r["early_stop_step_mean"] <= 60
        assert 0.0 < r["final_test_accuracy_mean"] <= 1.0
    for name in ("levels.csv", "replicates.csv", "accuracy.png", "early_stop.png"):
        assert os.path.getsize(os.path.join(path, name)) > 0
    assert len(read(path, "replicates.csv").strip().splitlines()) == 1 + 3 * 2
    # the exported ticket loads and matches the level's density
    from jaxsparse import lottery
    from jaxsparse import masks as masks_lib

    params, masks = lottery.load_ticket(os.path.join(path, "level_01", "ticket", "export"))
    assert float(masks_lib.density(masks)) == pytest.approx(last["percent_remaining"] / 100)
    assert np.all(np.asarray(params["fc0"]["kernel"])[~np.asarray(masks["fc0"]["kernel"])] == 0)


def test_relaunch_skips_finished_levels(finished_run, monkeypatch):
    out, path, rows = finished_run
    before = read(path, "levels.csv")

    def no_training(*a, **k):
        raise AssertionError("a finished level was retrained")

    from jaxsparse import train

    monkeypatch.setattr(train.Trainer, "chunk", no_training)
    again = driver.run(tiny_config(), out, show_progress=False)
    assert again == rows
    assert read(path, "levels.csv") == before


def _launch(out, env, log):
    cmd = [sys.executable, "-m", "experiments.lottery", "--config", CONFIG, "--out", out,
           "--quiet"] + [a for o in OVERRIDES for a in ("--set", o)]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def test_kill_mid_level_and_resume_reproduces_table(finished_run, tmp_path):
    _, path_a, _ = finished_run
    out = str(tmp_path / "b")
    pause_file = str(tmp_path / "paused")
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAXSPARSE_LOTTERY_PAUSE="1:ticket:40",
               JAXSPARSE_PAUSE_FILE=pause_file)
    log_path = tmp_path / "log.txt"
    with open(log_path, "w") as log:
        proc = _launch(out, env, log)
        deadline = time.time() + 240
        while not os.path.exists(pause_file):
            if proc.poll() is not None:
                raise AssertionError(log_path.read_text())
            if time.time() > deadline:
                proc.kill()
                proc.wait()
                raise AssertionError("the run never reached the pause point")
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)  # mid-level 1: iteration 40 of 60 is checkpointed
        proc.wait()
    (path_b,) = [os.path.join(out, d) for d in os.listdir(out)]
    assert not os.path.exists(os.path.join(path_b, "level_01", "ticket", "result.json"))
    assert os.path.exists(os.path.join(path_b, "level_00", "ticket", "result.json"))
    # resume (in-process, no pause)
    driver.run(tiny_config(), out, show_progress=False)
    assert read(path_b, "levels.csv") == read(path_a, "levels.csv")
    assert read(path_b, "replicates.csv") == read(path_a, "replicates.csv")


def test_replicates_8_run_as_one_sharded_population(finished_run, tmp_path, monkeypatch):
    # `--replicates 8`: every training chunk is ONE compiled population program whose state
    # is laid out over the 4 devices' population axis, compiled once; and each replicate
    # trains exactly as it does in a population of 2 (its keys do not depend on the count).
    import json

    import jax

    from jaxsparse import population, testing

    calls = []
    real = population.population_map

    def spy(fn, **kw):
        f = real(fn, **kw)

        def g(*args):
            out = f(*args)
            calls.append((kw["in_axes"], out, f))
            return out

        return g

    monkeypatch.setattr(population, "population_map", spy)
    config = common.apply_overrides(tiny_config(), ["replicates=8", "levels=0"])
    with testing.compilations() as compiled:
        driver.run(config, str(tmp_path), show_progress=False)
    chunks = [(out, f) for axes, out, f in calls if axes == (0, None, None, None)]
    assert len(chunks) == 3  # 60 iterations, a chunk of 20 between evaluations
    assert len(chunks[0][1].compiled) == 1  # the same population program every time ...
    assert all(f is chunks[0][1] for _, f in chunks)
    assert compiled.count("chunk") == 1 and compiled.count("eval_fn") == 1  # ... compiled once
    for (state, _), _ in chunks:
        leaf = jax.tree.leaves(state.params)[0]
        assert leaf.shape[0] == 8 and leaf.sharding.spec[0] == population.POPULATION_AXIS
        assert len(leaf.sharding.device_set) == jax.device_count() == 4

    (path8,) = [os.path.join(tmp_path, d) for d in os.listdir(tmp_path)]
    _, path2, _ = finished_run
    res8, res2 = (json.loads(read(p, os.path.join("level_00", "ticket", "result.json")))
                  for p in (path8, path2))
    val8 = np.asarray(res8["history"]["val_loss"])  # [evaluations, replicates]
    val2 = np.asarray(res2["history"]["val_loss"])
    assert val8.shape == (4, 8) and val2.shape == (4, 2)
    np.testing.assert_allclose(val8[:, :2], val2, rtol=1e-5)
    assert len({round(v, 6) for v in val8[-1]}) == 8  # eight different replicates


def test_cpu_devices_auto_avoids_padding(monkeypatch):
    from jaxsparse import population

    monkeypatch.setattr(population, "cpu_cores", lambda: 4)
    monkeypatch.setattr(population, "use_cpu_devices", lambda n: n)
    # the most devices (<= 4 cores) that pad the population by at most 1/8
    assert [common.cpu_devices("auto", r) for r in (1, 2, 3, 4, 5, 6, 8, 9, 12, 27)] == [
        1, 2, 3, 4, 1, 3, 4, 3, 4, 4]
    assert common.cpu_devices("2", 3) == 2  # an explicit count is taken as given
