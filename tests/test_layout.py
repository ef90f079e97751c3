"""The import graph: lower layers never import higher ones, nobody imports another's privates.

The layers are DESIGN.md's, low to high. A module may import modules of a LOWER layer and
modules of its own package; it may not import a module of the same layer (two concepts of one
layer stay independent) or of a higher layer, at the top of the file or inside a function.
No module, driver, notebook or benchmark uses another module's ``_private`` names.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Low to high. The name is the first component under ``jaxsparse`` (module or package).
LAYERS: tuple[tuple[str, ...], ...] = (
    ("typing",),
    ("rules", "data", "textdata", "testing"),
    ("flax_utils",),
    ("masks", "models"),
    ("scores",),
    ("select", "optim", "checkpoint"),
    ("nm",),
    ("pruners",),
    ("population",),
    ("sweep",),  # the deprecated alias of population
    ("train",),
    ("lottery", "supermask", "forgetting", "lca", "oneshot"),
    ("relearn",),
)
RANK = {name: i for i, names in enumerate(LAYERS) for name in names}
EXPERIMENT_SHARED = {"common", "cli", "plots", "configs"}  # what a driver may import


def _unit(module: str) -> str:
    """``jaxsparse.nm.masks`` -> ``nm``; ``jaxsparse`` -> ``""``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _module_name(path: pathlib.Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(tree: ast.AST, here: str) -> list[tuple[str, list[str], int]]:
    """Every (module, imported names, line) of a file, wherever the import statement is."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the importing package
                base = here.split(".")[: -node.level] if node.level else []
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.append((mod, [a.name for a in node.names], node.lineno))
    return out


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _files(*dirs: str) -> list[pathlib.Path]:
    return sorted(p for d in dirs for p in (ROOT / d).rglob("*.py") if ".venv" not in p.parts)


LIBRARY = _files("jaxsparse")


def test_every_library_unit_has_a_layer():
    units = {_unit(_module_name(p)) for p in LIBRARY} - {""}
    assert units - set(RANK) == set(), "give every module of jaxsparse/ a layer in LAYERS"


def test_lower_layers_never_import_higher_ones():
    bad = []
    for path in LIBRARY:
        here = _module_name(path)
        me = _unit(here)
        if me == "":  # the package's __init__ re-exports everything
            continue
        for mod, names, line in _imports(ast.parse(path.read_text()), here):
            targets = [mod] if mod != "jaxsparse" else [f"jaxsparse.{n}" for n in names]
            for target in targets:
                if not target.startswith("jaxsparse.") or _unit(target) in ("", me):
                    continue
                other = _unit(target)
                if RANK.get(other, len(LAYERS)) >= RANK.get(me, -1):
                    bad.append(f"{path.relative_to(ROOT)}:{line}: {me} (layer {RANK.get(me)}) "
                               f"imports {target} (layer {RANK.get(other)})")
    assert bad == [], "\n".join(bad)


def _private_uses(source: str, here: str, label: str) -> list[str]:
    """``from jaxsparse.x import _y`` and ``x._y`` where ``x`` names another jaxsparse module."""
    tree = ast.parse(source)
    bad, aliases = [], {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("jaxsparse"):
                    aliases[a.asname or a.name.split(".")[0]] = a.asname and a.name
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("jaxsparse"):
            for a in node.names:
                target = f"{node.module}.{a.name}"
                if _private(a.name) and node.module != here:
                    bad.append(f"{label}:{node.lineno}: imports {target}")
                aliases[a.asname or a.name] = target
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and _private(node.attr)
                and isinstance(node.value, ast.Name) and node.value.id in aliases):
            target = aliases[node.value.id] or node.value.id
            if target != here:
                bad.append(f"{label}:{node.lineno}: uses "
                           f"{node.value.id}.{node.attr} ({target})")
    return bad


@pytest.mark.parametrize("where", ["jaxsparse", "experiments", "benchmarks", "colab"])
def test_no_module_uses_another_modules_private_names(where):
    bad = [b for p in _files(where)
           for b in _private_uses(p.read_text(), _module_name(p), str(p.relative_to(ROOT)))]
    assert bad == [], "\n".join(bad)


def test_drivers_import_no_other_driver():
    drivers = {p.stem for p in (ROOT / "experiments").glob("*.py")} - EXPERIMENT_SHARED
    drivers.discard("__init__")
    bad = []
    for path in _files("experiments"):
        for mod, names, line in _imports(ast.parse(path.read_text()), _module_name(path)):
            targets = [mod] if mod != "experiments" else [f"experiments.{n}" for n in names]
            for target in targets:
                parts = target.split(".")
                if parts[0] == "experiments" and len(parts) > 1 and parts[1] in drivers:
                    if parts[1] != path.stem:
                        bad.append(f"{path.relative_to(ROOT)}:{line}: imports {target}")
    assert bad == [], "\n".join(bad)


def test_the_checker_sees_a_violation():
    """The checks can fail: private imports / uses and an upward import are all reported."""
    src = ("from jaxsparse.select import _hidden\nfrom jaxsparse import lottery\n"
           "import jaxsparse.rules as r\nlottery._x, r._y, lottery.imp\n")
    assert ("jaxsparse.select", ["_hidden"], 1) in _imports(ast.parse(src), "jaxsparse.masks")
    assert RANK[_unit("jaxsparse.lottery")] > RANK[_unit("jaxsparse.masks")]
    assert _private_uses(src, "jaxsparse.masks", "x.py") == [
        "x.py:1: imports jaxsparse.select._hidden",
        "x.py:4: uses lottery._x (jaxsparse.lottery)",
        "x.py:4: uses r._y (jaxsparse.rules)",
    ]
    # a module's own privates are its own business
    assert _private_uses("from jaxsparse.masks import _kept\n", "jaxsparse.masks", "m") == []
