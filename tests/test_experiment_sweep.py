"""experiments/sweep.py end to end: a grid split over 2 tasks, merged; a killed task resumes."""

import glob
import json
import os

import numpy as np

from experiments import sweep as script

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "experiments", "configs", "sweep_digits.py")
SET = ["learning_rate=[1e-3, 3e-3]", "sparsity=[0.0, 0.5]", "seed=[0, 1]", "hidden=(16,)",
       "num_steps=40", "eval_every=20"]


def _rows(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_two_tasks_merge_into_mean_std_table_and_a_killed_task_resumes(tmp_path, capsys):
    out = str(tmp_path)
    for index in (0, 1):
        script.main(["--config", CONFIG, "--out", out, "--task-index", str(index),
                     "--num-tasks", "2", "--set", *SET])
    (run,) = glob.glob(os.path.join(out, "sweep_digits-*"))
    tasks = [_rows(os.path.join(run, f"task_{i:02d}", "results.jsonl")) for i in (0, 1)]
    assert [len(t) for t in tasks] == [4, 4]  # 8 members, contiguous halves
    rows = tasks[0] + tasks[1]
    assert [(r["learning_rate"], r["sparsity"], r["seed"]) for r in rows] == [
        (lr, s, seed) for lr in (1e-3, 3e-3) for s in (0.0, 0.5) for seed in (0, 1)]
    with open(os.path.join(run, "table.json")) as f:
        table = json.load(f)
    assert len(table) == 4 and all(r["n"] == 2 for r in table)
    for cfg in table:  # mean and sample std over the two seeds, from the task rows
        accs = [r["test_accuracy"] for r in rows
                if (r["learning_rate"], r["sparsity"]) == (cfg["learning_rate"], cfg["sparsity"])]
        assert cfg["test_accuracy_mean"] == np.mean(accs)
        np.testing.assert_allclose(cfg["test_accuracy_std"], np.std(accs, ddof=1))
        assert len(cfg["curve_mean"]) == 3  # evaluations at 0, 20, 40
    dense = [r for r in rows if r["sparsity"] == 0.0]
    assert all(r["density"] == 1.0 for r in dense)
    assert all(abs(r["density"] - 0.5) < 0.1 for r in rows if r["sparsity"] == 0.5)
    assert len({r["test_accuracy"] for r in rows}) > 1
    assert os.path.getsize(os.path.join(run, "accuracy.png")) > 0

    # Task 1 "killed" after its first segment: the relaunch loads segment 0 and recomputes
    # the rest, with the same results.
    task1 = os.path.join(run, "task_01")
    os.remove(os.path.join(task1, "results.jsonl"))
    os.remove(os.path.join(task1, "seg_001.npz"))
    capsys.readouterr()
    script.main(["--config", CONFIG, "--out", out, "--task-index", "1", "--num-tasks", "2",
                 "--set", *SET])
    log = capsys.readouterr().out
    assert "step 20 (resumed)" in log and "step 40 (resumed)" not in log
    assert _rows(os.path.join(task1, "results.jsonl")) == tasks[1]
