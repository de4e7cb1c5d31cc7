"""``hrnet-bench``: requests/s and per-stage milliseconds of ``POST /pose`` on real photos.

Scenarios (each measured in the same run, side by side):

* ``boxes=1``  : one given person box per image;
* ``boxes=8``  : eight given person boxes per image (one batched crop call);
* ``detector`` : no boxes, the gateway's person detector finds them;

each with flip test on (the HRNet default) and off. Against a live gateway (``--url``) or, by
default, an in-process gateway on loopback started on ``--model-repository``.

Concurrency mode (``--clients 1,8,200``): closed-loop load from N concurrent clients (asyncio,
one connection each) for ``--duration`` seconds per level, over the shared photos, with
``--boxes-per-request 1`` (one ground-truth box) or ``photo`` (the photo's det-json boxes scoring
>= 0.3, ~8 a request); a client answered 503 waits its ``Retry-After`` (within the duration).
``--batching on,on:8,off`` compares batching (``on:8``: runs of at most 8 items) with none.
Reported per level: requests and crops per second (200s), p50/p95/p99 latency of the 200s,
status counts, the median per-stage ms and the gateway's RSS (idle after warm-up, peak under
load), its CPU seconds per second and the load generator's, the batcher's mean batch and
refusals by reason. The gateways are subprocesses on loopback, one per ``--batching`` value, all
started at once and measured in turn level by level (``on,off``: the batching-off gateway is the
baseline in the same invocation); the 1-client level of each is the other baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import socket
import statistics
import subprocess  # starts hrnet-serve for the benchmark; no shell, fixed argv  # nosec B404
import sys
import threading
import time
from pathlib import Path

import httpx

from benchmarks.eval_client import api_key_headers
from export.paths import default_shared_dir
from service.observability import SERVER_TIMING_HEADER, parse_server_timing

STAGES = (
    "decode_image",
    "detect",
    "preprocess",
    "inference",
    "decode_heatmaps",
    "serialise",
    "total",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, timeout_s: float = 30.0, alive=lambda: True) -> None:
    """Poll ``url/readyz`` until it answers 200; raises RuntimeError after ``timeout_s`` seconds or
    as soon as ``alive()`` turns false (a gateway process that died)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and alive():
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"gateway at {url} did not become ready")


def start_local_gateway(model_repository: Path) -> tuple[str, object]:
    """Start the gateway in a background thread on a free loopback port; returns (url, server)."""
    import uvicorn

    from service.app import create_app
    from service.settings import Settings

    port = _free_port()
    app = create_app(Settings(model_repository=model_repository))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    url = f"http://127.0.0.1:{port}"
    wait_ready(url)
    return url, server


def start_gateway_process(
    model_repository: Path,
    env: dict[str, str] | None = None,
    timeout_s: float = 60.0,
    log_path: Path | None = None,
) -> tuple[str, subprocess.Popen]:
    """Start ``python -m service.cli`` (what ``hrnet-serve`` runs) as a child process on a free
    loopback port with ``env`` added to this environment; returns (url, process) once
    ``/readyz`` is 200. Its output goes to ``log_path`` (default: discarded). Raises RuntimeError
    (after killing it) if it is not ready within ``timeout_s`` seconds. The caller stops it
    (SIGTERM, then ``wait``)."""
    port = _free_port()
    out = open(log_path, "wb") if log_path else subprocess.DEVNULL
    # argv: this Python running service.cli with our own repository path and port, no shell
    proc = subprocess.Popen(  # nosec B603
        [
            sys.executable,
            "-m",
            "service.cli",
            "--model-repository",
            str(model_repository),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "info",
        ],
        env={**os.environ, **(env or {})},
        stdout=out,
        stderr=subprocess.STDOUT,
        cwd=Path(__file__).resolve().parents[1],
    )
    if not isinstance(out, int):
        out.close()  # the child holds its own copy
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, timeout_s, alive=lambda: proc.poll() is None)
    except RuntimeError:
        proc.kill()
        proc.wait()
        raise
    return url, proc


def load_images(shared: Path) -> list[tuple[str, bytes, list[list[float]]]]:
    """The shared COCO val photos with their ground-truth person boxes (xywh)."""
    root = shared / "data" / "mmpose_tests" / "coco"
    ann = json.loads((root / "test_coco.json").read_text())
    boxes: dict[int, list] = {}
    for a in ann["annotations"]:
        if a.get("num_keypoints", 0) > 0:
            boxes.setdefault(a["image_id"], []).append(a["bbox"])
    out = []
    for im in ann["images"]:
        if im["id"] in boxes:
            out.append((im["file_name"], (root / im["file_name"]).read_bytes(), boxes[im["id"]]))
    return out


def run_scenario(
    client: httpx.Client,
    url: str,
    images,
    n_boxes: int | None,
    flip: bool,
    requests: int,
    model: str | None,
) -> dict:
    """Send ``requests`` requests round-robin over ``images``; return req/s and stage medians."""
    stage_ms: dict[str, list[float]] = {s: [] for s in STAGES}
    t0 = time.perf_counter()
    for i in range(requests):
        name, data, gt = images[i % len(images)]
        form = {"flip_test": str(flip).lower()}
        if model:
            form["model"] = model
        if n_boxes is not None:
            form["boxes"] = json.dumps([gt[j % len(gt)] for j in range(n_boxes)])
        r = client.post(url + "/pose", files={"image": (name, data)}, data=form)
        r.raise_for_status()
        for k, v in r.json()["timing_ms"].items():
            stage_ms.setdefault(k, []).append(v)
    elapsed = time.perf_counter() - t0
    return {
        "requests_per_s": requests / elapsed,
        "stage_ms": {k: statistics.median(v) for k, v in stage_ms.items() if v},
    }


def load_photo_boxes(shared: Path, min_score: float = 0.3) -> dict[str, list[list[float]]]:
    """Per photo file name: the det-json person boxes (xywh) scoring >= ``min_score``."""
    root = shared / "data" / "mmpose_tests" / "coco"
    names = {
        im["id"]: im["file_name"]
        for im in json.loads((root / "test_coco.json").read_text())["images"]
    }
    out: dict[str, list] = {}
    for d in json.loads((root / "test_coco_det_AP_H_56.json").read_text()):
        if d["score"] >= min_score and d["image_id"] in names:
            out.setdefault(names[d["image_id"]], []).append(d["bbox"])
    return out


def rss_mb(pid: int) -> float:
    """Resident set size of process ``pid`` in MiB (Linux /proc; NaN elsewhere)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds used so far by process ``pid`` (Linux /proc; NaN elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return float("nan")


def scrape_batching(url: str) -> dict[str, float]:
    """The gateway's dynamic-batcher counters from /metrics, summed over models: ``runs``,
    ``items`` (batch size count and sum) and ``rejected_<reason>``; empty when it has none."""
    out: dict[str, float] = {}
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        if line.startswith("hrnet_batch_size_count"):
            out["runs"] = out.get("runs", 0) + float(line.split()[-1])
        elif line.startswith("hrnet_batch_size_sum"):
            out["items"] = out.get("items", 0) + float(line.split()[-1])
        elif line.startswith("hrnet_batch_rejections_total{"):
            reason = line.split('reason="')[1].split('"')[0]
            out[f"rejected_{reason}"] = out.get(f"rejected_{reason}", 0) + float(line.split()[-1])
        elif line.startswith("hrnet_shed_rejections_total{"):
            out["rejected_shed"] = out.get("rejected_shed", 0) + float(line.split()[-1])
    return out


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    v = sorted(values)
    return v[min(len(v) - 1, max(0, math.ceil(q / 100 * len(v)) - 1))]  # nearest rank


async def _load(
    url: str,
    jobs: list[tuple[str, bytes, dict]],
    clients: int,
    duration_s: float,
    max_requests: int,
    pid: int | None,
) -> dict:
    """``clients`` closed-loop clients for ``duration_s`` (and at most ``max_requests`` in all)."""
    lat: list[float] = []
    overhead: list[float] = []
    gateway_overhead: list[float] = []
    status: dict[str, int] = {}
    stage_ms: dict[str, list[float]] = {s: [] for s in STAGES}
    crops = 0
    sent = 0
    peak = [rss_mb(pid) if pid else float("nan")]
    cpu0, own0 = (cpu_s(pid) if pid else float("nan")), time.process_time()
    t0 = time.perf_counter()
    end = t0 + duration_s

    async def client(i: int) -> None:
        # a client of its own per simulated user (one connection each): a shared httpx pool
        # serialises 200 users on its lock and inflates their latency on the client side
        async with httpx.AsyncClient(timeout=120) as http:
            await user(i, http)

    async def user(i: int, http: httpx.AsyncClient) -> None:
        nonlocal crops, sent
        k = i
        while time.perf_counter() < end and sent < max_requests:
            sent += 1
            name, data, form = jobs[k % len(jobs)]
            k += clients
            t = time.perf_counter()
            try:
                r = await http.post(url + "/pose", files={"image": (name, data)}, data=form)
                code = str(r.status_code)
            except httpx.HTTPError as exc:
                r, code = None, type(exc).__name__
            status[code] = status.get(code, 0) + 1
            if r is not None and r.status_code == 200:
                lat.append(time.perf_counter() - t)
                body = r.json()
                crops += len(body["persons"]) * (2 if body["flip_test"] else 1)
                for s_, v in body["timing_ms"].items():
                    stage_ms.setdefault(s_, []).append(v)
                # everything but inference (HTTP, parsing, decoding, crops, heatmap decoding,
                # JSON), as a share of the latency this client saw
                inf_s = body["timing_ms"].get("inference", 0.0) / 1e3
                overhead.append(1.0 - inf_s / lat[-1])
                # the same within the gateway: its Server-Timing "total" (body read, form
                # parsing, the route, JSON), without the network and this load generator's own
                # multipart/JSON work
                total_ms = parse_server_timing(r.headers.get(SERVER_TIMING_HEADER, "")).get(
                    "total", 0.0
                )
                if total_ms > 0:
                    gateway_overhead.append(1.0 - inf_s / (total_ms / 1e3))
            elif r is not None and r.status_code == 503:
                wait = float(r.headers.get("retry-after", 1))
                await asyncio.sleep(max(0.0, min(wait, end - time.perf_counter())))

    async def sample() -> None:
        while time.perf_counter() < end:
            peak.append(rss_mb(pid) if pid else float("nan"))
            await asyncio.sleep(0.25)

    tasks = [client(i) for i in range(clients)] + ([sample()] if pid else [])
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - t0
    ok = status.get("200", 0)
    return {
        "clients": clients,
        "seconds": elapsed,
        "requests": sum(status.values()),
        "status": status,
        "ok_per_s": ok / elapsed,
        "crops_per_s": crops / elapsed,
        "p50_s": _percentile(lat, 50),
        "p95_s": _percentile(lat, 95),
        "p99_s": _percentile(lat, 99),
        "stage_ms": {k: statistics.median(v) for k, v in stage_ms.items() if v},
        "overhead": statistics.median(overhead) if overhead else float("nan"),
        "gateway_overhead": (
            statistics.median(gateway_overhead) if gateway_overhead else float("nan")
        ),
        "rss_peak_mb": max(peak),
        "rss_after_mb": rss_mb(pid) if pid else float("nan"),
        "gateway_cpu_s": (cpu_s(pid) if pid else float("nan")) - cpu0,
        "client_cpu_s": time.process_time() - own0,
    }


def make_jobs(
    images, photo_boxes: dict[str, list], boxes: str, flip: bool, model: str | None
) -> list[tuple[str, bytes, dict]]:
    """One (file name, bytes, form) per photo: 1 ground-truth box, or the photo's det boxes."""
    jobs = []
    for name, data, gt in images:
        chosen = gt[:1] if boxes == "1" else photo_boxes.get(name, gt)
        form = {"flip_test": str(flip).lower(), "boxes": json.dumps(chosen)}
        if model:
            form["model"] = model
        jobs.append((name, data, form))
    return jobs


def gateway_configs(batching: str, gateway: list[list[str]] | None) -> dict[str, dict[str, str]]:
    """Name -> environment of each gateway to start: from ``--gateway NAME [KEY=VALUE ...]``
    (repeated; the first is the baseline), else from ``--batching`` (``on``, ``on:N``, ``off``).
    Raises ValueError for a setting without ``=`` or a repeated name."""
    configs: dict[str, dict[str, str]] = {}
    if gateway:
        for name, *pairs in gateway:
            if name in configs:
                raise ValueError(f"--gateway {name} given twice")
            bad = [p for p in pairs if "=" not in p]
            if bad:
                raise ValueError(f"--gateway {name}: settings must be KEY=VALUE, got {bad}")
            configs[name] = dict(p.split("=", 1) for p in pairs)
        return configs
    for value in batching.split(","):
        on, _, cap = value.partition(":")
        env = {"HRNET_BATCHING": "true" if on == "on" else "false"}
        if cap:
            env["HRNET_BATCH_MAX_SIZE"] = cap
        configs[value] = env
    return configs


def run_concurrency(args, images) -> list[dict]:
    """Every (boxes, flip, clients, gateway) level. The gateways (subprocesses, one per
    configuration) all run from the start and take turns level by level, so the figures
    compared are measured minutes, not a whole run, apart."""
    photo_boxes = load_photo_boxes(args.shared_dir)
    gateways: dict[str, tuple[str, subprocess.Popen]] = {}
    results = []
    try:
        for name, env in gateway_configs(args.batching, args.gateway).items():
            gateways[name] = start_gateway_process(args.model_repository, env)
        for boxes in args.boxes_per_request.split(","):
            for flip in (f == "on" for f in args.flip.split(",")):
                jobs = make_jobs(images, photo_boxes, boxes, flip, args.model)
                idle = {}
                for batching, (url, proc) in gateways.items():
                    asyncio.run(_load(url, jobs, 1, 3600, args.warmup, None))  # warm-up
                    idle[batching] = rss_mb(proc.pid)
                for n in (int(c) for c in args.clients.split(",")):
                    for batching, (url, proc) in gateways.items():
                        before = scrape_batching(url)
                        r = asyncio.run(
                            _load(url, jobs, n, args.duration, args.max_requests, proc.pid)
                        )
                        after = scrape_batching(url)
                        r["batcher"] = {k: v - before.get(k, 0) for k, v in after.items()}
                        r.update(
                            batching=batching,
                            boxes=boxes,
                            flip_test=flip,
                            rss_idle_mb=idle[batching],
                        )
                        results.append(r)
                        print(
                            f"# {batching} boxes={boxes} flip={flip} clients={n}: "
                            f"{r['ok_per_s']:.2f} ok/s",
                            file=sys.stderr,
                            flush=True,
                        )
    finally:
        for _, proc in gateways.values():
            proc.terminate()
            proc.wait(30)
    return results


def print_table(results: list[dict]) -> None:
    """The table: one row per level; ratios to the 1-client level of the same gateway and to
    batching off at the same level."""
    print(
        f"{'gateway':>8} {'boxes':>5} {'flip':>5} {'clients':>7} {'reqs':>5} {'200':>5} "
        f"{'503':>5} {'other':>5} {'ok/s':>6} {'crops/s':>7} {'x1cl':>5} {'xbase':>5} "
        f"{'p50 s':>6} {'p95 s':>6} {'p99 s':>6} {'prep ms':>7} {'inf ms':>7} {'ovh %':>5} "
        f"{'g ovh':>5} "
        f"{'rss idle':>8} {'rss peak':>8} {'g cpu':>5} {'c cpu':>5}  batcher (all models)"
    )
    names = list(dict.fromkeys(r["batching"] for r in results))  # the baseline first
    order = sorted(
        results,
        key=lambda r: (r["boxes"], r["flip_test"], names.index(r["batching"]), r["clients"]),
    )
    for r in order:
        print_level(r, results, names[0])


def print_level(r: dict, results: list[dict], baseline: str = "off") -> None:
    """One table row; ratios to the 1-client level of the same gateway, and to the baseline
    gateway at the same level."""

    def find(**kw):
        return next((x for x in results if all(x[k] == v for k, v in kw.items())), None)

    same = dict(boxes=r["boxes"], flip_test=r["flip_test"])
    one = find(batching=r["batching"], clients=1, **same)
    off = find(batching=baseline, clients=r["clients"], **same)
    ratio_one = (
        r["crops_per_s"] / one["crops_per_s"] if one and one["crops_per_s"] else float("nan")
    )
    ratio_off = (
        r["crops_per_s"] / off["crops_per_s"] if off and off["crops_per_s"] else float("nan")
    )
    st = r["status"]
    other = r["requests"] - st.get("200", 0) - st.get("503", 0)
    print(
        f"{r['batching']:>8} {r['boxes']:>5} {str(r['flip_test']):>5} {r['clients']:>7} "
        f"{r['requests']:>5} {st.get('200', 0):>5} {st.get('503', 0):>5} {other:>5} "
        f"{r['ok_per_s']:6.2f} {r['crops_per_s']:7.1f} {ratio_one:5.2f} {ratio_off:5.2f} "
        f"{r['p50_s']:6.2f} {r['p95_s']:6.2f} {r['p99_s']:6.2f} "
        f"{r['stage_ms'].get('preprocess', float('nan')):7.1f} "
        f"{r['stage_ms'].get('inference', float('nan')):7.1f} "
        f"{100 * r.get('overhead', float('nan')):5.1f} "
        f"{100 * r.get('gateway_overhead', float('nan')):5.1f} "
        f"{r['rss_idle_mb']:8.0f} {r['rss_peak_mb']:8.0f} "
        f"{r['gateway_cpu_s'] / r['seconds']:5.2f} {r['client_cpu_s'] / r['seconds']:5.2f}  "
        f"{_batcher_note(r['batcher'])}",
        flush=True,
    )


def _batcher_note(b: dict) -> str:
    """``mean batch 7.5 (40 runs); refused queue_full 3, deadline 2, shed 9`` (empty: none;
    ``shed``: refused before the body was read, :mod:`service.shedding`)."""
    refused = ", ".join(
        f"{k[9:]} {v:.0f}" for k, v in sorted(b.items()) if k.startswith("rejected_") and v
    )
    runs = (
        f"mean batch {b['items'] / b['runs']:.1f} ({b['runs']:.0f} runs)" if b.get("runs") else ""
    )
    return "; ".join(x for x in (runs, f"refused {refused}" if refused else "") if x)


def _run_precision(args, images) -> int:
    """``--models`` / ``--variants``: :func:`benchmarks.bench_precision.compare` over the photos'
    det boxes; each backend spec of ``--variants`` gets one gateway process (stopped at the end)."""
    from benchmarks.bench_precision import (
        Runner,
        Variant,
        compare,
        eager_runner,
        format_table,
        parse_variant,
    )
    from service.cards import TopDownCard, load_card

    specs = (args.variants or args.models).split(",")
    parsed = [parse_variant(s) for s in specs]
    url = args.url
    procs: dict[str, tuple[str, subprocess.Popen]] = {}
    try:
        if url is None and any(not backend for backend, _, _ in parsed):
            url, _server = start_local_gateway(args.model_repository)
        for backend, env, _ in parsed:
            if backend and backend not in procs:
                procs[backend] = start_gateway_process(args.model_repository, env, timeout_s=600)
        variants = [
            Variant(spec, procs[backend][0] if backend else (url or ""), model)
            for spec, (backend, _, model) in zip(specs, parsed)
        ]
        photo_boxes = load_photo_boxes(args.shared_dir)
        jobs = [(name, data, photo_boxes.get(name, gt)) for name, data, gt in images]
        eager: tuple[TopDownCard, Runner] | None = None
        if args.eager_arch:
            card = load_card(args.model_repository / variants[0].model / "card.json")
            if not isinstance(card, TopDownCard):
                raise SystemExit(f"--eager-arch: {variants[0].model} is not a top-down pose model")
            eager = (card, eager_runner(args.eager_arch, seed=args.eager_seed))
        flips = [f == "on" for f in args.flip.split(",")]
        tallies = compare(
            url,
            variants,
            jobs,
            flips,
            args.rounds,
            eager=eager,
            warmup=1,
            headers=api_key_headers(args.api_key),
        )
    finally:
        for _, proc in procs.values():
            proc.terminate()
            proc.wait(timeout=60)
    print("\n".join(format_table(tallies)))
    print(
        f"(one client, {sum(len(b) for _, _, b in jobs)} crops over {len(jobs)} photos per "
        f"round, {args.rounds} rounds, variants in turns photo by photo; crops/s end to end)"
    )
    if args.json:
        args.json.write_text(json.dumps([vars(t) for t in tallies], indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run every scenario against ``--url`` (or an in-process gateway) and print the table."""
    p = argparse.ArgumentParser(
        prog="hrnet-bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--url", help="live gateway URL; default: start one in-process")
    p.add_argument(
        "--api-key",
        help="the gateway's API key, if it needs one (default: the first key of $HRNET_API_KEY)",
    )
    p.add_argument("--model-repository", type=Path, default=Path("model_repository"))
    p.add_argument("--shared-dir", type=Path, default=default_shared_dir())
    p.add_argument("--model", default=None, help="pose model (default: the gateway's)")
    p.add_argument("--requests", type=int, default=20, help="requests per scenario")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--json", type=Path, help="also write the results here")
    g = p.add_argument_group("concurrency mode")
    g.add_argument("--clients", help="comma list of concurrent client counts, e.g. 1,8,200")
    g.add_argument(
        "--boxes-per-request",
        default="1,photo",
        help="comma list: 1 (one GT box) and/or photo (det boxes >= 0.3 of the photo)",
    )
    g.add_argument("--flip", default="on", help="comma list of on/off")
    g.add_argument(
        "--batching",
        default="on,off",
        help="comma list of on, on:MAX (HRNET_BATCH_MAX_SIZE=MAX) and off: one "
        "gateway subprocess each (HRNET_BATCHING)",
    )
    g.add_argument(
        "--gateway",
        nargs="+",
        action="append",
        metavar=("NAME", "KEY=VALUE"),
        help="a gateway to compare: its name and HRNET_* settings (repeat the option; the "
        "first is the baseline of the xbase column); replaces --batching",
    )
    g.add_argument("--duration", type=float, default=10.0, help="seconds per load level")
    g.add_argument("--max-requests", type=int, default=5000, help="most requests per load level")
    q = p.add_argument_group("precision mode (benchmarks/bench_precision.py)")
    q.add_argument(
        "--models",
        help="comma list of pose models compared side by side (e.g. the "
        "fp32 and int8 entries of one network), one client, the photos' det boxes; "
        "ratios to the first and to --eager-arch",
    )
    q.add_argument(
        "--variants",
        help="instead of --models: comma list of BACKEND:MODEL (BACKEND: ort, openvino, "
        "openvino-bf16, openvino-f16; one gateway process per backend) or MODEL (the --url / "
        "in-process gateway), e.g. ort:pp_tinypose_256x192,openvino-bf16:pp_tinypose_256x192",
    )
    q.add_argument(
        "--eager-arch",
        help="baseline: this registry model in PyTorch eager mode, one "
        "forward per photo (MMPose's way), with hrnet-export --random-init's weights "
        "(--eager-seed); its card is the first model's",
    )
    q.add_argument("--eager-seed", type=int, default=0)
    q.add_argument("--rounds", type=int, default=5, help="passes over the 4 photos per variant")
    args = p.parse_args(argv)

    images = load_images(args.shared_dir)
    if args.models or args.variants:
        return _run_precision(args, images)
    if args.clients:
        if args.url:
            p.error("--clients starts its own gateways; --url is not used with it")
        results = run_concurrency(args, images)
        print_table(results)
        print(
            "(ok/s, crops/s: 200s only; x1cl: crops/s over the same gateway's 1-client level; "
            "xbase: over the first gateway at the same level; p50-p99: latency of the 200s; "
            "prep/inf: median stage ms; ovh %: median share of the latency outside inference "
            "(client-observed; g ovh: the same within the gateway, from its Server-Timing total); "
            "rss: gateway MiB, idle after warm-up and peak; g/c cpu: "
            "CPU seconds per second of the gateway / of this load generator)"
        )
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))
        return 0
    url = args.url
    if url is None:
        url, _server = start_local_gateway(args.model_repository)
    results = []
    with httpx.Client(timeout=120, headers=api_key_headers(args.api_key)) as client:
        for n_boxes in (1, 8, None):
            for flip in (False, True):
                run_scenario(client, url, images, n_boxes, flip, args.warmup, args.model)
                r = run_scenario(client, url, images, n_boxes, flip, args.requests, args.model)
                r.update(boxes="detector" if n_boxes is None else n_boxes, flip_test=flip)
                results.append(r)
    header = f"{'boxes':>8} {'flip':>5} {'req/s':>7} " + " ".join(f"{s:>15}" for s in STAGES)
    print(header)
    for r in results:
        cells = " ".join(f"{r['stage_ms'].get(s, float('nan')):15.2f}" for s in STAGES)
        print(f"{str(r['boxes']):>8} {str(r['flip_test']):>5} {r['requests_per_s']:7.2f} {cells}")
    print("(stage columns: median milliseconds per request)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
