"""``python -m run_scripts.probe_tokens --cfg projects/blip2/demo/stage1_shapes.yaml``: what the frozen image
encoder's tokens tell a linear reader about the shapes.

For each column of the shapes images, a linear softmax probe (trained here, full batch, AdamW) predicts what
the column holds (one of 19 classes: nothing, or a colour and a shape) from the encoder's tokens, read four ways:
the first token ([CLS]), the mean of all tokens, the mean of the patch tokens of that column, and all tokens
concatenated. The tokens pass through a LayerNorm without parameters (``ln_vision`` at its initialisation, what
the Q-Former reads at the start of stage 1). Prints validation accuracy per reading and writes JSON. The point:
a Q-Former can only learn what its cross-attention can pick up from the tokens it is given.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F

from framework.engine.experiment import load_experiment
from framework.engine.experiment_data import builders
from framework.engine.machine import seed_everything
from framework.models.image_encoder import build_image_encoder


@torch.no_grad()
def tokens_and_labels(encoder: torch.nn.Module, data, batch: int = 100):
    xs, ys = [], []
    for i in range(0, len(data), batch):
        items = [data[j] for j in range(i, min(i + batch, len(data)))]
        images = torch.stack([it["image"] for it in items])
        xs.append(F.layer_norm(encoder(images).float(), (encoder.num_features,)))
        ys.append(torch.stack([it["labels"] for it in items]))
    return torch.cat(xs), torch.cat(ys)


def readings(tokens: torch.Tensor, grid: int) -> Dict[str, torch.Tensor]:
    """[N, 3 columns, features] per reading (the column's own features where the reading has them)."""
    patches = tokens[:, 1:].reshape(tokens.shape[0], grid, grid, -1)
    columns = torch.stack([patches[:, :, c * grid // 3:(c + 1) * grid // 3].mean((1, 2)) for c in range(3)], 1)
    same = lambda x: x[:, None].expand(-1, 3, -1)  # noqa: E731  one feature vector read by all three columns
    return {"cls token": same(tokens[:, 0]), "mean of all tokens": same(tokens.mean(1)),
            "mean of the column's patch tokens": columns, "all tokens": same(tokens.flatten(1))}


def probe(train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor,
          classes: int, steps: int = 300) -> float:
    """Validation accuracy of a linear probe per column (one head per column)."""
    torch.manual_seed(0)
    head = torch.nn.Linear(train_x.shape[-1], 3 * classes)
    opt = torch.optim.AdamW(head.parameters(), lr=1e-2, weight_decay=1e-3)
    for _ in range(steps):
        logits = head(train_x).view(*train_x.shape[:2], 3, classes)[:, range(3), range(3)]
        loss = F.cross_entropy(logits.flatten(0, 1), train_y.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        logits = head(val_x).view(*val_x.shape[:2], 3, classes)[:, range(3), range(3)]
    return float((logits.argmax(-1) == val_y).float().mean() * 100)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="run_scripts.probe_tokens", description=__doc__.splitlines()[0])
    p.add_argument("--cfg", required=True, help="a stage-1 config: its image encoder is probed")
    p.add_argument("--options", nargs="*", default=[])
    p.add_argument("--out", default="output/demo/probe_tokens.json")
    args = p.parse_args(argv)
    exp = load_experiment(args.cfg, args.options)
    seed_everything(exp.run.seed)
    encoder = build_image_encoder(exp.model["image_encoder"]).eval()
    attributes = load_experiment("projects/blip2/demo/vit_shapes.yaml")  # the data the ViT was pretrained on
    entry = next(iter(builders(attributes).values()))
    entry.prepare(["train", "val"])
    train_x, train_y = tokens_and_labels(encoder, entry.build("train"))
    val_x, val_y = tokens_and_labels(encoder, entry.build("val"))
    grid = round((train_x.shape[1] - 1) ** 0.5)
    classes = int(max(train_y.max(), val_y.max())) + 1
    result = {}
    for (name, tx), vx in zip(readings(train_x, grid).items(), readings(val_x, grid).values()):
        result[name] = probe(tx, train_y, vx, val_y, classes)
        print(f"{name:36s} column accuracy {result[name]:5.1f} %")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"cfg": args.cfg, "options": args.options, "val_column_accuracy": result},
                                         indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
