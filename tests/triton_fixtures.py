"""A real ``tritonserver`` for tests: start on free loopback ports, wait for readiness, kill, restart.

The server is the build bundled in the ``nvidia-pytriton`` wheel, installed by ``tests/triton_env.sh``
into ``build/triton-env`` with a launcher ``bin/hrnet-tritonserver`` (override with the environment
variable ``HRNET_TRITONSERVER``, a launcher or a plain ``tritonserver`` binary). It serves the
Python-backend entries written by :mod:`export.triton_adapter`.

Use from a test module::

    from tests.triton_fixtures import triton_server, triton_factory  # noqa: F401  (fixtures)

    def test_x(triton_factory, tmp_path):
        server = triton_factory(repo_dir)          # started and ready
        server.grpc_url, server.http_url           # "127.0.0.1:<port>"
        server.kill(); server.restart()            # same ports

or, without pytest, ``with triton_server(repo_dir) as server: ...``.
Tests using these skip (with the reason) only when no tritonserver is installed; with
``HRNET_REQUIRE_TRITON=1`` (CI) they fail instead, so a missing install step cannot hide.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_LAUNCHER = REPO_ROOT / "build" / "triton-env" / "bin" / "hrnet-tritonserver"


def find_tritonserver() -> Path | None:
    """The launcher/binary to run: ``$HRNET_TRITONSERVER``, else ``$HRNET_TRITON_ENV/bin/
    hrnet-tritonserver``, else ``build/triton-env/bin/hrnet-tritonserver``; None if absent."""
    env = os.environ.get("HRNET_TRITONSERVER")
    if env:
        return Path(env) if Path(env).is_file() else None
    base = os.environ.get("HRNET_TRITON_ENV")
    path = Path(base) / "bin" / "hrnet-tritonserver" if base else DEFAULT_LAUNCHER
    return path if path.is_file() else None


def require_tritonserver() -> Path:
    """The launcher path, or ``pytest.skip`` with the reason and the install command."""
    path = find_tritonserver()
    if path is None:
        reason = "tritonserver not installed: run tests/triton_env.sh (or set HRNET_TRITONSERVER)"
        if os.environ.get("HRNET_REQUIRE_TRITON", "") not in ("", "0"):
            pytest.fail(f"HRNET_REQUIRE_TRITON is set but {reason}")
        pytest.skip(reason)
    return path


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TritonServer:
    """One ``tritonserver`` process on fixed loopback ports chosen at construction.

    ``grpc_url`` / ``http_url`` are ``"127.0.0.1:<port>"`` (tritonclient style, no scheme).
    ``start()`` launches and waits for ``/v2/health/ready``; ``kill()`` SIGKILLs it (a crash);
    ``stop()`` terminates it cleanly; ``restart()`` starts again on the same ports. The server log
    goes to ``log_path`` (default: the temp folder); its tail is in every start-up error.
    """

    def __init__(
        self,
        model_repository: Path | str,
        *,
        launcher: Path | None = None,
        log_path: Path | None = None,
        extra_args: tuple[str, ...] = (),
    ):
        self.model_repository = Path(model_repository).resolve()
        self.launcher = launcher or require_tritonserver()
        self.http_port, self.grpc_port = free_port(), free_port()
        while self.grpc_port == self.http_port:
            self.grpc_port = free_port()
        self.grpc_url = f"127.0.0.1:{self.grpc_port}"
        self.http_url = f"127.0.0.1:{self.http_port}"
        self.log_path = Path(
            log_path or Path(tempfile.gettempdir()) / f"hrnet-tritonserver-{self.http_port}.log"
        )
        self.extra_args = tuple(extra_args)
        self.proc: subprocess.Popen | None = None

    def command(self) -> list[str]:
        return [
            str(self.launcher),
            f"--model-repository={self.model_repository}",
            "--http-address=127.0.0.1",
            f"--http-port={self.http_port}",
            "--grpc-address=127.0.0.1",
            f"--grpc-port={self.grpc_port}",
            "--allow-metrics=false",
            "--allow-gpu-metrics=false",
            "--pinned-memory-pool-byte-size=0",
            "--strict-readiness=true",
            "--exit-on-error=true",
            "--exit-timeout-secs=5",
            "--log-verbose=0",
            *self.extra_args,
        ]

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def start(self, timeout_s: float = 60.0) -> TritonServer:
        """Launch and block until ready; raises ``RuntimeError`` (with the log tail) otherwise."""
        if self.running:
            return self
        env = dict(os.environ)
        env.setdefault("HRNET_ADAPTER_THREADS", "1")
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
            )
        finally:
            log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"tritonserver exited with {self.proc.returncode} during "
                    f"start-up:\n{self.log_tail()}"
                )
            if self.is_ready():
                return self
            time.sleep(0.2)
        self.kill()
        raise RuntimeError(f"tritonserver not ready after {timeout_s:g} s:\n{self.log_tail()}")

    def is_ready(self) -> bool:
        """GET ``/v2/health/ready`` answers 200."""
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=1) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def _stubs(self) -> list[tuple[int, list[str]]]:
        """(pid, argv) of the server's child processes (its Python-backend stubs)."""
        if self.proc is None:
            return []
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                if ppid == self.proc.pid:
                    argv = (entry / "cmdline").read_bytes().split(b"\0")
                    found.append((int(entry.name), [a.decode(errors="replace") for a in argv]))
            except (OSError, ValueError, IndexError):
                continue
        return found

    @staticmethod
    def _reap_stubs(stubs: list[tuple[int, list[str]]]) -> None:
        # A stub orphaned while the server held one of their shared-memory mutexes waits forever;
        # kill the ones this server started (by pid) and unlink their message-queue regions.
        for pid, argv in stubs:
            try:  # still the same process (not a recycled pid)?
                same = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") == [
                    a.encode() for a in argv
                ]
            except OSError:
                same = False
            if same:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            for arg in argv:
                if arg.startswith("triton_python_backend_shm_region_") and "/" not in arg:
                    with contextlib.suppress(OSError):
                        os.unlink(os.path.join("/dev/shm", arg))

    def kill(self) -> None:
        """SIGKILL the server (what a crash looks like to clients) and its stubs; reap them."""
        if self.proc is not None and self.proc.poll() is None:
            stubs = self._stubs()
            self.proc.kill()
            self.proc.wait(timeout=30)
            self._reap_stubs(stubs)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 15 s; leftover stubs are killed."""
        if self.proc is not None and self.proc.poll() is None:
            stubs = self._stubs()
            self.resume()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
            self._reap_stubs(stubs)

    def pause(self) -> None:
        """SIGSTOP: the server keeps its sockets but answers nothing (a hung server)."""
        if self.running:
            self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)

    def restart(self, timeout_s: float = 60.0) -> TritonServer:
        """Stop if running, then start on the same ports (retrying while a port is released)."""
        self.stop()
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return self.start(timeout_s=max(5.0, deadline - time.monotonic()))
            except RuntimeError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.5)

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.resume()
        self.stop()


@contextlib.contextmanager
def triton_server(model_repository: Path | str, **kw) -> Iterator[TritonServer]:
    """Context manager: a started, ready :class:`TritonServer` on ``model_repository``; stopped after."""
    server = TritonServer(model_repository, **kw)
    with server:
        yield server


def _factory():
    launcher = require_tritonserver()
    servers: list[TritonServer] = []

    def make(model_repository: Path | str, **kw) -> TritonServer:
        kw.setdefault("launcher", launcher)
        server = TritonServer(model_repository, **kw)
        servers.append(server)
        return server.start()

    yield make
    for server in servers:
        server.resume()
        server.stop()


@pytest.fixture
def triton_factory():
    """Factory fixture: ``triton_factory(repo_dir, **kw) -> TritonServer`` (started, ready);
    every server it made is stopped at teardown. Skips when no tritonserver is installed."""
    yield from _factory()


@pytest.fixture(scope="module")
def triton_factory_module():
    """Module-scoped twin of :func:`triton_factory` (one server shared by a module's tests)."""
    yield from _factory()
