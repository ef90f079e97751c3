"""Data loaders: digits split, raw files (IDX, CIFAR pickles, npz), tfds directories, errors."""

import gzip
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsparse import data


def test_digits_fixed_stratified_split():
    ds = data.digits()
    assert (len(ds.train.y), len(ds.val.y), len(ds.test.y)) == (1197, 300, 300)
    assert ds.train.x.shape == (1197, 8, 8, 1) and ds.train.x.dtype == np.float32
    assert ds.train.y.dtype == np.int32 and ds.num_classes == 10
    # stratified: every class has 29-31 test examples (1,797 digits, ~180 per class)
    assert np.bincount(ds.test.y, minlength=10).min() >= 29
    # a fixed split: same every call, disjoint, and covering all 1,797 images
    again = data.digits()
    np.testing.assert_array_equal(again.test.x, ds.test.x)
    allx = np.concatenate([ds.train.x, ds.val.x, ds.test.x]).reshape(1797, -1)
    from sklearn.datasets import load_digits

    ref = data.normalise(load_digits().images[..., None], *data.NORMALISATION["digits"],
                         scale=16.0).reshape(1797, -1)
    sort = lambda a: a[np.lexsort(a.T[::-1])]  # noqa: E731 - rows in a canonical order
    np.testing.assert_array_equal(sort(allx), sort(ref))  # a partition of the 1,797 images
    assert abs(float(allx.mean())) < 0.01 and abs(float(allx.std()) - 1) < 0.01  # normalised


def _write_idx(path, array, gz=True):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if gz:
        with gzip.open(path, "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


@pytest.fixture()
def mnist_dir(tmp_path):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (12, 28, 28)).astype(np.uint8)
    test = rng.integers(0, 256, (5, 28, 28)).astype(np.uint8)
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", imgs)
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.arange(12) % 10)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", test, gz=False)  # plain ubyte works too
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.arange(5))
    return tmp_path, imgs, test


def test_mnist_idx_files_paper_style_split(mnist_dir):
    d, imgs, test = mnist_dir
    ds = data.load("mnist", data_dir=str(d), val_size=3)
    # the validation set is the FIRST val_size training images (TF input_data convention)
    expect = (imgs[:, :, :, None] / np.float32(255) - np.float32(0.1307)) / np.float32(0.3081)
    np.testing.assert_allclose(ds.val.x, expect[:3], rtol=1e-6)
    np.testing.assert_allclose(ds.train.x, expect[3:], rtol=1e-6)
    np.testing.assert_array_equal(ds.train.y, np.arange(3, 12) % 10)
    assert ds.test.x.shape == (5, 28, 28, 1) and ds.test.y.dtype == np.int32
    assert ds.source == str(d)


def test_corrupt_and_missing_data_errors_say_where_and_what(mnist_dir, tmp_path_factory):
    d, _, _ = mnist_dir
    raw = gzip.open(d / "train-images-idx3-ubyte.gz").read()
    with gzip.open(d / "train-images-idx3-ubyte.gz", "wb") as f:
        f.write(raw[:-100])  # truncated
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.gz is truncated"):
        data.load("mnist", data_dir=str(d))
    (d / "train-images-idx3-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.gz"):
        data.load("mnist", data_dir=str(d))
    empty = tmp_path_factory.mktemp("empty")
    with pytest.raises(FileNotFoundError, match="tfds build cifar10") as e:
        data.load("cifar10", data_dir=str(empty))
    assert str(empty) in str(e.value)
    with pytest.raises(ValueError, match="unknown dataset"):
        data.load("imagenet")


def test_cifar_pickles_are_read_as_nhwc(tmp_path):
    rng = np.random.default_rng(1)
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    batches = []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        x = rng.integers(0, 256, (4, 3072)).astype(np.uint8)
        y = list(rng.integers(0, 10, 4))
        batches.append((x, y))
        with open(base / name, "wb") as f:
            pickle.dump({b"data": x, b"labels": y}, f)
    ds = data.load("cifar10", data_dir=str(tmp_path), val_size=2, normalize=False)
    assert ds.train.x.shape == (18, 32, 32, 3) and ds.val.x.shape == (2, 32, 32, 3)
    x0 = batches[0][0][1]  # second image of batch 1: channel-major rows of 32x32
    np.testing.assert_allclose(ds.train.x[1, 5, 7], x0.reshape(3, 32, 32)[:, 5, 7] / 255.0,
                               rtol=1e-6)
    # CIFAR's validation set is the LAST val_size training images
    np.testing.assert_array_equal(ds.val.y, batches[4][1][2:])


def test_npz_files(tmp_path):
    rng = np.random.default_rng(2)
    np.savez(tmp_path / "fashion_mnist.npz", x_train=rng.integers(0, 256, (8, 28, 28)),
             y_train=np.arange(8), x_test=rng.integers(0, 256, (3, 28, 28)), y_test=np.arange(3))
    ds = data.load("fashion_mnist", data_dir=str(tmp_path), val_size=2)
    assert (len(ds.train.y), len(ds.val.y), len(ds.test.y)) == (6, 2, 3)
    assert ds.mean == (0.2860,)


def test_tfds_array_record_directory_read_without_tensorflow(tmp_path):
    """Prepares a tiny `mnist` with tfds's own writer (array_record, PNG via PIL, no TF)."""
    tfds = pytest.importorskip("tensorflow_datasets")
    from PIL import Image

    rng = np.random.default_rng(3)
    train_imgs = rng.integers(0, 256, (6, 28, 28)).astype(np.uint8)
    test_imgs = rng.integers(0, 256, (4, 28, 28)).astype(np.uint8)

    class Mnist(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        VERSION = tfds.core.Version("3.0.1")

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self, supervised_keys=("image", "label"),
                features=tfds.features.FeaturesDict({
                    "image": tfds.features.Image(shape=(28, 28, 1)),
                    "label": tfds.features.ClassLabel(num_classes=10)}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(train_imgs),
                    "test": self._generate_examples(test_imgs)}

        def _generate_examples(self, imgs):
            for i, img in enumerate(imgs):
                yield i, {"image": Image.fromarray(img), "label": i % 10}

    Mnist(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
    ds = data.load("mnist", data_dir=str(tmp_path), val_size=1, normalize=False)
    assert ds.source.startswith("tfds:") and ds.source.endswith("mnist/3.0.1")
    # tfds shuffles on write: compare as sets of (image, label) pairs
    got = {(ds.train.x[i] * 255).round().astype(np.uint8).tobytes() + bytes([ds.train.y[i]])
           for i in range(5)}
    got.add((ds.val.x[0] * 255).round().astype(np.uint8).tobytes() + bytes([ds.val.y[0]]))
    want = {img[..., None].tobytes() + bytes([i % 10]) for i, img in enumerate(train_imgs)}
    assert got == want and ds.test.x.shape == (4, 28, 28, 1)


def test_synthetic_is_deterministic_and_learnable():
    a = data.synthetic(num_train=200, num_val=20, num_test=100, seed=3)
    b = data.synthetic(num_train=200, num_val=20, num_test=100, seed=3)
    np.testing.assert_array_equal(a.train.x, b.train.x)
    assert a.train.x.shape == (200, 28, 28, 1) and a.train.x.dtype == np.float32
    # nearest class mean (estimated on train) classifies the test set almost perfectly
    means = np.stack([a.train.x[a.train.y == c].mean(0) for c in range(10)]).reshape(10, -1)
    d = ((a.test.x.reshape(100, 1, -1) - means[None]) ** 2).sum(-1)
    assert (d.argmin(1) == a.test.y).mean() > 0.9


def test_augment_cifar_is_a_flip_and_crop_of_the_padded_image():
    x = jax.random.normal(jax.random.key(0), (6, 8, 8, 2))
    out = np.asarray(jax.jit(lambda x, k: data.augment_cifar(x, key=k, pad=2))(
        x, jax.random.key(1)))
    xn = np.asarray(x)
    flips = 0
    for i in range(6):
        found = False
        for flip in (False, True):
            img = xn[i, :, ::-1] if flip else xn[i]
            padded = np.pad(img, ((2, 2), (2, 2), (0, 0)))
            for dy in range(5):
                for dx in range(5):
                    if np.array_equal(padded[dy:dy + 8, dx:dx + 8], out[i]):
                        found, flips = True, flips + flip
        assert found, f"image {i} is not a flipped/cropped copy"
    a = data.augment_cifar(jnp.asarray(x), key=jax.random.key(1), pad=2)
    np.testing.assert_array_equal(a, out)  # deterministic in the key
    assert data.augmentation_for("cifar10") is data.augment_cifar
    assert data.augmentation_for("mnist") is None


def test_every_dataset_is_validated_and_errors_name_the_file(mnist_dir):
    d, _, _ = mnist_dir
    ds = data.digits()
    data.validate(ds)  # the loaders' datasets pass
    data.validate(data.synthetic(num_train=20, num_val=0, num_test=10, shape=(4, 4, 1)))
    # a label beyond MNIST's 10 classes in the IDX labels file: named, with its index
    _write_idx(d / "train-labels-idx1-ubyte.gz", np.array([0, 1, 2, 3, 4, 12, 6, 7, 8, 9, 0, 1]))
    with pytest.raises(ValueError, match=r"y_train in .*train-labels-idx1-ubyte\.gz has label 12 "
                                         r"at index 5, outside \[0, 10\)"):
        data.load("mnist", data_dir=str(d), val_size=3)
    # a NaN in an in-memory dataset (e.g. built by a driver): the split and image are named
    x = ds.test.x.copy()
    x[7, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match=r"dataset 'digits' from sklearn, split 'test': 1 pixel "
                                         r"value\(s\) are NaN or inf \(first in image 7\)"):
        data.Dataset("digits", ds.train, ds.val, data.Split(x, ds.test.y), 10,
                     source="sklearn")
