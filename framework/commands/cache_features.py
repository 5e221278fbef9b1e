"""``python -m framework.cache_features --cfg X.yaml [--splits train val] [--batch-size 64]``

Runs the config's frozen image encoder (``model.image_encoder``, with its weights) once over every image of its
data sets and stores the output tokens (fp16, memory-mapped; layout in ``framework/data/feature_cache.py``).
Then ``--options model.image_encoder.cached=true`` (or the key in the YAML) trains and evaluates from the cache:
stage 1, stage 2 and every ablation that keeps the encoder and the image processing. A split whose images are
augmented randomly is not cached (one crop would be frozen in): give it fixed processing to cache it.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from tqdm import tqdm

from framework.commands import cli
from framework.core.errors import ConfigError
from framework.core.logs import logger
from framework.data.feature_cache import cache_folder, random_processors, write_cache
from framework.engine.experiment import ExperimentConfig
from framework.engine.experiment_data import builders
from framework.engine.machine import run_device
from framework.models.image_encoder import build_image_encoder
from framework.models.interfaces import CachesFeatures, ReadsFeatureCache


def _run(exp: ExperimentConfig, args: argparse.Namespace) -> None:
    spec = exp.model.get("image_encoder")
    if not isinstance(spec, dict):
        raise ConfigError(f"model {exp.model['name']!r} has no image_encoder to cache")
    if not spec.get("checkpoint"):
        raise ConfigError("model.image_encoder.checkpoint is null: the encoder would be randomly initialised, and "
                          "its cached features would match no run's encoder; point it at the encoder's weights")
    device = run_device(exp.run)
    encoder = build_image_encoder({**spec, "cached": False}).to(device).eval()
    if not isinstance(encoder, CachesFeatures):
        raise ConfigError(f"image encoder {spec['name']!r} cannot be cached (the ViT encoders can)")
    splits = args.splits or list(dict.fromkeys(exp.run.train_splits + exp.run.eval_splits + exp.run.test_splits))
    done = 0
    for entry, b in builders(exp).items():
        for split in [s for s in splits if b.has_split(s)]:
            rand = random_processors(b.processors(split)["image"])
            if rand:
                logger.warning("datasets.%s (%s) not cached: its image processors augment randomly (%s)", entry, split,
                               ", ".join(rand))
                continue
            b.prepare([split])
            data = b.build(split)
            if not isinstance(data, ReadsFeatureCache):
                logger.warning("datasets.%s (%s) not cached: its data set (%s) reads no image files", entry, split,
                               type(data).__name__)
                continue
            files = list(dict.fromkeys(s["file"] for s in data.samples))
            folder = cache_folder(encoder.cache_dir, entry, split)
            with tqdm(total=len(files), desc=f"features {entry}/{split}", unit="image") as bar:
                write_cache(files, data.image, encoder, folder, encoder.fingerprint(b.image_processor_specs(split)),
                            args.batch_size, device, bar.update)
            logger.info("cached %d images of %s/%s in %s", len(files), entry, split, folder)
            done += 1
    if not done:
        raise ConfigError("nothing was cached: every split augments randomly or reads no image files")


def main(argv: Optional[List[str]] = None) -> int:
    def extra(p: argparse.ArgumentParser) -> None:
        p.add_argument("--splits", nargs="+", help="splits to cache (default: the run's train, eval and test splits)")
        p.add_argument("--batch-size", type=int, default=64, help="images per encoder forward pass")

    return cli.main("framework.cache_features", "Cache a frozen image encoder's output tokens.", _run, argv, extra)


if __name__ == "__main__":
    sys.exit(main())
