"""Pet LoRAs on the resident pipeline, switched per request, leaving the UNet as found.

A pet's LoRA file is read once through diffusers/peft (`load_lora_weights` as a passing
adapter), and kept in a small LRU cache as its low-rank factors, under the file's key in the
file store: keys carry a random tag, so a checkpoint written later never finds another's
factors, even where a database hands out a deleted row's id again (a restored backup). Each
request merges the chosen pet into the base weights (W += s * B @ A) and copies the
original weights back afterwards. Measured on an H100 at 1024² (docs/BENCHMARKS.md): a
live peft adapter made each image 1.8-3.4 s slower at batch 1 (separate LoRA matmuls plus
per-layer Python on the host) and 0.3 s slower at batch 4, and its idle layers slowed the
plain base too; a merged pet costs nothing per step and 13 ms to switch. Merging changes the
weights in place, so a compiled UNet does not recompile and a captured CUDA graph picks the
pet up (measured: no new dynamo graphs over pet switches).

The same UNet may carry a training run's adapter that is paused between two optimizer steps
(see the team contract), so every generation snapshots the adapter state, requires_grad
flags and train/eval modes of the LoRA-capable components and restores them afterwards.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import StableDiffusionXLPipeline
from peft.tuners.tuners_utils import BaseTunerLayer

from engine.gpu.device import PICTURE_ROOM, free_memory_bytes
from engine.usecases.generation.request import GenerationError

log = logging.getLogger(__name__)

# The name a pet's LoRA has on the pipeline while its factors are read (then it is deleted).
LOADING_ADAPTER = "pet-loading"
# One rank-4 SDXL LoRA is ~23 MB in half precision; a busy server's pets fit easily.
DEFAULT_CAPACITY = 16


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


def has_adapters(pipe: StableDiffusionXLPipeline) -> bool:
    """Whether a LoRA adapter is registered on a component (a training's, between its steps).

    Reads the components' `peft_config` instead of walking SDXL's ~2,500 modules (~10 ms of
    host time a walk). Wrapper layers left with no adapter compute the base layer alone.
    """
    return any(getattr(component, "peft_config", None) for component in lora_components(pipe))


# Pet deltas are computed in float32 chunks of at most this many elements (256 MB), so the
# merge needs little memory beyond the backup of the weights it changes.
_DELTA_CHUNK = 64 * 2**20


@dataclass
class _Group:
    """Layers whose weights have one shape: their deltas are one batched product, up @ down."""

    layers: list[torch.nn.Module]
    ups: torch.Tensor  # (layers, out, rank), peft's alpha/rank scaling included
    downs: torch.Tensor  # (layers, rank, in)


@dataclass
class LoraFactors:
    """One pet LoRA: linear layers' low-rank factors grouped by weight shape, plus the full
    deltas of layers whose delta is not a plain matrix product (convolutions)."""

    groups: list[_Group]
    full: list[tuple[torch.nn.Module, torch.Tensor]]

    def layers(self) -> list[torch.nn.Module]:
        return [layer for group in self.groups for layer in group.layers] + [layer for layer, _ in self.full]


def _factors_of(pipe: StableDiffusionXLPipeline, name: str) -> LoraFactors:
    by_shape: dict[tuple[int, ...], list[tuple[torch.nn.Module, torch.Tensor, torch.Tensor]]] = {}
    full = []
    for component in lora_components(pipe):
        for layer in _tuner_layers(component):
            if name not in getattr(layer, "lora_A", {}):
                continue
            base = layer.get_base_layer()
            if isinstance(base, torch.nn.Linear) and not getattr(layer, "fan_in_fan_out", False):
                down = layer.lora_A[name].weight.detach()
                up = (layer.lora_B[name].weight.detach() * layer.scaling[name]).to(down.dtype)
                by_shape.setdefault((*base.weight.shape, down.shape[0]), []).append((base, up, down))
            else:
                full.append((base, layer.get_delta_weight(name).detach().clone()))
    groups = [_Group([base for base, _, _ in members], torch.stack([up for _, up, _ in members]),
                     torch.stack([down for _, _, down in members])) for members in by_shape.values()]
    return LoraFactors(groups, full)


class _Backup:
    """Original values of the weights a merge changes, one flat copy per device and dtype.

    The copy stays on the weights' GPU unless that would leave less than a picture's room there
    (SDXL's attention weights are 1.8 GB; a 12 GB card holding the model has about 5 GB free);
    then it goes to pinned host memory, at the price of a copy each way over PCIe (not measured
    apart: the 12 GiB runs in docs/BENCHMARKS.md include it).
    """

    def __init__(self, weights: list[torch.Tensor]) -> None:
        self.buckets: dict[tuple[torch.device, torch.dtype], tuple[list[torch.Tensor], torch.Tensor]] = {}
        grouped: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
        for weight in weights:
            grouped.setdefault((weight.device, weight.dtype), []).append(weight)
        for (device, dtype), members in grouped.items():
            size = sum(weight.numel() for weight in members)
            free = free_memory_bytes(device)
            if free is None or free - size * members[0].element_size() >= PICTURE_ROOM:
                flat = torch.cat([weight.reshape(-1) for weight in members])
            else:
                flat = torch.empty(size, dtype=dtype, pin_memory=True)
                for piece, weight in zip(flat.split([weight.numel() for weight in members]), members):
                    piece.copy_(weight.reshape(-1), non_blocking=True)  # ordered before the merge on the stream
            self.buckets[(device, dtype)] = (members, flat)

    def restore(self) -> None:
        with torch.no_grad():
            for members, flat in self.buckets.values():
                pieces = [piece.view_as(weight) for piece, weight in zip(flat.split([w.numel() for w in members]), members)]
                if all(weight.device == flat.device for weight in members):
                    torch._foreach_copy_(members, pieces)  # one fused copy instead of one launch per layer
                else:  # kept in host memory, or an offload hook moved the module meanwhile
                    for weight, piece in zip(members, pieces):
                        weight.copy_(piece, non_blocking=piece.is_pinned())


def _merge(factors: LoraFactors, scale: float) -> _Backup:
    """W += scale * up @ down for each layer; returns the original weights to restore from.

    Restoring copies back rather than subtracting the delta again, which keeps the shared base
    bit-exact: in half precision add-then-subtract leaves rounding residue that would pile up
    over thousands of requests on weights that training also uses. Deltas are batched per
    weight shape and added in float32 (one rounding, as a fused add would): SDXL's 560 layers
    took ~20 ms of kernel launches one by one. Weights on the CPU (offloaded) merge layer by
    layer, which is faster there (6 s against 21 s for SDXL's on 2 cores).
    """
    with torch.no_grad():
        backup = _Backup([layer.weight for layer in factors.layers()])
        try:
            for group in factors.groups:
                targets = [layer.weight for layer in group.layers]
                device = targets[0].device
                if device.type == "cpu":  # offloaded weights (low-memory mode): no launches to save
                    for weight, up, down in zip(targets, group.ups, group.downs):
                        weight.addmm_(up.to(weight.dtype), down.to(weight.dtype), alpha=scale)
                    continue
                step = max(1, _DELTA_CHUNK // targets[0].numel())
                for start in range(0, len(targets), step):
                    ups = group.ups[start : start + step].to(device, torch.float32)
                    downs = group.downs[start : start + step].to(device, torch.float32)
                    torch._foreach_add_(targets[start : start + step], list(torch.bmm(ups, downs).unbind(0)), alpha=scale)
            for layer, delta in factors.full:
                layer.weight.add_(delta.to(layer.weight.device, torch.float32), alpha=scale)
        except BaseException:  # out of memory half way: no half-merged pet left in the weights
            backup.restore()
            raise
    return backup


@contextmanager
def _merged(factors: LoraFactors, scale: float) -> Iterator[None]:
    backup = _merge(factors, scale)
    try:
        yield
    finally:
        backup.restore()


@contextmanager
def merged_adapter(pipe: StableDiffusionXLPipeline, name: str) -> Iterator[None]:
    """Inside, peft adapter `name` (a paused training's, switched off by the caller) is merged into
    the base weights as a pet is, so the UNet runs its plain layers; the originals come back after.

    A live adapter costs every layer a second, float32 path: on an H200 a validation round of 3
    pictures took 4.93 s with the training's LoRA live against 3.25 s merged (docs/BENCHMARKS.md).
    Merged, the pictures are what `/imagine` will paint with that checkpoint, which merges it too.
    """
    with _merged(_factors_of(pipe, name), 1.0):
        yield


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
        self._factors: OrderedDict[str, LoraFactors] = OrderedDict()

    def loaded(self) -> list[str]:
        """File-store keys of the LoRAs that are ready, least recently used first."""
        return list(self._factors)

    @contextmanager
    def applied(self, key: str, lora_file: Path, scale: float) -> Iterator[None]:
        """Inside, the pipeline paints with the LoRA stored under `key` (a local copy at `lora_file`)
        merged in at `scale` (the caller switches any peft adapter off: a paused training's must not
        leak into the pet's picture)."""
        with _merged(self._factors_for(key, lora_file), scale):
            yield

    def evict(self, key: str) -> None:
        """Forget one LoRA, e.g. when its file is deleted."""
        self._factors.pop(key, None)

    def _factors_for(self, key: str, lora_file: Path) -> LoraFactors:
        if key in self._factors:
            self._factors.move_to_end(key)
            return self._factors[key]
        while len(self._factors) >= self.capacity:
            self._factors.popitem(last=False)
        self._load(lora_file, LOADING_ADAPTER)
        try:
            factors = _factors_of(self.pipe, LOADING_ADAPTER)
        finally:
            self.pipe.delete_adapters(LOADING_ADAPTER)
            self._strip_idle_layers()
        self._factors[key] = factors
        return factors

    def _strip_idle_layers(self) -> None:
        """Remove peft's wrapper layers once no adapter is left (their per-call cost is not free)."""
        if not any(self.pipe.get_list_adapters().values()) and has_tuner_layers(self.pipe):
            self.pipe.unload_lora_weights()

    def _load(self, lora_file: Path, name: str) -> None:
        try:
            self.pipe.load_lora_weights(str(lora_file.parent), weight_name=lora_file.name, adapter_name=name)
        except (OSError, ValueError, KeyError) as error:
            # The loader's words quote server paths: the operator's log has them, the member does not.
            log.warning("could not load the LoRA file %s: %s", lora_file, error)
            raise LoraLoadError(
                f"the pet's LoRA file {lora_file.name} could not be loaded; "
                "train the pet again or pick another checkpoint"
            ) from error


class LoraLoadError(GenerationError):
    """A checkpoint's LoRA file is unreadable or not a LoRA for this base model (told to the user)."""
