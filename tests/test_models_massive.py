"""Massive activations: the criterion, the statistics (against brute force and numpy), and fitting S without them."""

import math

import numpy as np
import pytest
import torch

from atomsnb.aip import AIP
from atomsnb.massive import DEFAULT_K, massive_activation_stats, massive_token_mask, token_norms


def planted(n=3000, d=8, seed=0):
    """Gaussian tokens plus 4 planted massive tokens (coordinate 5 at 300-600, the rest ordinary)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) @ (torch.eye(d, dtype=torch.float64)
                                                               + 0.3 * torch.randn(d, d, generator=g, dtype=torch.float64))
    rows = torch.tensor([7, 100, 1234, 2999])
    x[rows, 5] = torch.tensor([300.0, -450.0, 500.0, 600.0], dtype=torch.float64)
    return x.float(), rows


def test_mask_finds_exactly_the_planted_tokens():
    x, rows = planted()
    mask = massive_token_mask(x, k=DEFAULT_K)
    assert mask.dtype == torch.bool and mask.nonzero().flatten().tolist() == rows.tolist()
    norms = [math.sqrt(sum(float(v) ** 2 for v in row)) for row in x]  # brute force
    med = sorted(norms)[(len(norms) - 1) // 2]  # the lower median
    assert mask.tolist() == [nv > DEFAULT_K * med for nv in norms]
    torch.testing.assert_close(token_norms(x), torch.tensor(norms, dtype=torch.float64))


def test_stats_against_brute_force_and_numpy():
    x, rows = planted()
    s = massive_activation_stats(x, k=DEFAULT_K, n_top=4)
    xd = x.double().numpy()
    assert (s["max_abs"], s["max_abs_dim"], s["max_abs_token"]) == (600.0, 5, 2999)
    sq = (xd ** 2).sum(axis=1)
    assert s["share_sq_norm_top"] == pytest.approx(np.sort(sq)[-4:].sum() / sq.sum(), rel=1e-12)
    assert s["n_masked"] == 4 and s["share_sq_norm_masked"] == pytest.approx(sq[rows.numpy()].sum() / sq.sum(), rel=1e-12)
    col = (xd ** 2).sum(axis=0)
    assert s["top_dim"] == 5 and s["share_trace_top_dim"] == pytest.approx(col[5] / col.sum(), rel=1e-12)
    keep = np.ones(len(xd), bool)
    keep[rows.numpy()] = False
    col_rest = (xd[keep] ** 2).sum(axis=0)
    assert s["share_trace_top_dim_unmasked"] == pytest.approx(col_rest.max() / col_rest.sum(), rel=1e-12)
    assert s["cond"] == pytest.approx(np.linalg.cond(xd.T @ xd / len(xd)), rel=1e-6)
    assert s["cond_unmasked"] == pytest.approx(np.linalg.cond(xd[keep].T @ xd[keep] / keep.sum()), rel=1e-6)
    assert s["cond"] > 10 * s["cond_unmasked"]  # the planted tokens wreck the conditioning
    flat = np.sort(np.abs(xd).ravel())
    assert s["median_abs"] == pytest.approx(flat[(len(flat) - 1) // 2], rel=1e-12)  # the lower median


def test_fit_without_massive_tokens_is_the_fit_on_the_rest():
    x, rows = planted()
    mask = massive_token_mask(x)
    a = AIP.fit(x, exclude=mask)
    b = AIP.fit(x[~mask])
    assert a.n_tokens == len(x) - 4 and a.n_excluded == 4
    torch.testing.assert_close(a.S, b.S, rtol=0, atol=0)
    # whitening by the fit without them makes the kept rows' second moment the identity (independent check)
    w = a.whiten(x[~mask])
    torch.testing.assert_close(w.T @ w / len(w), torch.eye(8, dtype=torch.float64), rtol=0, atol=1e-9)
    assert AIP.fit(x).condition_number > 10 * a.condition_number
    # no mask: unchanged behaviour
    torch.testing.assert_close(AIP.fit(x, exclude=None).S, AIP.fit(x).S, rtol=0, atol=0)


def test_partial_fit_with_exclude_streams_like_fit():
    x, _ = planted()
    mask = massive_token_mask(x)
    aip = AIP(8)
    for s in range(0, len(x), 700):
        aip.partial_fit(x[s:s + 700], exclude=mask[s:s + 700])
    torch.testing.assert_close(aip.S, AIP.fit(x, exclude=mask).S, rtol=1e-12, atol=0)
