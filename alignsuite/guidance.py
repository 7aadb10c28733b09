"""Decoding-time guidance: each step's next-token logits of the model that generates, reshaped by a second causal
language model (a token-level reward model) read at the same step. No training; a transformers ``LogitsProcessor``,
so greedy decoding, sampling, stopping and padding stay transformers' own.

PAD (Chen et al. 2024, OpenReview e7AUJpP8bV: personalised alignment at decoding time). With ``z`` the base
model's logits at a step and ``m`` the reward model's at the same step (its prompt carrying the preference):

    V_k      = the k tokens of highest z                                            (k = top_k, 10)
    r(v)     = log softmax_{V_k}(m)[v] - log softmax_{V_k}(z)[v]                    for v in V_k
    score(v) = z_v + w * r(v) for v in V_k, -inf outside it                         (w = weight, 0.8)

and the next token is argmax(score) (greedy) or a draw from softmax(score / T). Conventions and their sources:

- Both softmaxes run over V_k only, never the whole vocabulary, and no token outside V_k can be chosen: the
  official code (``zjuruizhechen/PAD``, ``inference/PAD.py``, ``generate_step``, its Llama-3 branch: the two models
  share one tokenizer). Its other branch (models with different tokenizers: the candidates re-mapped through their
  text, and ``r = m_v - z_v`` with no softmax) is not built: a reward model with another vocabulary is refused.
- ``w = 0`` returns the base logits on V_k without running the reward model (the official code skips it too), so
  greedy decoding is the base's greedy decoding exactly; ``top_k = 1`` leaves one token, the base's greedy one.
- Temperature: the official "topk" mode samples from softmax(score / T) over V_k, T = 0.7 fixed (its runner never
  passes the configs' ``sample_temp`` on). Here the score is handed to transformers, whose sampling warpers run
  after every logits processor: ``do_sample`` with ``temperature: T`` samples softmax(score / T), and a ``top_k``
  or ``top_p`` set in the generation settings acts on the score too (a ``top_k`` below k narrows V_k further).
- Defaults: k = 10 in every released config; the grid-search config sweeps w over 0 ... 1.5, and the task configs
  use 0.6 to 1.5; 0.8 is the notes' (families §2.8) middle value, kept here.
- The reward model keeps its own key-value cache: its prompt once, then one token a step, as the base model does
  in ``generate``. The official code re-encodes the whole prefix with the reward model at every step (quadratic in
  the answer's length); ``cache=False`` does the same here and gives the same tokens (tests/test_guidance.py).
- Any batch size and left-padded prompts (the official code takes one prompt at a time).
- A token the base's logits already rule out (``-inf``: a constraint applied before the guide, as a speech-token
  model's one-codebook-per-step rule, or another logits processor) is never a candidate: where fewer than k
  tokens are allowed, V_k is the allowed ones, and the reward model's softmax runs over them alone. The official
  code has no such constraint; without one this is its V_k.
"""

from __future__ import annotations

import inspect

import torch
from torch import Tensor

from transformers import DynamicCache, LogitsProcessor


def guided_scores(base_logits: Tensor, guide_logits: Tensor | None, weight: float, top_k: int) -> Tensor:
    """``[B, V]`` scores: ``z_v + w * r(v)`` on the ``top_k`` tokens of ``base_logits`` (``z``), ``-inf`` elsewhere;
    ``r`` from ``guide_logits`` (``m``) as in the module docstring. ``guide_logits`` may be ``None`` at ``weight`` 0,
    and may be wider or narrower than ``z`` (an embedding table padded to another size): a token it lacks gets
    ``r = -inf``. A token ``z`` rules out (``-inf``) stays out, and takes no share of the reward model's softmax."""
    k = min(int(top_k), base_logits.shape[-1])
    z, tokens = base_logits.topk(k, dim=-1)
    score = z
    if weight != 0:
        m = guide_logits.float()
        width = base_logits.shape[-1]
        if m.shape[-1] < width:
            m = torch.nn.functional.pad(m, (0, width - m.shape[-1]), value=float("-inf"))
        out = z.isneginf()  # fewer than k tokens allowed: the ruled-out ones among the top k
        m = m[..., :width].gather(-1, tokens).masked_fill(out, float("-inf"))
        r = (m.log_softmax(-1) - z.float().log_softmax(-1)).to(z.dtype)
        score = (z + weight * r).masked_fill(out, float("-inf"))
    return torch.full_like(base_logits, float("-inf")).scatter(-1, tokens, score)


class RewardGuidance(LogitsProcessor):
    """PAD's step (:func:`guided_scores`) as a transformers logits processor, for one ``generate`` call.

    Args:
        reward_model: a causal LM with the generating model's vocabulary, in eval mode, on the generating device.
        input_ids, attention_mask: the reward model's prompts (the preference written in), left-padded, one row per
            prompt of the call (rows repeated ``num_return_sequences`` times are matched by repeating these).
        prompt_width: how many tokens the generating model's (left-padded) prompts take: what follows them in
            ``generate``'s ``input_ids`` is the answer so far, which the reward model reads after its own prompt.
        weight, top_k: ``w`` and ``k``.
        cache: keep the reward model's key-value cache across steps; false re-encodes its whole prefix each step.
    """

    def __init__(self, reward_model, input_ids: Tensor, attention_mask: Tensor, prompt_width: int, weight: float,
                 top_k: int, cache: bool = True) -> None:
        self.model, self.ids, self.mask = reward_model, input_ids, attention_mask
        self.prompt_width, self.weight, self.top_k, self.cache = prompt_width, float(weight), int(top_k), cache
        self._past = None  # the reward model's cache, its attention mask, last positions and the answer read so far
        takes = reward_model is not None and "logits_to_keep" in inspect.signature(reward_model.forward).parameters
        self._keep = {"logits_to_keep": 1} if takes else {}  # the head at the last position only

    @torch.no_grad()
    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        if self.weight == 0:
            return guided_scores(scores, None, 0.0, self.top_k)
        return guided_scores(scores, self.reward_logits(input_ids), self.weight, self.top_k)

    def _prompts(self, rows: int, device) -> tuple[Tensor, Tensor]:
        if rows % self.ids.shape[0]:
            raise ValueError(f"the guide has {self.ids.shape[0]} reward-model prompts for {rows} generated rows")
        repeat = rows // self.ids.shape[0]  # generate repeats each prompt num_return_sequences times, in place
        return (self.ids.repeat_interleave(repeat, 0).to(device), self.mask.repeat_interleave(repeat, 0).to(device))

    def reward_logits(self, input_ids: Tensor) -> Tensor:
        """The reward model's next-token logits ``[B, V]`` after its prompt and the answer so far."""
        answer = input_ids[:, self.prompt_width:]
        if self._past is not None and not torch.equal(answer[:, :self._past[3].shape[1]], self._past[3]):
            self._past = None  # rows reordered (beam search): what the cache holds is not this answer, encode it anew
        if not self.cache or self._past is None:
            ids, mask = self._prompts(input_ids.shape[0], input_ids.device)
            ids = torch.cat([ids, answer], 1)
            mask = torch.cat([mask, torch.ones_like(answer, dtype=mask.dtype)], 1)
            positions = (mask.cumsum(-1) - 1).clamp(min=0)  # left padding: every row's first token at position 0
            if not self.cache:
                return self._forward(ids, mask, positions, None)
            past = DynamicCache()
        else:
            past, mask, last, read = self._past
            ids = answer[:, read.shape[1]:]
            mask = torch.cat([mask, torch.ones_like(ids, dtype=mask.dtype)], 1)
            positions = last[:, None] + 1 + torch.arange(ids.shape[1], device=ids.device)
        logits = self._forward(ids, mask, positions, past)
        self._past = (past, mask, positions[:, -1], answer)
        return logits

    def _forward(self, ids: Tensor, mask: Tensor, positions: Tensor, past) -> Tensor:
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=past,
                         use_cache=past is not None, **self._keep)
        return out.logits[:, -1]


__all__ = ["RewardGuidance", "guided_scores"]
