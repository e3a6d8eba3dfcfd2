"""Compiled blocks (engine/gpu/compile.py): what is recorded ahead is exactly what later calls need."""

from __future__ import annotations

import torch
from diffusers.models.resnet import ResnetBlock2D
from torch._dynamo.utils import counters

from engine.gpu.compile import CompiledBlocks


def counting_backend() -> tuple[list[int], object]:
    """A dynamo backend that runs the traced graph as is and counts compilations."""
    compiled = [0]

    def backend(graph: torch.fx.GraphModule, example_inputs: list) -> object:
        compiled[0] += 1
        return graph.forward

    return compiled, backend


class TwoResnets(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first = ResnetBlock2D(in_channels=8, out_channels=8, temb_channels=None, groups=4)
        self.second = ResnetBlock2D(in_channels=8, out_channels=8, temb_channels=None, groups=4, output_scale_factor=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(x, None), None)


def test_blocks_differing_only_in_a_plain_attribute_are_compiled_apart_and_layouts_do_not_matter() -> None:
    """SDXL's mid-block ResNets equal the others but for `output_scale_factor` 1 instead of 1.0, and the
    VAE hands its ResNets channels-last tensors: both once made a request compile (on the H100)."""
    torch.manual_seed(0)
    model = TwoResnets().eval()
    compiled, backend = counting_backend()
    blocks = CompiledBlocks(model, backend)
    x = torch.randn(1, 8, 6, 6)
    with torch.no_grad():
        expected = model(x)
        calls = blocks.record(lambda: model(x))
        assert len(calls) == 2
        for call in calls:
            blocks.compile_call(call)
        done = compiled[0]
        graphs = counters["stats"]["unique_graphs"]
        with blocks.active():
            same = model(x)
            channels_last = model(x.contiguous(memory_format=torch.channels_last))
    assert compiled[0] == done and counters["stats"]["unique_graphs"] == graphs  # nothing compiled in the calls
    torch.testing.assert_close(same, expected)
    torch.testing.assert_close(channels_last, expected)
    assert "forward" not in vars(model.first)  # outside `active()` the blocks are eager again
