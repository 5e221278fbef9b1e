"""The released BLIP-2 and InstructBLIP models under transformers' names (``Salesforce/blip2-opt-2.7b``,
``Salesforce/instructblip-vicuna-7b`` ...): one Hugging Face
folder each (``huggingface-cli download NAME --local-dir DIR``), converted by the ``hf`` format. They are
LAVIS's weights converted by transformers, so they reproduce the same figures (:mod:`plugins.zoo.lavis`).
transformers runs them with no prompt, as they are prepared here."""
from __future__ import annotations

from framework.core.registry import ZOO
from framework.interop.released import Source, ZooModel
from plugins.zoo.lavis import EVALUATIONS, HF_NAMES, INSTRUCT, PAPER

for _lavis_name, _hf_name in HF_NAMES.items():
    _folder = Source("model", f"the Hugging Face folder of {_hf_name}", f"https://huggingface.co/{_hf_name}")
    if _lavis_name in INSTRUCT:  # InstructBLIP
        _evaluation = f"projects/blip2/eval/instruct_gqa_zeroshot_{INSTRUCT[_lavis_name][1]}.yaml"
    elif _lavis_name in ("pretrain", "coco"):
        _evaluation = "projects/blip2/eval/ret_coco.yaml" if _lavis_name == "coco" else None
    elif _lavis_name.startswith("caption_coco_"):
        _evaluation = f"projects/blip2/eval/caption_coco_{'opt2.7b' if 'opt' in _lavis_name else 'flant5xl'}.yaml"
    else:
        _evaluation = EVALUATIONS["opt" if "opt" in _lavis_name else "flant5"]
    ZOO.register(_hf_name)(ZooModel(f"transformers' {_hf_name} (LAVIS: {_lavis_name})", "hf", (_folder,),
                                    PAPER[_lavis_name], (), _evaluation, (_lavis_name,)))
