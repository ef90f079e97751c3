"""Job arrays (task shares), resumable pieces of work, merged results tables."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsparse import population


def test_task_slice_covers_grid_once():
    g = population.grid(lr=[1, 2, 3], seed=[0, 1, 2, 3, 4])
    parts = [population.task_slice(g, i, 4) for i in range(4)]
    assert [len(p) for p in parts] == [3, 4, 4, 4]
    assert sum(parts, []) == g
    with pytest.raises(ValueError, match="task_index"):
        population.task_slice(g, 4, 4)


def test_init_distributed_single_process_is_a_no_op(monkeypatch):
    for var in ("JAX_COORDINATOR_ADDRESS", "SLURM_NTASKS", "SLURM_NPROCS"):
        monkeypatch.delenv(var, raising=False)
    assert population.init_distributed() == (0, 1)


def test_merge_results_mean_std(tmp_path):
    rows = [dict(c, acc=0.5 + 0.1 * c["seed"] + c["lr"])
            for c in population.grid(lr=[0, 1], seed=[0, 1, 2])]
    for i in range(2):
        population.write_results(tmp_path / f"task{i}", population.task_slice(rows, i, 2))
    assert len(population.read_results([tmp_path / "task0", tmp_path / "task1"])) == 6
    table = population.merge_results([tmp_path / "task0", tmp_path / "task1"], metrics=["acc"])
    assert [(r["lr"], r["n"]) for r in table] == [(0, 3), (1, 3)]
    assert table[1]["acc_mean"] == pytest.approx(1.6)
    assert table[0]["acc_std"] == pytest.approx(0.1)  # sample std of 0.5, 0.6, 0.7
    text = population.format_table(table, ["acc"])
    assert "0.6000 ± 0.1000" in text and "1.6000 ± 0.1000" in text
    with pytest.raises(FileNotFoundError):
        population.read_results([tmp_path / "missing"])


def test_resumable_computes_once_and_keeps_keys(tmp_path):
    calls = []

    def work():
        calls.append(1)
        return {"x": jnp.arange(3.0), "key": population.member_keys([1, 2])}

    like = jax.eval_shape(work)
    calls.clear()
    first, loaded = population.resumable(tmp_path / "c.npz", work, like)
    again, loaded2 = population.resumable(tmp_path / "c.npz", work, like)
    assert (loaded, loaded2, len(calls)) == (False, True, 1)
    np.testing.assert_array_equal(again["x"], np.arange(3.0))
    np.testing.assert_array_equal(jax.random.key_data(again["key"]),
                                  jax.random.key_data(first["key"]))
    # without `like` the work is always recomputed (nothing to load into)
    population.resumable(tmp_path / "c.npz", work)
    assert len(calls) == 2
