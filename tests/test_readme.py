"""The README's "Use it in your Flax + optax code" example is a program: run it, check it."""

import pathlib
import re

import jax
import numpy as np

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def readme_example() -> str:
    text = README.read_text()
    section = text[text.index("## Use it in your Flax + optax code"):]
    section = section[:section.index("\n## ", 1)]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 1, "the section should hold exactly one python example"
    return blocks[0]


def test_readme_example_prunes_zeroes_trains_and_keeps_pruned_entries_zero(capsys):
    code = readme_example()
    # the whole path, in this order: prune -> zero -> masked optimizer -> train -> check
    steps = ["js.prune(", "js.apply_masks(", "js.masked(", "tx.update(", "nonzero_pruned("]
    positions = [code.index(s) for s in steps]
    assert positions == sorted(positions), dict(zip(steps, positions, strict=True))
    namespace: dict = {"__name__": "readme_example"}
    exec(compile(code, str(README), "exec"), namespace)  # noqa: S102 - the README is ours
    params, masks = namespace["params"], namespace["masks"]
    # independent of the example's own assert: every pruned entry exactly 0, 90% pruned
    pruned = kept = 0
    for w, m in zip(jax.tree.leaves(params), jax.tree.leaves(masks), strict=True):
        w, m = np.asarray(w), np.asarray(m)
        if m.ndim:
            assert np.all(w[~m] == 0.0)
            assert np.count_nonzero(w[m]) == m.sum()  # the kept ones trained (nonzero)
            pruned, kept = pruned + int((~m).sum()), kept + int(m.sum())
    assert pruned == 6660 and kept == 740  # 90% of the 7,400 kernel entries, exactly
    assert float(namespace["loss"]) < 1.0  # it learned (log(10) = 2.30 at the start)
    assert "TOTAL" in capsys.readouterr().out  # the printed report


def test_readme_pruner_and_imp_example_runs(capsys):
    text = README.read_text()
    section = text[text.index("## Pruning algorithms and the one trainer"):]
    section = section[:section.index("\n## ", 1)]
    (code,) = re.findall(r"```python\n(.*?)```", section, re.S)
    namespace: dict = {"__name__": "readme_pruners"}
    exec(compile(code, str(README), "exec"), namespace)  # noqa: S102 - the README is ours
    import jaxsparse as js

    masks0, final = namespace["masks0"], namespace["result"].state.masks
    assert int(js.count_kept(final)) == int(js.count_kept(masks0))  # RigL keeps the count
    assert not js.masks.equal(final, masks0)  # ... and moved connections
    assert js.masks.nonzero_pruned(namespace["result"].state.params, final) == {}
    rows = [(r["level"], r["branch"]) for r in namespace["results"]]
    assert rows == [(0, "ticket"), (1, "ticket"), (1, "reinit"), (2, "ticket"), (2, "reinit")]
    assert "RigL at 90%" in capsys.readouterr().out
