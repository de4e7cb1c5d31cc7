"""hrnet-bench's concurrency-mode helpers: the photo box sets, percentiles, /metrics scraping."""

from __future__ import annotations

import json

import httpx

from benchmarks import bench_pose


def test_photo_boxes_are_the_det_json_boxes_scoring_at_least_0_3(shared):
    boxes = bench_pose.load_photo_boxes(shared)
    # test_coco_det_AP_H_56.json: 118 detections on the 4 photos, 33 with score >= 0.3
    assert {k: len(v) for k, v in boxes.items()} == {
        "000000000785.jpg": 2,
        "000000040083.jpg": 8,
        "000000196141.jpg": 13,
        "000000197388.jpg": 10,
    }
    jobs = bench_pose.make_jobs(bench_pose.load_images(shared), boxes, "photo", True, None)
    assert sum(len(json.loads(f["boxes"])) for _, _, f in jobs) == 33
    one = bench_pose.make_jobs(bench_pose.load_images(shared), boxes, "1", False, "m")
    assert all(
        f["flip_test"] == "false" and f["model"] == "m" and f["boxes"].count("[") == 2
        for _, _, f in one
    )


def test_percentile_is_nearest_rank():
    v = list(range(1, 101))
    assert bench_pose._percentile(v, 50) == 50 and bench_pose._percentile(v, 99) == 99
    assert bench_pose._percentile([3.0], 99) == 3.0
    assert bench_pose._percentile([], 50) != bench_pose._percentile([], 50)  # NaN


def test_scrape_batching_sums_models(monkeypatch):
    text = "\n".join(
        [
            "# HELP hrnet_batch_size Items per batched inference run",
            'hrnet_batch_size_count{model="a"} 3.0',
            'hrnet_batch_size_sum{model="a"} 12.0',
            'hrnet_batch_size_count{model="b"} 1.0',
            'hrnet_batch_size_sum{model="b"} 1.0',
            'hrnet_batch_rejections_total{model="a",reason="deadline"} 4.0',
            'hrnet_batch_rejections_total{model="b",reason="deadline"} 1.0',
            'hrnet_batch_rejections_total{model="a",reason="queue_full"} 2.0',
        ]
    )
    monkeypatch.setattr(httpx, "get", lambda url, timeout: httpx.Response(200, text=text))
    got = bench_pose.scrape_batching("http://x")
    assert got == {"runs": 4.0, "items": 13.0, "rejected_deadline": 5.0, "rejected_queue_full": 2.0}
    assert (
        bench_pose._batcher_note(got) == "mean batch 3.2 (4 runs); refused deadline 5, queue_full 2"
    )
