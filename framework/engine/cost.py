"""What a training iteration costs, without running it: FLOPs and peak memory per process.

The model is built on the ``meta`` device (no weights read), its tensors replaced by fake ones
(``torch._subclasses.FakeTensorMode``: shapes and dtypes, no storage), and one training iteration runs on them as
the runner runs it: the task's ``train_step`` under the configured autocast, backward, AdamW's step. One
dispatch mode (:class:`Meter`) counts the FLOPs of every op ``torch.utils.flop_counter`` knows and follows every
tensor storage from its creation to its release (weights, gradients, optimizer state, activations); the peak is
the larger of the step's own and the next iteration's (its forward and backward with the optimizer state alive).
Texts are stand-ins of ``max_txt_len`` tokens (the longest a run trains on), as no tokenizer files are read.

Not counted: the CUDA context and kernels (about 0.5-1 GB per process on a GPU), the caching allocator's
fragmentation, DDP's gradient buckets (about one more copy of the trainable gradients), data loading.
"""
from __future__ import annotations

import math
import os
import weakref
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map_only
from torch.utils.weak import WeakIdKeyDictionary

from framework.core.registry import build
from framework.engine import fsdp
from framework.engine.experiment import ExperimentConfig
from framework.engine.optim import build_optimizer
from framework.models.build import build_model
from framework.models.interfaces import HasExampleBatch, require
from framework.models.llm import LLMAdapter

GB = 1024 ** 3
CARDS = (24, 40, 80)  # accelerator sizes in GB the largest batch is given for
FSDP_RANKS = 8  # the processes an FSDP estimate shards over (a node of 8 GPUs) outside torchrun


@dataclass
class StepCost:
    batch_size: int
    flops: float  # forward + backward of one micro-batch
    peak_bytes: int  # the largest sum of live tensors over the step, the optimizer step included
    weights_bytes: int  # every parameter and buffer, in its dtype
    trainable_bytes: int  # gradients + AdamW's two moments of the trainable parameters (fp32)

    @property
    def activation_bytes(self) -> int:
        return self.peak_bytes - self.weights_bytes - self.trainable_bytes

    def report(self) -> Dict[str, Any]:
        """The figures ``--dry-run`` prints and the benchmarks record: TFLOPs, GiB, and the largest batch on each
        card of :data:`CARDS` (1 GiB of it left to the CUDA context)."""
        return {"batch": self.batch_size, "tflops": self.flops / 1e12, "peak_gib": self.peak_bytes / GB,
                "weights_gib": self.weights_bytes / GB, "grads_and_adamw_gib": self.trainable_bytes / GB,
                "activations_gib": self.activation_bytes / GB,
                **{f"largest_batch_{card}gb": self.largest_batch((card - 1) * GB) for card in CARDS}}

    def largest_batch(self, budget_bytes: float) -> int:
        """The largest batch whose peak fits ``budget_bytes`` (0: not even one sample), taking the activations
        as proportional to the batch (ITC's similarity matrices, quadratic, are a rounding error)."""
        per_sample = max(1.0, self.activation_bytes / self.batch_size)
        return max(0, math.floor((budget_bytes - self.weights_bytes - self.trainable_bytes) / per_sample))


def _stand_in_tokenizer(length: int):
    """A tokenizer that turns every text into ``length`` word tokens between [CLS] and [SEP] (ids 0-5, inside
    every vocabulary): lengths are all a cost needs."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "</s>": 4, "w": 5}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2),
                                                                                                ("[SEP]", 3)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                   sep_token="[SEP]", eos_token="</s>", bos_token="[CLS]")


def _fake_parameters(model: nn.Module, mode) -> None:
    """Replace every meta parameter and buffer by a fake CPU tensor of the same shape and dtype (ties kept), fp16
    as bf16: CPU autocast refuses to mix the two (an fp16 ViT under bf16 autocast), the bytes are the same."""
    made: Dict[int, torch.Tensor] = {}
    with mode:
        for module in model.modules():
            for store in (module._parameters, module._buffers):
                for name, t in store.items():
                    if t is None:
                        continue
                    if id(t) not in made:
                        dtype = torch.bfloat16 if t.dtype == torch.float16 else t.dtype
                        fake = torch.empty(t.shape, dtype=dtype)
                        made[id(t)] = nn.Parameter(fake, t.requires_grad) if isinstance(t, nn.Parameter) else fake
                    store[name] = made[id(t)]


class Meter(TorchDispatchMode):
    """One pass over fake tensors: the FLOPs of the ops ``torch.utils.flop_counter`` knows (others decomposed until
    they reach one, as its ``FlopCounterMode`` does), and the bytes of every tensor storage alive with their peak: a
    storage counts from the op that made it until it is released (views, tensors sharing a storage, count once)."""

    SHAPE_QUERIES = {torch.ops.aten.is_contiguous.default, torch.ops.aten.is_contiguous.memory_format,
                     torch.ops.aten.size.default, torch.ops.aten.stride.default, torch.ops.aten.numel.default,
                     torch.ops.aten.dim.default, torch.ops.aten.storage_offset.default, torch.ops.prim.layout.default}

    def __init__(self) -> None:
        super().__init__()
        from torch.utils.flop_counter import flop_registry

        self.registry = flop_registry
        self.flops = 0
        self.live = self.peak = 0
        self._seen: WeakIdKeyDictionary = WeakIdKeyDictionary()

    def add(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        if storage in self._seen:
            return
        n = storage.nbytes()
        self._seen[storage] = n
        weakref.finalize(storage, self._release, n)
        self.live += n
        self.peak = max(self.peak, self.live)

    def _release(self, n: int) -> None:
        self.live -= n

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self.SHAPE_QUERIES:
            return func(*args, **kwargs)
        # fake tensors hold no values: a value read reads as false (a sanity check's ``if mask.any()``) or one
        # (AdamW's step count); a boolean mask's selection (ITG's tokens with a next token) selects everything,
        # the costliest case
        if func is torch.ops.aten._local_scalar_dense.default:
            return False if args[0].dtype == torch.bool else args[0].dtype.is_floating_point and 1.0 or 1
        if func is torch.ops.aten.index.Tensor and any(i is not None and i.dtype == torch.bool for i in args[1]):
            indices = []
            for i in args[1]:
                if i is not None and i.dtype == torch.bool:  # every position selected
                    grid = torch.meshgrid(*[torch.arange(n) for n in i.shape], indexing="ij")
                    indices += [g.reshape(-1) for g in grid]
                else:
                    indices.append(i)
            args = (args[0], indices)
        packet = func._overloadpacket
        if packet not in self.registry and func is not torch.ops.prim.device.default:
            with self:
                out = func.decompose(*args, **kwargs)
            if out is not NotImplemented:
                return out
        out = func(*args, **kwargs)
        if packet in self.registry:
            self.flops += self.registry[packet](*args, **kwargs, out_val=out)
        tree_map_only(torch.Tensor, self.add, out)
        return out


def step_cost(exp: ExperimentConfig, batch_size: Optional[int] = None) -> StepCost:
    """FLOPs and peak memory of one training iteration of ``exp`` at ``batch_size`` (default: run.batch_size),
    per process, computed on fake tensors in seconds whatever the model's size."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    batch_size = batch_size or exp.run.batch_size
    with torch.device("meta"):
        model = build_model(exp.model)
    require(model, HasExampleBatch, "the cost estimate (--dry-run)", "or pass --no-cost")
    text_tokens = max(1, getattr(model, "max_txt_len", 32) - 2)
    tokenizer = _stand_in_tokenizer(text_tokens)
    for module in model.modules():  # on meta nothing was read: give every part a tokenizer, decoder-only an end
        if "tokenizer" in vars(module) and module.tokenizer is None:
            module.tokenizer = tokenizer
        if "eot_id" in vars(module) and module.eot_id is None:
            module.eot_id, module.end_of_text = tokenizer.eos_token_id, tokenizer.eos_token
    sharded = exp.run.strategy == "fsdp"
    if sharded:  # the step as FSDP runs it: the marked layers recomputed in backward
        for layer, recomputed in fsdp.layers(model, exp.run.fsdp):
            if recomputed:
                fsdp.recompute(layer)
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    _fake_parameters(model, mode)
    task = build("task", exp.task)
    weights = sum(t.numel() * t.element_size() for t in {id(t): t for t in
                  list(model.parameters()) + list(model.buffers())}.values())
    amp = fsdp.autocast_precision(exp.run)
    # fp16 or bf16 alike: two bytes, the same FLOPs (the fake parameters hold no fp16, see _fake_parameters)
    autocast: Callable[[], Any] = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if amp != "off" else nullcontext
    with mode:
        model.train()
        optimizer = build_optimizer(model, exp.run.optimizer)
        batch = task.example_batch(model, batch_size, text_tokens)
        meter = Meter()
        for t in list(model.parameters()) + list(model.buffers()) + [batch["image"]]:
            meter.add(t)
        before = meter.live
        with meter:
            with autocast():
                loss = task.train_step(model, batch)["loss"]
            loss.backward()
            del loss
            forward_backward = meter.peak
            flops = meter.flops
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        state = meter.live - before  # AdamW's moments, alive from the first step on
    # the next iteration's forward and backward run with the optimizer state alive
    peak = max(meter.peak, forward_backward + state)
    # int8 / nf4 LLMs are built in their compute dtype here: their quantised storage is smaller by this much
    saved = sum(m.quantised_bytes_saved() for m in model.modules() if isinstance(m, LLMAdapter))
    peak, weights = peak - saved, weights - saved
    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad) + state
    if sharded:
        peak, weights, trainable = _sharded(model, exp.run.fsdp, peak, weights, trainable)
    return StepCost(batch_size, float(flops), int(peak), int(weights), int(trainable))


def _sharded(model: nn.Module, cfg: Any, peak: int, weights: int, trainable: int) -> Tuple[int, int, int]:
    """(peak, weights, gradients + AdamW state) per process under FSDP over ``fsdp_ranks()`` processes: the
    parameters, gradients and AdamW state split over them; gathered beside its shard, the model's own unit (all
    but the layers) for the whole step and, with full sharding, two layers at a time (the one computing, the next
    one prefetched), with grad_op every layer. Gathered in the dtype held (bf16 gathering halves fp32 layers)."""
    n = fsdp_ranks()
    nbytes = lambda params: sum(p.numel() * p.element_size() for p in params)  # noqa: E731
    params = nbytes(model.parameters())
    layer_bytes = sorted((nbytes(layer.parameters()) for layer, _ in fsdp.layers(model, cfg)), reverse=True)
    root = params - sum(layer_bytes)
    gathered = root + (sum(layer_bytes) if cfg.sharding == "grad_op" else sum(layer_bytes[:2]))
    resident = weights - params + params / n + gathered * (n - 1) / n  # buffers stay whole
    return (int(peak - weights - trainable + resident + trainable / n), int(resident), int(trainable / n))


def fsdp_ranks() -> int:
    """The processes an FSDP estimate shards over: the job's under torchrun, else :data:`FSDP_RANKS`."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    return world if world > 1 else FSDP_RANKS


def describe(exp: ExperimentConfig) -> List[str]:
    """The dry run's cost lines."""
    r = step_cost(exp).report()
    amp = fsdp.autocast_precision(exp.run)
    strategy = (f"FSDP {exp.run.fsdp.sharding} sharding over {fsdp_ranks()} processes"
                if exp.run.strategy == "fsdp" else "DDP")
    return [f"cost of one iteration at batch {r['batch']} per process ({strategy}; estimated on fake tensors, amp "
            f"{amp}; docs/benchmarks.md):",
            f"  {r['tflops']:,.2f} TFLOPs forward + backward",
            f"  peak memory {r['peak_gib']:,.2f} GiB = weights {r['weights_gib']:,.2f} + gradients and AdamW state "
            f"{r['grads_and_adamw_gib']:,.2f} + activations {r['activations_gib']:,.2f} (plus the CUDA context, "
            f"about 1 GiB)",
            "  largest batch per process: " + ", ".join(f"{r[f'largest_batch_{card}gb']} on a {card} GB card"
                                                        for card in CARDS)]
