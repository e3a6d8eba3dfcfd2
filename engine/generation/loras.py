"""Pet LoRAs as named peft adapters on the resident pipeline, and leaving the UNet as found.

Loading a rank-4 SDXL LoRA takes a fraction of a second, reloading the base takes tens of
seconds, so pets are adapters ("pet-ckpt-<checkpoint id>") that stay loaded in a small LRU
cache and are switched with `set_adapters`. The same UNet may carry a training run's
adapter that is paused between two optimizer steps (see the team contract), so every
generation snapshots the adapter state, requires_grad flags and train/eval modes of the
LoRA-capable components and restores them afterwards.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from diffusers import StableDiffusionXLPipeline
from peft.tuners.tuners_utils import BaseTunerLayer

log = logging.getLogger(__name__)

PET_PREFIX = "pet-ckpt-"
# One rank-4 SDXL LoRA is ~23 MB in half precision; a handful covers a busy server's pets.
DEFAULT_CAPACITY = 8
# Rank the compiled hot-swap slot is padded to; pet LoRAs above it cannot be hot-swapped.
HOTSWAP_RANK = 64
HOTSWAP_SLOT = "pet-live"


def adapter_name(checkpoint_id: int) -> str:
    return f"{PET_PREFIX}{checkpoint_id}"


def lora_components(pipe: StableDiffusionXLPipeline) -> list[torch.nn.Module]:
    return [module for module in (pipe.unet, pipe.text_encoder, pipe.text_encoder_2) if module is not None]


def _tuner_layers(module: torch.nn.Module) -> Iterator[BaseTunerLayer]:
    for sub in module.modules():
        if isinstance(sub, BaseTunerLayer):
            yield sub


@dataclass
class _Snapshot:
    layers: list[tuple[BaseTunerLayer, list[str], bool]]  # layer, active adapters, disabled
    grads: dict[torch.nn.Parameter, bool]
    modes: list[tuple[torch.nn.Module, bool]]


def _snapshot(components: list[torch.nn.Module]) -> _Snapshot:
    layers, grads, modes = [], {}, []
    for component in components:
        layers += [(layer, list(layer.active_adapters), bool(layer.disable_adapters)) for layer in _tuner_layers(component)]
        grads.update((param, param.requires_grad) for param in component.parameters())
        modes += [(module, module.training) for module in component.modules()]
    return _Snapshot(layers, grads, modes)


def _restore(snapshot: _Snapshot, components: list[torch.nn.Module]) -> None:
    known = {id(layer) for layer, _, _ in snapshot.layers}
    for layer, active, disabled in snapshot.layers:
        layer.set_adapter(active)
        layer.enable_adapters(not disabled)
    for component in components:
        # Layers that became LoRA layers during this generation: inert, as the module was before.
        for layer in _tuner_layers(component):
            if id(layer) not in known:
                layer.enable_adapters(False)
        # peft's set_adapter marks active adapters trainable; only the snapshot decides that.
        for param in component.parameters():
            param.requires_grad_(snapshot.grads.get(param, False))
    for module, training in snapshot.modes:
        module.train(training)


@contextmanager
def preserved_adapter_state(pipe: StableDiffusionXLPipeline) -> Iterator[None]:
    """Run a generation inside; the components' adapters, grads and modes come back unchanged."""
    components = lora_components(pipe)
    snapshot = _snapshot(components)
    try:
        yield
    finally:
        _restore(snapshot, components)


@contextmanager
def fused_adapter(pipe: StableDiffusionXLPipeline, name: str) -> Iterator[None]:
    """Merge adapter `name` into the base weights for one generation; restore them bit for bit after.

    A merged LoRA costs no extra kernels per layer (on an H100 at batch 1 the separate LoRA
    matmuls cost about a quarter of the time). peft's unmerge subtracts the delta again, which
    in half precision leaves rounding residue that would pile up over thousands of requests on
    a base that training also uses, so the original weights are copied back from a backup.
    """
    layers = [
        layer
        for component in lora_components(pipe)
        for layer in _tuner_layers(component)
        if name in getattr(layer, "lora_A", {})
    ]
    backups = [(layer.get_base_layer().weight, layer.get_base_layer().weight.detach().clone()) for layer in layers]
    try:
        for layer in layers:
            layer.merge(adapter_names=[name])
        yield
    finally:
        for layer in layers:
            layer.unmerge()
        with torch.no_grad():
            for weight, backup in backups:
                weight.copy_(backup)


class LoraCache:
    """Which pet LoRAs are loaded on the pipeline, least recently used first.

    Resident mode keeps up to `capacity` adapters and switches between them. Hot-swap mode
    (for a compiled UNet, where a new adapter name would force recompilation) keeps one
    adapter slot and overwrites its weights in place with diffusers' LoRA hot-swap.
    """

    def __init__(self, pipe: StableDiffusionXLPipeline, capacity: int = DEFAULT_CAPACITY, hotswap: bool = False) -> None:
        if capacity < 1:
            raise ValueError("the LoRA cache needs room for at least one adapter")
        self.pipe = pipe
        self.capacity = capacity
        self.hotswap = hotswap
        self._loaded: OrderedDict[int, str] = OrderedDict()  # checkpoint id -> adapter name
        self._slot_holds: int | None = None

    @property
    def loaded(self) -> list[int]:
        """Checkpoint ids whose adapters are loaded, least recently used first."""
        if self.hotswap:
            return [] if self._slot_holds is None else [self._slot_holds]
        return list(self._loaded)

    def activate(self, checkpoint_id: int, lora_file: Path, scale: float) -> str:
        """Make this checkpoint's LoRA the only active adapter, at `scale`; returns its adapter name."""
        name = self._hotswap_in(checkpoint_id, lora_file) if self.hotswap else self._ensure_loaded(checkpoint_id, lora_file)
        self.pipe.set_adapters([name], adapter_weights=[scale])
        self.pipe.enable_lora()
        return name

    def deactivate(self) -> None:
        """The plain base model: every adapter off (nothing is unloaded)."""
        if any(True for component in lora_components(self.pipe) for _ in _tuner_layers(component)):
            self.pipe.disable_lora()

    def evict(self, checkpoint_id: int) -> None:
        """Drop one checkpoint's adapter, e.g. when its files are deleted."""
        name = self._loaded.pop(checkpoint_id, None)
        if name is not None:
            self.pipe.delete_adapters(name)
        if self._slot_holds == checkpoint_id:
            self._slot_holds = None  # the slot's weights are stale; the next activate overwrites them

    def _ensure_loaded(self, checkpoint_id: int, lora_file: Path) -> str:
        if checkpoint_id in self._loaded:
            self._loaded.move_to_end(checkpoint_id)
            return self._loaded[checkpoint_id]
        while len(self._loaded) >= self.capacity:
            old_id, old_name = self._loaded.popitem(last=False)
            log.debug("evicting LoRA adapter %s", old_name)
            self.pipe.delete_adapters(old_name)
        name = adapter_name(checkpoint_id)
        present = {adapter for adapters in self.pipe.get_list_adapters().values() for adapter in adapters}
        if name not in present:  # else another Generator on this UNet already loaded this checkpoint
            self._load(lora_file, name, hotswap=False)
        self._loaded[checkpoint_id] = name
        return name

    def _hotswap_in(self, checkpoint_id: int, lora_file: Path) -> str:
        if self._slot_holds != checkpoint_id:
            slot_exists = HOTSWAP_SLOT in self.pipe.get_list_adapters().get("unet", [])
            self._load(lora_file, HOTSWAP_SLOT, hotswap=slot_exists)
            self._slot_holds = checkpoint_id
        return HOTSWAP_SLOT

    def _load(self, lora_file: Path, name: str, hotswap: bool) -> None:
        try:
            self.pipe.load_lora_weights(
                str(lora_file.parent), weight_name=lora_file.name, adapter_name=name, hotswap=hotswap
            )
        except (OSError, ValueError, KeyError) as error:
            raise LoraLoadError(
                f"the pet's LoRA file {lora_file.name} could not be loaded ({error}); "
                "train the pet again or pick another checkpoint"
            ) from error


class LoraLoadError(RuntimeError):
    """A checkpoint's LoRA file is missing or not a LoRA for this base model."""
