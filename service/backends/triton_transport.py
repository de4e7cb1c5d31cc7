"""How the Triton backend talks to Triton: gRPC or HTTP, one object per protocol.

Everything that differs between ``tritonclient.grpc.aio`` and ``tritonclient.http.aio`` lives
here: the client and its connection options, how a deadline is applied to an RPC, how input and
output tensors are declared (raw binary either way: ``raw_input_contents`` over gRPC, the binary
tensor extension over HTTP), the extra arguments of ``get_model_config``, and which errors mean
"Triton cannot serve now". :class:`service.backends.triton.TritonBackend` holds one transport and
never branches on the protocol itself. Upstream: tritonclient's ``grpc.aio`` / ``http.aio``
``InferenceServerClient`` and Triton's KServe v2 protocol (datatype names as in the card).
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

#: gRPC status codes that mean "Triton cannot serve now" (503), as tritonclient reports them.
#: NOT_FOUND: a model verified at start-up has gone (Triton restarting / reloading it).
GRPC_UNAVAILABLE = {
    "StatusCode.UNAVAILABLE",
    "StatusCode.DEADLINE_EXCEEDED",
    "StatusCode.CANCELLED",
    "StatusCode.RESOURCE_EXHAUSTED",
    "StatusCode.NOT_FOUND",
    "StatusCode.ABORTED",
}
#: HTTP status codes with the same meaning (tritonclient.http puts them in ``status()``)
HTTP_UNAVAILABLE = {"408", "429", "502", "503", "504"}
_INT32_MAX = 2**31 - 1


class TritonTransport:
    """The protocol-specific half of a Triton connection (see the module docstring).

    Args:
        url: ``host:port`` without scheme.
        timeout_s: the default deadline of an RPC, seconds.
        reconnect_backoff_ms: gRPC's max reconnect backoff (unused over HTTP).
        verbose: tritonclient's verbose flag.
    """

    protocol = ""

    def __init__(
        self, url: str, timeout_s: float, reconnect_backoff_ms: int = 1000, verbose: bool = False
    ):
        self.url, self.timeout_s = url, float(timeout_s)
        self.reconnect_backoff_ms, self.verbose = int(reconnect_backoff_ms), verbose

    def make_client(self) -> Any:
        """A new ``InferenceServerClient`` (call inside the running event loop)."""
        raise NotImplementedError

    async def call(self, client: Any, method: str, *args: Any, timeout: float, **kw: Any) -> Any:
        """``client.<method>(*args, **kw)`` under a deadline of ``timeout`` seconds; tritonclient
        and transport errors are raised unchanged."""
        raise NotImplementedError

    @property
    def client_module(self) -> Any:
        """``tritonclient.grpc`` or ``tritonclient.http`` (``InferInput``, ``InferRequestedOutput``)."""
        raise NotImplementedError

    def wire_input(self, name: str, array: np.ndarray, dtype: str) -> Any:
        """An ``InferInput`` carrying ``array`` (card dtype ``dtype``) as raw bytes in the request."""
        raise NotImplementedError

    def shm_input(
        self, name: str, shape: tuple[int, ...], dtype: str, region: str, span: tuple[int, int]
    ) -> Any:
        """An ``InferInput`` read by Triton from the registered shared-memory ``region`` at
        ``span = (offset, nbytes)``."""
        ii = self.client_module.InferInput(name, list(shape), dtype)
        ii.set_shared_memory(region, span[1], offset=span[0])
        return ii

    def requested_output(self, name: str) -> Any:
        """An ``InferRequestedOutput`` for ``name``, returned as raw bytes."""
        raise NotImplementedError

    def config_kwargs(self) -> dict[str, Any]:
        """Extra keyword arguments of ``get_model_config`` so that it returns a dict."""
        return {}

    def is_unavailable(self, status: str, message: str) -> bool:
        """True when a tritonclient error (``status()``, ``message()``) means Triton cannot serve
        now (503) rather than that the request failed (500). Either protocol's status codes
        count, and any message saying "not ready" or "unavailable"."""
        low = message.lower()
        return (
            status in GRPC_UNAVAILABLE
            or status in HTTP_UNAVAILABLE
            or "not ready" in low
            or "unavailable" in low
        )


class GrpcTransport(TritonTransport):
    """``tritonclient.grpc.aio``: deadlines as ``client_timeout``; the channel reconnects by
    itself with a short backoff; messages up to 2 GiB."""

    protocol = "grpc"

    def make_client(self) -> Any:
        import tritonclient.grpc.aio as grpcaio

        args = [
            ("grpc.max_send_message_length", _INT32_MAX),
            ("grpc.max_receive_message_length", _INT32_MAX),
            # Reconnect soon after Triton comes back (gRPC's default backoff grows to 120 s).
            ("grpc.initial_reconnect_backoff_ms", min(100, self.reconnect_backoff_ms)),
            ("grpc.min_reconnect_backoff_ms", min(100, self.reconnect_backoff_ms)),
            ("grpc.max_reconnect_backoff_ms", self.reconnect_backoff_ms),
            ("grpc.keepalive_time_ms", 10_000),
            ("grpc.keepalive_timeout_ms", int(self.timeout_s * 1000)),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
        ]
        return grpcaio.InferenceServerClient(self.url, verbose=self.verbose, channel_args=args)

    async def call(self, client: Any, method: str, *args: Any, timeout: float, **kw: Any) -> Any:
        return await getattr(client, method)(*args, client_timeout=timeout, **kw)

    @property
    def client_module(self) -> Any:
        import tritonclient.grpc as tc

        return tc

    def wire_input(self, name: str, array: np.ndarray, dtype: str) -> Any:
        ii = self.client_module.InferInput(name, list(array.shape), dtype)
        ii.set_data_from_numpy(array)
        return ii

    def requested_output(self, name: str) -> Any:
        return self.client_module.InferRequestedOutput(name)

    def config_kwargs(self) -> dict[str, Any]:
        return {"as_json": True}


class HttpTransport(TritonTransport):
    """``tritonclient.http.aio``: deadlines with ``asyncio.wait_for``; tensors through the binary
    tensor extension; an unknown model also means unavailable (Triton's HTTP answer while a
    model it served is reloading)."""

    protocol = "http"

    def make_client(self) -> Any:
        import tritonclient.http.aio as httpaio

        return httpaio.InferenceServerClient(
            self.url, verbose=self.verbose, conn_timeout=self.timeout_s
        )

    async def call(self, client: Any, method: str, *args: Any, timeout: float, **kw: Any) -> Any:
        return await asyncio.wait_for(getattr(client, method)(*args, **kw), timeout)

    @property
    def client_module(self) -> Any:
        import tritonclient.http as tc

        return tc

    def wire_input(self, name: str, array: np.ndarray, dtype: str) -> Any:
        ii = self.client_module.InferInput(name, list(array.shape), dtype)
        ii.set_data_from_numpy(array, binary_data=True)
        return ii

    def requested_output(self, name: str) -> Any:
        return self.client_module.InferRequestedOutput(name, binary_data=True)

    def is_unavailable(self, status: str, message: str) -> bool:
        return super().is_unavailable(status, message) or "unknown model" in message.lower()


TRANSPORTS: dict[str, type[TritonTransport]] = {"grpc": GrpcTransport, "http": HttpTransport}


def make_transport(
    protocol: str,
    url: str,
    timeout_s: float,
    reconnect_backoff_ms: int = 1000,
    verbose: bool = False,
) -> TritonTransport:
    """The transport for ``protocol`` (``"grpc"`` or ``"http"``); raises ValueError otherwise."""
    cls: type[TritonTransport] | None = TRANSPORTS.get(protocol)
    if cls is None:
        raise ValueError(f"protocol must be 'grpc' or 'http', got {protocol!r}")
    return cls(url, timeout_s, reconnect_backoff_ms, verbose)
