"""PAD, personalised alignment at decoding time, as a token backbone's generation option: no objective and no
training, a guide that reshapes every step of ``generate`` (:mod:`alignsuite.guidance` has the step and its
conventions).

Where it fits: the backbones whose ``generate`` is a causal language model's over token ids alone
(``guided_generation``): `CausalLM`, `PanaceaLM` (guided at the preference vector it generates with) and
`SpeechTokenLM` (codec tokens; its reward model a speech-token model with the same vocabulary, read with the
same speaker prompt). Not a vision-language model (its answers depend on the images, which a reward model fed
token ids would not see) nor a denoising backbone (no next-token logits): both refuse a guide, naming it.

The guide is set on the backbone (``backbone.guide``: ``predict``, validation callbacks and every other caller of
``generate`` use it), given to one call (``generate(prompts, guide=PAD(...))``), or given to ``evaluate``
(``evaluate.guide``: the guided base against the unguided one). Its reward model is loaded once, on first use, with
the backbone's own loader, and checked to share the backbone's tokenizer.
"""

from __future__ import annotations

import copy
import math
from typing import Literal

from alignsuite.backbones.svd_lora import CONFIG_FILE as PREFERENCE_ADAPTER_FILE, is_export
from alignsuite.data.errors import DataError
from alignsuite.data.procedures.condition import place_condition
from alignsuite.guidance import RewardGuidance
from alignsuite.sources import resolve_model_path


OPTIONS = ("reward_model", "weight", "top_k", "preference", "place", "cache", "dtype")


class PAD:
    """Personalised alignment at decoding time (Chen et al. 2024, OpenReview e7AUJpP8bV): each next token from the
    base model's top ``top_k`` by ``z_v + weight * (log softmax_{V_k}(RM)[v] - log softmax_{V_k}(z)[v])``.

    The reward model is a causal LM trained as a policy with a DPO-style objective (its log-ratio to the base is
    the token-level reward), e.g. an export of a ``dpo`` run, or of a run on preference-conditioned prompts (DPA,
    reward-augmented pairs) with ``preference`` naming the preference as its training prompts did. Conventions
    (which source each follows): :mod:`alignsuite.guidance`. The official code writes the preference before the
    one prompt both models read; here only the reward model reads it, so the base's answer is guided by the
    preference, not prompted with it (write it into the prompts as well to do both).

    Args:
        reward_model: the reward model: a ``save_pretrained`` folder (a run's export), a hub id or ``toy:<world>``,
            with the generating model's tokenizer (another vocabulary is refused).
        weight: ``w``, how far the reward model pulls (0: the base model, top-``k`` restricted; 1: the reward model's
            own choice among the base's top ``k``; above 1: past it).
        top_k: ``k``, the base model's candidates at each step; nothing outside them is ever chosen.
        preference: text written into the reward model's prompt (the personal preference, or a conditioned model's
            condition); null: it reads the prompt as it is.
        place: where the preference goes: ``user`` (before the prompt, or its first user turn, with a blank line)
            or ``system`` (a system message first; a text prompt becomes chat messages, rendered by the chat
            template).
        cache: keep the reward model's key-value cache across steps (false: re-encode its whole prefix every step,
            as the official code does; the same tokens, slower).
        dtype: the reward model's weights' dtype; the backbone's when null.
    """

    def __init__(self, reward_model: str, weight: float = 0.8, top_k: int = 10, preference: str | None = None,
                 place: Literal["user", "system"] = "user", cache: bool = True, dtype: str | None = None) -> None:
        if not math.isfinite(float(weight)):
            raise ValueError(f"guide.weight must be a finite number, got {weight}")
        if int(top_k) < 1:
            raise ValueError(f"guide.top_k must be at least 1 (the base model's candidates per step), got {top_k}")
        if place not in ("user", "system"):
            raise ValueError(f"guide.place must be 'user' or 'system', got {place!r}")
        self.reward_model, self.weight, self.top_k = reward_model, float(weight), int(top_k)
        self.preference, self.place, self.cache, self.dtype = preference, place, cache, dtype
        self._model = None  # loaded on first use, shared by copies (frozen)
        self._checked: set[int] = set()  # the backbones whose tokenizer was compared

    def __deepcopy__(self, memo) -> PAD:  # a copied backbone shares the frozen reward model
        other = copy.copy(self)
        other._checked = set(self._checked)
        return other

    def but(self, **changes) -> PAD:
        """A copy with ``changes`` (``weight``, ``preference`` ...), checked as at construction; it shares the loaded
        reward model unless ``reward_model`` or ``dtype`` changes: a sweep loads it once."""
        options = {name: getattr(self, name) for name in OPTIONS}
        unknown = set(changes) - set(options)
        if unknown:
            raise ValueError(f"guide: no option {sorted(unknown)}; its options: {', '.join(OPTIONS)}")
        other = PAD(**{**options, **changes})
        if (other.reward_model, other.dtype) == (self.reward_model, self.dtype):
            other._model, other._checked = self._model, set(self._checked)
        return other

    def check(self, backbone) -> None:
        """Refuse a backbone that takes no guide, and a reward model whose vocabulary is not the backbone's or that
        is a Panacea export (before any weights load)."""
        if id(backbone) in self._checked:
            return
        if not backbone.guided_generation:
            raise ValueError(f"guide: {type(backbone).__name__} takes no decoding-time guide; PAD guides the generate of"
                             " a causal language model over token ids alone (CausalLM, PanaceaLM, SpeechTokenLM): a"
                             " vision-language model's answers depend on images its reward model would not read, and"
                             " a denoising model has no next-token logits")
        backbone.check_same_tokenizer(self.reward_model, "guide.reward_model")
        path = resolve_model_path(self.reward_model)
        if is_export(path):
            raise ValueError(f"guide.reward_model: {path} is a Panacea export (a base model with a preference adapter"
                             f" beside it, {PREFERENCE_ADAPTER_FILE}); the guide reads a plain causal LM, and would read"
                             " the base without its adapter: give a save_pretrained folder of a plain model")
        self._checked.add(id(backbone))

    def model(self, backbone, device):
        """The reward model, frozen, in eval mode, on ``device``."""
        if self._model is None:
            self.check(backbone)
            self._model = backbone.load_reference(self.reward_model, self.dtype)
        return self._model.to(device)

    def reward_prompts(self, prompts: list) -> list:
        """The reward model's prompts: each prompt with ``preference`` written in (as they are without one)."""
        if not self.preference:
            return list(prompts)
        try:
            return [place_condition(p, self.preference, self.place, "prompts", i, "prompt") for i, p in enumerate(prompts)]
        except DataError as error:
            raise ValueError(f"guide.preference: {error}") from None

    def processor(self, backbone, prompts: list, encoded, device, **columns) -> RewardGuidance:
        """The logits processor of one ``generate`` call on ``prompts``, whose left-padded inputs are ``encoded``;
        ``columns``: what else conditions the call (a speech-token model's speaker prompt), which the reward
        model's inputs take too (``backbone.generation_inputs(prompts, **columns)``)."""
        self.check(backbone)
        width = encoded["input_ids"].shape[1]
        if self.weight == 0:  # the reward model is never read: nothing to load
            return RewardGuidance(None, encoded["input_ids"], encoded["attention_mask"], width, 0.0, self.top_k)
        rm = backbone.generation_inputs(self.reward_prompts(prompts), **columns)
        return RewardGuidance(self.model(backbone, device), rm["input_ids"], rm["attention_mask"], width, self.weight,
                              self.top_k, self.cache)

    def __repr__(self) -> str:
        return (f"PAD(reward_model={self.reward_model!r}, weight={self.weight:g}, top_k={self.top_k},"
                f" preference={self.preference!r})")


__all__ = ["PAD"]
