"""Load shedding before the body is read (service.shedding): the busy-time rate, the expected
wait, who is refused and how. A fake clock and gated requests order the steps; no timing."""

from __future__ import annotations

import asyncio
import json

from prometheus_client import REGISTRY

from service.shedding import EndpointLoad, LoadShedder


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_rate_counts_busy_seconds_only():
    """Two requests of 1 s each, 10 s apart: 1 completion per busy second (2 marks, 1 s apart),
    not 1 per 11 s; two overlapping requests finishing 0.5 s apart add marks 0.5 s apart."""
    load = EndpointLoad(window=8)
    load.start(0.0)
    load.finish(1.0)
    assert load.rate() is None  # one completion: no rate yet
    load.start(11.0)
    load.finish(12.0)
    assert list(load.marks) == [1.0, 2.0] and load.rate() == 1.0
    load.start(20.0)
    load.start(20.0)
    load.finish(21.0)  # busy 3.0
    assert load.expected_wait() == (1 / (2 / 2.0))  # 1 in flight at 3 marks over 2 busy s
    load.finish(21.5)  # busy 3.5
    assert list(load.marks) == [1.0, 2.0, 3.0, 3.5] and load.rate() == 3 / 2.5
    assert load.in_flight == 0 and load.expected_wait() == 0.0


def test_window_keeps_the_last_completions():
    load = EndpointLoad(window=3)
    for i in range(5):
        load.start(float(i))
        load.finish(i + 0.5)
    assert list(load.marks) == [1.5, 2.0, 2.5]


class Gated:
    """An ASGI app answering 200 once ``release`` is set; counts calls."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.calls = 0

    async def __call__(self, scope, receive, send):
        self.calls += 1
        await self.release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


async def one_request_taking(shed, inner: Gated, clock: Clock, seconds: float) -> int:
    """One request held ``seconds`` of fake time inside the app; returns its status."""
    inner.release.clear()
    task = asyncio.create_task(call(shed))
    for _ in range(3):
        await asyncio.sleep(0)
    clock.t += seconds
    inner.release.set()
    status = (await task)[0]
    inner.release.clear()
    return status


async def call(app, path="/pose", method="POST", chunks=(b"a" * 10, b"b" * 5)):
    """Run one request through ``app``; returns (status, headers, body, chunks read)."""
    scope = {"type": "http", "path": path, "method": method, "headers": []}
    queue = list(chunks)
    read = []

    async def receive():
        body = queue.pop(0) if queue else b""
        read.append(body)
        return {"type": "http.request", "body": body, "more_body": bool(queue)}

    sent = []

    async def send(message):
        sent.append(message)

    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], dict(start["headers"]), body, read


def test_requests_past_the_deadline_get_503_with_retry_after_before_the_app_runs():
    """History: 2 requests of 1 busy second each -> 1 request/s. Deadline 2 s: with 2 in flight
    (wait 2 s) a third is admitted; with 3 in flight (wait 3 s) the fourth is refused: 503
    overloaded, Retry-After 3, its body read off the connection (both chunks), the app not
    called, the connection kept (no Connection: close); other paths and GETs pass."""

    async def main():
        clock, inner = Clock(), Gated()
        shed = LoadShedder(inner, deadline_s=2.0, min_inflight=1, clock=clock)
        for _ in range(2):
            assert await one_request_taking(shed, inner, clock, 1.0) == 200
        assert shed.loads["/pose"].rate() == 1.0
        held = [asyncio.create_task(call(shed)) for _ in range(3)]
        for _ in range(5):
            await asyncio.sleep(0)
        assert inner.calls == 5 and shed.loads["/pose"].in_flight == 3
        before = REGISTRY.get_sample_value("hrnet_shed_rejections_total", {"endpoint": "pose"})
        status, headers, body, read = await call(shed)
        assert status == 503 and inner.calls == 5
        assert headers[b"retry-after"] == b"3" and b"connection" not in headers
        err = json.loads(body)["error"]
        assert err["code"] == "overloaded" and "3.0 s exceeds the 2 s deadline" in err["message"]
        assert read == [b"a" * 10, b"b" * 5]
        after = REGISTRY.get_sample_value("hrnet_shed_rejections_total", {"endpoint": "pose"})
        assert after == (before or 0) + 1
        # not watched: passes even now
        inner.release.set()
        assert (await call(shed, path="/models"))[0] == 200
        assert (await call(shed, method="GET"))[0] == 200
        assert [(await t)[0] for t in held] == [200, 200, 200]
        assert shed.loads["/pose"].in_flight == 0

    asyncio.run(main())


def test_min_inflight_requests_are_always_admitted_and_zero_deadline_is_off():
    """A slow history (0.1 request/s) would refuse the 2nd request, but min_inflight=2 admits it;
    the 3rd is refused. With deadline 0 nothing is refused."""

    async def main():
        clock, inner = Clock(), Gated()
        shed = LoadShedder(inner, deadline_s=1.0, min_inflight=2, clock=clock)
        for _ in range(2):
            await one_request_taking(shed, inner, clock, 10.0)
        held = [asyncio.create_task(call(shed)) for _ in range(2)]
        for _ in range(4):
            await asyncio.sleep(0)
        assert shed.loads["/pose"].in_flight == 2
        assert (await call(shed))[0] == 503
        off = LoadShedder(inner, deadline_s=0.0, clock=clock)
        off.loads["/pose"] = shed.loads["/pose"]  # same overloaded state
        late = asyncio.create_task(call(off))
        inner.release.set()
        assert (await late)[0] == 200
        assert [(await t)[0] for t in held] == [200, 200]

    asyncio.run(main())
