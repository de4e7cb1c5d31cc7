# syntax=docker/dockerfile:1
# The HRNet serving gateway: FastAPI + ONNX Runtime (embedded backend) + OpenVINO (the other
# embedded backend, HRNET_BACKEND=openvino) + tritonclient (Triton backend). No torch in this
# image. Build from the repository root:
#   docker build -f docker/gateway.Dockerfile -t hrnet-serving/gateway:local .
#   docker build --build-arg GATEWAY_EXTRAS=triton ...   # without OpenVINO (~smaller image)
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS build
ARG GATEWAY_EXTRAS=triton,openvino
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service
COPY export ./export
COPY training ./training
COPY benchmarks ./benchmarks
# A venv we can copy whole into the runtime stage; only the gateway's dependencies plus
# tritonclient and OpenVINO: the [train] extra (torch, onnx) is deliberately not installed.
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir ".[${GATEWAY_EXTRAS}]" \
    && if /opt/venv/bin/python -c "import torch" 2>/dev/null; then \
         echo "torch must not be in the gateway image" >&2; exit 1; fi

FROM python:${PYTHON_VERSION}-slim
LABEL org.opencontainers.image.title="hrnet-serving gateway" \
      org.opencontainers.image.description="HRNet pose/segmentation gateway (ONNX Runtime or Triton backend)" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/venv /opt/venv
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin hrnet \
    && mkdir -p /models \
    && chown hrnet /models
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HRNET_HOST=0.0.0.0 \
    HRNET_PORT=8080 \
    HRNET_MODEL_REPOSITORY=/models
USER 10001
WORKDIR /home/hrnet
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('HRNET_PORT', '8080'), timeout=2)"]
CMD ["hrnet-serve"]
