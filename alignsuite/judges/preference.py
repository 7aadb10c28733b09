"""Pairwise preference judges: for one prompt and its K outputs, a K x K win matrix ``P`` with ``P[i][j]`` the
probability that output ``i`` is preferred over output ``j`` (``P[i][i] = 0.5``, ``P[i][j] + P[j][i] = 1``), as
PairRM gives and SPPO, DNO and the iREPO family read.

- :class:`BradleyTerryJudge` turns any :class:`alignsuite.judging.Scorer`'s main value into such a matrix;
- :class:`PairwiseClassifier` asks a sequence-classification model about both orders of every pair.

An output the judge cannot judge (a failed generation, a value that came back ``None`` or NaN) makes its row and
column NaN, its diagonal too, and is counted (:attr:`PreferenceJudge.failures`, :meth:`PreferenceJudge.failure_report`);
it never becomes a number. :func:`win_rates` makes the matrix one score per output (SPPO's estimated win rate).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch

from alignsuite.components import build_object, default_device
from alignsuite.data.procedures.judgements import failed, sigmoid
from alignsuite.judges.failures import Failures
from alignsuite.judging import Scorer, check_modality, check_weights, load_pretrained, prompt_text

Matrix = list[list[float]]
NAN = float("nan")


def win_rates(matrix: Matrix) -> list[float]:
    """Each output's estimated win rate, the mean of its row of ``matrix`` **with the diagonal** (SPPO's
    ``Phat_i = (1/K) sum_j P_ij``, whose ``j = i`` term adds ``0.5/K``). NaN entries (outputs that could not
    be judged) are left out of the mean, so a judged output's rate is over the judged ones; a row that is
    all NaN (an output not judged) has the rate NaN."""
    rates = []
    for row in matrix:
        have = [p for p in row if not math.isnan(p)]
        rates.append(sum(have) / len(have) if have else NAN)
    return rates


class PreferenceJudge:
    """A judge of K outputs at once: :meth:`win_matrix` for one prompt, :meth:`win_matrices` for many (a
    subclass implements :meth:`matrices`, which the two call). ``modalities`` lists the models whose outputs it
    fits, as :class:`alignsuite.judging.Scorer`'s does; :meth:`check_modality` refuses the others.

    ``failures`` counts the outputs judged NaN since the judge was built (or :meth:`reset_failures`); a failed
    row's index is its position among all outputs judged, flattened prompt by prompt.
    """

    name: str = "preference"
    unit: str = "probability"
    higher_is_better: bool = True
    modalities: tuple[str, ...] = ()
    batch_size: int = 16
    rewrites: dict[str, dict[str, str]] = {}

    def __init__(self) -> None:
        self.failures = Failures("outputs without a judgement (NaN)", unit="output")

    def columns(self, modality: str) -> dict[str, str]:
        """The prompt set's columns this judge reads (see :meth:`alignsuite.judging.Scorer.columns`)."""
        return {}

    def check_modality(self, modality: str, option: str = "iterate.judge") -> None:
        check_modality(self, modality, option)

    def win_matrix(self, prompt: Any, outputs: Sequence[Any], row: dict | None = None, condition: Any = None) -> Matrix:
        """The K x K matrix of ``outputs`` (K of them) for ``prompt``; ``row`` is the prompt set's row, ``condition``
        the prompt's input images for a vision-language model."""
        return self.win_matrices([prompt], [outputs], None if row is None else [row],
                                 None if condition is None else [condition])[0]

    def win_matrices(self, prompts: Sequence[Any], candidates: Sequence[Sequence[Any]], rows: Sequence[dict] | None = None,
                     conditions: Sequence[Any] | None = None) -> list[Matrix]:
        """One matrix per prompt, of that prompt's outputs (``candidates[p]``, any number each)."""
        for what, given in (("candidates", candidates), ("rows", rows), ("conditions", conditions)):
            if given is not None and len(given) != len(prompts):
                raise ValueError(f"{type(self).__name__}: {len(given)} {what} for {len(prompts)} prompts; expected one"
                                 " per prompt")
        candidates = [list(c) for c in candidates]
        matrices = self.matrices(list(prompts), candidates, None if rows is None else list(rows),
                                 None if conditions is None else list(conditions))
        for p, matrix in enumerate(matrices):
            for k, line in enumerate(matrix):
                if math.isnan(line[k]):
                    self.failures.add(self.failures.seen + k, f"prompt {p}, output {k}")
            self.failures.seen += len(matrix)
        return matrices

    def score_lists(self, prompts: Sequence[Any], candidates: Sequence[Sequence[Any]], rows: Sequence[dict] | None = None,
                    conditions: Sequence[Any] | None = None) -> list[list[float]]:
        """The judge as a scorer of K outputs: each prompt's :func:`win_rates`."""
        return [win_rates(m) for m in self.win_matrices(prompts, candidates, rows, conditions)]

    def failure_report(self) -> str:
        return self.failures.report()

    def reset_failures(self) -> None:
        self.failures.reset()

    def matrices(self, prompts: list, candidates: list[list], rows: list | None, conditions: list | None) -> list[Matrix]:
        raise NotImplementedError


def nan_rows(matrix: Matrix, bad: Sequence[int]) -> Matrix:
    """``matrix`` with the rows and columns of ``bad`` (and their diagonal entries) NaN."""
    for k in bad:
        for j in range(len(matrix)):
            matrix[k][j] = matrix[j][k] = NAN
    return matrix


class BradleyTerryJudge(PreferenceJudge):
    """A scorer's main value ``r`` as pairwise probabilities, the Bradley-Terry way:
    ``P_ij = sigmoid((r_i - r_j) / temperature)``.

    With ``temperature = 1`` this is how SPPO turns PairRM's scores into probabilities (``scripts/compute_prob.py``
    of its official code, ``1 / (1 + exp(s_j - s_i))`` for every ordered pair, the diagonal 0.5 included).
    For a scorer where lower is better (an error rate) the difference is taken the other way round, so that
    ``P_ij`` is still the probability that ``i`` is the better output. A value that is ``None`` or NaN makes that
    output's row and column NaN, and is counted.

    Args:
        scorer: any :class:`alignsuite.judging.Scorer` (or its ``class_path``/``init_args``); its main value is used.
        temperature: divides the value differences; above 0 (larger: softer preferences).
    """

    def __init__(self, scorer: Scorer | dict | str, temperature: float = 1.0) -> None:
        super().__init__()
        scorer = build_object(scorer)
        if not isinstance(scorer, Scorer):
            raise ValueError(f"BradleyTerryJudge.scorer must be an alignsuite.judging.Scorer, got {type(scorer).__name__}")
        if not (isinstance(temperature, (int, float)) and temperature > 0 and math.isfinite(temperature)):
            raise ValueError(f"BradleyTerryJudge.temperature must be a positive number, got {temperature!r}")
        self.scorer, self.temperature = scorer, float(temperature)
        # Not the scorer's rewrites: a row here is a prompt's, so it cannot hold each output's counterfactual (the
        # main value, all this judge reads, needs none).
        self.name, self.modalities, self.batch_size = scorer.name, tuple(scorer.modalities), scorer.batch_size

    def columns(self, modality: str) -> dict[str, str]:
        return self.scorer.columns(modality)

    def matrices(self, prompts, candidates, rows, conditions):
        flat = [(p, k) for p, outs in enumerate(candidates) for k in range(len(outs))]
        values = self.scorer.score([prompts[p] for p, _ in flat], [candidates[p][k] for p, k in flat],
                                   None if conditions is None else [conditions[p] for p, _ in flat],
                                   None if rows is None else [rows[p] for p, _ in flat])
        sign = 1.0 if self.scorer.higher_is_better else -1.0
        out, at = [], 0
        for outs in candidates:
            r = values[at : at + len(outs)]
            at += len(outs)
            matrix = [[0.5 if i == j or failed(r[i]) or failed(r[j]) else sigmoid(sign * (r[i] - r[j]) / self.temperature)
                       for j in range(len(r))] for i in range(len(r))]
            out.append(nan_rows(matrix, [k for k, v in enumerate(r) if failed(v)]))
        return out


PAIR_TEMPLATE = "Prompt: {prompt}\nResponse A: {response_a}\nResponse B: {response_b}\nIs response A better than response B?"


class PairwiseClassifier(PreferenceJudge):
    """A sequence-classification model (``AutoModelForSequenceClassification``) that reads a prompt and two
    candidates and answers with a logit for "A is better than B" (a model with one label: that logit; with two:
    label 1's logit minus label 0's). Every pair is shown in both orders and the two answers averaged, as
    PairRM compares them: ``P_ij = (s(f(i, j)) + 1 - s(f(j, i))) / 2``, so ``P_ij + P_ji = 1`` whatever the model.
    K outputs cost ``K (K - 1)`` forwards. Inputs longer than ``max_length`` tokens are cut at the end (response B
    first): keep it above what the template, the prompt and two answers need. The model reads text only.

    Args:
        model_name_or_path: a folder written by ``save_pretrained``, or a hub id.
        template: the input text, with the fields ``{prompt}``, ``{response_a}`` and ``{response_b}``.
        max_length: inputs are truncated to this many tokens.
        name: the judge's name in logs and reports.
    """

    modalities = ("text", "vision_language")
    HOW = "give a folder written by save_pretrained, or a hub id"

    def __init__(self, model_name_or_path: str, template: str = PAIR_TEMPLATE, max_length: int = 1024,
                 dtype: str = "auto", device: str | None = None, batch_size: int = 8,
                 name: str = "pairwise_preference") -> None:
        super().__init__()
        check_weights(model_name_or_path, "PairwiseClassifier.model_name_or_path", self.HOW)
        missing = [f for f in ("{prompt}", "{response_a}", "{response_b}") if f not in template]
        if missing:
            raise ValueError(f"PairwiseClassifier.template lacks the field(s) {', '.join(missing)}; it must hold"
                             " {prompt}, {response_a} and {response_b}")
        self.model_name_or_path, self.template, self.max_length, self.dtype = model_name_or_path, template, max_length, dtype
        self.device, self.batch_size, self.name = default_device(device), batch_size, name
        self.model = self.tokenizer = None

    def load(self):
        if self.model is None:
            from transformers import AutoModelForSequenceClassification, AutoTokenizer

            what, path = "PairwiseClassifier.model_name_or_path", self.model_name_or_path
            model = load_pretrained(AutoModelForSequenceClassification, path, what, self.HOW, dtype=self.dtype)
            if model.config.num_labels not in (1, 2):
                raise ValueError(f"{what}: the model at {path!r} has {model.config.num_labels} labels; a pairwise"
                                 " classifier has one (the logit of 'A is better') or two (label 1: A is better)")
            self.model = model.eval().to(self.device)
            self.tokenizer = load_pretrained(AutoTokenizer, path, f"{what} (tokenizer)", self.HOW)
            if self.tokenizer.pad_token is None:
                self.tokenizer.pad_token = self.tokenizer.eos_token
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        return self.model, self.tokenizer

    def text(self, prompt: Any, first: Any, second: Any) -> str:
        fields = {"{prompt}": prompt_text(prompt), "{response_a}": str(first), "{response_b}": str(second)}
        out = self.template
        for field_, value in fields.items():  # not str.format: a template may hold other braces
            out = out.replace(field_, value)
        return out

    @torch.no_grad()
    def logits(self, texts: list[str]) -> list[float]:
        """The model's "A is better" logit of each input, ``batch_size`` at a time."""
        model, tok = self.load()
        out: list[float] = []
        for start in range(0, len(texts), self.batch_size):
            enc = tok(texts[start : start + self.batch_size], return_tensors="pt", padding=True, truncation=True,
                      max_length=self.max_length).to(self.device)
            logits = model(**enc).logits.float()
            out += (logits[:, 0] if logits.shape[1] == 1 else logits[:, 1] - logits[:, 0]).tolist()
        return out

    def matrices(self, prompts, candidates, rows, conditions):
        asks = [(p, i, j) for p, outs in enumerate(candidates) for i in range(len(outs)) for j in range(len(outs))
                if i != j and outs[i] is not None and outs[j] is not None]
        logit = dict(zip(asks, self.logits([self.text(prompts[p], candidates[p][i], candidates[p][j])
                                            for p, i, j in asks])))
        out = []
        for p, outs in enumerate(candidates):
            k = range(len(outs))
            matrix = [[0.5 if (p, i, j) not in logit else (sigmoid(logit[p, i, j]) + 1 - sigmoid(logit[p, j, i])) / 2
                       for j in k] for i in k]
            out.append(nan_rows(matrix, [i for i in k if outs[i] is None]))
        return out


__all__ = ["BradleyTerryJudge", "Matrix", "PairwiseClassifier", "PreferenceJudge", "nan_rows", "sigmoid", "win_rates"]
