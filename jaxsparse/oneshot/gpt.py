"""The bundled GPT (:mod:`jaxsparse.models.transformer`) as :class:`Blocks` for sequential pruning.

For another model, build :class:`Blocks` ``(embed, block, paths)`` the same way: ``embed``
maps the params and tokens to the first block's input, ``block`` runs one block on its own
params subtree, and ``paths`` names the blocks' subtrees in order.
"""

from __future__ import annotations

from typing import Any

import jax
from flax import nnx

from jaxsparse.models.transformer import Transformer
from jaxsparse.oneshot.sequential import Blocks
from jaxsparse.typing import PyTree


def _merged(graphdef: Any, template: Any, rest: Any, params: PyTree) -> nnx.Module:
    state = jax.tree.map(lambda a: a, template)  # a fresh State inside the current trace
    fn = getattr(nnx, "replace_by_pure_dict", None)
    if fn is not None:
        fn(state, params)
    else:
        state.replace_by_pure_dict(params)
    return nnx.merge(graphdef, state, rest)


def gpt_blocks(model: Transformer) -> Blocks:
    """The model as ``embed`` + per-block functions on its pure params dict, for
    :func:`jaxsparse.oneshot.prune` (sequential calibration, block by block).

    Returns:
      :class:`Blocks` ``(embed, block, paths)``: ``embed(params, tokens) -> h``,
      ``block(block_params, h) -> h`` and ``paths = ("block0", "block1", ...)``.

    >>> m = models.gpt(key=jax.random.key(0), d_model=16, num_layers=2, num_heads=2,
    ...                d_ff=32, max_len=8)
    >>> bl, params = gpt_blocks(m), models.functional(m).params
    >>> h = bl.embed(params, jnp.zeros((2, 8), jnp.int32))
    >>> bl.paths, bl.block(params["block0"], h).shape
    (('block0', 'block1'), (2, 8, 16))
    """
    num_layers = model.config["num_layers"]
    gd_model, p_model, r_model = nnx.split(model, nnx.Param, ...)
    gd_block, p_block, r_block = nnx.split(model.block0, nnx.Param, ...)
    shape = lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype)  # noqa: E731
    t_model, t_block = jax.tree.map(shape, p_model), jax.tree.map(shape, p_block)

    def embed(params: PyTree, tokens: jax.Array) -> jax.Array:
        return _merged(gd_model, t_model, r_model, params).embed_tokens(tokens)

    def block(block_params: PyTree, h: jax.Array) -> jax.Array:
        return _merged(gd_block, t_block, r_block, block_params)(h)

    return Blocks(embed, block, tuple(f"block{i}" for i in range(num_layers)))


__all__ = ["gpt_blocks"]
