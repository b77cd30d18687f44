"""atomsnb: the reproducible companion to *Towards Atoms of Large Language Models* (Hu et al., ICML 2026).

One module per idea of the paper:

- :mod:`atomsnb.aip`: the atomic inner product, whitening and angle statistics (paper §3, SPEC §1-2).
- :mod:`atomsnb.corpus`: offline text (standard-library docstrings), local files, HF datasets.
- :mod:`atomsnb.default_model`: the small GPT-2-architecture model built offline.
- :mod:`atomsnb.models`: one loader for every causal LM (hub name, local path, the default).
- :mod:`atomsnb.activations`: residual-stream activations through forward hooks, cached.
- :mod:`atomsnb.claims`: each chapter's claim checks, for the reproduction-status page.
"""

__version__ = "0.1.0"
