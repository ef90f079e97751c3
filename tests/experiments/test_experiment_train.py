"""experiments/train.py end to end: digits accuracy, raw MNIST files, SIGKILL + resume."""

import gzip
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from experiments import common
from experiments import train as exp_train
from jaxsparse import checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(ROOT, "experiments", "configs", "train", "lenet300_digits.py")


def _run_dir(out):
    (name,) = os.listdir(out)
    return os.path.join(out, name)


def _final_params(path):
    config = common.load_config(CONFIG)
    from jaxsparse import data

    _, _, template = exp_train.build(config, data.digits())
    state, _ = checkpoint.restore(os.path.join(path, "ckpt"), target=template)
    return state


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The acceptance run: the config as shipped, uninterrupted."""
    out = str(tmp_path_factory.mktemp("ref"))
    assert exp_train.main(["--config", CONFIG, "--out", out]) == 0
    return _run_dir(out)


def test_digits_config_reaches_95_percent(reference):
    with open(os.path.join(reference, "results.json")) as f:
        res = json.load(f)
    assert res["final"]["test_accuracy"] >= 0.95
    assert res["final"]["step"] == 2000 and res["density"] == 1.0
    es = res["early_stop"]
    i = int(np.argmin(res["history"]["val_loss"]))
    assert es["step"] == res["history"]["step"][i]
    for name in ("metrics.csv", "curves.png", "config.json"):
        assert os.path.getsize(os.path.join(reference, name)) > 0
    assert sorted(os.listdir(os.path.join(reference, "ckpt"))) == ["1500", "2000"]  # keep 2


def test_sigkill_mid_training_then_resume_is_bitwise_identical(reference, tmp_path):
    out, pause = str(tmp_path / "out"), str(tmp_path / "paused")
    cmd = [sys.executable, "-m", "experiments.train", "--config", CONFIG, "--out", out,
           "--no-progress"]
    env = dict(os.environ, JAXSPARSE_PAUSE_AT_STEP="1000", JAXSPARSE_PAUSE_FILE=pause)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while not os.path.exists(pause):
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        assert time.time() < deadline, "the run never reached step 1000"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)  # the async save of step 1000 may still be in flight
    proc.wait()
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    run = _run_dir(out)
    assert not os.path.exists(os.path.join(run, "results.json"))
    resumed_from = checkpoint.latest_step(os.path.join(run, "ckpt"))
    assert resumed_from in (500, 1000)
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    with open(os.path.join(run, "timing.json")) as f:
        assert json.load(f)["resumed_from_step"] == resumed_from
    with open(os.path.join(run, "results.json")) as f, \
            open(os.path.join(reference, "results.json")) as g:
        assert json.load(f) == json.load(g)
    a, b = _final_params(run), _final_params(reference)
    leaves_a = jax.tree.leaves((a.params, a.opt_state, a.masks))
    leaves_b = jax.tree.leaves((b.params, b.opt_state, b.masks))
    for x, y in zip(leaves_a, leaves_b, strict=True):
        np.testing.assert_array_equal(x, y)
    # a relaunch of a finished run skips the work
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert "finished already" in again.stdout


def _write_idx(path, array):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_reads_raw_mnist_idx_files(tmp_path):
    rng = np.random.default_rng(0)
    d = tmp_path / "mnist"
    d.mkdir()
    _write_idx(d / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (60, 28, 28)))
    _write_idx(d / "train-labels-idx1-ubyte.gz", np.arange(60) % 10)
    _write_idx(d / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (20, 28, 28)))
    _write_idx(d / "t10k-labels-idx1-ubyte.gz", np.arange(20) % 10)
    out = str(tmp_path / "out")
    args = ["--config", CONFIG, "--dataset", "mnist", "--data-dir", str(d), "--out", out,
            "--set", "val_size=10", "--set", "num_steps=20", "--set", "eval_every=10",
            "--set", "checkpoint_every=10", "--set", "batch_size=10", "--no-progress"]
    assert exp_train.main(args) == 0
    run = _run_dir(out)
    with open(os.path.join(run, "results.json")) as f:
        res = json.load(f)
    assert res["config"]["dataset"] == "mnist"
    assert "train/val/test=50/10/20, input_shape=(28, 28, 1)" in res["dataset"]
    assert res["history"]["step"] == [0, 10, 20]
    # the hash ignores where the data lives but not what is trained
    assert os.path.basename(run).startswith("lenet300_digits-")
