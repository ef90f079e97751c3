"""Reference models: shapes, exact parameter counts, paper inits, the functional view."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxsparse import models


def n_params(factory) -> int:
    m = nnx.eval_shape(factory)
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(m, nnx.Param)))


def test_parameter_counts_match_the_papers():
    # LeNet-300-100: 784*300+300 + 300*100+100 + 100*10+10.
    assert n_params(lambda: models.LeNet300(rngs=nnx.Rngs(0))) == 266_610
    # Conv-2 / Conv-4 on CIFAR-10 (Frankle & Carbin 2019 Figure 2: 4.3M / 2.4M).
    assert n_params(lambda: models.ConvNet(blocks=1, rngs=nnx.Rngs(0))) == 4_301_642
    assert n_params(lambda: models.ConvNet(blocks=2, rngs=nnx.Rngs(0))) == 2_425_930
    # CIFAR ResNet-20 with 1x1 projection shortcuts (0.27M) and VGG-16 (14.7M).
    assert n_params(lambda: models.ResNet(rngs=nnx.Rngs(0))) == 272_474
    assert n_params(lambda: models.VGG16(rngs=nnx.Rngs(0))) == 14_728_266


SMALL = {
    "lenet300": dict(),
    "conv2": dict(width=4, fc=(16, 16)),
    "conv4": dict(width=4, fc=(16, 16)),
    "conv6": dict(width=4, fc=(16, 16)),
    "resnet20": dict(width=4),
    "vgg16": dict(width=2),
}
CLASSES = {"lenet300": models.LeNet300, "conv2": models.ConvNet, "conv4": models.ConvNet,
           "conv6": models.ConvNet, "resnet20": models.ResNet, "vgg16": models.VGG16}


@pytest.mark.parametrize("name", sorted(SMALL))
def test_every_model_fits_digits_shapes(name):
    # Abstract evaluation only (no compilation): every architecture accepts 8x8x1 inputs.
    kwargs = dict(SMALL[name], input_shape=(8, 8, 1), num_classes=7)
    if name.startswith("conv"):
        kwargs["blocks"] = int(name[-1]) // 2
    if name == "resnet20":
        kwargs["depth"] = 20
    model = nnx.eval_shape(lambda: CLASSES[name](**kwargs, rngs=nnx.Rngs(0)))
    assert model.head.out_features == 7  # the output layer is `head` everywhere
    out = jax.eval_shape(lambda m, x: m(x, train=True), model,
                         jax.ShapeDtypeStruct((3, 8, 8, 1), jnp.float32))
    assert out.shape == (3, 7)


@pytest.fixture(scope="module")
def lenet():
    return models.lenet300(key=jax.random.key(0), input_shape=(8, 8, 1), num_classes=7)


@pytest.fixture(scope="module")
def small_resnet():
    # depth 8 (one block per stage), width 16: the paper's channel counts, few layers.
    return models.functional(models.ResNet(depth=8, input_shape=(8, 8, 1), width=16,
                                           rngs=nnx.Rngs(0)))


def test_functional_matches_module_and_init_fn_is_pure(lenet):
    model = lenet
    x = jax.random.normal(jax.random.key(1), (3, 8, 8, 1))
    fn = models.functional(model)
    logits, state = jax.jit(lambda p, s, x: fn.apply_fn(p, s, x, train=False, key=None))(
        fn.params, fn.model_state, x)
    assert logits.shape == (3, 7)
    np.testing.assert_allclose(logits, model(x, train=False), rtol=1e-5, atol=1e-6)
    assert jax.tree.structure(state) == jax.tree.structure(fn.model_state)
    # init_fn: same key -> same params as the module built from that key
    p0, _ = jax.jit(fn.init_fn)(jax.random.key(0))
    for a, b in zip(jax.tree.leaves(p0), jax.tree.leaves(fn.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)  # jit vs eager sampling
    # vmappable over keys: a population of distinct inits
    ps, _ = jax.vmap(fn.init_fn)(jax.random.split(jax.random.key(3), 2))
    k0 = ps["head"]["kernel"]
    assert k0.shape == (2, 100, 7) and not np.array_equal(k0[0], k0[1])


def test_glorot_and_kaiming_inits(lenet, small_resnet):
    fn = models.functional(lenet)
    w = np.asarray(fn.params["fc0"]["kernel"])
    assert w.shape == (64, 300)
    assert abs(w.std() / np.sqrt(2 / (64 + 300)) - 1) < 0.03  # Glorot normal
    assert np.all(np.asarray(fn.params["fc0"]["bias"]) == 0)
    rn = small_resnet
    k = np.asarray(rn.params["s2b0"]["conv2"]["kernel"])  # 3x3x64x64
    assert abs(k.std() / np.sqrt(2 / (9 * 64)) - 1) < 0.02  # Kaiming normal, fan-in
    assert np.all(np.asarray(rn.params["s0b0"]["bn1"]["scale"]) == 1)


def test_batchnorm_state_updates_only_in_train_mode(small_resnet):
    fn = small_resnet
    x = jax.random.normal(jax.random.key(1), (4, 8, 8, 1)) + 3.0
    apply = jax.jit(fn.apply_fn, static_argnames="train")
    _, s_eval = apply(fn.params, fn.model_state, x, train=False, key=None)
    _, s_train = apply(fn.params, fn.model_state, x, train=True, key=None)
    m0 = fn.model_state["stem_bn"]["mean"]
    np.testing.assert_array_equal(s_eval["stem_bn"]["mean"], m0)
    assert not np.allclose(s_train["stem_bn"]["mean"], m0)


def test_linen_lenet_matches_nnx_lenet(lenet):
    nnx_fn = models.functional(lenet)
    lin_fn = models.functional(models.LeNet300Linen(input_shape=(8, 8, 1), num_classes=7))
    assert jax.tree.map(jnp.shape, lin_fn.params) == jax.tree.map(jnp.shape, nnx_fn.params)
    x = jax.random.normal(jax.random.key(1), (5, 8, 8, 1))
    a, _ = nnx_fn.apply_fn(nnx_fn.params, {}, x, train=True, key=jax.random.key(0))
    b, _ = lin_fn.apply_fn(nnx_fn.params, {}, x, train=True, key=jax.random.key(0))
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_functional_rejects_foreign_modules_without_init():
    class Foreign(nnx.Module):
        def __init__(self, rngs):
            self.lin = nnx.Linear(2, 2, rngs=rngs)

    with pytest.raises(ValueError, match="init="):
        models.functional(Foreign(nnx.Rngs(0)))
    fn = models.functional(Foreign(nnx.Rngs(0)), init=lambda k: Foreign(nnx.Rngs(k)))
    assert fn.init_fn(jax.random.key(0))[0]["lin"]["kernel"].shape == (2, 2)
    with pytest.raises(ValueError, match="blocks"):
        models.ConvNet(blocks=4, rngs=nnx.Rngs(0))
