#!/usr/bin/env bash
# The project's test command (README.md): installs what the tests need (project extras, and a real
# tritonserver in build/triton-env for the Triton-backend tests), then runs pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q -e '.[train,eval,triton,openvino,dev]'
bash tests/triton_env.sh
# static security analysis of the shipped code; findings are fixed or justified inline (# nosec)
python -m bandit -q -r service export training benchmarks
# lint + format (ruff) and types (mypy), configured in pyproject.toml
python -m ruff check .
python -m ruff format --check .
python -m mypy
export HRNET_REQUIRE_TRITON=1
python -m pytest -q "$@"
