"""The one owner of a part's training mode. A BLIP-2 model holds parts that may be frozen (the image encoder, the
LLM); whether a frozen part follows the model's ``train()`` is a fact of the reference, so each part states it
here and nothing else (the runner, the cost estimate, a test) second-guesses it: they call ``model.train()``.

LAVIS, which produced the paper's numbers: the frozen image encoder is put in eval mode for good
(``disabled_train``: no dropout or drop path, fixed norm statistics); the frozen LLM is only stripped of gradients,
so it follows the model into training mode and its dropout is active while the Q-Former trains."""
from __future__ import annotations

import types

from torch import nn


class FreezablePart(nn.Module):
    """Base of the parts that may be frozen. ``frozen``: no gradients, weights from their own file;
    ``frozen_follows_training``: whether a frozen part still enters training mode with the model (a trained part
    always does)."""

    frozen: bool = False
    frozen_follows_training: bool = False

    def train(self, mode: bool = True) -> "FreezablePart":
        return super().train(mode and (not self.frozen or self.frozen_follows_training))


def hold_in_eval(module: nn.Module) -> nn.Module:
    """The same rule for a frozen part whose class is not a :class:`FreezablePart` (a plugin's own module): eval
    mode now, and its ``train()`` made a no-op (LAVIS's ``disabled_train``), so a model's ``train()`` leaves it
    there."""
    module.eval()
    module.train = types.MethodType(_stay, module)
    return module


def _stay(self: nn.Module, mode: bool = True) -> nn.Module:
    return self
