"""The colab/ notebooks: each runs top to bottom in smoke mode on CPU and renders its plots.

The jupytext percent-format ``colab/NN_name.py`` is the source of truth: the test executes the
notebook built from it (with jupytext's API) and checks that the committed ``.ipynb`` twin has
the same cells and no outputs. Kernels are this interpreter (``sys.executable``), started
from a kernelspec written to a temporary directory, so the test works in any fresh venv.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
jupytext = pytest.importorskip("jupytext")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib_inline")

from jupyter_client.kernelspec import KernelSpecManager  # noqa: E402
from jupyter_client.manager import AsyncKernelManager  # noqa: E402

COLAB = Path(__file__).resolve().parent.parent / "colab"
SOURCES = sorted(COLAB.glob("[0-9][0-9]_*.py"))
KERNEL = "jaxsparse-smoke"
CELL_TIMEOUT_S = 900

pytestmark = pytest.mark.slow


def _ids(paths):
    return [p.stem for p in paths]


def test_all_notebooks_present():
    names = {p.stem for p in SOURCES}
    assert names >= {"01_quickstart", "02_lottery_ticket", "03_supermasks", "04_nm_sparsity",
                     "05_sweeps_on_tpu", "06_what_pruned_networks_forget",
                     "07_loss_change_allocation"}, names


def _kernel_env() -> dict[str, str]:
    # The conftest fakes 4 CPU devices through XLA_FLAGS; drop that so notebook 05 shows its
    # own device detection (it fakes 8 when no accelerator is present).
    flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "",
                   os.environ.get("XLA_FLAGS", "")).strip()
    return {
        "JAXSPARSE_SMOKE": "1",
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": flags,
        "MPLBACKEND": "module://matplotlib_inline.backend_inline",
        "PYTHONWARNINGS": "ignore",
        "TF_CPP_MIN_LOG_LEVEL": "3",
    }


@pytest.fixture(scope="module")
def kernel_manager_class(tmp_path_factory) -> type[AsyncKernelManager]:
    """Kernel managers that start *this* interpreter from a kernelspec in a private directory.

    Nothing is installed globally; nbclient owns (and shuts down) each kernel it creates.
    """
    root = tmp_path_factory.mktemp("kernels")
    spec_dir = root / KERNEL
    spec_dir.mkdir()
    # What a notebook writes goes to JAXSPARSE_OUT (or a temporary directory of its own).
    out = root / "outputs"
    out.mkdir()
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "jaxsparse smoke (test)",
        "language": "python",
        "env": {**_kernel_env(), "JAXSPARSE_OUT": str(out)},
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    specs = KernelSpecManager(kernel_dirs=[str(root)], ensure_native_kernel=False)

    class SmokeKernelManager(AsyncKernelManager):
        def __init__(self, **kwargs):
            kwargs.setdefault("kernel_spec_manager", specs)
            super().__init__(**kwargs)

    return SmokeKernelManager


def _execute(source: Path, workdir: Path, kernel_manager_class: type[AsyncKernelManager]):
    nb = jupytext.read(source)
    client = nbclient.NotebookClient(
        nb, kernel_name=KERNEL, kernel_manager_class=kernel_manager_class,
        timeout=CELL_TIMEOUT_S, allow_errors=False,
        resources={"metadata": {"path": str(workdir)}},
    )
    client.execute()  # raises CellExecutionError naming the cell when one raises
    return nb


@pytest.mark.parametrize("source", SOURCES, ids=_ids(SOURCES))
def test_notebook_runs_and_plots(source: Path, tmp_path: Path, kernel_manager_class):
    nb = _execute(source, tmp_path, kernel_manager_class)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    errors = [o for o in outputs if o.get("output_type") == "error"]
    assert not errors, errors
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert images, f"{source.name}: no image/png output (plots did not render)"
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert "smoke mode: True" in text, f"{source.name} did not select smoke mode:\n{text[:500]}"
    # nothing written into the working directory (outputs go to JAXSPARSE_OUT / a temp dir)
    assert sorted(p.name for p in tmp_path.iterdir()) == [], f"{source.name} wrote into the cwd"


def _cells(nb) -> list[tuple[str, str]]:
    return [(c.cell_type, c.source.strip()) for c in nb.cells]


@pytest.mark.parametrize("source", SOURCES, ids=_ids(SOURCES))
def test_committed_ipynb_stripped_and_in_sync(source: Path):
    ipynb = source.with_suffix(".ipynb")
    assert ipynb.exists(), f"missing paired notebook {ipynb.name}: run `jupytext --sync {source}`"
    committed = nbformat.read(ipynb, as_version=4)
    for i, cell in enumerate(committed.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{ipynb.name} cell {i} has outputs: strip them"
            assert cell.execution_count is None, f"{ipynb.name} cell {i} has an execution count"
    assert _cells(committed) == _cells(jupytext.read(source)), (
        f"{ipynb.name} is out of sync with {source.name}: run `jupytext --sync {source}`")


@pytest.mark.parametrize("source", SOURCES, ids=_ids(SOURCES))
def test_first_code_cell_installs_only_on_colab(source: Path):
    nb = jupytext.read(source)
    first = next(c for c in nb.cells if c.cell_type == "code").source
    assert 'find_spec("google.colab")' in first and 'find_spec("jaxsparse")' in first
    assert "JAXSPARSE_SRC" in first and "JAXSPARSE_SMOKE" in first
    assert "default_backend()" in first
    # Never (re)install jax itself: Colab's TPU runtime ships a matching jax + libtpu.
    assert not re.search(r"install[^\n]*[\"' ]jax(\[|[\"' =<>])", first), first
