"""Cross-request dynamic batching for the embedded backend, with Triton's dynamic-batcher semantics.

One :class:`DynamicBatcher` per model (created by the backend instance that owns the sessions, keyed
by model name). Requests submit ``{input: array}`` with ``N_i`` items on axis 0; one worker task
per model instance takes items from the head of a FIFO queue and runs them as one batch:

* a batch holds at most the card's ``max_batch_size`` items; items of a request larger than that
  (or than the room left in a batch) go in several batches and are reassembled in order;
* with ``preferred_sizes`` the largest preferred size the queue can fill is sent at once (Triton's
  ``preferred_batch_size``); otherwise a batch is sent when it is full, or when its oldest request
  has waited ``max_queue_delay_s`` (Triton's ``max_queue_delay_microseconds``), or when the next
  queued request cannot join (other per-item shape, dtype or output names);
* what is due is spread over the idle instances (``ceil(items / idle instances)`` a batch), so
  one large request uses every instance; Triton instead sends a request whole to one instance;
* the run goes to a shared thread pool (the backend's: by default one single-threaded ORT run
  per core), the outputs are split back per request.

The queue is bounded (Triton's ``default_queue_policy``): a request is refused at once with
:class:`Overloaded` (503 + ``Retry-After``) when its items do not fit in ``queue_capacity``
(``reason="queue_full"``) or when the expected wait before it runs (the items ahead of it times
the recent per-item service time) would pass its deadline (``reason="deadline"``); a queued request whose deadline
passes before any of its items ran is dropped with the same error (``reason="expired"``). The
deadline runs from the request's arrival: :meth:`DynamicBatcher.admit` (called by the endpoint
before it decodes the image, see :func:`admission`) reserves room for the request, so requests
still being preprocessed count in the queue, and cheap refusals come before any CPU work.

A batch whose run raises fails only the requests with items in it (with the backend's error); the
worker keeps going. Metrics (Prometheus, the gateway's registry), labelled by model:
``hrnet_batch_queue_items`` (gauge: queued + reserved items), ``hrnet_batch_size`` (histogram,
items per run), ``hrnet_batch_queue_wait_seconds`` (histogram: arrival to first run),
``hrnet_batch_rejections_total`` (counter by ``reason``).
"""

from __future__ import annotations

import asyncio
import contextvars
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from dataclasses import dataclass, field

import numpy as np
from prometheus_client import Counter, Gauge, Histogram

from .backends.base import BackendError, BackendUnavailable

QUEUE_ITEMS = Gauge(
    "hrnet_batch_queue_items",
    "Items waiting in the dynamic batcher's queue (incl. admitted requests being preprocessed)",
    ["model"],
)
BATCH_SIZE = Histogram(
    "hrnet_batch_size",
    "Items per batched inference run",
    ["model"],
    buckets=(1, 2, 4, 8, 12, 16, 24, 32, 48, 64),
)
QUEUE_WAIT = Histogram(
    "hrnet_batch_queue_wait_seconds",
    "Seconds from a request's arrival to its first batched run",
    ["model"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8),
)
REJECTIONS = Counter(
    "hrnet_batch_rejections_total",
    "Requests refused by the dynamic batcher (503 + Retry-After)",
    ["model", "reason"],
)

RunFn = Callable[[dict, list | None], dict]


class Overloaded(BackendUnavailable):
    """503 + ``Retry-After``: the model's queue cannot take the request now.

    ``reason``: ``queue_full`` (no room for its items), ``deadline`` (the expected wait exceeds
    the deadline) or ``expired`` (the deadline passed while queued). ``retry_after_s``: the
    estimated time for the queue to drain, at least 1 s.
    """

    code = "overloaded"

    def __init__(self, message: str, reason: str, retry_after_s: float = 1.0):
        super().__init__(message, retry_after_s=max(1.0, retry_after_s))
        self.reason = reason


@dataclass(frozen=True)
class BatchConfig:
    """Dynamic-batcher settings (see :class:`DynamicBatcher`).

    ``max_queue_delay_s``: seconds the oldest queued request may wait for a fuller batch.
    ``queue_capacity``: most items queued per model (a larger single request is admitted only
    into an empty queue). ``deadline_s``: seconds from arrival a request may wait before it runs
    (0 = none). ``preferred_sizes``: batch sizes sent as soon as the queue can fill them (empty:
    only the model's max batch size). ``instances``: batches of one model in flight at once.
    ``instances`` 0: the backend's concurrent runs (resolved by the backend that makes the
    batcher). ``max_size``: most items a batch (0: the model's ``max_batch_size``; a lower value caps it,
    for models whose per-item time grows with the batch on this CPU); ``max_sizes``: per-model
    ``(name, cap)`` pairs overriding ``max_size``.
    """

    max_queue_delay_s: float = 0.002
    queue_capacity: int = 256
    deadline_s: float = 8.0
    preferred_sizes: tuple[int, ...] = ()
    instances: int = 1
    max_size: int = 0
    max_sizes: tuple[tuple[str, int], ...] = ()

    def max_size_for(self, model: str) -> int:
        """The batch-size cap of ``model`` (0: none beyond its card)."""
        return dict(self.max_sizes).get(model, self.max_size)

    @classmethod
    def from_settings(cls, settings) -> BatchConfig | None:
        """The config from gateway :class:`~service.settings.Settings`; None when batching is off."""
        if not settings.batching:
            return None
        return cls(
            max_queue_delay_s=settings.batch_max_queue_delay_ms / 1e3,
            queue_capacity=settings.batch_queue_capacity,
            deadline_s=settings.batch_deadline_s,
            preferred_sizes=tuple(settings.batch_preferred_sizes),
            instances=settings.batch_instances,  # 0: the backend's concurrent runs
            max_size=settings.batch_max_size,
            max_sizes=tuple(sorted(settings.batch_max_sizes.items())),
        )


@dataclass(eq=False)
class Ticket:
    """An admitted request's place in a batcher: ``items`` reserved until it submits its inputs."""

    batcher: DynamicBatcher
    arrival: float
    items: int
    released: bool = False


# the ticket of the request being served in this task (set by :func:`admission`)
_TICKET: contextvars.ContextVar[Ticket | None] = contextvars.ContextVar(
    "hrnet_batch_ticket", default=None
)


@dataclass(eq=False)
class _Request:
    inputs: dict[str, np.ndarray]
    outputs: list | None
    n: int
    key: tuple
    future: asyncio.Future
    arrival: float
    deadline: float
    taken: int = 0  # items handed to batches so far
    done: int = 0  # items whose outputs came back
    parts: list = field(default_factory=list)  # (start item, {output: array})


class DynamicBatcher:
    """Batches the items of concurrent requests to one model (see the module docstring).

    ``run(inputs, outputs)`` is the blocking inference function (``{name: (B, ...) array}`` ->
    ``{name: (B, ...) array}``), called in ``executor``. ``max_batch_size`` >= 1 items. Must be
    used from one event loop; its worker tasks start on the first :meth:`submit`.
    """

    def __init__(
        self,
        model: str,
        run: RunFn,
        executor: Executor | None,
        max_batch_size: int,
        config: BatchConfig = BatchConfig(),
    ):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if config.queue_capacity < 1 or config.instances < 1:
            raise ValueError(f"queue_capacity and instances must be >= 1: {config}")
        self.model, self.run, self.executor = model, run, executor
        cap = config.max_size_for(model)
        self.max_batch_size = min(max_batch_size, cap) if cap > 0 else max_batch_size
        self.config = config
        self.preferred = sorted(
            {p for p in config.preferred_sizes if 1 <= p <= self.max_batch_size}
        )
        self._queue: deque[_Request] = deque()
        self.queued_items = 0  # not yet handed to a batch
        self.reserved_items = 0  # admitted requests that have not submitted yet
        self.inflight_items = 0
        self.busy = 0  # workers running a batch
        self.per_item_s = 0.0  # recent service seconds per item (EMA over runs)
        self.items_per_request = 1.0  # recent items per request (EMA): the reservation size
        self._event: asyncio.Event | None = None
        self._workers: list[asyncio.Task] = []
        self._closed = False

    # ------------------------------------------------------------------ admission
    def _expected_wait(self, extra_items: float) -> float:
        ahead = self.queued_items + self.reserved_items + self.inflight_items + extra_items
        return ahead * self.per_item_s / self.config.instances

    def _refuse(self, reason: str, message: str) -> Overloaded:
        REJECTIONS.labels(self.model, reason).inc()
        return Overloaded(
            f"model '{self.model}' is overloaded: {message}",
            reason,
            retry_after_s=math.ceil(self._expected_wait(0)),
        )

    def _check(self, n: float, arrival: float) -> None:
        """Raise :class:`Overloaded` unless ``n`` more items fit and would start before the deadline."""
        if self._closed:
            raise BackendUnavailable(f"the batcher of model '{self.model}' is closed")
        waiting = self.queued_items + self.reserved_items
        if waiting > 0 and waiting + n > self.config.queue_capacity:
            raise self._refuse(
                "queue_full", f"{waiting:.0f} items queued, capacity {self.config.queue_capacity}"
            )
        if self.config.deadline_s > 0:  # the wait before its first items run (an idle model
            left = arrival + self.config.deadline_s - time.monotonic()  # always admits)
            wait = self._expected_wait(0)
            if wait > 0 and wait > left:
                raise self._refuse(
                    "deadline",
                    f"expected wait {wait:.2f} s exceeds the {self.config.deadline_s:g} s deadline",
                )

    def admit(self) -> Ticket:
        """Admit a request before its inputs exist, reserving room for the recent mean item count.

        Raises :class:`Overloaded` at once when that would not fit or not run in time. The ticket
        must be given back with :meth:`release` (:func:`admission` does both).
        """
        now = time.monotonic()
        n = max(1, round(self.items_per_request))
        self._check(n, now)
        self.reserved_items += n
        self._update_gauge()
        return Ticket(self, now, n)

    def release(self, ticket: Ticket) -> None:
        """Give back a ticket's reservation (idempotent)."""
        if not ticket.released:
            ticket.released = True
            self.reserved_items -= ticket.items
            self._update_gauge()

    # ------------------------------------------------------------------ submit
    async def submit(
        self, inputs: dict[str, np.ndarray], outputs: list | None = None
    ) -> dict[str, np.ndarray]:
        """Queue ``inputs`` (every array with the same ``N`` >= 0 items on axis 0) and return the
        outputs for exactly these items, in order (``{name: (N, ...) array}``).

        Raises :class:`Overloaded` (refused or expired), :class:`BackendUnavailable` (closed) or
        whatever ``run`` raised for a batch holding these items.
        """
        arrays = {k: np.asarray(v) for k, v in inputs.items()}
        sizes = {v.shape[0] for v in arrays.values()}
        if len(sizes) != 1:
            raise BackendError(
                f"inputs of model '{self.model}' disagree on the batch size: "
                f"{ {k: v.shape for k, v in arrays.items()} }"
            )
        n = sizes.pop()
        ticket = _TICKET.get()
        arrival = time.monotonic()
        if ticket is not None:
            arrival = ticket.arrival
            if ticket.batcher is self:
                self.release(ticket)
        self._check(n, arrival)
        if n == 0:
            return await self._run_now(arrays, outputs)
        self.items_per_request += 0.2 * (n - self.items_per_request)
        self._start()
        key = (
            tuple((k, v.shape[1:], v.dtype.str) for k, v in arrays.items()),
            tuple(outputs) if outputs is not None else None,
        )
        deadline = arrival + self.config.deadline_s if self.config.deadline_s > 0 else math.inf
        req = _Request(
            arrays, outputs, n, key, asyncio.get_running_loop().create_future(), arrival, deadline
        )
        self._queue.append(req)
        self.queued_items += n
        self._update_gauge()
        self._wake().set()
        return await req.future  # cancelled: the worker skips it

    async def _run_now(self, inputs, outputs):
        return await asyncio.get_running_loop().run_in_executor(
            self.executor, self.run, inputs, outputs
        )

    # ------------------------------------------------------------------ worker
    def _wake(self) -> asyncio.Event:
        """The worker's wake-up event, made on first use inside the running loop."""
        if self._event is None:
            self._event = asyncio.Event()
        return self._event

    def _start(self) -> None:
        self._wake()
        self._workers = [t for t in self._workers if not t.done()]
        while len(self._workers) < self.config.instances:
            self._workers.append(
                asyncio.get_running_loop().create_task(self._worker(), name=f"batcher-{self.model}")
            )

    def _update_gauge(self) -> None:
        QUEUE_ITEMS.labels(self.model).set(self.queued_items + self.reserved_items)

    def _remove(self, req: _Request) -> None:
        self._queue.remove(req)
        self.queued_items -= req.n - req.taken

    def _prune(self, now: float) -> None:
        """Drop requests that were cancelled or failed, and those whose deadline passed unrun."""
        for req in [
            r for r in self._queue if r.future.done() or (r.taken == 0 and r.deadline < now)
        ]:
            self._remove(req)
            if not req.future.done():
                req.future.set_exception(
                    self._refuse(
                        "expired",
                        f"waited {now - req.arrival:.2f} s, past the "
                        f"{self.config.deadline_s:g} s deadline",
                    )
                )
        self._update_gauge()

    def _available(self) -> tuple[int, bool]:
        """Items that could join the head batch (uncapped), and whether a request that cannot
        join follows them."""
        head_key, total = self._queue[0].key, 0
        for req in self._queue:
            if req.key != head_key:
                return total, True
            total += req.n - req.taken
        return total, False

    async def _next_batch(self) -> list[tuple[_Request, int, int]]:
        """Wait until a batch is due (Triton's rules, see the module docstring); take its items."""
        while True:
            now = time.monotonic()
            self._prune(now)
            if not self._queue:
                self._wake().clear()
                await self._wake().wait()
                continue
            due, blocked = self._available()
            avail = min(due, self.max_batch_size)
            fits = [p for p in self.preferred if p <= avail]
            delay_left = self._queue[0].arrival + self.config.max_queue_delay_s - now
            if fits and (not blocked and avail < self.max_batch_size) and delay_left > 0:
                size = fits[-1]  # a preferred size is ready: send it now
            elif avail >= self.max_batch_size or blocked or delay_left <= 0:
                size = avail
            else:
                self._wake().clear()
                try:
                    await asyncio.wait_for(self._wake().wait(), delay_left)
                except asyncio.TimeoutError:
                    pass
                continue
            # spread what is due over the idle instances (this worker is one of them)
            idle = max(1, self.config.instances - self.busy)
            size = min(size, math.ceil(due / idle))
            batch = self._take(size)
            if self._queue:  # another idle worker takes the rest
                self._wake().set()
            return batch

    def _take(self, size: int) -> list[tuple[_Request, int, int]]:
        batch, left = [], size
        for req in list(self._queue):
            if left == 0:
                break
            count = min(req.n - req.taken, left)
            if req.taken == 0:
                QUEUE_WAIT.labels(self.model).observe(time.monotonic() - req.arrival)
            batch.append((req, req.taken, count))
            req.taken += count
            left -= count
            if req.taken == req.n:
                self._queue.popleft()
        self.queued_items -= size
        self._update_gauge()
        return batch

    def _timed_run(self, batch, size: int, outputs):
        """The batch's inputs (requests' item ranges stacked; one range is passed as a view, no
        copy) run by ``self.run``, in the executor's thread: the copy stays off the event loop.
        Returns (outputs, seconds of the run alone)."""
        first = batch[0][0]
        inputs = {
            k: np.concatenate([r.inputs[k][s : s + c] for r, s, c in batch], axis=0)
            if len(batch) > 1
            else first.inputs[k][batch[0][1] : batch[0][1] + size]
            for k in first.inputs
        }
        t0 = time.perf_counter()
        out = self.run(inputs, outputs)
        return out, time.perf_counter() - t0

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            size = sum(c for _, _, c in batch)
            BATCH_SIZE.labels(self.model).observe(size)
            self.inflight_items += size
            self.busy += 1
            try:
                out, seconds = await loop.run_in_executor(
                    self.executor, self._timed_run, batch, size, batch[0][0].outputs
                )
                bad = {k: v.shape for k, v in out.items() if len(v) != size}
                if bad:
                    raise BackendError(
                        f"model '{self.model}' returned outputs {bad} for a batch of {size} items"
                    )
            except asyncio.CancelledError:  # closed while running: its requests get a 503
                self._fail(
                    batch,
                    BackendUnavailable(
                        f"the batcher of model '{self.model}' closed", retry_after_s=1.0
                    ),
                )
                raise
            except Exception as exc:  # the batch's requests fail, the worker goes on
                self._fail(batch, exc)
                continue
            finally:
                self.inflight_items -= size
                self.busy -= 1
            self.per_item_s += (0.3 if self.per_item_s else 1.0) * (
                seconds / size - self.per_item_s
            )
            self._scatter(batch, out)

    def _fail(self, batch, exc: Exception) -> None:
        for req, _, _ in batch:
            if not req.future.done():
                req.future.set_exception(exc)
            if req in self._queue:  # its remaining items would be wasted
                self._remove(req)
        self._update_gauge()

    @staticmethod
    def _scatter(batch, out: dict[str, np.ndarray]) -> None:
        offset = 0
        for req, start, count in batch:
            req.parts.append((start, {k: v[offset : offset + count] for k, v in out.items()}))
            offset += count
            req.done += count
            if req.done == req.n and not req.future.done():
                parts = [p for _, p in sorted(req.parts, key=lambda sp: sp[0])]
                req.future.set_result(
                    parts[0]
                    if len(parts) == 1
                    else {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
                )

    async def close(self) -> None:
        """Stop the workers; queued requests fail with :class:`BackendUnavailable`."""
        self._closed = True
        for t in self._workers:
            t.cancel()
        for t in self._workers:
            try:
                await t
            except (asyncio.CancelledError, Exception):
                pass
        self._workers.clear()
        for req in list(self._queue):
            if not req.future.done():
                req.future.set_exception(
                    BackendUnavailable(
                        f"the batcher of model '{self.model}' closed", retry_after_s=1.0
                    )
                )
        self._queue.clear()
        self.queued_items = 0
        self._update_gauge()


@asynccontextmanager
async def _admitted(batcher: DynamicBatcher) -> AsyncIterator[Ticket]:
    ticket = batcher.admit()
    token = _TICKET.set(ticket)
    try:
        yield ticket
    finally:
        _TICKET.reset(token)
        batcher.release(ticket)


def admission(backend, model: str) -> AbstractAsyncContextManager:
    """Async context manager admitting one request for ``model`` into ``backend``'s dynamic batcher.

    Entered before the request's CPU work; raises :class:`Overloaded` (503 + ``Retry-After``) at
    once when the model's queue is full or the request would miss its deadline. A no-op for
    backends or models without a batcher (Triton batches on its own).
    """
    batcher_for = getattr(backend, "batcher", None)
    batcher = batcher_for(model) if batcher_for is not None else None
    return nullcontext() if batcher is None else _admitted(batcher)
