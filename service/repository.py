"""The model repository as the gateway sees it: Triton's layout plus one card per model.

Layout (Triton's conventions)::

    model_repository/
      <name>/config.pbtxt      Triton model configuration
      <name>/card.json         service.cards.ModelCard
      <name>/1/model.onnx      (or model.plan for TensorRT entries)
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Literal, overload

from .cards import DetectorCard, ModelCard, SegmentationCard, load_card
from .errors import UnknownModel, WrongTask, show_value
from .layout import CARD_FILENAME, MODEL_VERSION, ONNX_FILENAME

log = logging.getLogger(__name__)


class RepositoryError(RuntimeError):
    """The repository folder is missing or holds a malformed card."""


def _load_card(card_path: Path) -> ModelCard:
    """The card at ``card_path``; raises RepositoryError when it does not validate or names
    another model than its folder."""
    try:
        card = load_card(card_path)
    except Exception as exc:  # pydantic.ValidationError, JSON errors
        raise RepositoryError(f"invalid model card {card_path}: {exc}") from exc
    if card.name != card_path.parent.name:
        raise RepositoryError(
            f"card {card_path} names model '{card.name}' but sits in folder "
            f"'{card_path.parent.name}'"
        )
    return card


def scan_cards(root: Path) -> tuple[dict[str, ModelCard], dict[str, str]]:
    """Every entry of the repository ``root``: ``(cards, errors)``, the valid cards by name and,
    by folder name, why each invalid one was refused (RepositoryError's message)."""
    cards: dict[str, ModelCard] = {}
    errors: dict[str, str] = {}
    for card_path in sorted(Path(root).glob(f"*/{CARD_FILENAME}")):
        try:
            card = _load_card(card_path)
        except RepositoryError as exc:
            errors[card_path.parent.name] = str(exc)
            continue
        cards[card.name] = card
    return cards, errors


def entry_fingerprint(root: Path, name: str) -> str:
    """SHA-256 over the files of the entry ``root/name`` (card, Triton config, version folders),
    relative paths included: it changes whenever any of them is added, removed or edited."""
    digest = hashlib.sha256()
    folder = Path(root) / name
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode() + b"\0")
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()


class ModelRepository:
    """Cards of every model found under ``root`` (folders with a ``card.json``).

    Raises :class:`RepositoryError` when ``root`` is not a folder or a card does not validate.
    With ``cards`` given, the repository is that set (nothing is read; see service/reload.py).
    """

    def __init__(self, root: Path | str, cards: dict[str, ModelCard] | None = None):
        self.root = Path(root)
        if cards is not None:  # an already validated set (a reload's result)
            self.cards: dict[str, ModelCard] = dict(sorted(cards.items()))
            return
        if not self.root.is_dir():
            raise RepositoryError(f"model repository {self.root} is not a directory")
        self.cards, errors = scan_cards(self.root)
        if errors:
            raise RepositoryError(next(iter(errors.values())))
        log.info("model repository %s: %s", self.root, ", ".join(self.cards) or "(empty)")

    @overload
    def get(self, name: str, task: Literal["segmentation"]) -> SegmentationCard: ...
    @overload
    def get(self, name: str, task: Literal["detection"]) -> DetectorCard: ...
    @overload
    def get(self, name: str, task: str | None = None) -> ModelCard: ...

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

    def onnx_path(self, name: str, version: int | str = MODEL_VERSION) -> Path:
        """Path of the ONNX file of ``name`` (``<root>/<name>/<version>/model.onnx``)."""
        return self.root / name / str(version) / ONNX_FILENAME
