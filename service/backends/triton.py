"""Triton Inference Server backend: the same :class:`Backend` interface, served by a remote Triton.

The gateway talks to Triton with ``tritonclient`` (``pip install 'hrnet-serving[triton]'``) over
gRPC (``tritonclient.grpc.aio``, the default) or HTTP (``tritonclient.http.aio``). Pipelines see no
difference from the embedded ONNX Runtime backend: ``infer(model, {input: array})`` returns
``{output: array}`` with the batch on axis 0, batches above the model's ``max_batch_size`` are
split (and sent concurrently, so Triton's dynamic batcher and instance groups can overlap them).

Contract with the operator:

* :meth:`TritonBackend.start` waits (``startup_timeout_s``) for Triton and every model with a card,
  reads each model's configuration from Triton and checks it against the card (tensor names,
  dtypes, dims, ``max_batch_size``). Any disagreement raises :class:`TritonModelMismatch` naming
  every problem, so the gateway refuses to start rather than serve wrong numbers.
* Every RPC has a deadline (``timeout_s``); nothing waits forever.
* When Triton is unreachable, hung or not ready, requests raise :class:`BackendUnavailable`
  (the gateway answers 503 with ``Retry-After``) immediately or at the deadline. The gRPC channel
  reconnects by itself with a short backoff (``reconnect_backoff_ms``), so service resumes when
  Triton comes back without restarting the gateway.
* Optional system shared memory for inputs (``shared_memory=True``; Triton must share ``/dev/shm``
  with the gateway, e.g. same host or ``ipc: service:triton`` in compose): input tensors are
  written once into a registered region and only their location travels over the wire.

Input tensors travel as raw binary (``raw_input_contents`` over gRPC, binary tensor extension over
HTTP), never JSON; outputs are read with ``np.frombuffer`` and copied once into the preallocated
full-batch result (which also joins split batches and makes the arrays writable, as ONNX Runtime's).

Parts: the card check in :mod:`service.backends.triton_model_config`, the shared-memory pool in
:mod:`service.backends.triton_shm`, everything protocol-specific in
:mod:`service.backends.triton_transport`; this module is the :class:`Backend` built from them.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Any, Literal

import numpy as np

from ..cards import ModelCard
from ..dtypes import NUMPY_DTYPES
from .base import Backend, BackendError, BackendUnavailable
from .triton_model_config import TritonModelConfig, TritonModelMismatch, check_model_config
from .triton_shm import ShmPool
from .triton_transport import TRANSPORTS, TritonTransport, make_transport

__all__ = ["TritonBackend", "TritonModelConfig", "TritonModelMismatch", "check_model_config"]

log = logging.getLogger(__name__)


class TritonBackend(Backend):
    """Runs the repository's models on a Triton Inference Server.

    Args:
        url: ``host:port`` of Triton's gRPC (default 8001) or HTTP (8000) endpoint, no scheme.
        protocol: ``"grpc"`` (asyncio gRPC, default) or ``"http"``.
        timeout_s: deadline of every inference and metadata call, seconds (> 0).
        startup_timeout_s: how long :meth:`start` waits for Triton and the models to be ready.
        retry_after_s: the ``Retry-After`` hint carried by :class:`BackendUnavailable`.
        ready_timeout_s: deadline of the health RPCs behind :meth:`ready` (kept short for /readyz).
        shared_memory: send inputs through system shared memory (Triton on the same host / IPC).
        shm_slot_bytes: bytes per shared-memory slot (default: the largest input of any card at
            its max batch, dynamic axes counted as 1024, at least 1 MiB, at most 64 MiB); larger
            requests fall back to the wire.
        shm_slots: concurrent requests that can use shared memory at once.
        model_version: Triton model version to call ("" = Triton's policy, usually the latest).
        reconnect_backoff_ms: max gRPC reconnect backoff; bounds how soon service resumes.

    Raises ``ValueError`` for a bad protocol/timeout and ``ImportError`` (naming the ``[triton]``
    extra) when tritonclient is missing.
    """

    name = "triton"

    def __init__(
        self,
        url: str,
        *,
        protocol: Literal["grpc", "http"] = "grpc",
        timeout_s: float = 10.0,
        startup_timeout_s: float = 60.0,
        retry_after_s: float = 1.0,
        ready_timeout_s: float = 2.0,
        shared_memory: bool = False,
        shm_slot_bytes: int | None = None,
        shm_slots: int = 4,
        model_version: str = "",
        reconnect_backoff_ms: int = 1000,
        verbose: bool = False,
    ):
        if protocol not in TRANSPORTS:
            raise ValueError(f"protocol must be 'grpc' or 'http', got {protocol!r}")
        if not (timeout_s > 0 and math.isfinite(timeout_s)):
            raise ValueError(f"timeout_s must be a finite number > 0, got {timeout_s}")
        try:
            import tritonclient  # noqa: F401
        except ImportError as exc:
            raise ImportError(
                "the Triton backend needs tritonclient: pip install "
                "'hrnet-serving[triton]' (tritonclient[grpc,http])"
            ) from exc
        for scheme in ("grpc://", "http://", "https://"):
            url = url.removeprefix(scheme)
        self.url = url.rstrip("/")
        self.transport: TritonTransport = make_transport(
            protocol, self.url, timeout_s, reconnect_backoff_ms, verbose
        )
        self.protocol = protocol
        self.timeout_s = float(timeout_s)
        self.startup_timeout_s = float(startup_timeout_s)
        self.retry_after_s = float(retry_after_s)
        self.ready_timeout_s = float(min(ready_timeout_s, timeout_s))
        self.shared_memory = bool(shared_memory)
        self.shm_slot_bytes = shm_slot_bytes
        self.shm_slots = int(shm_slots)
        self.model_version = str(model_version)
        self.cards: dict[str, ModelCard] = {}
        self.configs: dict[str, TritonModelConfig] = {}
        self._client: Any = None
        self._shm: ShmPool | None = None
        self._down_since = -1e9  # monotonic time of the last failed readiness check

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_settings(cls, settings: Any, repository: Any = None) -> TritonBackend:
        """From :class:`service.settings.Settings` (``triton_url``, ``triton_protocol``,
        ``triton_timeout_s``, ``triton_shared_memory``, ``triton_startup_timeout_s``,
        ``triton_retry_after_s``). Cards arrive later through :meth:`start`."""
        backend = cls(
            settings.triton_url,
            protocol=settings.triton_protocol,
            timeout_s=settings.triton_timeout_s,
            shared_memory=settings.triton_shared_memory,
            startup_timeout_s=settings.triton_startup_timeout_s,
            retry_after_s=settings.triton_retry_after_s,
        )
        if repository is not None:
            backend.cards = dict(repository.cards)
        return backend

    def _make_client(self) -> Any:
        return self.transport.make_client()

    def _get_client(self) -> Any:
        if self._client is None:  # created inside the running event loop (grpc.aio needs it)
            self._client = self._make_client()
        return self._client

    async def _call(self, method: str, *args: Any, timeout: float | None = None, **kw: Any) -> Any:
        """One client RPC under a deadline; tritonclient/transport errors are raised unchanged."""
        timeout = self.timeout_s if timeout is None else timeout
        return await self.transport.call(self._get_client(), method, *args, timeout=timeout, **kw)

    # ------------------------------------------------------------------ errors

    def _map_error(self, exc: BaseException, model: str | None) -> BackendError:
        """tritonclient / transport exception -> BackendUnavailable (503) or BackendError (500)."""
        from tritonclient.utils import InferenceServerException

        what = f"Triton at {self.url} ({self.protocol})" + (f", model '{model}'" if model else "")
        if isinstance(exc, InferenceServerException):
            status = str(exc.status() or "")
            msg = exc.message() or str(exc)
            if self.transport.is_unavailable(status, msg):
                self._mark_down()
                return BackendUnavailable(
                    f"{what} is unavailable: {status} {msg}".strip(),
                    retry_after_s=self.retry_after_s,
                    model=model,
                )
            return BackendError(f"{what} failed: {status} {msg}".strip(), model=model)
        if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
            self._mark_down()
            return BackendUnavailable(
                f"{what} did not answer within {self.timeout_s:g} s",
                retry_after_s=self.retry_after_s,
                model=model,
            )
        if isinstance(exc, OSError) or type(exc).__module__.startswith(("aiohttp", "grpc")):
            self._mark_down()
            return BackendUnavailable(
                f"{what} is unreachable: {type(exc).__name__}: {exc}",
                retry_after_s=self.retry_after_s,
                model=model,
            )
        return BackendError(f"{what} failed: {type(exc).__name__}: {exc}", model=model)

    def _mark_down(self) -> None:
        # A restarted Triton has forgotten our shared-memory registration.
        if self._shm is not None:
            self._shm.registered = False

    async def _register_shm(self, model: str | None) -> None:
        """Register the shared-memory pool with Triton if it is not (RPCs under ``timeout_s``);
        a failure raises the mapped :class:`BackendError` / :class:`BackendUnavailable`."""
        assert self._shm is not None  # nosec B101 - only called with shared memory on
        try:
            await self._shm.ensure_registered(self._call)
        except Exception as exc:
            raise self._map_error(exc, model) from exc

    # ------------------------------------------------------------------ start-up

    async def start(self, cards: dict[str, ModelCard] | None = None) -> None:
        """Wait for Triton and each carded model, read their configs, check them against the cards.

        Raises :class:`BackendUnavailable` if Triton or a model is not ready within
        ``startup_timeout_s`` (message names what is missing), :class:`TritonModelMismatch` listing
        every card/config disagreement (see :func:`check_model_config`). On any failure (also
        cancellation) the client is closed and the shared-memory region unregistered and destroyed
        (:meth:`close`) before the error propagates, so a failed start leaks nothing.
        """
        if cards is None:
            raise ValueError("the Triton backend starts from the repository's model cards")
        try:
            await self._start(cards)
        except BaseException:
            try:
                await self.close()
            except Exception as exc:  # pragma: no cover - best effort; the start error matters
                log.warning("cleanup after failed Triton start-up failed: %s", exc)
            raise

    async def _start(self, cards: dict[str, ModelCard]) -> None:
        self.cards = dict(cards)
        deadline = time.monotonic() + self.startup_timeout_s
        missing: list[str] = ["server"]
        last_error = ""
        while True:
            try:
                missing = []
                if not await self._call("is_server_ready", timeout=self.ready_timeout_s):
                    missing = ["server"]
                else:
                    for name in self.cards:
                        if not await self._call(
                            "is_model_ready", name, self.model_version, timeout=self.ready_timeout_s
                        ):
                            missing.append(f"model '{name}'")
            except Exception as exc:  # unreachable yet
                missing, last_error = ["server"], f"{type(exc).__name__}: {exc}"
            if not missing or time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.5)
        if missing:
            raise BackendUnavailable(
                f"Triton at {self.url} ({self.protocol}) not ready after {self.startup_timeout_s:g} s: "
                f"{', '.join(missing)} not ready" + (f" ({last_error})" if last_error else ""),
                retry_after_s=self.retry_after_s,
            )

        problems: list[str] = []
        configs: dict[str, TritonModelConfig] = {}
        for name, card in self.cards.items():
            try:
                raw = await self._call(
                    "get_model_config", name, self.model_version, **self.transport.config_kwargs()
                )
            except Exception as exc:
                raise self._map_error(exc, name) from exc
            configs[name] = TritonModelConfig.from_json(raw)
            problems += check_model_config(card, configs[name])
        if problems:
            raise TritonModelMismatch(
                "the model repository's cards do not match the models Triton serves; fix the "
                "cards or the config.pbtxt files (re-run hrnet-export) and restart:\n  - "
                + "\n  - ".join(problems)
            )
        self.configs = configs
        if self.shared_memory:
            self._shm = ShmPool(self._default_slot_bytes(), self.shm_slots)
            await self._register_shm(None)
        log.info(
            "Triton at %s (%s): %s verified against their cards%s",
            self.url,
            self.protocol,
            ", ".join(
                f"{n} [{c.platform}, max_batch {c.max_batch_size}]" for n, c in configs.items()
            )
            or "no models",
            f"; shared memory {self._shm.slots} x {self._shm.slot_bytes} B" if self._shm else "",
        )

    def _default_slot_bytes(self) -> int:
        if self.shm_slot_bytes:
            return int(self.shm_slot_bytes)
        need = 1 << 20
        for card in self.cards.values():
            total = 0
            for spec in card.inputs:
                dims = [d if d > 0 else 1024 for d in spec.dims]
                total += (
                    card.max_batch_size
                    * int(np.prod(dims))
                    * np.dtype(NUMPY_DTYPES[spec.dtype]).itemsize
                )
            need = max(need, total)
        return int(min(need, 64 << 20))

    # ------------------------------------------------------------------ inference

    def _prepare(
        self, model: str, inputs: dict[str, np.ndarray]
    ) -> tuple[ModelCard, dict[str, np.ndarray], int]:
        card = self.cards.get(model)
        if card is None or model not in self.configs:
            raise BackendError(
                f"model '{model}' is not configured in the Triton backend "
                f"(known: {sorted(self.configs)})",
                model=model,
            )
        specs = {s.name: s for s in card.inputs}
        if set(inputs) != set(specs):
            raise BackendError(
                f"model '{model}' takes inputs {sorted(specs)}, got {sorted(inputs)}", model=model
            )
        arrays: dict[str, np.ndarray] = {}
        batch = None
        for name, arr in inputs.items():
            spec = specs[name]
            a: np.ndarray = np.ascontiguousarray(
                arr, dtype=NUMPY_DTYPES[spec.dtype]
            )  # no copy when already so
            if a.ndim != len(spec.dims) + 1:
                raise BackendError(
                    f"model '{model}' input '{name}' needs {len(spec.dims) + 1} dims "
                    f"(batch + {spec.dims}), got shape {list(a.shape)}",
                    model=model,
                )
            if batch is None:
                batch = a.shape[0]
            elif a.shape[0] != batch:
                raise BackendError(
                    f"model '{model}': inputs disagree on the batch size", model=model
                )
            arrays[name] = a
        if not batch:
            raise BackendError(f"model '{model}': empty batch", model=model)
        return card, arrays, int(batch)

    async def infer(
        self, model: str, inputs: dict[str, np.ndarray], outputs: list[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Run ``model`` on Triton; arrays are ``{name: [N, ...]}`` as in :class:`Backend`.

        Inputs are cast to the card's dtype (no copy when already contiguous and of that dtype).
        Batches above ``max_batch_size`` go as concurrent requests. Raises
        :class:`BackendUnavailable` when Triton is down, hung past ``timeout_s`` or the model is
        not ready; :class:`BackendError` for anything else (bad inputs, model errors).
        """
        card, arrays, batch = self._prepare(model, inputs)
        names = list(outputs) if outputs else [s.name for s in card.outputs]
        step = min(self.configs[model].max_batch_size, card.max_batch_size)
        if batch <= step:
            parts = [await self._infer_chunk(model, arrays, names)]
        else:
            parts = await asyncio.gather(
                *[
                    self._infer_chunk(model, {k: v[s : s + step] for k, v in arrays.items()}, names)
                    for s in range(0, batch, step)
                ]
            )
        result: dict[str, np.ndarray] = {}
        for name in names:
            first = parts[0][name]
            if any(p[name].shape[1:] != first.shape[1:] for p in parts):
                raise BackendError(
                    f"model '{model}' output '{name}': split batches returned "
                    f"different shapes {[list(p[name].shape) for p in parts]}",
                    model=model,
                )
            out = np.empty((batch,) + first.shape[1:], dtype=first.dtype)
            pos = 0
            for p in parts:
                n = p[name].shape[0]
                out[pos : pos + n] = p[name]
                pos += n
            if pos != batch:
                raise BackendError(
                    f"model '{model}' output '{name}' has {pos} rows for a batch of {batch}",
                    model=model,
                )
            result[name] = out
        return result

    async def _infer_chunk(
        self, model: str, arrays: dict[str, np.ndarray], names: list[str]
    ) -> dict[str, np.ndarray]:
        card = self.cards[model]
        dtypes = {s.name: s.dtype for s in card.inputs}
        total = sum(a.nbytes for a in arrays.values())
        shm = self._shm if self._shm is not None and total <= self._shm.slot_bytes else None
        slot = None
        try:
            if shm is not None:
                await self._register_shm(model)
                slot = shm.try_acquire()
            for attempt in (0, 1):
                if slot is not None and shm is not None:
                    spans = shm.write(slot, list(arrays.values()))
                    req_inputs = [
                        self.transport.shm_input(name, a.shape, dtypes[name], shm.name, spans[i])
                        for i, (name, a) in enumerate(arrays.items())
                    ]
                else:
                    req_inputs = [
                        self.transport.wire_input(name, a, dtypes[name])
                        for name, a in arrays.items()
                    ]
                req_outputs = [self.transport.requested_output(n) for n in names]
                try:
                    res = await self._call(
                        "infer",
                        model,
                        req_inputs,
                        model_version=self.model_version,
                        outputs=req_outputs,
                    )
                    break
                except Exception as exc:
                    err = self._map_error(exc, model)
                    if (
                        slot is not None
                        and shm is not None
                        and attempt == 0
                        and not isinstance(err, BackendUnavailable)
                        and "shared memory" in str(err).lower()
                    ):
                        # Triton restarted and lost the registration: register again, retry once.
                        shm.registered = False
                        await self._register_shm(model)
                        continue
                    raise err from exc
        finally:
            if slot is not None and shm is not None:
                shm.release(slot)
        out = {}
        for n in names:
            arr = res.as_numpy(n)
            if arr is None:
                raise BackendError(
                    f"Triton returned no output '{n}' for model '{model}'", model=model
                )
            out[n] = arr
        return out

    # ------------------------------------------------------------------ health

    async def ready(self, model: str | None = None) -> bool:
        """True when Triton is ready and ``model`` (or, if None, every carded model) is ready.

        Never raises: an unreachable or slow Triton (``ready_timeout_s``) reads as not ready.
        """
        names = [model] if model is not None else list(self.cards)
        if model is not None and model not in self.configs:
            return False
        # /readyz asks once per model: after a failed server check, answer False for a second
        # instead of waiting ready_timeout_s again on a hung Triton.
        if time.monotonic() - self._down_since < 1.0:
            return False
        try:
            if not await self._call("is_server_ready", timeout=self.ready_timeout_s):
                self._down_since = time.monotonic()
                return False
            oks = await asyncio.gather(
                *[
                    self._call(
                        "is_model_ready", n, self.model_version, timeout=self.ready_timeout_s
                    )
                    for n in names
                ]
            )
            return all(oks)
        except Exception:
            self._down_since = time.monotonic()
            return False

    async def close(self) -> None:
        """Unregister shared memory (best effort) and close the connection."""
        if self._client is not None:
            if self._shm is not None and self._shm.registered:
                try:
                    await self._call(
                        "unregister_system_shared_memory",
                        name=self._shm.name,
                        timeout=self.ready_timeout_s,
                    )
                except Exception:  # best effort at shut-down; Triton drops it anyway  # nosec B110
                    pass
            try:
                await self._client.close()
            except Exception:  # pragma: no cover; closing a dead connection  # nosec B110
                pass
            self._client = None
        if self._shm is not None:
            self._shm.destroy()
            self._shm = None
