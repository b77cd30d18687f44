"""Shared fixtures. The hub is unreachable here: make transformers fail fast instead of retrying."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch, request):
    """Each test gets a private ATOMSNB_CACHE unless it asks for the shared one (marker `shared_cache`)."""
    if request.node.get_closest_marker("shared_cache") is None:
        monkeypatch.setenv("ATOMSNB_CACHE", str(tmp_path_factory.mktemp("cache")))
    yield


@pytest.fixture
def one_thread():
    """Small tensors on a shared 2-core machine: one intra-op thread (restored afterwards)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def mixed_data(n: int = 4000, d: int = 16, seed: int = 0, offset: float = 3.0) -> torch.Tensor:
    """Anisotropic data with a common offset: [n, d] float64."""
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(d, d, generator=g, dtype=torch.float64)
    return torch.randn(n, d, generator=g, dtype=torch.float64) @ A + offset * torch.randn(d, generator=g, dtype=torch.float64)
