"""Named extra references: further score sources an objective declares beside its reference.

An objective lists the names it reads (``extra_references = ("weak_base", "weak_aligned")``, WSPO's weak pair;
MODPO's margin model) and the recipe gives one :class:`~alignsuite.reference.Reference` per name under
``model.extra_references``. Each is built and sharded as the reference is, never trained and never checkpointed
(rebuilt from its source), and scored without grad on the step's prepared inputs. Its scores reach the objective
in ``scores.extra`` as ``ref_<name>_<view>``: ``[B]`` per view for sequence objectives, ``[B, T]`` per view (0 after
each answer's last token) for token-level ones.
"""

from __future__ import annotations

import torch
from torch import Tensor

from alignsuite.backbones.base import Backbone
from alignsuite.reference import Reference
from alignsuite.scores import TokenNeeds

# Per-token log-probs only: an extra reference is read as scores, never as a distribution or hidden states.
LOGPS_ONLY = TokenNeeds()


def declared(objective) -> tuple[str, ...]:
    """The extra reference names ``objective`` reads (an instance may set them from its options)."""
    return tuple(getattr(objective, "extra_references", ()) or ())


def check_names(objective, given: dict | None) -> None:
    """Refuse, before any model loads, an objective that declares a name the recipe does not give, or the reverse,
    and a reference that cannot serve as an extra one."""
    name = objective.name or type(objective).__name__
    wanted, have = declared(objective), tuple(given or {})
    missing, unused = [n for n in wanted if n not in have], [n for n in have if n not in wanted]
    if missing:
        raise ValueError(
            f"objective {name!r} reads the extra reference(s) {', '.join(map(repr, missing))}, which"
            f" model.extra_references does not give (it gives: {', '.join(map(repr, have)) or 'none'}); add one"
            " Reference per name, e.g. alignsuite.reference.FrozenCopy with model_name_or_path"
        )
    if unused:
        raise ValueError(
            f"model.extra_references gives {', '.join(map(repr, unused))}, which objective {name!r} does not read"
            f" (it reads: {', '.join(map(repr, wanted)) or 'none'}); remove them"
        )
    for key, reference in (given or {}).items():
        if not isinstance(reference, Reference):
            raise ValueError(f"model.extra_references.{key} must be a Reference, got {type(reference).__name__}")
        if getattr(reference, "stored", None) is not None or reference.can_sample:
            # Precomputed and SwappedCopy keep the starting policy's scores or weights; CheckpointPool the policy's own.
            raise ValueError(
                f"model.extra_references.{key} is {type(reference).__name__}, which scores the policy's own weights;"
                " an extra reference has weights of its own: use FrozenCopy(model_name_or_path=...)"
            )


def check_setup(objective, backbone: Backbone, given: dict) -> None:
    """At setup: each extra reference against the objective and backbone, and per-token scoring where needed."""
    for key, reference in given.items():
        reference.check(objective, backbone)
        if objective.token_needs is not None and not reference.per_token:
            raise ValueError(f"objective {objective.name!r} weighs tokens, and model.extra_references.{key}"
                             f" ({type(reference).__name__}) cannot score tokens; use FrozenCopy")


def build(backbone: Backbone, given: dict, precision: str | None) -> None:
    """Build every extra reference; one that loads another checkpoint must share the policy's tokenizer."""
    for key, reference in given.items():
        source = getattr(reference, "model_name_or_path", None)
        if source is not None:
            backbone.check_same_tokenizer(source, f"model.extra_references.{key}")
        reference.trainer_precision = precision
        reference.build(backbone)


@torch.no_grad()
def sequence_scores(backbone: Backbone, given: dict, prepared, batch: dict, views: list[str]) -> dict[str, Tensor]:
    """``{"ref_<name>_<view>": [B]}`` for every extra reference and view."""
    out = {}
    for key, reference in given.items():
        scores = reference.score(backbone, prepared, batch).detach()
        out.update({f"ref_{key}_{view}": s for view, s in zip(views, scores.chunk(len(views)))})
    return out


@torch.no_grad()
def token_scores(backbone: Backbone, given: dict, prepared, batch: dict, views: list[str]) -> dict[str, Tensor]:
    """``{"ref_<name>_<view>": [B, T]}`` (each answer's token log-probs in order, 0 after its last)."""
    out = {}
    for key, reference in given.items():
        logps, _ = reference.score_tokens(backbone, prepared, batch, LOGPS_ONLY).laid_out()
        out.update({f"ref_{key}_{view}": s for view, s in zip(views, logps.detach().chunk(len(views)))})
    return out


__all__ = ["build", "check_names", "check_setup", "declared", "sequence_scores", "token_scores"]
