"""LLM adapters: the LM loss against a written-out reference, generation batched and alone, freezing."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tiny_llms import make_tiny_llama, make_tiny_opt, make_tiny_t5

from framework.core.errors import ConfigError
from framework.core.registry import LLMS

PROMPTS = ["a photo of", "question : what color is the circle ? answer :"]
TARGETS = ["a red circle and a blue square", "red"]


@pytest.fixture(scope="module")
def opt(tmp_path_factory):
    return LLMS.get("opt")(path=str(make_tiny_opt(tmp_path_factory.mktemp("opt"))), precision="fp32")


@pytest.fixture(scope="module")
def t5(tmp_path_factory):
    return LLMS.get("flant5")(path=str(make_tiny_t5(tmp_path_factory.mktemp("t5"))), precision="fp32")


def test_decoder_only_loss_counts_only_the_target_tokens(tmp_path: Path) -> None:
    """Prompt and target tokenised apart (``joint_tokens: false``), ended by the tokenizer's EOS."""
    opt = LLMS.get("opt")(path=str(make_tiny_opt(tmp_path / "opt")), precision="fp32", end_of_text="</s>",
                          joint_tokens=False)
    torch.manual_seed(0)
    prefix = torch.randn(2, 3, opt.hidden_size)
    loss = opt.lm_loss(prefix, PROMPTS, TARGETS)
    tok, eos = opt.tokenizer, opt.tokenizer.eos_token_id
    total, count = 0.0, 0
    for i in range(2):  # each sample alone, no padding: [prefix, prompt, target, eos]
        p = tok(PROMPTS[i])["input_ids"]
        t = tok(TARGETS[i], add_special_tokens=False)["input_ids"] + [eos]
        ids = torch.tensor(p + t)
        logits = opt.model(inputs_embeds=torch.cat([prefix[i], opt.embed(ids)])[None]).logits[0]
        start = prefix.shape[1] + len(p)  # first target position; predicted from the one before it
        total += F.cross_entropy(logits[start - 1:-1], torch.tensor(t), reduction="sum")
        count += len(t)
    assert float(loss) == pytest.approx(float(total / count), rel=1e-5)


@pytest.mark.parametrize("prompts", [PROMPTS, ["", ""]])
def test_decoder_only_loss_as_lavis_computes_it(opt, prompts) -> None:
    """The default, LAVIS's Blip2OPT.forward written out: prompt + " " + target + "\\n" tokenised as one string
    (with the start token), the prompt's own tokens out of the loss, none out when the prompt is empty."""
    torch.manual_seed(0)
    prefix = torch.randn(2, 3, opt.hidden_size)
    assert opt.end_of_text == "\n" and opt.stop_token_id() == opt.tokenizer("\n", add_special_tokens=False)[
        "input_ids"][0]
    assert float(opt.lm_loss(prefix, prompts, TARGETS)) == pytest.approx(_written_out_loss(opt, prefix, prompts),
                                                                         rel=1e-5)


def _written_out_loss(adapter, prefix: torch.Tensor, prompts) -> float:
    """A decoder-only LM loss by hand: per sample, [prefix, tokens of prompt + " " + target + end of text] through
    the Hugging Face model, the prefix's and the prompt's own tokens out of the loss, averaged over the tokens."""
    tok = adapter.tokenizer
    total, count = 0.0, 0
    for i in range(len(prompts)):
        ids = tok((prompts[i] + " " if prompts[i] else "") + TARGETS[i] + adapter.end_of_text)["input_ids"]
        skip = len(tok(prompts[i])["input_ids"]) if prompts[i] else 0
        logits = adapter.model(inputs_embeds=torch.cat([prefix[i], adapter.embed(torch.tensor(ids))])[None]).logits[0]
        labels = torch.tensor([-100] * (prefix.shape[1] + skip) + ids[skip:])
        total += float(F.cross_entropy(logits[:-1], labels[1:], reduction="sum"))
        count += len(ids) - skip
    return total / count


def test_encoder_decoder_loss_puts_prefix_and_prompt_in_the_encoder(t5) -> None:
    torch.manual_seed(0)
    prefix = torch.randn(2, 3, t5.hidden_size)
    loss = t5.lm_loss(prefix, PROMPTS, TARGETS)
    tok = t5.tokenizer
    total, count = 0.0, 0
    for i in range(2):
        enc = torch.cat([prefix[i], t5.embed(torch.tensor(tok(PROMPTS[i])["input_ids"]))])[None]
        labels = torch.tensor(tok(TARGETS[i])["input_ids"])[None]  # ends with </s>
        total += float(t5.model(inputs_embeds=enc, labels=labels).loss) * labels.shape[1]
        count += labels.shape[1]
    assert float(loss) == pytest.approx(total / count, rel=1e-5)


@pytest.mark.parametrize("name", ["opt", "t5"])
@pytest.mark.parametrize("beams", [1, 3])
def test_batched_generation_equals_one_at_a_time(name: str, beams: int, request) -> None:
    adapter = request.getfixturevalue(name)
    torch.manual_seed(1)
    prefix = torch.randn(2, 3, adapter.hidden_size)
    batched = adapter.generate(prefix, PROMPTS, num_beams=beams, max_new_tokens=6)
    alone = [adapter.generate(prefix[i:i + 1], PROMPTS[i:i + 1], num_beams=beams, max_new_tokens=6)[0]
             for i in range(2)]
    assert batched == alone and all(isinstance(t, str) for t in batched)
    several = adapter.generate(prefix, PROMPTS, num_beams=3, max_new_tokens=6, num_return_sequences=2)
    assert len(several) == 4


def test_frozen_in_its_precision(tmp_path: Path) -> None:
    folder = make_tiny_opt(tmp_path / "opt")
    lavis = LLMS.get("opt")(path=str(folder), precision="bf16")
    lavis.train()
    assert lavis.model.training  # LAVIS leaves the frozen LLM's dropout on while training
    adapter = LLMS.get("opt")(path=str(folder), precision="bf16", frozen_dropout=False)
    adapter.train()
    assert not adapter.training and not adapter.model.training
    assert not any(p.requires_grad for p in adapter.parameters())
    assert {p.dtype for p in adapter.parameters()} == {torch.bfloat16}
    loss = adapter.lm_loss(torch.randn(1, 2, adapter.hidden_size, requires_grad=True), ["a photo of"], ["a circle"])
    assert loss.requires_grad  # gradients reach the prefix (the projected queries), not the LLM


def test_wrong_folders_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nothing is not a Hugging Face model folder \(no config.json\)"):
        LLMS.get("opt")(path=str(tmp_path / "nothing"))
    opt_folder = make_tiny_opt(tmp_path / "opt")
    with pytest.raises(ConfigError, match=r"holds a 'opt' model, which FlanT5 does not read; it reads: t5 "
                                          r"\(registered LLM adapters: flant5, hf_causal_lm, llama, opt;"):
        LLMS.get("flant5")(path=str(opt_folder))
    t5_folder = make_tiny_t5(tmp_path / "t5")
    with pytest.raises(ConfigError, match=r"holds a 't5' model, which HFCausalLM does not read; it reads: .*llama"):
        LLMS.get("hf_causal_lm")(path=str(t5_folder))


def test_arch_names_the_fields_that_differ(tmp_path: Path) -> None:
    folder = make_tiny_opt(tmp_path / "opt")
    with pytest.raises(ConfigError, match=r"does not hold a opt-2.7b: hidden_size: 32 \(arch opt-2.7b: 2560\)"):
        LLMS.get("opt")(path=str(folder), arch="opt-2.7b")
    with pytest.raises(ConfigError, match=r"unknown architecture 'opt-3b' for OPT; known: opt-1.3b, opt-13b, "
                                          r"opt-2.7b, opt-6.7b"):
        LLMS.get("opt")(path=str(folder), arch="opt-3b")


def test_hf_causal_lm_reads_another_decoder_only_family(tmp_path: Path) -> None:
    adapter = LLMS.get("hf_causal_lm")(path=str(make_tiny_llama(tmp_path / "llama")), precision="fp32")
    assert adapter.model.config.model_type == "llama"
    prefix = torch.randn(2, 3, adapter.hidden_size)
    # the same loss as written out by hand (LLaMA's end of text: its EOS token)
    assert float(adapter.lm_loss(prefix, PROMPTS, TARGETS)) == pytest.approx(
        _written_out_loss(adapter, prefix, PROMPTS), rel=1e-5)
    batched = adapter.generate(prefix, PROMPTS, num_beams=2, max_new_tokens=4)
    alone = [adapter.generate(prefix[i:i + 1], PROMPTS[i:i + 1], num_beams=2, max_new_tokens=4)[0] for i in range(2)]
    assert batched == alone


def test_nucleus_sampling_is_seeded_and_gives_several_texts_per_sample(opt) -> None:
    prefix = torch.randn(2, 3, opt.hidden_size)
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        runs.append(opt.generate(prefix, PROMPTS, do_sample=True, top_p=0.9, num_beams=1, max_new_tokens=6,
                                 num_return_sequences=3))
    assert runs[0] == runs[1] and len(runs[0]) == 6  # 3 per sample, in sample order


def test_min_length_counts_what_lavis_counts(opt, t5) -> None:
    """LAVIS's min_len: a decoder-only LLM's sequence holds the prompt (padded to the batch's longest), an
    encoder-decoder's the decoder start token; min_new_tokens is what is left."""
    longest = max(len(opt.tokenizer(p)["input_ids"]) for p in PROMPTS)
    assert opt.new_tokens_for(20, PROMPTS) == 20 - longest and opt.new_tokens_for(1, PROMPTS) == 0
    assert t5.new_tokens_for(8, PROMPTS) == 7 and t5.new_tokens_for(1, PROMPTS) == 0


@pytest.mark.parametrize("name", ["opt", "t5"])
def test_a_long_prompt_is_cut_in_training_but_not_in_generation(name: str, request) -> None:
    """LAVIS cuts training text to max_txt_len but never a generation prompt: a long question keeps its end."""
    adapter = request.getfixturevalue(name)
    long = " ".join(["what color is the circle and the square ?"] * 6) + " answer :"
    assert len(adapter.ids([long], special=True, truncate=False)[0]) > adapter.max_txt_len
    embeds, _ = adapter.generation_inputs(torch.zeros(1, 3, adapter.hidden_size), [long])
    assert embeds.shape[1] == 3 + len(adapter.tokenizer(long)["input_ids"])  # the whole prompt
