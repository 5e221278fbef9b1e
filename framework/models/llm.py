"""LLM adapters: a frozen language model that reads a soft visual prompt.

Contract (what the generative BLIP-2 model relies on): ``hidden_size``; ``lm_loss(prefix, prompts, targets)``,
the language-modelling loss of ``targets`` given the prefix embeddings ``[B, P, hidden_size]`` (the projected
query outputs) and the text ``prompts``; ``generate(prefix, prompts, **decoding)``, the decoded texts. The
adapter owns its tokenizer and its padding side, and hides decoder-only against encoder-decoder:

* decoder-only: the input is [prefix, prompt, target]; only target positions count in the loss; generation
  continues after the prompt (padding on the left, so every sequence ends where generation starts);
* encoder-decoder: [prefix, prompt] goes into the encoder, the target is the decoder's.

Weights come from a local Hugging Face folder (``path``) through transformers' own classes: nothing is
downloaded. Frozen by default, stored in ``precision``; ``lora`` adds trainable low-rank adapters to it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Dict, List, Literal, Optional, Tuple

import torch
from torch import nn

from framework.core.errors import ConfigError
from framework.core.logs import logger
from framework.core.schema import Range
from framework.data.builder import DataFile
from framework.models.build import building_on_meta
from framework.models.frozen import FreezablePart
from framework.models.image_encoder import DTYPES

# ``model.llm.precision``: the dtype the frozen weights are stored in; int8 and nf4 quantise the LLM's linear layers
# through bitsandbytes (CUDA only), computing in fp16 and bf16
LLMPrecision = Literal["fp32", "fp16", "bf16", "int8", "nf4"]
QUANTISED_BYTES = {"int8": 1.0, "nf4": 0.5 + 4 / 64}  # per weight; nf4 keeps an fp32 scale per block of 64
COMPUTE_DTYPES = {**DTYPES, "int8": torch.float16, "nf4": torch.bfloat16}


def _require_quantisation(precision: str, freeze: bool) -> None:
    """int8 / nf4 need a frozen LLM, a CUDA GPU and bitsandbytes: said before any weight is read."""
    import importlib.util

    if not freeze:
        raise ConfigError(f"model.llm.precision: {precision} quantises a frozen LLM; a trained one (freeze: false) "
                          f"needs fp16, bf16 or fp32 (to train a quantised LLM, add model.llm.lora: QLoRA)")
    missing = [what for what, ok in (("a CUDA GPU (torch.cuda.is_available() is False here)",
                                      torch.cuda.is_available()),
                                     ("the bitsandbytes package (pip install bitsandbytes)",
                                      importlib.util.find_spec("bitsandbytes") is not None)) if not ok]
    if missing:
        raise ConfigError(f"model.llm.precision: {precision} quantises the LLM through bitsandbytes, which needs "
                          f"{' and '.join(missing)}; use fp16 or bf16 (fp32 on a CPU), or run where both are "
                          f"(--dry-run estimates its memory anywhere)")


@dataclass
class LoraArgs:
    """``model.llm.lora``: low-rank adapters on the LLM's linear layers (LoRA, Hu et al. 2021, through peft). The
    LLM's own weights stay frozen; beside each target layer ``W`` an ``r``-rank pair trains, ``W x + (alpha / r)
    B A x``, with ``A`` drawn at random and ``B`` zero, so the model starts exactly as the frozen one. Only the LLM
    gets adapters, never the image encoder or the Q-Former (peft's default targets would also hit a ViT's ``qkv``).

    r: the rank. alpha: the scale's numerator (the scale is alpha / r). dropout: on the adapters' input while the
    LLM is in training mode (with ``frozen_dropout: false`` it never is). target_modules: the last names of the
    LLM's linear layers that get adapters; null: the adapter's family default (OPT and LLaMA ``q_proj`` and
    ``v_proj``, T5 ``q`` and ``v``, as in the LoRA paper: the query and value projections).
    """
    r: Annotated[int, Range(1)] = 8
    alpha: Annotated[float, Range(0)] = 16.0
    dropout: Annotated[float, Range(0, 1)] = 0.05
    target_modules: Optional[List[str]] = None


class LLMAdapter(FreezablePart):
    """Base class. Args:
        path: a local Hugging Face model folder (config.json, tokenizer files, weights).
        arch: the architecture the folder must hold, by name (e.g. ``opt-2.7b``; the plugin's ``archs``). Its
            sizes are checked against the folder's config.json, and ``--dry-run`` builds it without the folder.
            null: whatever the folder holds.
        precision: storage dtype of the frozen weights (fp16 or bf16 on GPU; fp32 for CPU tests), or ``int8`` /
            ``nf4``: the linear layers quantised on load by bitsandbytes (LLM.int8(); QLoRA's 4-bit NormalFloat),
            which needs a CUDA GPU and ``pip install bitsandbytes``; without them the run stops before reading the
            weights. ``--dry-run`` costs them anywhere (1 and about 0.56 bytes per weight).
        freeze: no gradients (as BLIP-2).
        frozen_dropout: a frozen LLM still follows the model's training mode, so its dropout is active while the
            model trains (LAVIS: it never puts the LLM in eval mode). false: a frozen LLM is always in eval mode
            (deterministic features for the Q-Former to fit).
        max_txt_len: tokens kept of each prompt and of each target.
        special_tokens: tokens that replace the tokenizer's own (keys ``pad_token``, ``bos_token``, ``eos_token``,
            ``unk_token``): the start, end and unknown tokens must be tokens the model has rows for; a pad token
            the tokenizer lacks is added, and the model gets rows for it, each the mean of the existing rows (no
            random draw). Unset: the tokenizer's own, and without a pad token the end of text pads.
        lora: trainable low-rank adapters on the frozen LLM (:class:`LoraArgs`); null: none (BLIP-2).
    """

    LORA_TARGETS: Tuple[str, ...] = ()  # the family's default lora.target_modules; empty: the config must name them
    SPECIAL_TOKENS = ("pad_token", "bos_token", "eos_token", "unk_token")
    CLEAN_UP_SPACES = True  # decoding: " ." -> "." and the like, as transformers 4.x did by default under LAVIS

    model_type: Tuple[str, ...] = ()  # accepted config.json model_type values; empty: any
    archs: Dict[str, Dict[str, Any]] = {}  # named architectures: config.json fields, model_type included

    def __init__(self, path: str, arch: Optional[str] = None, precision: LLMPrecision = "fp16", freeze: bool = True,
                 frozen_dropout: bool = True, max_txt_len: int = 32,
                 special_tokens: Optional[Dict[str, str]] = None, lora: Optional[LoraArgs] = None) -> None:
        super().__init__()
        folder = Path(path).expanduser()
        self.weight_files = [DataFile(folder, "LLM folder (config, tokenizer, weights)")]
        self.precision = precision
        on_meta = building_on_meta()
        if precision in QUANTISED_BYTES and not on_meta:
            _require_quantisation(precision, freeze)
        fields = self._architecture(folder, arch, on_meta)
        if on_meta:  # --dry-run: the architecture, no files read
            self.tokenizer, self.model = None, self._skeleton(fields).to(COMPUTE_DTYPES[precision])
        else:
            self.tokenizer = self._tokenizer(folder, fields, dict(special_tokens or {}))
            self.model = self.load(str(folder), COMPUTE_DTYPES[precision])
            self._fit_vocabulary()
        self.max_txt_len, self.frozen, self.frozen_follows_training = max_txt_len, freeze, frozen_dropout
        if freeze:
            self.model.requires_grad_(False)
            self.model.eval()
        self.lora = lora
        if lora is not None:
            self._add_lora(lora)

    recompute_layers = True  # FSDP's activation checkpointing: the LLM's activations dominate stage 2

    def fsdp_layers(self) -> List[nn.Module]:
        """The decoder layers (T5: blocks), by the classes transformers itself never splits across devices
        (the model's ``_no_split_modules``: OPTDecoderLayer, T5Block, LlamaDecoderLayer)."""
        names = set(getattr(self.model, "_no_split_modules", None) or ())
        return [m for m in self.model.modules() if type(m).__name__ in names]

    def _add_lora(self, lora: LoraArgs) -> None:
        from peft import LoraConfig, inject_adapter_in_model

        if not self.frozen:
            raise ConfigError("model.llm.lora: the LLM is trained whole (freeze: false); adapters are for a frozen "
                              "LLM: set model.llm.freeze: true, or remove lora")
        targets = list(lora.target_modules or self.LORA_TARGETS)
        if not targets:
            raise ConfigError(f"model.llm.lora: the {type(self).__name__} adapter has no default target modules; set "
                              f"model.llm.lora.target_modules to the names of the LLM's attention projections (e.g. "
                              f"[q_proj, v_proj])")
        linear = {n.rsplit(".", 1)[-1] for n, m in self.model.named_modules() if isinstance(m, nn.Linear)}
        unknown = [t for t in targets if t not in linear]
        if unknown:
            raise ConfigError(f"model.llm.lora.target_modules: {unknown} name no linear layer of the LLM; its linear "
                              f"layers are {sorted(linear)}")
        config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets)
        self.model = inject_adapter_in_model(config, self.model)
        added = sum(p.numel() for n, p in self.model.named_parameters() if "lora_" in n)
        logger.info("LLM: LoRA adapters (rank %d, alpha %g) on %s: %s trainable parameters", lora.r, lora.alpha,
                    ", ".join(targets), f"{added:,}")

    def merge_lora(self) -> None:
        """Fold the adapters into the LLM's weights (``W + (alpha / r) B A``) and remove them, leaving a plain
        transformers model of the same class: what an export writes."""
        from peft.tuners.lora import LoraLayer

        for name, module in list(self.model.named_modules()):
            if isinstance(module, LoraLayer):
                module.merge()
                parent, _, child = name.rpartition(".")
                setattr(self.model.get_submodule(parent), child, module.get_base_layer())
        self.lora = None

    def _architecture(self, folder: Path, arch: Optional[str], on_meta: bool) -> Dict[str, Any]:
        """The config.json fields of the model to build, checked against ``arch`` and ``model_type``."""
        if arch is not None and arch not in self.archs:
            known = ", ".join(sorted(self.archs)) or "none: leave arch out"
            raise ConfigError(f"model.llm.arch: unknown architecture {arch!r} for {type(self).__name__}; "
                              f"known: {known}")
        if not (folder / "config.json").is_file():
            if on_meta and arch is not None:
                return dict(self.archs[arch])
            hint = (f"; for --dry-run without the folder set model.llm.arch (one of {', '.join(sorted(self.archs))})"
                    if on_meta and self.archs else "")
            raise ConfigError(f"model.llm.path: {folder} is not a Hugging Face model folder (no config.json); put the "
                              f"model's files there (config.json, tokenizer files, weights){hint}")
        fields = json.loads((folder / "config.json").read_text())
        supported = self.supported_model_types()
        if supported and fields.get("model_type") not in supported:
            names = ", ".join(sorted(supported)) if len(supported) <= 12 else \
                f"any of {len(supported)} model types, e.g. {', '.join(self._known_families(supported))}"
            raise ConfigError(f"model.llm.path: {folder} holds a {fields.get('model_type')!r} model, which "
                              f"{type(self).__name__} does not read; it reads: {names}" + self._others())
        if arch is not None:
            wrong = [f"{k}: {fields.get(k)!r} (arch {arch}: {v!r})" for k, v in self.archs[arch].items()
                     if fields.get(k) != v]
            if wrong:
                raise ConfigError(f"model.llm.path: {folder} does not hold a {arch}: " + "; ".join(wrong)
                                  + ". Point path at that model, or set model.llm.arch to what the folder holds.")
        return fields

    def _tokenizer(self, folder: Path, fields: Dict[str, Any], special: Dict[str, str]) -> Any:
        """The folder's tokenizer under ``special_tokens``. The start, end and unknown tokens are given as it
        loads, so the texts it makes start with the start token named (a fast tokenizer told afterwards keeps
        starting them with its old one)."""
        from transformers import AutoTokenizer

        wrong = sorted(set(special) - set(self.SPECIAL_TOKENS))
        if wrong:
            raise ConfigError(f"model.llm.special_tokens: unknown key {wrong[0]!r}; the keys: "
                              f"{', '.join(self.SPECIAL_TOKENS)}")
        given = {k: v for k, v in special.items() if k != "pad_token"}
        tokenizer = AutoTokenizer.from_pretrained(str(folder), **given)
        vocab, rows = tokenizer.get_vocab(), fields.get("vocab_size")
        for key, text in given.items():
            if text not in vocab or (rows is not None and vocab[text] >= rows):
                raise ConfigError(f"model.llm.special_tokens.{key}: {text!r} is no token the model in {folder} has "
                                  f"learnt (not among its {rows} token rows), so it would never "
                                  f"{'end a text' if key == 'eos_token' else 'mean what it should'}; name one of "
                                  f"its tokens, or leave {key} out for the tokenizer's own")
        pad = special.get("pad_token")
        if pad is not None and tokenizer.pad_token != pad:
            tokenizer.add_special_tokens({"pad_token": pad})
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        return tokenizer

    def _fit_vocabulary(self) -> None:
        """Rows for the tokens the contract added (a pad token): each the mean of the existing rows, so loading
        draws no random number."""
        rows = self.model.get_input_embeddings().weight.shape[0]
        if len(self.tokenizer) <= rows:
            return
        self.model.resize_token_embeddings(len(self.tokenizer), mean_resizing=False)
        with torch.no_grad():
            for table in {id(e): e for e in (self.model.get_input_embeddings(),
                                             self.model.get_output_embeddings()) if e is not None}.values():
                table.weight[rows:] = table.weight[:rows].mean(0)
        logger.info("LLM: %d token rows added for %s (the mean of the others)", len(self.tokenizer) - rows,
                    ", ".join(self.tokenizer.convert_ids_to_tokens(list(range(rows, len(self.tokenizer))))))

    def supported_model_types(self) -> Tuple[str, ...]:
        """config.json ``model_type`` values this adapter reads; empty: any."""
        return self.model_type

    @staticmethod
    def _known_families(supported: Tuple[str, ...]) -> List[str]:
        """The model types among ``supported`` that registered adapters name: families a reader recognises."""
        from framework.core.registry import LLMS

        return sorted({t for name in LLMS.names() for t in LLMS.get(name).model_type if t in supported})

    def _others(self) -> str:
        from framework.core.registry import LLMS

        return f" (registered LLM adapters: {', '.join(LLMS.names())}; pick the one for this model in model.llm.name)"

    def _skeleton(self, fields: Dict[str, Any]) -> nn.Module:
        """The model built from its config alone (on the meta device in a dry run; the caller casts it to the
        configured precision, as loading does)."""
        from transformers import AutoConfig

        config = AutoConfig.for_model(**fields)
        model = self.auto_class().from_config(config)
        if fields.get("tie_word_embeddings") is False:  # T5's config forces tying; the checkpoint unties on load
            head = model.get_output_embeddings()
            head.weight = nn.Parameter(torch.empty_like(head.weight))
        return model

    def auto_class(self):
        """The transformers Auto class that builds this kind of model."""
        raise NotImplementedError

    def load(self, path: str, dtype: torch.dtype) -> nn.Module:
        return self.auto_class().from_pretrained(path, dtype=dtype, **self.quantisation())

    def quantisation(self) -> Dict[str, Any]:
        """transformers' ``from_pretrained`` arguments that quantise the weights on load (none unless int8 / nf4):
        bitsandbytes' linear layers on the current CUDA device, the output layer kept in the compute dtype."""
        if self.precision not in QUANTISED_BYTES:
            return {}
        from transformers import BitsAndBytesConfig

        config = (BitsAndBytesConfig(load_in_8bit=True) if self.precision == "int8" else
                  BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                     bnb_4bit_compute_dtype=COMPUTE_DTYPES["nf4"]))
        return {"quantization_config": config, "device_map": {"": torch.cuda.current_device()}}

    def quantised_bytes_saved(self) -> int:
        """What int8 / nf4 storage saves against the weights as built in the compute dtype (the dry run builds
        them so): every linear layer of the LLM but its output layer and LoRA's adapters."""
        if self.precision not in QUANTISED_BYTES:
            return 0
        head = self.model.get_output_embeddings()
        return int(sum(m.weight.numel() * (m.weight.element_size() - QUANTISED_BYTES[self.precision])
                       for name, m in self.model.named_modules()
                       if isinstance(m, nn.Linear) and m is not head and "lora_" not in name))

    @property
    def hidden_size(self) -> int:
        return self.model.get_input_embeddings().embedding_dim

    def ids(self, texts: List[str], special: bool, truncate: bool = True, max_len: Optional[int] = None,
            keep: Literal["start", "end"] = "start") -> List[List[int]]:
        """Token ids; ``truncate``: cut to ``max_len`` (default ``max_txt_len``; training text: LAVIS never cuts a
        generation prompt, so a long VQA question keeps its "Answer:"), keeping the text's ``start`` or ``end``."""
        self.tokenizer.truncation_side = "right" if keep == "start" else "left"
        enc = self.tokenizer(list(texts), add_special_tokens=special, truncation=truncate,
                             max_length=(max_len or self.max_txt_len) if truncate else None)
        return enc["input_ids"]

    def hidden_ids(self) -> List[int]:
        """Token ids an output never shows (beyond the tokenizer's special tokens)."""
        return []

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model.get_input_embeddings()(ids)

    def generation_inputs(self, prefix: torch.Tensor, prompts: List[str]) -> Tuple[torch.Tensor, torch.Tensor]:
        """(input embeddings, attention mask) that generation starts from."""
        raise NotImplementedError

    def candidate_losses(self, prefix: torch.Tensor, prompts: List[str], candidates: List[str],
                         n_segments: int = 1) -> torch.Tensor:
        """[B, C] how unlikely each candidate text is after each prefix + prompt (lower: more likely), as LAVIS's
        InstructBLIP ``predict_class`` scores it; the candidates go through in ``n_segments`` batches."""
        raise ConfigError(f"answer ranking: {type(self).__name__} has no candidate scoring; generate answers "
                          f"instead, or give the adapter a candidate_losses method")

    def stop_token_id(self) -> int:
        """The token that ends generated text."""
        return self.tokenizer.eos_token_id

    def new_tokens_for(self, min_length: int, prompts: List[str]) -> int:
        """LAVIS's ``min_length`` as new tokens: transformers counts what is already in the sequence, which under
        LAVIS is the decoder's start token for an encoder-decoder LLM."""
        return max(0, min_length - 1)

    @torch.no_grad()
    def generate(self, prefix: torch.Tensor, prompts: List[str], num_beams: int = 5, max_new_tokens: int = 30,
                 min_length: int = 1, min_new_tokens: Optional[int] = None, length_penalty: float = 1.0,
                 repetition_penalty: float = 1.0, do_sample: bool = False, top_p: float = 0.9,
                 num_return_sequences: int = 1) -> List[str]:
        """Texts generated after each prefix + prompt (``num_return_sequences`` per sample, in order): beam
        search, or nucleus sampling with ``do_sample``; the LLM's key/value cache is used throughout.

        ``min_length`` means what LAVIS's does (:meth:`new_tokens_for`); ``min_new_tokens``, when given, counts
        generated tokens only and replaces it."""
        embeds, mask = self.generation_inputs(prefix, prompts)
        if min_new_tokens is None:
            min_new_tokens = self.new_tokens_for(min_length, prompts)
        out = self.model.generate(inputs_embeds=embeds, attention_mask=mask, num_beams=num_beams,
                                  max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens,
                                  length_penalty=length_penalty, repetition_penalty=repetition_penalty,
                                  num_return_sequences=num_return_sequences,
                                  **(dict(do_sample=True, top_p=top_p) if do_sample else dict(do_sample=False)),
                                  pad_token_id=self.tokenizer.pad_token_id, eos_token_id=self.stop_token_id())
        hidden = self.hidden_ids()
        if hidden:
            out = out.masked_fill(torch.isin(out, torch.tensor(hidden, device=out.device)), self.tokenizer.pad_token_id)
        return [t.strip() for t in self.tokenizer.batch_decode(out, skip_special_tokens=True,
                                                               clean_up_tokenization_spaces=self.CLEAN_UP_SPACES)]


def segments(n: int, n_segments: int) -> List[Tuple[int, int]]:
    """LAVIS's ``n_segments`` split of ``n`` candidates: equal parts, the remainder in the last."""
    if not 1 <= n_segments <= n:
        raise ConfigError(f"n_segments={n_segments}: give 1 to the number of candidates ({n})")
    size = n // n_segments
    return [(k * size, n if k == n_segments - 1 else (k + 1) * size) for k in range(n_segments)]


def _pad(rows: List[torch.Tensor], side: Literal["left", "right"], value: float = 0.0) -> torch.Tensor:
    """Stack ``[L_i, ...]`` tensors into ``[B, max L, ...]`` padded with ``value`` on one side."""
    longest = max(r.shape[0] for r in rows)
    out = rows[0].new_full((len(rows), longest, *rows[0].shape[1:]), value)
    for i, r in enumerate(rows):
        if side == "left":
            out[i, longest - r.shape[0]:] = r
        else:
            out[i, :r.shape[0]] = r
    return out


class DecoderOnlyAdapter(LLMAdapter):
    """[prefix, prompt, target] through a causal LM; loss on the target tokens (and the end of text) only.

    Args beyond :class:`LLMAdapter`'s:
        end_of_text: the text that ends every training target and stops generation (its first token). null: the
            adapter's (OPT: a newline, as LAVIS's Blip2OPT and transformers' released blip2-opt checkpoints; any
            other: the tokenizer's EOS token).
        joint_tokens: tokenise prompt and target as one string, cut to ``max_txt_len`` together, and leave the
            prompt's own tokens out of the loss (LAVIS's BLIP-2 OPT; with byte-level BPE the target's first word
            keeps its leading space, and with an empty prompt the start token is a target too, as there). false:
            prompt and target tokenised apart (LAVIS's InstructBLIP, ``concat_text_input_output``): the prompt with
            the tokenizer's start token, cut to ``max_txt_len`` keeping its end (the question); the target with
            the end of text appended, cut to ``max_output_txt_len`` keeping its start, the start token LAVIS
            tokenises it with (and then drops) counted.
        max_output_txt_len: see ``joint_tokens: false``; null: ``max_txt_len``.
    """

    END_OF_TEXT: Optional[str] = None  # an adapter's default end_of_text (None: the tokenizer's EOS token)

    def __init__(self, path: str, arch: Optional[str] = None, precision: LLMPrecision = "fp16", freeze: bool = True,
                 frozen_dropout: bool = True, max_txt_len: int = 32, end_of_text: Optional[str] = None,
                 joint_tokens: bool = True, max_output_txt_len: Optional[int] = None,
                 special_tokens: Optional[Dict[str, str]] = None, lora: Optional[LoraArgs] = None) -> None:
        super().__init__(path, arch, precision, freeze, frozen_dropout, max_txt_len, special_tokens, lora)
        self.joint_tokens, self.max_output_txt_len = joint_tokens, max_output_txt_len or max_txt_len
        self.end_of_text = end_of_text if end_of_text is not None else self.END_OF_TEXT
        if self.tokenizer is None:  # on the meta device: nothing to tokenise
            self.eot_id = None
        elif self.end_of_text is None:
            self.eot_id, self.end_of_text = self.tokenizer.eos_token_id, self.tokenizer.eos_token
        else:
            ids = self.tokenizer(self.end_of_text, add_special_tokens=False)["input_ids"]
            if not ids:
                raise ConfigError(f"model.llm.end_of_text {self.end_of_text!r} is no token of {path}'s tokenizer")
            self.eot_id = ids[0]  # LAVIS stops at the first token of "\n"

    def auto_class(self):
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM

    def _token_rows(self, prompts: List[str], targets: Optional[List[str]]) -> List[Tuple[List[int], int]]:
        """Per sample: (token ids of prompt + target + end of text, how many leading ones carry no loss)."""
        if targets is None:  # generation: the whole prompt
            return [(p, len(p)) for p in self.ids(prompts, special=True, truncate=False)]
        if not self.joint_tokens:
            start = len(self.tokenizer("")["input_ids"])  # the tokens the tokenizer puts before any text
            outputs = self.ids([t + self.end_of_text for t in targets], special=False,
                               max_len=self.max_output_txt_len - start)
            return [(p + t, len(p)) for p, t in zip(self.ids(prompts, special=True, keep="end"), outputs)]
        prompt_ids = self.ids(prompts, special=True, truncate=False)  # LAVIS's prompt_length: the prompt alone
        texts = [p + (" " if p and t and not p[-1].isspace() else "") + t + self.end_of_text
                 for p, t in zip(prompts, targets)]
        return [(ids, len(p) if prompt else 0) for ids, p, prompt in zip(self.ids(texts, special=True), prompt_ids,
                                                                           prompts)]

    def _sequences(self, prefix: torch.Tensor, prompts: List[str], targets: Optional[List[str]] = None):
        """Per sample: (input embeddings, labels) of [prefix, prompt, target + end of text]."""
        rows, labels = [], []
        for i, (ids, no_loss) in enumerate(self._token_rows(prompts, targets)):
            ids = torch.tensor(ids, device=prefix.device)
            rows.append(torch.cat([prefix[i], self.embed(ids).to(prefix.dtype)]))
            lab = torch.full((prefix.shape[1] + len(ids),), -100, device=prefix.device)
            if targets is not None:
                lab[prefix.shape[1] + no_loss:] = ids[no_loss:]
            labels.append(lab)
        return rows, labels

    def stop_token_id(self) -> int:
        return self.eot_id

    def new_tokens_for(self, min_length: int, prompts: List[str]) -> int:
        """Under LAVIS a decoder-only LLM's sequence holds the prompt's tokens (padded to the longest prompt of the
        batch; the visual prompt goes in as embeddings and is not counted): ``min_length`` counts them."""
        return max(0, min_length - max(len(ids) for ids in self.ids(prompts, special=True, truncate=False)))

    @torch.no_grad()
    def candidate_losses(self, prefix: torch.Tensor, prompts: List[str], candidates: List[str],
                         n_segments: int = 1) -> torch.Tensor:
        """LAVIS's ``Blip2VicunaInstruct._predict_class``: each candidate follows the whole prompt (not cut), its
        start token dropped and no end of text added; its score is the summed negative log-likelihood of its
        tokens over the length of the padded sequences it went through with (LAVIS's per-sequence mean over
        every position), so candidates of different segments are divided by different lengths, as there."""
        prompt_ids = self.ids(prompts, special=True, truncate=False)
        start = len(self.tokenizer("")["input_ids"])
        cand_ids = [ids[start:] for ids in self.ids(candidates, special=True, truncate=False)]
        scores = []
        for lo, hi in segments(len(candidates), n_segments):
            rows, labels = [], []
            for i, p in enumerate(prompt_ids):
                for c in cand_ids[lo:hi]:
                    ids = torch.tensor(p + c, device=prefix.device)
                    rows.append(torch.cat([prefix[i], self.embed(ids).to(prefix.dtype)]))
                    lab = torch.full((prefix.shape[1] + len(ids),), -100, device=prefix.device)
                    lab[prefix.shape[1] + len(p):] = ids[len(p):]
                    labels.append(lab)
            mask = _pad([torch.ones(r.shape[0], dtype=torch.long, device=prefix.device) for r in rows], "right")
            logits = self.model(inputs_embeds=_pad(rows, "right").to(self.model.dtype), attention_mask=mask,
                                use_cache=False).logits
            nll = torch.nn.functional.cross_entropy(logits[:, :-1].float().transpose(1, 2),
                                                    _pad(labels, "right", -100)[:, 1:], reduction="none")
            scores.append((nll.sum(1) / nll.shape[1]).view(len(prompts), hi - lo))
        return torch.cat(scores, 1)

    def lm_loss(self, prefix: torch.Tensor, prompts: List[str], targets: List[str]) -> torch.Tensor:
        rows, labels = self._sequences(prefix, prompts, targets)
        mask = _pad([torch.ones(r.shape[0], dtype=torch.long, device=prefix.device) for r in rows], "right")
        # no key/value cache: a loss needs none, and a layer recomputed in backward would extend it twice
        out = self.model(inputs_embeds=_pad(rows, "right").to(self.model.dtype), attention_mask=mask,
                         labels=_pad(labels, "right", -100), use_cache=False)
        return out.loss

    def generation_inputs(self, prefix: torch.Tensor, prompts: List[str]) -> Tuple[torch.Tensor, torch.Tensor]:
        rows, _ = self._sequences(prefix, prompts)
        mask = _pad([torch.ones(r.shape[0], dtype=torch.long, device=prefix.device) for r in rows], "left")
        return _pad(rows, "left").to(self.model.dtype), mask


class EncoderDecoderAdapter(LLMAdapter):
    """[prefix, prompt] into the encoder; the target is the decoder's (T5 / FlanT5).

    Args beyond :class:`LLMAdapter`'s:
        max_output_txt_len: tokens kept of each target (its end of text included); null: ``max_txt_len``.
        prompt_keeps: what of a training prompt longer than ``max_txt_len`` is kept: its ``start`` (LAVIS's
            BLIP-2 ``Blip2T5``) or its ``end`` (InstructBLIP's ``Blip2T5Instruct``: the question comes last).
    """

    def __init__(self, path: str, arch: Optional[str] = None, precision: LLMPrecision = "bf16", freeze: bool = True,
                 frozen_dropout: bool = True, max_txt_len: int = 32, max_output_txt_len: Optional[int] = None,
                 prompt_keeps: Literal["start", "end"] = "start",
                 special_tokens: Optional[Dict[str, str]] = None, lora: Optional[LoraArgs] = None) -> None:
        super().__init__(path, arch, precision, freeze, frozen_dropout, max_txt_len, special_tokens, lora)
        self.max_output_txt_len, self.prompt_keeps = max_output_txt_len or max_txt_len, prompt_keeps

    def auto_class(self):
        from transformers import AutoModelForSeq2SeqLM

        return AutoModelForSeq2SeqLM

    def generation_inputs(self, prefix: torch.Tensor, prompts: List[str],
                          truncate: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
        rows = [torch.cat([prefix[i], self.embed(torch.tensor(p, device=prefix.device)).to(prefix.dtype)])
                for i, p in enumerate(self.ids(prompts, special=True, truncate=truncate, keep=self.prompt_keeps))]
        mask = _pad([torch.ones(r.shape[0], dtype=torch.long, device=prefix.device) for r in rows], "right")
        return _pad(rows, "right").to(self.model.dtype), mask

    def few_shot_context(self, prefix: torch.Tensor, prompts: List[str], k: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Examples' encoder inputs, ``k`` per sample in order, as [B, k x L, hidden] and their mask: each
        [prefix, prompt] cut as a training prompt and padded to the longest example, then a sample's ``k`` rows
        side by side (LAVIS's ``Blip2T5Instruct.prepare_few_shot_embeds``, padding inside included)."""
        embeds, mask = self.generation_inputs(prefix, prompts, truncate=True)
        return embeds.reshape(-1, k * embeds.shape[1], embeds.shape[2]), mask.reshape(-1, k * mask.shape[1])

    def lm_loss(self, prefix: torch.Tensor, prompts: List[str], targets: List[str],
                context: Optional[Tuple[torch.Tensor, torch.Tensor]] = None) -> torch.Tensor:
        """``context``: encoder inputs and mask put before each sample's (:meth:`few_shot_context`)."""
        embeds, mask = self.generation_inputs(prefix, prompts, truncate=True)  # LAVIS cuts the encoder's text here
        if context is not None:
            embeds, mask = torch.cat([context[0].to(embeds.dtype), embeds], 1), torch.cat([context[1], mask], 1)
        labels = [torch.tensor(t, device=prefix.device)
                  for t in self.ids(targets, special=True, max_len=self.max_output_txt_len)]
        return self.model(inputs_embeds=embeds, attention_mask=mask, labels=_pad(labels, "right", -100),
                          use_cache=False).loss  # no key/value cache: as the decoder-only lm_loss

    @torch.no_grad()
    def candidate_losses(self, prefix: torch.Tensor, prompts: List[str], candidates: List[str],
                         n_segments: int = 1) -> torch.Tensor:
        """LAVIS's ``Blip2T5Instruct._predict_class``: the whole prompt (not cut) into the encoder, each candidate
        with its end of text as the decoder's target; its score is the summed negative log-likelihood of its
        tokens (the segments change only how many go through at once)."""
        embeds, mask = self.generation_inputs(prefix, prompts)
        encoded = self.model.get_encoder()(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
        cand_ids = self.ids(candidates, special=True, truncate=False)
        scores = []
        for lo, hi in segments(len(candidates), n_segments):
            n = hi - lo
            labels = _pad([torch.tensor(c, device=prefix.device) for c in cand_ids[lo:hi]], "right", -100)
            out = self.model(encoder_outputs=(encoded.repeat_interleave(n, 0),),
                             attention_mask=mask.repeat_interleave(n, 0), labels=labels.repeat(len(prompts), 1),
                             use_cache=False)
            nll = torch.nn.functional.cross_entropy(out.logits.float().transpose(1, 2),
                                                    labels.repeat(len(prompts), 1), reduction="none")
            scores.append(nll.sum(1).view(len(prompts), n))
        return torch.cat(scores, 1)
