"""``blip2_generative``: stage-2 BLIP-2. Frozen image encoder -> Q-Former -> linear projection -> frozen LLM.

The projected query outputs are the LLM's soft visual prompt. With ``qformer_text_input: true`` the prompt
text (an instruction, a VQA question) also goes through the Q-Former (bidirectional ``itm`` mask), so the
queries extract what the text asks about — LAVIS cannot, once it deletes the Q-Former's text path.

Whether the Q-Former starts from a stage-1 checkpoint (``stage1_checkpoint``) or from the BERT initialisation
is this one key: the paper's stage-1 removal ablation.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from framework.core import checkpoint
from framework.core.errors import CheckpointError, ConfigError
from framework.core.logs import logger
from framework.core.registry import MODELS, build
from framework.core.schema import Part, Range
from framework.data.builder import DataFile
from framework.models.blip2 import Blip2Base, QFormerArgs
from framework.models.build import building_on_meta
from framework.models.llm import EncoderDecoderAdapter

STAGE1_PREFIXES = ("qformer.", "ln_vision.")


def split_for_prefix_lm(prompts: List[str], texts: List[str]) -> Tuple[List[str], List[str]]:
    """Each text split after a random number of its words (at least one on each side; a one-word text is left
    whole): (prompt + prefix, suffix). Drawn from torch's generator, so a seeded run repeats."""
    out_prompts, out_targets = [], []
    for prompt, text in zip(prompts, texts):
        words = text.split()
        k = int(torch.randint(1, len(words), ())) if len(words) > 1 else 0
        out_prompts.append(" ".join(w for w in [prompt, *words[:k]] if w))
        out_targets.append(" ".join(words[k:]))
    return out_prompts, out_targets


@MODELS.register("blip2_generative")
class Blip2Generative(Blip2Base):
    """Args:
        image_encoder: a registered image encoder (frozen by its own ``freeze`` key).
        qformer: sizes and BERT initialisation (:class:`framework.models.blip2.QFormerArgs`).
        llm: a registered LLM adapter (``opt``, ``flant5``, ``hf_causal_lm``) with its local folder.
        stage1_checkpoint: one of our stage-1 checkpoints (``blip2_qformer``): the Q-Former and ``ln_vision``
            start from it. null: from the BERT initialisation (the stage-1 removal ablation).
        qformer_text_input: feed the prompt text through the Q-Former with the queries.
        prompt: text after the visual prompt when the caller gives none (``generate`` without prompts,
            ``framework.predict``); the tasks pass their own (``task.prompt``).
        max_txt_len: Q-Former text tokens kept.
        prefix_lm: prefix language modelling (the paper, section 3.3, for FlanT5): each training text is split
            at a random word; the prefix follows the prompt into the LLM's input, the suffix is the target.
            false (LAVIS 1.0.2, whose Blip2T5 takes the whole text as the target): no split.
        num_few_shot_examples, few_shot_prob: LAVIS's ``Blip2T5Instruct`` few-shot mixing, off by default (0, 0):
            with probability ``few_shot_prob`` a training batch draws k of 1..``num_few_shot_examples`` (uniformly)
            and each sample's first k examples (``few_shot_samples``: a records file's ``examples``), each
            [visual prompt, instruction], go before the sample in the LLM's encoder; otherwise none. An
            encoder-decoder LLM only, as in LAVIS; training only (LAVIS's generate never adds them).
    """

    def __init__(self, image_encoder: Part("image_encoder"), llm: Part("llm"), qformer: QFormerArgs = QFormerArgs(),
                 stage1_checkpoint: Optional[str] = None, qformer_text_input: bool = False, prompt: str = "",
                 max_txt_len: Annotated[int, Range(1)] = 32, prefix_lm: bool = False,
                 num_few_shot_examples: Annotated[int, Range(0)] = 0,
                 few_shot_prob: Annotated[float, Range(0, 1)] = 0.0) -> None:
        super().__init__(image_encoder, qformer, max_txt_len, reads_text=qformer_text_input)
        self.llm = build("llm", llm)
        self.llm_proj = nn.Linear(qformer.hidden_size, self.llm.hidden_size)
        self.qformer_text_input, self.prompt, self.prefix_lm = qformer_text_input, prompt, prefix_lm
        self.removed = tuple("qformer." + k for k in self.qformer.remove_text_path(keep_text_input=qformer_text_input))
        if few_shot_prob > 0 and (num_few_shot_examples < 1 or not isinstance(self.llm, EncoderDecoderAdapter)):
            raise ConfigError(f"model.few_shot_prob={few_shot_prob} needs model.num_few_shot_examples >= 1 (it is "
                              f"{num_few_shot_examples}) and an encoder-decoder LLM such as flant5 (LAVIS's "
                              f"Blip2T5Instruct; model.llm is {type(self.llm).__name__})")
        self.num_few_shot_examples, self.few_shot_prob = num_few_shot_examples, few_shot_prob
        if stage1_checkpoint:
            self.weight_files = self.weight_files + [DataFile(Path(stage1_checkpoint), "stage-1 checkpoint")]
            if not building_on_meta():
                self._load_stage1(stage1_checkpoint)

    def _load_stage1(self, path: str) -> None:
        weights = checkpoint.load(path)["model"]
        picked = {k: v for k, v in weights.items() if k.startswith(STAGE1_PREFIXES)}
        if not picked:
            raise ConfigError(f"model.stage1_checkpoint: {path} holds no Q-Former weights (no qformer.* keys); "
                              f"give a checkpoint of a blip2_qformer run")
        own = self.state_dict()
        wrong = [k for k, v in picked.items() if k in own and own[k].shape != v.shape]
        wrong += [k for k in own if k.startswith(STAGE1_PREFIXES) and k not in picked]
        unknown = [k for k in picked if k not in own and not k.startswith(self.removed)]
        if wrong or unknown:
            raise CheckpointError(f"model.stage1_checkpoint: {path} does not fit this Q-Former: "
                                             f"{checkpoint.summarize_keys(wrong + unknown)}")
        used = {k: v for k, v in picked.items() if k in own}
        self.load_state_dict(used, strict=False)
        logger.info("Q-Former and ln_vision from stage-1 checkpoint %s (%d tensors; %d of the text path, unused in "
                    "stage 2, left out)", path, len(used), len(picked) - len(used))

    def visual_prompt(self, images: torch.Tensor, prompts: List[str]) -> torch.Tensor:
        """[B, Q, llm hidden] soft visual prompt; for video ([B, T, 3, H, W]) each frame goes through the encoder
        and the Q-Former and the frames' queries are concatenated: [B, T x Q, llm hidden]."""
        if images.dim() == 5:
            b, t = images.shape[:2]
            frames = self.visual_prompt(images.flatten(0, 1), [p for p in prompts for _ in range(t)])
            return frames.reshape(b, t * frames.shape[1], frames.shape[2])
        image_kv = self.qformer.project_image(self.encode_image(images))
        n_query = self.qformer.num_query_tokens
        if self.qformer_text_input:
            ids, mask = self.tokenize(prompts, keep="end")  # LAVIS's InstructBLIP cuts an instruction's start
            hidden = self.qformer("itm", image_kv=image_kv, input_ids=ids, text_mask=mask).hidden
        else:
            hidden = self.qformer("itc", image_kv=image_kv).hidden
        return self.llm_proj(hidden[:, :n_query])

    def _prompts(self, batch: Dict[str, Any]) -> List[str]:
        return batch.get("prompt") or [self.prompt] * len(batch["image"])

    def forward(self, batch: Dict[str, Any]) -> Dict[str, torch.Tensor]:
        """LM loss of the sample's ``text_input`` (the caption) after [visual prompt, ``prompt``] (and, with
        few-shot mixing, the drawn examples before them)."""
        prompts, targets = self._prompts(batch), list(batch["text_input"])
        if self.prefix_lm:
            prompts, targets = split_for_prefix_lm(prompts, targets)
        context = None
        if self.few_shot_prob > 0 and "few_shot_samples" in batch:
            context = self.few_shot_context(batch["few_shot_samples"], self.draw_few_shot(), batch["image"].device)
        prefix = self.visual_prompt(batch["image"], prompts)
        loss = self.llm.lm_loss(prefix, prompts, targets, **({"context": context} if context is not None else {}))
        return {"loss": loss, "loss_lm": loss}

    def draw_few_shot(self) -> int:
        """How many examples this batch puts before each sample: 0 with probability 1 - ``few_shot_prob``, else
        1..``num_few_shot_examples`` alike (LAVIS's weights), drawn from torch's generator so a seeded run repeats."""
        n = self.num_few_shot_examples
        weights = torch.tensor([1 - self.few_shot_prob] + [self.few_shot_prob / n] * n, dtype=torch.float64)
        return int(torch.multinomial(weights, 1))

    def few_shot_context(self, examples: List[Dict[str, Any]], k: int,
                         device: torch.device) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
        """The encoder inputs of each sample's first ``k`` examples side by side, [B, k x L, hidden], and their mask
        (LAVIS's ``prepare_few_shot_embeds``: every example's [visual prompt, instruction] padded to the longest
        of the batch); None for k = 0. ``examples``: per sample ``{"image": [K, 3, H, W], "text_input": [K]}``."""
        if k == 0:
            return None
        short = [i for i, e in enumerate(examples) if len(e["text_input"]) < k]
        if short:
            raise ConfigError(f"model.num_few_shot_examples={self.num_few_shot_examples}: sample {short[0]} of the "
                              f"batch has {len(examples[short[0]]['text_input'])} examples and {k} were drawn; give "
                              f"every record at least num_few_shot_examples examples")
        images = torch.stack([e["image"][j] for e in examples for j in range(k)]).to(device)
        texts = [e["text_input"][j] for e in examples for j in range(k)]
        return self.llm.few_shot_context(self.visual_prompt(images, texts), texts, k)

    @torch.no_grad()
    def rank_answers(self, images: torch.Tensor, prompts: List[str],
                     candidates: Union[Sequence[str], Sequence[Sequence[str]]], n_segments: int = 1) -> List[List[int]]:
        """Per image, the indices of ``candidates`` from the most to the least likely answer after the visual prompt
        and its prompt (LAVIS's InstructBLIP ``predict_class``; ``n_segments``: the candidates go through the LLM in
        that many batches). ``candidates``: one list for every image, or a list per image."""
        if candidates and not isinstance(candidates[0], str):  # a list per image: one image at a time, as LAVIS
            return [self.rank_answers(images[i:i + 1], prompts[i:i + 1], list(c), n_segments)[0]
                    for i, c in enumerate(candidates)]
        losses = self.llm.candidate_losses(self.visual_prompt(images, prompts), prompts, list(candidates), n_segments)
        return losses.argsort(dim=-1).tolist()

    @torch.no_grad()
    def generate(self, images: torch.Tensor, prompts: Optional[List[str]] = None, **decoding: Any) -> List[str]:
        """Texts for each image (decoding: see :meth:`framework.models.llm.LLMAdapter.generate`)."""
        prompts = prompts or [self.prompt] * len(images)
        return self.llm.generate(self.visual_prompt(images, prompts), prompts, **decoding)
