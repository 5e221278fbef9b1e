"""``python -m framework.convert``: bring weights people already have into this framework, and take ours out.

    python -m framework.convert --from lavis --to ours --src blip2_pretrained.pth --out converted/
    python -m framework.convert --from hf --to ours --src blip2-opt-2.7b/ --out converted/
    python -m framework.convert --from ours --to hf --src experiment.yaml --out blip2-hf/

Each foreign format is a registered part (``python -m framework.parts format`` lists them; the built-in ones
are in ``plugins/formats/``). Converting into ours writes the weights into ``--out`` and ``model.yaml``, a
``model:`` section to inherit (``_base_: converted/model.yaml``) that builds the network the weights are for;
``--options model.llm.path=DIR ...`` sets what the source does not hold (a LAVIS file has no LLM). Before it
reports success the converter builds that section on the meta device and checks every written file fits it by
name and shape. Every source key is placed or reported with the reason it is left out.

Converting out of ours reads an experiment YAML (``model.checkpoint`` loaded) and writes the format's files.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional

from framework.commands.cli import add_options, into_new_folder
from framework.core.errors import ConfigError
from framework.core.registry import FORMATS
from framework.interop.formats import read_into_ours, write_from_ours


def main(argv: Optional[List[str]] = None) -> int:
    formats = FORMATS.names()
    p = argparse.ArgumentParser(prog="framework.convert", description=__doc__.splitlines()[0])
    p.add_argument("--from", dest="source", choices=formats + ["ours"], required=True)
    p.add_argument("--to", dest="target", choices=formats + ["ours"], required=True)
    p.add_argument("--src", required=True, help="the folder or file to read; --from ours: an experiment YAML whose "
                                                "model (with model.checkpoint) is exported. "
                   + "; ".join(f"--from {n}: {FORMATS.get(n).reads}" for n in formats if FORMATS.get(n).reads))
    p.add_argument("--out", required=True, help="the folder to write")
    add_options(p, "of the written model.yaml (--to ours) or of the experiment (--from ours)")
    p.add_argument("--overwrite", action="store_true", help="write into an --out folder that is not empty")
    args = p.parse_args(argv)

    def convert() -> None:
        if (args.source == "ours") == (args.target == "ours"):
            raise ConfigError(f"--from {args.source} --to {args.target}: one side must be ours (formats: "
                              f"{', '.join(formats)})")
        if args.target != "ours" and not FORMATS.get(args.target).writes:
            raise ConfigError(f"--to {args.target}: this format is read only")
        if args.target == "ours":
            read_into_ours(args.source, Path(args.src), Path(args.out), args.options)
        else:
            write_from_ours(args.target, args.src, Path(args.out), args.options)

    return into_new_folder(Path(args.out), args.overwrite, convert)


if __name__ == "__main__":
    sys.exit(main())
