"""Bad inputs to atomsnb.external and atomsnb.splice: each is refused before any work, with a message that
names the bad value and what is allowed."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from tiny_models import save_tiny

from atomsnb.external import TransposedLayoutError, load_external_sae, load_gemma_scope, load_saelens

SAE = Path(__file__).resolve().parent / "data" / "saelens" / "standard-bdec-d16-n48"  # d_in 16, d_sae 48
JUMP = Path(__file__).resolve().parent / "data" / "saelens" / "jumprelu-constnorm-d16-n48"


def _copy(tmp: Path, src: Path = SAE, cfg: dict | None = None, drop_cfg=(), weights=None, drop_weights=()) -> Path:
    dst = tmp / "sae"
    shutil.copytree(src, dst)
    c = json.loads((dst / "cfg.json").read_text())
    c.update(cfg or {})
    for k in drop_cfg:
        c.pop(k, None)
    (dst / "cfg.json").write_text(json.dumps(c))
    w = load_file(str(dst / "sae_weights.safetensors"))
    w.update(weights or {})
    for k in drop_weights:
        w.pop(k)
    save_file(w, str(dst / "sae_weights.safetensors"))
    return dst


def _npz(tmp: Path, arrays: dict, folder="layer_3/width_16k/average_l0_82") -> Path:
    path = tmp / folder / "params.npz"
    path.parent.mkdir(parents=True)
    np.savez(path, **arrays)
    return path


def _gemma_arrays(**changes):
    w = {k: v.numpy() for k, v in load_file(str(JUMP / "sae_weights.safetensors")).items()}
    w.update(changes)
    return {k: v for k, v in w.items() if v is not None}


def _scaler(tmp: Path, text: str) -> Path:
    """The expected-average SAE with its activation_scaler.json replaced by ``text``."""
    dst = tmp / "sae"
    shutil.copytree(Path(__file__).resolve().parent / "data" / "saelens" / "jumprelu-expavg-d16-n48", dst)
    (dst / "activation_scaler.json").write_text(text)
    return dst


def _damaged_npz(tmp: Path, keep=0.5) -> Path:
    path = _npz(tmp, _gemma_arrays())
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def _damaged_model(tmp: Path) -> str:
    path = save_tiny("gpt2", tmp / "gpt2", seed=0)
    weights = Path(path) / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    return str(path)


def _load_model(name):
    from atomsnb.models import load_model

    return load_model(name)


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    from atomsnb.models import load_model

    return load_model(str(save_tiny("gpt2", tmp_path_factory.mktemp("bad-inputs") / "gpt2", seed=0)))


class _Units:
    def __init__(self, d_model=32, name="u"):
        self.d_model, self.name = d_model, name

    def reconstruct(self, x):
        return x.double()


def _win(*shape, lo=2, hi=300):
    w = torch.randint(lo, hi, shape, generator=torch.Generator().manual_seed(0))
    w[:, 0] = 0
    return w


def _splice(lm, units=None, windows=None, layer=1, **kw):
    from atomsnb.splice import spliced_scores

    return spliced_scores(lm, units if units is not None else _Units(), windows if windows is not None else _win(2, 8),
                          layer, **kw)


# (id, call(tmp, lm), exception type, substrings the message must contain)
CASES = [
    ("unknown architecture", lambda t, lm: load_saelens(_copy(t, cfg={"architecture": "gated"})),
     ValueError, ["'gated'", "['jumprelu', 'standard', 'topk']"]),
    ("missing cfg.json", lambda t, lm: (lambda d: ((d / "cfg.json").unlink(), load_saelens(d)))(_copy(t)),
     FileNotFoundError, ["['cfg.json']", "cfg.json and sae_weights.safetensors"]),
    ("missing weights file", lambda t, lm: (lambda d: ((d / "sae_weights.safetensors").unlink(), load_saelens(d)))(_copy(t)),
     FileNotFoundError, ["['sae_weights.safetensors']", "cfg.json and sae_weights.safetensors"]),
    ("not a directory", lambda t, lm: load_saelens(t / "nowhere"),
     FileNotFoundError, ["nowhere", "cfg.json and sae_weights.safetensors"]),
    ("neither format", lambda t, lm: load_external_sae(t),
     FileNotFoundError, ["holds neither", "cfg.json", "params.npz"]),
    ("hub spec malformed", lambda t, lm: load_external_sae("not-a-path"),
     FileNotFoundError, ["'not-a-path'", "'<owner>/<repo>/<folder>'"]),
    ("b_enc shape mismatch", lambda t, lm: load_saelens(_copy(t, weights={"b_enc": torch.zeros(40)})),
     ValueError, ["b_enc", "(40,)", "expected (48,)", "d_sae=48"]),
    ("W_enc shape mismatch", lambda t, lm: load_saelens(_copy(t, weights={"W_enc": torch.zeros(16, 50)})),
     ValueError, ["W_enc", "(16, 50)", "expected (16, 48)"]),
    ("cfg d_in disagrees with weights", lambda t, lm: load_saelens(_copy(t, cfg={"d_in": 20})),
     ValueError, ["(16, 48)", "expected (20, 48)", "d_in=20"]),
    ("transposed W_enc", lambda t, lm: load_saelens(_copy(t, weights={"W_enc": torch.zeros(48, 16)})),
     TransposedLayoutError, ["W_enc", "(48, 16)", "[d_in, d_sae] = (16, 48)", "Transpose"]),
    ("unsupported normalize_activations", lambda t, lm: load_saelens(_copy(t, cfg={"normalize_activations": "batch_norm"})),
     ValueError, ["'batch_norm'", "['none', 'expected_average_only_in', 'constant_norm_rescale', 'layer_norm']"]),
    ("covariance_whitening not folded", lambda t, lm: load_saelens(_copy(t, cfg={"normalize_activations": "covariance_whitening"})),
     ValueError, ["covariance_whitening", "fold_activation_whitening", "Supported: ['none'"]),
    ("hook_z reshaping", lambda t, lm: load_saelens(_copy(t, cfg={"reshape_activations": "hook_z"})),
     ValueError, ["'hook_z'", "supported: ['none']"]),
    ("expected_average_only_in without a factor", lambda t, lm: load_saelens(_copy(t, cfg={"normalize_activations": "expected_average_only_in"})),
     ValueError, ["expected_average_only_in", "activation_scaler.json", "norm_scaling_factor=s"]),
    ("scaling factor for an unnormalised SAE", lambda t, lm: load_saelens(_copy(t), norm_scaling_factor=2.0),
     ValueError, ["norm_scaling_factor=2.0", "'none'", "only to 'expected_average_only_in'"]),
    ("jumprelu without threshold", lambda t, lm: load_saelens(_copy(t, src=JUMP, drop_weights=("threshold",))),
     ValueError, ["lacks ['threshold']", "'jumprelu'", "['W_enc', 'W_dec', 'b_enc', 'b_dec', 'threshold']"]),
    ("unknown tensor", lambda t, lm: load_saelens(_copy(t, weights={"W_gate": torch.zeros(16, 48)})),
     ValueError, ["['W_gate']", "allowed: ['W_dec', 'W_enc', 'b_dec', 'b_enc']"]),
    ("topk with k = 0", lambda t, lm: load_saelens(_copy(t, cfg={"architecture": "topk", "k": 0})),
     ValueError, ["k=0", "1..d_sae=48"]),
    ("d_sae not an integer", lambda t, lm: load_saelens(_copy(t, cfg={"d_sae": "48"})),
     ValueError, ["d_sae", "'48'", "positive integer"]),
    ("unknown dtype", lambda t, lm: load_saelens(_copy(t), dtype="float8"),
     ValueError, ["'float8'", "float32", "float64"]),
    ("NaN weights", lambda t, lm: load_saelens(_copy(t, weights={"b_dec": torch.full((16,), float("nan"))})),
     ValueError, ["b_dec", "NaN"]),
    ("npz without threshold", lambda t, lm: load_gemma_scope(_npz(t, _gemma_arrays(threshold=None))),
     ValueError, ["missing: ['threshold']", "['W_enc', 'W_dec', 'b_enc', 'b_dec', 'threshold']"]),
    ("npz needing pickle", lambda t, lm: load_gemma_scope(_npz(t, {**_gemma_arrays(), "b_enc": np.array([object()] * 48)})),
     ValueError, ["readable without pickle"]),
    ("npz transposed", lambda t, lm: load_gemma_scope(_npz(t, _gemma_arrays(W_dec=np.zeros((16, 48), np.float32)))),
     TransposedLayoutError, ["W_dec", "(16, 48)", "[d_sae, d_in] = (48, 16)"]),
    ("npz b_enc of the wrong length", lambda t, lm: load_gemma_scope(_npz(t, _gemma_arrays(b_enc=np.zeros(40, np.float32)))),
     ValueError, ["b_enc in ", "params.npz has shape (40,); expected (48,)"]),
    ("npz b_dec of the wrong length", lambda t, lm: load_gemma_scope(_npz(t, _gemma_arrays(b_dec=np.zeros(20, np.float32)))),
     ValueError, ["b_dec in ", "params.npz has shape (20,); expected (16,)"]),
    ("npz threshold of the wrong length", lambda t, lm: load_gemma_scope(_npz(t, _gemma_arrays(threshold=np.zeros(47, np.float32)))),
     ValueError, ["threshold in ", "params.npz has shape (47,); expected (48,)"]),
    ("npz b_enc a matrix", lambda t, lm: load_gemma_scope(_npz(t, _gemma_arrays(b_enc=np.zeros((48, 1), np.float32)))),
     ValueError, ["b_enc in ", "params.npz' must be a vector [d_sae]", "(48, 1)"]),
    ("npz truncated", lambda t, lm: load_gemma_scope(_damaged_npz(t)),
     ValueError, ["params.npz", "BadZipFile", "download params.npz again"]),
    ("npz empty", lambda t, lm: load_gemma_scope(_damaged_npz(t, keep=0)),
     ValueError, ["params.npz", "EOFError", "download params.npz again"]),
    ("scaler file not JSON", lambda t, lm: load_saelens(_scaler(t, "{")),
     ValueError, ["activation_scaler.json is not valid UTF-8 JSON", "norm_scaling_factor=s"]),
    ("scaler file a list", lambda t, lm: load_saelens(_scaler(t, "[2.0]")),
     ValueError, ["activation_scaler.json must hold", "got [2.0]", "norm_scaling_factor=s"]),
    ("scaler factor a string", lambda t, lm: load_saelens(_scaler(t, '{"scaling_factor": "2"}')),
     ValueError, ["activation_scaler.json must hold", "finite number s > 0", "got '2'"]),
    ("scaler factor negative", lambda t, lm: load_saelens(_scaler(t, '{"scaling_factor": -1.5}')),
     ValueError, ["activation_scaler.json must hold", "got -1.5"]),
    ("damaged model weights", lambda t, lm: _load_model(_damaged_model(t)),
     ValueError, ["model.safetensors", "not a readable safetensors file", "save_pretrained"]),
    ("Gemma Scope embedding SAE", lambda t, lm: load_gemma_scope(_npz(t, _gemma_arrays(), folder="embedding/width_4k/average_l0_6")),
     ValueError, ["embedding SAE", "layer_<i>"]),
    ("no params.npz", lambda t, lm: load_gemma_scope(t),
     FileNotFoundError, ["params.npz", str(Path("layer_<i>/width_<w>/average_l0_<n>"))]),
    ("codes of the wrong width", lambda t, lm: load_saelens(SAE).codes(torch.zeros(3, 20)),
     ValueError, ["d_model=16", "(3, 20)"]),
    # splicing
    ("splice layer above range", lambda t, lm: _splice(lm, layer=3),
     ValueError, ["layer 3", "allowed 1..2"]),
    ("splice layer 0", lambda t, lm: _splice(lm, layer=0),
     ValueError, ["layer 0", "allowed 1..2"]),
    ("SAE d_model differs from the model's", lambda t, lm: _splice(lm, units=load_saelens(SAE)),
     ValueError, ["d_model=16", "d_model=32"]),
    ("unit set without reconstruct", lambda t, lm: _splice(lm, units=object()),
     ValueError, ["no reconstruct(x) method", "[n, d_model] -> [n, d_model]"]),
    ("unknown ablation", lambda t, lm: _splice(lm, ablation="random"),
     ValueError, ["'random'", "['zero', 'mean']"]),
    ("mean ablation without activations", lambda t, lm: _splice(lm, ablation="mean"),
     ValueError, ["ablation='mean' needs ablation_activations", "[n, d_model]"]),
    ("mean ablation of the wrong width", lambda t, lm: _splice(lm, ablation="mean", ablation_activations=torch.zeros(5, 16)),
     ValueError, ["d_model=32", "(5, 16)"]),
    ("token ids outside the vocabulary", lambda t, lm: _splice(lm, windows=_win(2, 8, hi=400)),
     ValueError, ["vocabulary of 300", "allowed 0..299"]),
    ("windows too short", lambda t, lm: _splice(lm, windows=_win(2, 2)),
     ValueError, ["(2, 2)", "at least 3 tokens"]),
    ("float windows", lambda t, lm: _splice(lm, windows=torch.zeros(2, 8)),
     ValueError, ["torch.float32", "integer tensor [n_windows, seq_len]"]),
    ("batch_size 0", lambda t, lm: _splice(lm, batch_size=0),
     ValueError, ["batch_size", "positive integer", "0"]),
    ("nothing to score", lambda t, lm: _splice(lm, windows=torch.zeros(2, 8, dtype=torch.long)),
     ValueError, ["no position", "(2, 8)", "[0, 1]"]),
    ("allow_mismatch not a bool", lambda t, lm: _splice(lm, allow_mismatch="yes"),
     ValueError, ["allow_mismatch must be True or False", "'yes'"]),
    ("loader layer not an integer", lambda t, lm: load_saelens(SAE, layer="3"),
     ValueError, ["layer must be", "integer >= 1", "'3'"]),
    ("duplicate unit-set names", lambda t, lm: _splice(lm, units=[_Units(), _Units()]),
     ValueError, ["two unit sets are named 'u'"]),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_with_a_clear_message(case, tmp_path, lm):
    _, call, exc_type, parts = case
    with pytest.raises(exc_type) as exc:
        call(tmp_path, lm)
    msg = str(exc.value)
    missing = [p for p in parts if p not in msg]
    assert not missing, f"message lacks {missing}: {msg}"


def test_a_failing_reconstruction_is_named(lm):
    class Broken(_Units):
        def reconstruct(self, x):
            return x.double()[:, :5]

    with pytest.raises(ValueError, match=r"unit set 'broken'.*shape \(\d+, 5\).*d_model=32"):
        _splice(lm, units=Broken(name="broken"))
