"""The text a picture's prompt adherence (CLIP-T) is measured against.

The trigger token is a word CLIP has never learned, so it is left out: "a photo of qzxvk cat"
is compared as "a photo of cat", as the DreamBooth paper's CLIP-T compares the prompt with
the subject's class. A token without its class noun becomes the noun.
"""

from __future__ import annotations

import re


def without_token(prompt: str, token: str, class_noun: str) -> str:
    """'a photo of qzxvk cat' -> 'a photo of cat'; 'qzxvk asleep' -> 'cat asleep'."""
    pattern = re.compile(rf"\b{re.escape(token)}\b(\s+{re.escape(class_noun)}\b)?", re.IGNORECASE)
    return re.sub(r"\s{2,}", " ", pattern.sub(class_noun, prompt)).strip()
