"""The package's modules by stage (:data:`STAGES`), in the order of an experiment (see the package docstring).

A module of its own, imported by no module of the package: the tests (``tests/test_structure.py``) and the API page
(``tools/api_page.py``) read it, and listing a new module here changes no code fingerprint
(:mod:`atomsnb.codeprint`), so no cached result or ledger row goes stale.
"""

from __future__ import annotations

__all__ = ["STAGES"]

#: The package's modules by stage, in the order of an experiment (stage name, modules). Each module imports only
#: modules of its own or an earlier stage (tested); the API reference follows this order.
STAGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Foundations", ("stages", "paths", "io", "fingerprints", "codeprint", "codereach", "paper", "claims", "wording", "architecture")),
    ("Text and models", ("corpus", "packaged", "default_model", "models")),
    ("Activations and the AIP", ("aip", "activations", "massive", "store", "shift")),
    ("Dictionaries and unit sets", ("metrics", "sae", "sae_cache", "units", "external", "export")),
    ("Evaluation and experiments", ("_validate", "evaluation", "splice", "synthetic", "pipeline", "runner", "ledger",
                                    "grid", "layer_ledger", "scaling_train", "scaling", "parameters", "budget")),
    ("Monosemanticity", ("contexts", "judges", "ratings", "monosemanticity", "browser")),
    ("Verdicts and figures", ("verdicts", "plots")),
)
