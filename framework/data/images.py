"""Reading an image file: the one function training, evaluation, shards and prediction all use, so a model sees
the same pixels in all of them.

* EXIF orientation is applied (a phone photo stored sideways is seen upright);
* transparency is composited over white (what a viewer shows), not dropped (PIL's ``convert("RGB")`` keeps the
  colour stored under fully transparent pixels, often black);
* 16-bit images (``I;16`` PNGs, 16-bit grayscale TIFFs) are scaled to 8 bits (``convert("RGB")`` clips every
  value above 255 to white);
* grayscale, palette and CMYK images become RGB.

LAVIS reads ``Image.open(path).convert("RGB")``: the same pixels for 8-bit RGB files without an EXIF orientation
(all of COCO's annotated images as stored); see ``docs/fidelity.md``.
"""
from __future__ import annotations

from pathlib import Path
from typing import BinaryIO, Union

import numpy as np
from PIL import Image, ImageOps

SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def load_image(source: Union[str, Path, BinaryIO]) -> Image.Image:
    """An image file (a path, or its bytes as a file object) as an upright 8-bit RGB image."""
    with Image.open(source) as img:
        img = ImageOps.exif_transpose(img)
        img.load()
    if img.mode in SIXTEEN_BIT:
        # 16-bit values live in 0..65535; 8-bit ones are the top byte (Pillow cannot convert "I" modes to "L")
        img = Image.fromarray((np.asarray(img, dtype=np.int64).clip(0, 65535) >> 8).astype(np.uint8))
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", img.size, (255, 255, 255, 255)), img)
    return img.convert("RGB")
