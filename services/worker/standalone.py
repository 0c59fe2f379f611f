"""Standalone mode: serve a Triton-style folder, `DIR/<model>/<version>/model.onnx`.

The folder is rescanned while the worker runs: a new version folder is loaded, a
removed one is drained and unloaded, and a version that failed to load is retried
when its file changes. `DIR/<model>/config.json` may set `max_batch_size` and
`max_queue_delay_ms` for the model.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

from services.worker.held import Batching, State
from services.worker.repository import Repository

log = logging.getLogger(__name__)


def batching_of(model_dir: Path, default: Batching) -> Batching:
    config = model_dir / "config.json"
    if not config.exists():
        return default
    try:
        values = json.loads(config.read_text())
        return Batching(
            int(values.get("max_batch_size", default.max_batch_size)),
            float(values.get("max_queue_delay_ms", default.max_queue_delay * 1000)) / 1000,
        )
    except (ValueError, TypeError) as exc:
        log.warning("%s is not valid (%s); using defaults", config, exc)
        return default


def scan(root: Path) -> dict[tuple[str, int], Path]:
    found: dict[tuple[str, int], Path] = {}
    if not root.is_dir():
        return found
    for model_dir in root.iterdir():
        if not model_dir.is_dir():
            continue
        for version_dir in model_dir.iterdir():
            path = version_dir / "model.onnx"
            if version_dir.name.isdigit() and int(version_dir.name) > 0 and path.is_file():
                found[(model_dir.name, int(version_dir.name))] = path
    return found


class FolderWatcher:
    def __init__(self, root: Path, repository: Repository, default: Batching, grace: float) -> None:
        self.root = root
        self.repository = repository
        self.default = default
        self.grace = grace
        self._failed: dict[tuple[str, int], float] = {}  # -> mtime of the file that failed
        self._retiring: set[tuple[str, int]] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def sync(self) -> None:
        """One reconcile pass: load what appeared, retire what disappeared."""
        found = await asyncio.to_thread(scan, self.root)
        for (model, version), path in sorted(found.items()):
            held = self.repository.held.get(model, {}).get(version)
            mtime = path.stat().st_mtime
            if held is not None and held.state is not State.FAILED:
                continue
            if self._failed.get((model, version)) == mtime:
                continue  # unchanged since it failed
            batching = batching_of(path.parent.parent, self.default)
            held = await self.repository.load(model, version, path, batching)
            if held.state is State.FAILED:
                self._failed[(model, version)] = mtime
            else:
                self._failed.pop((model, version), None)
        for held in list(self.repository.states()):
            key = (held.model, held.version)
            if key not in found and key not in self._retiring:
                self._retiring.add(key)
                task = asyncio.create_task(self._retire(key))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _retire(self, key: tuple[str, int]) -> None:
        try:
            await self.repository.retire(*key, grace=self.grace)
        finally:
            self._retiring.discard(key)
            self._failed.pop(key, None)

    async def run(self, every: float) -> None:
        while True:
            try:
                await self.sync()
            except Exception as exc:  # a bad folder must not stop the worker
                log.warning("scanning %s failed: %s", self.root, exc)
            await asyncio.sleep(every)
