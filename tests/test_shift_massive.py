"""Chapter 1's massive-token choice: :func:`atomsnb.shift.massive_choice` and its reading."""

import numpy as np
import pandas as pd
import pytest
import torch

from atomsnb.shift import WHITENING_GAIN, describe_massive_choice, massive_choice


def _planted(n: int, seed: int, n_massive: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g, dtype=torch.float64) @ torch.diag(torch.arange(1.0, 9.0, dtype=torch.float64))
    x[:n_massive, 0] += 3000.0  # a few tokens hundreds of times the median norm, on one coordinate
    return x


def test_massive_choice_against_numpy():
    fit, held = {3: _planted(4000, 0, 5)}, {3: _planted(2000, 1, 2)}
    t = massive_choice(fit, held, k=20, n_pairs=5000, seed=0).iloc[0]
    assert (t["layer"], t["n_massive_fit"], t["n_massive_eval"], t["max_abs_dim"]) == (3, 5, 2, 0)
    x = fit[3].numpy()
    sq = (x * x).sum(1)
    assert t["share_sq_norm"] == pytest.approx(sq[:5].sum() / sq.sum(), rel=1e-12)
    cond = lambda m: np.linalg.cond(m)  # noqa: E731
    assert t["cond_kept"] == pytest.approx(cond(x.T @ x / len(x)), rel=1e-8)
    assert t["cond_excluded"] == pytest.approx(cond(x[5:].T @ x[5:] / len(x[5:])), rel=1e-8)
    # whitening ordinary held-out tokens with S fitted on ordinary tokens is near perfect; with the massive ones, not
    y = held[3].numpy()[2:]
    for col, m in (("whitened_cond_kept", x.T @ x / len(x)), ("whitened_cond_excluded", x[5:].T @ x[5:] / len(x[5:]))):
        L = np.linalg.cholesky(m)
        w = np.linalg.solve(L, y.T).T
        assert t[col] == pytest.approx(cond(w.T @ w / len(w)), rel=1e-8)
    assert t["whitened_cond_excluded"] < 1.5 < WHITENING_GAIN * 1.5 < t["whitened_cond_kept"]
    with pytest.raises(ValueError, match="same layers"):
        massive_choice(fit, {4: held[3]}, k=20)


def _table(n_massive, kept, excluded, dangle=0.01):
    return pd.DataFrame([{"layer": l, "n_massive_fit": n, "share_sq_norm": 0.5, "aip_mean_kept": 89.9,
                          "aip_mean_excluded": 89.9 + dangle, "whitened_cond_kept": a, "whitened_cond_excluded": b}
                         for l, (n, a, b) in enumerate(zip(n_massive, kept, excluded), start=1)])


def test_describe_massive_choice_follows_the_numbers():
    ex = describe_massive_choice(_table([0, 10], [1.5, 5e4], [1.4, 30.0]), k=20, chosen=20, model="M")
    assert "layer 2 has massive" in ex[0] and "support excluding" in ex[2] and "as the numbers support" in ex[2]
    against = describe_massive_choice(_table([0, 10], [1.5, 5e4], [1.4, 30.0]), k=20, chosen=None, model="M")
    assert "keeps them, against what these numbers support" in against[2]
    keep = describe_massive_choice(_table([3, 4], [2.0, 3.0], [50.0, 3.0]), k=20, chosen=20, model="M")
    assert "support keeping them" in keep[2] and "against" in keep[2] and "2 layers (1-2)" in keep[0]
    assert "(3-4 per layer)" in keep[0] and "(10 per layer)" in ex[0]
    tiny = describe_massive_choice(_table([3], [2.0], [1.5], dangle=0.001), k=20, chosen=20, model="M")
    assert "by less than 0.01 degrees" in tiny[1]
    either = describe_massive_choice(_table([3], [2.0], [1.5], dangle=0.25), k=20, chosen=20, model="M")
    assert "no material difference" in either[2] and "at most 0.25 degrees" in either[1] and "against" not in either[2]
    none = describe_massive_choice(_table([0, 0], [1.2, 1.3], [1.2, 1.3]), k=20, chosen=20, model="M")
    assert len(none) == 1 and "moot" in none[0]
    with pytest.raises(ValueError, match="missing"):
        describe_massive_choice(pd.DataFrame({"layer": [1]}), k=20, chosen=20, model="M")


def test_massive_choice_aips_and_angles_against_numpy():
    """The returned fits are the numpy second moments; the mean angles are numpy's per-pair arccos; chapter 1 hands
    the *excluded* fits to angle_study, which then gives the table it gives when it fits S itself."""
    from atomsnb.aip import sample_pairs
    from atomsnb.shift import angle_study

    fit, held = {3: _planted(4000, 0, 5)}, {3: _planted(2000, 1, 2)}
    t, aips = massive_choice(fit, held, k=20, n_pairs=3000, seed=4, return_aips=True)
    kept, excl = aips[3]
    x, y = fit[3].numpy(), held[3].numpy()
    np.testing.assert_allclose(kept.second_moment.numpy(), x.T @ x / len(x), rtol=1e-12)
    np.testing.assert_allclose(excl.second_moment.numpy(), x[5:].T @ x[5:] / len(x[5:]), rtol=1e-12)
    assert (kept.n_tokens, kept.n_excluded, excl.n_tokens, excl.n_excluded) == (4000, 0, 3995, 5)
    diag = (x * x).sum(0)
    assert t.iloc[0]["share_trace_top_dim"] == pytest.approx(diag.max() / diag.sum(), rel=1e-12)

    def mean_angle(m, z, i, j):  # brute force, one pair at a time
        W = np.linalg.inv(np.linalg.cholesky(m))
        out = []
        for a, b in zip(i.tolist(), j.tolist()):
            u, v = W @ z[a], W @ z[b]
            out.append(np.degrees(np.arccos(np.clip(u @ v / np.linalg.norm(u) / np.linalg.norm(v), -1, 1))))
        return float(np.mean(out))

    i, j = sample_pairs(len(y), 3000, seed=4)
    assert t.iloc[0]["aip_mean_kept"] == pytest.approx(mean_angle(x.T @ x / len(x), y, i, j), abs=1e-9)
    p, q = sample_pairs(len(y) - 2, 3000, seed=4)
    assert t.iloc[0]["aip_mean_excluded"] == pytest.approx(
        mean_angle(x[5:].T @ x[5:] / len(x[5:]), y[2:], p, q), abs=1e-9)

    ordinary = {3: fit[3][5:]}
    evals = {"held-out": {3: held[3][2:]}}
    own, own_aips = angle_study(ordinary, evals, n_pairs=3000, seed=4)
    given, given_aips = angle_study(ordinary, evals, n_pairs=3000, seed=4, aips={3: excl})
    assert given_aips[3] is excl
    pd.testing.assert_frame_equal(own.drop(columns="condition_number"), given.drop(columns="condition_number"),
                                  rtol=1e-9)
    with pytest.raises(ValueError, match=r"aips\[3\] was fitted on 4000 tokens"):
        angle_study(ordinary, evals, aips={3: kept})
