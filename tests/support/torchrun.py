"""Run a script under ``torchrun`` (``python -m torch.distributed.run``) for the DDP tests."""

from __future__ import annotations

import os
import subprocess  # nosec B404 - fixed argv: this Python, torch's own launcher, a test script
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_torchrun(
    script: Path, *args: str, cwd: Path, nproc: int = 2, timeout: float = 300
) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc-per-node nproc script args...`` in ``cwd`` with the repo on
    ``PYTHONPATH`` and one OpenMP thread per rank; asserts exit code 0 (showing the end of
    stderr) and returns the finished process."""
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    argv += ["--nproc-per-node", str(nproc), str(script), *args]
    r = subprocess.run(  # nosec B603
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return r
