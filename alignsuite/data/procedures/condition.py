"""A condition written into a prompt: the target scores, levels or direction a prompt-conditioned model reads.

One `PromptCondition` writes the same text at training (the procedures that condition pairs: reward-augmented
relabelling, directional and controllable pairs) and at evaluation (``evaluate.preference_prompt`` sweeps a
preference vector through it), so one conditioned model can be swept over a whole front as Panacea's vector
is. The condition is a template whose fields are the preference dimensions' names (``"<caps={caps:.1f}
lower={lower:.1f}>"``), filled with one value per dimension; with ``levels`` each value in [0, 1] is written as
one of a few words instead (a model whose vocabulary has no digits).
"""

from __future__ import annotations

import math
import string
from dataclasses import asdict, dataclass
from typing import Any, Literal, Mapping

from alignsuite.data.errors import DataError


def place_condition(value: Any, text: str, place: str, source: str, index: int | None, field: str) -> Any:
    """``value`` (a prompt, or a whole conversation) with ``text`` before it: as a system message first
    (``place: system``; a text prompt becomes chat messages) or prepended to the first user turn with a blank
    line (``place: user``). Anything but text or chat messages is a ``DataError`` naming ``field``."""
    if isinstance(value, str):
        if place == "user":
            return f"{text}\n\n{value}"
        return [{"role": "system", "content": text}, {"role": "user", "content": value}]
    if not isinstance(value, list) or not all(isinstance(m, dict) for m in value):
        raise DataError(source, index, field, "text or a list of chat messages", value)
    if place == "system":
        return [{"role": "system", "content": text}, *value]
    for i, message in enumerate(value):
        if message.get("role") == "user" and isinstance(message.get("content"), str):
            return [*value[:i], {**message, "content": f"{text}\n\n{message['content']}"}, *value[i + 1:]]
    raise DataError(source, index, field, "a user message with text content to prepend the condition to", value)


@dataclass
class PromptCondition:
    """How a condition goes into a prompt.

    Args:
        template: the condition's text, with a field per dimension (``{caps}``, format specs allowed:
            ``{caps:.2f}``); a dimension may be left out of the text.
        place: ``user`` (prepended to the prompt, or its first user turn, with a blank line) or ``system``
            (a system message first).
        levels: write each value, which must then be in [0, 1], as the nearest of these evenly spaced words
            (``[low, mid, high]``: 0 -> low, 0.5 -> mid, 1 -> high); null: the number itself.
        normalise: rescale the values before writing them: ``sum`` (to sum to 1: a preference vector on the
            simplex), ``unit`` (to unit length: DPA's direction), null (as they are: target scores or levels).
            A direction's label does not depend on its length, so either form names the same preference.
    """

    template: str
    place: Literal["user", "system"] = "user"
    levels: list[str] | None = None
    normalise: Literal["sum", "unit"] | None = None

    def __post_init__(self) -> None:
        if self.place not in ("user", "system"):
            raise ValueError(f"PromptCondition.place must be 'user' or 'system', got {self.place!r}")
        if self.normalise not in (None, "sum", "unit"):
            raise ValueError(f"PromptCondition.normalise must be 'sum', 'unit' or null, got {self.normalise!r}")
        if self.levels is not None:
            self.levels = [str(x) for x in self.levels]
            if len(self.levels) < 2:
                raise ValueError(f"PromptCondition.levels: give at least two words (the ends of [0, 1]), got {self.levels}")
        names = [f for _, f, _, _ in string.Formatter().parse(self.template) if f is not None]
        if not names:
            raise ValueError(f"PromptCondition.template {self.template!r} has no field: write the dimensions"
                             " as {name}, e.g. '<caps={caps:.1f} lower={lower:.1f}>'")
        bad = [f for f in names if not f.isidentifier()]
        if bad:
            raise ValueError(f"PromptCondition.template: fields are dimension names, got {bad}")
        self.fields = tuple(dict.fromkeys(names))

    def check(self, dimensions: tuple[str, ...] | list[str], option: str) -> None:
        """Every field of the template is one of ``dimensions``, else a ValueError naming ``option``."""
        unknown = [f for f in self.fields if f not in dimensions]
        if unknown:
            raise ValueError(f"{option}: the template's field(s) {unknown} are not dimensions; the dimensions are"
                             f" {', '.join(dimensions)}")

    def values(self, condition: Mapping[str, float]) -> dict[str, Any]:
        """The value written for each dimension: rescaled by ``normalise``, then a word of ``levels``."""
        values = {k: float(v) for k, v in condition.items()}
        if self.normalise:
            norm = sum(values.values()) if self.normalise == "sum" else math.sqrt(sum(v * v for v in values.values()))
            if norm <= 0 or any(v < 0 for v in values.values()):
                raise ValueError(f"PromptCondition.normalise {self.normalise}: the values must be >= 0 and not all 0,"
                                 f" got {values}")
            values = {k: v / norm for k, v in values.items()}
        if self.levels is None:
            return values
        out: dict[str, Any] = {}
        for k, v in values.items():
            if not -1e-9 <= v <= 1 + 1e-9:
                raise ValueError(f"PromptCondition.levels: the value of {k!r} must be in [0, 1] to be written as a"
                                 f" level, got {v}")
            out[k] = self.levels[round(min(max(v, 0.0), 1.0) * (len(self.levels) - 1))]
        return out

    def text(self, condition: Mapping[str, float]) -> str:
        """The condition's text for one value per dimension (``{dimension: value}``)."""
        missing = [f for f in self.fields if f not in condition]
        if missing:
            raise ValueError(f"PromptCondition.template needs a value for {missing}; given {sorted(condition)}")
        return self.template.format(**self.values(condition))

    def apply(self, prompt: Any, condition: Mapping[str, float], source: str = "rows", index: int | None = None,
              field: str = "prompt") -> Any:
        """``prompt`` (text or chat messages) with the condition's text placed in it."""
        return place_condition(prompt, self.text(condition), self.place, source, index, field)

    def identity(self) -> dict:
        return asdict(self)


__all__ = ["PromptCondition", "place_condition"]
