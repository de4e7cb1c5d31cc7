# syntax=docker/dockerfile:1
# Model builder: checkpoints -> ONNX (torch) -> Triton model repository, and on GPU hosts TensorRT
# plans. Based on NVIDIA's TensorRT image of the SAME NGC release as the Triton image in
# docker-compose.yml (NGC_VERSION), because a plan only loads in the TensorRT version that built it.
#   docker build -f docker/export.Dockerfile --build-arg NGC_VERSION=24.10 -t hrnet-serving/export:local .
ARG NGC_VERSION=24.10
FROM nvcr.io/nvidia/tensorrt:${NGC_VERSION}-py3
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_BREAK_SYSTEM_PACKAGES=1 \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /opt/hrnet
COPY pyproject.toml README.md ./
COPY service ./service
COPY export ./export
COPY training ./training
COPY benchmarks ./benchmarks
COPY docker/build_models.sh ./docker/build_models.sh
# torch + onnx ([train]) for the export, tritonclient ([triton]) for config.pbtxt checks;
# TensorRT's Python package comes with the base image. Versions are pinned by pyproject.toml.
# hadolint ignore=DL3013
RUN python3 -m pip install --no-cache-dir ".[train,triton]" \
    && python3 -c "import tensorrt, torch, onnx; print('tensorrt', tensorrt.__version__, 'torch', torch.__version__)"
RUN useradd --system --uid 10001 --create-home --shell /usr/sbin/nologin hrnet \
    && mkdir -p /models /checkpoints \
    && chown hrnet /models /checkpoints
USER 10001
ENV HRNET_MODEL_REPOSITORY=/models HRNET_CHECKPOINT_DIR=/checkpoints
CMD ["bash", "/opt/hrnet/docker/build_models.sh"]
