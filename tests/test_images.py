"""One image reader: training, shards and prediction see the same pixels for awkward files."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from framework.data.datasets import CocoCaptionDataset
from framework.data.images import load_image
from framework.data.shards import open_image
from framework.data.images import batches


def _awkward_files(folder: Path) -> list:
    folder.mkdir()
    ramp = (np.arange(16 * 8, dtype=np.uint16).reshape(8, 16) * 500)  # 0..63500: most above 255
    Image.fromarray(ramp).save(folder / "deep.png")  # mode I;16
    photo = np.zeros((20, 40, 3), np.uint8)
    photo[:, :20] = (200, 30, 30)  # left half red: where it ends up shows the rotation
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    Image.fromarray(photo).save(folder / "rotated.jpg", exif=exif, quality=95)
    rgba = np.zeros((6, 6, 4), np.uint8)
    rgba[:3] = (0, 0, 255, 255)  # top half opaque blue, bottom half transparent (stored black)
    Image.fromarray(rgba).save(folder / "clear.png")
    return ["deep.png", "rotated.jpg", "clear.png"]


def test_sixteen_bit_rotated_and_transparent_files_read_as_a_viewer_shows_them(tmp_path: Path) -> None:
    _awkward_files(tmp_path / "img")
    deep = np.asarray(load_image(tmp_path / "img" / "deep.png"))
    expected = (np.arange(16 * 8).reshape(8, 16) * 500) >> 8
    assert deep.shape == (8, 16, 3) and (deep == expected[..., None]).all()  # the top byte, not clipped to white
    rotated = np.asarray(load_image(tmp_path / "img" / "rotated.jpg"))
    assert rotated.shape == (40, 20, 3) and rotated[5, 10, 0] > 150 and rotated[35, 10, 0] < 60  # red on top
    clear = np.asarray(load_image(tmp_path / "img" / "clear.png"))
    assert (clear[0, 0] == (0, 0, 255)).all() and (clear[5, 5] == 255).all()  # transparent over white


def test_training_shards_and_prediction_see_the_same_pixels(tmp_path: Path) -> None:
    names = _awkward_files(tmp_path / "img")

    def to_tensor(img: Image.Image) -> torch.Tensor:
        return torch.from_numpy(np.asarray(img.resize((16, 16)), dtype=np.float32).copy())

    annotations = {"images": [{"id": i, "file_name": n} for i, n in enumerate(names)],
                   "annotations": [{"image_id": i, "caption": "x"} for i in range(len(names))]}
    train = CocoCaptionDataset(annotations, tmp_path / "img", train=True, image_proc=to_tensor)
    seen_in_training = {train[i]["image_id"]: train[i]["image"] for i in range(len(train))}
    predicted = dict(enumerate(t for _, batch in batches([tmp_path / "img" / n for n in names], to_tensor, 1,
                                                          lambda p, why: None) for t in batch))
    for i, name in enumerate(names):
        in_shard = to_tensor(open_image({name.rsplit(".", 1)[1]: (tmp_path / "img" / name).read_bytes()}))
        assert torch.equal(seen_in_training[i], predicted[i]), name
        assert torch.equal(in_shard, predicted[i]), name
