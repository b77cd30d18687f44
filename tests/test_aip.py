"""The atomic inner product (SPEC §1-2): invariance, whitening, estimation errors."""

import math

import pytest
import torch

from atomsnb.aip import (AIP, InsufficientTokensError, SingularSecondMomentError, euclidean_angles, sample_pairs,
                         summarize_angles)
from conftest import mixed_data


def random_invertible(d, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(d, d, generator=g, dtype=torch.float64) + 0.5 * torch.eye(d, dtype=torch.float64)


def test_inner_is_invariant_under_invertible_maps():
    X = mixed_data(5000, 24)
    A = random_invertible(24, 1)
    aip, aip_A = AIP.fit(X), AIP.fit(X @ A.T)
    i, j = sample_pairs(len(X), 3000, seed=2)
    before = aip.inner(X[i], X[j])
    after = aip_A.inner(X[i] @ A.T, X[j] @ A.T)
    assert (before - after).abs().max() < 1e-6
    # while Euclidean angles change a lot
    assert (euclidean_angles(X[i], X[j]) - euclidean_angles(X[i] @ A.T, X[j] @ A.T)).abs().max() > 5.0
    assert aip.invariance_error(X) < 1e-6


def test_whitened_fit_data_have_identity_second_moment():
    X = mixed_data(6000, 20)
    W = AIP.fit(X).whiten(X)
    assert W.shape == (6000, 20)
    assert (W.T @ W / len(W) - torch.eye(20, dtype=torch.float64)).abs().max() < 1e-9


def test_cholesky_and_symmetric_whitening_agree():
    X = mixed_data(4000, 12)
    aip = AIP.fit(X)
    i, j = sample_pairs(len(X), 500)
    c = aip.whiten(X[i]), aip.whiten(X[j])
    s = aip.whiten(X[i], "symmetric"), aip.whiten(X[j], "symmetric")
    cos = lambda a, b: (a * b).sum(1) / a.norm(dim=1) / b.norm(dim=1)  # noqa: E731
    assert (cos(*c) - cos(*s)).abs().max() < 1e-10
    # the symmetric map is S^{1/2}: W^T W = S
    Ws = aip.whiten(torch.eye(12, dtype=torch.float64), "symmetric").T
    assert (Ws.T @ Ws - aip.S).abs().max() < 1e-8 * aip.S.abs().max()
    with pytest.raises(ValueError, match="method"):
        aip.whiten(X, "zca")


def test_streaming_partial_fit_equals_fit():
    X = mixed_data(3000, 10)
    stream = AIP(10)
    for chunk in X.split(701):
        stream.partial_fit(chunk)
    assert stream.n_tokens == 3000
    assert torch.allclose(stream.S, AIP.fit(X).S, rtol=1e-10, atol=0)


def test_random_pair_angles_recentre_in_sample():
    X = mixed_data(8000, 32, offset=6.0)
    aip = AIP.fit(X)
    i, j = sample_pairs(len(X), 5000)
    s = summarize_angles(euclidean_angles(X[i], X[j]), aip.angles(X[i], X[j]))
    assert s.euclidean_mean < 60  # the offset pulls Euclidean angles together
    assert abs(s.aip_mean - 90) < 2.0  # E cos <= 1/H (SPEC §1.5)
    assert s.shift == pytest.approx(90 - s.euclidean_mean)


def test_too_few_tokens_is_a_clear_error():
    X = mixed_data(100, 16)
    with pytest.raises(InsufficientTokensError, match=r"at least 320 tokens.*got 100"):
        AIP.fit(X)
    # opting in to a ridge works and reports a finite invariance error
    aip = AIP.fit(X, ridge=1e-3)
    assert math.isfinite(aip.invariance_error(X))


def test_singular_second_moment_is_a_clear_error_and_pinv_works():
    X = mixed_data(2000, 8)
    Y = torch.cat([X, X[:, :1] + X[:, 1:2]], dim=1)  # rank 8 in 9 dims
    with pytest.raises(SingularSecondMomentError, match="condition number"):
        AIP.fit(Y)
    aip = AIP.fit(Y, pinv=True)
    assert aip.rank == 8
    i, j = sample_pairs(len(X), 200)
    assert (aip.inner(Y[i], Y[j]) - AIP.fit(X).inner(X[i], X[j])).abs().max() < 1e-8


def test_nan_activations_are_rejected_with_location():
    X = mixed_data(1000, 8)
    X[123, 4] = float("nan")
    with pytest.raises(ValueError, match="1 NaN/inf values.*row 123"):
        AIP.fit(X)


def test_bad_shapes_and_widths():
    with pytest.raises(ValueError, match="2-D"):
        AIP.fit(torch.zeros(10))
    aip = AIP.fit(mixed_data(1000, 8))
    with pytest.raises(ValueError, match="d_model=9"):
        aip.whiten(torch.zeros(3, 9))
    with pytest.raises(ValueError, match="at least 2"):
        sample_pairs(1, 10)


def test_save_load_roundtrip_and_corruption(tmp_path):
    from atomsnb.io import CacheCorruptError

    X = mixed_data(1000, 8)
    aip = AIP.fit(X)
    aip.save(tmp_path / "aip.safetensors")
    again = AIP.load(tmp_path / "aip.safetensors")
    assert torch.equal(again.S, aip.S)
    raw = bytearray((tmp_path / "aip.safetensors").read_bytes())
    raw[-5] ^= 0xFF
    (tmp_path / "aip.safetensors").write_bytes(bytes(raw))
    with pytest.raises(CacheCorruptError):
        AIP.load(tmp_path / "aip.safetensors")


def test_pair_angles_equal_angles_of_the_indexed_rows():
    """AIP.pair_angles (each distinct row whitened once) against angles of the gathered rows, pair by pair."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(400, 6, generator=g, dtype=torch.float64) @ torch.randn(6, 6, generator=g, dtype=torch.float64)
    aip = AIP.fit(x)
    i, j = torch.randint(0, 50, (300,), generator=g), torch.randint(0, 50, (300,), generator=g)  # many repeated rows
    got = aip.pair_angles(x, i, j)
    ref = torch.stack([aip.angles(x[a:a + 1], x[b:b + 1])[0] for a, b in zip(i.tolist(), j.tolist())])
    same = i == j  # arccos near cos = 1 turns round-off of 1e-16 into 1e-6 degrees: those pairs are checked apart
    assert same.any() and (~same).sum() > 250
    assert torch.allclose(got[~same], ref[~same], atol=1e-10)
    assert float(got[same].max()) < 1e-5 and float(ref[same].max()) < 1e-5
    with pytest.raises(ValueError, match="same shape"):
        aip.pair_angles(x, i, j[:10])
