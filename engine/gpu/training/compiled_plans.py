"""Which training plans this machine's compile cache holds: `CompiledPlans`.

Inductor's disk cache keeps compiled code but cannot say which trainings it covers. Compiling a
plan took 139 s on an H100 with the cache empty (R2) and 13-21 s with it filled (R2 on an H100,
T9 on an H200), and a compiled 500-step run saves about 30 s: worth waiting for only when the
cache has the plan. So whoever
finishes compiling a plan (a worker in its idle time) writes it into a small JSON file beside the
compiled code, and `pawtrait train`, which has no idle time, compiles a recorded plan before its
first step and trains compiled, and trains any other plan uncompiled at once.

The file lives inside the cache folder, so deleting the cache deletes the record with it. Each
entry names what the compiled code is good for (torch, the card, the model and its precision):
a record written under another torch or for another model is not taken for this one.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.gpu.models import BaseModel

log = logging.getLogger(__name__)

RECORD_NAME = "pawtrait-training-plans.json"


@dataclass(frozen=True)
class CompiledPlans:
    path: Path
    identity: dict[str, str]  # what the compiled code depends on besides the plan

    @classmethod
    def in_folder(cls, folder: Path, base: BaseModel) -> CompiledPlans:
        """The record in a compile cache folder, as read and written for `base`."""
        device = torch.cuda.get_device_name(base.device) if base.device.type == "cuda" else base.device.type
        identity = {"torch": torch.__version__, "device": device, "model": base.model_id,
                    "vae": base.vae_id or "", "dtype": str(base.dtype)}
        return cls(folder / RECORD_NAME, identity)

    def has(self, key: tuple[object, ...]) -> bool:
        """Whether the plan with this `plan_key` was compiled here for this model."""
        return self._entry(key) in self._entries()

    def add(self, key: tuple[object, ...]) -> None:
        """Record a plan as compiled. Replaces the file in one rename, so a reader never sees half
        of it; two writers at once may drop one's entry, and a write that fails is only logged:
        either costs a command a compile it could have had, never the compiled code itself."""
        entries = self._entries()
        if self._entry(key) in entries:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile("w", dir=self.path.parent, suffix=".tmp", delete=False) as file:
                json.dump({"plans": [*entries, self._entry(key)]}, file, indent=1)
            os.replace(file.name, self.path)
        except OSError as error:
            log.warning("could not record a compiled training plan in %s: %s", self.path, error)

    def _entry(self, key: tuple[object, ...]) -> dict[str, object]:
        # Through JSON and back, so tuples compare as the lists a read gives.
        return json.loads(json.dumps({**self.identity, "plan": key}))

    def _entries(self) -> list[dict[str, object]]:
        try:
            plans = json.loads(self.path.read_text())["plans"]
        except FileNotFoundError:
            return []
        except (OSError, ValueError, KeyError, TypeError) as error:  # damaged: recompiling rebuilds it
            log.warning("ignoring the record of compiled trainings at %s: %s", self.path, error)
            return []
        return plans if isinstance(plans, list) else []
