"""The dynamic batcher (service.batching): ordering, scatter, splitting, bounded queue, deadline,
failure isolation; and through the real gateway, that batching does not change PP-TinyPose's
keypoints. No timing assertions: a gate (threading.Event) holds the fake model inside its run so
that requests queue up deterministically behind it."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY

from service.app import create_app
from service.backends.base import BackendError, BackendUnavailable
from service.batching import BatchConfig, DynamicBatcher, Overloaded, admission
from service.settings import Settings


class FakeModel:
    """``y = 10 * x + 1`` on ``x`` (items tagged ``[request id, item index]``); records each batch's
    tags; the first run waits for ``gate``; a batch holding request id 666 raises."""

    def __init__(self):
        self.gate = threading.Event()
        self.started = threading.Event()
        self.batches: list[list[tuple[int, int]]] = []

    def __call__(self, inputs, outputs):
        x = inputs["x"]
        self.started.set()
        self.gate.wait(30)
        self.batches.append([tuple(int(v) for v in row) for row in x])
        if (x[:, 0] == 666).any():
            raise BackendError("the fake model failed on request 666")
        return {"y": x * 10 + 1}


def tagged(rid: int, n: int) -> dict[str, np.ndarray]:
    return {"x": np.stack([np.full(n, rid), np.arange(n)], axis=1).astype(np.int64)}


def make(max_batch=8, **cfg) -> tuple[DynamicBatcher, FakeModel, ThreadPoolExecutor]:
    fake, pool = FakeModel(), ThreadPoolExecutor(1)
    cfg.setdefault("max_queue_delay_s", 0.0)
    return DynamicBatcher("fake", fake, pool, max_batch, BatchConfig(**cfg)), fake, pool


async def hold(b: DynamicBatcher, fake: FakeModel, n: int = 1) -> asyncio.Task:
    """Put an ``n``-item blocker (request id 0) in flight; the fake holds it until ``fake.gate``."""
    t = asyncio.create_task(b.submit(tagged(0, n)))
    await until(fake.started.is_set)
    return t


async def until(condition, limit_s: float = 30.0) -> None:
    """Wait (bounded) until ``condition()`` holds: state, not time, orders the tests' steps."""
    end = time.monotonic() + limit_s
    while not condition():
        assert time.monotonic() < end, "the batcher never reached the expected state"
        await asyncio.sleep(0.001)


async def queued(b: DynamicBatcher, items: int) -> None:
    await until(lambda: b.queued_items == items)


def test_concurrent_requests_coalesce_and_results_go_to_their_request_in_order():
    async def main():
        b, fake, pool = make(max_batch=8)
        blocker = await hold(b, fake)
        sizes = {1: 3, 2: 2, 3: 4, 4: 1, 5: 5}
        tasks = {rid: asyncio.create_task(b.submit(tagged(rid, n))) for rid, n in sizes.items()}
        await queued(b, 15)
        fake.gate.set()
        results = {rid: await t for rid, t in tasks.items()}
        await blocker
        await b.close()
        pool.shutdown()
        return fake, results

    fake, results = asyncio.run(main())
    # the blocker alone, then 15 queued items in FIFO order in runs of at most 8: request 3 is
    # split 3 + 1 across the two runs
    assert [len(x) for x in fake.batches] == [1, 8, 7]
    assert fake.batches[1] == [(1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2)]
    assert fake.batches[2] == [(3, 3), (4, 0), (5, 0), (5, 1), (5, 2), (5, 3), (5, 4)]
    for rid, n in {1: 3, 2: 2, 3: 4, 4: 1, 5: 5}.items():
        np.testing.assert_array_equal(results[rid]["y"], tagged(rid, n)["x"] * 10 + 1)


@pytest.mark.parametrize(
    "caps, runs",
    [
        ({}, [8, 8, 4]),
        ({"max_size": 6}, [6, 6, 6, 2]),
        ({"max_size": 16}, [8, 8, 4]),
        ({"max_size": 6, "max_sizes": (("fake", 3), ("other", 1))}, [3] * 6 + [2]),
    ],
)
def test_request_larger_than_max_batch_is_split_and_reassembled(caps, runs):
    """The card's max batch (8), or the lower ``max_size`` / per-model setting, bounds every run."""

    async def main():
        b, fake, pool = make(max_batch=8, **caps)
        fake.gate.set()
        out = await b.submit(tagged(7, 20))
        await b.close()
        pool.shutdown()
        return fake, out

    fake, out = asyncio.run(main())
    assert [len(x) for x in fake.batches] == runs
    np.testing.assert_array_equal(out["y"], tagged(7, 20)["x"] * 10 + 1)


def test_due_items_are_spread_over_the_idle_instances():
    """Two instances: a lone 10-item request runs as two 5-item batches at once (ceil(10 / 2));
    with one instance busy, the next request goes whole to the other; results stay in order."""

    async def main():
        fake, pool = FakeModel(), ThreadPoolExecutor(2)
        b = DynamicBatcher("fake", fake, pool, 8, BatchConfig(max_queue_delay_s=0.0, instances=2))
        lone = asyncio.create_task(b.submit(tagged(1, 10)))
        await until(lambda: b.busy == 2)  # both halves in flight together
        fake.gate.set()
        out = await lone
        np.testing.assert_array_equal(out["y"], tagged(1, 10)["x"] * 10 + 1)
        assert sorted(len(batch) for batch in fake.batches) == [5, 5]

        fake.gate.clear()
        fake.started.clear()
        fake.batches.clear()
        blocker = await hold(b, fake)  # one instance busy
        second = asyncio.create_task(b.submit(tagged(2, 4)))
        await until(lambda: b.busy == 2 and b.queued_items == 0)
        fake.gate.set()
        await blocker
        np.testing.assert_array_equal((await second)["y"], tagged(2, 4)["x"] * 10 + 1)
        assert sorted(len(batch) for batch in fake.batches) == [1, 4]
        await b.close()
        pool.shutdown()

    asyncio.run(main())


def test_preferred_sizes_and_incompatible_requests():
    """With a 30 s max queue delay: a preferred size (4) goes at once; the 2 items left wait for
    more until a request with another item shape queues behind them (it cannot join), then go
    alone; two such requests fill the preferred size and go at once."""

    async def main():
        b, fake, pool = make(
            max_batch=8, preferred_sizes=(4,), max_queue_delay_s=30.0, deadline_s=0
        )
        blocker = await hold(b, fake, 4)  # a preferred size: sent at once
        t1 = asyncio.create_task(b.submit(tagged(1, 6)))
        await queued(b, 6)
        fake.gate.set()
        await blocker
        await until(lambda: len(fake.batches) == 2 and b.queued_items == 2)
        odd = {"x": np.full((2, 3), 5, np.int64)}  # another per-item shape
        t2 = asyncio.create_task(b.submit(odd))
        r1 = await t1
        await queued(b, 2)
        t3 = asyncio.create_task(b.submit(odd))
        r2, r3 = await t2, await t3
        await b.close()
        pool.shutdown()
        return fake, r1, r2, r3

    fake, r1, r2, r3 = asyncio.run(main())
    assert [len(x) for x in fake.batches] == [4, 4, 2, 4]
    np.testing.assert_array_equal(r1["y"], tagged(1, 6)["x"] * 10 + 1)
    np.testing.assert_array_equal(r2["y"], np.full((2, 3), 51))
    np.testing.assert_array_equal(r3["y"], np.full((2, 3), 51))


def _rejections(reason: str) -> float:
    return (
        REGISTRY.get_sample_value(
            "hrnet_batch_rejections_total", {"model": "fake", "reason": reason}
        )
        or 0.0
    )


def test_queue_full_is_refused_at_once_and_an_oversize_request_fits_an_empty_queue():
    async def main():
        b, fake, pool = make(max_batch=8, queue_capacity=4)
        blocker = await hold(b, fake)  # in flight: not in the queue
        t1 = asyncio.create_task(b.submit(tagged(1, 3)))
        await queued(b, 3)
        before = _rejections("queue_full")
        with pytest.raises(Overloaded) as info:
            await b.submit(tagged(2, 2))  # 3 + 2 > 4, refused while the gate is still shut
        assert not fake.gate.is_set()
        assert info.value.reason == "queue_full" and info.value.retry_after_s >= 1
        assert isinstance(info.value, BackendUnavailable)
        assert _rejections("queue_full") == before + 1
        fake.gate.set()
        await t1, await blocker
        big = await b.submit(tagged(3, 9))  # 9 > capacity, but the queue is empty
        await b.close()
        pool.shutdown()
        return big

    np.testing.assert_array_equal(asyncio.run(main())["y"], tagged(3, 9)["x"] * 10 + 1)


def test_expected_wait_beyond_deadline_is_refused_and_expired_requests_are_dropped():
    async def main():
        b, fake, pool = make(max_batch=8, deadline_s=5.0)
        blocker = await hold(b, fake)
        t1 = asyncio.create_task(b.submit(tagged(1, 3)))
        await queued(b, 3)
        b.per_item_s = 1.2  # as if measured: 1.2 s per item
        t2 = asyncio.create_task(b.submit(tagged(2, 2)))  # ahead: 3 queued + 1 running = 4.8 s
        await queued(b, 5)
        with pytest.raises(Overloaded) as info:  # ahead: 6 items = 7.2 s > 5 s
            await b.submit(tagged(3, 1))
        assert info.value.reason == "deadline" and info.value.retry_after_s == 8  # ceil(7.2 s)
        fake.gate.set()
        await blocker, await t1, await t2
        b.per_item_s = 60.0  # an idle model admits even a request slower than the deadline
        slow = await b.submit(tagged(4, 1))
        np.testing.assert_array_equal(slow["y"], [[41, 1]])
        await b.close()
        pool.shutdown()

        # expired: admitted (nothing measured yet), but the deadline passes while it waits
        b, fake, pool = make(max_batch=8, deadline_s=0.05)
        blocker = await hold(b, fake)
        t4 = asyncio.create_task(b.submit(tagged(4, 1)))
        await queued(b, 1)
        await asyncio.sleep(0.2)
        before = _rejections("expired")
        fake.gate.set()
        await blocker  # already running when its deadline passed: it completes
        with pytest.raises(Overloaded) as info:
            await t4
        assert info.value.reason == "expired"
        assert _rejections("expired") == before + 1
        await b.close()
        pool.shutdown()
        return fake

    fake = asyncio.run(main())
    assert fake.batches == [[(0, 0)]]  # the expired request never ran


def test_failing_batch_fails_only_its_own_requests():
    async def main():
        b, fake, pool = make(max_batch=3)
        blocker = await hold(b, fake)
        ta = asyncio.create_task(b.submit(tagged(1, 2)))
        tb = asyncio.create_task(b.submit(tagged(666, 1)))
        tc = asyncio.create_task(b.submit(tagged(2, 2)))
        await queued(b, 5)
        fake.gate.set()
        res = await asyncio.gather(ta, tb, tc, return_exceptions=True)
        after = await b.submit(tagged(3, 1))  # the worker goes on
        await blocker
        await b.close()
        pool.shutdown()
        return fake, res, after

    fake, (ra, rb, rc), after = asyncio.run(main())
    assert [len(x) for x in fake.batches] == [1, 3, 2, 1]
    assert isinstance(ra, BackendError) and isinstance(rb, BackendError)
    assert "request 666" in str(ra)
    np.testing.assert_array_equal(rc["y"], tagged(2, 2)["x"] * 10 + 1)
    np.testing.assert_array_equal(after["y"], [[31, 1]])


def test_a_split_request_whose_first_part_failed_is_not_run_further():
    async def main():
        b, fake, pool = make(max_batch=2)
        blocker = await hold(b, fake)
        t = asyncio.create_task(b.submit({"x": np.array([[666, 0], [666, 1], [666, 2]])}))
        await queued(b, 3)
        fake.gate.set()
        with pytest.raises(BackendError):
            await t
        await blocker
        assert b.queued_items == 0
        await b.close()
        pool.shutdown()
        return fake

    assert [len(x) for x in asyncio.run(main()).batches] == [1, 2]


def test_admission_reserves_room_until_the_request_submits():
    class Backend:
        def __init__(self, b):
            self.b = b

        def batcher(self, model):
            return self.b if model == "fake" else None

    async def main():
        b, fake, pool = make(max_batch=8, queue_capacity=3)
        be = Backend(b)
        fake.gate.set()
        async with admission(be, "fake"), admission(be, "fake"), admission(be, "fake"):
            assert b.reserved_items == 3
            with pytest.raises(Overloaded):  # three admitted requests, each reserving 1 item
                async with admission(be, "fake"):
                    pass
        assert b.reserved_items == 0
        async with admission(be, "fake"):
            out = await b.submit(tagged(1, 2))  # converts its reservation into 2 queued items
            assert b.reserved_items == 0
        async with admission(be, "other"):  # no batcher for this model: no-op
            pass
        await b.close()
        pool.shutdown()
        return out

    np.testing.assert_array_equal(asyncio.run(main())["y"], tagged(1, 2)["x"] * 10 + 1)


def test_closed_batcher_fails_queued_and_running_requests_with_503():
    async def main():
        b, fake, pool = make(max_batch=8)
        blocker = await hold(b, fake)
        t = asyncio.create_task(b.submit(tagged(1, 1)))
        await queued(b, 1)
        await b.close()
        fake.gate.set()
        with pytest.raises(BackendUnavailable):
            await t
        with pytest.raises(BackendUnavailable):
            await b.submit(tagged(2, 1))
        with pytest.raises(BackendUnavailable):  # it was running: its result is not awaited
            await blocker
        pool.shutdown()

    asyncio.run(main())


# ----------------------------------------------------------------------------- real gateway


@pytest.fixture(scope="module")
def coco(shared):
    root = shared / "data" / "mmpose_tests" / "coco"
    ann = json.loads((root / "test_coco.json").read_text())
    reqs = []
    for im in ann["images"]:
        boxes = [
            a["bbox"]
            for a in ann["annotations"]
            if a["image_id"] == im["id"] and a["num_keypoints"] > 0
        ]
        for box in boxes[:2]:
            reqs.append(((root / im["file_name"]).read_bytes(), [box]))
    return reqs[:8]


def test_ort_batch_of_8_equals_crops_run_alone(shared):
    import onnxruntime as ort

    sess = ort.InferenceSession(
        str(shared / "models" / "pp_tinypose_256x192.onnx"), providers=["CPUExecutionProvider"]
    )
    x = np.random.default_rng(0).normal(size=(8, 3, 256, 192)).astype(np.float32)
    batched = sess.run(None, {"image": x})[0]
    alone = np.concatenate([sess.run(None, {"image": x[i : i + 1]})[0] for i in range(8)])
    diff = float(np.abs(batched - alone).max())
    print(f"max |heatmap(batch 8) - heatmap(alone)| = {diff:.3g}")
    assert diff < 1e-5


def test_concurrent_pose_requests_are_batched_and_give_the_sequential_keypoints(shared_repo, coco):
    model = "pp_tinypose_256x192"
    settings = Settings(
        model_repository=shared_repo, batching=True, ort_concurrent_runs=1, batch_max_size=0
    )
    with TestClient(create_app(settings)) as c:

        def post(req):
            data, boxes = req
            r = c.post(
                "/pose",
                files={"image": ("x.jpg", data)},
                data={"boxes": json.dumps(boxes), "flip_test": "true"},
            )
            assert r.status_code == 200, r.text
            return r.json()["persons"]

        sequential = [post(r) for r in coco]
        backend = c.app.state.backend
        batcher = backend.batcher(model)
        count0 = REGISTRY.get_sample_value("hrnet_batch_size_count", {"model": model})
        sum0 = REGISTRY.get_sample_value("hrnet_batch_size_sum", {"model": model})
        gate = threading.Event()
        backend._pool.submit(gate.wait, 30)  # the one ORT thread waits: requests queue up
        with ThreadPoolExecutor(len(coco)) as ex:
            futures = [ex.submit(post, r) for r in coco]
            _wait_for(lambda: batcher.queued_items + batcher.inflight_items == 2 * len(coco))
            gate.set()
            concurrent = [f.result() for f in futures]
        runs = REGISTRY.get_sample_value("hrnet_batch_size_count", {"model": model}) - count0
        items = REGISTRY.get_sample_value("hrnet_batch_size_sum", {"model": model}) - sum0
    # 8 requests x (1 box + its flip) in at most 2 runs: the first batch, then all the rest
    assert items == 2 * len(coco) and runs <= 2
    worst_xy = worst_s = 0.0
    for seq, con in zip(sequential, concurrent):
        assert len(seq) == len(con) == 1
        a, b = np.asarray(seq[0]["keypoints"]), np.asarray(con[0]["keypoints"])
        worst_xy = max(worst_xy, float(np.abs(a[:, :2] - b[:, :2]).max()))
        worst_s = max(worst_s, float(np.abs(a[:, 2] - b[:, 2]).max()))
    print(f"batched vs sequential: max |dxy| = {worst_xy:.3g} px, max |dscore| = {worst_s:.3g}")
    assert worst_xy <= 1e-3 and worst_s <= 1e-5


def test_gateway_answers_503_overloaded_with_retry_after_when_the_queue_is_full(shared_repo, coco):
    """Queue capacity 2 items: one request running (held), one queued (1 box + flip = 2 items);
    a third is refused before any work with 503 ``overloaded`` + Retry-After; /metrics shows it."""
    model = "pp_tinypose_256x192"
    settings = Settings(
        model_repository=shared_repo, batching=True, batch_queue_capacity=2, ort_concurrent_runs=1
    )
    with TestClient(create_app(settings)) as c:

        def post(req):
            data, boxes = req
            return c.post(
                "/pose",
                files={"image": ("x.jpg", data)},
                data={"boxes": json.dumps(boxes), "flip_test": "true"},
            )

        backend = c.app.state.backend
        batcher = backend.batcher(model)
        gate = threading.Event()
        backend._pool.submit(gate.wait, 30)
        with ThreadPoolExecutor(2) as ex:
            first = ex.submit(post, coco[0])
            _wait_for(lambda: batcher.inflight_items == 2)
            second = ex.submit(post, coco[1])
            _wait_for(lambda: batcher.queued_items == 2)
            r = post(coco[2])
            gate.set()
            assert first.result().status_code == 200 and second.result().status_code == 200
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "overloaded" and "queue" in r.json()["error"]["message"]
        assert int(r.headers["Retry-After"]) >= 1
        metrics = c.get("/metrics").text
        assert f'hrnet_batch_rejections_total{{model="{model}",reason="queue_full"}}' in metrics
        for name in (
            "hrnet_batch_queue_items",
            "hrnet_batch_size_bucket",
            "hrnet_batch_queue_wait_seconds_bucket",
        ):
            assert f"{name}{{" in metrics and model in metrics


def _wait_for(condition, limit_s: float = 60.0) -> None:
    end = time.monotonic() + limit_s
    while not condition():
        assert time.monotonic() < end, "the gateway's batcher never reached the expected state"
        time.sleep(0.01)


def test_a_reloaded_session_is_used_by_the_existing_batcher(shared_repo):
    """Hot reload swaps ``backend.sessions[name]``: the model's batcher (keyed by name, made by
    this backend instance) runs the new session from the next batch on."""
    from service.backends.onnxruntime import OnnxRuntimeBackend
    from service.repository import ModelRepository

    model = "pp_tinypose_256x192"

    class Doubled:  # the real session, outputs times 2
        def __init__(self, sess):
            self.sess = sess

        def get_outputs(self):
            return self.sess.get_outputs()

        def run(self, names, feed):
            return [2 * o for o in self.sess.run(names, feed)]

    async def main():
        be = OnnxRuntimeBackend(
            ModelRepository(shared_repo), models=[model], batching=BatchConfig()
        )
        await be.start()
        x = np.random.default_rng(0).normal(size=(2, 3, 256, 192)).astype(np.float32)
        before = (await be.infer(model, {"image": x}))["heatmaps"]
        batcher = be.batcher(model)
        be.sessions[model] = Doubled(be.sessions[model])
        after = (await be.infer(model, {"image": x}))["heatmaps"]
        assert be.batcher(model) is batcher
        await be.close()
        return before, after

    before, after = asyncio.run(main())
    np.testing.assert_allclose(after, 2 * before, rtol=1e-6)


def test_batch_config_from_settings(monkeypatch):
    assert BatchConfig.from_settings(Settings()) is not None  # on by default
    assert BatchConfig.from_settings(Settings(batching=False)) is None
    monkeypatch.setenv("HRNET_BATCH_MAX_SIZES", '{"pp_tinypose_256x192": 2}')
    monkeypatch.setenv("HRNET_BATCH_PREFERRED_SIZES", "[4, 8]")
    cfg = BatchConfig.from_settings(
        Settings(batching=True, ort_concurrent_runs=2, batch_max_queue_delay_ms=5)
    )
    assert (
        cfg.instances == 0 and cfg.max_queue_delay_s == 0.005
    )  # 0: the backend's runs and cfg.preferred_sizes == (4, 8)
    assert cfg.max_size_for("pp_tinypose_256x192") == 2 and cfg.max_size_for("other") == 4
    assert BatchConfig.from_settings(Settings(batching=True, batch_instances=3)).instances == 3
