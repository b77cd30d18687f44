"""Task functions for the runner tests (module-level so that spawned and Dask workers can import them)."""

import os
import time

from atomsnb.runner import GridPoint


def product_task(point: GridPoint) -> dict:
    """A deterministic computation of the point's fields."""
    return {"product": point.n_train * point.n_latents + point.layer, "pid": os.getpid()}


def failing_task(point: GridPoint) -> dict:
    if point.layer == 1:
        raise RuntimeError(f"layer {point.layer} is broken")
    return product_task(point)


def slow_task(point: GridPoint) -> dict:
    time.sleep(float(point.param("sleep", 30)))
    return product_task(point)


def numpy_task(point: GridPoint) -> dict:
    """Metrics as numpy and torch scalars (what a careless fn returns): stored as plain numbers."""
    import numpy as np
    import torch

    return {"np_float": np.float32(0.5) * point.layer, "np_int": np.int64(point.n_train), "t": torch.tensor(2.0),
            "nested": {"a": [np.float64(1.5)]}}


def tensor_task(point: GridPoint) -> dict:
    """A metric that is a whole tensor: refused (recorded as an error naming the metric)."""
    import torch

    return {"codes": torch.zeros(3, 2)}


def reserved_task(point: GridPoint) -> dict:
    """A metric named like a field of the row itself."""
    return {"key": "mine", "status": "great", "product": 1}


def scalar_task(point: GridPoint) -> float:
    return 0.5


def threads_task(point: GridPoint) -> dict:
    """The torch thread count the point ran with."""
    import torch

    return {"threads": torch.get_num_threads()}
