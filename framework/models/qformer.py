"""The Q-Former: a BERT whose learned query tokens cross-attend to frozen image tokens.

One sequence holds ``Q`` query positions followed by ``T`` text positions. Every layer runs self-attention
over the whole sequence under a mask that says who sees whom (:func:`attention_mask`); every
``cross_attention_freq``-th layer lets the query positions (only) cross-attend to the image tokens; the
feed-forward is a separate one for query positions and for text positions. The three BLIP-2 objectives are
three masks over the same weights:

* ``itc`` (unimodal): queries see queries, text sees text: query outputs and text [CLS] are independent;
* ``itm`` (bidirectional): everything sees everything (padding excepted);
* ``itg`` (multimodal causal): queries see queries; text sees the queries and earlier text.

All attention goes through ``scaled_dot_product_attention`` with one boolean mask built per batch.
Self-attention projections are fused (one ``qkv`` matmul; one ``kv`` matmul for cross-attention).
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from functools import partial
from typing import Annotated, Any, Dict, List, Literal, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from framework.core.errors import ConfigError
from framework.core.schema import Range

Mode = Literal["itc", "itm", "itg"]
KV = Tuple[torch.Tensor, torch.Tensor]


def attention_mask(n_query: int, text_mask: Optional[torch.Tensor], mode: Mode, batch: int = 1,
                   device: Optional[torch.device] = None) -> torch.Tensor:
    """Boolean ``[B, 1, Q+T, Q+T]`` mask (True: may attend) for ``n_query`` queries then text.

    ``text_mask`` is ``[B, T]`` (1 for tokens, 0 for padding) or None for no text.
    """
    if text_mask is not None:
        batch, device = text_mask.shape[0], text_mask.device
    n_text = 0 if text_mask is None else text_mask.shape[1]
    n = n_query + n_text
    is_query = torch.arange(n, device=device) < n_query
    if mode == "itm":
        allowed = torch.ones(n, n, dtype=torch.bool, device=device)
    elif mode == "itc":
        allowed = is_query[:, None] == is_query[None, :]
    elif mode == "itg":
        causal = torch.ones(n, n, dtype=torch.bool, device=device).tril()
        allowed = (is_query[None, :] | causal) & (~is_query[:, None] | is_query[None, :])
    else:
        raise ValueError(f"unknown attention mode {mode!r}; one of itc, itm, itg")
    keys = torch.ones(batch, n, dtype=torch.bool, device=device)
    if text_mask is not None:
        keys[:, n_query:] = text_mask.bool()
    return (allowed[None] & keys[:, None, :])[:, None]


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        if dim % heads:
            raise ConfigError(f"model.qformer: hidden_size {dim} is not a multiple of num_heads {heads}")
        self.heads, self.dropout = heads, dropout
        self.qkv = nn.Linear(dim, 3 * dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, past: Optional[KV] = None) -> Tuple[torch.Tensor, KV]:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        if past is not None:
            k, v = torch.cat([past[0], k], 2), torch.cat([past[1], v], 2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                             dropout_p=self.dropout if self.training else 0.0)
        return out.transpose(1, 2).reshape(b, n, d), (k, v)


class CrossAttention(nn.Module):
    def __init__(self, dim: int, kv_dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(kv_dim, 2 * dim)

    def project(self, image: torch.Tensor) -> KV:
        """Keys and values of the image tokens ([B, heads, N, head_dim] each)."""
        b, n, _ = image.shape
        h = self.heads
        k, v = self.kv(image).view(b, n, 2, h, -1).permute(2, 0, 3, 1, 4)
        return k, v

    def forward(self, x: torch.Tensor, image_kv: KV, image_mask: Optional[torch.Tensor]) -> torch.Tensor:
        b, n, d = x.shape
        h = self.heads
        q = self.q(x).view(b, n, h, d // h).transpose(1, 2)
        k, v = image_kv
        dropout = self.dropout if self.training else 0.0
        if k.shape[0] == 1 < b:  # one image for every sequence (ITM re-ranking): its queries attend as one
            if image_mask is not None:
                raise ValueError("an image shared by several sequences takes no image_mask")
            q = q.transpose(0, 1).reshape(1, h, b * n, d // h)  # a softmax row per query, so this is exact
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
            return out.view(h, b, n, d // h).permute(1, 2, 0, 3).reshape(b, n, d)
        mask = None if image_mask is None else image_mask.bool()[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        return out.transpose(1, 2).reshape(b, n, d)


class AddNorm(nn.Module):
    """BERT's output block: LayerNorm(residual + dropout(dense(x)))."""

    def __init__(self, d_in: int, d_out: int, eps: float, dropout: float) -> None:
        super().__init__()
        self.dense = nn.Linear(d_in, d_out)
        self.ln = nn.LayerNorm(d_out, eps=eps)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.ln(residual + self.drop(self.dense(x)))


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int, eps: float, dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.out = AddNorm(hidden, dim, eps, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(F.gelu(self.fc1(x)), x)


class QFormerLayer(nn.Module):
    fsdp_forward_methods = ("project_image",)  # uses the layer's weights outside forward (framework.engine.fsdp)

    def __init__(self, dim: int, heads: int, ffn: int, vision_width: int, cross: bool, eps: float,
                 dropout: float, attn_dropout: float) -> None:
        super().__init__()
        self.attn = SelfAttention(dim, heads, attn_dropout)
        self.attn_out = AddNorm(dim, dim, eps, dropout)
        self.cross = CrossAttention(dim, vision_width, heads, attn_dropout) if cross else None
        self.cross_out = AddNorm(dim, dim, eps, dropout) if cross else None
        self.ffn_query = FeedForward(dim, ffn, eps, dropout)
        self.ffn_text = FeedForward(dim, ffn, eps, dropout)

    def project_image(self, image: torch.Tensor) -> Optional[KV]:
        """The cross-attention keys/values of ``image``; None without cross-attention."""
        return None if self.cross is None else self.cross.project(image)

    def forward(self, x: torch.Tensor, n_query: int, mask: Optional[torch.Tensor], image_kv: Optional[KV],
                image_mask: Optional[torch.Tensor], past: Optional[KV]) -> Tuple[torch.Tensor, KV]:
        a, present = self.attn(x, mask, past)
        x = self.attn_out(a, x)
        query, text = x[:, :n_query], x[:, n_query:]
        parts = []
        if n_query:
            if self.cross is not None:
                if image_kv is None:
                    raise ValueError("the Q-Former's query positions need image tokens (image=None was given)")
                query = self.cross_out(self.cross(query, image_kv, image_mask), query)
            parts.append(self.ffn_query(query))
        if text.shape[1]:
            parts.append(self.ffn_text(text))
        return torch.cat(parts, 1) if len(parts) > 1 else parts[0], present


class LMHead(nn.Module):
    """BERT's prediction head; the decoder weight is tied to the word embeddings."""

    def __init__(self, dim: int, eps: float, embeddings: nn.Embedding) -> None:
        super().__init__()
        self.dense = nn.Linear(dim, dim)
        self.ln = nn.LayerNorm(dim, eps=eps)
        self.embeddings = [embeddings]  # a list: not a submodule, so the weight is stored once
        self.bias = nn.Parameter(torch.zeros(embeddings.num_embeddings))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.ln(F.gelu(self.dense(x))), self.embeddings[0].weight, self.bias)


@dataclass
class QFormerOutput:
    hidden: torch.Tensor  # [B, Q+T, H] (only the new positions when ``past`` was given)
    past: Optional[List[KV]]  # per layer, keys/values of the query positions (``cache_queries=True``)


@dataclass
class QFormerSizes:
    """The Q-Former's sizes, declared once (BERT-base by default): :class:`QFormer` takes them as keywords, and
    ``model.qformer`` (:class:`framework.models.blip2.QFormerArgs`) adds where its BERT comes from.

    hidden_size, num_layers, num_heads, intermediate_size: the BERT sizes.
    vocab_size: the BERT vocabulary; one more row is added for the [DEC] token that starts ITG text.
    num_query_tokens: learned queries. cross_attention_freq: layer i has cross-attention if i % freq == 0.
    max_position_embeddings, layer_norm_eps, dropout, attention_dropout: as BERT's config.
    initializer_range: std of the normal initialisation of every weight a BERT checkpoint does not give: the
        queries and the cross-attention (all weights without one), as BERT's config (LAVIS takes it from
        bert-base-uncased's: 0.02). The initial cross-attention logits have std initializer_range**2 *
        sqrt(hidden_size * vision_width): 0.42 at BLIP-2's sizes (768, EVA's 1408), 0.08 at a 384-wide Q-Former on
        96-wide image tokens, whose queries then read every image token alike (docs/demo_diagnosis.md).
    """
    hidden_size: Annotated[int, Range(1)] = 768
    num_layers: Annotated[int, Range(1)] = 12
    num_heads: Annotated[int, Range(1)] = 12
    intermediate_size: Annotated[int, Range(1)] = 3072
    vocab_size: Annotated[int, Range(1)] = 30522
    num_query_tokens: Annotated[int, Range(1)] = 32
    cross_attention_freq: Annotated[int, Range(1)] = 2
    max_position_embeddings: Annotated[int, Range(1)] = 512
    layer_norm_eps: Annotated[float, Range(0, lo_open=True)] = 1e-12
    dropout: Annotated[float, Range(0, 1, hi_open=True)] = 0.1
    attention_dropout: Annotated[float, Range(0, 1, hi_open=True)] = 0.1
    initializer_range: Annotated[float, Range(0, lo_open=True)] = 0.02

    def sizes(self) -> Dict[str, Any]:
        """The size fields alone (a subclass's other fields left out), as :class:`QFormer`'s keywords."""
        return {f.name: getattr(self, f.name) for f in fields(QFormerSizes)}


class QFormer(nn.Module):
    """Args:
        vision_width: width of the image tokens the queries cross-attend to.
        **sizes: the fields of :class:`QFormerSizes` (its defaults for those not given).
    """

    def __init__(self, vision_width: int, **sizes: Any) -> None:
        super().__init__()
        s = QFormerSizes(**sizes)
        self.hidden_size, self.num_heads, self.vocab_size = s.hidden_size, s.num_heads, s.vocab_size
        self.dec_token_id = s.vocab_size
        self.query_tokens = nn.Parameter(torch.randn(1, s.num_query_tokens, s.hidden_size) * s.initializer_range)
        self.word_embeddings = nn.Embedding(s.vocab_size + 1, s.hidden_size, padding_idx=0)
        self.position_embeddings = nn.Embedding(s.max_position_embeddings, s.hidden_size)
        self.emb_ln = nn.LayerNorm(s.hidden_size, eps=s.layer_norm_eps)
        self.emb_drop = nn.Dropout(s.dropout)
        self.layers = nn.ModuleList(
            QFormerLayer(s.hidden_size, s.num_heads, s.intermediate_size, vision_width, i % s.cross_attention_freq == 0,
                         s.layer_norm_eps, s.dropout, s.attention_dropout) for i in range(s.num_layers))
        self.lm_head = LMHead(s.hidden_size, s.layer_norm_eps, self.word_embeddings)
        self.grad_checkpointing = False  # set from model.qformer (framework.models.blip2.QFormerArgs)
        self.apply(partial(_init_bert, std=s.initializer_range))

    recompute_layers = False  # FSDP: its layers are sharded one by one; their recomputation is grad_checkpointing

    def fsdp_layers(self) -> List[nn.Module]:
        return list(self.layers)

    def remove_text_path(self, keep_text_input: bool) -> List[str]:
        """Stage 2 reads only the query outputs: the LM head goes, and unless text goes in beside the queries
        (``keep_text_input``) so do the word/position embeddings and the text feed-forwards. They would get no
        gradient (DDP refuses unused parameters) and would inflate the trainable count (the paper's 107M are
        without them, as in LAVIS). Returns the removed parameter-name prefixes."""
        removed = text_path(len(self.layers), keep_text_input)
        self.lm_head = None
        if not keep_text_input:
            self.word_embeddings = self.position_embeddings = None
            for layer in self.layers:
                layer.ffn_text = None
        return removed

    @property
    def num_query_tokens(self) -> int:
        return self.query_tokens.shape[1]

    def embed(self, input_ids: Optional[torch.Tensor], with_queries: bool, batch: int) -> torch.Tensor:
        parts = [self.query_tokens.expand(batch, -1, -1)] if with_queries else []
        if input_ids is not None:
            pos = torch.arange(input_ids.shape[1], device=input_ids.device)
            parts.append(self.word_embeddings(input_ids) + self.position_embeddings(pos))
        return self.emb_drop(self.emb_ln(torch.cat(parts, 1)))

    def project_image(self, image: torch.Tensor) -> List[Optional[KV]]:
        """Per layer, the cross-attention keys/values of ``image`` (None for layers without cross-attention).
        Computed once, they serve several passes over the same images (stage 1's ITC and ITM)."""
        return [layer.project_image(image) for layer in self.layers]

    def forward(self, mode: Mode, image: Optional[torch.Tensor] = None, input_ids: Optional[torch.Tensor] = None,
                text_mask: Optional[torch.Tensor] = None, with_queries: bool = True,
                image_mask: Optional[torch.Tensor] = None, past: Optional[List[KV]] = None,
                cache_queries: bool = False, image_kv: Optional[List[Optional[KV]]] = None) -> QFormerOutput:
        """Run the Q-Former over [queries (unless ``with_queries=False`` or cached in ``past``), text].

        The image comes as tokens (``image``) or already projected (``image_kv``, from :meth:`project_image`);
        one image (batch 1) may go with a batch of texts: it is projected once and every sequence reads it.
        ``past`` holds the query positions' keys/values from an earlier call with ``cache_queries=True``
        (ITG reuses the ITC pass's queries instead of recomputing them).
        """
        queries_here = with_queries and past is None
        if image_kv is None and image is not None and queries_here:
            image_kv = self.project_image(image)
        first_kv = next((kv[0] for kv in image_kv or [] if kv is not None), None)
        image_batch = (first_kv if first_kv is not None else image if image is not None else None)
        # texts set the batch; one image (batch 1) may serve them all (its keys/values projected once)
        batch = (input_ids if input_ids is not None else image_batch).shape[0]
        if image_batch is not None and image_batch.shape[0] not in (1, batch):
            raise ValueError(f"the Q-Former got {image_batch.shape[0]} images for {batch} texts: give one image "
                             f"per text, or one image for all")
        n_query = self.num_query_tokens if with_queries else 0
        x = self.embed(input_ids, queries_here, batch)
        if text_mask is None and input_ids is not None:
            text_mask = torch.ones_like(input_ids)
        # queries alone see each other freely: no mask lets SDPA pick its fused kernels
        mask = None if text_mask is None else attention_mask(n_query, text_mask, mode, batch, x.device)
        if past is not None:
            mask = mask[:, :, n_query:]  # rows: the text positions computed now; columns: cached queries + text
        presents: List[KV] = []
        n_here = n_query if queries_here else 0
        recompute = self.grad_checkpointing and self.training and torch.is_grad_enabled()
        for i, layer in enumerate(self.layers):
            inputs = (x, n_here, mask, None if image_kv is None else image_kv[i], image_mask,
                      None if past is None else past[i])
            # recomputed in the backward pass with the random state of the forward: the same dropout masks
            x, (k, v) = checkpoint(layer, *inputs, use_reentrant=False) if recompute else layer(*inputs)
            if cache_queries:
                presents.append((k[:, :, :n_query], v[:, :, :n_query]))
        return QFormerOutput(x, presents if cache_queries else None)


def text_path(num_layers: int, keep_text_input: bool = False) -> List[str]:
    """The parameter-name prefixes of what a stage-2 Q-Former of ``num_layers`` deletes (the LM head, and unless
    text goes in beside the queries, the word/position embeddings and the text feed-forwards): what a BLIP-2
    stage-2 checkpoint holds none of, whoever wrote it."""
    prefixes = ["lm_head."]
    if not keep_text_input:
        prefixes += ["word_embeddings.", "position_embeddings."] + [f"layers.{i}.ffn_text." for i in range(num_layers)]
    return prefixes


def _init_bert(m: nn.Module, std: float) -> None:
    if isinstance(m, (nn.Linear, nn.Embedding)):
        nn.init.normal_(m.weight, std=std)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


