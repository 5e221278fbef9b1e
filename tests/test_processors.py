"""Registered processors: image transforms with the encoders' statistics, BLIP's text cleaning."""
from __future__ import annotations

import pytest
import torch
from PIL import Image

from framework.data.builder import compose


def test_text_processors() -> None:
    clean = compose([{"name": "clean_caption", "max_words": 5}])
    assert clean("  A Red circle.  And (a) blue; square!\n") == "a red circle and a"
    question = compose([{"name": "clean_question", "max_words": 50}])
    assert question("What colour is the CIRCLE?") == "what colour is the circle?"
    prompt = compose([{"name": "clean_caption"}, {"name": "prompt", "text": "a photo of "}])
    assert prompt("A Dog.") == "a photo of a dog"


def test_image_processors_resize_and_normalise_with_clip_statistics() -> None:
    pipe = compose([{"name": "resize", "size": 8}, {"name": "normalize", "stats": "clip"}])
    img = Image.new("RGB", (20, 10), (255, 0, 0))
    x = pipe(img)
    assert x.shape == (3, 8, 8)
    mean, std = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
    expected = torch.tensor([(1 - mean[0]) / std[0], (0 - mean[1]) / std[1], (0 - mean[2]) / std[2]])
    torch.testing.assert_close(x[:, 4, 4], expected, rtol=1e-5, atol=1e-5)
    gray = pipe(Image.new("L", (8, 8), 128))  # any mode becomes RGB
    assert gray.shape == (3, 8, 8)


def test_random_processors_follow_torch_seed() -> None:
    pipe = compose([{"name": "random_resized_crop", "size": 16, "scale": [0.3, 1.0]}, {"name": "hflip", "p": 0.5},
                    {"name": "normalize"}])
    img = Image.effect_noise((32, 32), 50).convert("RGB")
    torch.manual_seed(0)
    a = pipe(img)
    torch.manual_seed(0)
    assert torch.equal(a, pipe(img))
    to_tensor = compose([{"name": "normalize", "stats": "none"}])
    always, never = compose([{"name": "hflip", "p": 1.0}]), compose([{"name": "hflip", "p": 0.0}])
    assert torch.equal(to_tensor(always(img)), to_tensor(img).flip(-1))
    assert torch.equal(to_tensor(never(img)), to_tensor(img))


def test_unknown_processor_is_named() -> None:
    from framework.core.errors import RegistryError

    with pytest.raises(RegistryError, match="unknown processor 'resise'; did you mean 'resize'"):
        compose([{"name": "resise"}])
