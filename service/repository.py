"""The model repository as the gateway sees it: Triton's layout plus one card per model.

Layout (Triton's conventions)::

    model_repository/
      <name>/config.pbtxt      Triton model configuration
      <name>/card.json         service.cards.ModelCard
      <name>/1/model.onnx      (or model.plan for TensorRT entries)
"""
from __future__ import annotations

import logging
from pathlib import Path

from .cards import CARD_FILENAME, ModelCard
from .errors import UnknownModel, WrongTask, show_value

log = logging.getLogger(__name__)


class RepositoryError(RuntimeError):
    """The repository folder is missing or holds a malformed card."""


class ModelRepository:
    """Cards of every model found under ``root`` (folders with a ``card.json``).

    Raises :class:`RepositoryError` when ``root`` is not a folder or a card does not validate.
    """

    def __init__(self, root: Path | str):
        self.root = Path(root)
        if not self.root.is_dir():
            raise RepositoryError(f"model repository {self.root} is not a directory")
        self.cards: dict[str, ModelCard] = {}
        for card_path in sorted(self.root.glob(f"*/{CARD_FILENAME}")):
            try:
                card = ModelCard.load(card_path)
            except Exception as exc:  # pydantic.ValidationError, JSON errors
                raise RepositoryError(f"invalid model card {card_path}: {exc}") from exc
            if card.name != card_path.parent.name:
                raise RepositoryError(
                    f"card {card_path} names model '{card.name}' but sits in folder "
                    f"'{card_path.parent.name}'")
            self.cards[card.name] = card
        log.info("model repository %s: %s", self.root, ", ".join(self.cards) or "(empty)")

    def get(self, name: str, task: str | None = None) -> ModelCard:
        """The card of ``name``; raises UnknownModel (404) or WrongTask (422) if ``task`` differs.

        ``name`` is only ever a key of the cards loaded at start-up: a client's model name never
        reaches the file system (``../x``, absolute paths, NUL are simply unknown names)."""
        card = self.cards.get(name)
        if card is None:
            known = ", ".join(sorted(self.cards)) or "none"
            raise UnknownModel(f"unknown model {show_value(name)}; available: {known}")
        if task is not None and card.task != task:
            raise WrongTask(f"model '{name}' is a {card.task} model, not {task}")
        return card

    def onnx_path(self, name: str, version: int = 1) -> Path:
        """Path of the ONNX file of ``name`` (``<root>/<name>/<version>/model.onnx``)."""
        return self.root / name / str(version) / "model.onnx"
