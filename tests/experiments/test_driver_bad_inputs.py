"""The drivers' bad-input suite: CLI values, data files, kill -9 and resume.

Every case runs a driver's ``main`` as a user would and asserts the outcome a user gets: a
user error exits with status 2 and an argparse-style ``error:`` message on stderr that names
the offending key / value / file, before any training (no run directory with a checkpoint,
no traceback); a data problem that still allows a run warns, naming the split and classes; a
run killed with SIGKILL resumes to the results of an uninterrupted run.
"""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from experiments import common, dst, lottery, nm, supermask, sweep, train

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = os.path.join(ROOT, "experiments", "configs")
LOTTERY = os.path.join(CONFIGS, "lottery", "digits_lenet.py")
NM = os.path.join(CONFIGS, "nm", "nm_digits_lenet.py")
DST = os.path.join(CONFIGS, "dst", "digits_dst.py")
SWEEP = os.path.join(CONFIGS, "sweep", "sweep_digits.py")
TRAIN = os.path.join(CONFIGS, "train", "lenet300_digits.py")
EDGE_POPUP = os.path.join(CONFIGS, "supermask", "digits_edgepopup.py")


def user_error(capsys, main, args, *needles):
    """Runs ``main(args)``; asserts exit status 2 and every needle in the error message."""
    with pytest.raises(SystemExit) as e:
        main(args)
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    assert "error:" in err and "Traceback" not in err
    for needle in needles:
        assert needle in err, f"{needle!r} not in {err!r}"
    return err


def no_checkpoint(out):
    for _, dirs, _ in os.walk(out):
        assert "ckpt" not in dirs, "something trained"


# ---------------------------------------------------------------------------------------
# CLI values: keys, types, combinations — all rejected before any training.

CLI_CASES = [
    # (id, driver main, args, needles)
    ("unknown key, with a suggestion", lottery.main, ["--set", "num_step=5"],
     ["no key 'num_step'", "did you mean ['num_steps'"]),
    ("float for an int", lottery.main, ["--set", "num_steps=1.5"],
     ["num_steps=1.5", "expected int"]),
    ("string for a float", lottery.main, ["--set", "learning_rate='fast'"],
     ["learning_rate='fast'", "expected float"]),
    ("not key=value", lottery.main, ["--set", "levels"], ["'levels' is not key=value"]),
    ("rate outside [0, 1)", lottery.main, ["--set", "rates=(('head', 1.5),)"],
     ["1.5 is not a fraction"]),
    ("unknown branch", lottery.main, ["--set", "branches=('reinit', 'bogus')"],
     ["unknown branch 'bogus'"]),
    ("unknown rewind", lottery.main, ["--set", "rewind='sometimes'"], ["rewind='sometimes'"]),
    ("checkpoints between evaluations", lottery.main, ["--set", "checkpoint_every=33"],
     ["checkpoint_every=33", "eval_every=50"]),
    ("replicates 0", lottery.main, ["--replicates", "0"], ["replicates=0"]),
    ("bad --cpu-devices", lottery.main, ["--cpu-devices", "lots"], ["--cpu-devices", "'lots'"]),
    ("missing config file", lottery.main, ["--config", "/nonexistent/cfg.py"],
     ["/nonexistent/cfg.py does not exist"]),
    ("n > m for N:M", nm.main, ["--config", NM, "--set", "n=5"], ["n=5, m=4", "0 < n < m"]),
    ("unknown N:M method", nm.main, ["--config", NM, "--set", "methods=('dense', 'magic')"],
     ["['magic']"]),
    ("unknown pruner flag", dst.main, ["--config", DST, "--pruner", "rigl", "--pruner", "snap"],
     ["--pruner 'snap'", "unknown pruner"]),
    ("unknown pruner in config", dst.main,
     ["--config", DST, "--set", "methods=('dense', 'lottery')"], ["['lottery']"]),
    ("drop fraction outside (0, 1)", dst.main, ["--config", DST, "--set", "drop_fraction=1.5"],
     ["drop_fraction=1.5"]),
    ("sparsity 1 for a pruner", dst.main, ["--config", DST, "--set", "sparsities=(0.9, 1.0)"],
     ["1.0 is not a sparsity"]),
    ("sweep sparsity outside [0, 1)", sweep.main,
     ["--config", SWEEP, "--set", "sparsity=[0.5, 1.2]"], ["sparsity: 1.2"]),
    ("sweep task index", sweep.main, ["--config", SWEEP, "--task-index", "3", "--num-tasks",
                                      "2"], ["--task-index 3"]),
    ("unknown optimizer", train.main, ["--config", TRAIN, "--set", "optimizer='adamw'"],
     ["optimizer='adamw'"]),
    ("edge-popup density above 1", supermask.main,
     ["--config", EDGE_POPUP, "--set", "density=1.5"], ["density=1.5", "[0, 1]"]),
]


@pytest.mark.parametrize("main, args, needles", [c[1:] for c in CLI_CASES],
                         ids=[c[0] for c in CLI_CASES])
def test_cli_user_errors_exit_2_naming_the_value(main, args, needles, capsys, tmp_path):
    if "--config" not in args:
        args = ["--config", LOTTERY, *args]
    user_error(capsys, main, [*args, "--out", str(tmp_path), "--quiet"], *needles)
    no_checkpoint(tmp_path)


def test_a_real_command_line_prints_usage_not_a_traceback(tmp_path):
    done = subprocess.run([sys.executable, "-m", "experiments.nm", "--config", NM, "--out",
                           str(tmp_path), "--set", "n=6", "m=4"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.startswith("usage: ") and "Traceback" not in done.stderr
    assert "error: config n=6, m=4" in done.stderr
    assert not os.listdir(tmp_path)  # rejected before the dense run, not after it


# ---------------------------------------------------------------------------------------
# Data files.


def write(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


def images(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 8, 8), dtype=np.uint8)


def _data_args(tmp_path, *flags):
    return ["--config", TRAIN, "--out", str(tmp_path / "out"), "--quiet", "--dataset", "mnist",
            "--set", "num_steps=2", "eval_every=1", "checkpoint_every=1", *flags]


def test_corrupt_data_file(tmp_path, capsys):
    bad = tmp_path / "corrupt.npz"
    bad.write_bytes(os.urandom(2048))
    user_error(capsys, train.main, _data_args(tmp_path, "--data-file", str(bad)),
               f"cannot read data file {bad}", "corrupt, truncated or not an .npz")


def test_truncated_data_file(tmp_path, capsys):
    good = write(tmp_path / "good.npz", images=images(100), labels=np.arange(100) % 10)
    cut = tmp_path / "truncated.npz"
    with open(good, "rb") as f:
        cut.write_bytes(f.read()[:3000])
    user_error(capsys, train.main, _data_args(tmp_path, "--data-file", str(cut)), str(cut))
    no_checkpoint(tmp_path)


def test_data_file_with_other_arrays(tmp_path, capsys):
    path = write(tmp_path / "keys.npz", pixels=images(10), targets=np.arange(10))
    user_error(capsys, train.main, _data_args(tmp_path, "--data-file", path), path,
               "needs arrays images/labels", "['pixels', 'targets']")


def test_data_file_with_float_labels(tmp_path, capsys):
    path = write(tmp_path / "float.npz", images=images(50), labels=np.arange(50) % 10 * 1.0)
    user_error(capsys, train.main, _data_args(tmp_path, "--data-file", path), path,
               "labels have dtype float64; expected integers")


def test_data_file_with_labels_out_of_range(tmp_path, capsys):
    labels = np.arange(100) % 10
    labels[7] = 12
    path = write(tmp_path / "range.npz", images=images(100), labels=labels)
    user_error(capsys, train.main, _data_args(tmp_path, "--data-file", path), path,
               "label 12 outside [0, 10)")


def test_data_file_images_and_labels_differ_in_length(tmp_path, capsys):
    path = write(tmp_path / "len.npz", images=images(40), labels=np.arange(39) % 10)
    user_error(capsys, train.main, _data_args(tmp_path, "--data-file", path), path,
               "40 images but labels of shape (39,)")


def test_train_file_without_test_file(tmp_path, capsys):
    path = write(tmp_path / "train.npz", images=images(40), labels=np.arange(40) % 10)
    user_error(capsys, train.main, _data_args(tmp_path, "--train-file", path),
               "train_file and test_file go together", "only train_file")


def test_missing_data_directory(tmp_path, capsys):
    user_error(capsys, train.main, _data_args(tmp_path, "--data-dir", str(tmp_path / "nope")),
               f"data directory {tmp_path / 'nope'} does not exist")


def test_a_split_missing_classes_warns_naming_split_and_classes(tmp_path):
    # Classes 7, 8, 9 never occur in the training file (a user's mistake a run survives):
    # every split is checked, the warning names the split and the missing classes.
    y_train = np.arange(210) % 7
    config = common.load_config(TRAIN)
    config.dataset = "mnist"
    config.train_file = write(tmp_path / "train.npz", images=images(210), labels=y_train)
    config.test_file = write(tmp_path / "test.npz", images=images(50, 1),
                             labels=np.arange(50) % 10)
    config.val_size = 21
    with pytest.warns(common.DataWarning) as record:
        ds = common.load_dataset(config)
    messages = [str(w.message) for w in record]
    assert len(messages) == 2  # train and val; the test split has all ten
    assert "the train split (189 examples) has no example of class(es) [7, 8, 9] of 10" \
        in messages[0]
    assert "the val split (21 examples)" in messages[1]
    assert ds.num_classes == 10


# ---------------------------------------------------------------------------------------
# kill -9 mid-run, then resume: the N:M driver (which had no checkpoints).

NM_TINY = ["model_kwargs.hidden=(16, 8)", "num_steps=60", "eval_every=20",
           "methods=('dense', 'one_shot', 'sr_ste')"]


def _nm_rows(path):
    res = common.read_json(os.path.join(path, "results.json"))
    return {k: {f: v for f, v in r.items() if f != "seconds"} for k, r in res["rows"].items()}


def test_nm_killed_mid_run_resumes_to_the_uninterrupted_result(tmp_path, capsys):
    ref_out, out = str(tmp_path / "ref"), str(tmp_path / "killed")
    assert nm.main(["--config", NM, "--out", ref_out, "--quiet", "--set", *NM_TINY]) == 0
    (ref,) = [os.path.join(ref_out, d) for d in os.listdir(ref_out)]
    pause = str(tmp_path / "paused")
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAXSPARSE_PAUSE_AT="sr_ste:40",
               JAXSPARSE_PAUSE_FILE=pause)
    proc = subprocess.Popen([sys.executable, "-m", "experiments.nm", "--config", NM, "--out",
                             out, "--quiet", "--set", *NM_TINY], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while not os.path.exists(pause):
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        assert time.time() < deadline, "the run never reached sr_ste step 40"
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)  # mid sr_ste: its step-40 checkpoint is on disk
    proc.wait()
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    (run,) = [os.path.join(out, d) for d in os.listdir(out)]
    assert os.path.basename(run) == os.path.basename(ref)  # same config, same data: same run
    assert os.path.exists(os.path.join(run, "dense", "result.json"))
    assert not os.path.exists(os.path.join(run, "sr_ste", "result.json"))
    assert "40" in os.listdir(os.path.join(run, "sr_ste", "ckpt"))
    assert nm.main(["--config", NM, "--out", out, "--quiet", "--set", *NM_TINY]) == 0
    assert _nm_rows(run) == _nm_rows(ref)  # accuracies, densities, legality: bitwise
    for method in ("dense", "sr_ste"):
        a = common.read_json(os.path.join(run, method, "result.json"))["history"]
        b = common.read_json(os.path.join(ref, method, "result.json"))["history"]
        assert a == b
    for name in ("nm.csv", "results.json", "curves.png"):
        assert os.path.getsize(os.path.join(run, name)) > 0
    assert _nm_rows(run)["sr_ste"]["nm_legal"] is True
