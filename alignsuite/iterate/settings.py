"""The ``iterate`` section of a recipe: what the online loop generates, how it judges and builds, and which
reference each round's fit uses."""

from __future__ import annotations

from typing import Literal

from alignsuite.data.procedures.base import Procedure
from alignsuite.iterate.engines import GenerationEngine
from alignsuite.iterate.errors import IterateError
from alignsuite.judges import PreferenceJudge
from alignsuite.judging import Scorer

REFERENCES = ("initial", "round_start", "both")
WIN_RATE = "win_rate"  # a preference judge's value of a sample: its mean win probability, the diagonal included


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
        judge: what every prompt's samples are judged with: a scorer (any ``alignsuite.judging.Scorer``: a toy
            world's reward, a reward model, an image scorer, WER, an LLM judge), or a pairwise preference judge
            (``alignsuite.judges.PreferenceJudge``: a K x K win matrix per prompt, kept as the lists'
            ``win_matrix``, each sample scored by its win rate; ``alignsuite.judges.Annotators`` keeps its
            annotators' vote counts as the lists' ``votes`` too).
        score: the judged value that ranks the samples (the judge's main value when None; ``win_rate`` for a
            preference judge); a lower-is-better value (WER) is negated, so that in the written lists a higher
            score is always better.
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
        draws_per_call: how many of a prompt's ``num_samples`` one ``generate`` call draws: each call holds
            ``batch_size`` prompts, each repeated this many times (``num_return_sequences`` in ``transformers``'
            terms), in that many times the memory. 1 (the default) draws one sample per prompt per call, with the
            seeds above; with ``d`` > 1 the samples ``g d .. (g + 1) d - 1`` of a prompt are drawn together, in the
            chunk seeded ``seed + 7_919 * r + 1_000_003 * g + d * (the chunk's first prompt)``. Fewer, larger calls
            make more samples per second (``benchmarks/bench_generation.py``) and different ones.
        heldout: prompts to report each round on (a file, ``toy:<world>``); None: none reported.
        num_heldout: how many of them.
        heldout_seed: the seed of the held-out generations (one seed for every round, so rounds compare).
        output_dir: the run's folder: one folder per round inside.
        extragradient: EGPO's extragradient (Zhou, Fazel, Du 2025) at the granularity of rounds: they come in
            twos; the first of each two fits from the policy theta_t on its samples (the extrapolation to
            theta_t+1/2), the second generates from theta_t+1/2 and fits again from theta_t, not from the
            extrapolation (to theta_t+1). ``rounds`` must be even. Each round's fit starts a fresh optimizer unless
            ``carry_optimizer``: then both fits of a two start from theta_t's optimizer state, as EGPO restores it.
        carry_optimizer: each round's fit starts with the optimizer's moments (Adam's averages and step counts)
            of the checkpoint it starts from, not fresh ones (the learning rate schedule starts anew each round).
            With ``extragradient`` that is EGPO's restore: the update fit starts from theta_t with the optimizer
            state theta_t was reached with, not the extrapolation's.
        engine: what draws the samples (:mod:`alignsuite.iterate.engines`): the backbone's own ``generate`` when
            None; ``alignsuite.iterate.VLLMEngine`` where vLLM is installed (language backbones, GPUs).
        keep_in_memory: on one device, the backbone a round's fit trained is the held-out report's and the next
            round's policy, and the next fit trains on from it (with the frozen reference it built, under
            ``reference: initial`` or ``round_start``), instead of each reading the round's checkpoint back: the same weights, so
            the same results (``load`` is 0 in ``round.json``). Round 1's fit trains on from the starting policy
            where building it drew no random number (no adapter initialised). false reads every one back, as a resumed run does.
            Not under several processes, nor a ``*-true`` precision other than ``32-true`` (which casts the
            weights the fit trained): those always read the file.
    """

    def __init__(
        self,
        prompts: str,
        judge: Scorer | PreferenceJudge,
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
        draws_per_call: int = 1,
        heldout: str | None = None,
        num_heldout: int = 64,
        heldout_seed: int = 1234,
        output_dir: str = "runs/iterate",
        extragradient: bool = False,
        engine: GenerationEngine | None = None,
        carry_optimizer: bool = False,
        keep_in_memory: bool = True,
    ) -> None:
        checks = [
            (rounds >= 1, "iterate.rounds", f"at least 1, got {rounds}"),
            (num_samples >= 2, "iterate.num_samples", f"at least 2 to compare samples, got {num_samples}"),
            (shard_size >= 1, "iterate.shard_size", f"at least 1, got {shard_size}"),
            (batch_size >= 1, "iterate.batch_size", f"at least 1, got {batch_size}"),
            (1 <= draws_per_call <= num_samples, "iterate.draws_per_call",
             f"from 1 to iterate.num_samples ({num_samples}), got {draws_per_call}"),
            (num_heldout >= 1, "iterate.num_heldout", f"at least 1, got {num_heldout}"),
            (prompts_per_round is None or prompts_per_round >= 1, "iterate.prompts_per_round",
             f"at least 1 or null, got {prompts_per_round}"),
            (not extragradient or rounds % 2 == 0, "iterate.rounds",
             f"an even number with iterate.extragradient (an extrapolation and an update each), got {rounds}"),
            (reference in REFERENCES, "iterate.reference", f"one of {', '.join(REFERENCES)}, got {reference!r}"),
            (isinstance(judge, (Scorer, PreferenceJudge)), "iterate.judge",
             f"a scorer (alignsuite.judging.Scorer) or a preference judge (alignsuite.judges.PreferenceJudge), got {judge!r}"),
            (engine is None or isinstance(engine, GenerationEngine), "iterate.engine",
             f"a generation engine such as alignsuite.iterate.VLLMEngine, got {engine!r}"),
            (build is None or isinstance(build, Procedure), "iterate.build",
             f"a list procedure such as alignsuite.data.procedures.BestWorstPairs, got {build!r}"),
        ]
        for ok, option, expected in checks:
            if not ok:
                raise IterateError(f"{option}: expected {expected}")
        given = self.values_given(judge)
        if score is not None and score not in given:
            raise IterateError(f"iterate.score: the judge {getattr(judge, 'name', type(judge).__name__)!r} gives"
                               f" {', '.join(given)}; it does not give {score!r}")
        fields = (("scores", "win_matrix", *(("votes",) if getattr(judge, "gives_votes", False) else ()))
                  if isinstance(judge, PreferenceJudge) else ("scores",))
        needs = tuple(build.needs()) if build is not None and hasattr(build, "needs") else ()
        if needs and not set(needs) & set(fields):
            raise IterateError(f"iterate.build: {type(build).__name__} reads {' or '.join(needs)}, which the judge"
                               f" {type(judge).__name__} does not give (the loop's lists hold {', '.join(fields)})")
        self.prompts, self.judge, self.rounds = prompts, judge, rounds
        self.num_prompts, self.prompts_per_round, self.num_samples = num_prompts, prompts_per_round, num_samples
        self.score, self.build, self.reference = score or given[0], build, reference
        self.generation_kwargs = dict(generation_kwargs or {})
        self.seed, self.shard_size, self.batch_size, self.draws_per_call = seed, shard_size, batch_size, draws_per_call
        self.heldout, self.num_heldout, self.heldout_seed = heldout, num_heldout, heldout_seed
        self.output_dir, self.extragradient = output_dir, extragradient
        self.engine = engine or GenerationEngine()
        self.carry_optimizer, self.keep_in_memory = carry_optimizer, keep_in_memory

    def sources(self, index: int) -> tuple[int | None, int | None]:
        """``(round generated from, round the fit starts from)`` for round ``index`` (None: the starting policy):
        the previous round for both, except the second of an extragradient two, which generates from the
        extrapolation (the previous round) and starts from the round before it."""
        previous = index - 1 if index > 1 else None
        if self.extragradient and index % 2 == 0:
            return previous, (index - 2 if index > 2 else None)
        return previous, previous

    @staticmethod
    def values_given(judge) -> tuple[str, ...]:
        """The values a judge gives each sample, its main one first (``win_rate`` for a preference judge)."""
        return (WIN_RATE,) if isinstance(judge, PreferenceJudge) else judge.value_names()

    @property
    def compares(self) -> bool:
        """Whether the judge compares a prompt's samples (a win matrix) rather than scoring each alone."""
        return isinstance(self.judge, PreferenceJudge)

    @property
    def votes(self) -> bool:
        """Whether the judge counts annotators' votes (``alignsuite.judges.Annotators``): kept as the lists' ``votes``."""
        return getattr(self.judge, "gives_votes", False)

    @property
    def lower_is_better(self) -> bool:
        """Whether the ranking value is an error (the judge's main value when not higher-is-better)."""
        return (not self.compares and self.score == self.judge.name and not self.judge.higher_is_better)

    def ranking(self, values: dict | None) -> float | None:
        """A sample's score in the written lists (higher better): the ranking value, negated for an error."""
        from alignsuite.iterate.files import finite

        value = finite((values or {}).get(self.score))
        return None if value is None else (-value if self.lower_is_better else value)

    def check_modality(self, modality: str) -> None:
        from alignsuite.judging import check_modality

        self.engine.check(modality)
        try:
            check_modality(self.judge, modality, "iterate.judge")
        except ValueError as error:
            raise IterateError(f"iterate.judge: {error}") from None


__all__ = ["Iterate", "IterateError", "REFERENCES", "WIN_RATE"]
