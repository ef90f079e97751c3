"""experiments/sweep.py end to end: a grid split over 2 tasks, merged; a killed task resumes."""

import glob
import json
import os
import shutil

import numpy as np

from experiments import sweep as script

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(ROOT, "experiments", "configs", "sweep", "sweep_digits.py")
SET = ["learning_rate=[1e-3, 3e-3]", "sparsity=[0.0, 0.5]", "seed=[0, 1]", "hidden=(16,)",
       "num_steps=40", "eval_every=20"]
# Two --set flags with several overrides each: every one of them applies (the old driver
# kept only the last flag's).
ARGS = ["--set", *SET[:3], "--set", *SET[3:], "--quiet"]


def _rows(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_two_tasks_merge_into_mean_std_table_and_a_killed_task_resumes(tmp_path, capsys):
    out = str(tmp_path)
    for index in (0, 1):
        script.main(["--config", CONFIG, "--out", out, "--task-index", str(index),
                     "--num-tasks", "2", *ARGS])
    (run,) = glob.glob(os.path.join(out, "sweep_digits-*"))
    tasks = [_rows(os.path.join(run, f"task_{i:02d}", "results.jsonl")) for i in (0, 1)]
    assert [len(t) for t in tasks] == [4, 4]  # 8 members, contiguous halves
    rows = tasks[0] + tasks[1]
    assert [(r["learning_rate"], r["sparsity"], r["seed"]) for r in rows] == [
        (lr, s, seed) for lr in (1e-3, 3e-3) for s in (0.0, 0.5) for seed in (0, 1)]
    assert all(r["steps"] == [0, 20, 40] for r in rows)  # num_steps / eval_every applied
    with open(os.path.join(run, "table.json")) as f:
        table = json.load(f)
    assert table["spread"] == "sample std (ddof=1)"
    assert len(table["rows"]) == 4 and all(r["n"] == 2 for r in table["rows"])
    for cfg in table["rows"]:  # mean and sample std over the two seeds, from the task rows
        accs = [r["test_accuracy"] for r in rows
                if (r["learning_rate"], r["sparsity"]) == (cfg["learning_rate"], cfg["sparsity"])]
        assert cfg["test_accuracy_mean"] == np.mean(accs)
        np.testing.assert_allclose(cfg["test_accuracy_sample_std"], np.std(accs, ddof=1))
        assert len(cfg["curve_mean"]) == 3  # evaluations at 0, 20, 40
    with open(os.path.join(run, "table.csv")) as f:
        head = f.readline().strip().split(",")
    assert "test_accuracy_sample_std" in head and not any(h.startswith("curve") for h in head)
    # the hidden=(16,) override reached the model: 64*16 + 16*10 prunable weights; random
    # layerwise pruning at init keeps exact counts (round(0.5 * 1024) and round(0.5 * 160))
    dense = [r for r in rows if r["sparsity"] == 0.0]
    assert all(r["density"] == 1.0 for r in dense)
    assert all(r["density"] == (512 + 80) / (1024 + 160) for r in rows if r["sparsity"] == 0.5)
    assert len({r["test_accuracy"] for r in rows}) > 1
    assert os.path.getsize(os.path.join(run, "accuracy.png")) > 0

    # Task 1 "killed" after its first checkpoint: the relaunch resumes from step 20 and
    # reproduces the results bitwise.
    task1 = os.path.join(run, "task_01")
    os.remove(os.path.join(task1, "results.jsonl"))
    assert sorted(os.listdir(os.path.join(task1, "ckpt"))) == ["20", "40"]
    shutil.rmtree(os.path.join(task1, "ckpt", "40"))
    capsys.readouterr()
    script.main(["--config", CONFIG, "--out", out, "--task-index", "1", "--num-tasks", "2",
                 *ARGS])
    log = capsys.readouterr().out
    assert "task 1: resuming from step 20" in log
    assert _rows(os.path.join(task1, "results.jsonl")) == tasks[1]
