"""The N:M public surface: ``js.nm.*`` re-exports, and the top-level names of the old layout
that keep working for one release with a ``DeprecationWarning`` naming the new path."""

import importlib

import pytest

import jaxsparse as js
from jaxsparse import nm

MOVED = ["NMCompressed", "compress", "decompress", "export_cutlass", "nm_matmul", "permute",
         "search_permutation", "sparse_weight", "sr_ste", "sr_ste_decay", "ste",
         "transposable_mask"]
KEPT = ["NM", "is_nm", "nm_mask", "nm_masks", "reduction_axis"]


@pytest.mark.parametrize("name", MOVED)
def test_old_top_level_name_warns_and_is_the_nm_object(name):
    with pytest.warns(DeprecationWarning, match=rf"jaxsparse\.{name} is deprecated; "
                                                rf"use jaxsparse\.nm\.{name}"):
        old = getattr(js, name)
    assert old is getattr(nm, name)
    assert name not in js.__all__ and name in nm.__all__


def test_top_level_keeps_the_contract_names_without_a_warning():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name in KEPT:
            assert getattr(js, name) is getattr(nm, name) and name in js.__all__
    with pytest.raises(AttributeError, match="no attribute 'nm_train'"):
        js.nm_train  # noqa: B018  (the old modules are gone, not aliased)


def test_nm_all_names_exist_and_come_from_the_package_modules():
    for name in nm.__all__:
        obj = getattr(nm, name)
        home = getattr(obj, "__module__", None)
        if home is not None and home.startswith("jaxsparse."):
            assert home.startswith("jaxsparse.nm.") and importlib.import_module(home)
    for old in ("jaxsparse.nm_export", "jaxsparse.nm_permute", "jaxsparse.nm_train"):
        with pytest.raises(ModuleNotFoundError):
            importlib.import_module(old)
