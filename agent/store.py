"""A/B slot store on disk.

    DATA/state.json      which slot serves, what each slot holds (replaced atomically)
    DATA/slots/a, b      installed bundles (sdk.bundle.install layout)

A slot counts only once ``state.json`` names it, and ``state.json`` is only ever replaced by an
atomic rename after the slot's files are fsynced and its health gate passed.  Before the inactive
slot is overwritten, ``state.json`` first forgets it.  A crash at any point therefore leaves a
state file that names only complete, verified slots.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Literal

from pydantic import Field

from bitnet_edge.agent.errors import StoreError
from bitnet_edge.agent.fsutil import fsync_dir, write_atomic
from bitnet_edge.sdk.errors import FormatError
from bitnet_edge.sdk.schemas import Strict, parse_model
from bitnet_edge.sdk.wire.protocol import InstalledRelease, Outcome

__all__ = ["SlotName", "SlotInfo", "StoreState", "SlotStore"]

SlotName = Literal["a", "b"]


class SlotInfo(Strict):
    release: InstalledRelease = Field(description="what the slot holds")
    installed_at: float = Field(description="unix time of the switch")
    files: dict[str, str] = Field(description="relative path -> sha256 of every file in the slot")


class StoreState(Strict):
    version: Literal[1] = Field(default=1, description="state file format")
    active: SlotName | None = Field(default=None, description="the slot that serves")
    slots: dict[SlotName, SlotInfo | None] = Field(default_factory=lambda: {"a": None, "b": None},
                                                   description="what each slot holds (None: nothing trusted)")
    last_outcome: Outcome | None = Field(default=None, description="result of the latest install attempt")


class SlotStore:
    def __init__(self, data_dir: str | Path):
        self.root = Path(data_dir)
        self.state_file = self.root / "state.json"
        (self.root / "slots").mkdir(parents=True, exist_ok=True)

    # ---- state ---------------------------------------------------------------------------------
    def load(self) -> StoreState:
        try:
            raw = self.state_file.read_bytes()
        except FileNotFoundError:
            return StoreState()
        try:
            return parse_model(StoreState, json.loads(raw), source=str(self.state_file))
        except (json.JSONDecodeError, FormatError) as exc:
            raise StoreError(f"{self.state_file}: unreadable state ({exc}); the agent will not guess "
                             "which slot is safe: restore it or reinstall with `bitnet-edge agent install`") from None

    def save(self, state: StoreState) -> None:
        write_atomic(self.state_file, (state.model_dump_json(indent=2) + "\n").encode())

    def slot_dir(self, slot: SlotName) -> Path:
        return self.root / "slots" / slot

    @staticmethod
    def other(slot: SlotName | None) -> SlotName:
        return "b" if slot == "a" else "a"

    # ---- install steps ------------------------------------------------------------------------
    def prepare_inactive(self) -> SlotName:
        """Forget the inactive slot in state.json (durably), then empty its directory."""
        state = self.load()
        slot = self.other(state.active)
        if state.slots.get(slot) is not None:
            self.save(state.model_copy(update={"slots": {**state.slots, slot: None}}))
        d = self.slot_dir(slot)
        if d.exists():
            shutil.rmtree(d)
        fsync_dir(d.parent)
        return slot

    def switch(self, slot: SlotName, info: SlotInfo, outcome: Outcome) -> StoreState:
        """The atomic switch: one rename makes ``slot`` the serving one."""
        state = self.load()
        new = state.model_copy(update={"active": slot, "slots": {**state.slots, slot: info}, "last_outcome": outcome})
        self.save(new)
        return new

    def record_outcome(self, outcome: Outcome) -> None:
        self.save(self.load().model_copy(update={"last_outcome": outcome}))

    def rollback(self) -> StoreState:
        """Serve the other slot again (it must hold a complete install)."""
        state = self.load()
        other = self.other(state.active)
        info = state.slots.get(other)
        if info is None:
            raise StoreError("no previous release to roll back to (the other slot is empty)")
        outcome = Outcome(bundle_sha256=info.release.bundle_sha256, result="rolled_back", reason="ok",
                          message=f"rolled back to {info.release.model} {info.release.version}", ts=time.time())
        new = state.model_copy(update={"active": other, "last_outcome": outcome})
        self.save(new)
        return new
