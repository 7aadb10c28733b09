"""One round's data: generate K samples per prompt shard by shard, judge them, gather them into lists and build
the training rows. Every step reads what an earlier, interrupted run finished and does only the rest."""

from __future__ import annotations

import os
import time
from collections import Counter

from lightning.pytorch.utilities import rank_zero_info

from alignsuite.data.procedures.base import Report
from alignsuite.generation import chunk_seed, generate_chunked, generate_rewrites, row_conditions
from alignsuite.iterate.files import (
    PROMPT_IMAGES, data_value, decode_output, encode_output, encode_row, finite, read_json, read_rows, shard_name,
    write_json, write_rows,
)
from alignsuite.iterate.settings import WIN_RATE, Iterate, IterateError

ROUND_SEED = 7_919
SAMPLE_SEED = 1_000_003


def round_prompts(items: list[dict], settings: Iterate, index: int) -> list[dict]:
    """The prompts of round ``index`` (from 1): all of them, or its slice of ``prompts_per_round``, wrapping."""
    n = settings.prompts_per_round
    if n is None:
        return items
    start = ((index - 1) * n) % len(items)
    return [items[(start + i) % len(items)] for i in range(n)]


def shards(n: int, size: int) -> list[tuple[int, int, int]]:
    """``(shard, first prompt, end)`` of ``n`` prompts in shards of ``size``."""
    return [(k, start, min(start + size, n)) for k, start in enumerate(range(0, n, size))]


def unwritten(items: list[dict], settings: Iterate, folder: str, kind: str, mine=None) -> list[tuple[int, int, int]]:
    """The shards of ``items`` (``(shard, first prompt, end)``) with no ``<folder>/<kind>/<shard>.jsonl`` yet, of
    those ``mine(shard)`` gives to this process (all of them on one process)."""
    return [(k, a, b) for k, a, b in shards(len(items), settings.shard_size)
            if (mine is None or mine(k)) and not os.path.exists(os.path.join(folder, kind, shard_name(k)))]


def generate_round(backbone, items: list[dict], settings: Iterate, index: int, folder: str, times: Counter,
                   mine=None, generate=None, written=None) -> None:
    """``samples/<shard>.jsonl`` for every shard not yet written (of this process's, ``mine``): ``num_samples``
    draws per prompt, each row with its prompt's index, the sample's index and the seed of the chunk it was
    drawn in. ``generate``: the engine's (:mod:`alignsuite.iterate.engines`); the backbone's by default."""
    generate = generate or backbone.generate
    done = unwritten(items, settings, folder, "samples", mine)
    if not done:
        return
    base = settings.seed + ROUND_SEED * index
    per_call = settings.draws_per_call
    size = settings.batch_size * per_call  # rows of one generate call
    for k, start, end in done:
        began = time.perf_counter()
        chunk = items[start:end]
        rows = []
        for g, first in enumerate(range(0, settings.num_samples, per_call)):
            draws = min(per_call, settings.num_samples - first)  # samples first .. first + draws - 1 of each prompt
            repeated = [row for row in chunk for _ in range(draws)]
            # seed_step "offset": the call starting at row s of this shard draws from seed + s, so the seed of
            # every call is the same whichever shard the run resumed at.
            seed = base + SAMPLE_SEED * g + per_call * start
            outputs = generate_chunked(generate, repeated, size, seed, backbone.generation_columns,
                                       settings.generation_kwargs, seed_step="offset")
            names = [f"{start + r // draws:06d}_{first + r % draws}" for r in range(len(repeated))]
            rewrites = rewrite_outputs(backbone, repeated, settings, seed, os.path.join(folder, "samples"), names,
                                       generate, size)
            for r, output in enumerate(outputs):
                drawn = chunk_seed(seed, r // size, r - r % size, "offset")
                kind, value = encode_output(output, os.path.join(folder, "samples"), names[r])
                rows.append({"prompt_index": start + r // draws, "sample": first + r % draws, "seed": drawn,
                             "kind": kind, "output": value, **({"rewrites": rewrites[r]} if rewrites else {})})
        rows.sort(key=lambda r: (r["prompt_index"], r["sample"]))
        write_rows(os.path.join(folder, "samples", shard_name(k)), rows)
        times["generate"] += time.perf_counter() - began
        rank_zero_info(f"round {index}: generated shard {k} (prompts {start}-{end - 1}, {len(rows)} samples)")
        if written is not None:  # a stop signal is acted on here, with the shard whole on disk
            written(f"in round {index} after generating shard {k}")


def rewrite_outputs(backbone, rows: list[dict], settings: Iterate, seed: int, folder: str,
                    names: list[str], generate=None, batch_size: int | None = None) -> list[dict]:
    """The outputs of the rewrites the judge declares (:attr:`alignsuite.judging.Scorer.rewrites`: the same
    prompts generated again with a column replaced), drawn in calls of the samples' ``batch_size`` rows with their
    seeds and stored as the outputs are: ``[{name: {"kind", "output"}}]`` per row, or ``[]`` when the judge
    declares none. Kept in the shard files, so that a resumed round judges the same."""
    declared = dict(getattr(settings.judge, "rewrites", None) or {})
    if not declared:
        return []
    moved = generate_rewrites(generate or backbone.generate, rows, declared, batch_size or settings.batch_size, seed,
                              backbone.generation_columns, settings.generation_kwargs, seed_step="offset")
    out = []
    for name, row in zip(names, moved):
        kept = {}
        for rewrite in declared:
            kind, value = encode_output(row[rewrite], folder, f"{name}_{rewrite}")
            kept[rewrite] = {"kind": kind, "output": value}
        out.append(kept)
    return out


def with_rewrites(row: dict, rewrites: dict | None, round_folder: str) -> dict:
    """A prompt row with the stored rewrite outputs of one sample under their names, as the judge reads them."""
    if not rewrites:
        return row
    return {**row, **{name: decode_output(r["kind"], r["output"], round_folder) for name, r in rewrites.items()}}


def judge_round(backbone, items: list[dict], settings: Iterate, folder: str, times: Counter, mine=None,
                written=None) -> None:
    """``judged/<shard>.jsonl`` for every generated shard not yet judged (of this process's, ``mine``): each
    sample with all the judge's values (the rewrites it declares read from the shard, as generated with it)."""
    for k, _, _ in unwritten(items, settings, folder, "judged", mine):
        path = os.path.join(folder, "judged", shard_name(k))
        began = time.perf_counter()
        samples = read_rows(os.path.join(folder, "samples", shard_name(k)))
        prompt_rows = [with_rewrites(items[s["prompt_index"]], s.get("rewrites"), folder) for s in samples]
        outputs = [decode_output(s["kind"], s["output"], folder) for s in samples]
        if settings.compares:
            values = compare(settings.judge, samples, outputs, items, backbone)
        else:
            values = settings.judge.judge([r["prompt"] for r in prompt_rows], outputs,
                                          row_conditions(prompt_rows, backbone), prompt_rows)
        write_rows(path, [{**s, "values": dict(v) if v is not None else None} for s, v in zip(samples, values)])
        times["judge"] += time.perf_counter() - began
        if written is not None:
            written(f"in {os.path.basename(folder)} after judging shard {k}")


def is_empty(output) -> bool:
    """An output with nothing in it: none, an empty text, or an empty list (speech codes or frames)."""
    return output is None or (isinstance(output, (str, list)) and len(output) == 0)


def compare(judge, samples: list[dict], outputs: list, items: list[dict], backbone) -> list[dict]:
    """A preference judge's values of each sample: its win rate and its row of its prompt's win matrix."""
    from alignsuite.judges import win_rates

    order = sorted({s["prompt_index"] for s in samples})
    groups = {i: [k for k, s in enumerate(samples) if s["prompt_index"] == i] for i in order}
    rows = [items[i] for i in order]
    matrices = judge.win_matrices([r["prompt"] for r in rows], [[outputs[k] for k in groups[i]] for i in order], rows,
                                  row_conditions(rows, backbone))
    votes = list(judge.last_votes) if getattr(judge, "gives_votes", False) else [None] * len(matrices)
    values: list[dict] = [{} for _ in samples]
    for i, matrix, counts in zip(order, matrices, votes):
        for j, (k, rate) in enumerate(zip(groups[i], win_rates(matrix))):
            values[k] = {WIN_RATE: rate, "win_row": list(matrix[j]), **({"vote_row": list(counts[j])} if counts else {})}
    return values


def matrix_of(samples: list[dict], key: str) -> list[list[float]]:
    """A prompt's K x K matrix from its samples' rows of it (``key`` of each one's values; NaN: not judged)."""
    return [[float("nan") if x is None else x for x in (s["values"] or {}).get(key) or [None] * len(samples)]
            for s in samples]


def gather_lists(items: list[dict], settings: Iterate, folder: str) -> tuple[list[dict], dict]:
    """One list row per prompt (its columns, ``responses`` and ``scores``: NaN for a failed judgement, and every
    judged value as ``values``), and counts of the failed judgements."""
    judged: dict[int, list[dict]] = {}
    for k, _, _ in shards(len(items), settings.shard_size):
        for row in read_rows(os.path.join(folder, "judged", shard_name(k))):
            judged.setdefault(row["prompt_index"], []).append(row)
    lists, failed, empty = [], [], []
    for i, item in enumerate(items):
        samples = sorted(judged.get(i, []), key=lambda r: r["sample"])
        scores = [settings.ranking(s["values"]) for s in samples]
        failed += [(i, s["sample"]) for s, v in zip(samples, scores) if v is None]
        # An empty output (no text, an utterance of no frames) is a sample (the policy stopped at once) but no
        # training row: left out, and counted.
        empty += [(i, s["sample"]) for s, v in zip(samples, scores) if v is not None and is_empty(s["output"])]
        scores = [None if is_empty(s["output"]) else v for s, v in zip(samples, scores)]
        # The images the prompt row holds (its input images) as PNG files the training rows point to, one folder
        # for the run: a prompt's images are written by the first round that uses it.
        columns = encode_row(item, os.path.join(settings.output_dir, PROMPT_IMAGES))
        row = {**columns, "responses": [data_value(s["kind"], s["output"], folder) for s in samples],
               "scores": [float("nan") if v is None else v for v in scores],
               "values": [s["values"] for s in samples], "seeds": [s["seed"] for s in samples]}
        if settings.compares:  # the prompt's win matrix, as the rules that read one take it (NaN: not judged)
            row["win_matrix"] = matrix_of(samples, "win_row")
        if settings.votes:  # and the annotators' vote counts (iREPO's empirical preference)
            row["votes"] = matrix_of(samples, "vote_row")
        lists.append(row)
    return lists, {"samples": sum(map(len, judged.values())), "failed_judgements": len(failed),
                   "first_failed": failed[:10], "empty_outputs": len(empty), "first_empty": empty[:10]}


def build_round(lists: list[dict], settings: Iterate, index: int, folder: str, judged: dict | None = None) -> dict:
    """``lists.jsonl``, the rule's rows (``pairs.jsonl``) and ``build.json`` (rows in and out, dropped by reason).
    A round that keeps nothing is refused with the counts: it would train on nothing."""
    stats_path = os.path.join(folder, "build.json")
    if os.path.exists(stats_path):
        return read_json(stats_path)
    write_rows(os.path.join(folder, "lists.jsonl"), lists)
    rule = settings.build
    report = Report(rule.name if rule else "lists", len(lists))
    if rule is None:  # the lists as they are, for a listwise objective
        rows = []
        for i, row in enumerate(lists):
            if sum(s == s for s in row["scores"]) >= 2:  # NaN != NaN: a failed judgement
                rows.append({k: v for k, v in row.items() if k != "values"})
            else:
                report.drop({"_source": "lists.jsonl", "_row": i}, "fewer than 2 responses with a finite score")
    else:
        rows = rule.apply([{**r, "_source": "lists.jsonl", "_row": i} for i, r in enumerate(lists)], report)
        # every sample's judged values stay in lists.jsonl: a training row holds its own columns only
        rows = [{k: v for k, v in r.items() if k not in ("_source", "_row", "values")} for r in rows]
    report.rows_out = len(rows)
    write_rows(os.path.join(folder, "pairs.jsonl"), rows)
    dropped = {what.removeprefix("dropped: "): n for what, n in report.counts.items() if what.startswith("dropped: ")}
    stats = {"rule": report.procedure, "prompts": len(lists), "rows": len(rows), "dropped": dropped,
             "counts": dict(report.counts)}
    if not rows:
        reasons = ", ".join(f"{n} by {why}" for why, n in dropped.items()) or "no reason recorded"
        judged = judged or {}
        failed = (f"; {judged['failed_judgements']} of {judged['samples']} judgements gave no value (the first, as"
                  f" (prompt, sample): {judged['first_failed'][:3]})" if judged.get("failed_judgements") else "")
        raise IterateError(f"round {index}: the build rule {stats['rule']} kept no rows from {len(lists)} prompts"
                           f" ({reasons}){failed}; nothing to train on. Sample more (iterate.num_samples), loosen the"
                           f" rule, or check the judge's values in {os.path.join(folder, 'judged')}")
    write_json(stats_path, stats)
    rank_zero_info(f"round {index}: {stats['rule']} kept {len(rows)} rows of {len(lists)} prompts"
                   + (f"; dropped {', '.join(f'{n} by {why}' for why, n in dropped.items())}" if dropped else ""))
    return stats


def heldout_round(backbone, rows: list[dict], settings: Iterate, folder: str, first: str | None = None,
                  generate=None) -> dict:
    """The held-out prompts' outputs under one seed, judged: ``heldout.jsonl`` and one score per prompt.

    A scorer (or the scorer a preference judge compares by, its ``scorer``) scores each output alone. A preference
    judge without one compares each output with round 0's for the same prompt (``first``, round 0's folder): the
    score is P(this round's output is preferred), 1/2 for round 0 itself."""
    path = os.path.join(folder, "heldout.jsonl")
    scorer = settings.judge if not settings.compares else getattr(settings.judge, "scorer", None)
    if not os.path.exists(path):
        outputs = generate_chunked(generate or backbone.generate, rows, settings.batch_size, settings.heldout_seed,
                                   backbone.generation_columns, settings.generation_kwargs, seed_step="offset")
        conditions = row_conditions(rows, backbone)
        rewrites = rewrite_outputs(backbone, rows, settings, settings.heldout_seed, os.path.join(folder, "heldout"),
                                   [f"{i:06d}" for i in range(len(rows))], generate)
        judged_rows = [with_rewrites(r, rewrites[i] if rewrites else None, folder) for i, r in enumerate(rows)]
        if scorer is not None:
            values = scorer.judge([r["prompt"] for r in rows], outputs, conditions, judged_rows)
        elif first is None:  # round 0 against itself
            values = [{WIN_RATE: 0.5} for _ in rows]
        else:
            base = [decode_output(r["kind"], r["output"], first) for r in read_rows(os.path.join(first, "heldout.jsonl"))]
            matrices = settings.judge.win_matrices([r["prompt"] for r in rows], [[o, b] for o, b in zip(outputs, base)],
                                                   rows, conditions)
            values = [{WIN_RATE: m[0][1]} for m in matrices]
        written = []
        for i, (output, value) in enumerate(zip(outputs, values)):
            kind, stored = encode_output(output, os.path.join(folder, "heldout"), f"{i:06d}")
            written.append({"prompt_index": i, "kind": kind, "output": stored, "values": value,
                            **({"rewrites": rewrites[i]} if rewrites else {})})
        write_rows(path, written)
    judged = read_rows(path)
    if scorer is not None and settings.compares:  # the scorer's own value, higher better
        sign = 1.0 if scorer.higher_is_better else -1.0
        scores = [None if (v := finite((r["values"] or {}).get(scorer.name))) is None else sign * v for r in judged]
    else:
        scores = [settings.ranking(r["values"]) for r in judged]
    return {"scores": scores}


__all__ = ["build_round", "gather_lists", "generate_round", "heldout_round", "judge_round", "round_prompts", "shards",
           "unwritten"]
