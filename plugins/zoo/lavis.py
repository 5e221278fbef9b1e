"""The released BLIP-2 and InstructBLIP models under LAVIS's names (``load_model_and_preprocess(name="blip2_opt",
model_type="pretrain_opt2.7b")``; InstructBLIP's ``blip2_vicuna_instruct`` / ``blip2_t5_instruct`` types
``vicuna7b``, ``vicuna13b``, ``flant5xl``, ``flant5xxl``): LAVIS checkpoints, the frozen parts they leave out, the
papers' figures.

Addresses and settings are those of LAVIS 1.0.2's ``lavis/configs/models/blip2/*.yaml``: a ``pretrained`` or
``finetuned`` checkpoint, ``eva_vit_g.pth`` / ``clip_vit_L.pth`` (the frozen encoder, not in the pretrained
checkpoints: LAVIS saves trained weights only; fine-tuned ones trained it and hold it), the LLM from the Hugging
Face hub, ``bert-base-uncased`` (the Q-Former's tokenizer; stage-1 models read text). Figures: the BLIP-2 paper
(Li et al., 2023): Table 2 (zero-shot VQA), Table 3 (fine-tuned captioning), Table 5 (retrieval). InstructBLIP's
addresses are those of LAVIS's repository's ``blip2_instruct_*.yaml`` (its "trimmed" checkpoints: no ViT, no LLM);
its figures are the InstructBLIP paper's (Dai et al., 2023) Table 1.
"""
from __future__ import annotations

from typing import Optional, Tuple

from framework.core.registry import ZOO
from framework.interop.released import Source, ZooModel

STORAGE = "https://storage.googleapis.com/sfr-vision-language-research/LAVIS/models/BLIP2"
EVA = Source("vision", "EVA-CLIP ViT-g/14 as LAVIS publishes it (eva_vit_g.pth)", f"{STORAGE}/eva_vit_g.pth",
             "model.image_encoder.checkpoint")
CLIP_L = Source("vision", "CLIP ViT-L/14 as LAVIS publishes it (clip_vit_L.pth)", f"{STORAGE}/clip_vit_L.pth",
                "model.image_encoder.checkpoint")
BERT = Source("bert", "bert-base-uncased, a Hugging Face folder (the Q-Former's tokenizer)",
              "https://huggingface.co/google-bert/bert-base-uncased", "model.qformer.bert")
LLMS = {"opt2.7b": "facebook/opt-2.7b", "opt6.7b": "facebook/opt-6.7b", "flant5xl": "google/flan-t5-xl",
        "flant5xxl": "google/flan-t5-xxl", "vicuna7b": "lmsys/vicuna-7b-v1.1", "vicuna13b": "lmsys/vicuna-13b-v1.1"}
INSTRUCT_STORAGE = "https://storage.googleapis.com/sfr-vision-language-research/LAVIS/models/InstructBLIP"
# InstructBLIP: LAVIS's type -> (its trimmed checkpoint, the eval configs' LLM)
INSTRUCT = {"vicuna7b": ("instruct_blip_vicuna7b_trimmed.pth", "vicuna7b"),
            "vicuna13b": ("instruct_blip_vicuna13b_trimmed.pth", "vicuna7b"),
            "flant5xl": ("instruct_blip_flanxl_trimmed.pth", "flant5xl"),
            "flant5xxl": ("instruct_blip_flanxxl_trimmed.pth", "flant5xl")}
EVALUATIONS = {"opt": "projects/blip2/eval/vqav2_zeroshot_opt2.7b.yaml",
               "flant5": "projects/blip2/eval/vqav2_zeroshot_flant5xl.yaml"}

# the paper's figures per model, shared with the transformers names of the same weights
PAPER = {
    "pretrain": "stage 1, ViT-g: the Q-Former every ViT-g model of Tables 2-5 starts from (no table of its own)",
    "pretrain_vitL": "stage 1, ViT-L: the Q-Former of the ViT-L rows of Table 2 (no table of its own)",
    "coco": "Table 5, COCO 5K test: image->text R@1 85.4, text->image R@1 68.3; Flickr30K zero-shot 97.6 / 89.7",
    "pretrain_opt2.7b": "Table 2, zero-shot: VQAv2 test-dev 52.3, OK-VQA 31.7, GQA 34.6",
    "pretrain_opt6.7b": "Table 2, zero-shot: VQAv2 test-dev 52.6, OK-VQA 36.4, GQA 36.4",
    "pretrain_flant5xl": "Table 2, zero-shot: VQAv2 test-dev 63.0, OK-VQA 40.7, GQA 44.2",
    "pretrain_flant5xl_vitL": "Table 2, zero-shot (ViT-L): VQAv2 test-dev 62.3, OK-VQA 39.4, GQA 44.4",
    "pretrain_flant5xxl": "Table 2, zero-shot: VQAv2 test-dev 65.0, OK-VQA 45.9, GQA 44.7",
    "caption_coco_opt2.7b": "Table 3, COCO Karpathy test: BLEU-4 43.7, CIDEr 145.8 (NoCaps val CIDEr 119.7)",
    "caption_coco_opt6.7b": "Table 3, COCO Karpathy test: BLEU-4 43.5, CIDEr 145.2 (NoCaps val CIDEr 121.0)",
    "caption_coco_flant5xl": "Table 3, COCO Karpathy test: BLEU-4 42.4, CIDEr 144.5 (NoCaps val CIDEr 121.6)",
    **{name: f"InstructBLIP paper, Table 1: zero-shot on its 13 held-out sets ({name}); eval.yaml: GQA test-dev "
             f"(eval/instruct_nocaps_zeroshot_* for NoCaps val)" for name in ("vicuna7b", "vicuna13b", "flant5xl",
                                                                             "flant5xxl")},
}
HF_NAMES = {"pretrain": "Salesforce/blip2-itm-vit-g", "coco": "Salesforce/blip2-itm-vit-g-coco",
            "pretrain_opt2.7b": "Salesforce/blip2-opt-2.7b", "pretrain_opt6.7b": "Salesforce/blip2-opt-6.7b",
            "pretrain_flant5xl": "Salesforce/blip2-flan-t5-xl", "pretrain_flant5xxl": "Salesforce/blip2-flan-t5-xxl",
            "caption_coco_opt2.7b": "Salesforce/blip2-opt-2.7b-coco",
            "caption_coco_opt6.7b": "Salesforce/blip2-opt-6.7b-coco",
            "caption_coco_flant5xl": "Salesforce/blip2-flan-t5-xl-coco",
            "vicuna7b": "Salesforce/instructblip-vicuna-7b", "vicuna13b": "Salesforce/instructblip-vicuna-13b",
            "flant5xl": "Salesforce/instructblip-flan-t5-xl", "flant5xxl": "Salesforce/instructblip-flan-t5-xxl"}


def _entry(name: str, summary: str, file: str, vision: Optional[Source], extra: Tuple[Source, ...],
           settings: Tuple[str, ...], evaluation: Optional[str], storage: str = STORAGE) -> None:
    checkpoint = Source("checkpoint", f"the LAVIS checkpoint {file}", f"{storage}/{file}")
    ZOO.register(name)(ZooModel(summary, "lavis", (checkpoint,) + ((vision,) if vision else ()) + extra,
                                PAPER[name], settings, evaluation, tuple(n for n in [HF_NAMES.get(name)] if n)))


def _llm(key: str) -> Source:
    return Source("llm", f"{LLMS[key]}, a Hugging Face folder", f"https://huggingface.co/{LLMS[key]}", "model.llm.path")


_entry("pretrain", "stage-1 Q-Former on EVA ViT-g (blip2 / blip2_feature_extractor)", "blip2_pretrained.pth",
       EVA, (BERT,), (), None)
# the converter tells CLIP ViT-L from EVA ViT-g by the width ln_vision reads (the ViT is not in the file)
_entry("pretrain_vitL", "stage-1 Q-Former on CLIP ViT-L", "blip2_pretrained_vitL.pth", CLIP_L, (BERT,), (), None)
# the fine-tuned checkpoint trained the ViT (364 px) and holds it
_entry("coco", "stage-1 model fine-tuned for COCO retrieval (blip2_image_text_matching)", "blip2_finetune_coco.pth",
       None, (BERT,), ("model.image_encoder.precision=fp32",), "projects/blip2/eval/ret_coco.yaml")
for _llm_key, _adapter in [("opt2.7b", "opt"), ("opt6.7b", "opt"), ("flant5xl", "flant5"), ("flant5xxl", "flant5")]:
    _entry(f"pretrain_{_llm_key}", f"stage 2, EVA ViT-g + {LLMS[_llm_key]} (zero-shot captioning and VQA)",
           f"blip2_pretrained_{_llm_key}.pth", EVA, (_llm(_llm_key),), (), EVALUATIONS[_adapter])
_entry("pretrain_flant5xl_vitL", f"stage 2, CLIP ViT-L + {LLMS['flant5xl']}", "blip2_pretrained_flant5xl_vitL.pth",
       CLIP_L, (_llm("flant5xl"),), (), EVALUATIONS["flant5"])
for _llm_key, _adapter in [("opt2.7b", "opt"), ("opt6.7b", "opt"), ("flant5xl", "flant5")]:
    # LAVIS's caption models: the ViT trained at 364 px (in the checkpoint), fp32, prompt "a photo of"
    _entry(f"caption_coco_{_llm_key}", f"stage 2 + ViT fine-tuned on COCO captions, {LLMS[_llm_key]}",
           f"blip2_caption_{_llm_key}.pth", None, (_llm(_llm_key),),
           ("model.image_encoder.precision=fp32", "model.prompt=a photo of"),
           f"projects/blip2/eval/caption_coco_{'opt2.7b' if _adapter == 'opt' else 'flant5xl'}.yaml")
for _type, (_file, _eval) in INSTRUCT.items():
    # InstructBLIP: trimmed checkpoints (no ViT, no LLM); the Q-Former reads the instruction (its tokenizer: BERT's)
    _arch = "blip2_vicuna_instruct" if "vicuna" in _type else "blip2_t5_instruct"
    _entry(_type, f"InstructBLIP, EVA ViT-g + {LLMS[_type]} ({_arch})", _file, EVA, (BERT, _llm(_type)), (),
           f"projects/blip2/eval/instruct_gqa_zeroshot_{_eval}.yaml", storage=INSTRUCT_STORAGE)
