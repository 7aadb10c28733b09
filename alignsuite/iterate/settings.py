"""The ``iterate`` section of a recipe: what the online loop generates, how it judges and builds, and which
reference each round's fit uses."""

from __future__ import annotations

from typing import Literal

from alignsuite.data.procedures.base import Procedure
from alignsuite.judging import Scorer

REFERENCES = ("initial", "round_start", "both")


class IterateError(ValueError):
    """A setting or a round's state the loop cannot run with (reported on the command line in one line)."""


class Iterate:
    """The online loop's settings (``python -m alignsuite iterate --config recipe.yaml``, section ``iterate``).

    Each of ``rounds`` rounds generates ``num_samples`` outputs per prompt from the current policy, judges them
    with ``judge``, builds training rows from the judged lists with ``build``, and fits the recipe's model on them
    (the recipe's ``trainer``, ``model`` and ``data`` sections, with ``data.train`` set to the round's lists).

    Args:
        prompts: the prompts to generate from: a file (``.txt``, ``.jsonl``, ``.json``, ``.csv``, ``.parquet``
            with a ``prompt`` column and any column the backbone's generation reads) or ``toy:<world>``.
        rounds: how many rounds to run.
        num_prompts: the prompts read from ``prompts`` (all of a file when None; 256 of a toy world).
        prompts_per_round: each round generates from its own slice of this many prompts, in order and wrapping
            around (SPPO's three parts of UltraFeedback); None: every round uses all of them.
        num_samples: outputs sampled per prompt (K >= 2).
        judge: the scorer every sample is judged with (any ``alignsuite.judging.Scorer``: a toy world's reward,
            a reward model, an image scorer, WER ...).
        score: the judged value that ranks the samples (the judge's main value when None); a lower-is-better
            value (WER) is negated, so that in the written lists a higher score is always better.
        build: the rule that makes training rows of each prompt's judged list: any list procedure of
            ``alignsuite.data.procedures`` (best vs worst, margin pairs, RSO rejection sampling, SPPO win rates
            ...). None: the lists themselves, for a listwise objective reading them with a list layout.
        reference: the reference of each round's fit: ``initial`` (the recipe's reference throughout: iterative
            DPO), ``round_start`` (the reference is the round's starting policy: SPPO, DNO, BPO), ``both`` (the
            recipe's reference and the round's starting policy as the extra reference ``previous``: INPO).
        generation_kwargs: passed to the backbone's ``generate`` (temperature, top_p, max_new_tokens ...).
        seed: seed of the samples; the sample ``j`` of the prompt ``i`` of round ``r`` is drawn in the chunk
            seeded ``seed + 7_919 * r + 1_000_003 * j + (the chunk's first prompt)``, the same however the run was
            interrupted.
        shard_size: prompts generated (and judged) per file: an interrupted round resumes at the first shard
            that was not written.
        batch_size: prompts generated at once.
        heldout: prompts to report each round on (a file, ``toy:<world>``); None: none reported.
        num_heldout: how many of them.
        heldout_seed: the seed of the held-out generations (one seed for every round, so rounds compare).
        output_dir: the run's folder: one folder per round inside.
    """

    def __init__(
        self,
        prompts: str,
        judge: Scorer,
        rounds: int = 3,
        num_prompts: int | None = None,
        prompts_per_round: int | None = None,
        num_samples: int = 4,
        score: str | None = None,
        build: Procedure | None = None,
        reference: Literal["initial", "round_start", "both"] = "initial",
        generation_kwargs: dict | None = None,
        seed: int = 0,
        shard_size: int = 64,
        batch_size: int = 16,
        heldout: str | None = None,
        num_heldout: int = 64,
        heldout_seed: int = 1234,
        output_dir: str = "runs/iterate",
    ) -> None:
        checks = [
            (rounds >= 1, "iterate.rounds", f"at least 1, got {rounds}"),
            (num_samples >= 2, "iterate.num_samples", f"at least 2 to compare samples, got {num_samples}"),
            (shard_size >= 1, "iterate.shard_size", f"at least 1, got {shard_size}"),
            (batch_size >= 1, "iterate.batch_size", f"at least 1, got {batch_size}"),
            (num_heldout >= 1, "iterate.num_heldout", f"at least 1, got {num_heldout}"),
            (prompts_per_round is None or prompts_per_round >= 1, "iterate.prompts_per_round",
             f"at least 1 or null, got {prompts_per_round}"),
            (reference in REFERENCES, "iterate.reference", f"one of {', '.join(REFERENCES)}, got {reference!r}"),
            (isinstance(judge, Scorer), "iterate.judge", f"a scorer (alignsuite.judging.Scorer), got {judge!r}"),
            (build is None or isinstance(build, Procedure), "iterate.build",
             f"a list procedure such as alignsuite.data.procedures.BestWorstPairs, got {build!r}"),
        ]
        for ok, option, expected in checks:
            if not ok:
                raise IterateError(f"{option}: expected {expected}")
        if score is not None and score not in judge.value_names():
            raise IterateError(f"iterate.score: the judge {judge.name!r} gives {', '.join(judge.value_names())};"
                               f" it does not give {score!r}")
        self.prompts, self.judge, self.rounds = prompts, judge, rounds
        self.num_prompts, self.prompts_per_round, self.num_samples = num_prompts, prompts_per_round, num_samples
        self.score, self.build, self.reference = score or judge.name, build, reference
        self.generation_kwargs = dict(generation_kwargs or {})
        self.seed, self.shard_size, self.batch_size = seed, shard_size, batch_size
        self.heldout, self.num_heldout, self.heldout_seed = heldout, num_heldout, heldout_seed
        self.output_dir = output_dir

    @property
    def lower_is_better(self) -> bool:
        """Whether the ranking value is an error (the judge's main value when not higher-is-better)."""
        return self.score == self.judge.name and not self.judge.higher_is_better

    def ranking(self, values: dict | None) -> float | None:
        """A sample's score in the written lists (higher better): the ranking value, negated for an error."""
        from alignsuite.iterate.files import finite

        value = finite((values or {}).get(self.score))
        return None if value is None else (-value if self.lower_is_better else value)

    def check_modality(self, modality: str) -> None:
        try:
            self.judge.check_modality(modality)
        except ValueError as error:
            raise IterateError(f"iterate.judge: {error}") from None


__all__ = ["Iterate", "IterateError", "REFERENCES"]
