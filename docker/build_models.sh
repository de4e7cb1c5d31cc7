#!/usr/bin/env bash
# model-builder entry point (docker compose): fill the Triton model repository, once.
#
#   1. for each model in HRNET_MODELS (training.registry names): download its published checkpoint
#      (cached in HRNET_CHECKPOINT_DIR) and export it with hrnet-export into HRNET_MODEL_REPOSITORY
#      (<name>/card.json, <name>/config.pbtxt, <name>/1/model.onnx);
#   2. rewrite config.pbtxt for the serving hardware (instance kind/count, batching);
#   3. on a GPU host with TensorRT (HRNET_TENSORRT=auto|1): build <name>/1/model.plan and turn the
#      entry into a tensorrt_plan one (same card). Without a GPU or TensorRT: a clear message and
#      the ONNX Runtime entry stays (auto), or failure (1).
#
# Every start after the first is cheap: an entry already exported is kept, and so is its
# 1/model.plan (the config stays tensorrt_plan) unless model.onnx is newer than the plan or
# HRNET_REBUILD=1, which redoes both.
#
# Env: HRNET_MODELS (comma list of registry names, required), HRNET_MODEL_REPOSITORY (/models),
#      HRNET_CHECKPOINT_DIR (/checkpoints), HRNET_TENSORRT (auto|1|0), HRNET_TRT_FP16 (1|0),
#      HRNET_TRITON_INSTANCE_KIND (KIND_GPU), HRNET_TRITON_INSTANCE_COUNT (1),
#      HRNET_TRITON_MAX_QUEUE_DELAY_US (500), HRNET_REBUILD (0|1: export again and rebuild the
#      plan even if present), HRNET_EXPORT_ARGS (extra hrnet-export arguments).
set -euo pipefail

REPO="${HRNET_MODEL_REPOSITORY:-/models}"
CKPT="${HRNET_CHECKPOINT_DIR:-/checkpoints}"
MODELS="${HRNET_MODELS:?set HRNET_MODELS (comma-separated registry names) in .env}"
TENSORRT="${HRNET_TENSORRT:-auto}"
KIND="${HRNET_TRITON_INSTANCE_KIND:-KIND_GPU}"
COUNT="${HRNET_TRITON_INSTANCE_COUNT:-1}"
DELAY="${HRNET_TRITON_MAX_QUEUE_DELAY_US:-500}"
REBUILD="${HRNET_REBUILD:-0}"
PY="$(command -v python3 || command -v python)"

say() { echo "[model-builder] $*"; }

have_tensorrt() {
    command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 \
        && "$PY" -c "import tensorrt" >/dev/null 2>&1
}

case "$TENSORRT" in
    0|false|no) build_plans=0 ;;
    1|true|yes)
        if ! have_tensorrt; then
            say "HRNET_TENSORRT=$TENSORRT but no GPU (nvidia-smi) or no TensorRT Python package here" >&2
            exit 1
        fi
        build_plans=1 ;;
    auto)
        if have_tensorrt; then build_plans=1; else
            build_plans=0
            say "no GPU or no TensorRT here: keeping ONNX Runtime entries (onnxruntime_onnx), no plans"
        fi ;;
    *) say "HRNET_TENSORRT must be auto, 1 or 0, got '$TENSORRT'" >&2; exit 2 ;;
esac

mkdir -p "$REPO" "$CKPT"
IFS=',' read -ra names <<< "$MODELS"
for name in "${names[@]}"; do
    name="$(echo "$name" | tr -d '[:space:]')"
    [[ -z "$name" ]] && continue
    if [[ -f "$REPO/$name/card.json" && -f "$REPO/$name/1/model.onnx" && "$REBUILD" != 1 ]]; then
        say "$name: already exported in $REPO (HRNET_REBUILD=1 to export again)"
    else
        url="$("$PY" -c "import sys; from training.registry import get_entry; print(get_entry(sys.argv[1]).url or '')" "$name")"
        if [[ -z "$url" ]]; then
            say "$name: the registry has no published checkpoint URL for it" >&2
            exit 1
        fi
        say "$name: download checkpoint + export ONNX"
        # shellcheck disable=SC2086
        hrnet-export --arch "$name" --checkpoint "$url" --cache-dir "$CKPT" \
            --model-repository "$REPO" --instance-kind "$KIND" --instance-count "$COUNT" \
            ${HRNET_EXPORT_ARGS:-}
    fi
    plan="$REPO/$name/1/model.plan"
    onnx="$REPO/$name/1/model.onnx"
    if [[ "$build_plans" == 1 && -f "$plan" && ! "$onnx" -nt "$plan" && "$REBUILD" != 1 ]]; then
        # keep the plan (a TensorRT build takes minutes); only refresh the serving settings
        say "$name: TensorRT plan already built (HRNET_REBUILD=1 to build it again)"
        "$PY" -m export.triton_config config "$REPO/$name" --platform tensorrt_plan \
            --instance-kind "$KIND" --instance-count "$COUNT" --max-queue-delay-us "$DELAY" >/dev/null
    else
        "$PY" -m export.triton_config config "$REPO/$name" --instance-kind "$KIND" \
            --instance-count "$COUNT" --max-queue-delay-us "$DELAY" >/dev/null
        if [[ "$build_plans" == 1 ]]; then
            fp16=()
            [[ "${HRNET_TRT_FP16:-1}" == 0 ]] && fp16=(--no-fp16)
            say "$name: building TensorRT plan (fp16=${HRNET_TRT_FP16:-1})"
            "$PY" -m export.triton_config plan "$REPO/$name" --instance-kind "$KIND" \
                --instance-count "$COUNT" --max-queue-delay-us "$DELAY" "${fp16[@]}" >/dev/null
        fi
    fi
    say "$name: $(grep -m1 -E '^(platform|backend):' "$REPO/$name/config.pbtxt")"
done
say "done: $(ls "$REPO" | tr '\n' ' ')"
