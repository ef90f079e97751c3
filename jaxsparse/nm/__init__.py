"""N:M structured sparsity along the reduction dimension: hardware-legal masks and what uses them.

Sparse tensor cores run an N:M sparse GEMM only when every group of ``m`` consecutive entries
along the reduction (K) axis of the sparse operand keeps at most ``n``. The package, by concept:

* ``nm.axes``: the reduction axis of every layer type (``reduction_axis``, ``AxisRules``).
* ``nm.masks``: ``NM`` (the ``structure=`` of ``prune``), ``nm_mask``, ``nm_masks``, ``nm_keep``.
* ``nm.check``: ``is_nm`` (a bool) and ``nm_report`` (per leaf, printable).
* ``nm.straight_through``: ``sparse_weight``, ``sr_ste``, ``ste``, ``sr_ste_decay`` (SR-STE).
* ``nm.transposable``: ``transposable_mask``, ``transposable_patterns`` (``W`` and ``W^T``).
* ``nm.permutation``: ``search_permutation``, ``permute``, ``retained_magnitude``.
* ``nm.export``: ``compress`` / ``decompress`` (``NMCompressed``), ``nm_matmul``, ``memory``,
  ``to_cutlass`` / ``from_cutlass`` / ``export_cutlass``.

Every public name is re-exported here (``js.nm.sr_ste``); ``NM``, ``nm_mask``, ``nm_masks``,
``is_nm`` and ``reduction_axis`` are also at the top level (``js.nm_mask``).

>>> params = {"dense": {"kernel": jnp.arange(1.0, 9.0).reshape(4, 2), "bias": jnp.ones(2)}}
>>> masks = js.nm_masks(params, 2, 4)
>>> js.is_nm(js.apply_masks(params, masks), 2, 4), js.is_nm(params, 2, 4)
(True, False)
>>> js.nm.decompress(js.nm.compress(params["dense"]["kernel"], 2, 4))[:, 0]
Array([0., 0., 5., 7.], dtype=float32)
"""

from jaxsparse.nm.axes import AxisRules, group_axis, reduction_axis
from jaxsparse.nm.check import NMLeafReport, NMReport, is_nm, nm_report
from jaxsparse.nm.export import (
    NMCompressed,
    compress,
    decompress,
    export_cutlass,
    from_cutlass,
    memory,
    nm_matmul,
    to_cutlass,
)
from jaxsparse.nm.masks import NM, check_nm, group_keep, nm_keep, nm_mask, nm_masks
from jaxsparse.nm.permutation import permute, retained_magnitude, search_permutation
from jaxsparse.nm.straight_through import (
    SR_STE_LAMBDA,
    SRSTEDecayState,
    sparse_weight,
    sr_ste,
    sr_ste_decay,
    ste,
)
from jaxsparse.nm.transposable import transposable_mask, transposable_patterns

__all__ = [
    # axes and masks
    "AxisRules", "NM", "check_nm", "group_keep", "nm_keep", "nm_mask", "nm_masks",
    "group_axis", "reduction_axis",
    # checks
    "NMLeafReport", "NMReport", "is_nm", "nm_report",
    # straight-through training
    "SR_STE_LAMBDA", "SRSTEDecayState", "sparse_weight", "sr_ste", "sr_ste_decay", "ste",
    # transposable masks
    "transposable_mask", "transposable_patterns",
    # channel permutations
    "permute", "retained_magnitude", "search_permutation",
    # compressed export
    "NMCompressed", "compress", "decompress", "export_cutlass", "from_cutlass", "memory",
    "nm_matmul", "to_cutlass",
]
