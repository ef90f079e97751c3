"""Straight-through N:M training (jaxsparse.nm.straight_through): STE, SR-STE, the optax form."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxsparse import nm


def test_sr_ste_gradient_equals_hand_computed_reference(reference_mask):
    params = {"d": {"kernel": jax.random.normal(jax.random.key(0), (8, 4)), "bias": jnp.ones(4)}}
    x = jax.random.normal(jax.random.key(1), (5, 8))

    def loss_of(p):
        return jnp.sum(jnp.tanh(x @ p["d"]["kernel"] + p["d"]["bias"][None]) ** 2)

    lam = 2e-4
    g = jax.grad(lambda p: loss_of(nm.sr_ste(p, 2, 4, lambda_w=lam)))(params)
    w = params["d"]["kernel"]
    mask = reference_mask(w, 2, 4, 0)
    ws = jnp.where(mask, w, 0)
    g_sparse = jax.grad(loss_of)({"d": {"kernel": ws, "bias": params["d"]["bias"]}})
    expect = g_sparse["d"]["kernel"] + lam * np.where(mask, 0, np.asarray(w))
    np.testing.assert_allclose(g["d"]["kernel"], expect, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(g["d"]["bias"], g_sparse["d"]["bias"], rtol=1e-6)
    # plain STE: no decay term; pruned entries still receive the dense gradient
    g0 = jax.grad(lambda p: loss_of(nm.ste(p)))(params)
    np.testing.assert_allclose(g0["d"]["kernel"], g_sparse["d"]["kernel"], rtol=1e-6)
    assert (np.asarray(g0["d"]["kernel"])[~mask] != 0).all()
    # the optax form (STE forward + sr_ste_decay) gives the same updates
    tx = nm.sr_ste_decay(2, 4, lambda_w=lam)
    upd, _ = tx.update(g0, tx.init(params), params)
    np.testing.assert_allclose(upd["d"]["kernel"], expect, rtol=1e-6, atol=1e-9)
    # the forward pass is the N:M-sparse weight
    np.testing.assert_array_equal(nm.sr_ste(params)["d"]["kernel"], ws)


def test_sr_ste_training_step_keeps_a_legal_forward():
    params = {"kernel": jax.random.normal(jax.random.key(0), (8, 4))}
    tx = optax.sgd(0.1)
    state = tx.init(params)

    @jax.jit
    def step(p, s):
        g = jax.grad(lambda q: jnp.sum(nm.sr_ste(q)["kernel"] ** 2))(p)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    for _ in range(3):
        params, state = step(params, state)
    assert nm.is_nm(nm.sr_ste(params), 2, 4, exact=True)
