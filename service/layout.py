"""File layout of a model-repository entry (Triton's, shared by the gateway and the exporter).

::

    <repository>/<name>/config.pbtxt           Triton model configuration   CONFIG_FILENAME
    <repository>/<name>/card.json              service.cards.ModelCard       CARD_FILENAME
    <repository>/<name>/<version>/model.onnx   the ONNX graph                ONNX_FILENAME
    <repository>/<name>/<version>/model.plan   TensorRT entries              PLAN_FILENAME
    <repository>/<name>/<version>/model.py     Triton Python-backend entries PYTHON_FILENAME

``<version>`` is :data:`MODEL_VERSION` for every entry this project writes. The names follow
Triton's model-repository documentation (default model file names per platform/backend).
"""

from __future__ import annotations

CONFIG_FILENAME = "config.pbtxt"
CARD_FILENAME = "card.json"
MODEL_VERSION = "1"
ONNX_FILENAME = "model.onnx"
PLAN_FILENAME = "model.plan"
PYTHON_FILENAME = "model.py"
