"""Soak test (not in CI): mixed ``/pose`` and ``/segment`` traffic at a fixed rate for N minutes,
watching the gateway's memory.

It starts a gateway process (``python -m service.cli``) on ``--model-repository``, or uses
``--url`` (with ``--pid`` for its memory). First it measures the one-client capacity: one client
sending the request mix back to back for ``--calibrate-s`` seconds; that rate (requests/s) is the
soak's rate unless ``--rate`` is given. Then requests are sent open-loop at that rate (one every
1/rate seconds, at most ``--concurrency`` outstanding) for ``--minutes``, in the mix

* ``/pose`` with the ground-truth boxes of a shared COCO photo, flip test on (the default);
* ``/pose`` without boxes (the gateway's person detector);
* ``/segment`` of a shared photo (JSON answer with the label PNG),

and every ``--interval-s`` seconds the gateway's RSS, the requests and errors so far and the
latency quantiles of the interval are printed. At the end: the RSS series, errors by status,
overall latency quantiles (ms), and the RSS growth from the first sample after ``--warmup-s`` to
the last one; the exit status is 1 when that growth exceeds ``--max-rss-growth`` (default 5%) or
any request failed. Loops are bounded by the duration and stop by themselves; only loopback
addresses are meant as targets.

    python -m benchmarks.soak --model-repository model_repository --segment-model NAME --minutes 10
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil

from export.paths import default_shared_dir

from .bench_pose import load_images, start_gateway_process
from .eval_client import api_key_headers

QUANTILES = (50, 95, 99)


def quantiles_ms(latencies_s: list[float]) -> dict[str, float]:
    """p50/p95/p99 of ``latencies_s`` in milliseconds (nearest-rank); empty input: NaN."""
    if not latencies_s:
        return {f"p{q}": float("nan") for q in QUANTILES}
    ordered = sorted(latencies_s)
    out = {}
    for q in QUANTILES:
        rank = max(1, -(-q * len(ordered) // 100))  # ceil(q/100 * n), 1-based
        out[f"p{q}"] = round(ordered[rank - 1] * 1000, 1)
    return out


def rss_growth(series: list[tuple[float, float]], warmup_s: float) -> float:
    """Relative RSS growth from the first sample at or after ``warmup_s`` to the last sample
    (``series``: (seconds since start, RSS MiB)); NaN when no sample follows the warm-up."""
    after = [rss for t, rss in series if t >= warmup_s]
    if len(after) < 2:
        return float("nan")
    return (after[-1] - after[0]) / after[0]


class RequestMix:
    """Builds the round-robin request mix: pose with boxes, pose via the detector, segment."""

    KINDS = ("pose_boxes", "pose_detector", "segment")

    def __init__(
        self,
        url: str,
        shared: Path,
        pose_model: str | None,
        segment_model: str | None,
        headers: dict[str, str] | None = None,
    ):
        self.url = url
        self.headers = headers or {}
        self.images = load_images(shared)
        self.pose_model, self.segment_model = pose_model, segment_model

    def send(self, client: httpx.Client, i: int) -> tuple[str, int, float]:
        """Send request ``i`` of the mix; returns (kind, status (0 = connection error), seconds)."""
        kind = self.KINDS[i % len(self.KINDS)]
        name, data, boxes = self.images[(i // len(self.KINDS)) % len(self.images)]
        files = {"image": (name, data)}
        form: dict[str, str] = {}
        if kind == "segment":
            path = "/segment"
            if self.segment_model:
                form["model"] = self.segment_model
        else:
            path = "/pose"
            if self.pose_model:
                form["model"] = self.pose_model
            if kind == "pose_boxes":
                form["boxes"] = json.dumps(boxes)
        t0 = time.perf_counter()
        try:
            status = client.post(
                self.url + path, files=files, data=form, headers=self.headers
            ).status_code
        except httpx.HTTPError:
            status = 0
        return kind, status, time.perf_counter() - t0


def calibrate(mix: RequestMix, seconds: float) -> float:
    """One client, back to back, for ``seconds``: the requests/s it achieves (the mix's capacity
    for one client). Raises RuntimeError if a calibration request fails."""
    n, t_end = 0, time.monotonic() + seconds
    t0 = time.perf_counter()
    with httpx.Client(timeout=120) as client:
        while time.monotonic() < t_end or n < len(RequestMix.KINDS):
            kind, status, _ = mix.send(client, n)
            if status != 200:
                raise RuntimeError(f"calibration request {kind} failed with status {status}")
            n += 1
    return n / (time.perf_counter() - t0)


def soak(
    mix: RequestMix,
    rate: float,
    seconds: float,
    interval_s: float,
    pid: int | None,
    concurrency: int,
    report=print,
) -> dict:
    """Send the mix open-loop at ``rate`` requests/s for ``seconds``; sample RSS of ``pid`` every
    ``interval_s`` seconds. Returns the figures (see the module doc)."""
    proc = psutil.Process(pid) if pid else None
    results: list[tuple[float, str, int, float]] = []  # (send time since start, kind, status, s)
    lock = threading.Lock()
    slots = threading.Semaphore(concurrency)
    skipped = 0
    series: list[tuple[float, float]] = []
    client = httpx.Client(timeout=120, limits=httpx.Limits(max_connections=concurrency))
    start = time.monotonic()

    def one(i: int, t_sent: float) -> None:
        try:
            kind, status, dt = mix.send(client, i)
            with lock:
                results.append((t_sent, kind, status, dt))
        finally:
            slots.release()

    def sample(now: float) -> None:
        rss = proc.memory_info().rss / 2**20 if proc else float("nan")
        series.append((round(now, 1), round(rss, 1)))
        with lock:
            window = [r for r in results if r[0] >= now - interval_s]
            errors = sum(r[2] != 200 for r in results)
            done = len(results)
        q = quantiles_ms([r[3] for r in window])
        report(
            f"t={now:6.0f}s rss={rss:8.1f} MiB done={done:6d} errors={errors:4d} "
            f"skipped={skipped:4d} last {interval_s:.0f}s: "
            + " ".join(f"{k}={v}ms" for k, v in q.items())
        )

    sample(0.0)
    next_sample = interval_s
    with ThreadPoolExecutor(concurrency) as pool:
        i = 0
        while True:
            due = i / rate
            now = time.monotonic() - start
            if due >= seconds:
                break
            if now >= next_sample:
                sample(now)
                next_sample += interval_s
                continue
            if due > now:
                time.sleep(min(due - now, max(0.0, next_sample - now), 0.5))
                continue
            if slots.acquire(blocking=False):
                pool.submit(one, i, now)
            else:  # too many outstanding: this slot of the schedule is dropped, and counted
                skipped += 1
            i += 1
    client.close()
    sample(time.monotonic() - start)
    statuses = Counter(r[2] for r in results)
    by_kind = {k: quantiles_ms([r[3] for r in results if r[1] == k]) for k in RequestMix.KINDS}
    return {
        "rate_rps": rate,
        "seconds": seconds,
        "requests": len(results),
        "skipped": skipped,
        "statuses": dict(statuses),
        "errors": sum(n for s, n in statuses.items() if s != 200),
        "latency_ms": quantiles_ms([r[3] for r in results]),
        "latency_ms_by_kind": by_kind,
        "achieved_rps": len(results) / seconds,
        "rss_mib": series,
    }


def main(argv: list[str] | None = None) -> int:
    """Run the soak (see the module doc); exit 1 on RSS growth over the limit or any error."""
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.soak",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--url", help="live gateway URL; default: start one on --model-repository")
    p.add_argument("--pid", type=int, help="with --url: the gateway's process id (for its RSS)")
    p.add_argument(
        "--api-key",
        help="the gateway's API key, if it needs one (default: the first key of $HRNET_API_KEY)",
    )
    p.add_argument("--model-repository", type=Path, default=Path("model_repository"))
    p.add_argument("--shared-dir", type=Path, default=default_shared_dir())
    p.add_argument("--pose-model", help="default: the gateway's")
    p.add_argument("--segment-model", help="default: the gateway's")
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--rate", type=float, help="requests/s; default: the one-client capacity")
    p.add_argument("--calibrate-s", type=float, default=30.0)
    p.add_argument("--interval-s", type=float, default=30.0, help="RSS / progress report period")
    p.add_argument(
        "--warmup-s",
        type=float,
        default=60.0,
        help="RSS growth is measured from the first sample after this",
    )
    p.add_argument("--max-rss-growth", type=float, default=0.05)
    p.add_argument("--concurrency", type=int, default=8, help="most outstanding requests")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)

    proc = None
    url, pid = args.url, args.pid
    if url is None:
        env = {"HRNET_SHUTDOWN_DRAIN_S": "0"}
        if args.segment_model:
            env["HRNET_DEFAULT_SEGMENT_MODEL"] = args.segment_model
        url, proc = start_gateway_process(args.model_repository, env=env, timeout_s=120)
        pid = proc.pid
    try:
        mix = RequestMix(
            url, args.shared_dir, args.pose_model, args.segment_model, api_key_headers(args.api_key)
        )
        rate = args.rate
        if rate is None:
            rate = calibrate(mix, args.calibrate_s)
            print(f"one-client capacity: {rate:.2f} requests/s (the soak's rate)")
        out = soak(mix, rate, args.minutes * 60, args.interval_s, pid, args.concurrency)
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=120)
    out["rss_growth_after_warmup"] = rss_growth(out["rss_mib"], args.warmup_s)
    out["max_rss_growth"] = args.max_rss_growth
    print(json.dumps({k: v for k, v in out.items() if k != "rss_mib"}, indent=1))
    print("RSS series (s, MiB):", out["rss_mib"])
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    growth = out["rss_growth_after_warmup"]
    ok = out["errors"] == 0 and (growth != growth or growth <= args.max_rss_growth)
    print(
        f"RSS growth after warm-up: {growth:+.2%} (limit {args.max_rss_growth:.0%}); "
        f"errors: {out['errors']}; {'PASS' if ok else 'FAIL'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
