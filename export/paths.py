"""Where the project's shared real data and models live (``HRNET_SHARED_DIR`` or ``../shared``).

Standard library only, so that every part of the project can import it: the torch-free gateway's
tools, the exporter, the training tests and ``benchmarks/gpu_bench.py``, which must run where
FastAPI, httpx and pydantic are not installed (tests/benchmarks/test_gpu_bench.py).
"""

from __future__ import annotations

import os
from pathlib import Path

#: The environment variable naming the shared folder; an empty value counts as unset.
SHARED_DIR_ENV = "HRNET_SHARED_DIR"

#: The folder holding the ``export`` package: the checkout root when the code runs from a checkout.
_CODE_ROOT = Path(__file__).resolve().parents[1]


def find_project_root(start: Path) -> Path | None:
    """First of ``start`` and its parents holding ``pyproject.toml`` or ``.git``; else None.

    ``start`` is used as given (resolve it first for a path relative to the working directory).
    """
    for d in (start, *start.parents):
        if (d / "pyproject.toml").is_file() or (d / ".git").exists():
            return d
    return None


def default_shared_dir(cwd: Path | None = None) -> Path:
    """The shared data folder when no command-line option names one.

    Resolution order:

    1. ``$HRNET_SHARED_DIR`` when set and not empty, as given (not resolved, not checked);
    2. ``shared`` beside the project root (``pyproject.toml`` or ``.git``) enclosing ``cwd``
       (default: the working directory), if that folder exists;
    3. ``shared`` beside the checkout holding this code, if that folder exists;
    4. otherwise candidate 2 (``shared`` beside ``cwd`` itself when ``cwd`` is in no project), so
       that a "not found" message names the folder the user most likely meant.

    Returns an absolute path in cases 2-4. Raises nothing; callers check the folder's contents.
    """
    env = os.environ.get(SHARED_DIR_ENV, "")
    if env:
        return Path(env)
    here = (Path.cwd() if cwd is None else cwd).resolve()
    beside_cwd = (find_project_root(here) or here).parent / "shared"
    if beside_cwd.is_dir():
        return beside_cwd
    code_root = find_project_root(_CODE_ROOT)
    if code_root is not None and (code_root.parent / "shared").is_dir():
        return code_root.parent / "shared"
    return beside_cwd
