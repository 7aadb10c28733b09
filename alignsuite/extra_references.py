"""Named extra references: further score sources an objective declares beside its reference.

An objective lists the names it reads (``extra_references = ("weak_base", "weak_aligned")``, WSPO's weak pair;
MODPO's margin model) and the recipe gives one :class:`~alignsuite.reference.Reference` per name under
``model.extra_references``. Each is built and sharded as the reference is, never trained, and scored without grad on
the step's prepared inputs. It is rebuilt from its source rather than checkpointed, except one whose weights move
with training (``moves``: `alignsuite.stage_reference.StageSnapshot`, which follows the data stages): its state
travels under ``extra_reference_state.<name>`` of a checkpoint, its weights there too or, sharded, as shards in
the module's state dict. Its scores reach the objective in ``scores.extra`` as ``ref_<name>_<view>``: ``[B]`` per
view for sequence objectives, ``[B, T]`` per view (0 after each answer's last token) for token-level ones.
"""

from __future__ import annotations

import torch
from torch import Tensor

from alignsuite.backbones.base import Backbone
from alignsuite.data.stages import batch_stage
from alignsuite.reference import Reference
from alignsuite.scores import TokenNeeds
from alignsuite.sharding import is_sharded

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
        check_snapshot_name(key, reference)
        if getattr(reference, "stored", None) is not None or reference.can_sample:
            # Precomputed and SwappedCopy keep the starting policy's scores or weights; CheckpointPool the policy's own.
            raise ValueError(
                f"model.extra_references.{key} is {type(reference).__name__}, which scores the policy's own weights;"
                " an extra reference has weights of its own: use FrozenCopy(model_name_or_path=...)"
            )


def check_snapshot_name(key: str, reference) -> None:
    """A snapshot of a data stage is named by its stage (``stage_<j>``), so that the objective reads the model it
    means."""
    stage = getattr(reference, "snapshot_stage", None)
    if stage is not None and key != f"stage_{stage}":
        raise ValueError(f"model.extra_references.{key} is {type(reference).__name__}(stage={stage}), the policy as"
                         f" stage {stage} began; name it stage_{stage}")


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


def enter_stage(module, references: list, batch: dict) -> None:
    """Hand each reference that follows the data stages (the reference, extra ones) a training batch's stage."""
    for reference in references:
        if reference is not None and reference.follows_stages:
            reference.enter_stage(module, batch_stage(batch))


def rebuilt(named: dict[str, Reference | None]) -> tuple[str, ...]:
    """The state-dict prefixes of the references (``{prefix: reference}``) rebuilt from their source: all but the
    sharded ones whose weights move with training (their shards go with the policy's)."""
    return tuple(prefix for prefix, reference in named.items()
                 if not (reference is not None and reference.moves and is_sharded(getattr(reference, "model", None))))


def save_state(given: dict, checkpoint: dict) -> None:
    """What each extra reference adds to a checkpoint, under ``extra_reference_state.<name>``."""
    states = {}
    for key, reference in given.items():
        reference.on_save_checkpoint(state := {})
        if state:
            states[key] = state
    if states:
        checkpoint["extra_reference_state"] = states


def load_state(given: dict, checkpoint: dict) -> None:
    """Hand each extra reference what `save_state` kept of it."""
    states = checkpoint.get("extra_reference_state", {})
    for key, reference in given.items():
        if key in states:
            reference.on_load_checkpoint(states[key])


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


__all__ = ["build", "check_names", "check_setup", "check_snapshot_name", "declared", "enter_stage", "load_state",
           "rebuilt", "save_state", "sequence_scores", "token_scores"]
