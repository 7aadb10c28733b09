"""The online loop: round after round, generate from the current policy, judge, build, fit, and keep it all.

A round is finished when its ``round.json`` exists; a run started again skips finished rounds and, within a
round, every finished step: written sample and judgement shards, the built rows, and the fit (which resumes its
own ``last.ckpt`` exactly, as ``fit`` does). Each round's fit is built fresh from the recipe, its policy starting
from the previous round's checkpoint (:class:`~alignsuite.iterate.round_start.RoundStart`), so a resumed run takes
the same path as one that never stopped. On one device the loop hands the backbone the last fit trained (and a
frozen reference it built) to the next fit instead of reading them back: the same weights
(:meth:`Policies.take`).
"""

from __future__ import annotations

import copy
import os
import time
from collections import Counter

from lightning.fabric.utilities.seed import seed_everything
from lightning.pytorch.callbacks import Callback, ModelSummary
from lightning.pytorch.utilities import rank_zero_info

from alignsuite.iterate.configs import RoundConfigs
from alignsuite.iterate.files import read_json, read_rows, round_dir, write_json
from alignsuite.iterate.report import round_summary, write_run_report
from alignsuite.iterate.round_start import PREVIOUS, RoundStart, copy_starting_reference, policy_state
from alignsuite.iterate.processes import start_processes
from alignsuite.iterate.rounds import (
    build_round, gather_lists, generate_round, heldout_round, judge_round, round_prompts, unwritten,
)
from alignsuite.iterate.settings import Iterate, IterateError
from alignsuite.iterate.signals import LoopSignals

FIT = "fit"


def load_items(source: str, num: int | None, seed: int, column: str | None = None) -> list[dict]:
    from alignsuite.evaluation.prompts import load_prompts

    return load_prompts(source, num if num is not None else (256 if source.startswith("toy:") else None), seed, column)


def round_checkpoint(folder: str) -> str:
    return os.path.join(folder, FIT, "version_0", "checkpoints", "last.ckpt")


def policy_backbone(unbuilt, checkpoint: str | None, device):
    """The policy to generate from: the recipe's starting weights, or a round's checkpoint loaded into them."""
    from alignsuite.iterate.round_start import load_into, sharded_policy_state

    backbone = copy.deepcopy(unbuilt)
    backbone.configure()
    if checkpoint is not None:  # a file, or the folder of a sharded checkpoint (read whole on this process)
        state = sharded_policy_state(checkpoint, backbone) if os.path.isdir(checkpoint) else policy_state(checkpoint)
        load_into(backbone, state, f"round checkpoint {checkpoint}")
    backbone.to(device)
    backbone.policy.eval()
    return backbone


def check_start(cli, settings: Iterate, model) -> None:
    """What can be refused before anything generates: the judge's modality, the reference layout, the trainer."""
    settings.check_modality(model.backbone.modality)
    from lightning.pytorch.strategies import DDPStrategy, ModelParallelStrategy

    strategy = cli.trainer.strategy
    if cli.trainer.world_size > 1 and not isinstance(strategy, (DDPStrategy, ModelParallelStrategy)):
        raise IterateError(f"trainer.strategy: iterate runs on one process, under ddp or under ModelParallelStrategy"
                           f" (FSDP2); {type(strategy).__name__} is not built for it")
    extra = dict(model.extra_references or {})
    if settings.reference == "both" and PREVIOUS not in extra:
        raise IterateError("iterate.reference both: the round's starting policy is the extra reference"
                           f" {PREVIOUS!r}; give model.extra_references.{PREVIOUS} (alignsuite.reference.FrozenCopy)"
                           " and an objective that reads it (inpo)")
    if settings.reference == "round_start" and model.reference is None:
        raise IterateError("iterate.reference round_start: the objective takes no reference; use initial")


def carry_columns(data, settings: Iterate) -> None:
    """The numbers the build rule adds (a pair's win rates, its scores) batched beside the layout's own columns,
    where the layout takes ``number_fields`` (the text pair layout): an objective may read them."""
    columns = tuple(getattr(settings.build, "extra_columns", ()) or ())
    layout = data.get("layout") if hasattr(data, "get") else None
    if not columns or layout is None or not str(layout.get("class_path", "")).endswith("TextPairs"):
        return
    init = layout.get("init_args")
    given = dict((init.get("number_fields") if init is not None else None) or {})
    fields = {**{c: c for c in columns}, **given}
    if init is None:
        layout["init_args"] = {"number_fields": fields}
    else:
        init["number_fields"] = fields


class TrainClock(Callback):
    """Adds the seconds from the training loop's start to its end (``train``) to a round's times: the rest of the
    fit is setting it up and loading its weights."""

    def __init__(self, times: Counter) -> None:
        self.times, self.began = times, 0.0

    def on_train_start(self, trainer, pl_module) -> None:
        self.began = time.perf_counter()

    def on_train_end(self, trainer, pl_module) -> None:
        self.times["train"] += time.perf_counter() - self.began


def fit_round(cli, settings: Iterate, index: int, folder: str, previous: str | None, times: Counter,
              warm=None, summary: bool = True, configs: RoundConfigs | None = None) -> None:
    """The recipe's fit on the round's rows, in ``<round>/fit``; resumed from its own checkpoint if one exists.
    ``warm``: the backbone holding ``previous``'s weights (:meth:`Policies.take`), trained on from where it is.
    ``summary``: whether the fit prints the model's summary (the process's first fit; every round's is the same).
    ``configs``: the process's rounds' configs (the first round's dump, reused); None dumps this round's."""
    section = cli.config[cli.subcommand]
    kept = kept_reference(cli.model, settings) if warm is not None else None
    train = os.path.abspath(os.path.join(folder, "pairs.jsonl"))
    carry_columns(section["data"]["init_args"], settings)
    logger = {"class_path": "lightning.pytorch.loggers.CSVLogger",
              "init_args": {"save_dir": os.path.abspath(folder), "name": FIT, "version": 0}}
    dumped, text = (configs or RoundConfigs(cli)).set({"data.init_args.train": train, "trainer.logger": logger})
    cli._parser(cli.subcommand).dumped_as(section, text)  # config.yaml, written by the fit
    if hasattr(cli, "config_dump"):  # Lightning's record of the hyper-parameters, made once: this round's
        cli.config_dump = dumped
    seed_everything(settings.seed + index, verbose=False)
    cli.instantiate_classes()
    if hasattr(cli.datamodule, "use_rows"):  # the rows this loop wrote, as it wrote them: not read through datasets
        cli.datamodule.use_rows(train, read_rows(train))
    if warm is not None:
        hand_over(cli.model, warm, kept)
        if kept is None and previous is None and settings.reference in ("initial", "round_start"):
            # round 1: the policy handed over holds the recipe's starting weights, the reference's
            copy_starting_reference(getattr(cli.model, "reference", None), warm, str(cli.trainer.precision))
    trainer = cli.trainer
    if not summary:
        trainer.callbacks[:] = [c for c in trainer.callbacks if not isinstance(c, ModelSummary)]
    trainer.callbacks += [RoundStart(previous, settings.reference, settings.carry_optimizer, warm is not None),
                          TrainClock(times)]
    last = round_checkpoint(folder)
    try:
        trainer.fit(cli.model, cli.datamodule, ckpt_path=last if os.path.exists(last) else None)
    finally:
        cli._parser(cli.subcommand).known_dump = None  # saved by the fit, or not at all: never by a later save
    if not os.path.exists(last):
        raise IterateError(f"round {index}: the fit wrote no {last}; keep checkpoint.save_last true")


def keeps_in_memory(trainer, settings: Iterate) -> bool:
    """Whether the loop hands models from fit to fit in memory (``iterate.keep_in_memory``): on one device, and
    under a precision that leaves the trained parameters as the recipe builds them (not a ``*-true`` precision
    other than ``32-true``, which casts them)."""
    from lightning.pytorch.strategies import SingleDeviceStrategy

    precision = str(trainer.precision)
    return (settings.keep_in_memory and isinstance(trainer.strategy, SingleDeviceStrategy)
            and not (precision.endswith("-true") and precision != "32-true"))


def random_states() -> tuple:
    """The random generators' states (Python's, NumPy's, torch's on the CPU and on started GPUs), comparable with
    ``==``: equal before and after a build that drew nothing from them."""
    import random

    import numpy as np
    import torch

    numpy = np.random.get_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    return (random.getstate(), numpy[1].tobytes(), numpy[2:], torch.get_rng_state().numpy().tobytes(),
            tuple(state.numpy().tobytes() for state in cuda))


def kept_reference(model, settings: Iterate):
    """The frozen reference model the last fit built, for the next fit's reference: the recipe's again (``reference:
    initial``), or the round's starting policy copied into it (``round_start``); not one that moves with training."""
    reference = getattr(model, "reference", None)
    if settings.reference not in ("initial", "round_start") or reference is None or reference.moves:
        return None
    return getattr(reference, "model", None)


def hand_over(module, backbone, reference_model) -> None:
    """Give a freshly built round module the previous fit's backbone (trained on from its weights, in train mode as
    a freshly loaded one is, with what a checkpoint carries besides weights, a draw counter, as a fresh build's)
    and its frozen reference model; their builds then load nothing."""
    backbone.policy.train()
    backbone.load_state(module.backbone.state())
    module.backbone = backbone
    reference = getattr(module, "reference", None)
    if reference_model is not None and reference is not None and hasattr(reference, "model"):
        reference.model = reference_model


def run_rounds(cli, settings: Iterate) -> list[dict]:
    """Run the rounds not finished yet; returns every round's summary (round 0: the starting policy).

    Under a data-parallel recipe every process runs this (:mod:`alignsuite.iterate.processes`): each generates
    and judges its own prompt shards, the first builds the rows and judges the held-out prompts, and all fit."""
    model = cli.model
    check_start(cli, settings, model)
    procs = start_processes(cli.trainer, model)
    unbuilt = copy.deepcopy(model.backbone)  # as the recipe builds it: every round's policy starts from it
    device = cli.trainer.strategy.root_device
    items = load_items(settings.prompts, settings.num_prompts, 0)
    heldout = (load_items(settings.heldout, settings.num_heldout, settings.heldout_seed)
               if settings.heldout else None)
    os.makedirs(settings.output_dir, exist_ok=True)
    with LoopSignals() as signals:
        summaries = rounds_from(cli, settings, procs, Policies(unbuilt, device, settings, cli.trainer), items, heldout,
                                signals)
    if procs.first:
        write_run_report(settings, summaries)
    return summaries


def rounds_from(cli, settings: Iterate, procs, policies, items: list[dict], heldout: list[dict] | None,
                signals: LoopSignals) -> list[dict]:
    """Every round's summary, running those not finished yet; a stop signal between fits is acted on at the next
    shard written (one process) or phase end (several)."""
    written = (lambda where: signals.check(procs, where)) if procs.count == 1 else None
    summaries, fitted, configs = [], False, RoundConfigs(cli)
    for index in range(0, settings.rounds + 1):
        folder = round_dir(settings.output_dir, index)
        done = os.path.join(folder, "round.json")
        if os.path.exists(done):
            summaries.append(read_json(done))
            continue
        generate_from, start_from = (None if r is None else round_checkpoint(round_dir(settings.output_dir, r))
                                     for r in settings.sources(index))
        times: Counter = Counter(load=0.0)  # 0 when the policy is the one the last fit trained
        round_began = time.perf_counter()
        summary: dict = {"round": index}
        if index > 0:
            prompts = round_prompts(items, settings, index)
            if unwritten(prompts, settings, folder, "judged", procs.mine):
                generator, generate = policies.get(generate_from, folder, times)
                generate_round(generator, prompts, settings, index, folder, times, procs.mine, generate, written)
                judge_round(generator, prompts, settings, folder, times, procs.mine, written)
            warm = policies.take(start_from)  # no second copy of the policy beside the fit
            procs.wait(f"iterate round {index}: every shard judged")
            signals.check(procs, f"in round {index} after judging its samples")
            summary.update(procs.from_first(build, prompts, settings, index, folder, times))
            began = time.perf_counter()
            fit_round(cli, settings, index, folder, start_from, times, warm, summary=not fitted, configs=configs)
            fitted = True
            policies.adopt(round_checkpoint(folder), cli.model.backbone)
            if settings.extragradient:
                summary["step"] = "extrapolation" if index % 2 else "update"
            times["fit"] += time.perf_counter() - began
        if heldout is not None and procs.first:
            # kept for the next round's generation, which starts from this round's checkpoint
            policy, generate = policies.get(round_checkpoint(folder) if index > 0 else None, folder, times)
            began = time.perf_counter()
            summary["heldout"] = heldout_round(policy, heldout, settings, folder,
                                               round_dir(settings.output_dir, 0) if index > 0 else None, generate)
            times["heldout"] += time.perf_counter() - began
        times["round"] = time.perf_counter() - round_began
        summaries.append(procs.from_first(finish_round, summary, times, summaries[0] if summaries else None, done))
        rank_zero_info(f"round {index} done: {summaries[-1].get('line', '')}")
        signals.check(procs, f"after round {index}")
    policies.drop()
    return summaries


def build(prompts: list[dict], settings: Iterate, index: int, folder: str, times: Counter) -> dict:
    """The round's judged lists gathered (the prompts' images written as files) and its rows built
    (``build_round``): what the summary reports of them."""
    began = time.perf_counter()
    lists, judged = gather_lists(prompts, settings, folder)
    built = build_round(lists, settings, index, folder, judged)
    times["build"] += time.perf_counter() - began
    return {"judged": judged, "build": built,
            "train_mean_score": _mean([s for r in lists for s in r["scores"] if s == s])}


def finish_round(summary: dict, times: Counter, first: dict | None, done: str) -> dict:
    """The round's summary with its times (``first``: round 0's, for the win rate against it), written last."""
    summary["seconds"] = {k: round(v, 3) for k, v in times.items()}
    summary = round_summary(summary, first)
    write_json(done, summary)
    return summary


class Policies:
    """The policy at a checkpoint (None: the recipe's starting weights) and the engine drawing from it, built
    once: a round's held-out policy is the next round's generator, and is kept until then."""

    def __init__(self, unbuilt, device, settings: Iterate, trainer=None) -> None:
        self.unbuilt, self.device, self.settings = unbuilt, device, settings
        self.keep = trainer is not None and keeps_in_memory(trainer, settings)
        self.checkpoint: str | None = None
        self.policy = self.generate = None
        self.adopted = False  # whether the policy is the one the next fit would build or read back (see `take`)

    def get(self, checkpoint: str | None, folder: str, times: Counter | None = None):
        """``(policy, generate)`` at ``checkpoint``; the engine's files (if any) go in ``folder``; the seconds spent
        building them are added to ``times["load"]``."""
        if self.policy is None or self.checkpoint != checkpoint:
            self.drop()
            began = time.perf_counter()
            # The recipe's starting policy is the one the first fit would build, if building it drew no random number
            # (no adapter initialised, no weight left to a random initialisation).
            drawn = random_states() if self.keep and checkpoint is None else None
            self.policy, self.checkpoint = policy_backbone(self.unbuilt, checkpoint, self.device), checkpoint
            self.adopted = drawn is not None and random_states() == drawn
            self.generate = self.settings.engine.start(self.policy, folder)
            if times is not None:
                times["load"] += time.perf_counter() - began
        elif self.generate is None:  # adopted from the fit: the engine starts on first use
            self.generate = self.settings.engine.start(self.policy, folder)
        attach(self.settings.judge, self.policy)
        return self.policy, self.generate

    def adopt(self, checkpoint: str, backbone) -> None:
        """Take the backbone a fit has just trained as the policy at ``checkpoint``, the file that fit ended by
        writing, instead of building it again from that file: the same weights, in the same dtypes (where the
        loop keeps its models in memory: :func:`keeps_in_memory`)."""
        if not self.keep:
            return
        self.drop()
        backbone.to(self.device)  # Lightning's teardown moved it off an accelerator
        backbone.policy.eval()
        self.policy, self.checkpoint, self.generate, self.adopted = backbone, checkpoint, None, True

    def take(self, checkpoint: str | None):
        """Let go of the policy; returns it when it holds the weights the next fit starts from, ``checkpoint``'s (a
        fit's trained backbone) or the recipe's (None: the starting policy, built as the fit would build it), for
        that fit to train on from (None: that fit builds its own and reads the weights from the file)."""
        policy = self.policy if self.adopted and self.checkpoint == checkpoint else None
        self.drop()
        return policy

    def drop(self) -> None:
        if self.policy is not None:
            self.settings.engine.stop()
        self.policy = self.checkpoint = self.generate = None
        self.adopted = False


def attach(judge, policy) -> None:
    """Hand the policy that generated to a judge that prompts it (self-rewarding: ``LLMJudge(policy: true)``)."""
    if hasattr(judge, "attach"):
        judge.attach(policy)


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


__all__ = ["run_rounds"]
