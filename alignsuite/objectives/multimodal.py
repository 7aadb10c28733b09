"""Objectives for vision-language models: mDPO, and the image corruption its conditional term scores under.

mDPO (Wang et al. 2024, "mDPO: Conditional Preference Optimization for Multimodal Large Language Models",
EMNLP 2024). With ``u(y|m) = log pi(y|m,x) - log pi_ref(y|m,x)``, ``m`` the image, ``m'`` a corrupted one:

- DPO:                  ``-log s(b [u(y_w|m) - u(y_l|m)])``
- conditional (CoPO):   ``-log s(b [u(y_w|m) - u(y_w|m')])``: the chosen answer is better with the true image
- anchor (AncPO):       ``-log s(b u(y_w|m) - delta)``: the chosen reward stays above ``delta``

summed with weights ``dpo_weight``, ``conditional_weight``, ``anchor_weight`` (1, 1, 1 and delta 0 in the
released code). Plain DPO on multimodal pairs can win by the answers' language alone and ignore the image;
the conditional term only falls when the image matters.

The corrupted image (:class:`ImageCorruption`, the settings; the vision-language backbone draws the pixels,
``alignsuite.backbones.image_views``) is drawn once per example from the row's own seed, so the policy, the
reference and a precomputed reference see the same pixels; the released code redraws it on every forward, so
its policy and reference compare different images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F

from alignsuite.objectives.base import PairwiseObjective, ObjectiveOutput, Reducer, as_float, register, reward_metrics
from alignsuite.scores import PairScores
from alignsuite.views import View

Corruption = Literal["crop", "noise", "mismatched"]


@dataclass(frozen=True)
class ImageCorruption:
    """The ``corrupt_image`` condition's settings: each row's images replaced, the same way every time for the
    same row. The backbone that takes images draws the pixels (``alignsuite.backbones.image_views``).

    - ``crop``: keep a random region covering a fraction in ``keep`` of the area (aspect ratio in
      [3/4, 4/3]), resized back to the full size; mDPO's default, ``keep = (0.01, 0.2)``.
    - ``noise``: the image after ``noise_step`` of 1000 steps of the DDPM forward process (linear betas
      1e-4 to 0.02): ``sqrt(a) x + sqrt(1 - a) e`` on pixels in [-1, 1], clamped (at 500, ``a`` = 0.078: the
      image's amplitude is 0.28 against the noise's 0.96; at 100, 0.95 against 0.32).
    - ``mismatched``: the images of the next row of the batch (depends on the batch, so it cannot be stored
      by a precomputed reference).

    Draws come from ``random.Random((seed, row index, image position))``: the row's index in its split, not
    its place in a batch, so the corruption does not depend on the shuffle, the batch or the process.
    """

    kind: Corruption = "crop"
    keep: tuple[float, float] = (0.01, 0.2)
    noise_step: int = 500
    seed: int = 0
    name: ClassVar[str] = "corrupt_image"

    def __post_init__(self) -> None:
        lo, hi = self.keep
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"corruption keep must be 0 < low <= high <= 1, got {self.keep}")
        if not 0 <= self.noise_step < 1000:
            raise ValueError(f"noise_step must be in [0, 1000), got {self.noise_step}")

    @property
    def per_row(self) -> bool:
        """Whether a row's corruption depends on that row alone (so reference scores may be stored)."""
        return self.kind != "mismatched"


@register("mdpo")
class MDPO(PairwiseObjective):
    """mDPO: DPO + a conditional image-preference term + a reward anchor (see the module docstring).

    Args:
        beta: the KL weight of all three terms (0.1 in the released code).
        dpo_weight, conditional_weight, anchor_weight: the terms' weights (1 each in the released code).
        anchor: ``delta``, the value the chosen reward is kept above (0 in the released code).
        corruption: how the conditional term's image is corrupted: ``crop`` (mDPO's default), ``noise`` or
            ``mismatched`` (see :class:`ImageCorruption`).
        crop_keep: the range of the area fraction a crop keeps.
        noise_step: the DDPM step (of 1000) the ``noise`` corruption goes to.
        corruption_seed: the seed each row's draw is made from, with the row's index.
        sft_weight: optional NLL on the chosen answer (as every pairwise objective).
    """

    family = "multimodal"
    paper = "Wang et al. 2024, arXiv 2406.11839"
    convention = "the official code's crop corruption and anchor"

    def __init__(
        self,
        beta: float = 0.1,
        dpo_weight: float = 1.0,
        conditional_weight: float = 1.0,
        anchor_weight: float = 1.0,
        anchor: float = 0.0,
        corruption: Corruption = "crop",
        crop_keep: tuple[float, float] = (0.01, 0.2),
        noise_step: int = 500,
        corruption_seed: int = 0,
        sft_weight: float = 0.0,
    ) -> None:
        super().__init__(beta, sft_weight)
        for name, w in (("dpo_weight", dpo_weight), ("conditional_weight", conditional_weight),
                        ("anchor_weight", anchor_weight)):
            if w < 0:
                raise ValueError(f"{name} must be >= 0, got {w}")
        self.dpo_weight, self.conditional_weight, self.anchor_weight = dpo_weight, conditional_weight, anchor_weight
        self.anchor = anchor
        self.corruption = ImageCorruption(corruption, tuple(crop_keep), noise_step, corruption_seed)
        # Instance views: the corruption is this objective's setting, carried by the view's condition.
        self.views = (View("chosen"), View("rejected"),
                      View("chosen_corrupted", column="chosen", condition=self.corruption))

    def terms(self, s: PairScores) -> dict[str, torch.Tensor]:
        """The per-pair terms and the rewards: ``dpo``, ``conditional``, ``anchor`` losses; ``chosen``,
        ``rejected`` and ``imageless`` (the chosen answer under the corrupted image) rewards ``b * u``."""
        c, r, cc, rc, rr, rcc = as_float(s.chosen, s.rejected, s.extra["chosen_corrupted"], s.ref_chosen,
                                         s.ref_rejected, s.extra["ref_chosen_corrupted"])
        b = self.beta
        chosen, rejected, imageless = b * (c - rc), b * (r - rr), b * (cc - rcc)
        return {
            "dpo": -F.logsigmoid(chosen - rejected),
            "conditional": -F.logsigmoid(chosen - imageless),
            "anchor": -F.logsigmoid(chosen - self.anchor),
            "chosen": chosen, "rejected": rejected, "imageless": imageless,
        }

    def pair_losses(self, s: PairScores):
        t = self.terms(s)
        losses = (self.dpo_weight * t["dpo"] + self.conditional_weight * t["conditional"]
                  + self.anchor_weight * t["anchor"])
        return losses, t["chosen"], t["rejected"]

    def __call__(self, scores: PairScores, reduce: Reducer | None = None) -> ObjectiveOutput:
        out = super().__call__(scores, reduce)
        with torch.no_grad():
            t = self.terms(scores)
        out.metrics.update({f"loss/{k}": t[k].mean() for k in ("dpo", "conditional", "anchor")})
        out.metrics["rewards/imageless_chosen"] = t["imageless"].mean()
        out.metrics["rewards/imageless_margins"] = (t["chosen"] - t["imageless"]).mean()
        out.metrics["rewards/imageless_accuracies"] = reward_metrics(t["chosen"], t["imageless"])["rewards/accuracies"]
        return out


__all__ = ["MDPO", "ImageCorruption"]
