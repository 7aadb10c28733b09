"""The batch a token backbone scores: the stacked rows of every view, their masks, and what scoring shares.

Made once per step by a backbone's ``prepare`` (:class:`alignsuite.backbones.causal_lm.CausalLM`, and the VLM
and speech-token backbones built on it) and scored by the policy and the reference alike, each on its device.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from alignsuite.backbones.token_scoring import Targets, packed_attention_mask


@dataclass
class TokenBatch:
    input_ids: Tensor  # [N, T], right-padded
    attention_mask: Tensor  # [N, T]
    completion_mask: Tensor  # [N, T]: 1 on the completion tokens that are scored
    logits_to_keep: int  # the last positions that hold every scored token (and the one before)
    prompt_mask: Tensor | None = None  # [N, T]: 1 on the prompt tokens scored (score_prompt rows), else None
    extra: dict = field(default_factory=dict)  # further model inputs: pixel_values, image_grid_thw ...
    # The packed layout (token_scoring.pack_rows): segment and position of every token; None in the plain layout.
    segments: Tensor | None = None
    position_ids: Tensor | None = None
    # The scored tokens; derived from the masks when not given (the plain layout), once, where the batch is made.
    targets: Targets | None = None
    # What the batch's scorings share (the reference's and the policy's): its copy on each device, and the packed
    # layout's attention mask in each form; made on first use.
    _made: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.targets is None:
            self.targets = Targets.from_masks(self.input_ids, self.completion_mask, self.prompt_mask)

    def to(self, device) -> "TokenBatch":
        """The batch on ``device``: itself if it is there, else a copy made once."""
        device = torch.device(device)
        if self.input_ids.device == device:
            return self
        if device not in self._made:
            def move(t):
                return t.to(device) if t is not None else None

            extra = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in self.extra.items()}
            self._made[device] = TokenBatch(
                self.input_ids.to(device), self.attention_mask.to(device), self.completion_mask.to(device),
                self.logits_to_keep, move(self.prompt_mask), extra, move(self.segments), move(self.position_ids),
                self.targets.to(device),
            )
        return self._made[device]

    def packed_mask(self, attn_implementation: str | None, dtype: torch.dtype):
        """The packed layout's 4D attention mask (:func:`packed_attention_mask`), built once per form."""
        key = ("mask", attn_implementation, dtype)
        if key not in self._made:
            self._made[key] = packed_attention_mask(self.segments, attn_implementation, dtype)
        return self._made[key]


__all__ = ["TokenBatch"]
