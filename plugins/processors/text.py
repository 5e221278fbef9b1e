"""Text processors: str -> str, applied in order to captions / questions."""
from __future__ import annotations

import re

from framework.core.registry import PROCESSORS


@PROCESSORS.register("clean_caption")
class CleanCaption:
    """BLIP's caption cleaning: lower case, punctuation to spaces, single spaces, at most ``max_words`` words."""

    def __init__(self, max_words: int = 50) -> None:
        self.max_words = max_words

    def __call__(self, text: str) -> str:
        text = re.sub(r"([.!\"()*#:;~])", " ", text.lower())
        text = re.sub(r"\s{2,}", " ", text).rstrip("\n").strip(" ")
        return " ".join(text.split(" ")[: self.max_words])


@PROCESSORS.register("clean_question")
class CleanQuestion:
    """Lower case, punctuation except '?' removed, at most ``max_words`` words (BLIP's question cleaning)."""

    def __init__(self, max_words: int = 50) -> None:
        self.max_words = max_words

    def __call__(self, text: str) -> str:
        text = re.sub(r"([.!\"()*#:;~])", "", text.lower()).rstrip(" ")
        return " ".join(text.split(" ")[: self.max_words])


@PROCESSORS.register("prompt")
class Prompt:
    """Prepend a fixed prompt, e.g. 'a photo of ' for captioning."""

    def __init__(self, text: str = "a photo of ") -> None:
        self.text = text

    def __call__(self, text: str) -> str:
        return self.text + text
