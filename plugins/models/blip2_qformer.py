"""``blip2_qformer``: stage-1 BLIP-2, the Q-Former learning from a frozen image encoder with three losses.

* ITC: contrast the queries' embeddings with the text [CLS] embedding; an image-text similarity is the
  maximum over the queries. Features are gathered from all ranks (without gradient, as LAVIS, by default).
* ITM: classify (image, text) pairs as matching or not; for each text a hard negative image and for each
  image a hard negative text are sampled from the ITC similarities.
* ITG: generate the text from the queries: text sees the queries and earlier text (``itg`` mask), and the
  queries' keys/values come cached from the ITC pass.

``losses: [itc, itm]`` removes ITG (the paper's ablation) without touching anything else.
"""
from __future__ import annotations

from typing import Annotated, Any, Dict, List, Literal, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from framework.core import dist
from framework.core.errors import ConfigError
from framework.core.registry import MODELS
from framework.core.schema import Part, Range
from framework.models.blip2 import Blip2Base, QFormerArgs

Loss = Literal["itc", "itm", "itg"]


def itc_loss(image_feats: torch.Tensor, text_feat: torch.Tensor, temp: torch.Tensor,
             image_ids: Optional[torch.Tensor] = None, label_smoothing: float = 0.0,
             gather_grad: bool = False) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ITC over the global batch. ``image_feats`` [B,Q,D] and ``text_feat`` [B,D] are this rank's normalised
    features. Returns (loss, sim_i2t [B, B*world], sim_t2i [B, B*world]).

    With ``image_ids`` the targets are soft: every text of the same image is a positive. ``gather_grad``: see
    :class:`Blip2QFormer`'s ``itc_gather_grad``."""
    if gather_grad:
        image_all, text_all = dist.all_gather_with_grad(image_feats), dist.all_gather_with_grad(text_feat)
    else:  # LAVIS: the gathered features, this rank's own copy included, carry no gradient
        image_all = dist.all_gather_no_grad(image_feats).detach()
        text_all = dist.all_gather_no_grad(text_feat).detach()
    sim_i2t = torch.einsum("iqd,td->itq", image_feats, text_all).amax(-1) / temp
    sim_t2i = torch.einsum("td,iqd->tiq", text_feat, image_all).amax(-1) / temp
    b = image_feats.shape[0]
    if image_ids is None:
        targets = torch.arange(b, device=image_feats.device) + dist.rank() * b
    else:
        same = (image_ids[:, None] == dist.all_gather_no_grad(image_ids)[None, :]).float()
        targets = same / same.sum(1, keepdim=True)
    loss = (F.cross_entropy(sim_i2t, targets, label_smoothing=label_smoothing)
            + F.cross_entropy(sim_t2i, targets, label_smoothing=label_smoothing)) / 2
    return loss, sim_i2t, sim_t2i


HardNegatives = Literal["lavis", "renormalized"]


@torch.no_grad()
def sample_hard_negatives(sim: torch.Tensor, image_ids: Optional[torch.Tensor] = None,
                          image_ids_all: Optional[torch.Tensor] = None, how: HardNegatives = "lavis") -> torch.Tensor:
    """For each row of ``sim`` [B, B*world] (this rank's rows), the global column index of a negative, never a
    positive (the pair itself; with image ids, no caption of the same image). ``lavis``: drawn with weights
    softmax(sim) + 1e-4, positives zeroed, one draw per row (LAVIS's weights and its use of the random
    generator: the same seed draws the same negatives); ``renormalized``: softmax over the negatives alone,
    one draw for the batch."""
    b = sim.shape[0]
    if image_ids is not None:
        forbid = image_ids[:, None] == image_ids_all[None, :]
    else:
        forbid = torch.zeros_like(sim, dtype=torch.bool)
        idx = torch.arange(b, device=sim.device)
        forbid[idx, idx + dist.rank() * b] = True
    if forbid.all(1).any():
        raise ConfigError("ITM has no negative for some sample: every candidate in the global batch is a positive "
                         "(the batch holds a single image); use a larger batch or drop 'itm' from model.losses")
    if how == "lavis":
        weights = (torch.softmax(sim.float(), 1) + 1e-4).masked_fill(forbid, 0.0)
        return torch.cat([torch.multinomial(row, 1) for row in weights])
    weights = torch.softmax(sim.float().masked_fill(forbid, float("-inf")), 1)
    return torch.multinomial(weights, 1).squeeze(1)


@MODELS.register("blip2_qformer")
class Blip2QFormer(Blip2Base):
    """Args:
        image_encoder: a registered image encoder (frozen by its own ``freeze`` key).
        qformer: sizes and BERT initialisation (:class:`framework.models.blip2.QFormerArgs`).
        embed_dim: width of the ITC embedding space. max_txt_len: text tokens kept (longer text is cut).
        losses: the stage-1 objectives to train (any non-empty subset of itc, itm, itg).
        label_smoothing: for ITC and ITG, as LAVIS. temperature: initial ITC temperature (learned).
        clamp_temperature: keep the temperature in [0.001, 0.5] before every step (BLIP-1 does; LAVIS's BLIP-2
            does not, the default).
        itc_gather_grad: back-propagate ITC through the features gathered from every rank, so each similarity
            matrix trains both of its sides. false (LAVIS, the paper): the gathered features (this rank's own
            copy included) carry no gradient; the image side trains through image-to-text similarities only and
            the text side through text-to-image ones, about half the gradient.
        hard_negatives: how ITM draws its negatives (:func:`sample_hard_negatives`): ``lavis`` (default) or
            ``renormalized``.
        use_image_ids: treat captions of the same image in a batch as positives (ITC soft targets; never
            ITM negatives). LAVIS's BLIP-2 never does (the default); with several captions per image in a
            batch it is the correct target (``finetune/retrieval_coco.yaml`` sets it).
    """

    def __init__(self, image_encoder: Part("image_encoder"), qformer: QFormerArgs = QFormerArgs(),
                 embed_dim: Annotated[int, Range(1)] = 256, max_txt_len: Annotated[int, Range(2)] = 32,
                 losses: List[Loss] = ("itc", "itm", "itg"),
                 label_smoothing: Annotated[float, Range(0, 1, hi_open=True)] = 0.1,
                 temperature: Annotated[float, Range(0.001, 0.5)] = 0.07, clamp_temperature: bool = False,
                 itc_gather_grad: bool = False, hard_negatives: HardNegatives = "lavis",
                 use_image_ids: bool = False) -> None:
        super().__init__(image_encoder, qformer, max_txt_len)
        if not losses:
            raise ConfigError("model.losses is empty: name at least one of itc, itm, itg")
        hidden = qformer.hidden_size
        self.vision_proj = nn.Linear(hidden, embed_dim)
        self.text_proj = nn.Linear(hidden, embed_dim)
        self.itm_head = nn.Linear(hidden, 2)
        self.temp = nn.Parameter(torch.tensor(float(temperature)))
        self.losses, self.label_smoothing, self.use_image_ids = list(losses), label_smoothing, use_image_ids
        self.clamp_temperature, self.itc_gather_grad = clamp_temperature, itc_gather_grad
        self.hard_negatives: HardNegatives = hard_negatives
        if "itg" not in self.losses:  # the ITG ablation: no LM head, no parameters without a gradient
            self.qformer.lm_head = None

    # ------------------------------------------------------------------------------------------ training
    def forward(self, batch: Dict[str, Any]) -> Dict[str, torch.Tensor]:
        if self.clamp_temperature:
            with torch.no_grad():
                self.temp.clamp_(0.001, 0.5)
        image_embeds = self.encode_image(batch["image"])
        ids, mask = self.tokenize(batch["text_input"], pad_to_max=dist.is_dist())  # equal widths to gather
        image_ids = batch.get("image_id") if self.use_image_ids else None
        n_query = self.qformer.num_query_tokens
        image_kv = self.qformer.project_image(image_embeds)  # shared by the ITC and ITM passes
        out = self.qformer("itc", image_kv=image_kv, input_ids=ids, text_mask=mask,
                           cache_queries="itg" in self.losses)
        image_feats = F.normalize(self.vision_proj(out.hidden[:, :n_query]), dim=-1)
        text_feat = F.normalize(self.text_proj(out.hidden[:, n_query]), dim=-1)
        loss_itc, sim_i2t, sim_t2i = itc_loss(image_feats, text_feat, self.temp, image_ids, self.label_smoothing,
                                              self.itc_gather_grad)
        terms: Dict[str, torch.Tensor] = {}
        if "itc" in self.losses:
            terms["loss_itc"] = loss_itc
        if "itm" in self.losses:
            terms["loss_itm"] = self._itm(ids, mask, image_embeds, image_kv, sim_i2t, sim_t2i, image_ids)
        if "itg" in self.losses:
            terms["loss_itg"] = self._itg(ids, mask, out.past)
        return {"loss": sum(terms.values()), **terms}

    def _itm(self, ids: torch.Tensor, mask: torch.Tensor, image_embeds: torch.Tensor, image_kv, sim_i2t: torch.Tensor,
             sim_t2i: torch.Tensor, image_ids: Optional[torch.Tensor]) -> torch.Tensor:
        """Pairs [positive, (negative image, text), (image, negative text)]; the positive images' keys/values
        come from the ITC pass, only the negative images are projected here."""
        ids_all_images = None if image_ids is None else dist.all_gather_no_grad(image_ids)
        # a wrong image for each text, then a wrong text for each image (LAVIS's order)
        neg_image = sample_hard_negatives(sim_t2i, image_ids, ids_all_images, self.hard_negatives)
        neg_text = sample_hard_negatives(sim_i2t, image_ids, ids_all_images, self.hard_negatives)
        ids_all, mask_all = dist.all_gather_no_grad(ids), dist.all_gather_no_grad(mask)
        images_all = dist.all_gather_with_grad(image_embeds)
        # index_select, not images_all[neg_image]: an image drawn as the negative of several texts makes the
        # indexing backward an accumulating index_put_, which CPU runs with racing atomic adds (runs differ)
        neg_kv = self.qformer.project_image(images_all.index_select(0, neg_image))
        kv = [None if p is None else (torch.cat([p[0], n[0], p[0]]), torch.cat([p[1], n[1], p[1]]))
              for p, n in zip(image_kv, neg_kv)]
        out = self.qformer("itm", image_kv=kv, input_ids=torch.cat([ids, ids, ids_all[neg_text]]),
                           text_mask=torch.cat([mask, mask, mask_all[neg_text]]))
        logits = self.itm_head(out.hidden[:, :self.qformer.num_query_tokens]).mean(1)
        b = ids.shape[0]
        labels = torch.cat([torch.ones(b), torch.zeros(2 * b)]).long().to(logits.device)
        return F.cross_entropy(logits, labels)

    def _itg(self, ids: torch.Tensor, mask: torch.Tensor, query_past) -> torch.Tensor:
        dec = ids.clone()
        dec[:, 0] = self.qformer.dec_token_id
        labels = dec.masked_fill(mask == 0, -100)
        out = self.qformer("itg", input_ids=dec, text_mask=mask, past=query_past)
        target = labels[:, 1:]
        keep = target != -100  # the vocabulary projection only where there is a next token to predict
        logits = self.qformer.lm_head(out.hidden[:, :-1][keep])
        return F.cross_entropy(logits, target[keep], label_smoothing=self.label_smoothing)

    # ---------------------------------------------------------------------------------------- retrieval
    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """[B, Q, embed_dim] normalised query embeddings."""
        return self._query_embeds(self.qformer.project_image(self.encode_image(images)))

    def _query_embeds(self, image_kv) -> torch.Tensor:
        return F.normalize(self.vision_proj(self.qformer("itc", image_kv=image_kv).hidden), dim=-1)

    def text_features(self, texts: List[str]) -> torch.Tensor:
        """[B, embed_dim] normalised text [CLS] embeddings (the unimodal text path)."""
        ids, mask = self.tokenize(texts)
        out = self.qformer("itc", input_ids=ids, text_mask=mask, with_queries=False)
        return F.normalize(self.text_proj(out.hidden[:, 0]), dim=-1)

    def similarity(self, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        return torch.einsum("iqd,td->itq", image_features, text_features).amax(-1)

    def image_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """[B, N, D] what ITM reads of each image (the frozen encoder's tokens after ``ln_vision``)."""
        return self.encode_image(images)

    def match_scores(self, image_tokens: torch.Tensor, texts: List[str]) -> torch.Tensor:
        """[B] ITM score of each (image i, text i) pair: the match logit averaged over the queries (as LAVIS
        re-ranks with). ``image_tokens`` [1, N, D]: one image against every text, its keys/values projected
        once."""
        ids, mask = self.tokenize(texts)
        out = self.qformer("itm", image=image_tokens, input_ids=ids, text_mask=mask)
        return self.itm_head(out.hidden[:, :self.qformer.num_query_tokens])[..., 1].mean(1)

    def itm_scores(self, images: torch.Tensor, texts: List[str]) -> torch.Tensor:
        """P(match) of each (image i, text i) pair."""
        ids, mask = self.tokenize(texts)
        out = self.qformer("itm", image=self.encode_image(images), input_ids=ids, text_mask=mask)
        logits = self.itm_head(out.hidden[:, :self.qformer.num_query_tokens]).mean(1)
        return logits.softmax(-1)[:, 1]
