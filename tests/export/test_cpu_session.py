"""export.onnx_export.cpu_session: the one ONNX Runtime CPU session of the exporter."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from export.onnx_export import ExportError, cpu_session
from tests.tiny_onnx import write_pointwise_conv_onnx


@pytest.fixture
def conv(tmp_path):
    """A 1x1 convolution file (4 -> 3 channels) and its weights, for checking the numbers."""
    import onnx
    from onnx import numpy_helper

    path = write_pointwise_conv_onnx(tmp_path / "conv.onnx")
    init = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}
    return path, init["w"][:, :, 0, 0], init["b"]


@pytest.mark.parametrize("form", ["path", "str", "bytes"])
def test_loads_path_or_bytes_on_the_cpu_provider_and_runs(conv, form):
    path, w, b = conv
    model = {"path": path, "str": str(path), "bytes": path.read_bytes()}[form]
    sess = cpu_session(model)
    assert sess.get_providers() == ["CPUExecutionProvider"]
    x = np.random.default_rng(1).standard_normal((2, 4, 5, 6), dtype=np.float32)
    (y,) = sess.run(None, {"x": x})
    want = np.einsum("oc,nchw->nohw", w, x) + b[None, :, None, None]
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)


def test_options_only_when_asked(conv):
    """Without ``log_severity_level`` the session is ORT's bare one (no SessionOptions: the log
    level it reports is -1, "the environment's", not a default SessionOptions' 2)."""
    path, _, _ = conv
    providers = ["CPUExecutionProvider"]
    bare = ort.InferenceSession(str(path), providers=providers).get_session_options()
    plain = cpu_session(path).get_session_options()
    assert (plain.log_severity_level, plain.graph_optimization_level) == (
        bare.log_severity_level,
        bare.graph_optimization_level,
    )
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    want = ort.InferenceSession(str(path), opts, providers=providers).get_session_options()
    quiet = cpu_session(path, log_severity_level=3).get_session_options()
    assert quiet.log_severity_level == want.log_severity_level == 3 != plain.log_severity_level
    assert quiet.graph_optimization_level == want.graph_optimization_level
    assert quiet.intra_op_num_threads == want.intra_op_num_threads


def test_unloadable_model_is_an_export_error_naming_it(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx graph")
    with pytest.raises(ExportError, match=f"^ONNX Runtime cannot load {bad}: "):
        cpu_session(bad)
    with pytest.raises(ExportError, match="^ONNX Runtime cannot load the in-memory model: "):
        cpu_session(b"not an onnx graph", log_severity_level=3)
    with pytest.raises(ExportError, match="cannot load .*missing.onnx"):
        cpu_session(tmp_path / "missing.onnx")


def test_wrap_errors_false_lets_onnx_runtimes_own_error_through(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx graph")
    with pytest.raises(Exception) as info:
        cpu_session(bad, log_severity_level=3, wrap_errors=False)
    assert not isinstance(info.value, ExportError)
    assert type(info.value).__module__.startswith("onnxruntime")
