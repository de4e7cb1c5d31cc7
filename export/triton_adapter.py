"""Python-backend Triton entries that run a card's ONNX graph with onnxruntime (tests, CPU hosts).

The ``tritonserver`` build bundled with the ``nvidia-pytriton`` wheel has the Python backend but no
ONNX Runtime backend. To exercise the real server in tests we write, for a card and its
``model.onnx``, a model entry that Triton's Python backend can load::

    <repository>/<name>/config.pbtxt   backend "python"; same name, tensors, dims, batching as the
                                       production onnxruntime_onnx entry (export.triton_config)
    <repository>/<name>/card.json      the same card
    <repository>/<name>/1/model.py     loads 1/model.onnx with onnxruntime, runs each batch
    <repository>/<name>/1/model.onnx   the graph (symlink or copy)

Seen from a client (tritonclient, the gateway's Triton backend) such an entry is indistinguishable
from the production one: same tensor names, dtypes, dims, ``max_batch_size`` and dynamic batching,
and the numbers are ONNX Runtime's. ``model.py`` needs ``numpy`` and ``onnxruntime`` in the Python
environment the backend stub runs with (see ``tests/triton_env.sh``).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from service.cards import ModelCard, load_card
from service.layout import CARD_FILENAME, ONNX_FILENAME, PYTHON_FILENAME

from .triton_config import write_config

MODEL_PY = '''\
"""Triton Python-backend model: runs 1/model.onnx with onnxruntime (written by export.triton_adapter)."""
import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        here = os.path.join(args["model_repository"], args["model_version"])
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(os.environ.get("HRNET_ADAPTER_THREADS", "1"))
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(os.path.join(here, "model.onnx"), sess_options=opts,
                                            providers=["CPUExecutionProvider"])
        self.input_names = [t["name"] for t in config["input"]]
        self.output_names = [t["name"] for t in config["output"]]

    def execute(self, requests):
        # The dynamic batcher hands over several requests; those with equal per-request shapes are
        # run as one ONNX Runtime batch, then split back.
        feeds = []
        for request in requests:
            feeds.append({n: pb_utils.get_input_tensor_by_name(request, n).as_numpy()
                          for n in self.input_names})
        groups = {}
        for i, feed in enumerate(feeds):
            key = tuple(feed[n].shape[1:] + (feed[n].dtype.str,) for n in self.input_names)
            groups.setdefault(key, []).append(i)
        results = [None] * len(requests)
        for idx in groups.values():
            sizes = [feeds[i][self.input_names[0]].shape[0] for i in idx]
            joined = {n: (feeds[idx[0]][n] if len(idx) == 1
                          else np.concatenate([feeds[i][n] for i in idx], axis=0))
                      for n in self.input_names}
            try:
                outs = self.session.run(self.output_names, joined)
            except Exception as exc:  # onnxruntime errors become per-request errors
                for i in idx:
                    results[i] = pb_utils.InferenceResponse(
                        output_tensors=[], error=pb_utils.TritonError(str(exc)))
                continue
            start = 0
            for i, size in zip(idx, sizes):
                tensors = [pb_utils.Tensor(n, np.ascontiguousarray(o[start:start + size]))
                           for n, o in zip(self.output_names, outs)]
                results[i] = pb_utils.InferenceResponse(output_tensors=tensors)
                start += size
        return results

    def finalize(self):
        self.session = None
'''


def write_python_entry(
    card: ModelCard,
    onnx_path: Path | str,
    repository: Path | str,
    *,
    version: int = 1,
    link: bool = True,
    instance_count: int = 1,
    max_batch_size: int | None = None,
    preferred_batch_sizes: list[int] | None = None,
    max_queue_delay_us: int = 500,
) -> Path:
    """Write a Triton Python-backend entry for ``card`` running ``onnx_path``; returns its folder.

    The folder is ``<repository>/<card.name>``; ``config.pbtxt`` is
    :func:`export.triton_config.render_config` with ``backend="python"`` and ``KIND_CPU`` instances
    (otherwise the same keywords and defaults as the production entry), ``card.json`` the card,
    ``<version>/model.py`` :data:`MODEL_PY`, ``<version>/model.onnx`` a symlink to ``onnx_path``
    (a copy when ``link`` is false or symlinks fail). Raises ``FileNotFoundError`` if
    ``onnx_path`` does not exist, ``ValueError`` as ``render_config``.
    """
    onnx_path = Path(onnx_path).resolve()
    if not onnx_path.is_file():
        raise FileNotFoundError(f"ONNX model {onnx_path} not found")
    model_dir = Path(repository) / card.name
    version_dir = model_dir / str(version)
    version_dir.mkdir(parents=True, exist_ok=True)
    write_config(
        card,
        model_dir,
        backend="python",
        instance_kind="KIND_CPU",
        instance_count=instance_count,
        max_batch_size=max_batch_size,
        preferred_batch_sizes=preferred_batch_sizes,
        max_queue_delay_us=max_queue_delay_us,
    )
    card.save(model_dir)
    (version_dir / PYTHON_FILENAME).write_text(MODEL_PY)
    target = version_dir / ONNX_FILENAME
    if target.is_symlink() or target.exists():
        if target.resolve() == onnx_path:
            return model_dir
        target.unlink()
    if link:
        try:
            os.symlink(onnx_path, target)
            return model_dir
        except OSError:
            pass
    shutil.copyfile(onnx_path, target)
    return model_dir


def convert_repository(
    source: Path | str,
    destination: Path | str,
    *,
    models: list[str] | None = None,
    version: int = 1,
    link: bool = True,
) -> list[str]:
    """Mirror a production repository as Python-backend entries (for a tritonserver without ORT).

    For every ``<source>/<name>/card.json`` with ``<source>/<name>/<version>/model.onnx`` (or only
    ``models`` if given) writes :func:`write_python_entry` into ``destination``. Returns the model
    names written, sorted. Raises ``FileNotFoundError`` for a requested model without a card/ONNX.
    """
    source, destination = Path(source), Path(destination)
    names = (
        models
        if models is not None
        else sorted(
            p.parent.name
            for p in source.glob(f"*/{CARD_FILENAME}")
            if (p.parent / str(version) / ONNX_FILENAME).is_file()
        )
    )
    for name in names:
        card_path = source / name / CARD_FILENAME
        onnx_path = source / name / str(version) / ONNX_FILENAME
        if not card_path.is_file() or not onnx_path.is_file():
            raise FileNotFoundError(
                f"{source / name} lacks {CARD_FILENAME} or {version}/{ONNX_FILENAME}"
            )
        write_python_entry(load_card(card_path), onnx_path, destination, version=version, link=link)
    return sorted(names)


def main(argv: list[str] | None = None) -> int:
    """``python -m export.triton_adapter SOURCE DEST [--models a,b]``: see :func:`convert_repository`."""
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("source", help="production model repository (cards + 1/model.onnx)")
    p.add_argument("destination", help="folder for the Python-backend entries")
    p.add_argument("--models", default=None, help="comma-separated model names (default: all)")
    p.add_argument("--copy", action="store_true", help="copy model.onnx instead of symlinking")
    args = p.parse_args(argv)
    names = convert_repository(
        args.source,
        args.destination,
        models=args.models.split(",") if args.models else None,
        link=not args.copy,
    )
    print("\n".join(names))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
