"""Pet LoRAs on the resident pipeline, switched per request, leaving the UNet as found.

A pet's LoRA file is read once through diffusers/peft (`load_lora_weights` as adapter
"pet-ckpt-<checkpoint id>"), and kept in a small LRU cache as its low-rank factors. Each
request merges the chosen pet into the base weights (W += s * B @ A) and copies the
original weights back afterwards. Measured on an H100 at 1024² (docs/BENCHMARKS.md): a
live peft adapter made each image 1.8-3.4 s slower at batch 1 (separate LoRA matmuls plus
per-layer Python on the host) and 0.3 s slower at batch 4, and its idle layers slowed the
plain base too; a merged pet costs nothing per step and 20 ms to switch. Merging changes the
weights in place, so a compiled UNet does not recompile and a captured CUDA graph picks the
pet up (measured: no new dynamo graphs over pet switches).

The same UNet may carry a training run's adapter that is paused between two optimizer steps
(see the team contract), so every generation snapshots the adapter state, requires_grad
flags and train/eval modes of the LoRA-capable components and restores them afterwards.
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

from engine.generation.request import GenerationError

log = logging.getLogger(__name__)

PET_PREFIX = "pet-ckpt-"
# One rank-4 SDXL LoRA is ~23 MB in half precision; a busy server's pets fit easily.
DEFAULT_CAPACITY = 16


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
    """One walk over each component's modules (a walk of SDXL's ~2,500 modules costs milliseconds)."""
    layers, grads, modes = [], {}, []
    for component in components:
        for module in component.modules():
            modes.append((module, module.training))
            grads.update((param, param.requires_grad) for param in module.parameters(recurse=False))
            if isinstance(module, BaseTunerLayer):
                layers.append((module, list(module.active_adapters), bool(module.disable_adapters)))
    return _Snapshot(layers, grads, modes)


def _restore(snapshot: _Snapshot, components: list[torch.nn.Module]) -> None:
    known = {id(layer) for layer, _, _ in snapshot.layers}
    for layer, active, disabled in snapshot.layers:
        layer.set_adapter(active)
        layer.enable_adapters(not disabled)
    for component in components:
        for module in component.modules():
            # Layers that became LoRA layers during this generation: inert, as the module was before.
            if isinstance(module, BaseTunerLayer) and id(module) not in known:
                module.enable_adapters(False)
            # peft's set_adapter marks active adapters trainable; only the snapshot decides that.
            for param in module.parameters(recurse=False):
                param.requires_grad_(snapshot.grads.get(param, False))
    for module, training in snapshot.modes:
        module.training = training  # each module's own flag: `train()` would walk its subtree again


@contextmanager
def preserved_adapter_state(pipe: StableDiffusionXLPipeline) -> Iterator[None]:
    """Run a generation inside; the components' adapters, grads and modes come back unchanged."""
    components = lora_components(pipe)
    snapshot = _snapshot(components)
    try:
        yield
    finally:
        _restore(snapshot, components)


def has_tuner_layers(pipe: StableDiffusionXLPipeline) -> bool:
    return any(True for component in lora_components(pipe) for _ in _tuner_layers(component))


@dataclass
class LoraFactors:
    """One pet LoRA as (base layer, down, up) triples: the layer's weight becomes W + scale * up @ down.

    `up` already carries peft's alpha/rank scaling. Layers whose delta is not a plain matrix
    product (convolutions) keep their full delta in `up` with `down` None.
    """

    layers: list[tuple[torch.nn.Module, torch.Tensor | None, torch.Tensor]]


def _factors_of(pipe: StableDiffusionXLPipeline, name: str) -> LoraFactors:
    layers = []
    for component in lora_components(pipe):
        for layer in _tuner_layers(component):
            if name not in getattr(layer, "lora_A", {}):
                continue
            base = layer.get_base_layer()
            if isinstance(base, torch.nn.Linear) and not getattr(layer, "fan_in_fan_out", False):
                down = layer.lora_A[name].weight.detach().clone()
                up = (layer.lora_B[name].weight.detach() * layer.scaling[name]).to(down.dtype)
                layers.append((base, down, up))
            else:
                layers.append((base, None, layer.get_delta_weight(name).detach().clone()))
    return LoraFactors(layers)


def _merge(factors: LoraFactors, scale: float) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """W += scale * up @ down for each layer; returns (weight, original copy) pairs to restore from.

    Restoring copies back rather than subtracting the delta again, which keeps the shared base
    bit-exact: in half precision add-then-subtract leaves rounding residue that would pile up
    over thousands of requests on weights that training also uses.
    """
    backups: list[tuple[torch.Tensor, torch.Tensor]] = []
    with torch.no_grad():
        try:
            for base, down, up in factors.layers:
                weight = base.weight
                backups.append((weight, weight.detach().clone()))
                up = up.to(weight.device, weight.dtype)
                if down is None:
                    weight.add_(up, alpha=scale)
                else:
                    weight.addmm_(up, down.to(weight.device, weight.dtype), alpha=scale)
        except BaseException:  # out of memory half way: no half-merged pet left in the weights
            _restore_weights(backups)
            raise
    return backups


def _restore_weights(backups: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    with torch.no_grad():
        for weight, backup in backups:
            weight.copy_(backup)


class LoraCache:
    """Pet LoRAs ready to apply as their low-rank factors, least recently used evicted first.

    Each request merges one pet into the weights and copies the originals back after (see `_merge`).
    Keeping a pet merged for its next request saves ~20 ms, but its backup copies of the
    attention weights (1.8 GB on SDXL) would then stay resident and lift the peak to 10.7 GiB.
    """

    def __init__(self, pipe: StableDiffusionXLPipeline, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError("the LoRA cache needs room for at least one pet")
        self.pipe = pipe
        self.capacity = capacity
        self._factors: OrderedDict[int, LoraFactors] = OrderedDict()

    def loaded(self) -> list[int]:
        """Checkpoint ids whose LoRAs are ready, least recently used first."""
        return list(self._factors)

    @contextmanager
    def applied(self, checkpoint_id: int, lora_file: Path, scale: float) -> Iterator[None]:
        """Inside, the pipeline paints with this checkpoint's LoRA merged in at `scale` (the caller
        switches any peft adapter off: a paused training's must not leak into the pet's picture)."""
        factors = self._factors_for(checkpoint_id, lora_file)
        backups = _merge(factors, scale)
        try:
            yield
        finally:
            _restore_weights(backups)

    def evict(self, checkpoint_id: int) -> None:
        """Forget one checkpoint's LoRA, e.g. when its files are deleted."""
        self._factors.pop(checkpoint_id, None)

    def _factors_for(self, checkpoint_id: int, lora_file: Path) -> LoraFactors:
        if checkpoint_id in self._factors:
            self._factors.move_to_end(checkpoint_id)
            return self._factors[checkpoint_id]
        while len(self._factors) >= self.capacity:
            self._factors.popitem(last=False)
        name = adapter_name(checkpoint_id)
        self._load(lora_file, name)
        try:
            factors = _factors_of(self.pipe, name)
        finally:
            self.pipe.delete_adapters(name)
            self._strip_idle_layers()
        self._factors[checkpoint_id] = factors
        return factors

    def _strip_idle_layers(self) -> None:
        """Remove peft's wrapper layers once no adapter is left (their per-call cost is not free)."""
        if not any(self.pipe.get_list_adapters().values()) and has_tuner_layers(self.pipe):
            self.pipe.unload_lora_weights()

    def _load(self, lora_file: Path, name: str) -> None:
        try:
            self.pipe.load_lora_weights(str(lora_file.parent), weight_name=lora_file.name, adapter_name=name)
        except (OSError, ValueError, KeyError) as error:
            raise LoraLoadError(
                f"the pet's LoRA file {lora_file.name} could not be loaded ({error}); "
                "train the pet again or pick another checkpoint"
            ) from error


class LoraLoadError(GenerationError):
    """A checkpoint's LoRA file is unreadable or not a LoRA for this base model (told to the user)."""
