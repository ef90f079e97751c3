"""The published bad-input suite of the library API: every case is a mistake a user makes.

Each case asserts the error TYPE and that the message names the offending leaf, file or value
(``pytest.raises(..., match=...)``). Groups: mask structures / dtypes / shapes, pruning values,
N:M axes, populations, datasets (in memory and corrupt files), checkpoints and tickets. The
drivers' cases (command lines, configs) live with the driver tests.
"""

from __future__ import annotations

import gzip
import os
import pickle
import re
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxsparse as js
from jaxsparse import checkpoint, data, lottery, nm, population


class Case(NamedTuple):
    id: str
    fn: Callable  # fn(tmp_path) makes the mistake
    error: type[BaseException]
    match: str  # must name the leaf / file / value


W = {"dense": {"kernel": jnp.arange(20.0).reshape(4, 5), "bias": jnp.ones(5)}}
M = js.ones_like(W)


def with_mask(**leaves):
    """``M`` with ``dense/<name>`` replaced."""
    return {"dense": {**M["dense"], **leaves}}


def masked_update(masks, *, jit=False):
    tx = js.masked(optax.sgd(0.1))
    st = tx.init(W)
    f = (lambda g, s, p, m: tx.update(g, s, p, masks=m))
    return (jax.jit(f) if jit else f)(W, st, W, masks)


# ------------------------------------------------------------------ masks: the one validation

MASKS = [
    Case("validate-float-mask", lambda t: js.validate(W, with_mask(kernel=jnp.ones((4, 5)))),
         TypeError, r"mask at 'dense/kernel' has dtype float32; masks must be bool"),
    Case("validate-int-mask",
         lambda t: js.validate(W, with_mask(kernel=jnp.ones((4, 5), jnp.int32))),
         TypeError, r"'dense/kernel' has dtype int32"),
    Case("validate-broadcasting-shape",
         lambda t: js.validate(W, with_mask(kernel=jnp.ones((1, 5), bool))),
         ValueError, r"'dense/kernel' has shape \(1, 5\) but the param has shape \(4, 5\)"),
    Case("validate-missing-leaf", lambda t: js.validate(W, {"dense": {"kernel": M["dense"][
        "kernel"]}}), ValueError, r"leaves only in params: \['dense/bias'\]"),
    Case("validate-scalar-false", lambda t: js.validate(W, with_mask(bias=jnp.asarray(False))),
         ValueError, r"scalar mask at 'dense/bias' is False"),
    Case("apply-masks-float", lambda t: js.apply_masks(W, with_mask(kernel=jnp.ones((4, 5)))),
         TypeError, r"apply_masks: mask at 'dense/kernel' has dtype float32"),
    Case("masked-update-float-mask",
         lambda t: masked_update(with_mask(kernel=jnp.full((4, 5), 0.3))),
         TypeError, r"masked\(tx\)\.update: mask at 'dense/kernel' has dtype float32"),
    Case("masked-update-float-mask-under-jit",
         lambda t: masked_update(with_mask(kernel=jnp.full((4, 5), 0.3)), jit=True),
         TypeError, r"masked\(tx\)\.update: mask at 'dense/kernel' has dtype float32"),
    Case("masked-update-broadcast-mask",
         lambda t: masked_update(with_mask(kernel=jnp.ones((1, 5), bool))),
         ValueError, r"masked\(tx\)\.update: mask at 'dense/kernel' has shape \(1, 5\) but the "
                     r"update has shape \(4, 5\)"),
    Case("masked-update-no-masks",
         lambda t: js.masked(optax.sgd(0.1)).update(W, optax.sgd(0.1).init(W), W),
         TypeError, r"needs the current masks.*masked_apply_gradients"),
    Case("masked-update-wrong-tree", lambda t: masked_update({"dense": M["dense"], "x": True}),
         ValueError, r"leaves only in masks: \['x'\]"),
    Case("reset-moments-float",
         lambda t: js.reset_moments(optax.adam(0.1).init(W), with_mask(kernel=jnp.ones((4, 5)))),
         TypeError, r"reset_moments: mask at 'dense/kernel'"),
    Case("count-kept-float", lambda t: js.count_kept({"w": jnp.full((3, 3), 0.3)}),
         TypeError, r"count_kept: mask at 'w' has dtype float32"),
    Case("report-int", lambda t: js.report({"w": jnp.ones((2, 2), jnp.uint8)}),
         TypeError, r"report: mask at 'w' has dtype uint8"),
    Case("intersect-shapes", lambda t: js.intersect({"w": jnp.ones((2, 3), bool)},
                                                    {"w": jnp.ones((3, 2), bool)}),
         ValueError, r"intersect: masks at 'w' have shapes \(2, 3\) and \(3, 2\)"),
    Case("invert-float", lambda t: js.invert({"w": jnp.ones(3)}), TypeError,
         r"invert: mask at 'w'"),
    Case("ones-like-scalar-rule", lambda t: js.ones_like({"step": jnp.zeros(())},
                                                         rules=[("step", True)]),
         ValueError, r"scalar leaf 'step'"),
    Case("ones-like-bad-regex", lambda t: js.ones_like(W, rules=[("dense/(", True)]),
         ValueError, r"rules\[0\]: invalid regex 'dense/\('"),
    Case("ones-like-linen-variables",
         lambda t: js.ones_like({"params": W, "batch_stats": {"bn": {"mean": jnp.zeros(5)}}}),
         ValueError, r"Linen variables dict with collections \['batch_stats'\]"),
    Case("nonzero-pruned-shape", lambda t: js.masks.nonzero_pruned(
        W, with_mask(kernel=jnp.ones((5, 4), bool))), ValueError,
         r"nonzero_pruned: mask at 'dense/kernel' has shape \(5, 4\)"),
    Case("rewind-float-mask", lambda t: js.rewind(W, with_mask(kernel=jnp.ones((4, 5)))),
         TypeError, r"'dense/kernel' has dtype float32"),
    Case("rewind-random-without-key", lambda t: js.rewind(W, M, action="reinit"),
         ValueError, r"action 'reinit' is random: pass key="),
]

# ------------------------------------------------------------------ pruning values

A = {"a": {"kernel": jnp.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])}}
AM = js.ones_like(A)

PRUNE = [
    Case("prune-sparsity-1", lambda t: js.prune(A, AM, sparsity=1.0), ValueError,
         r"sparsity must be in \[0, 1\), got 1.0"),
    Case("prune-negative-sparsity", lambda t: js.prune(A, AM, sparsity=-0.2), ValueError,
         r"got -0.2"),
    Case("prune-nan-score", lambda t: js.prune({"a": {"kernel": A["a"]["kernel"].at[0, 0].set(
        jnp.nan)}}, AM, sparsity=0.5), ValueError, r"'a/kernel' \(shape \(2, 3\)\).*non-finite"),
    Case("prune-float-masks", lambda t: js.prune(A, {"a": {"kernel": jnp.ones((2, 3))}},
                                                 sparsity=0.5),
         TypeError, r"'a/kernel'.*bool"),
    Case("prune-score-shape", lambda t: js.prune({"a": {"kernel": jnp.ones((3, 2))}}, AM,
                                                 sparsity=0.5),
         ValueError, r"'a/kernel' has shape \(3, 2\)"),
    Case("prune-rate-matches-nothing", lambda t: js.prune(A, AM, rates=[("nope", 0.5)]),
         ValueError, r"'nope'.*a/kernel"),
]

# ------------------------------------------------------------------ N:M axes and masks

QKV = {"attn": {"wq": jnp.ones((16, 2, 8))}}

NM_CASES = [
    Case("nm-mask-bare-3d", lambda t: js.nm_mask(jnp.ones((16, 2, 8))), ValueError,
         r"'<array>'.*3-D array of shape \(16, 2, 8\).*axis=AXIS"),
    Case("nm-masks-unknown-3d-leaf", lambda t: js.nm_masks(QKV), ValueError,
         r"'attn/wq'.*shape \(16, 2, 8\).*axis_rules=\[\('attn/wq\$', AXIS\)\]"),
    Case("is-nm-unknown-3d-leaf", lambda t: js.is_nm(QKV), ValueError,
         r"'attn/wq'.*\(16, 2, 8\)"),
    Case("prune-nm-unknown-3d-leaf",
         lambda t: js.prune(QKV, js.ones_like(QKV), structure=js.NM(2, 4)), ValueError,
         r"'attn/wq'.*\(16, 2, 8\)"),
    Case("nm-mask-bare-4d", lambda t: js.nm_mask(jnp.ones((3, 3, 8, 4))), ValueError,
         r"'<array>'.*4-D array of shape \(3, 3, 8, 4\)"),
    Case("nm-1d-leaf", lambda t: js.reduction_axis("scale", (8,)), ValueError,
         r"'scale'.*shape \(8,\) has no reduction axis"),
    Case("nm-axis-out-of-range", lambda t: js.nm_mask(jnp.ones((8, 4)), axis=5, path="d/kernel"),
         ValueError, r"'d/kernel': axis 5 out of range for shape \(8, 4\)"),
    Case("nm-axis-rule-not-int",
         lambda t: js.reduction_axis("p/kernel", (4, 8, 16), [("p", "zero")]), TypeError,
         r"'p/kernel': axis rule gave 'zero'"),
    Case("nm-n-not-below-m", lambda t: js.NM(4, 4), ValueError, r"0 < n < m, got n=4, m=4"),
    Case("nm-float-n", lambda t: js.NM(2.0, 4), TypeError, r"n=2.0"),
    Case("nm-not-divisible", lambda t: js.nm_masks({"odd": {"kernel": jnp.ones((6, 3))}}),
         ValueError, r"'odd/kernel'.*\(6, 3\).*not divisible by m=4"),
    Case("nm-leaf-mask-float", lambda t: js.NM(1, 2).leaf_mask(
        jnp.ones((6, 1)), jnp.ones((6, 1)), path="fc/kernel"),
         TypeError, r"N:M: mask at 'fc/kernel' has dtype float32; masks must be bool"),
    Case("compress-not-nm-mask", lambda t: js.nm.compress(
        jnp.arange(1.0, 9.0).reshape(8, 1), 2, 4, mask=jnp.array([1, 1, 1, 0, 1, 0, 0, 0],
                                                                 bool)[:, None], path="k"),
         ValueError, r"compress at 'k': the mask is not 2:4 along axis 0: 1 of 2 groups keep "
                     r"more than 2 \(first: group \(0, 0\) keeps 3\)"),
    Case("compress-float-mask", lambda t: js.nm.compress(jnp.ones((8, 1)),
                                                         mask=jnp.ones((8, 1)), path="k"),
         TypeError, r"compress: mask at 'k' has dtype float32"),
    Case("compress-mask-shape", lambda t: js.nm.compress(jnp.ones((8, 2)),
                                                         mask=jnp.ones((8, 1), bool), path="k"),
         ValueError, r"compress: mask at 'k' has shape \(8, 1\)"),
    Case("transposable-bare-3d", lambda t: nm.transposable_mask(jnp.ones((8, 2, 8))),
         ValueError, r"'<array>'.*shape \(8, 2, 8\); pass axes="),
    Case("permutation-bare-3d", lambda t: nm.search_permutation(jnp.ones((8, 2, 8))),
         ValueError, r"'<array>'.*\(8, 2, 8\)"),
    Case("cutlass-float64", lambda t: nm.to_cutlass(np.zeros((32, 32))), TypeError,
         r"float64"),
    Case("nm-keep-float-valid", lambda t: nm.nm_keep(jnp.ones((4, 2)), 2, 4, axis=0,
                                                     valid=jnp.ones((4, 2)), path="v"),
         TypeError, r"N:M: mask at 'v' has dtype float32"),
]

# ------------------------------------------------------------- populations (jaxsparse.population)

POP = [
    Case("grid-empty-axis", lambda t: population.grid(lr=[]), ValueError,
         r"grid axis 'lr' must be a non-empty list"),
    Case("grid-string-axis", lambda t: population.grid(opt="adam"), ValueError,
         r"grid axis 'opt'.*'adam'"),
    Case("stack-configs-missing-field",
         lambda t: population.stack_configs([{"lr": 0.1}, {"wd": 1}]), ValueError,
         r"field 'lr' is missing from configs \[1\]"),
    Case("stack-configs-strings", lambda t: population.stack_configs([{"opt": "adam"}]), ValueError,
         r"field 'opt' holds strings \['adam'\]"),
    Case("population-sizes-disagree", lambda t: population.population_size(
        {"w": jnp.ones((3, 2)), "b": jnp.ones((4,))}), ValueError,
         r"disagree on the member count: \{3: 'w', 4: 'b'\}|\{4: 'b', 3: 'w'\}"),
    Case("population-scalar-leaf", lambda t: population.population_size(
        {"w": jnp.ones((3, 2)), "step": jnp.zeros(())}), ValueError,
         r"leaf 'step' of shape \(\) has no population axis 0"),
    Case("pad-population-down", lambda t: population.pad_population(jnp.ones((4, 2)), 2),
         ValueError, r"cannot pad a population of 4 down to 2"),
    Case("shard-population-indivisible", lambda t: population.shard_population(jnp.ones((3, 2))),
         ValueError, r"population of 3 does not divide over 4 devices"),
    Case("population-map-backend", lambda t: population.population_map(lambda x: x, backend="tpu"),
         ValueError, r"backend must be 'sharding', 'pmap' or 'vmap', got 'tpu'"),
    Case("population-map-sizes", lambda t: population.population_map(
        lambda a, b: a + b, backend="vmap")(jnp.ones((2, 3)), jnp.ones((3, 3))),
         ValueError, r"disagree on the population size: \[2, 3\]"),
    Case("population-map-in-axes", lambda t: population.population_map(
        lambda a, b: a, in_axes=(0,), backend="vmap")(jnp.ones((2, 3)), jnp.ones((2, 3))),
         ValueError, r"in_axes has 1 entries for 2 arguments"),
]

# ------------------------------------------------------------------ datasets

X4 = np.zeros((2, 4, 4, 1), np.float32)


def dataset(train=None, test=None, num_classes=3):
    train = train if train is not None else data.Split(X4, np.array([0, 1]))
    test = test if test is not None else data.Split(X4, np.array([0, 2]))
    return data.Dataset("mine", train, data.Split(X4[:0], np.zeros(0, np.int32)), test,
                        num_classes, source="/data/mine.npz")


def nan_images():
    x = X4.copy()
    x[1, 2, 2, 0] = np.nan
    return x


def write_npz(tmp, name="mnist", **override):
    rng = np.random.default_rng(0)
    arrays = dict(x_train=rng.integers(0, 256, (6, 28, 28)).astype(np.uint8),
                  y_train=np.arange(6) % 10, x_test=rng.integers(0, 256, (3, 28, 28)),
                  y_test=np.arange(3))
    arrays.update(override)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    np.savez(tmp / f"{name}.npz", **arrays)
    return str(tmp)


def load_mnist(directory):
    return data.load("mnist", data_dir=directory, val_size=1)


def write_idx(path, array, magic=0x08):
    header = bytes([0, 0, magic, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def mnist_idx(tmp, truncate=False, magic=0x08):
    imgs = np.zeros((4, 28, 28), np.uint8)
    write_idx(tmp / "train-images-idx3-ubyte.gz", imgs, magic)
    write_idx(tmp / "train-labels-idx1-ubyte.gz", np.arange(4))
    write_idx(tmp / "t10k-images-idx3-ubyte.gz", imgs)
    write_idx(tmp / "t10k-labels-idx1-ubyte.gz", np.arange(4))
    if truncate:
        raw = gzip.open(tmp / "train-images-idx3-ubyte.gz").read()
        with gzip.open(tmp / "train-images-idx3-ubyte.gz", "wb") as f:
            f.write(raw[:-100])
    return str(tmp)


def corrupt_cifar(tmp):
    base = tmp / "cifar-10-batches-py"
    base.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(base / name, "wb") as f:
            pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]}, f)
    (base / "data_batch_3").write_bytes(b"\x80\x04garbage")
    return str(tmp)


DATA = [
    Case("dataset-label-out-of-range", lambda t: dataset(train=data.Split(X4, np.array([0, 3]))),
         ValueError, r"dataset 'mine' from /data/mine.npz, split 'train': label 3 at index 1 is "
                     r"outside \[0, 3\)"),
    Case("dataset-negative-label", lambda t: dataset(test=data.Split(X4, np.array([-1, 0]))),
         ValueError, r"split 'test': label -1 at index 0"),
    Case("dataset-nan-pixel", lambda t: dataset(train=data.Split(nan_images(), np.array([0, 1]))),
         ValueError,
         r"split 'train': 1 pixel value\(s\) are NaN or inf \(first in image 1\)"),
    Case("dataset-empty-train", lambda t: dataset(train=data.Split(X4[:0], np.zeros(0, np.int32))),
         ValueError, r"split 'train': the split is empty"),
    Case("dataset-not-nhwc", lambda t: dataset(train=data.Split(X4[..., 0], np.array([0, 1]))),
         ValueError, r"split 'train': x has shape \(2, 4, 4\); images must be \[n, H, W, C\]"),
    Case("dataset-uint8-images", lambda t: dataset(train=data.Split(X4.astype(np.uint8),
                                                                    np.array([0, 1]))),
         TypeError, r"split 'train': x has dtype uint8; images must be floating point"),
    Case("dataset-float-labels", lambda t: dataset(train=data.Split(X4, np.array([0.0, 1.0]))),
         TypeError, r"split 'train': y has dtype float64; labels must be integers"),
    Case("dataset-length-mismatch", lambda t: dataset(train=data.Split(X4, np.array([0, 1, 2]))),
         ValueError, r"split 'train': 2 images but 3 labels"),
    Case("dataset-zero-classes", lambda t: dataset(num_classes=0), ValueError,
         r"num_classes must be an int >= 1, got 0"),
    Case("dataset-shapes-differ", lambda t: dataset(test=data.Split(
        np.zeros((2, 5, 5, 1), np.float32), np.array([0, 1]))), ValueError,
         r"different example shapes \{'train': \(4, 4, 1\), 'test': \(5, 5, 1\)\}"),
    Case("npz-not-a-zip", lambda t: (t.joinpath("mnist.npz").write_bytes(b"PK\x03\x04junk"),
                                     data.load("mnist", data_dir=str(t))),
         ValueError, r"cannot read .*mnist\.npz"),
    Case("npz-missing-arrays", lambda t: load_mnist(write_npz(t, y_test=None)),
         ValueError, r"mnist\.npz needs arrays x_train/y_train/x_test/y_test, has \['x_test', "
                     r"'x_train', 'y_train'\]"),
    Case("npz-float-images", lambda t: load_mnist(write_npz(
        t, x_train=np.zeros((6, 28, 28)))), TypeError,
         r"x_train in .*mnist\.npz has dtype float64; raw images must be integer pixels"),
    Case("npz-pixels-above-255", lambda t: load_mnist(write_npz(
        t, x_test=np.full((3, 28, 28), 300))), ValueError,
         r"x_test in .*mnist\.npz has pixel values in \[300, 300\]; expected 0\.\.255"),
    Case("npz-label-10-for-mnist", lambda t: load_mnist(write_npz(
        t, y_train=np.array([0, 1, 2, 10, 4, 5]))), ValueError,
         r"y_train in .*mnist\.npz has label 10 at index 3, outside \[0, 10\)"),
    Case("npz-float-labels", lambda t: load_mnist(write_npz(
        t, y_test=np.array([0.5, 1.0, 2.0]))), TypeError,
         r"y_test in .*mnist\.npz has dtype float64; labels must be integers"),
    Case("npz-empty-test", lambda t: load_mnist(write_npz(
        t, x_test=np.zeros((0, 28, 28), np.uint8), y_test=np.zeros(0, np.int64))), ValueError,
         r"x_test in .*mnist\.npz is empty"),
    Case("train-test-npz-wrong-keys", lambda t: (
        np.savez(t / "train.npz", a=np.zeros(2)), np.savez(t / "test.npz", a=np.zeros(2)),
        data.load("mnist", data_dir=str(t))), ValueError,
         r"train\.npz needs arrays x/y or images/labels, has \['a'\]"),
    Case("idx-truncated", lambda t: data.load("mnist", data_dir=mnist_idx(t, truncate=True)),
         ValueError, r"train-images-idx3-ubyte\.gz is truncated or corrupt"),
    Case("idx-bad-magic", lambda t: data.load("mnist", data_dir=mnist_idx(t, magic=0x0D)),
         ValueError, r"train-images-idx3-ubyte\.gz is not an unsigned-byte IDX file"),
    Case("cifar-corrupt-pickle", lambda t: data.load("cifar10", data_dir=corrupt_cifar(t)),
         ValueError, r"cannot read CIFAR pickle .*data_batch_3"),
    Case("unknown-dataset", lambda t: data.load("imagenet"), ValueError,
         r"unknown dataset 'imagenet'"),
]

# ------------------------------------------------------------------ checkpoints and tickets

TREE = {"w": jnp.arange(1000.0), "b": jnp.ones(3)}


def saved(tmp, steps=(1, 2)):
    d = str(tmp / "ckpt")
    for s in steps:
        checkpoint.save(d, s, TREE, metadata={"step": s})
    return d


def truncate_largest(step_dir):
    files = [os.path.join(r, f) for r, _, fs in os.walk(step_dir) for f in fs]
    with open(max(files, key=os.path.getsize), "r+b") as f:
        f.truncate(64)


def flip_a_byte(step_dir):
    chunks = os.path.join(step_dir, "tree", "ocdbt.process_0", "d")  # the array data
    files = [os.path.join(chunks, f) for f in os.listdir(chunks)]
    path = max(files, key=os.path.getsize)
    with open(path, "rb") as f:
        b = bytearray(f.read())
    b[len(b) // 2] ^= 0xFF
    with open(path, "wb") as f:
        f.write(b)


def restore_only_step_truncated(tmp):
    d = saved(tmp, steps=(1,))
    truncate_largest(os.path.join(d, "1"))
    with pytest.warns(UserWarning, match=r"ckpt/1 is corrupt or truncated.*no older step"):
        checkpoint.restore(d, target=TREE)


def restore_old_step_flipped(tmp):
    d = saved(tmp)
    flip_a_byte(os.path.join(d, "1"))
    checkpoint.restore(d, target=TREE, step=1)  # an explicit older step: no fall-back


def restore_garbled_json(tmp):
    d = saved(tmp, steps=(3,))
    with open(os.path.join(d, "3", "meta", "metadata"), "w") as f:
        f.write("{not json")
    with pytest.warns(UserWarning):
        checkpoint.restore(d, target=TREE)


def restore_foreign_meta(tmp):
    import orbax.checkpoint as ocp

    d = str(tmp / "ckpt")
    with ocp.CheckpointManager(d, item_names=("tree", "meta")) as mngr:
        mngr.save(4, args=ocp.args.Composite(tree=ocp.args.StandardSave({"x": np.zeros(2)}),
                                             meta=ocp.args.JsonSave({"format": "theirs"})))
    with pytest.warns(UserWarning):
        checkpoint.restore(d, target=TREE)


def write_ticket(tmp, params=None, masks=None, **kw):
    p = params if params is not None else W
    return lottery.export_ticket(tmp / "t", p, masks if masks is not None else js.ones_like(p),
                                 **kw)


def corrupt_ticket(tmp):
    path = write_ticket(tmp)
    for r, _, fs in os.walk(os.path.join(path, "ticket")):
        for f in fs:
            open(os.path.join(r, f), "wb").close()
    return lottery.load_ticket(path)


def nnx_state_with_stats():
    from flax import nnx

    model = nnx.Sequential(nnx.Linear(4, 4, rngs=nnx.Rngs(0)), nnx.BatchNorm(4, rngs=nnx.Rngs(0)))
    return nnx.state(model)


CKPT = [
    Case("restore-empty-directory", lambda t: checkpoint.restore(str(t / "none"), target=TREE),
         FileNotFoundError, r"no checkpoint in .*none"),
    Case("restore-missing-step", lambda t: checkpoint.restore(saved(t), target=TREE, step=7),
         FileNotFoundError, r"no checkpoint 7 in .*ckpt \(it has steps \[1, 2\]\)"),
    Case("restore-only-step-truncated", restore_only_step_truncated, checkpoint.CheckpointError,
         r"every kept checkpoint in .*ckpt is unreadable: checkpoint .*ckpt/1 is corrupt"),
    Case("restore-flipped-byte-crc", restore_old_step_flipped, checkpoint.CheckpointError,
         r"checkpoint .*ckpt/1 is corrupt: leaf 1 'w' in .*ckpt/1/tree does not match "
         r"the CRC-32"),
    Case("restore-garbled-json", restore_garbled_json, checkpoint.CheckpointError,
         r"cannot read .*ckpt/3/meta/metadata \(JSONDecodeError"),
    Case("restore-foreign-checkpoint", restore_foreign_meta, checkpoint.CheckpointError,
         r"ckpt/4 is not a jaxsparse checkpoint: .*metadata has keys \['format'\]"),
    Case("restore-other-tree", lambda t: checkpoint.restore(
        saved(t), target={"w": jnp.zeros(999), "b": jnp.ones(3)}), ValueError,
         r"ckpt/2 holds a different tree than the target: leaf 1 'w' is "
         r"float32\[1000\] in the checkpoint, float32\[999\]"),
    Case("restore-other-leaf-count", lambda t: checkpoint.restore(
        saved(t), target={"w": jnp.zeros(1000)}), ValueError,
         r"2 leaves vs 1 \(only in the checkpoint: \['b'\]; only in the target: \[\]\)"),
    Case("checkpointer-on-a-file", lambda t: (t.joinpath("f").write_text("x"),
                                              checkpoint.Checkpointer(str(t / "f"))),
         NotADirectoryError, r"checkpoint directory .*/f is a file"),
    Case("ticket-missing", lambda t: lottery.load_ticket(t / "nothing"), FileNotFoundError,
         r"no ticket at .*nothing"),
    Case("ticket-corrupt", corrupt_ticket, ValueError, r"cannot read the ticket .*t/ticket"),
    Case("ticket-other-shapes", lambda t: lottery.load_ticket(
        write_ticket(t), like={"dense": {"kernel": jnp.ones((5, 5)), "bias": jnp.ones(5)}}),
         ValueError, r"ticket params leaf 'dense/kernel' has shape \(4, 5\), the model has "
                     r"\(5, 5\)"),
    Case("ticket-float-masks", lambda t: write_ticket(t, masks=with_mask(kernel=jnp.ones((4, 5)))),
         TypeError, r"export_ticket: mask at 'dense/kernel' has dtype float32"),
    Case("ticket-nnx-state-with-stats", lambda t: write_ticket(
        t, params=nnx_state_with_stats(), masks={}), ValueError,
         r"export_ticket: this NNX State holds non-parameter variables \(BatchStat at "
         r"\['layers/1/mean', 'layers/1/var'\]\)"),
    Case("ticket-without-batch-stats-into-linen-variables", lambda t: lottery.load_ticket(
        write_ticket(t), like={"params": W, "batch_stats": {"bn": {"mean": jnp.zeros(5)}}}),
         ValueError, r"ticket model_state has no leaf 'batch_stats/bn/mean' \(it was exported "
                     r"without it"),
    Case("ticket-missing-model-state", lambda t: lottery.read_ticket(
        write_ticket(t), like=W, model_state_like={"bn": {"mean": jnp.zeros(5)}}), ValueError,
         r"ticket model_state has no leaf 'bn/mean' \(it was exported without it"),
]

ALL = MASKS + PRUNE + NM_CASES + POP + DATA + CKPT


def test_the_suite_is_large_and_ids_are_unique():
    ids = [c.id for c in ALL]
    assert len(ids) == len(set(ids))
    assert len(ALL) >= 45


@pytest.mark.parametrize("case", ALL, ids=[c.id for c in ALL])
def test_bad_input(case, tmp_path):
    with pytest.raises(case.error, match=case.match) as info:
        case.fn(tmp_path)
    # no traceback noise in the message: one readable sentence naming what is wrong
    assert re.search(case.match, str(info.value))
