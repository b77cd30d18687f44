"""The toy world: synthetic activations built from atoms we know (SPEC §7).

Activations are ``m = A (D0 delta + beta b)``: exactly ``K``-sparse non-negative codes ``delta`` over a
known dictionary ``D0``, a common offset ``beta b`` and an invertible mixing ``A`` that stands for the
arbitrary parametrisation a language model may choose (paper §3). Because the AIP is invariant under
``A`` (SPEC §1.3), everything measured in the AIP is the same with or without the mixing; Euclidean
geometry is not.

:func:`atom_recovery` scores a learned dictionary against the true atoms by Hungarian matching of
AIP cosines; :func:`support_recovery` scores codes against the true supports; :func:`score_unit_sets`
adds the atom recovery to :func:`atomsnb.evaluation.compare_unit_sets`' table (any unit set: neurons, trained
SAEs, the constructed TSAE). :func:`describe` reads the toy world's numbers that are not claims of the
paper (those are the ``check_toy_*`` of :mod:`atomsnb.paper`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

import pandas as pd
import torch
from scipy.optimize import linear_sum_assignment
from tqdm import tqdm

from .aip import AIP, euclidean_cosines, sample_pairs
from .evaluation import reader_table as units_reader_table
from .metrics import r2_aip, uniqueness_bound, whitened_atoms
from .paper import ANGLE_NOISE_SE
from .sae import construct_tsae, feasible_threshold_interval, refit_on_support

__all__ = [
    "SyntheticConfig",
    "SyntheticWorld",
    "make_world",
    "make_dictionary",
    "make_codes",
    "make_mixing",
    "hadamard",
    "AtomRecovery",
    "atom_recovery",
    "support_recovery",
    "ConstructionCheck",
    "check_construction",
    "construction_phase_grid",
    "MixingInvariance",
    "mixing_invariance",
    "score_unit_sets",
    "reader_table",
    "describe",
]


@dataclass
class SyntheticConfig:
    """Every knob of the synthetic world (SPEC §7)."""

    d_model: int = 64
    """Width ``H`` of the activations."""
    n_latents: int | None = None
    """Number of true atoms ``N``; None -> ``H`` for "orthonormal", ``2H`` otherwise."""
    k: int = 4
    """Exact support size ``K`` of every code."""
    n_tokens: int = 20000
    """Number of activations ``n``."""
    family: Literal["orthonormal", "two_ortho", "gaussian"] = "two_ortho"
    """Dictionary family: orthonormal (``N = H``), ``[I, Had/sqrt(H)]`` with random column signs (``N = 2H``, ``H`` a power of 2), or Gaussian unit columns."""
    delta_min: float = 1.0
    """Smallest non-zero code coefficient (codes are ``U[delta_min, delta_max]`` on the support)."""
    delta_max: float = 2.0
    """Largest code coefficient."""
    beta: float = 0.0
    """Length of the common offset ``beta b`` (``b`` a random unit vector) added before mixing."""
    gamma: float = 0.0
    """Strength of the rank-one stretch ``I + gamma u u^T`` along the mixed mean direction ``u``."""
    cond: float = 1.0
    """Condition number of the mixing's singular values ``s`` (log-spaced from 1 to ``1/cond``)."""
    seed: int = 0
    """Seed of every random draw (dictionary, codes, offset, mixing)."""

    def resolved_n_latents(self) -> int:
        """``N`` after applying the family default."""
        if self.n_latents is not None:
            return int(self.n_latents)
        return self.d_model if self.family == "orthonormal" else 2 * self.d_model


@dataclass
class SyntheticWorld:
    """A sampled synthetic world (SPEC §7). All tensors float64."""

    acts: torch.Tensor
    """``[n_tokens, d_model]`` mixed activations ``m = A (D0 delta + beta b)``."""
    codes: torch.Tensor
    """``[n_tokens, n_latents]`` true codes ``delta`` (exactly ``K`` non-zeros per row)."""
    atoms: torch.Tensor
    """``[d_model, n_latents]`` true atoms ``D0`` before mixing (unit Euclidean columns)."""
    A: torch.Tensor
    """``[d_model, d_model]`` mixing matrix."""
    mixed_atoms: torch.Tensor
    """``[d_model, n_latents]`` ``A D0``: the true atoms in the coordinates of :attr:`acts`."""
    offset: torch.Tensor
    """``[d_model]`` unit offset direction ``b`` before mixing (``beta b`` is added)."""
    config: SyntheticConfig = field(default_factory=SyntheticConfig)
    """The configuration that produced this world."""

    @property
    def clean_acts(self) -> torch.Tensor:
        """``[n_tokens, d_model]`` unmixed activations ``D0 delta + beta b``."""
        return self.codes @ self.atoms.T + self.config.beta * self.offset


def hadamard(n: int) -> torch.Tensor:
    """Sylvester Hadamard matrix ``[n, n]`` float64 with entries ±1.

    Raises:
        ValueError: ``n`` is not a power of 2.
    """
    if n < 1 or n & (n - 1):
        raise ValueError(f"Hadamard dictionaries need d_model a power of 2; got {n}")
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def _orthogonal(H: int, g: torch.Generator) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(H, H, generator=g, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))[None, :]


def make_dictionary(family: str, d_model: int, n_latents: int, g: torch.Generator) -> torch.Tensor:
    """True atoms ``D0`` ``[d_model, n_latents]`` float64 with unit columns (SPEC §7 a-c).

    Raises:
        ValueError: unknown family, or a size the family cannot make.
    """
    H, N = d_model, n_latents
    if family == "orthonormal":
        if N > H:
            raise ValueError(f"an orthonormal dictionary has at most d_model={H} atoms; got n_latents={N}")
        return _orthogonal(H, g)[:, :N].contiguous()
    if family == "two_ortho":
        if N != 2 * H:
            raise ValueError(f"the two-ortho dictionary [I, Had/sqrt(H)] has n_latents = 2 d_model = {2 * H}; got {N}")
        D = torch.cat([torch.eye(H, dtype=torch.float64), hadamard(H) / math.sqrt(H)], dim=1)
        signs = torch.where(torch.rand(N, generator=g, dtype=torch.float64) < 0.5, -1.0, 1.0)
        return D * signs[None, :]
    if family == "gaussian":
        D = torch.randn(H, N, generator=g, dtype=torch.float64)
        return D / D.norm(dim=0, keepdim=True)
    raise ValueError(f"family must be 'orthonormal', 'two_ortho' or 'gaussian'; got {family!r}")


def make_codes(n_tokens: int, n_latents: int, k: int, delta_min: float, delta_max: float, g: torch.Generator) -> torch.Tensor:
    """Exactly ``k``-sparse codes ``[n_tokens, n_latents]`` float64: uniform random supports, coefficients ``U[delta_min, delta_max]`` (SPEC §7).

    Raises:
        ValueError: ``k`` outside ``[0, n_latents]`` or ``0 < delta_min <= delta_max`` violated.
    """
    if not 0 <= k <= n_latents:
        raise ValueError(f"k must be in [0, n_latents={n_latents}]; got {k}")
    if not 0 < delta_min <= delta_max:
        raise ValueError(f"need 0 < delta_min <= delta_max; got {delta_min}, {delta_max}")
    codes = torch.zeros(n_tokens, n_latents, dtype=torch.float64)
    if k == 0:
        return codes
    support = torch.rand(n_tokens, n_latents, generator=g).argsort(dim=1)[:, :k]
    coef = delta_min + (delta_max - delta_min) * torch.rand(n_tokens, k, generator=g, dtype=torch.float64)
    codes.scatter_(1, support, coef)
    return codes


def make_mixing(d_model: int, cond: float, gamma: float, mean_direction: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Mixing ``A = (I + gamma u u^T) Q1 diag(s) Q2^T`` ``[d_model, d_model]`` (SPEC §7).

    ``s`` is log-spaced from 1 to ``1/cond``; ``u`` is the unit direction of the data mean after
    ``Q1 diag(s) Q2^T`` (the mixed mean), so ``gamma > 0`` stretches the common direction.

    Raises:
        ValueError: ``cond < 1`` or ``gamma <= -1`` (``A`` would be singular).
    """
    if cond < 1:
        raise ValueError(f"cond must be >= 1; got {cond}")
    if gamma <= -1:
        raise ValueError(f"gamma must be > -1 for an invertible mixing; got {gamma}")
    H = d_model
    Q1, Q2 = _orthogonal(H, g), _orthogonal(H, g)
    s = torch.logspace(0.0, -math.log10(cond), H, dtype=torch.float64)
    M = Q1 @ torch.diag(s) @ Q2.T
    u = M @ mean_direction.to(torch.float64)
    nu = float(u.norm())
    u = u / nu if nu > 0 else torch.zeros_like(u)
    return (torch.eye(H, dtype=torch.float64) + gamma * torch.outer(u, u)) @ M


def make_world(config: SyntheticConfig) -> SyntheticWorld:
    """Sample a synthetic world ``m = A (D0 delta + beta b)`` (SPEC §7); deterministic given ``config.seed``.

    Returns:
        A :class:`SyntheticWorld` (float64 tensors).

    Raises:
        ValueError: inconsistent sizes (see :func:`make_dictionary`, :func:`make_codes`, :func:`make_mixing`).
    """
    c = config
    H, N = c.d_model, c.resolved_n_latents()
    g = torch.Generator().manual_seed(int(c.seed))
    D0 = make_dictionary(c.family, H, N, g)
    codes = make_codes(c.n_tokens, N, c.k, c.delta_min, c.delta_max, g)
    b = torch.randn(H, generator=g, dtype=torch.float64)
    b = b / b.norm()
    clean = codes @ D0.T + c.beta * b
    A = make_mixing(H, c.cond, c.gamma, clean.mean(dim=0), g)
    return SyntheticWorld(acts=clean @ A.T, codes=codes, atoms=D0, A=A, mixed_atoms=A @ D0, offset=b, config=c)


class AtomRecovery(NamedTuple):
    """How many true atoms a learned dictionary recovers (SPEC §7)."""

    fraction: float
    """Fraction of true atoms whose matched learned atom has AIP ``|cos| >= threshold``."""
    threshold: float
    """The ``|cos|`` threshold used."""
    cosines: torch.Tensor
    """``[n_true]`` float64 AIP ``|cos|`` of each true atom with its matched learned atom (0 if unmatched)."""
    assignment: torch.Tensor
    """``[n_true]`` int64 index of the matched learned atom (-1 if unmatched)."""


def atom_recovery(learned: torch.Tensor, true: torch.Tensor, aip: AIP, threshold: float = 0.9) -> AtomRecovery:
    """Match learned atoms to true atoms one-to-one (Hungarian, max total AIP ``|cos|``) and score them.

    Learned atoms of zero AIP norm (e.g. all-zero decoder columns) are ignored.

    Args:
        learned: ``[d_model, n_learned]`` learned atoms, raw coordinates.
        true: ``[d_model, n_true]`` true atoms in the same coordinates (``world.mixed_atoms``).
        aip: the fitted AIP (cosines are AIP cosines, invariant under mixing).
        threshold: the ``|cos|`` a match needs to count as recovered.

    Returns:
        An :class:`AtomRecovery`.
    """
    learned = torch.as_tensor(learned, dtype=torch.float64)
    keep = aip.whiten(learned.T).norm(dim=1) > 0
    idx = keep.nonzero().flatten()
    Lw = whitened_atoms(learned[:, keep], aip)
    Tw = whitened_atoms(torch.as_tensor(true, dtype=torch.float64), aip)
    cos = (Tw @ Lw.T).abs().clamp(max=1.0)  # [n_true, n_learned]
    n_true = Tw.shape[0]
    cosines = torch.zeros(n_true, dtype=torch.float64)
    assign = torch.full((n_true,), -1, dtype=torch.int64)
    if Lw.shape[0] > 0:
        r, c = linear_sum_assignment(cos.numpy(), maximize=True)
        cosines[torch.as_tensor(r)] = cos[torch.as_tensor(r), torch.as_tensor(c)]
        assign[torch.as_tensor(r)] = idx[torch.as_tensor(c)]
    return AtomRecovery(float((cosines >= threshold).to(torch.float64).mean()), float(threshold), cosines, assign)


def support_recovery(codes_hat: torch.Tensor, codes_true: torch.Tensor) -> float:
    """Fraction of rows whose non-zero pattern equals the true support exactly (SPEC §5, §8).

    Args:
        codes_hat: ``[n_tokens, n_latents]`` recovered codes, in the true atoms' order.
        codes_true: ``[n_tokens, n_latents]`` true codes.

    Raises:
        ValueError: shapes differ.
    """
    if codes_hat.shape != codes_true.shape:
        raise ValueError(f"shapes differ: {tuple(codes_hat.shape)} vs {tuple(codes_true.shape)}")
    return float(((codes_hat != 0) == (codes_true != 0)).all(dim=1).to(torch.float64).mean())


class ConstructionCheck(NamedTuple):
    """The identifiability construction run on one synthetic world (SPEC §5, §8)."""

    eps: float
    """Global AIP coherence of the true atoms (under the estimated ``S``)."""
    k: int
    """Support size ``K``."""
    delta_min: float
    """Smallest non-zero code of the ``S``-normalised atoms."""
    delta_max: float
    """Largest code of the ``S``-normalised atoms."""
    feasible: bool
    """Whether ``delta_min > eps (2K - 1) delta_max`` (the threshold interval is non-empty)."""
    margin: float
    """``delta_min / delta_max - eps (2K - 1)``: positive inside the feasible region."""
    tau: float
    """Threshold used: the interval's midpoint when feasible, else the best of the grid."""
    support_recovery: float
    """Fraction of activations whose support is recovered exactly at ``tau``."""
    best_support_recovery: float
    """Best support recovery over the threshold grid (and the midpoint)."""
    r2_literal: float
    """AIP ``R^2`` of the construction's own reconstruction ``D sigma_tau(G delta)``."""
    r2_refit: float
    """AIP ``R^2`` after the least-squares refit on the recovered supports."""


def check_construction(world: SyntheticWorld, aip: AIP, *, n_tau: int = 64) -> ConstructionCheck:
    """Run the TSAE construction on a world's true atoms and score its support recovery (paper §5, SPEC §5).

    The threshold is the midpoint of :func:`~atomsnb.sae.feasible_threshold_interval` when that is
    non-empty; otherwise the best of ``n_tau`` thresholds between 0 and ``delta_max`` ("best-tau", SPEC §8).

    Args:
        world: a :class:`SyntheticWorld` (its codes must be non-negative, as :func:`make_world` makes them).
        aip: AIP fitted on ``world.acts``.
        n_tau: size of the threshold grid.

    Returns:
        A :class:`ConstructionCheck`.
    """
    c = construct_tsae(world.mixed_atoms, aip, 1.0)
    ncodes = world.codes * c.atom_norms
    nz = ncodes[ncodes > 0]
    dmin, dmax = float(nz.min()), float(nz.max())
    K = int((world.codes != 0).sum(1).max())
    iv = feasible_threshold_interval(c.eps, K, dmin, dmax)
    with torch.no_grad():
        pre = c.sae.pre_acts(world.acts.to(torch.float64))  # = G delta
    true_support = world.codes != 0
    taus = torch.linspace(0.0, dmax, n_tau + 2, dtype=torch.float64)[1:-1]
    if iv.nonempty:
        taus = torch.cat([taus, torch.tensor([iv.mid], dtype=torch.float64)])
    rec = torch.stack([((pre > t) == true_support).all(1).double().mean() for t in taus])
    best = int(rec.argmax())
    tau = float(iv.mid) if iv.nonempty else float(taus[best])
    sup = float(rec[-1]) if iv.nonempty else float(rec[best])
    sae = construct_tsae(world.mixed_atoms, aip, tau).sae
    codes = sae.encode_raw(world.acts)
    delta = refit_on_support(world.acts, codes, c.dictionary, aip)
    return ConstructionCheck(c.eps, K, dmin, dmax, bool(iv.nonempty), dmin / dmax - c.eps * (2 * K - 1), tau, sup,
                             float(rec.max()), r2_aip(world.acts, sae.reconstruct_raw(world.acts), aip),
                             r2_aip(world.acts, delta @ c.dictionary.T, aip))


def construction_phase_grid(configs: list[SyntheticConfig], *, n_tau: int = 64, progress: bool = True):
    """Run :func:`check_construction` on one world per configuration (the phase diagram of SPEC §5).

    Args:
        configs: the worlds to sample (vary family, ``d_model``, ``k``, ``delta_min`` / ``delta_max``).
        n_tau: threshold grid size for infeasible worlds.
        progress: show a tqdm bar (``TQDM_DISABLE=1`` silences it).

    Returns:
        A pandas DataFrame, one row per world: the config's ``family, d_model, k, delta_min_cfg, delta_max_cfg``
        and every :class:`ConstructionCheck` field, plus ``coherence_bound = eps (2K - 1)`` and
        ``ratio = delta_min / delta_max`` (of the S-normalised codes).
    """
    rows = []
    bar = {} if progress else {"disable": True}  # leave `disable` unset so that TQDM_DISABLE=1 applies
    for cfg in tqdm(configs, desc="construction grid", mininterval=1.0, **bar):
        w = make_world(cfg)
        chk = check_construction(w, AIP.fit(w.acts), n_tau=n_tau)
        rows.append(dict(family=cfg.family, d_model=cfg.d_model, k_cfg=cfg.k, delta_min_cfg=cfg.delta_min,
                         delta_max_cfg=cfg.delta_max, **chk._asdict(), coherence_bound=chk.eps * (2 * chk.k - 1),
                         ratio=chk.delta_min / chk.delta_max))
    return pd.DataFrame(rows)


class MixingInvariance(NamedTuple):
    """Angles of the same activation pairs before and after the mixing ``A`` (paper §3, SPEC §1.3, §2)."""

    euclidean_clean: torch.Tensor
    """``[n_pairs]`` Euclidean angles (degrees) of the unmixed activations."""
    euclidean_mixed: torch.Tensor
    """``[n_pairs]`` Euclidean angles (degrees) of the mixed activations."""
    aip_clean: torch.Tensor
    """``[n_pairs]`` AIP angles (degrees), ``S`` fitted on the unmixed activations."""
    aip_mixed: torch.Tensor
    """``[n_pairs]`` AIP angles (degrees), ``S`` re-fitted on the mixed activations."""
    max_aip_change: float
    """``max |AIP cosine clean - AIP cosine mixed|`` over the pairs (float64 round-off if invariant)."""
    max_euclidean_change: float
    """``max |Euclidean cosine clean - Euclidean cosine mixed|`` over the pairs."""


def mixing_invariance(world: SyntheticWorld, *, n_pairs: int = 20000, seed: int = 0) -> MixingInvariance:
    """Compare Euclidean and AIP geometry of the same pairs before and after the world's mixing ``A``.

    Fits one AIP on ``world.clean_acts`` and one on ``world.acts`` (SPEC §1.3: ``S`` is re-estimated).

    Returns:
        A :class:`MixingInvariance`.
    """
    clean, mixed = world.clean_acts, world.acts
    a0, a1 = AIP.fit(clean), AIP.fit(mixed)
    i, j = sample_pairs(clean.shape[0], n_pairs, seed=seed)
    deg = lambda c: torch.rad2deg(torch.arccos(c.clamp(-1.0, 1.0)))
    ec, em = euclidean_cosines(clean[i], clean[j]), euclidean_cosines(mixed[i], mixed[j])
    ac, am = a0.inner(clean[i], clean[j]), a1.inner(mixed[i], mixed[j])
    return MixingInvariance(deg(ec), deg(em), deg(ac), deg(am), float((ac - am).abs().max()), float((ec - em).abs().max()))


def score_unit_sets(results, true_atoms: torch.Tensor, aip: AIP, *, threshold: float = 0.9):
    """The held-out rows of :func:`atomsnb.evaluation.compare_unit_sets` with the recovery of the true atoms (SPEC §7).

    Args:
        results: :class:`atomsnb.evaluation.UnitSetResults` (its ``table`` and ``units``).
        true_atoms: ``[d_model, n_true]`` true atoms in the coordinates of the activations (``world.mixed_atoms``).
        aip: the AIP the unit sets were evaluated with.
        threshold: AIP ``|cos|`` a matched atom needs to count as recovered.

    Returns:
        A DataFrame, one row per unit set (the ``"held-out"`` split): every column of ``results.table`` plus
        ``atom_recovery`` (fraction of true atoms matched with AIP ``|cos| >= threshold``, Hungarian matching,
        :func:`atom_recovery`) and ``median_match_cos``.

    Raises:
        ValueError: no held-out rows, or true atoms of another width than the unit sets.
    """
    held = results.table[results.table["split"] == "held-out"].reset_index(drop=True)
    if held.empty:
        raise ValueError("the unit-set table has no 'held-out' rows: pass the UnitSetResults of compare_unit_sets")
    true_atoms = torch.as_tensor(true_atoms, dtype=torch.float64)
    if true_atoms.dim() != 2 or true_atoms.shape[0] != aip.d_model:
        raise ValueError(f"true_atoms must be [d_model={aip.d_model}, n_true]; got shape {tuple(true_atoms.shape)}")
    rec = [atom_recovery(results.units[name].dictionary, true_atoms, aip, threshold=threshold) for name in held["unit set"]]
    return held.assign(atom_recovery=[r.fraction for r in rec],
                       median_match_cos=[float(r.cosines.median()) for r in rec])


def reader_table(scores):
    """:func:`score_unit_sets` for a reader: :func:`atomsnb.evaluation.reader_table` plus ``true atoms recovered (%)``
    and ``alive latents`` (index ``unit set``).

    Raises:
        ValueError: a table without the columns of :func:`score_unit_sets`.
    """
    missing = [c for c in ("atom_recovery", "n_alive", "split") if c not in scores]
    if missing:
        raise ValueError(f"the scores table lacks {missing}; build it with score_unit_sets")
    out = units_reader_table(scores)
    s = scores.set_index("unit set")
    out.insert(1, "true atoms recovered (%)", (100 * s["atom_recovery"]).round(1))
    out["alive latents"] = s["n_alive"].astype(int)
    return out


def _share_words(share: float) -> str:
    return ("all" if share == 1 else "most" if share > 0.5 else "no" if share == 0 else "few" if share < 0.1
            else "some")


def describe(inv: MixingInvariance | None = None, *, d_model: int | None = None,
             neuron_gram: torch.Tensor | None = None) -> list[str]:
    """Readings of the toy world's numbers that are not claims of the paper, every number-dependent word chosen
    from the numbers (the claims are :func:`atomsnb.verdicts.check_toy_aip_invariance` and the other ``check_toy_*``).

    - With ``inv``: where the mean AIP angle of random pairs sits. With the uncentred second moment the mean AIP
      cosine of random pairs is ``a / ((1 + a) H) <= 1 / H`` (SPEC §1.5), so the mean angle may sit up to
      ``arcsin(1/H)`` degrees below 90; the reading says whether it is centred on 90 within sampling noise
      (:data:`atomsnb.paper.ANGLE_NOISE_SE` standard errors), below 90 within that allowance, or outside it.
    - With ``neuron_gram``: every token uses all ``H`` neurons (``K = H``), so the neurons' ``q*`` (estimator P) is
      the share of neuron pairs whose AIP coherence ``|G_ij|`` is below the uniqueness bound ``1/(2H - 1)``
      (SPEC §4); the reading gives that share in words ("all", "most" (> 1/2), "some", "few" (< 10%), "no").

    Args:
        inv: :func:`mixing_invariance` output (its ``aip_clean`` and ``aip_mixed`` angles, degrees).
        d_model: ``H``, required with ``inv``.
        neuron_gram: ``[H, H]`` AIP ``|G|`` of the neurons (:func:`atomsnb.metrics.gram_abs` of the identity).

    Returns:
        The sentences (one per argument given).

    Raises:
        ValueError: ``inv`` without ``d_model`` (or ``d_model < 2``), a ``neuron_gram`` that is not square, or
            non-finite angles.
    """
    lines = []
    if inv is not None:
        if d_model is None or isinstance(d_model, bool) or int(d_model) != d_model or d_model < 2:
            raise ValueError(f"d_model (H) must be an integer >= 2 to read the AIP angles; got {d_model!r}")
        allowance = math.degrees(math.asin(1.0 / d_model))
        parts = []
        for what, angles in (("unmixed", inv.aip_clean), ("mixed", inv.aip_mixed)):
            a = torch.as_tensor(angles, dtype=torch.float64)
            if a.numel() < 2 or not bool(torch.isfinite(a).all()):
                raise ValueError(f"the {what} AIP angles must be at least 2 finite numbers")
            parts.append((what, float(a.mean()), float(a.std() / math.sqrt(a.numel()))))
        means = ", ".join(f"{m:.2f}° {w}" for w, m, _ in parts)
        noise = max(ANGLE_NOISE_SE * se for _, _, se in parts)
        below = max(90.0 - m for _, m, _ in parts)
        above = max(m - 90.0 for _, m, _ in parts)
        if below <= noise and above <= noise:
            where = f"centred on 90° within sampling noise ({ANGLE_NOISE_SE:g} standard errors, {noise:.2f}°)"
        elif above > noise:
            where = (f"above 90° by more than sampling noise ({noise:.2f}°), which the uncentred second moment does "
                     "not explain: the mean AIP cosine of random pairs should be >= 0 (SPEC §1.5)")
        elif below <= allowance + noise:
            where = (f"up to {below:.2f}° below 90°, within the arcsin(1/H) = {allowance:.2f}° that the uncentred "
                     f"second moment allows (mean AIP cosine of random pairs at most 1/H, SPEC §1.5)")
        else:
            where = (f"{below:.2f}° below 90°, more than the arcsin(1/H) = {allowance:.2f}° that the uncentred second "
                     "moment explains (SPEC §1.5): S is poorly estimated here")
        lines.append(f"Mean AIP angle of random pairs: {means}; {where}.")
    if neuron_gram is not None:
        g = torch.as_tensor(neuron_gram, dtype=torch.float64)
        if g.dim() != 2 or g.shape[0] != g.shape[1] or g.shape[0] < 2:
            raise ValueError(f"neuron_gram must be a square [H, H] matrix with H >= 2; got shape {tuple(g.shape)}")
        H = g.shape[0]
        off = g[torch.triu(torch.ones(H, H, dtype=torch.bool), diagonal=1)]
        bound = float(uniqueness_bound(H))
        share = float((off < bound).to(torch.float64).mean())
        lines.append(f"Every token uses all H = {H} neurons, so the neurons' q* is the share of neuron pairs whose AIP "
                     f"coherence is below the uniqueness bound 1/(2H-1) = {bound:.4f}: {_share_words(share)} pairs "
                     f"({share:.1%}; median |G_ij| {float(off.median()):.3f}, largest {float(off.max()):.3f}).")
    return lines
