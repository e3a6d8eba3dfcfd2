"""The worker's picture screening: one safety checker per worker, resident on its device.

The checker stays on the worker's device (CLIP ViT-L/14 in half precision: 0.6 GB) because
moving its weights there for each picture would cost about as much as the 30 ms a picture
may take. It loads at start; a worker whose checker cannot load tries again at each job and
refuses it meanwhile, so a picture is never posted unscreened by accident. PAWTRAIT_SAFETY=off
is the operator's explicit choice: nothing is screened and every verdict is None.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

import torch
from PIL import Image

from config.settings import Settings
from engine.gpu.safety.checker import SafetyChecker, SafetyUnavailable, load_safety_checker

log = logging.getLogger(__name__)


class ScreeningUnavailable(ValueError):
    """Pictures cannot be screened here, so none are painted; the message is for the member and the operator."""


class Screening:
    def __init__(self, enabled: bool, source: str, device: torch.device) -> None:
        self.enabled, self.source, self.device = enabled, source, device
        self._checker: SafetyChecker | None = None
        self._loading = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings, device: torch.device) -> Screening:
        return cls(settings.safety, settings.safety_model, device)

    def describe(self) -> str:
        return f"on ({self.source})" if self.enabled else "OFF (PAWTRAIT_SAFETY=off): pictures are posted unscreened"

    def checker(self) -> SafetyChecker:
        """The loaded checker (loading it now if needed); raises ScreeningUnavailable with the reason."""
        with self._loading:
            if self._checker is None:
                try:
                    checker = load_safety_checker(self.source)
                except SafetyUnavailable as error:
                    # Why, with the model's path or hub id, is for the operator's log: members read the rest.
                    log.error("the safety model %s could not be loaded: %s", self.source, error)
                    raise ScreeningUnavailable(
                        "this worker cannot check pictures before they are posted, so it paints none for now. "
                        "The bot's operator can see why in the worker's log and set PAWTRAIT_SAFETY_MODEL to a "
                        "folder or hub id this host can load."
                    ) from None
                dtype = torch.float16 if self.device.type == "cuda" else torch.float32
                self._checker = checker.to(self.device, dtype)
            return self._checker

    def require(self) -> None:
        """Raise ScreeningUnavailable unless pictures can be screened (or screening is off)."""
        if self.enabled:
            self.checker()

    def flags(self, images: Sequence[Image.Image]) -> list[bool] | None:
        """True for each flagged picture; None when screening is off."""
        if not self.enabled:
            return None
        return self.checker().flags(images)

    def load_at_start(self) -> None:
        """Load now and say in the log what the worker does about pictures."""
        if not self.enabled:
            log.warning("picture screening is OFF (PAWTRAIT_SAFETY=off): pictures are posted without a safety check")
            return
        try:
            self.checker()
            log.info("picture screening: on, with %s", self.source)
        except ScreeningUnavailable as error:
            log.error("picture screening cannot run, so this worker refuses jobs until it can: %s", error)
