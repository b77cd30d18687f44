"""What a run will cost before it starts: disk, host memory, GPU memory and time, from the formulas of the code.

:func:`resources` reads the formulas of the code that runs an experiment (the activation store's shards and stream,
:func:`atomsnb.sae.training_memory_bytes`), so the estimate moves when that code does. ``tools/resources.py``
applies it to a parameter file and writes the ``# [resources]`` lines of ``params/*.yaml``. It sits above both
:mod:`atomsnb.sae` and :mod:`atomsnb.store`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from .io import DTYPES
from .sae import training_memory_bytes
from .store import DEFAULT_BUFFER_TOKENS, _nbytes, _resolve_store_dtype, default_shard_tokens, stream_memory_bytes

__all__ = ["Rates", "resources"]


@dataclass(frozen=True)
class Rates:
    """Throughputs assumed by :func:`resources` for its time estimates (stated beside every estimate, never hidden)."""

    gpu_tflops: float = 300.0
    """Achieved bf16 matmul rate of one H100 on these shapes (about 30 % of its 989 TFLOP/s dense peak)."""
    cpu_gflops: float = 200.0
    """Achieved float32 matmul rate of the CPU (BENCHMARKS.md measured 202 GFLOP/s on 2 cores here)."""
    cpu_f64_gflops: float = 100.0
    """Achieved float64 matmul rate of the CPU, where the AIP accumulates ``sum m m^T`` (:meth:`atomsnb.aip.AIP.partial_fit`)."""
    disk_gb_s: float = 2.0
    """Sequential bandwidth of the store's filesystem (a local NVMe; shared filesystems are often slower)."""


def resources(*, d_model: int, model_params: int, n_layers_model: int, deepest_layer: int, n_layer_stores: int,
              n_store_tokens: int, n_eval_tokens: int, trainings: Sequence[tuple[int, int]], batch_size: int,
              n_aip_tokens: int, n_aip_fits: int = 1, store_dtype: str = "bfloat16", model_dtype: str = "bfloat16",
              device: str = "cuda", buffer_tokens: int = DEFAULT_BUFFER_TOKENS, seq_len: int = 128,
              forward_batch: int = 16, rates: Rates = Rates()) -> dict[str, float]:
    """Disk, host memory, GPU memory and time of a run, from the formulas of the code that runs it.

    - **disk**: ``n_layer_stores x (n_store_tokens + n_eval_tokens) x d_model x bytes(store_dtype)``;
    - **host memory**: collecting, each layer's shard buffer and its checked copy (``2 x shard bytes`` per layer
      store written in the pass); training, :func:`stream_memory_bytes` (plus :func:`atomsnb.sae.training_memory_bytes`
      on the CPU); the larger of the two;
    - **GPU memory**: the model's weights at ``model_dtype`` plus a forward batch's residual streams (collection), or
      the SAE's :func:`~atomsnb.sae.training_memory_bytes` (training), the larger;
    - **time**: collection ``2 x model_params x deepest_layer / n_layers_model`` FLOPs per token (the forward stops
      after the deepest layer; embeddings counted as compute: an upper bound) plus writing the stores; the AIP
      ``2 H^2`` float64 FLOPs per token on the CPU plus reading them; each training ``n_steps x (10 B H N + B H^2)``
      FLOPs (BENCHMARKS.md's count of a dense step, plus the per-batch whitening solve) plus reading ``B`` rows per
      step (not overlapped with compute); all at the stated :class:`Rates`. Evaluation (q*, R^2) is not included.

    Args:
        d_model, model_params, n_layers_model: the model's width, parameter count and blocks.
        deepest_layer: the deepest layer collected (the forward pass stops after it).
        n_layer_stores: layer stores written in the one collection pass.
        n_store_tokens, n_eval_tokens: rows of each layer's training (fit) store and held-out store.
        trainings: ``(n_latents, n_steps)`` of every SAE trained.
        batch_size: SAE batch.
        n_aip_tokens, n_aip_fits: tokens each AIP is fitted on, and how many AIPs are fitted.
        store_dtype, model_dtype, device, buffer_tokens, seq_len, forward_batch: as the run uses them.
        rates: assumed throughputs.

    Returns:
        ``{"disk_GB", "host_GB", "gpu_GB", "collect_hours", "aip_hours", "train_hours", "hours"}``.
    """
    _, sdt = _resolve_store_dtype(store_dtype)
    sb = _nbytes(sdt)
    mbytes = DTYPES[model_dtype].itemsize
    on_gpu = str(device).startswith("cuda")
    rows = n_store_tokens + n_eval_tokens
    disk = n_layer_stores * rows * d_model * sb
    shard = default_shard_tokens(d_model, store_dtype) * d_model * sb
    sae_max = max((training_memory_bytes(d_model, n, batch_size) for n, _ in trainings), default=0)
    host_train = stream_memory_bytes(d_model, store_dtype=store_dtype, buffer_tokens=buffer_tokens, batch_size=batch_size)
    if not on_gpu:
        host_train += sae_max
    host_collect = 2 * n_layer_stores * shard + (0 if on_gpu else model_params * mbytes)
    gpu = max(model_params * mbytes + 12 * forward_batch * seq_len * d_model * 4, sae_max) if on_gpu else 0
    rate = rates.gpu_tflops * 1e12 if on_gpu else rates.cpu_gflops * 1e9
    disk_rate = rates.disk_gb_s * 1e9
    collect_s = 2 * model_params * deepest_layer / n_layers_model * rows / rate + disk / disk_rate
    aip_s = n_aip_fits * (2 * n_aip_tokens * d_model ** 2 / (rates.cpu_f64_gflops * 1e9) + n_aip_tokens * d_model * sb / disk_rate)
    train_s = sum(steps * ((10 * batch_size * d_model * n + batch_size * d_model ** 2) / rate
                           + batch_size * d_model * sb / disk_rate) for n, steps in trainings)
    return {"disk_GB": disk / 1e9, "host_GB": max(host_train, host_collect) / 1e9, "gpu_GB": gpu / 1e9,
            "collect_hours": collect_s / 3600, "aip_hours": aip_s / 3600, "train_hours": train_s / 3600,
            "hours": (collect_s + aip_s + train_s) / 3600}
