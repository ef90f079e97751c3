"""The per-example record of populations: a directory of Parquet parts, resumable, columnar.

A *record* is a directory of Parquet files (``<part>.parquet``), one per finished piece of
work (a sparsity level, a compressed variant), each written to a temporary name and
renamed into place, so a killed writer leaves no visible part: :func:`parts` and
:func:`read` only see complete files, and a relaunch rewrites the missing parts
(:func:`has_part`). Any Parquet reader opens it (``pandas.read_parquet(dir)``,
``polars.read_parquet(f"{dir}/*.parquet")``, duckdb ``read_parquet('dir/*.parquet')``).

One row per (member, example). Schema (version 1):

==============  =====================  ====================================================
column          type                   meaning
==============  =====================  ====================================================
``variant``     string                 the population: ``"sparsity=0.9"``, ``"int8"``, ...
``sparsity``    float64                fraction of prunable weights pruned (NaN: not given)
``member``      int32                  member index ``0..K-1`` within the variant
``seed``        int64                  the member's seed
``checkpoint``  int64                  training step of the predictions
``split``       string                 ``"train"``, ``"test"``, ...
``example_id``  int64                  the example's index in its split
``label``       int32                  label scored against (the training label on train)
``predicted``   int32                  predicted label
``correct``     bool                   ``predicted == label``
``logits``      fixed_size_list<float  the member's logits (``values="logits"``, ``layout=
                32>[C]                 "list"``), or ``probs`` with the probabilities
``logit_0`` …   float32                ``layout="columns"``: one column per class instead
==============  =====================  ====================================================

The schema's metadata key ``jaxsparse.record`` holds JSON ``{"version": 1, "values":
"logits" | "probs" | "none", "layout": "list" | "columns", "num_classes": C}``.
:func:`load` turns the rows of one (variant, split, checkpoint) back into a
:class:`jaxsparse.forgetting.Population` (device arrays), bitwise equal to what was written.

>>> import tempfile
>>> pop = forgetting.population("dense", labels=jnp.array([0, 1]),
...                             logits=jnp.array([[[1.0, 0.0], [0.0, 2.0]]]))
>>> root = tempfile.mkdtemp()
>>> _ = write_part(root, "level_00", to_table(pop, sparsity=0.0))
>>> parts(root), load(root, "dense", split="test").predicted.tolist()
(['level_00'], [[0, 1]])
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Sequence
from typing import Any, Literal

import jax.numpy as jnp
import numpy as np

from jaxsparse.forgetting.predictions import Population, check_finite, population

SCHEMA_VERSION = 1
METADATA_KEY = b"jaxsparse.record"
VALUES = ("logits", "probs", "none")
LAYOUTS = ("list", "columns")
_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=+-]*$")
_SUFFIX = ".parquet"


def _pa():
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as e:  # pragma: no cover - pyarrow is in the experiments extra
        raise ImportError("jaxsparse.forgetting.records needs pyarrow: pip install pyarrow") from e
    return pa, pq


def to_table(
    pop: Population,
    *,
    values: Literal["logits", "probs", "none"] = "logits",
    layout: Literal["list", "columns"] = "list",
    sparsity: float = float("nan"),
):
    """The rows of one population as a ``pyarrow.Table`` (schema in the module docstring).

    Args:
      pop: the population (its ``name`` is the ``variant``).
      values: what to store per row: ``"logits"`` (needs a population with logits),
        ``"probs"`` (the softmax of the logits, or the stored probabilities) or ``"none"``.
      layout: ``"list"`` (one fixed-size list column) or ``"columns"`` (one per class).
      sparsity: the variant's sparsity (fraction pruned), stored in every row.
    """
    pa, _ = _pa()
    if values not in VALUES:
        raise ValueError(f"values must be one of {VALUES}, got {values!r}")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if values == "logits" and pop.kind != "logits":
        raise ValueError(f"population {pop.name!r} holds {pop.kind}, not logits: store "
                         f"values={'probs' if pop.kind == 'probs' else 'none'!r}")
    if values == "probs" and pop.kind == "none":
        raise ValueError(f"population {pop.name!r} holds no logits or probabilities: store "
                         "values='none'")
    k, n, c = pop.size, pop.num_examples, pop.num_classes
    rows = k * n
    cols: dict[str, Any] = {
        "variant": pa.array([pop.name] * rows, pa.string()),
        "sparsity": pa.array(np.full(rows, sparsity, np.float64)),
        "member": pa.array(np.repeat(np.arange(k, dtype=np.int32), n)),
        "seed": pa.array(np.repeat(pop.seeds.astype(np.int64), n)),
        "checkpoint": pa.array(np.full(rows, pop.checkpoint, np.int64)),
        "split": pa.array([pop.split] * rows, pa.string()),
        "example_id": pa.array(np.tile(pop.example_ids.astype(np.int64), k)),
        "label": pa.array(np.tile(np.asarray(pop.labels, np.int32), k)),
        "predicted": pa.array(np.asarray(pop.predicted, np.int32).reshape(-1)),
        "correct": pa.array(np.asarray(pop.correct).reshape(-1)),
    }
    if values != "none":
        v = np.asarray(pop.values if values == pop.kind else pop.probs, np.float32)
        check_finite(v, name=pop.name, kind=values, example_ids=pop.example_ids, seeds=pop.seeds)
        flat = v.reshape(rows, c)
        prefix = "logit" if values == "logits" else "prob"
        if layout == "list":
            cols[values] = pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), c)
        else:
            for j in range(c):
                cols[f"{prefix}_{j}"] = pa.array(np.ascontiguousarray(flat[:, j]))
    meta = {"version": SCHEMA_VERSION, "values": values, "layout": layout, "num_classes": c}
    return pa.table(cols).replace_schema_metadata({METADATA_KEY: json.dumps(meta)})


def _path(root: str, part: str) -> str:
    if not _PART.match(part):
        raise ValueError(f"part name {part!r} must match {_PART.pattern}")
    return os.path.join(root, part + _SUFFIX)


def write_part(root: str, part: str, tables: Any) -> str:
    """Writes ``tables`` (one ``pyarrow.Table`` or several of one schema) as part ``part``.

    Atomic: written to ``<part>.parquet.tmp-<pid>`` and renamed, so readers never see a
    half-written part; an existing part of that name is replaced. Returns the path.
    """
    pa, pq = _pa()
    tables = [tables] if isinstance(tables, pa.Table) else list(tables)
    if not tables:
        raise ValueError(f"part {part!r}: nothing to write")
    for i, t in enumerate(tables[1:], 1):
        if t.schema != tables[0].schema or _meta(t.schema, part) != _meta(tables[0].schema, part):
            raise ValueError(f"part {part!r}: table {i} has a different schema than table 0")
    os.makedirs(root, exist_ok=True)
    path = _path(root, part)
    tmp = f"{path}.tmp-{os.getpid()}"
    table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def parts(root: str) -> list[str]:
    """Names of the complete parts of the record at ``root`` (sorted); ``[]`` if none."""
    if not os.path.isdir(root):
        return []
    return sorted(f[: -len(_SUFFIX)] for f in os.listdir(root) if f.endswith(_SUFFIX))


def has_part(root: str, part: str) -> bool:
    """Whether part ``part`` was completely written."""
    return os.path.exists(_path(root, part))


def _meta(schema, where: str) -> dict:
    raw = (schema.metadata or {}).get(METADATA_KEY)
    if raw is None:
        raise ValueError(f"{where}: not a jaxsparse record (no {METADATA_KEY.decode()!r} schema "
                         "metadata)")
    meta = json.loads(raw)
    if meta.get("version") != SCHEMA_VERSION:
        raise ValueError(f"{where}: record schema version {meta.get('version')}, this jaxsparse "
                         f"reads version {SCHEMA_VERSION}")
    return meta


def read(root: str, *, only: Sequence[str] | None = None, filters: Any = None):
    """The complete parts of the record at ``root`` as one ``pyarrow.Table``.

    Args:
      root: the record directory.
      only: part names to read (default all); a missing one is an error.
      filters: passed to ``pyarrow.parquet.read_table`` (e.g. ``[("split", "=", "test")]``).
    """
    pa, pq = _pa()
    names = parts(root)
    if only is not None:
        missing = sorted(set(only) - set(names))
        if missing:
            raise FileNotFoundError(f"record {root} has no part {missing} (has {names})")
        names = [p for p in names if p in set(only)]
    if not names:
        raise FileNotFoundError(f"record {root} has no complete parts")
    tables, first = [], None
    for name in names:
        t = pq.read_table(_path(root, name), filters=filters)
        meta = _meta(t.schema, f"part {name!r} of {root}")
        if first is None:
            first = (name, t.schema.remove_metadata(), meta)
        elif t.schema.remove_metadata() != first[1] or meta != first[2]:
            raise ValueError(f"part {name!r} of {root} has a different schema or layout than part "
                             f"{first[0]!r} ({meta} vs {first[2]})")
        tables.append(t)
    return pa.concat_tables(tables)


def _column(table, name: str) -> np.ndarray:
    return table.column(name).to_numpy()


def load(
    source: Any,
    variant: str,
    *,
    split: str,
    checkpoint: int | None = None,
) -> Population:
    """One population from a record (a directory or a table from :func:`read`).

    Args:
      source: the record directory, or a ``pyarrow.Table`` read from one.
      variant: the population's ``variant``; a missing one is an error listing those present.
      split: the split.
      checkpoint: the checkpoint; default the largest one recorded for that variant and split.

    Returns:
      A :class:`jaxsparse.forgetting.Population` with members ordered by ``member`` and
      examples in the order member 0 was written; every member must cover exactly the same
      example ids (each once) with the same labels, else the error names the member.
    """
    import pyarrow.compute as pc

    table = read(source) if isinstance(source, str) else source
    meta = _meta(table.schema, "record")
    rows = table.filter(pc.and_(pc.equal(table["variant"], variant),
                                pc.equal(table["split"], split)))
    if rows.num_rows == 0:
        present = sorted({(v, s) for v, s in zip(table["variant"].to_pylist(),
                                                  table["split"].to_pylist(), strict=True)})
        raise ValueError(f"record has no rows for variant {variant!r} on split {split!r} "
                         f"(present: {present})")
    ckpts = np.unique(_column(rows, "checkpoint"))
    if checkpoint is None:
        checkpoint = int(ckpts.max())
    elif checkpoint not in ckpts:
        raise ValueError(f"record has no checkpoint {checkpoint} for variant {variant!r} on "
                         f"split {split!r} (has {ckpts.tolist()})")
    rows = rows.filter(pc.equal(rows["checkpoint"], checkpoint))
    member = _column(rows, "member")
    order = np.argsort(member, kind="stable")
    member = member[order]
    ids_all = _column(rows, "example_id")[order]
    labels_all = _column(rows, "label")[order]
    pred_all = _column(rows, "predicted")[order]
    seeds_all = _column(rows, "seed")[order]
    members, starts, counts = np.unique(member, return_index=True, return_counts=True)
    where = f"variant {variant!r}, split {split!r}, checkpoint {checkpoint}"
    if not np.array_equal(members, np.arange(len(members))):
        raise ValueError(f"{where}: members {members.tolist()} are not 0..{len(members) - 1}")
    n = int(counts[0])
    ids0 = ids_all[:n]
    if len(np.unique(ids0)) != n:
        raise ValueError(f"{where}: member 0 has repeated example ids (duplicate parts?)")
    sort0 = np.argsort(ids0)
    perms = []
    for m, s, cnt in zip(members, starts, counts, strict=True):
        ids = ids_all[s:s + cnt]
        if cnt != n or not np.array_equal(np.sort(ids), ids0[sort0]):
            extra = np.setdiff1d(ids, ids0)[:3].tolist()
            lacking = np.setdiff1d(ids0, ids)[:3].tolist()
            raise ValueError(f"{where}: member {m} (seed {int(seeds_all[s])}) covers a different "
                             f"example set than member 0 ({cnt} vs {n} rows; ids not in member "
                             f"0: {extra}, missing: {lacking}; duplicate parts?)")
        # rows of member m in member 0's example order
        perm = s + np.argsort(ids, kind="stable")[np.argsort(sort0)]
        if not np.array_equal(labels_all[perm], labels_all[:n]):
            e = int(np.argmax(labels_all[perm] != labels_all[:n]))
            raise ValueError(f"{where}: member {m} has label {int(labels_all[perm][e])} for "
                             f"example {int(ids0[e])}, member 0 has {int(labels_all[e])}")
        perms.append(perm)
    perm = np.concatenate(perms)
    k, c = len(members), int(meta["num_classes"])
    vals, kind = None, meta["values"]
    if kind != "none":
        prefix = "logit" if kind == "logits" else "prob"
        if meta["layout"] == "list":
            flat = rows.column(kind).combine_chunks().flatten().to_numpy(zero_copy_only=False)
            v = flat.reshape(-1, c)
        else:
            v = np.stack([_column(rows, f"{prefix}_{j}") for j in range(c)], axis=1)
        vals = jnp.asarray(v[order][perm].reshape(k, n, c))
    return population(
        variant, labels=jnp.asarray(labels_all[:n]),
        predicted=jnp.asarray(pred_all[perm].reshape(k, n)), num_classes=c,
        example_ids=ids0, seeds=seeds_all[starts], split=split, checkpoint=int(checkpoint),
        **({} if vals is None else {kind: vals}))


def load_many(
    source: Any,
    variants: Sequence[str],
    *,
    split: str,
    checkpoint: int | None = None,
) -> dict[str, Population]:
    """``{variant: Population}`` for several variants; a variant not recorded is an error.

    Every population must cover the same examples as the first (the error names both).
    """
    table = read(source) if isinstance(source, str) else source
    present = sorted(set(table["variant"].to_pylist()))
    missing = [v for v in variants if v not in present]
    if missing:
        raise ValueError(f"record has no level / variant {missing} (present: {present})")
    from jaxsparse.forgetting.predictions import check_comparable

    out = {v: load(table, v, split=split, checkpoint=checkpoint) for v in variants}
    first = next(iter(out.values()), None)
    for pop in out.values():
        check_comparable(first, pop)
    return out


def index(source: Any) -> list[dict[str, Any]]:
    """One dict per (variant, split, checkpoint): ``members``, ``examples``, ``sparsity``."""
    table = read(source) if isinstance(source, str) else source
    keys = ["variant", "split", "checkpoint"]
    g = table.group_by(keys).aggregate(
        [("member", "count_distinct"), ("member", "count"), ("sparsity", "min")]).to_pylist()
    out = []
    for r in sorted(g, key=lambda r: tuple(r[k] for k in keys)):
        k = r["member_count_distinct"]
        sp = r["sparsity_min"]
        out.append({**{key: r[key] for key in keys}, "members": k,
                    "examples": r["member_count"] // k,
                    "sparsity": float("nan") if sp is None or math.isnan(sp) else sp})
    return out
