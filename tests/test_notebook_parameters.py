"""tools/run_notebook.py: parameters are checked against the chapter before any kernel starts, and papermill's own
parameter inference sees every parameter of every chapter (issue 9 §3)."""

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tools"))
import run_notebook as RN  # noqa: E402

CHAPTERS = sorted((REPO / "notebooks").glob("*.py"))
CH02 = REPO / "notebooks" / "02_neurons_features_atoms.py"


@pytest.fixture
def no_kernel(monkeypatch):
    """Record what would run instead of starting a kernel."""
    calls = []
    monkeypatch.setattr(RN, "run", lambda src, dst, parameters, kernel=RN.KERNEL: calls.append(parameters) or 0.0)
    return calls


def _main_error(argv) -> str:
    with pytest.raises(SystemExit) as exc:
        RN.main(argv)
    assert exc.value.code not in (0, None)
    return str(exc.value.code)


def test_unknown_parameter_is_refused_before_a_kernel_starts(no_kernel, tmp_path):
    msg = _main_error([str(CH02), str(tmp_path / "o.ipynb"), "-p", "leyer", "1"])
    assert "'leyer'" in msg and "did you mean 'layer'" in msg and "n_fit_tokens" in msg
    assert no_kernel == [], "the chapter ran with the default instead of the misspelt parameter"


@pytest.mark.parametrize("name, value, expected", [
    ("layer", "1.5", "int"), ("layer", "two", "int"), ("n_steps", "1e3", "int"), ("model", "123", "str"),
    ("l0_coefficients", "0.1", "list"), ("l0_coefficients", "[0.1, fast]", "numbers"), ("device", "null", "str"),
    ("seed", "true", "int"),
])
def test_value_of_the_wrong_type_is_refused(no_kernel, tmp_path, name, value, expected):
    msg = _main_error([str(CH02), str(tmp_path / "o.ipynb"), "-p", name, value])
    assert f"'{name}'" in msg and expected in msg
    assert no_kernel == []


def test_values_of_the_right_type_reach_papermill(no_kernel, tmp_path):
    assert RN.main([str(CH02), str(tmp_path / "o.ipynb"), "-p", "layer", "1", "-p", "batch_size", "512",
                    "-p", "ablation_l1_coefficient", "null",  # the chapter's comment allows None
                    "-p", "l0_coefficients", "[0.001, 0.01, 1]", "-p", "model", "gpt2"]) == 0
    assert no_kernel == [{"layer": 1, "batch_size": 512, "ablation_l1_coefficient": None,
                          "l0_coefficients": [0.001, 0.01, 1], "model": "gpt2"}]


def test_yaml_exponent_without_a_dot_is_explained(no_kernel, tmp_path):
    """PyYAML reads 1e-3 as the string '1e-3' (YAML 1.1): the chapter would get a string."""
    msg = _main_error([str(CH02), str(tmp_path / "o.ipynb"), "-p", "l0_coefficients", "[1e-3, 0.01]"])
    assert "'1e-3'" in msg and "0.001" in msg


def test_int_accepted_where_a_float_is_expected(no_kernel, tmp_path):
    RN.main([str(CH02), str(tmp_path / "o.ipynb"), "-p", "ablation_l1_coefficient", "1"])
    assert no_kernel[0] == {"ablation_l1_coefficient": 1}


@pytest.mark.parametrize("content, words", [("- model: gpt2\n", "list"), ("just a string\n", "str"), ("", "empty"),
                                            ("model: [unclosed\n", "YAML"), ("1: x\n", "1")])
def test_parameters_file_that_is_not_a_mapping_is_refused(no_kernel, tmp_path, content, words):
    f = tmp_path / "p.yaml"
    f.write_text(content)
    msg = _main_error([str(CH02), str(tmp_path / "o.ipynb"), "-f", str(f)])
    assert str(f) in msg and words in msg
    assert no_kernel == []


def test_missing_files_are_named(no_kernel, tmp_path):
    assert "no-such.yaml" in _main_error([str(CH02), str(tmp_path / "o.ipynb"), "-f", str(tmp_path / "no-such.yaml")])
    assert "nope.py" in _main_error([str(tmp_path / "nope.py"), str(tmp_path / "o.ipynb")])


def test_every_params_file_fits_a_chapter():
    """Each params/*.yaml passes the checks of at least one chapter (the one it is written for)."""
    for f in sorted((REPO / "params").glob("*.yaml")):
        params = RN.load_parameters_file(f)
        errors = {}
        for ch in CHAPTERS:
            try:
                RN.check_parameters(ch, params)
                break
            except RN.ParameterError as exc:
                errors[ch.name] = str(exc)
        else:
            pytest.fail(f"{f.name} fits no chapter: {errors}")


# Chapters whose parameters cell hides parameters from papermill today (a second '=' on the line, e.g. in a comment
# such as "# None = every block"); the lead rewrites these cells. strict: remove a chapter here once it is fixed.
HIDDEN_TODAY: dict[str, list[str]] = {}  # chapters whose parameters papermill cannot see (none left)


@pytest.mark.parametrize("chapter", [pytest.param(c, id=c.stem, marks=pytest.mark.xfail(
    strict=True, reason=f"papermill cannot see {HIDDEN_TODAY[c.name]}")) if c.name in HIDDEN_TODAY else
    pytest.param(c, id=c.stem) for c in CHAPTERS])
def test_papermill_sees_every_parameter(chapter):
    mismatch = RN.papermill_mismatch(chapter)
    assert mismatch == {"hidden": [], "extra": []}, mismatch


def test_papermill_check_finds_hidden_parameters(tmp_path):
    src = tmp_path / "ch.py"
    src.write_text('# %% [markdown]\n# # T\n\n# %% tags=["parameters"]\nlayers = None  # None = every block\n'
                   'model = "default"  # a name\nk = 3  # k >= 1\n\n# %%\nprint(k)\n')
    assert RN.papermill_mismatch(src) == {"hidden": ["layers", "k"], "extra": []}
    assert [p.name for p in RN.chapter_parameters(src)] == ["layers", "model", "k"]
