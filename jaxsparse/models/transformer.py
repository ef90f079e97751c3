"""A small decoder-only transformer (NNX) for byte-level language modelling and one-shot pruning.

Pre-LayerNorm GPT-style blocks: ``h + attn(ln1(h))``, then ``h + mlp(ln2(h))``; causal
multi-head self-attention with separate 2-D ``query`` / ``key`` / ``value`` / ``out`` kernels
``[d_model, d_model]`` and an MLP ``fc1 [d_model, d_ff]`` - GELU - ``fc2 [d_ff, d_model]``.
Every kernel is laid out ``[in, out]`` (``y = x @ W``), so its reduction axis is 0 and N:M
groups (``jaxsparse.NM``) are unambiguous. Learned token and position embeddings, a final
LayerNorm and an untied ``head [d_model, vocab]``. Initialisation as GPT-2: normal(0.02)
kernels and embeddings, zero biases, unit LayerNorm scales.

Parameter paths (``functional(model).params``): ``embed/embedding``, ``pos_embedding``,
``block{i}/ln1/{scale,bias}``, ``block{i}/attn/{query,key,value,out}/{kernel,bias}``,
``block{i}/ln2/...``, ``block{i}/mlp/{fc1,fc2}/{kernel,bias}``, ``ln_f/...``, ``head/kernel``.

>>> model = gpt(key=jax.random.key(0), d_model=32, num_layers=2, num_heads=2,
...                     d_ff=64, max_len=16)
>>> model(jnp.zeros((3, 16), jnp.int32)).shape  # [batch, time, vocab] next-byte logits
(3, 16, 256)
>>> fn = models.functional(model)
>>> fn.params["block0"]["attn"]["query"]["kernel"].shape
(32, 32)

References:
  Vaswani et al. 2017, "Attention Is All You Need"; Radford et al. 2019 (GPT-2): pre-LN
  blocks and the 0.02 initialisation.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxsparse.typing import PyTree

NORMAL = nnx.initializers.normal(0.02)
ZEROS = nnx.initializers.zeros_init()


def _linear(a: int, b: int, rngs: nnx.Rngs) -> nnx.Linear:
    return nnx.Linear(a, b, kernel_init=NORMAL, bias_init=ZEROS, rngs=rngs)


class CausalSelfAttention(nnx.Module):
    """Causal multi-head self-attention with 2-D ``[d_model, d_model]`` projections."""

    def __init__(self, d_model: int, num_heads: int, *, rngs: nnx.Rngs):
        if d_model % num_heads:
            raise ValueError(f"d_model={d_model} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.query = _linear(d_model, d_model, rngs)
        self.key = _linear(d_model, d_model, rngs)
        self.value = _linear(d_model, d_model, rngs)
        self.out = _linear(d_model, d_model, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        b, t, d = x.shape
        h = self.num_heads
        q, k, v = (f(x).reshape(b, t, h, d // h) for f in (self.query, self.key, self.value))
        s = jnp.einsum("bthd,bshd->bhts", q, k) / math.sqrt(d // h)
        causal = jnp.tril(jnp.ones((t, t), bool))[None, None]
        s = jnp.where(causal, s, jnp.finfo(s.dtype).min)
        o = jnp.einsum("bhts,bshd->bthd", jax.nn.softmax(s, axis=-1), v)
        return self.out(o.reshape(b, t, d))


class MLP(nnx.Module):
    """``fc2(gelu(fc1(x)))``."""

    def __init__(self, d_model: int, d_ff: int, *, rngs: nnx.Rngs):
        self.fc1 = _linear(d_model, d_ff, rngs)
        self.fc2 = _linear(d_ff, d_model, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(jax.nn.gelu(self.fc1(x)))


class Block(nnx.Module):
    """One pre-LN transformer block: ``h + attn(ln1(h))``, then ``h + mlp(ln2(h))``."""

    def __init__(self, d_model: int, num_heads: int, d_ff: int, *, rngs: nnx.Rngs):
        self.ln1 = nnx.LayerNorm(d_model, rngs=rngs)
        self.attn = CausalSelfAttention(d_model, num_heads, rngs=rngs)
        self.ln2 = nnx.LayerNorm(d_model, rngs=rngs)
        self.mlp = MLP(d_model, d_ff, rngs=rngs)

    def __call__(self, h: jax.Array) -> jax.Array:
        h = h + self.attn(self.ln1(h))
        return h + self.mlp(self.ln2(h))


class Transformer(nnx.Module):
    """Decoder-only byte-level language model: tokens ``[batch, time]`` -> logits.

    Args:
      vocab_size: number of token ids (256 for bytes).
      d_model, num_layers, num_heads, d_ff: width, depth, heads, MLP width.
      max_len: longest sequence (size of the learned position table).
      rngs: ``nnx.Rngs`` for the initialisation.
    """

    def __init__(self, *, vocab_size: int = 256, d_model: int = 128, num_layers: int = 2,
                 num_heads: int = 4, d_ff: int = 512, max_len: int = 128, rngs: nnx.Rngs):
        self.config = dict(vocab_size=int(vocab_size), d_model=int(d_model),
                           num_layers=int(num_layers), num_heads=int(num_heads),
                           d_ff=int(d_ff), max_len=int(max_len))
        self.embed = nnx.Embed(vocab_size, d_model, embedding_init=NORMAL, rngs=rngs)
        self.pos_embedding = nnx.Param(NORMAL(rngs.params(), (max_len, d_model)))
        for i in range(num_layers):
            setattr(self, f"block{i}", Block(d_model, num_heads, d_ff, rngs=rngs))
        self.ln_f = nnx.LayerNorm(d_model, rngs=rngs)
        self.head = nnx.Linear(d_model, vocab_size, use_bias=False, kernel_init=NORMAL,
                               rngs=rngs)

    def embed_tokens(self, tokens: jax.Array) -> jax.Array:
        """Token + position embeddings ``[batch, time, d_model]`` (checks the tokens)."""
        check_tokens(tokens, self.config["max_len"], self.config["vocab_size"])
        t = tokens.shape[1]
        return self.embed(tokens) + self.pos_embedding[...][None, :t]

    def logits(self, h: jax.Array) -> jax.Array:
        """Final LayerNorm and the output projection."""
        return self.head(self.ln_f(h))

    def __call__(self, tokens: jax.Array, *, train: bool = False) -> jax.Array:
        del train  # no dropout
        h = self.embed_tokens(tokens)
        for i in range(self.config["num_layers"]):
            h = getattr(self, f"block{i}")(h)
        return self.logits(h)


def check_tokens(tokens: Any, max_len: int, vocab_size: int | None = None) -> None:
    """Raises a clear error unless ``tokens`` is an integer ``[batch, time]`` array that fits."""
    shape = np.shape(tokens)
    dtype = tokens.dtype if hasattr(tokens, "dtype") else np.asarray(tokens).dtype
    if not jnp.issubdtype(dtype, jnp.integer):
        raise TypeError(f"transformer: tokens must be integer ids, got dtype {dtype} "
                        f"(shape {shape})")
    if len(shape) != 2:
        raise ValueError(f"transformer: tokens must be [batch, time], got shape {shape}")
    if shape[1] > max_len:
        raise ValueError(f"transformer: sequence length {shape[1]} exceeds max_len={max_len}")
    if vocab_size is not None and not isinstance(tokens, jax.core.Tracer):
        a = np.asarray(tokens)
        if a.size and (a.min() < 0 or a.max() >= vocab_size):
            raise ValueError(f"transformer: token ids must be in [0, {vocab_size}), got "
                             f"[{a.min()}, {a.max()}]")


def gpt(*, key: jax.Array, **kwargs) -> Transformer:
    """A freshly initialised :class:`Transformer` (keyword arguments as the class)."""
    return Transformer(rngs=nnx.Rngs(key), **kwargs)


# ---------------------------------------------------------------------------------------
# Language-model loss and perplexity.


def next_token_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-sequence mean next-token cross-entropy (nats): ``[B, T, V]``, ``[B, T]`` -> ``[B]``.

    The ``loss_fn`` for :func:`jaxsparse.train.fit` with ``x = tokens[:, :-1]``,
    ``y = tokens[:, 1:]``.

    >>> float(next_token_loss(jnp.zeros((1, 2, 4)), jnp.zeros((1, 2), jnp.int32))[0])  # ln 4
    1.386...
    """
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels), axis=-1)


@functools.partial(jax.jit, static_argnames=("apply_fn",))
def _total_loss(params: PyTree, model_state: PyTree, windows: jax.Array, weight: jax.Array, *,
                apply_fn: Callable[..., Any]) -> jax.Array:
    def body(carry, batch):
        tok, wb = batch
        logits, _ = apply_fn(params, model_state, tok[:, :-1], train=False,
                             key=jax.random.key(0))
        return carry + jnp.sum(next_token_loss(logits, tok[:, 1:]) * wb), None

    return jax.lax.scan(body, jnp.zeros((), jnp.float32), (windows, weight))[0]


def perplexity(apply_fn: Callable[..., Any], params: PyTree, windows: Any, *,
               model_state: PyTree | None = None, batch_size: int = 64) -> float:
    """``exp`` of the mean next-token cross-entropy over token windows ``[N, T + 1]``.

    Every window predicts its last ``T`` tokens from the ones before; the mean runs over all
    ``N * T`` predictions (the last partial batch is padded and weighted out). One compiled
    scan, reused by later calls with the same ``apply_fn`` object and shapes.

    Args:
      apply_fn: ``apply_fn(params, model_state, x, *, train, key) -> (logits, state)``
        (:func:`jaxsparse.models.functional`).
      params: the (pruned) params.
      windows: integer array ``[N, T + 1]``.
      model_state: default ``{}``.
      batch_size: windows per forward pass.

    Returns:
      The perplexity as a Python float.

    >>> fn = models.functional(gpt(key=jax.random.key(0), d_model=16, num_layers=1,
    ...                            num_heads=2, d_ff=32, max_len=8))
    >>> 200 < perplexity(fn.apply_fn, fn.params, jnp.zeros((3, 9), jnp.int32)) < 300  # ~256
    True
    """
    w = jnp.asarray(windows)
    check_tokens(w, max_len=w.shape[-1] if w.ndim == 2 else 0)
    n = w.shape[0]
    bs = min(batch_size, n)
    nb = -(-n // bs)
    wp = jnp.concatenate([w, jnp.zeros((nb * bs - n, w.shape[1]), w.dtype)])
    weight = (jnp.arange(nb * bs) < n).astype(jnp.float32).reshape(nb, bs)
    total = _total_loss(params, {} if model_state is None else model_state,
                        wp.reshape(nb, bs, -1), weight, apply_fn=apply_fn)
    return float(np.exp(float(total) / n))  # equal-length windows: mean of the means


__all__ = ["Block", "CausalSelfAttention", "MLP", "Transformer", "check_tokens", "gpt",
           "next_token_loss", "perplexity"]
