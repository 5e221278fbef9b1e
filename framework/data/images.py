"""Reading an image file: the one function training, evaluation, shards and prediction all use, so a model sees
the same pixels in all of them.

* EXIF orientation is applied (a phone photo stored sideways is seen upright);
* transparency is composited over white (what a viewer shows), not dropped (PIL's ``convert("RGB")`` keeps the
  colour stored under fully transparent pixels, often black);
* 16-bit images (``I;16`` PNGs, 16-bit grayscale TIFFs) are scaled to 8 bits (``convert("RGB")`` clips every
  value above 255 to white);
* grayscale, palette and CMYK images become RGB.

LAVIS reads ``Image.open(path).convert("RGB")``: the same pixels for 8-bit RGB files without an EXIF orientation
(all of COCO's annotated images as stored); see ``docs/fidelity.md``. Also here: a command's image arguments
(files and folders) as a list of files, and those files read and batched.
"""
from __future__ import annotations

from pathlib import Path
from typing import BinaryIO, Callable, Iterator, List, Tuple, Union

import numpy as np
import torch
from PIL import Image, ImageOps

from framework.core.errors import ConfigError

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


IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"}


def image_paths(items: List[str]) -> List[Path]:
    """Files as given; folders expanded to their image files, sorted. A folder with none is an error."""
    out = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise ConfigError(f"{p}: no image files in this folder (looked for "
                                  f"{', '.join(sorted(IMAGE_SUFFIXES))})")
            out += found
        else:
            out.append(p)
    return out


def batches(paths: List[Path], processor: Callable, size: int, report: Callable[[Path, str], None]
            ) -> Iterator[Tuple[List[Path], torch.Tensor]]:
    """Processed images in batches of ``size``; an unreadable file is reported and skipped."""
    done: List[Tuple[Path, torch.Tensor]] = []
    for path in paths:
        try:
            done.append((path, processor(load_image(path))))
        except Exception as e:  # PIL raises many types for unreadable files
            report(path, f"cannot read image ({type(e).__name__}: {e})")
            continue
        if len(done) == size:
            yield [p for p, _ in done], torch.stack([t for _, t in done])
            done = []
    if done:
        yield [p for p, _ in done], torch.stack([t for _, t in done])
