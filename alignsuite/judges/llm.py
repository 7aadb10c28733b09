"""LLM-as-judge: a generating model reads a rubric with the prompt and a response, writes its assessment, and the
score is parsed from what it wrote. The model is one given in the config, or the policy being trained
(self-rewarding language models, Yuan et al. 2024, arXiv 2401.10020, whose judge is an additive 5-point rubric).

A judgement whose text holds no score, or a score outside ``[min_score, max_score]``, is ``None``, never a
number, and is counted with the first failing rows (:attr:`LLMJudge.failures`, :meth:`LLMJudge.failure_report`).
"""

from __future__ import annotations

import math
import re
from typing import Any, Sequence

from alignsuite.components import build_object
from alignsuite.judges.failures import Failures, clip
from alignsuite.judging import Scorer, prompt_text

RUBRIC = """\
Read the user's request and the response to it below, then grade the response with the additive 5-point scale \
described here. Points add up, one for each statement that holds:
- 1 point: the response is on topic and gives some information the request asks for, even if it is partial or \
holds some unrelated content.
- 1 more point: the response deals with a large part of the request, without answering it fully or directly.
- 1 more point: the response answers the core of the request in a useful way, whatever its shortcomings of \
style or order.
- 1 more point: the response is written the way a helpful assistant would write it, answers the request \
directly and fully, and is well organised; its focus or brevity could at most be slightly better.
- 1 more point: the response fits the request exactly, holds nothing superfluous, shows expert knowledge and \
reads well: it could hardly be improved.

Request: {prompt}

Response: {response}

Explain your grading in no more than 100 words. Then end with one line of this exact form: "Score: <points>"."""

SCORE_PATTERN = r"(?i)score:\s*(\d+(?:\.\d+)?)"


class LLMJudge(Scorer):
    """A language model as judge: ``template`` (with ``{prompt}`` and ``{response}``) filled in for each
    output, the model's answer generated (greedily by default: the same text judges the same way), and the
    score read from it by ``pattern`` (its first group; the last match in the text, since a judge ends with its
    verdict). Each judgement is ``{name: score, "judge_output": the model's text}``; a score that cannot be read
    or lies outside ``[min_score, max_score]`` is ``None`` and counted.

    The model is either ``backbone``, any alignsuite backbone that generates (``alignsuite.backbones.CausalLM``
    with a model path, given as ``class_path``/``init_args``, or an object), or, with ``policy: true``, the policy
    being trained (self-rewarding): the loop hands it over with :meth:`attach` before judging, and judging
    without one attached is an error. The model reads text only (a vision-language answer is judged without its
    image).

    Args:
        backbone: the model that judges; leave it out with ``policy: true``.
        policy: judge with the policy being trained (attached by the loop).
        template: the judge's prompt, with the fields ``{prompt}`` and ``{response}`` (other braces are kept as
            they are); the default is an additive 5-point rubric in the spirit of self-rewarding language models.
        pattern: a regular expression whose first group is the score.
        max_score, min_score: a parsed score outside these bounds is a failure.
        generation_kwargs: options for the model's ``generate`` (``max_new_tokens``; ``do_sample: true`` with a
            ``seed`` to sample).
        seed: handed to ``generate`` when given.
        as_chat: send the filled template as one user message (through the model's chat template); false sends
            it as plain text.
        name: the score's name in logs and data.
        keep_failures: how many failing rows are kept for the report.
    """

    unit = "points"
    modalities = ("text", "vision_language")

    def __init__(self, backbone: Any = None, policy: bool = False, template: str = RUBRIC, pattern: str = SCORE_PATTERN,
                 max_score: float = 5.0, min_score: float = 0.0, generation_kwargs: dict | None = None,
                 seed: int | None = None, as_chat: bool = True, name: str = "llm_judge", batch_size: int = 8,
                 keep_failures: int = 5) -> None:
        if policy and backbone is not None:
            raise ValueError("LLMJudge: give either LLMJudge.backbone (a model to judge with) or LLMJudge.policy: true"
                             " (the policy being trained judges), not both")
        if not policy and backbone is None:
            raise ValueError("LLMJudge needs a model: set LLMJudge.backbone (a backbone that generates, e.g."
                             " class_path alignsuite.backbones.CausalLM with its model_name_or_path) or"
                             " LLMJudge.policy: true (the policy being trained judges, as in self-rewarding)")
        missing = [f for f in ("{prompt}", "{response}") if f not in template]
        if missing:
            raise ValueError(f"LLMJudge.template lacks the field(s) {', '.join(missing)}; it must hold {{prompt}}"
                             " and {response}")
        try:
            self.pattern = re.compile(pattern)
        except re.error as error:
            raise ValueError(f"LLMJudge.pattern {pattern!r} is not a regular expression: {error}") from error
        if self.pattern.groups < 1:
            raise ValueError(f"LLMJudge.pattern {pattern!r} has no group; its first group (...) must hold the score")
        if not min_score < max_score:
            raise ValueError(f"LLMJudge.min_score ({min_score}) must be below LLMJudge.max_score ({max_score})")
        self.backbone = None if backbone is None else self._built(backbone)
        self.policy, self.template, self.max_score, self.min_score = policy, template, float(max_score), float(min_score)
        self.generation_kwargs = {"max_new_tokens": 256, "do_sample": False, **(generation_kwargs or {})}
        self.seed, self.as_chat, self.name, self.batch_size = seed, as_chat, name, batch_size
        self.values = (name,)
        self.attached = None
        self._configured = False
        self.failures = Failures("judge outputs without a score in range", keep=keep_failures)

    @staticmethod
    def _built(spec: Any) -> Any:
        if hasattr(spec, "as_dict"):  # a jsonargparse namespace
            spec = spec.as_dict()
        model = build_object(spec)
        if not callable(getattr(model, "generate", None)):
            raise ValueError(f"LLMJudge.backbone must be a backbone that generates, got {type(model).__name__}")
        return model

    # ------------------------------------------------------------------ the model
    def attach(self, backbone: Any) -> None:
        """Judge with ``backbone`` (the policy being trained) from now on: the loop calls it before judging. A
        judge with its own model (``backbone`` in the config) keeps it, and this does nothing."""
        if not self.policy:
            return
        if not callable(getattr(backbone, "generate", None)):
            raise ValueError(f"LLMJudge.attach: {type(backbone).__name__} cannot generate; attach the policy's backbone")
        self.attached = backbone

    def model(self) -> Any:
        if self.policy:
            if self.attached is None:
                raise RuntimeError("LLMJudge.policy is true, so the policy being trained judges, but no policy is"
                                   " attached: the loop calls LLMJudge.attach(backbone) before judging; to judge with"
                                   " a model of its own, set LLMJudge.backbone instead")
            return self.attached
        if not self._configured and callable(getattr(self.backbone, "configure", None)):
            self.backbone.configure()  # idempotent: loads the weights once
        self._configured = True
        return self.backbone

    # ------------------------------------------------------------------ prompts and scores
    def render(self, prompt: Any, response: Any) -> str:
        """``template`` with the prompt's text and the response in place (not ``str.format``: a rubric may hold
        other braces)."""
        return self.template.replace("{prompt}", prompt_text(prompt)).replace("{response}", str(response))

    def read(self, text: str) -> tuple[float | None, str]:
        """``(score, "")``, or ``(None, why)`` when ``text`` holds no score in range."""
        found = list(self.pattern.finditer(str(text)))
        if not found:
            return None, f"no score found in {clip(text)}"
        raw = found[-1].group(1)
        try:
            value = float(raw)
        except (TypeError, ValueError):
            return None, f"{raw!r} is not a number, in {clip(text)}"
        if not (math.isfinite(value) and self.min_score <= value <= self.max_score):
            return None, f"score {raw} outside [{self.min_score:g}, {self.max_score:g}], in {clip(text)}"
        return value, ""

    def parse(self, text: str) -> float | None:
        """The score in a judge's ``text``, or ``None``."""
        return self.read(text)[0]

    def score_batch(self, prompts, outputs, conditions, rows):
        asks = [self.render(p, o) for p, o in zip(prompts, outputs)]
        inputs = [[{"role": "user", "content": a}] for a in asks] if self.as_chat else asks
        seeded = {} if self.seed is None else {"seed": self.seed}
        texts = list(self.model().generate(inputs, **seeded, **self.generation_kwargs))
        if len(texts) != len(inputs):
            raise ValueError(f"LLMJudge: the judge model answered {len(texts)} times for {len(inputs)} prompts")
        return [{self.name: self.parse(t), "judge_output": str(t)} for t in texts]

    def judge(self, prompts: Sequence[Any], outputs: Sequence[Any], conditions: Sequence[Any] | None = None,
              rows: Sequence[dict] | None = None) -> list[dict[str, Any] | None]:
        """As :meth:`alignsuite.judging.Scorer.judge`; each judgement without a score is counted (a missing output
        judges ``None`` and is not a judge's failure)."""
        judged = super().judge(prompts, outputs, conditions, rows)
        for i, value in enumerate(judged):
            if value is not None and value.get(self.name) is None:
                self.failures.add(self.failures.seen + i, self.read(value["judge_output"])[1])
        self.failures.seen += len(judged)
        return judged

    @property
    def parse_failures(self) -> int:
        """How many judgements held no score in range since the judge was built (or :meth:`reset_failures`)."""
        return self.failures.count

    def failure_report(self) -> str:
        """One line naming the count and the first failing rows with what their judge wrote; ``""`` if none."""
        return self.failures.report()

    def reset_failures(self) -> None:
        self.failures.reset()


__all__ = ["RUBRIC", "SCORE_PATTERN", "LLMJudge"]
