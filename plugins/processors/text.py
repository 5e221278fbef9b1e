"""Text processors: str -> str, applied in order to captions / questions."""
from __future__ import annotations

import re
from typing import List

import torch

from framework.core.errors import ConfigError
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


@PROCESSORS.register("instruction_template")
class InstructionTemplate:
    """Put the text (an instruction, a question) into a template, InstructBLIP's way of turning a data set into
    instructions: ``templates: ["<Image> Question: {} Short answer:", "Given the image, answer: {}"]``, ``{}``
    where the text goes. With several templates each sample draws one, uniformly, from torch's generator (a seeded
    run repeats, also across a resume); give the evaluation split one template."""

    def __init__(self, templates: List[str]) -> None:
        if not templates:
            raise ConfigError("processor instruction_template: templates is empty; give at least one, e.g. "
                              "['Question: {} Short answer:']")
        for t in templates:
            try:
                filled = t.format("\0")
            except (IndexError, KeyError, ValueError) as e:
                raise ConfigError(f"processor instruction_template: template {t!r} is not a template with one '{{}}' "
                                  f"({type(e).__name__}: {e}); write a literal brace as '{{{{' or '}}}}'") from e
            if filled.count("\0") != 1:
                raise ConfigError(f"processor instruction_template: template {t!r} must hold '{{}}' once, where the "
                                  f"text goes")
        self.templates = list(templates)

    def __call__(self, text: str) -> str:
        pick = int(torch.randint(len(self.templates), ())) if len(self.templates) > 1 else 0
        return self.templates[pick].format(text)
