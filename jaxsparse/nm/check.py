"""Is a tree N:M along its reduction axes? ``is_nm`` answers with a bool, ``nm_report`` per leaf.

Every prunable leaf is checked along its true reduction axis
(:func:`jaxsparse.nm.reduction_axis`, ``axis_rules``), the orientation the sparse tensor core
sees: a leaf whose axis is unknown raises a ``ValueError`` naming it, never a guess.

>>> w = jnp.array([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0], [0.0, 0.0]])
>>> is_nm({"kernel": w}, 2, 4), is_nm({"kernel": jnp.ones((4, 2))}, 2, 4)
(True, False)
>>> nm_report({"kernel": jnp.ones((4, 2))}, 2, 4).rows[0].bad_groups
2
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxsparse import rules as rules_lib
from jaxsparse.nm.axes import AxisRules
from jaxsparse.nm.masks import NM, check_nm
from jaxsparse.typing import PyTree


@dataclasses.dataclass(frozen=True)
class NMLeafReport:
    """One leaf of an :class:`NMReport`.

    Attributes:
      path, shape: the leaf; axis: the reduction axis it was checked along.
      groups: number of groups of ``m``; bad_groups: groups that break the rule.
      max_kept, min_kept: the most / fewest nonzeros in one group.
      error: why the leaf could not be grouped (axis length not divisible by ``m``), or ``""``.
    """

    path: str
    shape: tuple[int, ...]
    axis: int
    groups: int
    bad_groups: int
    max_kept: int
    min_kept: int
    error: str = ""

    @property
    def ok(self) -> bool:
        """True iff the leaf could be grouped and every group obeys the rule."""
        return not self.error and self.bad_groups == 0


@dataclasses.dataclass(frozen=True)
class NMReport:
    """Per-leaf N:M validation; ``ok`` is True iff every checked leaf is legal.

    ``str(report)`` is a table, one line per leaf, ending in ``LEGAL`` or ``NOT LEGAL``.
    """

    n: int
    m: int
    exact: bool
    rows: tuple[NMLeafReport, ...]

    @property
    def ok(self) -> bool:
        """True iff every checked leaf is legal."""
        return all(r.ok for r in self.rows)

    def __bool__(self) -> bool:
        return self.ok

    def __str__(self) -> str:
        want = f"exactly {self.n}" if self.exact else f"at most {self.n}"
        lines = [f"N:M {self.n}:{self.m} check ({want} nonzero per group of {self.m})"]
        for r in self.rows:
            status = "ok" if r.ok else (r.error or f"{r.bad_groups}/{r.groups} groups illegal")
            lines.append(
                f"  {r.path:<32} {str(r.shape):<18} axis={r.axis:<2} kept/group="
                f"[{r.min_kept},{r.max_kept}]  {status}"
            )
        lines.append(f"  -> {'LEGAL' if self.ok else 'NOT LEGAL'}")
        return "\n".join(lines)


def nm_report(
    tree: PyTree,
    n: int = 2,
    m: int = 4,
    *,
    exact: bool = False,
    rules: rules_lib.Rules | None = None,
    axis_rules: AxisRules | None = None,
) -> NMReport:
    """Checks every prunable leaf of ``tree`` (params or masks) for N:M along its reduction
    axis; returns a per-leaf report.

    An entry counts as kept when it is nonzero (``True`` for masks). Hardware needs *at most*
    ``n`` kept per group (``exact=False``); ``exact=True`` demands exactly ``n``. Leaves that
    cannot be grouped (axis length not divisible by ``m``) are reported with an error naming
    the path and shape. Non-prunable leaves (``rules``; scalar mask leaves) are skipped.

    Args:
      tree: params or masks (any pytree of arrays).
      n, m: the structure: at most (or exactly) ``n`` nonzeros per group of ``m``.
      exact: demand exactly ``n`` per group.
      rules: which leaves are prunable (as in :func:`jaxsparse.ones_like`).
      axis_rules: per-path reduction-axis overrides (see :class:`jaxsparse.NM`).

    Returns:
      An :class:`NMReport`: ``.ok``, ``.rows`` (one :class:`NMLeafReport` per checked leaf),
      and a printable table.

    Raises:
      ValueError: a leaf whose reduction axis is unknown (named with its shape).

    >>> w = jnp.array([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0], [0.0, 0.0]])
    >>> row = nm_report({"kernel": w}, 2, 4).rows[0]
    >>> row.path, row.axis, row.max_kept, row.ok
    ('kernel', 0, 2, True)
    """
    check_nm(n, m)
    rules = rules_lib.check_rules(rules)
    structure = NM(n, m, axis_rules=tuple(axis_rules or ()))
    rows = []
    for path, leaf in rules_lib.leaves_with_paths(tree):
        if np.ndim(leaf) == 0 or not rules_lib.prunable(rules, path, leaf):
            continue
        x = np.asarray(leaf)
        axis = structure.axis_for(path, x.shape)
        if x.shape[axis] % m:
            err = (
                f"dimension {axis} of shape {x.shape} has size {x.shape[axis]}, "
                f"not divisible by m={m}"
            )
            rows.append(NMLeafReport(path, x.shape, axis, 0, 0, 0, 0, err))
            continue
        nz = np.moveaxis(x != 0, axis, -1)
        counts = nz.reshape(nz.shape[:-1] + (-1, m)).sum(-1)
        bad = (counts != n) if exact else (counts > n)
        rows.append(
            NMLeafReport(
                path, x.shape, axis, int(counts.size), int(bad.sum()),
                int(counts.max(initial=0)), int(counts.min()) if counts.size else 0,
            )
        )
    return NMReport(n, m, exact, tuple(rows))


def is_nm(
    tree: PyTree,
    n: int = 2,
    m: int = 4,
    *,
    exact: bool = False,
    rules: rules_lib.Rules | None = None,
    axis_rules: AxisRules | None = None,
) -> bool:
    """True iff every prunable leaf of ``tree`` (params or masks) is N:M along its reduction
    axis (at most ``n`` nonzeros per group of ``m``; exactly ``n`` with ``exact=True``).

    The arguments and the checks are :func:`nm_report`'s (which says which leaf fails and
    why); a leaf that cannot be grouped counts as not N:M, a leaf whose reduction axis is
    unknown raises a ``ValueError`` naming it.

    >>> w = jnp.array([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0], [0.0, 0.0]])
    >>> is_nm({"kernel": w}, 2, 4), is_nm({"kernel": w}, 2, 4, exact=True)
    (True, False)
    """
    return nm_report(tree, n, m, exact=exact, rules=rules, axis_rules=axis_rules).ok
