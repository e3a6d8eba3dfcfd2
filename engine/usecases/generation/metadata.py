"""The generation parameters in a PNG `parameters` text chunk, in AUTOMATIC1111's format.

A1111, ComfyUI loaders, Civitai and most image browsers read this chunk, so a picture
saved from Discord still says how it was made. The format is three parts:

    <prompt>
    Negative prompt: <negative prompt>          (line left out when empty)
    Steps: 30, Sampler: DPM++ 2M Karras, CFG scale: 5, Seed: 123, Size: 1024x1024, ...

A value containing a comma, colon or newline is written as a JSON string, as A1111 does.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from PIL.PngImagePlugin import PngInfo

CHUNK = "parameters"
# A1111's own pattern: a key of word characters, spaces, '-' or '/', then a quoted or plain value.
_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_NEGATIVE = "Negative prompt:"


@dataclass
class Parameters:
    prompt: str
    negative_prompt: str = ""
    settings: dict[str, str] = field(default_factory=dict)  # "Steps" -> "30", in order


def _quote(value: object) -> str:
    text = str(value)
    if any(char in text for char in ",:\n"):
        return json.dumps(text, ensure_ascii=False)
    return text


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def format_parameters(params: Parameters) -> str:
    lines = [params.prompt]
    if params.negative_prompt:
        lines.append(f"{_NEGATIVE} {params.negative_prompt}")
    lines.append(", ".join(f"{key}: {_quote(value)}" for key, value in params.settings.items()))
    return "\n".join(lines)


def parse_parameters(text: str) -> Parameters:
    """Read an A1111 `parameters` text back (what other tools do with our PNGs)."""
    *lines, last = text.strip().split("\n")
    if len(_PARAM.findall(last)) < 3:  # A1111's rule: a settings line has at least three pairs
        lines.append(last)
        last = ""
    prompt: list[str] = []
    negative: list[str] = []
    for line in lines:
        if line.startswith(_NEGATIVE):
            negative.append(line[len(_NEGATIVE) :].strip())
        elif negative:
            negative.append(line)
        else:
            prompt.append(line)
    settings = {key.strip(): _unquote(value.strip()) for key, value in _PARAM.findall(last)}
    return Parameters(prompt="\n".join(prompt), negative_prompt="\n".join(negative), settings=settings)


def png_info(params: Parameters) -> PngInfo:
    """A PngInfo carrying the chunk, for `Image.save(..., pnginfo=...)`."""
    info = PngInfo()
    info.add_text(CHUNK, format_parameters(params))
    return info
