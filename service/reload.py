"""Model-repository changes without a restart (``POST /admin/reload``, SIGHUP).

A reload reads the repository again and compares each entry's fingerprint (SHA-256 of its files,
:func:`service.repository.entry_fingerprint`) with the one it had when last loaded:

* a new or changed entry is loaded by the backend *beside* the running models
  (:meth:`service.backends.base.Backend.load_models`); nothing that serves is touched meanwhile;
* an entry whose card does not validate, or whose model the backend cannot load, is *refused*:
  its old version (if any) keeps serving, and the report says why;
* an entry whose folder is gone is removed.

Then the repository and the backend are swapped in one step (two attribute assignments with no
``await`` between them, so no request sees a half-swapped pair). The routers read
``app.state.repository`` and ``app.state.backend`` once when a request starts, so a request in
flight finishes on the models (sessions) it started with; the old sessions are freed when the last
such request ends. Reloads run one at a time.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .repository import ModelRepository, entry_fingerprint, scan_cards

log = logging.getLogger(__name__)


@dataclass
class ReloadReport:
    """What one reload did, by model name (each list sorted)."""

    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    #: name -> why the entry was refused (its previous version, if any, still serves)
    refused: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict:
        """The report as JSON-ready data."""
        return asdict(self)


def _fingerprints(root: Path, names) -> tuple[dict[str, str], dict[str, str]]:
    """``(fingerprints, errors)`` of the entries ``names``: an entry whose files cannot be read
    (e.g. removed while being hashed) goes to ``errors`` with the reason."""
    prints, errors = {}, {}
    for name in names:
        try:
            prints[name] = entry_fingerprint(root, name)
        except OSError as exc:
            errors[name] = f"cannot read the entry's files: {exc}"
    return prints, errors


class ModelReloader:
    """Reloads the model repository of an app's state (``state.repository``, ``state.backend``).

    Create it at start-up with the loaded repository (:meth:`create` fingerprints its entries);
    :meth:`reload` then applies the changes found since.
    """

    def __init__(self, root: Path, fingerprints: dict[str, str]):
        self.root = Path(root)
        self.fingerprints = dict(fingerprints)
        self._lock = asyncio.Lock()

    @classmethod
    async def create(cls, repository: ModelRepository) -> ModelReloader:
        """A reloader whose baseline is ``repository`` as it is on disk now (hashed in a worker
        thread)."""
        prints, _ = await asyncio.to_thread(_fingerprints, repository.root, list(repository.cards))
        return cls(repository.root, prints)  # an unreadable entry counts as changed next time

    async def reload(self, state) -> ReloadReport:
        """Apply the repository's changes to ``state`` (see the module doc); returns the report.

        Raises :class:`service.backends.base.ReloadNotSupported` for a backend that cannot load
        models while running (nothing is changed then).
        """
        async with self._lock:
            old_repo, backend = state.repository, state.backend
            cards, refused = await asyncio.to_thread(scan_cards, self.root)
            prints, unreadable = await asyncio.to_thread(_fingerprints, self.root, sorted(cards))
            refused.update(unreadable)
            changed = {
                n: c
                for n, c in cards.items()
                if n in prints and prints[n] != self.fingerprints.get(n)
            }
            staged, not_loaded = await backend.load_models(changed)
            refused.update(not_loaded)

            report = ReloadReport(refused=dict(sorted(refused.items())))
            final = {}
            for name in sorted(set(cards) | set(refused) | set(old_repo.cards)):
                if name in refused:
                    if name in old_repo.cards:
                        final[name] = old_repo.cards[name]
                elif name in cards:
                    final[name] = cards[name]
                    if name not in changed:
                        report.unchanged.append(name)
                    else:
                        (report.updated if name in old_repo.cards else report.added).append(name)
                        self.fingerprints[name] = prints[name]
                else:
                    report.removed.append(name)
                    self.fingerprints.pop(name, None)
            repository = ModelRepository(self.root, final)
            new_backend = backend.with_models(repository, staged)
            state.repository, state.backend = repository, new_backend  # the swap
            log.info("model repository reloaded: %s", report.as_dict())
            return report


def listen_for_sighup(reloader: ModelReloader, state) -> bool:
    """Reload on SIGHUP (``kill -HUP <pid>``), in the running event loop; returns False (and
    does nothing) where the loop cannot take signals (not the main thread, e.g. in tests).
    Undone by :func:`stop_listening`."""
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task] = set()

    async def run() -> None:
        try:
            report = await reloader.reload(state)
            if report.refused:
                log.error("SIGHUP reload refused: %s", report.refused)
        except Exception:  # never let a reload kill the loop
            log.exception("SIGHUP reload failed")

    def on_sighup() -> None:
        task = loop.create_task(run())
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    try:
        loop.add_signal_handler(signal.SIGHUP, on_sighup)
    except (ValueError, RuntimeError, NotImplementedError):  # not the main thread / no signals
        return False
    return True


def stop_listening() -> None:
    """Remove the SIGHUP handler of :func:`listen_for_sighup` (no-op where none was set)."""
    try:
        asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
    except (ValueError, RuntimeError, NotImplementedError):
        pass
