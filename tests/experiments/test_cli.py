"""experiments/cli.py and the data / config / table plumbing of experiments/common.py.

No training here (one tiny ``experiments.train`` run at the end): typed ``--set``,
repeated ``--set``, stratified splits against a NumPy reference, separate train / test files,
the data's content hash in the run identity, the one spread definition, plot ticks and zoom.
"""

import ast
import json
import os
import pathlib
import warnings

import ml_collections
import numpy as np
import pytest

from experiments import cli, common, plots

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LENET_DIGITS = os.path.join(ROOT, "experiments", "configs", "train", "lenet300_digits.py")


def write_npz(path, n=120, classes=10, shape=(8, 8), seed=0, sort=False, labels=None):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes if labels is None else np.asarray(labels)
    if sort:
        y = np.sort(y)
    x = rng.integers(0, 256, (len(y), *shape), dtype=np.uint8)
    np.savez(path, images=x, labels=y.astype(np.uint8))
    return str(path)


def test_repeated_set_flags_all_apply_in_order():
    p = cli.parser("x")
    args = p.parse_args(["--config", "c.py", "--set", "a=1", "b=2", "--set", "a=3"])
    assert args.set == ["a=1", "b=2", "a=3"]
    config = ml_collections.ConfigDict({"a": 0, "b": 0})
    common.apply_overrides(config, args.set)
    assert (config.a, config.b) == (3, 2)  # every override, the last one of a key wins
    assert p.parse_args(["--config", "c", "--no-progress"]).quiet  # one progress option


def test_set_values_are_type_checked_against_the_config():
    c = ml_collections.ConfigDict({"lr": 0.1, "steps": 10, "flag": False, "name": "x",
                                   "rates": (("a", 0.1),), "grid": [1, 2]})
    c.data_dir = ml_collections.FieldReference(None, field_type=str)
    common.apply_overrides(c, ["lr=1", "steps=20", "flag=True", "name=123", "rates=[['b', 0.2]]",
                               "grid=(3,)", "data_dir=/tmp/x"])
    assert c.lr == 1.0 and isinstance(c.lr, float)  # int -> float field: converted
    assert c.steps == 20 and c.flag is True
    assert c.name == "123"  # a str field keeps the text
    assert c.rates == (["b", 0.2],) and c.grid == [3]  # list <-> tuple, the old kind kept
    assert c.data_dir == "/tmp/x"
    for bad, needle in (("steps=1.5", "steps=1.5: expected int"),
                        ("lr='fast'", "lr='fast': expected float"),
                        ("flag=1", "flag=1: expected bool"),
                        ("rates=0.1", "rates=0.1: expected tuple"),
                        ("lr=None", "lr=None")):
        with pytest.raises(common.ConfigError, match=needle):
            common.apply_overrides(c, [bad])
    with pytest.raises(common.UnknownKeyError, match=r"no key 'stpes'; did you mean \['steps'"):
        common.apply_overrides(c, ["stpes=3"])
    with pytest.raises(KeyError):  # also a KeyError, as before
        common.apply_overrides(c, ["nope=3"])
    common.apply_overrides(c, ["val_size=50"])  # an optional key every driver understands
    assert c.val_size == 50
    with pytest.raises(common.ConfigError, match="val_size='many': expected int"):
        common.apply_overrides(ml_collections.ConfigDict({"a": 1}), ["val_size='many'"])


def test_stratified_split_matches_a_numpy_reference_of_the_quota_rule():
    y = np.repeat(np.arange(5), [50, 30, 11, 7, 2])  # 100 examples, sorted by label
    rest, val = common.stratified_split(y, 20, seed=3)
    assert len(val) == 20 and len(rest) == 80
    assert sorted(np.concatenate([rest, val]).tolist()) == list(range(100))  # a partition
    # reference: floor(20 * n_c / 100) = [10, 6, 2, 1, 0] (19), the 1 left goes to the
    # largest remainder: class 3 (0.4) over class 2 (0.2) and class 4 (0.4 too: tie -> lower id)
    np.testing.assert_array_equal(np.bincount(y[val], minlength=5), [10, 6, 2, 2, 0])
    assert not np.all(np.diff(val) > 0) and not np.all(np.diff(rest) > 0)  # shuffled
    again, val2 = common.stratified_split(y, 20, seed=3)
    np.testing.assert_array_equal(val, val2)  # deterministic in the seed
    assert set(common.stratified_split(y, 20, seed=4)[1]) != set(val)
    with pytest.raises(common.DataError, match="cannot draw 100 examples from 100"):
        common.stratified_split(y, 100, seed=0)


def test_separate_train_and_test_files_get_a_stratified_validation_split(tmp_path):
    # The case: a training file sorted by label. The first N rows would be class 0
    # only; the stratified draw gives every split every class.
    config = ml_collections.ConfigDict({"dataset": "mnist", "val_size": 20})
    config.train_file = write_npz(tmp_path / "train.npz", n=200, sort=True)
    config.test_file = write_npz(tmp_path / "test.npz", n=50, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DataWarning: every split has every class
        ds = common.load_dataset(config)
    assert (len(ds.train.y), len(ds.val.y), len(ds.test.y)) == (180, 20, 50)
    np.testing.assert_array_equal(np.bincount(ds.val.y), [2] * 10)
    np.testing.assert_array_equal(np.bincount(ds.train.y), [18] * 10)
    assert ds.input_shape == (8, 8, 1) and ds.num_classes == 10
    # MNIST constants for the uint8 pixels of a file named as MNIST
    with np.load(config.test_file) as z:
        ref = ((z["images"][..., None] / 255.0 - 0.1307) / 0.3081).astype(np.float32)
    np.testing.assert_allclose(ds.test.x, ref, rtol=1e-6)
    # the same files as a directory of train.npz + test.npz
    d = ml_collections.ConfigDict({"dataset": "mnist", "val_size": 20,
                                   "data_dir": str(tmp_path)})
    same = common.load_dataset(d)
    assert common.data_fingerprint(same) == common.data_fingerprint(ds)


def test_one_data_file_is_split_three_ways_stratified(tmp_path):
    config = ml_collections.ConfigDict({"dataset": "mnist", "data_file": write_npz(
        tmp_path / "all.npz", n=300, sort=True), "test_size": 50, "val_size": 30})
    ds = common.load_dataset(config)
    assert (len(ds.train.y), len(ds.val.y), len(ds.test.y)) == (220, 30, 50)
    for split, n in ((ds.train, 22), (ds.val, 3), (ds.test, 5)):
        np.testing.assert_array_equal(np.bincount(split.y), [n] * 10)


def test_data_content_is_part_of_the_run_identity(tmp_path):
    config = common.load_config(LENET_DIGITS)
    out = str(tmp_path / "runs")
    a = ml_collections.ConfigDict({"dataset": "mnist", "data_file": write_npz(
        tmp_path / "a.npz", n=150, seed=0)})
    b = ml_collections.ConfigDict({"dataset": "mnist", "data_file": write_npz(
        tmp_path / "b.npz", n=150, seed=1)})
    ds_a, ds_b = common.load_dataset(a), common.load_dataset(b)
    assert common.data_fingerprint(ds_a) != common.data_fingerprint(ds_b)
    path_a = common.run_dir(out, config, dataset=ds_a)
    path_b = common.run_dir(out, config, dataset=ds_b)
    assert path_a != path_b and common.run_dir(out, config, dataset=ds_a) == path_a
    with open(os.path.join(path_b, "data.json")) as f:
        info = json.load(f)
    assert info["sha256"] == common.data_fingerprint(ds_b) and info["source"].endswith("b.npz")
    # where the data lives is not identity: the same content elsewhere -> the same run
    os.replace(tmp_path / "a.npz", tmp_path / "moved.npz")
    a.data_file = str(tmp_path / "moved.npz")
    assert common.run_dir(out, config, dataset=common.load_dataset(a)) == path_a


def test_train_driver_with_another_data_file_does_not_reuse_results(tmp_path):
    # End to end, the symptom: the same --out, another --data-file -> a new run.
    out = str(tmp_path / "out")
    base = ["--config", LENET_DIGITS, "--out", out, "--quiet", "--dataset", "mnist", "--set",
            "model_kwargs.hidden=(8,)", "num_steps=4", "eval_every=2", "checkpoint_every=2",
            "batch_size=10", "val_size=20", "test_size=20"]
    from experiments import train

    for seed in (0, 1):
        path = write_npz(tmp_path / f"d{seed}.npz", n=100, seed=seed)
        assert train.main([*base, "--data-file", path]) == 0
    runs = sorted(os.listdir(out))
    assert len(runs) == 2
    sources = []
    for r in runs:
        with open(os.path.join(out, r, "results.json")) as f:
            res = json.load(f)
        sources.append(os.path.basename(res["data"]["source"]))
        assert res["history"]["step"] == [0, 2, 4]
    assert sorted(sources) == ["d0.npz", "d1.npz"]


def test_one_spread_definition():
    assert common.SPREAD == "sample std (ddof=1)"
    m, s = common.mean_std([0.9, 0.8, 0.7])
    assert m == pytest.approx(0.8) and s == pytest.approx(np.std([0.9, 0.8, 0.7], ddof=1))
    assert np.isnan(common.mean_std([0.5])[1])  # undefined for one replicate, not 0
    assert common.fmt_mean_std([0.9, 0.8, 0.7], 100) == "80.00±10.00"


def _result(branch, level, density, acc, steps=(0, 50, 100), es=(100, 100)):
    return {"branch": branch, "level": level, "density": [density] * 2,
            "early_stop_test_accuracy": list(acc), "final_test_accuracy": list(acc),
            "early_stop_step": list(es), "history": {"step": list(steps)}}


def test_plot_ticks_at_the_levels_and_zoom_without_the_collapsed_branch(tmp_path):
    res = [_result("ticket", 0, 1.0, (0.98, 0.97))]
    for lv, d in ((1, 0.35), (2, 0.1225)):
        res += [_result("ticket", lv, d, (0.97, 0.96)), _result("reinit", lv, d, (0.95, 0.94)),
                _result("random_prune", lv, d, (0.30, 0.20))]
    assert plots.density_ticks(res) == [100.0, 35.0, 12.25]  # not another schedule's levels
    (lo, hi), out = plots.zoom_limits(res, "final_test_accuracy")
    assert out == ["random_prune"]
    assert 0.9 < lo < 0.94 and 0.98 < hi < 1.0  # the ticket-vs-reinit range, padded
    many = [_result("ticket", i, 0.8 ** i, (0.9, 0.9)) for i in range(30)]
    ticks = plots.density_ticks(many)
    assert len(ticks) <= plots.MAX_TICKS and ticks[0] == 100.0
    assert ticks[-1] == pytest.approx(100 * 0.8 ** 29, abs=1e-5)  # the last level
    plots.accuracy_vs_density(str(tmp_path / "a.png"), res, title="t")
    plots.early_stop_vs_density(str(tmp_path / "e.png"), res, title="t")
    assert os.path.getsize(tmp_path / "a.png") > 0 and os.path.getsize(tmp_path / "e.png") > 0


def test_progress_bar_shows_population_means(capsys):
    bar, cb = common.progress(10, 0, "x")
    cb(5, {"val_accuracy": [0.5, 0.7], "test_accuracy": 0.25})
    assert bar.n == 5
    assert "val_acc=0.6000" in bar.postfix and "test_acc=0.2500" in bar.postfix
    bar.close()


def test_docstring_examples_of_the_driver_layer():
    import doctest

    for module in (common, cli, plots):
        assert doctest.testmod(module).failed == 0, module.__name__


# ---------------------------------------------------------------------------------------
# Configs: one folder per driver, the driver recorded, refused by another driver.

CONFIGS = os.path.join(ROOT, "experiments", "configs")
DRIVERS = ("lottery", "dst", "supermask", "nm", "train", "sweep", "forgetting", "lca",
           "relearn", "oneshot")


def _config_files():
    """Every config file, as (driver folder, path, the variants of its get_config(arg))."""
    out = []
    for driver in sorted(os.listdir(CONFIGS)):
        folder = os.path.join(CONFIGS, driver)
        if not os.path.isdir(folder) or driver == "__pycache__":
            continue
        for name in sorted(os.listdir(folder)):
            if name.endswith(".py"):
                out.append((driver, os.path.join(folder, name)))
    return out


def test_every_config_folder_is_a_driver_and_holds_only_configs():
    files = _config_files()
    assert {d for d, _ in files} == set(DRIVERS)
    assert len(files) == 26  # 30 recipes and demos: two files hold variants
    assert set(os.listdir(CONFIGS)) - {"__pycache__"} == {*DRIVERS, "__init__.py", "base.py"}
    for _, path in files:
        with open(path) as f:
            source = f.read()
        # one inheritance mechanism: the base module; no config reads another config
        assert "sys.path" not in source and "load_config" not in source, path
        imports = {ast.unparse(node) for node in ast.walk(ast.parse(source))
                   if isinstance(node, ast.Import | ast.ImportFrom)}
        assert imports <= {"import ml_collections", "from experiments.configs import base"}


@pytest.mark.parametrize("driver,path", _config_files(),
                         ids=[os.path.relpath(p, CONFIGS) for _, p in _config_files()])
def test_every_config_loads_for_its_driver_and_passes_its_validation(driver, path):
    import importlib.util

    module = importlib.import_module(f"experiments.{driver}")
    spec = importlib.util.spec_from_file_location("_cfg", path)
    source_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(source_module)
    variants = getattr(source_module, "VARIANTS", (None,))
    rel = os.path.relpath(path, ROOT)
    doc = source_module.__doc__.replace("\\\n", " ")
    # the docstring starts with the exact command that runs it
    assert doc.startswith(f"python -m experiments.{driver} "), doc[:80]
    command = " ".join(doc.split("\n\n")[0].split())
    assert f"--config {rel}" in command, command
    names = set()
    for variant in variants:
        config = common.load_config(rel if variant is None else f"{rel}:{variant}",
                                    driver=driver)
        assert config.driver == driver
        names.add(config.name)
        if hasattr(module, "validate"):
            module.validate(config)  # the driver's own checks, no training
    assert len(names) == len(variants)  # every variant is its own run identity


def test_a_config_for_another_driver_is_refused_by_name(capsys):
    from experiments import lottery

    dst_config = os.path.join(CONFIGS, "dst", "digits_dst.py")
    with pytest.raises(SystemExit) as e:
        lottery.main(["--config", dst_config, "--quiet"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err
    assert "error: config file " + dst_config in err
    assert "is for the dst driver" in err and "not lottery" in err
    assert "python -m experiments.dst" in err
    # every driver names itself to the CLI layer
    for path in sorted(pathlib.Path(ROOT, "experiments").glob("*.py")):
        if path.stem not in ("__init__", "cli", "common", "plots"):
            assert f'driver="{path.stem}"' in path.read_text(), path
    # a config without a driver key (a user's own) is not checked
    config = common.load_config(LENET_DIGITS, driver="train")
    assert config.driver == "train"
    with pytest.raises(common.ConfigError, match="is for the train driver"):
        common.load_config(LENET_DIGITS, driver="nm")


def test_a_config_for_another_driver_is_refused_on_the_command_line():
    import subprocess
    import sys

    sm = "experiments/configs/supermask/digits_edgepopup.py"
    r = subprocess.run([sys.executable, "-m", "experiments.nm", "--config", sm], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    assert f"error: config file {sm} is for the supermask driver" in r.stderr
    assert "not nm" in r.stderr


def test_variants_of_a_config_file_and_bad_variants():
    path = "experiments/configs/lottery/frankle2019_cifar10.py"
    conv6 = common.load_config(f"{path}:conv6")
    assert (conv6.name, conv6.model, conv6.learning_rate, conv6.num_steps) == (
        "frankle2019_conv6", "conv6", 3e-4, 30_000)
    assert dict(conv6.rates)["conv"] == 0.15
    assert common.load_config(path).name == "frankle2019_conv4"  # the default variant
    with pytest.raises(common.ConfigError, match=r"frankle2019_cifar10.py:conv9 failed to load.*"
                       r"unknown variant 'conv9': expected one of \('conv2', 'conv4', 'conv6'\)"):
        common.load_config(f"{path}:conv9")


def test_config_builders_name_unknown_and_missing_keys():
    from experiments.configs import base

    with pytest.raises(KeyError, match=r"no key\(s\) \{'num_step': \['num_steps'\]\}"):
        base.train("x", dataset="digits", **base.model("lenet300"), optimizer="adam",
                   learning_rate=1e-3, batch_size=60, num_step=10, eval_every=5,
                   checkpoint_every=5)
    with pytest.raises(KeyError, match=r"nm configs must give \['n', 'm', 'lambda_w'"):
        base.nm("x", dataset="digits", **base.model("lenet300"), optimizer="adam",
                learning_rate=1e-3, batch_size=60, num_steps=10, eval_every=5)
    c = base.relearn("x", dataset="digits", **base.model("lenet300"), optimizer="adam",
                     learning_rate=1e-3, batch_size=60, steps_per_generation=5, generations=2,
                     eval_every=5, method="llf", llf_from="fc1")
    assert "llf_from" in c and "ke_fraction" not in c  # ABSENT keys only when given
    # the driver key says what runs a config; it is not part of the run's identity
    assert "driver" in common.NON_HASHED
