"""N:M checks (jaxsparse.nm.check): ``is_nm`` is a bool, ``nm_report`` says which leaf fails."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsparse import nm


def test_is_nm_is_a_python_bool_and_nm_report_has_the_rows():
    legal = {"d": {"kernel": jnp.array([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0], [0.0, 0.0]]),
                   "bias": jnp.ones(2)}}
    dense = {"d": {"kernel": jnp.ones((8, 2)), "bias": jnp.ones(2)}}
    assert nm.is_nm(legal, 2, 4) is True
    assert nm.is_nm(dense, 2, 4) is False
    assert nm.is_nm(legal, 2, 4, exact=True) is False  # column 1 keeps one of four
    report = nm.nm_report(dense, 2, 4)
    assert isinstance(report, nm.NMReport) and not report.ok
    (row,) = report.rows  # the bias is not prunable by default: one row
    assert (row.path, row.shape, row.axis) == ("d/kernel", (8, 2), 0)
    assert (row.groups, row.bad_groups, row.max_kept, row.min_kept) == (4, 4, 4, 4)
    ok = nm.nm_report(legal, 2, 4, exact=True).rows[0]
    assert (ok.groups, ok.bad_groups, ok.max_kept, ok.min_kept) == (2, 1, 2, 1)
    assert str(report).endswith("-> NOT LEGAL")
    assert str(nm.nm_report(legal, 2, 4)).endswith("-> LEGAL")
    odd = {"odd": {"kernel": jnp.ones((6, 3))}}  # cannot be grouped: not N:M, not an error
    assert nm.is_nm(odd, 2, 4) is False


def test_is_nm_checks_an_einsum_kernel_along_its_true_reduction_axis():
    """The issue's case: `wq` (in, heads, head_dim) contracts `in`. A mask grouped along
    `heads` (what a guess of axis -2 gave) is illegal as the GEMM operand; is_nm says so."""
    w = jax.random.normal(jax.random.key(0), (16, 4, 8))
    rules = [("wq", 0)]
    right = nm.nm_masks({"attn": {"wq": w}}, 2, 4, rules=[("wq", True)], axis_rules=rules)
    wrong = {"attn": {"wq": nm.nm_mask(w, 2, 4, axis=1)}}  # groups along heads
    operand = np.asarray(right["attn"]["wq"]).reshape(16, 32).T  # (heads*head_dim, K=in)
    assert (operand.reshape(32, 4, 4).sum(-1) == 2).all()
    assert nm.is_nm(right, 2, 4, exact=True, rules=[("wq", True)], axis_rules=rules)
    assert not nm.is_nm(wrong, 2, 4, rules=[("wq", True)], axis_rules=rules)
    report = nm.nm_report(wrong, 2, 4, rules=[("wq", True)], axis_rules=rules)
    assert not report.ok and report.rows[0].axis == 0 and report.rows[0].bad_groups > 0
    bad_operand = np.asarray(wrong["attn"]["wq"]).reshape(16, 32).T
    assert (bad_operand.reshape(32, 4, 4).sum(-1) > 2).any()  # truly illegal along K
    with pytest.raises(ValueError, match=r"'attn/wq'.*\(16, 4, 8\)"):
        nm.is_nm(wrong, 2, 4, rules=[("wq", True)])  # no axis rule: an error, not a guess
    with pytest.raises(ValueError, match=r"'attn/wq'.*\(16, 4, 8\)"):
        nm.sr_ste({"attn": {"wq": w}}, rules=[("wq", True)])
