"""The pair builder for every backbone: a best-vs-worst rule with its margin, the counts of what was dropped,
the seeded chunked generation it samples through, and writing that never loses an earlier file."""

import pytest

from alignsuite.generation import generate_chunked
from alignsuite.judging import Scorer
from alignsuite.pairs import (
    BestVsWorst, Candidate, NoPairsError, OutputExistsError, build_pairs, check_output, select_pairs, write_pairs,
)


def cand(value, j, name="reward"):
    return Candidate(f"out{j}", {name: value}, j)


def test_best_vs_worst_keeps_a_pair_only_when_it_says_something():
    kept, dropped = select_pairs([[cand(0.2, 0), cand(0.9, 1), cand(0.5, 2)], [cand(0.4, 0), cand(0.4, 1)],
                                  [cand(0.1, 0), cand(0.15, 1)], [cand(0.3, 0)], []], BestVsWorst(min_margin=0.1))
    assert [(i, c.sample, r.sample) for i, c, r in kept] == [(0, 1, 0)]
    assert dropped == {"tie": 1, "min_margin": 1, "single_candidate": 1, "no_candidate": 1}
    kept, _ = select_pairs([[cand(0.2, 0, "wer"), cand(0.9, 1, "wer")]], BestVsWorst("wer", higher_is_better=False))
    assert (kept[0][1].sample, kept[0][2].sample) == (0, 1)  # the lower error rate is chosen
    _, dropped = select_pairs([[cand(0.2, 0), cand(0.5, 1)]], BestVsWorst(min_chosen=0.6))
    assert dropped == {"min_chosen": 1}


class Echo:
    """A backbone that says its prompt, the seed it was given and its condition column."""

    generation_columns = ("voice",)

    def generate(self, prompts, seed=None, voice=None, **kwargs):
        return [f"{p}|{seed}|{v}" for p, v in zip(prompts, voice or [None] * len(prompts))]


class Length(Scorer):
    name = "length"

    def score_batch(self, prompts, outputs, conditions, rows):
        return [len(o) for o in outputs]


def test_generation_is_chunked_seeded_and_conditioned_by_the_backbones_columns():
    rows = [{"prompt": f"p{i}", "voice": i} for i in range(5)]
    out = generate_chunked(Echo().generate, rows, 2, seed=10, columns=Echo.generation_columns)
    assert out == ["p0|10|0", "p1|10|1", "p2|11|2", "p3|11|3", "p4|12|4"]  # chunk k: seed + k
    out = generate_chunked(Echo().generate, rows, 2, seed=10, columns=(), seed_step="offset")
    assert out == ["p0|10|None", "p1|10|None", "p2|12|None", "p3|12|None", "p4|14|None"]  # chunk at s: seed + s
    del rows[1]["voice"], rows[2]["voice"], rows[3]["voice"]  # a row without the column has no condition
    out = generate_chunked(Echo().generate, rows, 2, seed=10, columns=Echo.generation_columns)
    assert out == ["p0|10|0", "p1|10|None", "p2|11|None", "p3|11|None", "p4|12|4"]


def test_build_pairs_samples_judges_and_selects_for_any_backbone():
    items = [{"prompt": "a", "voice": 1}, {"prompt": "bb", "voice": 22}]
    rows, stats = build_pairs(Echo(), items, Length(), num_samples=2, seed=0, batch_size=2)
    assert stats == {"items": 2, "candidates": 4, "pairs": 2, "dropped": {}, "mean_length": 9.0, "best_length": 12.0,
                     "worst_length": 6.0}
    assert rows[0] == {"prompt": "a", "chosen": "a|1000003|1", "rejected": "a|0|1", "chosen_length": 11,
                       "rejected_length": 5}


def test_writing_pairs_never_loses_a_file(tmp_path):
    items, out = tmp_path / "items.jsonl", tmp_path / "pairs.jsonl"
    items.write_text('{"prompt": "a"}\n')
    with pytest.raises(OutputExistsError, match="is the items file"):
        check_output(str(items), str(items))
    check_output(str(out), str(items))  # not there yet: fine
    out.write_text('{"old": 1}\n')
    with pytest.raises(OutputExistsError, match="already holds rows"):
        check_output(str(out), str(items))
    check_output(str(out), str(items), overwrite=True)
    stats = {"items": 1, "candidates": 2, "pairs": 0, "dropped": {"tie": 1}}
    with pytest.raises(NoPairsError, match=r"1 items, 2 candidates, 0 pairs kept; items dropped: 1 by tie"):
        write_pairs(str(out), [], stats)
    assert out.read_text() == '{"old": 1}\n'
    write_pairs(str(out), [{"new": 1}], {**stats, "pairs": 1})
    assert out.read_text() == '{"new": 1}\n'


def test_build_pairs_command_for_a_language_model_judged_by_any_scorer(tmp_path, tiny_lm_dir, capsys):
    """The same command a TTS model uses, for a causal LM: sampled answers ranked by the toy reward, written as
    prompt/chosen/rejected rows the preference data reads; a run that keeps none fails and writes nothing."""
    import json

    from alignsuite.cli import main
    from alignsuite.data import PreferenceDataModule
    from alignsuite.toy import get_world
    from test_cli import recipe, write_jsonl

    world = get_world("llm")
    config = recipe(tmp_path, tiny_lm_dir, write_jsonl(tmp_path / "train.jsonl", world.make_pairs(8, seed=3)))
    items = tmp_path / "prompts.txt"
    items.write_text("\n".join(world.eval_prompts(6, 0)) + "\n")
    out = tmp_path / "pairs.jsonl"
    args = ["build_pairs", "--config", config, "--pairs.items", str(items), "--pairs.output", str(out),
            "--pairs.judge", "alignsuite.evaluation.scorers.ToyReward", "--pairs.num_samples", "4",
            "--pairs.generation_kwargs", '{"max_new_tokens": 6}']
    with pytest.raises(SystemExit) as e:  # no reward can be 2 or more: every prompt is dropped
        main(args + ["--pairs.min_chosen", "2"])
    assert e.value.code != 0 and "6 items, 24 candidates, 0 pairs kept" in capsys.readouterr().err
    assert not out.exists()
    main(args)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows and all(r["chosen_toy_reward_llm"] > r["rejected_toy_reward_llm"] for r in rows)
    assert all(r["chosen_toy_reward_llm"] == world.reward(r["prompt"], r["chosen"]) for r in rows)
    dm = PreferenceDataModule(train=str(out), batch_size=2)
    dm.setup("fit")
    assert set(next(iter(dm.train_dataloader()))["prompt"]) <= {r["prompt"] for r in rows}
