"""Where atomsnb keeps what it computes: one cache directory, chosen by ``ATOMSNB_CACHE``.

The Makefile points ``ATOMSNB_CACHE`` into the repository (``.cache/atomsnb``) so that no
step writes outside the repo; a user of the installed package gets ``~/.cache/atomsnb``.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_dir", "shown_path"]


def cache_dir(*parts: str) -> Path:
    """Return (and create) a directory inside the atomsnb cache.

    Args:
        *parts: sub-directories below the cache root, e.g. ``cache_dir("activations")``.

    Returns:
        The directory ``$ATOMSNB_CACHE/<parts...>`` (default ``~/.cache/atomsnb``), created if missing.
    """
    root = Path(os.environ.get("ATOMSNB_CACHE") or Path.home() / ".cache" / "atomsnb")
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def shown_path(path: str | os.PathLike) -> str:
    """``path`` as a printed message shows it, without the machine's absolute paths: below ``$ATOMSNB_BUILD`` as
    ``build/...`` (the build directory's own name), else relative to the working directory, else ``~/...`` below the
    home directory; any other path as given."""
    p = Path(path).absolute()
    build = Path(os.environ.get("ATOMSNB_BUILD", "build")).absolute()
    for base, prefix in ((build, Path(build.name)), (Path.cwd(), Path()), (Path.home(), Path("~"))):
        if p.is_relative_to(base):
            return (prefix / p.relative_to(base)).as_posix()
    return str(path)
