"""Top-activating contexts: the true argmax tokens, deterministic unit sampling, escaped HTML."""

import torch

from atomsnb.activations import Activations, ActivationConfig
from atomsnb.contexts import (Context, UnitContexts, normalise_token, random_contexts, render_html, sample_units,
                              top_contexts)


class WordTokenizer:
    """Token id i decodes to the word VOCAB[i]; id 0 is a special (BOS/EOS) token."""

    VOCAB = ["<s>", " the", " cat", " sat", " on", " mat", " dog", "<b>", " ran", "."]
    all_special_ids = [0]

    def decode(self, ids):
        return "".join(self.VOCAB[i] for i in ids)


def make_activations(n_windows: int = 6, seq_len: int = 9, seed: int = 0) -> Activations:
    g = torch.Generator().manual_seed(seed)
    body = torch.randint(1, len(WordTokenizer.VOCAB), (n_windows, seq_len - 1), generator=g)
    windows = torch.cat([torch.zeros(n_windows, 1, dtype=torch.long), body], dim=1)
    n = n_windows * (seq_len - 1)
    return Activations(acts={}, token_ids=body.reshape(-1), window=torch.arange(n_windows).repeat_interleave(seq_len - 1),
                       position=torch.arange(1, seq_len).repeat(n_windows), windows=windows,
                       config=ActivationConfig())


def test_top_contexts_pick_the_argmax_tokens():
    acts = make_activations()
    n = len(acts.token_ids)
    g = torch.Generator().manual_seed(1)
    codes = torch.rand(n, 3, generator=g) * 0.5
    true = {0: [17, 3, 40], 1: [5, 6, 7], 2: [n - 1, 0, 22]}
    for unit, rows in true.items():
        for r, i in enumerate(rows):
            codes[i, unit] = 10.0 - r
    out = top_contexts(codes, acts, WordTokenizer(), [0, 1, 2], k=3, width_left=3, width_right=2, unit_set="t")
    for uc in out:
        assert [c.index for c in uc.contexts] == true[uc.unit]
        assert [c.activation for c in uc.contexts] == [10.0, 9.0, 8.0]
        assert uc.n_active == n and uc.unit_set == "t"
        for c in uc.contexts:
            assert c.token_id == int(acts.token_ids[c.index])
            assert c.token == WordTokenizer.VOCAB[c.token_id]
            row = acts.windows[c.window].tolist()
            assert c.left == WordTokenizer().decode([t for t in row[max(0, c.position - 3):c.position] if t != 0])
            assert c.right == WordTokenizer().decode(row[c.position + 1:c.position + 3])
    # the first token of a window has no left context (the BOS is dropped), the last no right context
    first = out[2].contexts[1]
    assert first.position == 1 and first.left == ""
    assert out[2].contexts[0].right == ""


def test_top_contexts_only_positive_and_one_per_window():
    acts = make_activations()
    codes = torch.zeros(len(acts.token_ids), 1)
    codes[[0, 1, 2, 20], 0] = torch.tensor([4.0, 3.0, 2.0, 1.0])  # rows 0-2 share window 0, row 20 is window 2
    uc = top_contexts(codes, acts, WordTokenizer(), [0], k=8)[0]
    assert [c.index for c in uc.contexts] == [0, 1, 2, 20] and uc.n_active == 4
    uc1 = top_contexts(codes, acts, WordTokenizer(), [0], k=8, max_per_window=1)[0]
    assert [c.index for c in uc1.contexts] == [0, 20]


def test_sample_units_is_deterministic_and_respects_min_active():
    codes = torch.zeros(100, 50)
    codes[:10, ::2] = 1.0  # even units active 10 times
    codes[:3, 1::2] = 1.0  # odd units active 3 times
    a = sample_units(codes, 10, seed=3, min_active=5)
    assert a == sample_units(codes, 10, seed=3, min_active=5)
    assert len(a) == 10 and all(u % 2 == 0 for u in a) and a == sorted(a)
    assert a != sample_units(codes, 10, seed=4, min_active=5)
    assert len(sample_units(codes, 100, seed=0, min_active=5)) == 25


def test_random_contexts_and_normalise():
    acts = make_activations()
    a = random_contexts(acts, WordTokenizer(), 10, seed=0)
    assert [c.index for c in a] == [c.index for c in random_contexts(acts, WordTokenizer(), 10, seed=0)]
    assert len({c.index for c in a}) == 10
    assert normalise_token(" The") == normalise_token("the") == normalise_token("ĠTHE") == "the"
    assert normalise_token("\n") == "⏎"


def test_random_contexts_never_draw_an_excluded_token():
    acts = make_activations()
    n = len(acts.token_ids)
    exclude = torch.zeros(n, dtype=torch.bool)
    exclude[::2] = True  # every other token is excluded
    drawn = [c.index for c in random_contexts(acts, WordTokenizer(), n // 2, seed=3, exclude=exclude)]
    assert sorted(drawn) == list(range(1, n, 2)), "all and only the allowed tokens, once each"
    # without exclude the draw is what it was before the option existed: a seeded permutation of all tokens
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(3))[:5].tolist()
    assert [c.index for c in random_contexts(acts, WordTokenizer(), 5, seed=3)] == perm
    with pytest.raises(ValueError, match=f"only {n // 2} tokens that are not excluded"):
        random_contexts(acts, WordTokenizer(), n // 2 + 1, seed=0, exclude=exclude)
    with pytest.raises(ValueError, match=f"exclude must be a bool tensor of shape \\[{n}\\]"):
        random_contexts(acts, WordTokenizer(), 2, seed=0, exclude=exclude[:-1])


def test_render_html_escapes_and_highlights():
    c = Context(index=0, activation=2.0, token_id=7, token="<b>", left="if a < b & ", right=" \"x\"\n", window=0,
                position=3)
    weak = c.__class__(**{**c.__dict__, "activation": 0.5, "index": 1})
    html = render_html([UnitContexts("atoms", 5, [c, weak], n_active=12)], title="A <title>")
    assert "<b>" not in html.replace("<b>atoms", "") and "&lt;b&gt;" in html
    assert "a &lt; b &amp;" in html and "A &lt;title&gt;" in html
    assert "rgba(255, 140, 0, 1.00)" in html and "rgba(255, 140, 0, 0.36)" in html
    assert c.marked() == "if a < b & [[<b>]] \"x\"\n" and c.text == "if a < b & <b> \"x\"\n"


def test_contexts_stop_at_document_boundaries():
    acts = make_activations(n_windows=1, seq_len=9)
    acts.windows[0] = torch.tensor([0, 1, 2, 0, 3, 4, 5, 0, 6])  # BOS, doc 1 " the cat", EOS, doc 2, EOS, doc 3
    acts.token_ids = acts.windows[0, 1:].clone()
    codes = torch.zeros(8, 1)
    codes[5, 0] = 1.0  # row 5 = position 6: " mat" in doc 2 (" sat on mat")
    c = top_contexts(codes, acts, WordTokenizer(), [0], k=1, width_left=8, width_right=8)[0].contexts[0]
    assert (c.left, c.token, c.right, c.position) == (" sat on", " mat", "", 6)


def test_sample_units_counts_distinct_windows():
    acts = make_activations(n_windows=6, seq_len=9)
    codes = torch.zeros(len(acts.token_ids), 2)
    codes[:8, 0] = 1.0  # 8 tokens, all in window 0
    codes[::8, 1] = 1.0  # one token in each of the 6 windows
    assert sample_units(codes, 5, 0, min_active=5) == [0, 1]
    assert sample_units(codes, 5, 0, min_active=5, window=acts.window) == [1]


# ---------------------------------------------------------------------------------------------------------------------
# Inputs that used to give a silently wrong answer (issue 9 §4)
# ---------------------------------------------------------------------------------------------------------------------
import pytest  # noqa: E402


def test_a_negative_unit_is_refused_not_read_from_the_end():
    acts = make_activations()
    codes = torch.rand(len(acts.token_ids), 3)
    with pytest.raises(ValueError, match=r"unit -1.*0\.\.2"):
        top_contexts(codes, acts, WordTokenizer(), [-1])
    with pytest.raises(ValueError, match=r"unit 3.*0\.\.2"):
        top_contexts(codes, acts, WordTokenizer(), [3])


def test_nan_codes_are_refused_not_shown_as_the_top_context():
    acts = make_activations()
    codes = torch.rand(len(acts.token_ids), 2)
    codes[5, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        top_contexts(codes, acts, WordTokenizer(), [1])
    with pytest.raises(ValueError, match="NaN"):
        sample_units(codes, 1, seed=0, min_active=1)


def test_counts_that_would_silently_shrink_are_refused():
    acts = make_activations()
    n = len(acts.token_ids)
    with pytest.raises(ValueError, match=r"n=-3"):
        random_contexts(acts, WordTokenizer(), -3, seed=0)  # randperm(n)[:-3] returned n - 3 contexts
    with pytest.raises(ValueError, match=rf"n={n + 1}.*{n} tokens"):
        random_contexts(acts, WordTokenizer(), n + 1, seed=0)
    with pytest.raises(ValueError, match="width_left=-2"):
        top_contexts(torch.rand(n, 1), acts, WordTokenizer(), [0], width_left=-2)
    with pytest.raises(ValueError, match="max_per_window=0"):
        top_contexts(torch.rand(n, 1), acts, WordTokenizer(), [0], max_per_window=0)  # gave units with no contexts
    with pytest.raises(ValueError, match="max_contexts=0"):
        render_html([], max_contexts=0)  # 0 showed every context
    with pytest.raises(ValueError, match=r"index -1.*0\.\." ):
        from atomsnb.contexts import context_for_token
        context_for_token(acts, WordTokenizer(), -1)
