"""The models a device holds, each in its own A/B slot store (ADR 0021).

    DATA/models/{name}/state.json      that model's serving slot, what each slot holds
    DATA/models/{name}/slots/a, b      its installed bundles

``name`` is the bundle manifest's model name (``MODEL_NAME``: one directory level).  Each model's
store is a :class:`SlotStore` with the crash-safety argument written there; models never share a
file, so installing, updating or rolling back one cannot touch another's state.

Migration from the single-model layout (``DATA/state.json`` + ``DATA/slots``), idempotent so a
crash at any step is finished by the next start:

1. ``DATA/slots`` is renamed to ``DATA/models/{name}/slots`` (one rename, then both parents fsynced);
2. ``DATA/models/{name}/state.json`` is written (atomically) from the old state unless it exists;
3. ``DATA/state.json`` is removed (and the directory fsynced).

While ``DATA/state.json`` exists the migration is not finished and is run again; the old state file
is the single source of truth until step 3, and step 2 copies it verbatim.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

from bitnet_edge.agent.errors import StoreError
from bitnet_edge.agent.store import SlotStore, StoreState
from bitnet_edge.sdk.durable import fsync_dir, move_dir, write_atomic
from bitnet_edge.sdk.errors import FormatError
from bitnet_edge.sdk.schemas import parse_model
from bitnet_edge.sdk.wire.protocol import MODEL_NAME

__all__ = ["ModelStore", "check_model_name"]

log = logging.getLogger("bitnet_edge.agent")


def check_model_name(name: str) -> str:
    if not isinstance(name, str) or not re.match(MODEL_NAME, name) or name in (".", ".."):
        raise StoreError("bad-model-name", f"{name!r} is not a model name ({MODEL_NAME})")
    return name


class ModelStore:
    def __init__(self, data_dir: str | Path):
        self.root = Path(data_dir)
        self.models_dir = self.root / "models"
        self.models_dir.mkdir(parents=True, exist_ok=True)
        self._stores: dict[str, SlotStore] = {}
        self.migrated: str | None = None  # the model a single-model layout was migrated to, this start
        self._migrate()

    # ---- models ----------------------------------------------------------------------------------
    def names(self) -> list[str]:
        """Models with a store on disk (installed, or with a recorded install attempt)."""
        return sorted(p.name for p in self.models_dir.iterdir()
                      if p.is_dir() and re.match(MODEL_NAME, p.name) and (p / "state.json").exists())

    def installed(self) -> list[str]:
        """Models that serve a slot."""
        return [n for n in self.names() if self.get(n).load().active is not None]

    def get(self, name: str) -> SlotStore:
        check_model_name(name)
        st = self._stores.get(name)
        if st is None:
            st = self._stores[name] = SlotStore(self.models_dir / name)
        return st

    def exists(self, name: str) -> bool:
        return (self.models_dir / name / "state.json").exists()

    # ---- migration from the single-model layout -----------------------------------------------------
    def _migrate(self) -> None:
        old_state = self.root / "state.json"
        if not old_state.exists():
            return
        try:
            state = parse_model(StoreState, json.loads(old_state.read_bytes()), source=str(old_state))
        except (OSError, ValueError, FormatError) as exc:
            raise StoreError("bad-state", f"{old_state}: unreadable single-model state ({exc}); not migrating "
                             "it: restore it or remove it and reinstall") from None
        infos = [state.slots.get(s) for s in ([state.active] if state.active else []) + ["a", "b"]]
        name = next((i.release.model for i in infos if i is not None), None)
        if name is None:  # nothing was ever installed: nothing to carry over
            old_state.unlink()
            fsync_dir(self.root)
            log.info("removed an empty single-model state file (nothing installed)")
            return
        check_model_name(name)
        dest = self.models_dir / name
        dest.mkdir(parents=True, exist_ok=True)
        fsync_dir(self.models_dir)
        old_slots = self.root / "slots"
        if old_slots.exists():
            if (dest / "slots").exists():  # an empty store made before the crash: the old slots win
                os.rmdir(dest / "slots")
            move_dir(old_slots, dest / "slots")
        if not (dest / "state.json").exists():
            write_atomic(dest / "state.json", old_state.read_bytes())
        old_state.unlink()
        fsync_dir(self.root)
        self.migrated = name
        log.info("migrated the single-model layout to %s (model %s)", dest, name)
