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
