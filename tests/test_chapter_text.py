"""The chapters' prose quotes the paper's numbers from atomsnb.paper (a code cell's output), never typed by hand: a
number typed into Markdown drifts from the one the claim checks use."""

import re
from pathlib import Path

import jupytext
import pytest

from atomsnb import paper

REPO = Path(__file__).resolve().parent.parent
CHAPTERS = sorted((REPO / "notebooks").glob("*.py"))


def _paper_numbers() -> set[str]:
    """The paper's numbers as a text would write them: 0.488, 48.8, 48.80, 1.9B, 9216, 0.6-0.8, 100K."""
    values = [u[k] for u in (paper.PAPER_NEURONS, paper.PAPER_FEATURES, *paper.PAPER_ATOMS)
              for k in ("r2_aip", "q_star")]
    values += [a[k] for a in paper.PAPER_ABLATIONS for k in ("r2_aip", "q_star") if k in a]
    out = set()
    for v in values:
        out |= {f"{v:g}", f"{100 * v:.1f}", f"{100 * v:.2f}"}
    c = paper.PAPER_CAPACITY
    out |= {f"{c['max_tokens'] / 1e9:g}B", str(c["d_step"]), "{:g}-{:g}".format(*c["r2_below_critical"])}
    out |= set(re.findall(r"\d+K", paper.PAPER_S_ESTIMATE))
    # too short to tell from other numbers in prose (1, 100.0, 0.5 ...): not checked
    return {s for s in out if len(s.replace(".", "")) >= 3 and s not in ("100.0", "100.00")}


def test_the_paper_numbers_to_look_for_are_there():
    numbers = _paper_numbers()
    assert {"48.8", "68.2", "0.488", "1.9B", "9216", "0.6-0.8", "100K", "99.92"} <= numbers, numbers


@pytest.mark.parametrize("chapter", CHAPTERS, ids=[c.stem for c in CHAPTERS])
def test_markdown_types_no_paper_number(chapter):
    numbers = _paper_numbers()
    typed = []
    for cell in jupytext.read(chapter).cells:
        if cell.cell_type != "markdown":
            continue
        for line in cell.source.splitlines():
            typed += [(n, line.strip()) for n in numbers if re.search(rf"(?<![\d.]){re.escape(n)}(?![\d])", line)]
    assert not typed, f"{chapter.name} types the paper's numbers (show them from atomsnb.paper instead): {typed}"
