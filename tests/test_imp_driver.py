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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "experiments", "configs", "digits_lenet.py")
OVERRIDES = [
    "model_kwargs.hidden=(16, 8)", "num_steps=60", "eval_every=20", "checkpoint_every=20",
    "replicates=2", "levels=1", "branches=('reinit',)", "rates=(('head', 0.1), ('.*', 0.2))",
]


def tiny_config():
    return common.apply_overrides(common.load_config(CONFIG), OVERRIDES)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("a"))
    rows = driver.run(tiny_config(), out, show_progress=False)
    (path,) = [os.path.join(out, d) for d in os.listdir(out)]
    return out, path, rows


def read(path, name):
    with open(os.path.join(path, name)) as f:
        return f.read()


def test_table_plots_and_exact_densities(uninterrupted):
    _, path, rows = uninterrupted
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


def test_relaunch_skips_finished_levels(uninterrupted, monkeypatch):
    out, path, rows = uninterrupted
    before = read(path, "levels.csv")

    def no_training(*a, **k):
        raise AssertionError("a finished level was retrained")

    monkeypatch.setattr(driver, "_compiled", no_training)
    again = driver.run(tiny_config(), out, show_progress=False)
    assert again == rows
    assert read(path, "levels.csv") == before


def _launch(out, env, log):
    cmd = [sys.executable, "-m", "experiments.lottery", "--config", CONFIG, "--out", out,
           "--quiet"] + [a for o in OVERRIDES for a in ("--set", o)]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def test_kill_mid_level_and_resume_reproduces_table(uninterrupted, tmp_path):
    _, path_a, _ = uninterrupted
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
