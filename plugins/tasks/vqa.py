"""``vqa``: zero-shot / fine-tuned visual question answering with the standard VQA accuracy.

An answer is generated after the per-LLM prompt (the paper: "Question: {} Answer:" for OPT, "Question: {}
Short answer:" for FlanT5), beam 5, length penalty -1 (short answers). Scoring follows the official VQA
evaluation: when the annotators disagree, answers are normalised (punctuation, number words to digits, articles
dropped, contractions restored); the accuracy of an answer is min(#annotators who gave it / 3, 1), averaged
over the ten leave-one-annotator-out subsets. ``metric: exact`` scores GQA-style single answers by exact match
after the same normalisation. Samples carrying ``ocr_tokens`` (words an OCR system read in the image; a records
file's field) need a template with two ``{}``: the first 30 tokens joined by ", ", then the question, as LAVIS's
InstructBLIP prompts TextVQA ("OCR tokens: {}. Question: {} Short answer:").
Predictions go to ``<output_dir>/predictions`` as ``[{"question_id", "answer"}]``.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Dict, List, Literal, Optional, Tuple

import torch
from torch import nn
from torch.utils.data import DataLoader

from framework.core import dist
from framework.core.errors import ConfigError
from framework.core.logs import logger
from framework.core.registry import TASKS
from framework.engine.task import Task
from framework.models.interfaces import Generative, RanksAnswers

# the official evaluation's normalisation tables
PUNCTUATION = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]
NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
                "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = {"a", "an", "the"}
CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't", "dont": "don't",
    "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't", "havent": "haven't",
    "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd", "howll": "how'll",
    "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've", "isnt": "isn't", "itd": "it'd",
    "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't",
    "mustve": "must've", "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've",
    "she'dve": "she'd've", "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've", "somebodyll": "somebody'll",
    "somebodys": "somebody's", "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's", "thered": "there'd",
    "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're", "theres": "there's", "theyd": "they'd",
    "theyd've": "they'd've", "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've",
    "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't",
    "whatll": "what'll", "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's",
    "whered": "where'd", "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll",
    "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've"}
_DIGIT_COMMA = re.compile(r"(\d)(,)(\d)")
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")


def normalize_answer(text: str) -> str:
    """The official VQA answer normalisation: punctuation, number words, articles, contractions."""
    text = text.replace("\n", " ").replace("\t", " ").strip()
    for p in PUNCTUATION:  # kept apart from words: removed; inside a word (e.g. "t-shirt"): a space
        if p + " " in text or " " + p in text or _DIGIT_COMMA.search(text) is not None:
            text = text.replace(p, "")
        else:
            text = text.replace(p, " ")
    text = _PERIOD.sub("", text)
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    return " ".join(CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES)


def vqa_accuracy(answer: str, annotations: List[str]) -> float:
    """min(#other annotators who gave ``answer`` / 3, 1), averaged over leaving each annotator out."""
    answer = answer.replace("\n", " ").replace("\t", " ").strip()
    if len(set(annotations)) > 1:
        annotations = [normalize_answer(a) for a in annotations]
        answer = normalize_answer(answer)
    scores = [min(1.0, sum(a == answer for j, a in enumerate(annotations) if j != i) / 3)
              for i in range(len(annotations))]
    return sum(scores) / len(scores)


def lemmatize(answer: str) -> str:
    """Each word of an answer as its noun lemma where it can be a noun, else its verb lemma, else as it is ("dogs"
    -> "dog", "skiing" -> "ski"). LAVIS's OK-VQA evaluation lemmatises the words spaCy's ``en_core_web_sm`` tags
    NOUN or VERB in context; this reads lemminflect's dictionary, whose data ships in its PyPI package, without
    context: a word both a noun and a verb takes its noun lemma ("leaves" -> "leave", where spaCy says "leaf" for
    the noun and "leave" for the verb), and auxiliaries ("is", "are") stay as they are, as spaCy tags them AUX."""
    from lemminflect import getAllLemmas

    words = []
    for word in answer.split():
        lemmas = getAllLemmas(word)
        pick = None if "AUX" in lemmas else lemmas.get("NOUN") or lemmas.get("VERB")
        words.append(pick[0] if pick else word)
    return " ".join(words)


def read_answer_list(path: str) -> List[str]:
    """The candidate answers of ``task.answer_list``: a JSON list of strings, checked before any work."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"task.answer_list: {file} does not exist; give a JSON file holding a list of answers "
                          f"(LAVIS's answer_list.json), or leave answer_list out to generate answers")
    try:
        answers = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"task.answer_list: {file} is not JSON ({e}); it must hold a list of answers") from e
    if not isinstance(answers, list) or not answers or not all(isinstance(a, str) and a.strip() for a in answers):
        raise ConfigError(f"task.answer_list: {file} must hold a non-empty list of non-empty strings")
    return answers


@TASKS.register("vqa")
class VQA(Task):
    """Args:
        prompt_template: the text after the visual prompt, a template: ``{}`` is the question (a literal text is
            called ``prompt`` elsewhere: the captioning task's, the model's); with OCR tokens in the data, two
            ``{}``: the tokens, then the question.
        metric: ``vqa`` (ten annotators, VQAv2 / OK-VQA) or ``exact`` (one answer, GQA).
        num_beams, max_new_tokens, length_penalty: decoding (the paper: 5, 10, -1).
        min_length: the shortest answer as LAVIS's ``min_len`` counts it (1: with the prompt's tokens for OPT, so
            an empty answer may come out, as there; with the decoder's start token for FlanT5).
        min_new_tokens: when set, the shortest answer in generated tokens, replacing ``min_length``.
        lemmatize: answers' nouns and verbs lemmatised before scoring and saving (:func:`lemmatize`), as LAVIS
            evaluates OK-VQA (``apply_lemmatizer``).
        answer_list: a JSON file holding a list of candidate answers (closed-vocabulary VQA, LAVIS's
            ``answer_list.json``): each answer is the most likely candidate after the prompted question
            (``rank_answers``, LAVIS's InstructBLIP ``predict_class``), not generated text. null: generated.
        n_segments: the candidates go through the LLM in this many batches (memory against speed; LAVIS's key).
    """

    best_metric = "accuracy"
    best_mode = "max"

    def __init__(self, prompt_template: str = "Question: {} Answer:", metric: Literal["vqa", "exact"] = "vqa",
                 num_beams: int = 5, max_new_tokens: int = 10, min_length: int = 1,
                 min_new_tokens: Optional[int] = None, length_penalty: float = -1.0, lemmatize: bool = False,
                 answer_list: Optional[str] = None, n_segments: int = 1) -> None:
        if prompt_template.count("{}") not in (1, 2):
            raise ConfigError(f"task.prompt_template {prompt_template!r} needs '{{}}' where the question goes, e.g. "
                              f"'Question: {{}} Answer:' (with OCR tokens, two: 'OCR tokens: {{}}. Question: {{}} "
                              f"Short answer:')")
        self.prompt_template, self.metric, self.lemmatize = prompt_template, metric, lemmatize
        self.decoding = dict(num_beams=num_beams, max_new_tokens=max_new_tokens, min_length=min_length,
                             min_new_tokens=min_new_tokens, length_penalty=length_penalty)
        self.candidates = None if answer_list is None else read_answer_list(answer_list)
        if self.candidates is not None and not 1 <= n_segments <= len(self.candidates):
            raise ConfigError(f"task.n_segments={n_segments}: give 1 to the number of candidates "
                              f"({len(self.candidates)} in {answer_list})")
        self.n_segments = n_segments

    def prompts(self, batch: Dict) -> List[str]:
        """The prompted questions of a batch, its OCR tokens first where it has them (LAVIS: the first 30)."""
        slots, ocr = self.prompt_template.count("{}"), "ocr_tokens" in batch
        if slots != 1 + ocr:
            raise ConfigError(f"task.prompt_template {self.prompt_template!r} has {slots} '{{}}' but the data "
                              f"{'has' if ocr else 'has no'} ocr_tokens: give " + (
                                  "two, the OCR tokens' then the question's, e.g. 'OCR tokens: {}. Question: {} "
                                  "Short answer:'" if ocr else "one, where the question goes"))
        if ocr:
            return [self.prompt_template.format(", ".join(t[:30]), q)
                    for t, q in zip(batch["ocr_tokens"], batch["question"])]
        return [self.prompt_template.format(q) for q in batch["question"]]

    def example_batch(self, model: nn.Module, batch_size: int, text_tokens: int) -> Dict:
        """The model's batch with half its text as each question (the template takes the rest of the Q-Former's
        room) and its text as the answer."""
        batch = model.example_batch(batch_size, text_tokens)
        question = " ".join(batch["text_input"][0].split()[:max(1, text_tokens // 2)])
        return batch | {"question": [question] * batch_size, "answers": [[t] for t in batch["text_input"]]}

    def train_step(self, model: nn.Module, batch: Dict) -> Dict[str, torch.Tensor]:
        """Fine-tuning: the most frequent annotator answer is the target after the prompted question."""
        answers = [max(set(a), key=a.count) for a in batch["answers"]]
        return model({**batch, "prompt": self.prompts(batch), "text_input": answers})

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: DataLoader, predictions: Optional[Path] = None) -> Dict[str, float]:
        if self.candidates is None:
            self.require(model, Generative, "a generative model such as blip2_generative")
        else:
            self.require(model, RanksAnswers, "with task.answer_list, a model that ranks answers (blip2_generative "
                                              "over a decoder-only LLM)")
        device = next(model.parameters()).device
        local = {}
        for batch in loader:
            prompts = self.prompts(batch)
            images = batch["image"].to(device)
            if self.candidates is None:
                answers = model.generate(images, prompts, **self.decoding)
            else:
                order = model.rank_answers(images, prompts, self.candidates, self.n_segments)
                answers = [self.candidates[row[0]] for row in order]
            if self.lemmatize:
                answers = [lemmatize(a) for a in answers]
            types = batch.get("answer_type") or [""] * len(answers)
            for qid, ans, gts, kind in zip(batch["question_id"].tolist(), answers, batch["answers"], types):
                local[qid] = (ans, gts, kind)
        merged = dist.gather_dict(local)
        self.save_predictions([{"question_id": q, "answer": a} for q, (a, _, _) in sorted(merged.items())], predictions)
        return self.score(list(merged.values()))

    def score(self, results: List[Tuple[str, List[str], str]]) -> Dict[str, float]:
        """``accuracy`` over (answer, annotator answers, answer type) triples, and per answer type as the
        official evaluation reports it (``accuracy_yes/no``, ``accuracy_number``, ``accuracy_other``). A split
        without public answers (VQAv2 test-dev) gets no accuracy: its predictions are for the evaluation server."""
        if not any(g for _, g, _ in results):
            logger.info("no answers in this split (%d questions): predictions written for the official evaluation "
                        "server, no accuracy computed", len(results))
            return {"questions": float(len(results))}
        unanswered = sum(not g for _, g, _ in results)
        if unanswered:  # scored on the questions that have answers; the count is said
            logger.warning("%d of %d questions have no answers and are not scored", unanswered, len(results))
            results = [r for r in results if r[1]]
        if self.metric == "exact":
            scores = [float(normalize_answer(a) == normalize_answer(g[0])) for a, g, _ in results]
        else:
            scores = [vqa_accuracy(a, g) for a, g, _ in results]
        out = {"accuracy": 100.0 * sum(scores) / len(scores)}
        for kind in sorted({k for _, _, k in results if k}):
            mine = [s for s, (_, _, k) in zip(scores, results) if k == kind]
            out[f"accuracy_{kind}"] = 100.0 * sum(mine) / len(mine)
        return out
