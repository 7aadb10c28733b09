"""The online loop (``iterate``): rounds of generate, judge, build and fit, every step kept and resumable.

The runs here are small (16 prompts, 2 samples, a few steps) on the language toy world's shipped base model, so
they check the files and the resume, not the toy-world effect (test_iterate_world.py)."""

from __future__ import annotations

import filecmp
import json
import math
import os

import pytest
import torch

from alignsuite.cli import main
from alignsuite.data.procedures.base import Report
from alignsuite.evaluation import ToyReward
from alignsuite.iterate import Iterate, IterateError
from alignsuite.iterate import loop, rounds
from alignsuite.iterate.files import read_json, read_rows
from alignsuite.iterate.report import round_summary

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(REPO, "recipes/toy/llm_iterate_dpo.yaml")


def small(out, *extra) -> list[str]:
    return ["iterate", "--config", RECIPE, "--iterate.num_prompts", "16", "--iterate.prompts_per_round", "16",
            "--iterate.num_samples", "3", "--iterate.shard_size", "8", "--iterate.batch_size", "8",
            "--iterate.rounds", "2", "--iterate.num_heldout", "8", "--iterate.output_dir", str(out),
            "--data.init_args.batch_size", "4", "--checkpoint.every_n_train_steps", "1",
            "--trainer.log_every_n_steps", "1", *extra]


def round_files(out) -> list[str]:
    """Every data file the rounds wrote (not the fits' logs, whose names carry times)."""
    found = []
    for root, _, files in os.walk(out):
        if f"{os.sep}fit" in root or "figures" in root:
            continue
        found += [os.path.relpath(os.path.join(root, f), out) for f in files if f.endswith((".jsonl", ".json"))]
    return sorted(found)


def final_weights(out, index: int) -> dict:
    ckpt = torch.load(loop.round_checkpoint(os.path.join(out, f"round_{index:02d}")), weights_only=True)
    return ckpt["state_dict"]


def metrics(out, index: int) -> list[str]:
    path = os.path.join(out, f"round_{index:02d}", "fit", "version_0", "metrics.csv")
    with open(path) as f:
        return [line for line in f if "train/loss" not in line]  # the header names the columns


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("iterate") / "run"
    main(small(out))
    return out


def test_a_run_keeps_every_rounds_samples_judgements_pairs_checkpoint_and_report(uninterrupted):
    out = uninterrupted
    summaries = read_json(os.path.join(out, "rounds.json"))
    assert [s["round"] for s in summaries] == [0, 1, 2]
    for index in (1, 2):
        folder = os.path.join(out, f"round_{index:02d}")
        samples = read_rows(os.path.join(folder, "samples", "00000.jsonl")) + \
            read_rows(os.path.join(folder, "samples", "00001.jsonl"))
        assert len(samples) == 16 * 3 and {s["sample"] for s in samples} == {0, 1, 2}
        judged = read_rows(os.path.join(folder, "judged", "00000.jsonl"))
        assert all(0 <= r["values"]["toy_reward_llm"] <= 1 for r in judged)
        lists = read_rows(os.path.join(folder, "lists.jsonl"))
        assert len(lists) == 16 and all(len(r["responses"]) == 3 for r in lists)
        # the written score is the judge's value of that very sample
        first = [r for r in judged if r["prompt_index"] == 0]
        assert lists[0]["scores"] == [r["values"]["toy_reward_llm"] for r in first]
        build = read_json(os.path.join(folder, "build.json"))
        pairs = read_rows(os.path.join(folder, "pairs.jsonl"))
        assert build["rows"] == len(pairs) > 0 and build["prompts"] == 16
        assert build["rows"] + sum(build["dropped"].values()) == 16
        assert all(p["score_chosen"] > p["score_rejected"] for p in pairs)
        assert os.path.exists(loop.round_checkpoint(folder))
        hyper = torch.load(loop.round_checkpoint(folder), weights_only=False)["datamodule_hyper_parameters"]
        assert hyper["train"] == os.path.abspath(os.path.join(folder, "pairs.jsonl"))  # the round's, not the recipe's
        summary = summaries[index]
        seconds = summary["seconds"]
        assert set(seconds) >= {"generate", "judge", "build", "fit", "train", "load", "heldout", "round"}
        assert seconds["train"] <= seconds["fit"] and seconds["generate"] + seconds["fit"] <= seconds["round"]
        # round 0's policy generates round 1; each fit's trained backbone is the next policy, not read back
        assert seconds["load"] == 0
        assert 0 <= summary["loop_overhead"] < 1
        assert 0 <= summary["heldout"]["win_rate"] <= 1
        low, high = summary["heldout"]["win_interval"]
        assert low <= summary["heldout"]["win_rate"] <= high
    # round 2 generated from round 1's policy, not the base: its samples differ from round 1's
    assert read_rows(os.path.join(out, "round_01/samples/00000.jsonl")) != \
        read_rows(os.path.join(out, "round_02/samples/00000.jsonl"))
    assert os.path.getsize(os.path.join(out, "report.html")) > 0
    assert os.path.exists(os.path.join(out, "figures", "rounds.png"))


def test_a_finished_run_started_again_does_nothing_more(uninterrupted, monkeypatch):
    before = {f: os.path.getmtime(os.path.join(uninterrupted, f)) for f in round_files(uninterrupted)}
    monkeypatch.setattr(loop, "fit_round", lambda *a, **k: pytest.fail("a finished round was fitted again"))
    monkeypatch.setattr(rounds, "generate_chunked", lambda *a, **k: pytest.fail("a finished round generated again"))
    main(small(uninterrupted))
    after = {f: os.path.getmtime(os.path.join(uninterrupted, f)) for f in before}
    assert {f: t for f, t in after.items() if not f.startswith("rounds.json")} == \
        {f: t for f, t in before.items() if not f.startswith("rounds.json")}


def test_keeping_the_trained_backbone_in_memory_gives_the_files_and_weights_of_reading_it_back(uninterrupted, tmp_path,
                                                                                               monkeypatch):
    """``keep_in_memory`` (the default) hands each fit's backbone and frozen reference to the next fit; reading
    them back from the round's checkpoint instead gives the same samples, rows and weights, bit for bit."""
    handed = []
    real = loop.hand_over
    monkeypatch.setattr(loop, "hand_over", lambda module, backbone, reference: (
        handed.append(reference is not None), real(module, backbone, reference))[1])
    out = tmp_path / "run"
    main(small(out, "--iterate.keep_in_memory", "false"))
    assert handed == []  # every fit built its policy and reference and read the previous round's weights
    for name in round_files(uninterrupted):
        if not (name.endswith("round.json") or name == "rounds.json"):
            assert filecmp.cmp(out / name, uninterrupted / name, shallow=False), name
    for index in (1, 2):
        got, want = final_weights(out, index), final_weights(uninterrupted, index)
        assert all(torch.equal(got[k], want[k]) for k in want)
        assert read_json(out / f"round_{index:02d}" / "round.json")["seconds"]["load"] > 0
    kept = tmp_path / "kept"
    main(small(kept))
    # round 1's fit trained on from round 0's starting policy (whose build drew no random number), building its own
    # reference; round 2's from round 1's backbone, with round 1's reference model
    assert handed == [False, True]


def test_the_starting_policy_is_handed_to_the_first_fit_only_if_building_it_drew_no_random_number():
    """Round 0's policy is round 1's fit's starting point only where the fit would build the very same weights: a
    build that draws from the random generators (a LoRA adapter's initialisation) leaves round 1 to build its own."""
    from types import SimpleNamespace

    from lightning.pytorch.strategies import SingleDeviceStrategy

    from alignsuite.backbones import CausalLM
    from alignsuite.backbones.lora import LoraSpec
    from alignsuite.iterate.engines import GenerationEngine

    trainer = SimpleNamespace(precision="32-true", strategy=SingleDeviceStrategy(torch.device("cpu")))
    settings = SimpleNamespace(judge=None, engine=GenerationEngine(), keep_in_memory=True)
    for lora, handed in ((None, True), (LoraSpec(r=4), False)):
        policies = loop.Policies(CausalLM("toy:llm", lora=lora), torch.device("cpu"), settings, trainer)
        policy, _ = policies.get(None, "round_00")
        assert (policies.take(None) is policy) is handed
        assert policies.policy is None  # let go either way


def test_a_warm_round_start_reads_the_checkpoint_only_for_what_is_not_in_memory(tmp_path):
    """With the policy handed over (``warm``) no checkpoint is read (the file is absent): ``round_start`` copies the
    policy's weights into the reference; only the optimizer's moments come from the file."""
    from types import SimpleNamespace

    from alignsuite.backbones import CausalLM
    from alignsuite.iterate.round_start import RoundStart
    from alignsuite.module import PreferenceModule
    from alignsuite.objectives import DPO
    from alignsuite.reference import FrozenCopy

    module = PreferenceModule(CausalLM("toy:llm"), DPO(), FrozenCopy())
    module.configure_model()
    start = {k: v.clone() for k, v in module.backbone.policy.state_dict().items()}
    trainer = SimpleNamespace(ckpt_path=None)
    absent = str(tmp_path / "absent.ckpt")
    RoundStart(absent, "initial", warm=True).on_fit_start(trainer, module)
    with torch.no_grad():
        for p in module.backbone.policy.parameters():
            p.add_(0.5)  # the policy as the previous round's fit left it
    RoundStart(absent, "round_start", warm=True).on_fit_start(trainer, module)
    policy, reference = module.backbone.policy.state_dict(), module.reference.model.state_dict()
    assert all(torch.equal(reference[k], policy[k].to(reference[k].dtype)) for k in start)
    assert not torch.equal(reference["lm_head.weight"], start["lm_head.weight"])
    with pytest.raises(FileNotFoundError):  # carrying the optimizer reads its moments from the file
        RoundStart(absent, "initial", carry_optimizer=True, warm=True).on_fit_start(trainer, module)


class Stop(Exception):
    pass


@pytest.mark.parametrize("where", ["generation", "judging", "fitting"])
def test_a_run_stopped_in_round_2_resumes_to_the_same_files_and_weights(uninterrupted, tmp_path, monkeypatch, where):
    out = tmp_path / "run"
    real_judge, real_fit = rounds.judge_round, loop.RoundStart
    calls = {"n": 0}

    if where == "generation":  # after round 2's first shard is written
        original = rounds.write_rows

        def write_rows(path, rows):
            original(path, rows)
            if "round_02" in path and f"samples{os.sep}00000" in path:
                raise Stop
        monkeypatch.setattr(rounds, "write_rows", write_rows)
    elif where == "judging":
        def judge_round(backbone, items, settings, folder, times, *rest):
            if folder.endswith("round_02"):
                raise Stop
            return real_judge(backbone, items, settings, folder, times, *rest)
        monkeypatch.setattr(loop, "judge_round", judge_round)
    else:  # one optimizer step into round 2's fit, after its checkpoint
        class StopInFit(real_fit):
            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                calls["n"] += 1
                if self.previous is not None and trainer.global_step == 1:
                    raise Stop
        monkeypatch.setattr(loop, "RoundStart", StopInFit)
    with pytest.raises(Stop):
        main(small(out))
    assert not os.path.exists(out / "round_02" / "round.json")
    monkeypatch.undo()
    main(small(out))
    assert round_files(out) == round_files(uninterrupted)
    for name in round_files(out):
        if name.endswith("round.json") or name == "rounds.json":
            continue  # they hold the times
        assert filecmp.cmp(out / name, uninterrupted / name, shallow=False), name
    got, want = final_weights(out, 2), final_weights(uninterrupted, 2)
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    assert metrics(out, 2)[-1] == metrics(uninterrupted, 2)[-1]  # the last step, after the resume


@pytest.mark.parametrize("signum, code", [("SIGTERM", 143), ("SIGUSR1", 138)])
def test_a_stop_signal_while_generating_stops_at_the_shard_and_the_run_resumes(uninterrupted, tmp_path, monkeypatch,
                                                                              capsys, signum, code):
    """SIGTERM (or SLURM's SIGUSR1, which requeues the job) while round 2 generates, outside any fit: the loop
    stops after the shard it was writing, exits 128 + the signal, and the same command ends with the files and
    weights of a run that never stopped."""
    import signal

    from alignsuite.iterate import signals

    out = tmp_path / "run"
    original = rounds.write_rows

    def write_rows(path, rows):
        original(path, rows)
        if "round_02" in path and f"samples{os.sep}00000" in path:
            os.kill(os.getpid(), getattr(signal, signum))  # the handler records it; the loop acts after the shard
    monkeypatch.setattr(rounds, "write_rows", write_rows)
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setattr(signals, "requeue_slurm_job", lambda: "requeued SLURM job 4242; it resumes with --ckpt_path last")
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as stopped:
        main(small(out))
    assert stopped.value.code == code
    assert signal.getsignal(signal.SIGTERM) == before  # the loop's handler is gone with the loop
    err = capsys.readouterr().err
    assert f"stopped by {signum} in round 2 after generating shard 0; the files written so far are kept" in err
    assert ("requeued SLURM job 4242" in err) == (signum == "SIGUSR1")
    assert os.path.exists(out / "round_02" / "samples" / "00000.jsonl")
    assert not os.path.exists(out / "round_02" / "samples" / "00001.jsonl")
    monkeypatch.undo()
    main(small(out))
    for name in round_files(uninterrupted):
        if not name.endswith("round.json") and name != "rounds.json":
            assert filecmp.cmp(out / name, uninterrupted / name, shallow=False), name
    got, want = final_weights(out, 2), final_weights(uninterrupted, 2)
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_every_candidate_tying_builds_nothing_and_says_so(tmp_path):
    from alignsuite.data.procedures import BestWorstPairs

    settings = Iterate("toy:llm", ToyReward("llm"), build=BestWorstPairs(), output_dir=str(tmp_path))
    lists = [{"prompt": "echo a b", "responses": ["A B", "A B"], "scores": [1.0, 1.0]} for _ in range(3)]
    with pytest.raises(IterateError, match=r"round 2: the build rule BestWorstPairs kept no rows from 3 prompts \(3 by tie:"
                                           r" every scored response has the same score\); nothing to train on"):
        rounds.build_round(lists, settings, 2, str(tmp_path / "round_02"))
    assert not os.path.exists(tmp_path / "round_02" / "build.json")  # the round is not taken as built


def test_failed_judgements_are_counted_and_never_a_score(tmp_path):
    settings = Iterate("toy:llm", ToyReward("llm"), output_dir=str(tmp_path), shard_size=2)
    folder = tmp_path / "round_01"
    from alignsuite.iterate.files import write_rows

    write_rows(str(folder / "judged" / "00000.jsonl"), [
        {"prompt_index": 0, "sample": 0, "seed": 1, "kind": "text", "output": "A", "values": {"toy_reward_llm": 0.5}},
        {"prompt_index": 0, "sample": 1, "seed": 1, "kind": "text", "output": "B", "values": None},
        {"prompt_index": 1, "sample": 0, "seed": 2, "kind": "text", "output": "C", "values": {"toy_reward_llm": float("nan")}},
        {"prompt_index": 1, "sample": 1, "seed": 2, "kind": "text", "output": "D", "values": {"toy_reward_llm": 1.0}},
    ])
    lists, judged = rounds.gather_lists([{"prompt": "echo a"}, {"prompt": "echo b"}], settings, str(folder))
    assert judged["failed_judgements"] == 2 and judged["first_failed"] == [(0, 1), (1, 0)]
    assert lists[0]["scores"][0] == 0.5 and math.isnan(lists[0]["scores"][1]) and math.isnan(lists[1]["scores"][0])


def test_a_lower_is_better_judge_is_negated_in_the_lists():
    judge = ToyReward("llm")
    judge.higher_is_better = False
    settings = Iterate("toy:llm", judge)
    assert settings.ranking({"toy_reward_llm": 0.25}) == -0.25 and settings.ranking(None) is None


@pytest.mark.parametrize("kwargs, message", [
    ({"num_samples": 1}, "iterate.num_samples: expected at least 2"),
    ({"rounds": 0}, "iterate.rounds: expected at least 1"),
    ({"score": "wer"}, "iterate.score: the judge 'toy_reward_llm' gives toy_reward_llm; it does not give 'wer'"),
    ({"reference": "latest"}, "iterate.reference: expected one of initial, round_start, both"),
])
def test_settings_are_refused_naming_the_option(kwargs, message):
    with pytest.raises(IterateError, match=message):
        Iterate("toy:llm", ToyReward("llm"), **kwargs)


def test_a_judge_of_another_modality_is_refused_before_anything_generates(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(small(tmp_path / "run", "--iterate.judge", "alignsuite.evaluation.ToyReward",
                   "--iterate.judge.world", "diffusion"))
    err = capsys.readouterr().err
    assert "iterate.judge: scorer 'toy_reward_diffusion'" in err and "not text; remove it from iterate.judge" in err
    assert not os.path.exists(tmp_path / "run" / "round_01")


def test_reference_both_needs_the_extra_reference_previous(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(small(tmp_path / "run", "--iterate.reference", "both"))
    assert "model.extra_references.previous" in capsys.readouterr().err


def test_the_loops_overhead_is_the_round_less_generation_training_and_the_heldout_report():
    from alignsuite.iterate.report import loop_overhead

    seconds = {"generate": 6.0, "judge": 0.5, "build": 0.25, "load": 0.25, "fit": 2.5, "train": 2.0, "heldout": 1.0,
               "round": 10.0}
    assert loop_overhead(seconds) == pytest.approx((10.0 - 6.0 - 2.0 - 1.0) / 10.0)
    assert loop_overhead({"heldout": 1.0, "round": 1.0}) is None  # round 0 fits nothing


def test_round_summary_win_rate_against_round_0_counts_ties_half():
    first = {"round": 0, "heldout": {"scores": [0.0, 0.5, 1.0, None]}}
    later = round_summary({"round": 1, "heldout": {"scores": [1.0, 0.5, 0.0, 1.0]}}, round_summary(first, None))
    assert later["heldout"]["win_rate"] == pytest.approx((1 + 0.5 + 0) / 3)
    assert later["heldout"]["mean"] == pytest.approx(0.625)
    assert "win rate vs round 0 0.500" in later["line"]


def test_report_counts_survive_a_json_round_trip(tmp_path):
    report = Report("x", 3)
    report.drop({"_source": "lists.jsonl", "_row": 1}, "tie")
    assert json.loads(json.dumps(report.to_dict()))["counts"] == {"dropped: tie": 1}


def test_a_preference_judge_gives_each_list_its_win_matrix_and_win_rates(tmp_path):
    from alignsuite.iterate.files import write_rows
    from alignsuite.judges import BradleyTerryJudge

    settings = Iterate("toy:llm", BradleyTerryJudge(ToyReward("llm"), temperature=0.5), shard_size=4)
    assert settings.score == "win_rate" and settings.compares
    folder = tmp_path / "round_01"
    outputs = ["A B", "A b", "x y"]  # rewards 1, 1/2, 0 for "echo a b"
    write_rows(str(folder / "samples" / "00000.jsonl"),
               [{"prompt_index": 0, "sample": j, "seed": 7, "kind": "text", "output": o} for j, o in enumerate(outputs)])
    rounds.judge_round(None, [{"prompt": "echo a b"}], settings, str(folder), __import__("collections").Counter())
    lists, _ = rounds.gather_lists([{"prompt": "echo a b"}], settings, str(folder))
    s = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    want = [[0.5, s(1.0), s(2.0)], [s(-1.0), 0.5, s(1.0)], [s(-2.0), s(-1.0), 0.5]]
    assert [x for r in lists[0]["win_matrix"] for x in r] == pytest.approx([x for r in want for x in r])
    assert lists[0]["scores"] == pytest.approx([sum(r) / 3 for r in want])  # SPPO's win rates, diagonal included


def test_a_rule_reading_what_the_judge_does_not_give_is_refused_at_start():
    from alignsuite.data.procedures import EmpiricalPreferencePairs

    with pytest.raises(IterateError, match="iterate.build: EmpiricalPreferencePairs reads votes, which the judge"
                                           " ToyReward does not give"):
        Iterate("toy:llm", ToyReward("llm"), build=EmpiricalPreferencePairs())


def test_extragradient_rounds_generate_from_the_extrapolation_and_fit_from_the_point_before_it():
    settings = Iterate("toy:llm", ToyReward("llm"), rounds=4, extragradient=True)
    # round: (generated from, fit starts from); None is the starting policy
    assert [settings.sources(r) for r in (1, 2, 3, 4)] == [(None, None), (1, None), (2, 2), (3, 2)]
    plain = Iterate("toy:llm", ToyReward("llm"), rounds=3)
    assert [plain.sources(r) for r in (1, 2, 3)] == [(None, None), (1, 1), (2, 2)]
    with pytest.raises(IterateError, match="iterate.rounds: expected an even number with iterate.extragradient"):
        Iterate("toy:llm", ToyReward("llm"), rounds=3, extragradient=True)


@pytest.mark.parametrize("mode, resumed", [("initial", False), ("round_start", False), ("both", False),
                                           ("round_start", True)])
def test_a_rounds_fit_starts_from_the_previous_policy_with_the_reference_the_recipe_asks_for(tmp_path, mode, resumed):
    from types import SimpleNamespace

    from alignsuite.backbones import CausalLM
    from alignsuite.iterate.round_start import RoundStart
    from alignsuite.module import PreferenceModule
    from alignsuite.objectives import DPO, INPO
    from alignsuite.reference import FrozenCopy

    extra = {"previous": FrozenCopy()} if mode == "both" else None
    module = PreferenceModule(CausalLM("toy:llm"), INPO() if extra else DPO(), FrozenCopy(), extra_references=extra)
    module.configure_model()
    start = {k: v.clone() for k, v in module.backbone.policy.state_dict().items()}
    moved = {f"backbone.policy.{k}": v + 0.5 for k, v in start.items()}
    torch.save({"state_dict": moved}, tmp_path / "previous.ckpt")
    RoundStart(str(tmp_path / "previous.ckpt"), mode).on_fit_start(
        SimpleNamespace(ckpt_path="resumed.ckpt" if resumed else None), module)
    policy = module.backbone.policy.state_dict()
    assert all(torch.equal(policy[k], (start[k] if resumed else start[k] + 0.5)) for k in start)  # a resume keeps its own
    initial = module.reference.model.state_dict()
    want_reference = (lambda k: start[k] + 0.5) if mode == "round_start" else (lambda k: start[k])
    assert all(torch.equal(initial[k], want_reference(k).to(initial[k].dtype)) for k in start)
    if mode == "both":
        previous = module.extra_references["previous"].model.state_dict()
        assert all(torch.equal(previous[k], start[k] + 0.5) for k in start)


@pytest.mark.slow
def test_a_run_killed_with_sigkill_in_round_2_resumes_to_the_same_files_and_weights(uninterrupted, tmp_path):
    """The process itself killed (SIGKILL: no handler runs) as soon as round 2's first shard is on disk."""
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    command = [sys.executable, "-m", "alignsuite", *small(out)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = out / "round_02" / "samples" / "00000.jsonl"
    while not first.exists() and process.poll() is None:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (out / "round_02" / "round.json").exists()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for name in round_files(uninterrupted):
        if not (name.endswith("round.json") or name == "rounds.json"):
            assert filecmp.cmp(out / name, uninterrupted / name, shallow=False), name
    got, want = final_weights(out, 2), final_weights(uninterrupted, 2)
    assert all(torch.equal(got[k], want[k]) for k in want)


@pytest.mark.slow
def test_a_run_stopped_by_sigterm_in_a_fit_exits_143_and_resumes_to_the_same_weights(uninterrupted, tmp_path):
    """SIGTERM (a SLURM preemption) during round 2's fit: the step's checkpoint is written, the command exits 143 as
    `fit` does, and the same command finishes the run with the uninterrupted run's weights."""
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    command = [sys.executable, "-m", "alignsuite", *small(out)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    fit = out / "round_02" / "fit" / "version_0" / "checkpoints"
    while not fit.exists() and process.poll() is None:
        time.sleep(0.005)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate()
    if (out / "round_02" / "round.json").exists():
        pytest.skip("the fit ended before the signal arrived")
    assert process.returncode == 143, err
    assert "stopped by SIGTERM" in err
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    got, want = final_weights(out, 2), final_weights(uninterrupted, 2)
    assert all(torch.equal(got[k], want[k]) for k in want)


@pytest.mark.parametrize("precision, adopted", [("32-true", True), ("bf16-mixed", True), ("bf16-true", False)])
def test_a_fits_trained_backbone_is_the_next_policy_unless_its_precision_cast_it(precision, adopted):
    """A backbone a ``bf16-true`` fit cast is not the policy the recipe builds: it is read back from the file."""
    from types import SimpleNamespace

    from lightning.pytorch.strategies import SingleDeviceStrategy

    backbone = torch.nn.Module()
    backbone.policy = torch.nn.Linear(2, 2)
    trainer = SimpleNamespace(precision=precision, strategy=SingleDeviceStrategy(torch.device("cpu")))
    settings = SimpleNamespace(judge=None, engine=None, keep_in_memory=True)
    policies = loop.Policies(None, torch.device("cpu"), settings, trainer)
    policies.adopt("round_01/last.ckpt", backbone)
    assert (policies.policy is backbone) is adopted and (policies.checkpoint == "round_01/last.ckpt") is adopted
    assert not backbone.policy.training or not adopted


def test_the_models_summary_is_printed_by_the_first_fit_only(tmp_path, capsys):
    """Every round fits the same model: its summary table is printed once, by the first round's fit."""
    main(small(tmp_path / "run"))
    printed = capsys.readouterr()
    text = printed.out + printed.err
    assert text.count("Trainable params") == 1, text[-3000:]
    assert len(read_json(os.path.join(tmp_path, "run", "round_02", "round.json"))["build"]) > 0


def test_later_rounds_reuse_the_first_rounds_config_dump_and_write_the_same_configs(uninterrupted, tmp_path,
                                                                                   monkeypatch):
    """Round 1 dumps the recipe's section once, for ``config.yaml`` and Lightning's record of the hyper-parameters;
    round 2 puts its training file and logger into a copy. Dumping every round instead (the first dump's check made
    to fail) writes the same ``config.yaml`` and ``hparams.yaml`` and checkpoint hyper-parameters, and dumps once
    more."""
    from alignsuite.cli_parser import AlignParser
    from alignsuite.iterate import configs

    def dumps_of(out, *patches):  # of a whole section (not of the classes inside it, which a dump dumps too)
        count = [0]
        real = AlignParser.dump

        def dump(self, cfg, *args, **kwargs):
            count[0] += cfg.get("trainer") is not None
            return real(self, cfg, *args, **kwargs)

        with monkeypatch.context() as patch:
            patch.setattr(AlignParser, "dump", dump)
            for target, name, value in patches:
                patch.setattr(target, name, value)
            main(small(out))
        return count[0]

    kept, fresh = tmp_path / "kept", tmp_path / "fresh"
    assert dumps_of(fresh, (configs.RoundConfigs, "text", lambda self, dumped: "")) == dumps_of(kept) + 1
    for index in (1, 2):
        fit = os.path.join(f"round_{index:02d}", "fit", "version_0")
        for name in ("config.yaml", "hparams.yaml"):
            got = (kept / fit / name).read_text().replace(str(kept), "OUT")
            assert got == (fresh / fit / name).read_text().replace(str(fresh), "OUT"), name
            assert f"round_{index:02d}" in got and got == (uninterrupted / fit / name).read_text().replace(
                str(uninterrupted), "OUT")
        hyper = [torch.load(loop.round_checkpoint(os.path.join(out, f"round_{index:02d}")), weights_only=False)
                 for out in (kept, fresh)]
        for key in ("hyper_parameters", "datamodule_hyper_parameters"):
            assert json.dumps(hyper[0][key], default=str).replace(str(kept), "OUT") == \
                json.dumps(hyper[1][key], default=str).replace(str(fresh), "OUT")


def test_a_text_given_for_a_config_is_saved_once_and_for_that_config_only(tmp_path):
    from jsonargparse import Namespace

    from alignsuite.cli_parser import AlignParser

    parser = AlignParser(exit_on_error=False)
    parser.add_argument("--lr", type=float, default=0.1)
    cfg, other = Namespace(lr=0.5), Namespace(lr=0.25)
    parser.dumped_as(cfg, "lr: 0.5  # as dumped\n")
    parser.save(other, tmp_path / "other.yaml", skip_none=False, overwrite=True, multifile=False)
    parser.save(cfg, tmp_path / "first.yaml", skip_none=False, overwrite=True, multifile=False)
    assert (tmp_path / "other.yaml").read_text() == "lr: 0.25\n"  # another config: dumped, and the text forgotten
    assert (tmp_path / "first.yaml").read_text() == "lr: 0.5\n"
    parser.dumped_as(cfg, "lr: 0.5  # as dumped\n")
    parser.save(cfg, tmp_path / "given.yaml", skip_none=False, overwrite=True, multifile=False)
    parser.save(cfg, tmp_path / "again.yaml", skip_none=False, overwrite=True, multifile=False)
    assert (tmp_path / "given.yaml").read_text() == "lr: 0.5  # as dumped\n"
    assert (tmp_path / "again.yaml").read_text() == "lr: 0.5\n"
    parser.dumped_as(cfg, "lr: 0.5  # as dumped\n")
    with pytest.raises(ValueError, match="overwrite"):
        parser.save(cfg, tmp_path / "given.yaml", skip_none=False, multifile=False)


def toy_backbone(kind: str):
    from alignsuite.backbones import CausalLM, SpeechTokenLM, VisionLanguage

    if kind == "speech_tokens":
        return SpeechTokenLM("toy:tts", speech_token_offset=18, codebook_size=32, speech_start_token="<speech>",
                             speech_end_token="</speech>", max_length=96)
    return CausalLM("toy:llm") if kind == "causal" else VisionLanguage("toy:vlm")


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
@pytest.mark.parametrize("kind", ["causal", "vision_language", "speech_tokens"])
def test_the_first_fits_reference_copied_from_the_policy_is_the_one_read_from_the_starting_weights(kind, precision):
    """Round 1's fit trains on from the starting policy, so its frozen reference is that policy copied instead of
    read again: the same modules, weights and dtypes (bfloat16 linear weights under ``bf16-mixed``'s autocast
    reference), in eval mode and frozen, as ``FrozenCopy.build`` reads them."""
    from alignsuite.iterate.round_start import copy_starting_reference
    from alignsuite.reference import FrozenCopy

    policy_side, read_side = toy_backbone(kind), toy_backbone(kind)
    policy_side.configure()
    read_side.configure()
    copied, read = FrozenCopy(), FrozenCopy()
    assert copy_starting_reference(copied, policy_side, precision)
    read.trainer_precision = precision
    read.build(read_side)
    assert type(copied.model) is type(read.model) and copied.model is not policy_side.policy
    assert copied.model.config.to_dict() == read.model.config.to_dict()
    got, want = copied.model.state_dict(), read.model.state_dict()
    assert list(got) == list(want)
    assert all(got[k].dtype == want[k].dtype and torch.equal(got[k], want[k]) for k in want)
    assert (precision == "bf16-mixed") == any(v.dtype == torch.bfloat16 for v in got.values())
    assert not copied.model.training and not any(p.requires_grad for p in copied.model.parameters())
    assert all(not m.training for m in copied.model.modules())
    assert policy_side.policy.training and any(p.requires_grad for p in policy_side.policy.parameters())


def test_a_reference_the_policy_cannot_stand_for_is_read_as_before():
    """No copy where it could differ from the read: adapters on the policy, gradient checkpointing (it changes the
    model's config), Panacea's own reference, other weights, a dtype of the reference's own, a moving reference."""
    from alignsuite.backbones import CausalLM, PanaceaLM
    from alignsuite.backbones.lora import LoraSpec
    from alignsuite.backbones.panacea import PanaceaSpec
    from alignsuite.iterate.round_start import copy_starting_reference
    from alignsuite.reference import FrozenCopy, MovingAverage

    plain = CausalLM("toy:llm")
    plain.configure()
    for backbone in (CausalLM("toy:llm", lora=LoraSpec(r=4)), CausalLM("toy:llm", gradient_checkpointing=True),
                     PanaceaLM("toy:llm", panacea=PanaceaSpec(r=4, preference_rank=2, preference_dim=2))):
        backbone.configure()
        assert backbone.reference_from_policy() is None
        assert not copy_starting_reference(FrozenCopy(), backbone, "32-true")
    for reference in (FrozenCopy(model_name_or_path="toy:llm"), FrozenCopy(dtype="bfloat16"), MovingAverage()):
        assert not copy_starting_reference(reference, plain, "32-true") and reference.model is None
    assert not copy_starting_reference(FrozenCopy(), plain, "bf16-true")  # a bfloat16 reference: read in bfloat16
    assert copy_starting_reference(FrozenCopy(), plain, "32-true")
