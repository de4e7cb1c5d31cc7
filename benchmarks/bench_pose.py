"""``hrnet-bench``: requests/s and per-stage milliseconds of ``POST /pose`` on real photos.

Scenarios (each measured in the same run, side by side):

* ``boxes=1``  : one given person box per image;
* ``boxes=8``  : eight given person boxes per image (one batched crop call);
* ``detector`` : no boxes, the gateway's person detector finds them;

each with flip test on (the HRNet default) and off. Against a live gateway (``--url``) or, by
default, an in-process gateway on loopback started on ``--model-repository``.
"""
from __future__ import annotations

import argparse
import json
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

STAGES = ("decode_image", "detect", "preprocess", "inference", "decode_heatmaps", "serialise", "total")


def _default_shared() -> Path:
    return Path(os.environ.get("HRNET_SHARED_DIR", Path(__file__).resolve().parents[1].parent / "shared"))


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


def start_gateway_process(model_repository: Path, env: dict[str, str] | None = None,
                          timeout_s: float = 60.0, log_path: Path | None = None,
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
        [sys.executable, "-m", "service.cli", "--model-repository", str(model_repository),
         "--host", "127.0.0.1", "--port", str(port), "--log-level", "info"],
        env={**os.environ, **(env or {})}, stdout=out, stderr=subprocess.STDOUT,
        cwd=Path(__file__).resolve().parents[1])
    if log_path:
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


def run_scenario(client: httpx.Client, url: str, images, n_boxes: int | None, flip: bool,
                 requests: int, model: str | None) -> dict:
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
    return {"requests_per_s": requests / elapsed,
            "stage_ms": {k: statistics.median(v) for k, v in stage_ms.items() if v}}


def main(argv: list[str] | None = None) -> int:
    """Run every scenario against ``--url`` (or an in-process gateway) and print the table."""
    p = argparse.ArgumentParser(prog="hrnet-bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", help="live gateway URL; default: start one in-process")
    p.add_argument("--api-key", help="the gateway's API key, if it needs one (default: the first "
                                     "key of $HRNET_API_KEY)")
    p.add_argument("--model-repository", type=Path, default=Path("model_repository"))
    p.add_argument("--shared-dir", type=Path, default=_default_shared())
    p.add_argument("--model", default=None, help="pose model (default: the gateway's)")
    p.add_argument("--requests", type=int, default=20, help="requests per scenario")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)

    images = load_images(args.shared_dir)
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
