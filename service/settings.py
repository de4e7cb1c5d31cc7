"""Gateway settings, read from the environment (prefix ``HRNET_``) or passed explicitly.

Every ``hrnet-serve`` flag has an environment twin, e.g. ``HRNET_MODEL_REPOSITORY``,
``HRNET_BACKEND``, ``HRNET_TRITON_URL``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Runtime configuration of the gateway (limits are per request)."""

    model_config = SettingsConfigDict(env_prefix="HRNET_", protected_namespaces=())

    model_repository: Path = Path("model_repository")
    backend: Literal["onnxruntime", "triton", "openvino"] = "onnxruntime"
    host: str = "127.0.0.1"
    port: int = 8000

    # default models (must exist in the repository when used)
    default_pose_model: str = "pp_tinypose_256x192"
    default_detector_model: str = "rtmdet_nano_person_320"  # "" = none: /pose needs boxes
    default_segment_model: str | None = None

    # detector
    detector_score_threshold: float = 0.3

    # limits
    # largest uploaded file; a request body above max_upload_bytes + 1 MiB (Content-Length, or
    # counted while streaming) is refused with 413 before it is read
    max_upload_bytes: int = 20 * 1024 * 1024
    max_image_pixels: int = 4096 * 4096
    # most boxes per /pose request: given boxes above it are a 422, detector boxes are cut to the
    # top-scoring ones
    max_boxes: int = 100
    # segmentation: a view whose network input exceeds this many pixels runs slide inference, even
    # when the client asked for mode=whole (memory bound). The default keeps MMSeg's whole-mode
    # semantics for every documented view: Cityscapes at 2048x1024 with the ms ratio 1.75 is
    # 3584x1792 = 6.4 Mpx, below it.
    seg_slide_pixels: int = 2048 * 1024 * 4
    # segmentation: largest network input (after the test resize / TTA scale) accepted, else 413
    seg_max_input_pixels: int = 2048 * 1024 * 8
    # segmentation: most network-input pixels per backend call (slide windows and flipped views
    # beyond it go in further calls, one at least): bounds the backend's activation memory
    seg_max_call_pixels: int = 1024 * 1024 * 2
    # requests doing their heavy work at once per endpoint (the rest wait); /segment holds
    # full-resolution float32 logits, so one at a time by default. /pose: 8, enough crops to
    # keep every batched run busy (2 cores: the same crops/s as 16) while bounding the memory of
    # requests holding decoded images and float32 crops (200 clients, ~8 boxes a request: peak
    # RSS 1.50x idle at 8, 1.68x at 16; issue 10)
    seg_max_concurrency: int = 1
    pose_max_concurrency: int = 8

    # load shedding (service/shedding.py): a /pose or /segment request whose expected wait (the
    # requests in flight / their recent completion rate) passes shed_deadline_s seconds is
    # answered 503 + Retry-After before its body is parsed; 0 = off. shed_min_inflight requests
    # are always admitted
    shed_deadline_s: float = 3.0
    shed_min_inflight: int = 4

    # graceful shutdown (service/lifecycle.py): after SIGTERM, /readyz and new requests answer 503
    # for shutdown_drain_s seconds (the listener stays open so load balancers notice), then the
    # gateway stops accepting and waits at most shutdown_timeout_s seconds for in-flight requests
    shutdown_drain_s: float = 5.0
    shutdown_timeout_s: float = 30.0

    # POST /admin/reload needs this key ("X-API-Key: <key>" or "Authorization: Bearer <key>"; one
    # or several, comma-separated); unset: the endpoint answers 403
    # (SIGHUP reloads the model repository either way)
    admin_api_key: SecretStr | None = None

    # embedded ONNX Runtime. Fixed-shape models (top-down crops, detector) scale by runs at once
    # (Triton's CPU instance count), each with few intra-op threads; dynamic-shape models
    # (segmentation, bottom-up: one large image a run) by intra-op threads
    ort_intra_op_threads: int = 0  # threads per run of a fixed-shape model; 0 = cores / runs
    ort_dynamic_intra_op_threads: int = 0  # threads per run of a dynamic-shape model; 0 = cores
    ort_inter_op_threads: int = 0  # 0 = ORT default
    # ORT's idle intra-op threads spin-wait by default; off here, because the gateway's own work
    # (HTTP, decoding, crops) shares the cores and spinning threads starve it (PP-TinyPose, 2
    # threads, 2 loaded cores: ~100 ms/crop spinning vs ~50 ms not)
    ort_allow_spinning: bool = False
    # ORT runs at once (one shared pool of threads); 0 = one per core: with 1 intra-op thread
    # each, the cores are used without oversubscription
    ort_concurrent_runs: int = 0
    # dynamic batching (embedded ONNX Runtime; Triton batches with its own dynamic batcher): crops
    # of concurrent requests to one fixed-input-shape model share runs of up to batch_max_size
    # items, spread over the concurrent runs (service.batching). On by default: with one
    # single-threaded run per core it spreads even one request's crops over the cores (PP-TinyPose
    # one client, 2 cores: 1.3-1.9x the crops/s of unbatched serving, issue 10)
    batching: bool = True
    batch_max_queue_delay_ms: float = 2.0  # the oldest queued request waits this long for more
    batch_preferred_sizes: list[int] = []  # sent at once when the queue can fill them
    # most items a run; 0 = the card's max_batch_size (lower caps it). 4: on CPU, crops per
    # second of one single-threaded run fall with larger batches (PP-TinyPose, 2 runs at once,
    # 2 cores: batch 1-4 ~140 crops/s, 8 ~125, 16 ~90, 32 ~65), and small runs keep both
    # instances busy; with ORT's CUDA provider set 0 (the card's max)
    batch_max_size: int = 4
    # per-model caps over batch_max_size, JSON in the environment, e.g. '{"pp_tinypose_256x192": 2}'
    batch_max_sizes: dict[str, int] = {}
    batch_queue_capacity: int = 256  # items queued per model; beyond: 503 + Retry-After at once
    # expected wait from arrival beyond it: 503 at once; 0 = none. A backstop behind the load
    # shedder (shed_deadline_s), which refuses earlier and cheaper
    batch_deadline_s: float = 8.0
    # batches of one model in flight at once (Triton's instance count); 0 = the embedded backend's
    # concurrent runs (ort_concurrent_runs, or openvino_concurrent_runs)
    batch_instances: int = 0
    # at start-up, run each fixed-shape model at its largest batches (Triton's model_warmup), so
    # the first requests are not slow and the memory seen idle is the memory used under load
    warm_up: bool = True
    # glibc malloc arenas of the gateway process (MALLOC_ARENA_MAX, set at start-up by
    # hrnet-serve): worker threads share them, so RSS under load stays near the idle value;
    # 0 = the C library's default (8 per core)
    malloc_arena_max: int = Field(default=2, ge=0)
    ort_providers: str | None = None  # comma list; default CUDA if available, else CPU

    # embedded OpenVINO (backend="openvino", the [openvino] extra; service/backends/openvino.py):
    # OpenVINO's INFERENCE_PRECISION_HINT for every model ("f32", "bf16"; "f16" where the CPU has
    # fp16 arithmetic, else OpenVINO picks bf16), with per-model overrides, JSON in the environment,
    # e.g. '{"pp_tinypose_256x192": "bf16"}'. Int8 (QDQ) entries run int8 whatever the hint
    openvino_precision: Literal["f32", "bf16", "f16"] = "f32"
    openvino_precisions: dict[str, Literal["f32", "bf16", "f16"]] = {}
    openvino_threads: int = 0  # threads per run; 0 = cores / openvino_concurrent_runs
    # OpenVINO runs at once (one shared pool; a fixed-shape model gets as many streams); 0 = one
    # per core, as ort_concurrent_runs
    openvino_concurrent_runs: int = 0

    # security
    # API key(s), comma-separated; unset or empty = no key needed. When set, every endpoint but
    # /healthz, /readyz, /docs, /openapi.json (and /metrics unless metrics_require_api_key) needs
    # "Authorization: Bearer <key>" or "X-API-Key: <key>" (else 401)
    api_key: SecretStr | None = None
    metrics_require_api_key: bool = False
    # CORS: comma-separated allowed origins ("https://a.example,https://b.example", or "*");
    # empty = CORS off (no Access-Control-* headers, browsers refuse cross-origin calls)
    cors_allow_origins: str = ""

    # logging: "json" = one JSON object per line (one line per request on logger service.access)
    log_format: Literal["json", "text"] = "json"
    log_level: str = "info"

    # Triton
    triton_url: str = "127.0.0.1:8001"
    triton_protocol: Literal["grpc", "http"] = "grpc"
    triton_timeout_s: float = 10.0
    triton_shared_memory: bool = False
    triton_startup_timeout_s: float = 60.0  # wait this long for Triton + every model at start-up
    triton_retry_after_s: float = 1.0  # Retry-After sent with 503 while Triton is unavailable
