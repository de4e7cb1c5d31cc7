"""CPU work off the event loop (review finding 7): decoding, pre/post-processing and encoding run in
worker threads (service.routers, service.pipelines).
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from tests.support.gateway import backend, client, png_image, repo


def test_cpu_stages_run_off_the_event_loop(client, backend, monkeypatch):
    import service.pipelines.detector as det
    import service.pipelines.segmentation as seg
    import service.pipelines.topdown as td
    import service.routers.segment as seg_router
    import service.routers.uploads as uploads

    threads: dict[str, set[int]] = {}

    def spy(module, name):
        fn = getattr(module, name)

        def wrapper(*a, **k):
            threads.setdefault(name, set()).add(threading.get_ident())
            return fn(*a, **k)

        monkeypatch.setattr(module, name, wrapper)

    for module, name in [
        (uploads, "decode_image"),
        (det, "_prepare"),
        (td, "prepare_inputs"),
        (td, "decode_outputs"),
        (seg, "_prepare"),
        (seg, "_finish_view"),
        (seg, "cut_windows"),
        (seg_router, "overlay"),
        (seg_router, "_encode_json_parts"),
    ]:
        spy(module, name)
    assert client.post("/pose", files={"image": ("x.png", png_image())}).status_code == 200
    assert (
        client.post(
            "/segment",
            files={"image": ("x.png", png_image(40, 30))},
            data={"model": "fake_seg_slide", "mode": "slide"},
        ).status_code
        == 200
    )
    assert (
        client.post(
            "/segment",
            files={"image": ("x.png", png_image(8, 8))},
            data={"model": "fake_seg_slide", "render": "true"},
        ).status_code
        == 200
    )
    assert set(threads) == {
        "decode_image",
        "_prepare",
        "prepare_inputs",
        "decode_outputs",
        "_finish_view",
        "cut_windows",
        "overlay",
        "_encode_json_parts",
    }
    loop = backend.loop_threads
    assert len(loop) == 1
    for name, ids in threads.items():
        assert not ids & loop, f"{name} ran on the event loop thread"


def test_healthz_answers_while_pose_preprocessing_is_busy(client, monkeypatch):
    import service.pipelines.topdown as td

    entered, released = threading.Event(), threading.Event()
    answered_in_time = []
    original = td.prepare_inputs

    def blocking(*a, **k):
        entered.set()
        answered_in_time.append(released.wait(10))  # on the event loop this would block /healthz
        return original(*a, **k)

    monkeypatch.setattr(td, "prepare_inputs", blocking)
    with ThreadPoolExecutor(1) as ex:
        fut = ex.submit(
            client.post,
            "/pose",
            files={"image": ("x.png", png_image())},
            data={"boxes": "[[10, 10, 50, 80]]"},
        )
        assert entered.wait(30)
        assert client.get("/healthz").json() == {"status": "ok"}
        released.set()
        assert fut.result().status_code == 200
    assert answered_in_time == [True]
