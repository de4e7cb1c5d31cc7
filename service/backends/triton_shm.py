"""System shared memory for the Triton backend's inputs: one region, fixed-size slots.

Triton must share ``/dev/shm`` with the gateway (same host, or ``ipc: service:triton`` in
compose). Regions are created with ``tritonclient.utils.shared_memory`` and registered through
Triton's system-shared-memory extension; only offsets travel over the wire.
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


class ShmPool:
    """Fixed-size slots in one POSIX shared-memory region registered with Triton (inputs only).

    A request takes a slot, writes its input arrays there (one copy), sends only offsets, and
    returns the slot when the response has arrived. Requests bigger than a slot, or arriving
    while every slot is busy, use the wire instead (no waiting for a slot).
    """

    def __init__(self, slot_bytes: int, slots: int):
        from tritonclient.utils import shared_memory as shm

        self._shm = shm
        self.slot_bytes = int(slot_bytes)
        self.slots = int(slots)
        tag = f"hrnet_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        self.name, self.key = tag, "/" + tag
        self.handle = shm.create_shared_memory_region(
            self.name, self.key, self.slot_bytes * self.slots, create_only=True
        )
        self._free: asyncio.Queue[int] = asyncio.Queue()
        for i in range(self.slots):
            self._free.put_nowait(i * self.slot_bytes)
        self.registered = False
        self._lock = asyncio.Lock()

    async def ensure_registered(self, call: Callable[..., Awaitable[Any]]) -> None:
        """Register the region with Triton unless it is registered already (one registration at
        a time). ``call(method, *args, **kw)`` runs a client RPC under its deadline (the
        backend's, through its transport); a stale registration of the same name is dropped
        first. Raises whatever the registration RPC raises (the caller maps it)."""
        if self.registered:
            return
        async with self._lock:
            if self.registered:
                return
            try:
                await call("unregister_system_shared_memory", name=self.name)
            except Exception:  # not registered yet: nothing to undo  # nosec B110
                pass
            await call(
                "register_system_shared_memory", self.name, self.key, self.slot_bytes * self.slots
            )
            self.registered = True

    def try_acquire(self) -> int | None:
        """A free slot's byte offset, or None when all are in use (the caller uses the wire)."""
        try:
            return self._free.get_nowait()
        except asyncio.QueueEmpty:
            return None

    def release(self, offset: int) -> None:
        """Give back the slot at byte ``offset`` (from :meth:`try_acquire`; once per acquire)."""
        self._free.put_nowait(offset)

    def write(self, offset: int, arrays: list[np.ndarray]) -> list[tuple[int, int]]:
        """Copy ``arrays`` into the slot at ``offset``; returns (offset, nbytes) of each."""
        self._shm.set_shared_memory_region(self.handle, arrays, offset=offset)
        spans, pos = [], offset
        for a in arrays:
            spans.append((pos, a.nbytes))
            pos += a.nbytes
        return spans

    def destroy(self) -> None:
        """Unlink the POSIX shared-memory region (``tritonclient.utils.shared_memory``); call it
        after the region was unregistered from Triton. Errors are logged, not raised."""
        try:
            self._shm.destroy_shared_memory_region(self.handle)
        except Exception as exc:  # pragma: no cover - best effort at shutdown
            log.warning("could not destroy shared memory region %s: %s", self.name, exc)
