"""Published reference numbers and the comparison table of ``hrnet-eval``.

References come from, in increasing priority: the training registry
(``training.registry.get_entry(name).metrics``, imported lazily, ignored when absent), the model
card served by ``GET /models`` (``source.metrics``), and ``--reference NAME=VALUE`` options.
Metric names are normalised (``"AP .5"``, ``"AP@0.5"``, ``"ap50"`` → ``AP50``; ``"PCK@0.3"`` →
``PCK``; ``"miou"`` → ``mIoU`` ...). Scales are reconciled: AP/AR/PCK/OKS are fractions here, so a
reference above 1 is read as a percentage and divided by 100; aAcc/mIoU/mAcc are percentages, so
a reference of at most 1 is read as a fraction and multiplied by 100.

The tolerance is in fraction units for every metric: ``0.01`` accepts 1 AP point (0.01) and 1
mIoU/aAcc/mAcc percentage point (percent metrics are compared after dividing by 100). Other
metrics (``NME``) are compared as they are.

The registry layer (published numbers of the checkpoint) is skipped for a card whose
``source.url`` is missing or None: ``hrnet-export --random-init`` writes such cards, and the
published metrics do not describe random weights. The card's own metrics and ``--reference``
still apply.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

FRACTION_METRICS = {
    "AP",
    "AP50",
    "AP75",
    "APm",
    "APl",
    "AR",
    "AR50",
    "AR75",
    "ARm",
    "ARl",
    "PCK",
    "meanOKS",
}
#: The published multi-scale + flip mIoU (registry key ``"mIoU(ms+flip)"``).
MS_FLIP_MIOU = "mIoU(ms+flip)"
PERCENT_METRICS = {"aAcc", "mIoU", "mAcc", MS_FLIP_MIOU}

#: Rows printed for each kind of dataset (plus any other metric that has a reference).
TABLE_ROWS = {
    "coco": ("AP", "AP50", "AP75", "AR", "AR50"),
    "horse10": ("PCK", "NME"),
    "pixel": ("EPE", "RMSE", "PCK@0.2"),
    "seg": ("mIoU", "mAcc", "aAcc"),
}

_ALIASES = {
    "ap": "AP",
    "map": "AP",
    "ap50": "AP50",
    "ap5": "AP50",
    "ap05": "AP50",
    "ap050": "AP50",
    "ap75": "AP75",
    "ap075": "AP75",
    "apm": "APm",
    "apmedium": "APm",
    "apl": "APl",
    "aplarge": "APl",
    "ar": "AR",
    "ar50": "AR50",
    "ar5": "AR50",
    "ar05": "AR50",
    "ar050": "AR50",
    "ar75": "AR75",
    "ar075": "AR75",
    "arm": "ARm",
    "armedium": "ARm",
    "arl": "ARl",
    "arlarge": "ARl",
    "pck": "PCK",
    "pck03": "PCK",
    "pckthr03": "PCK",
    "nme": "NME",
    "miou": "mIoU",
    "macc": "mAcc",
    "aacc": "aAcc",
    "meanoks": "meanOKS",
    "oks": "meanOKS",
    "mioumsflip": MS_FLIP_MIOU,
    "mioumsflipaug": MS_FLIP_MIOU,
    "miouflipms": MS_FLIP_MIOU,
}


def canonical_metric(name: str) -> str:
    """Canonical metric name for a published label (unknown labels are returned unchanged)."""
    key = re.sub(r"[^a-z0-9]", "", name.lower())
    return _ALIASES.get(key, name)


def tolerance_scale(name: str) -> float:
    """How many units of metric ``name`` make one fraction unit of the tolerance: 100 for the
    percent metrics (aAcc/mIoU/mAcc), 1 for everything else."""
    return 100.0 if name in PERCENT_METRICS else 1.0


def _scaled(name: str, value: float) -> float:
    if name in FRACTION_METRICS and value > 1.0:
        return value / 100.0
    if name in PERCENT_METRICS and value <= 1.0:
        return value * 100.0
    return value


def registry_metrics(names: Sequence[str]) -> dict[str, float]:
    """Published metrics of the first of ``names`` the training registry knows ({} if none, or
    if ``training.registry`` cannot be imported)."""
    try:
        from training.registry import get_entry
    except Exception:
        return {}
    for n in names:
        if not n:
            continue
        try:
            entry = get_entry(n)
        except KeyError:  # not a registry name: try the next one
            continue
        m = getattr(entry, "metrics", None)
        if m is None and isinstance(entry, Mapping):
            m = entry.get("metrics")
        if m:
            return {str(k): float(v) for k, v in dict(m).items()}
    return {}


def parse_reference_args(values: Sequence[str]) -> dict[str, float]:
    """``["AP=0.744", "AR50=0.9"]`` → ``{"AP": 0.744, "AR50": 0.9}``; raises ``ValueError``."""
    out = {}
    for v in values:
        name, sep, num = v.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"--reference expects NAME=VALUE, got {v!r}")
        try:
            out[name.strip()] = float(num)
        except ValueError:
            raise ValueError(f"--reference {v!r}: {num!r} is not a number") from None
    return out


def gather_references(
    model: str, card: Mapping[str, Any], cli: Mapping[str, float], ms_flip: bool = False
) -> tuple[dict[str, float], dict[str, str]]:
    """Merge registry < card < command-line references. Returns ``(values, origin)`` keyed by
    canonical metric name (values on our scale), ``origin[name]`` naming where each came from.
    The registry layer is used only when the card's ``source.url`` is set (published weights).

    Segmentation: the published ``mIoU(ms+flip)`` is the reference for our ``mIoU`` when the run
    used multi-scale + flip TTA (``ms_flip``); otherwise it is not compared (dropped)."""
    values: dict[str, float] = {}
    origin: dict[str, str] = {}
    source = card.get("source") or {}
    # the registry's numbers describe the published checkpoint; a card without its URL
    # (random weights, hrnet-export --random-init) serves other weights
    published = bool(source.get("url"))
    layers = [
        (
            "registry",
            registry_metrics([n for n in (model, source.get("config"), source.get("arch")) if n])
            if published
            else {},
        ),
        ("card", dict(source.get("metrics") or {})),
        ("cli", dict(cli)),
    ]
    for label, metrics in layers:
        for k, v in metrics.items():
            try:
                fv = float(v)
            except (TypeError, ValueError):
                continue
            c = canonical_metric(str(k))
            values[c] = _scaled(c, fv)
            origin[c] = label
    msf = values.pop(MS_FLIP_MIOU, None)
    msf_origin = origin.pop(MS_FLIP_MIOU, None)
    if ms_flip:
        # only a plain 'mIoU' given on the command line overrides the published ms+flip value
        if msf is not None and origin.get("mIoU") != "cli":
            values["mIoU"], origin["mIoU"] = msf, msf_origin or ""
    return values, origin


def compare(
    ours: Mapping[str, float], refs: Mapping[str, float], kind: str, tolerance: float
) -> tuple[list[dict], bool]:
    """Rows ``{"metric", "ours", "published", "diff", "ok"}`` for the kind's default metrics and
    every referenced metric we computed. ``diff`` is ``ours - published`` in the metric's own
    unit; ``tolerance`` is in fraction units, so ``ok`` is False when
    ``|diff| / tolerance_scale(metric) > tolerance`` (percent metrics: ``|diff| / 100``), or when
    ``diff`` is NaN. Returns ``(rows, all_ok)``; a reference we did not compute is listed with
    ``ours`` None and does not fail the run."""
    names = list(TABLE_ROWS[kind])
    names += [n for n in refs if n not in names]
    names += [n for n in ("meanOKS",) if n in ours and n not in names]
    rows, all_ok = [], True
    for n in names:
        o = ours.get(n)
        r = refs.get(n)
        diff = (o - r) if (o is not None and r is not None) else None
        ok = True
        if diff is not None and (math.isnan(diff) or abs(diff) / tolerance_scale(n) > tolerance):
            ok = False
            all_ok = False
        rows.append({"metric": n, "ours": o, "published": r, "diff": diff, "ok": ok})
    return rows, all_ok


def format_table(rows: Sequence[dict], tolerance: float) -> str:
    """Plain-text table: metric | ours | published | diff (``*`` marks a diff beyond the
    tolerance, given in the row's own unit). Header and footer state the tolerance's unit:
    fractions, percent metrics compared after dividing by 100."""

    def f(x: float | None, signed: bool = False) -> str:
        if x is None:
            return "-"
        return f"{x:+.4f}" if signed else f"{x:.4f}"

    lines = [
        f"{'metric':<10}{'ours':>10}{'published':>12}{'diff':>10}"
        f"   (tolerance {tolerance:g}, fraction units)",
        "-" * 42,
    ]
    for r in rows:
        scale = tolerance_scale(r["metric"])
        limit = f"{tolerance * scale:g}" + (" pt" if scale != 1 else "")
        mark = "" if r["ok"] else f"  * |diff| > {limit}"
        lines.append(
            f"{r['metric']:<10}{f(r['ours']):>10}{f(r['published']):>12}"
            f"{f(r['diff'], True):>10}{mark}"
        )
    lines.append("-" * 42)
    lines.append(
        f"tolerance {tolerance:g} in fraction units: {tolerance:g} for AP/AR/PCK/NME, "
        f"{tolerance * 100:g} percentage points for aAcc/mIoU/mAcc"
    )
    return "\n".join(lines)
