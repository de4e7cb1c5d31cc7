#!/usr/bin/env bash
# One-shot GPU figures (issue 12): benchmarks.gpu_bench on a CUDA host in one call under 10 minutes.
#
#   bash benchmarks/gpu_run.sh prepare     # on the CPU machine, once: copy the ~15 MB of ../shared
#                                          # photos the benchmark reads into .gpu_data/ (git-ignored)
#   bash benchmarks/gpu_run.sh [OUT_DIR]   # on the GPU machine: OUT_DIR default $OUT, else runs/gpu
#
# With the device tool: run(command="bash benchmarks/gpu_run.sh", carry=[".gpu_data"], timeout_s=600)
# (../shared does not travel to the device machine; .gpu_data does when carried).
#
# Installs nothing (the GPU machine has no network; its python3 has torch with CUDA, onnx,
# onnxruntime, OpenCV and numpy, which is all gpu_bench imports). Two passes, each with a time
# budget (remaining rows become "skipped") and a hard timeout; every row is written to the JSON as
# soon as it is measured, so a pass cut short still returns what it measured:
#   1. every model, most important first (HRNet-W32 256x192, FCN hr18s 1024x2048, HRNet-W48
#      384x288, HigherHRNet-W32 512, FCN hr48 1024x2048), with the engines that set up in seconds:
#      eager fp32 / TF32 / fp16+channels-last / bf16+channels-last, CUDA graphs, ONNX Runtime CUDA;
#   2./3. the two goal models (W32 at batches 64 and 1, FCN hr18s at 1 and 2), one run each, with
#      the engines that compile or build for minutes: torch.compile, ONNX Runtime TensorRT EP,
#      TensorRT (skipped, with the reason, where not installed).
# Worst case 290 + 150 + 110 s of hard timeouts, plus a few seconds of env.txt.
# Outputs in OUT_DIR (7 files): env.txt, gpu_bench_fast.{json,log},
# gpu_bench_compile_w32.{json,log}, gpu_bench_compile_seg.{json,log}.
set -uo pipefail
cd "$(dirname "$0")/.."

DATA_DIRS=(mmpose_tests/coco coco_mini cityscapes_sample samples)

if [ "${1:-}" = "prepare" ]; then
    src="${HRNET_SHARED_DIR:-../shared}/data"
    rm -rf .gpu_data && mkdir -p .gpu_data/data
    for d in "${DATA_DIRS[@]}"; do
        mkdir -p ".gpu_data/data/$(dirname "$d")"
        cp -r "$src/$d" ".gpu_data/data/$d" || exit 1
    done
    du -sh .gpu_data
    exit 0
fi

OUT_DIR="${1:-${OUT:-runs/gpu}}"
mkdir -p "$OUT_DIR"
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if [ -z "${HRNET_SHARED_DIR:-}" ]; then
    if [ -d .gpu_data/data ]; then export HRNET_SHARED_DIR="$PWD/.gpu_data"; else export HRNET_SHARED_DIR="$PWD/../shared"; fi
fi
FAST_BUDGET_S="${FAST_BUDGET_S:-250}"
COMPILE_W32_BUDGET_S="${COMPILE_W32_BUDGET_S:-100}"
COMPILE_SEG_BUDGET_S="${COMPILE_SEG_BUDGET_S:-60}"

{
    date -u
    nvidia-smi || echo "nvidia-smi not available"
    "$PY" -c 'import sys, torch; print(sys.version); print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())'
    "$PY" -c 'import onnxruntime as o; print("onnxruntime", o.__version__, o.get_available_providers())' || true
    "$PY" -c 'import tensorrt as t; print("tensorrt", t.__version__)' 2>&1 || true
    echo "HRNET_SHARED_DIR=$HRNET_SHARED_DIR"
} > "$OUT_DIR/env.txt" 2>&1
cat "$OUT_DIR/env.txt"

timeout $((FAST_BUDGET_S + 40)) "$PY" -m benchmarks.gpu_bench --budget-s "$FAST_BUDGET_S" \
    --out "$OUT_DIR/gpu_bench_fast.json" \
    --engines eager_fp32 eager_tf32 eager_fp16_cl eager_bf16_cl cudagraph_fp16_cl ort_cuda_fp32 \
    2>&1 | tee "$OUT_DIR/gpu_bench_fast.log"
fast=${PIPESTATUS[0]}

# one compile per batch size: the goal's batch 64 first, then batch 1
timeout $((COMPILE_W32_BUDGET_S + 50)) "$PY" -m benchmarks.gpu_bench --budget-s "$COMPILE_W32_BUDGET_S" \
    --out "$OUT_DIR/gpu_bench_compile_w32.json" --models hrnet_w32_256x192 --batches 64 1 \
    --engines compile_fp16_cl ort_trt_fp16 tensorrt_fp16 \
    2>&1 | tee "$OUT_DIR/gpu_bench_compile_w32.log"
compile_w32=${PIPESTATUS[0]}

timeout $((COMPILE_SEG_BUDGET_S + 50)) "$PY" -m benchmarks.gpu_bench --budget-s "$COMPILE_SEG_BUDGET_S" \
    --out "$OUT_DIR/gpu_bench_compile_seg.json" --models fcn_hr18s_1024x2048 \
    --engines compile_fp16_cl ort_trt_fp16 tensorrt_fp16 \
    2>&1 | tee "$OUT_DIR/gpu_bench_compile_seg.log"
compile_seg=${PIPESTATUS[0]}

echo "# exit status: fast $fast, compile W32 $compile_w32, compile seg $compile_seg" \
     "(124 = hard timeout; the rows measured before it are in the JSON)"
[ "$fast" = 0 ] && [ "$compile_w32" = 0 ] && [ "$compile_seg" = 0 ]
