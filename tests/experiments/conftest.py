"""Shared by the driver tests: one finished run of the test module's driver, built once."""

import os

import pytest


@pytest.fixture(scope="module")
def finished_run(request, tmp_path_factory):
    """``(out, run_dir, rows)``: the module's ``DRIVER.run(tiny_config(), out)`` run once.

    A test module sets ``DRIVER`` (the driver module) and ``tiny_config()`` (its small config).
    """
    mod = request.module
    out = str(tmp_path_factory.mktemp(mod.__name__.rsplit(".", 1)[-1]))
    rows = mod.DRIVER.run(mod.tiny_config(), out, show_progress=False)
    (path,) = [os.path.join(out, d) for d in os.listdir(out)]
    return out, path, rows
