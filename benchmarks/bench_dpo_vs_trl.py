"""DPO throughput and memory: alignsuite against TRL's ``DPOTrainer``, same model, same data, same settings.

Run by hand (never a test), from the repository root:

    python -m benchmarks.bench_dpo_vs_trl --out bench_dpo_vs_trl.json
    python -m benchmarks.bench_dpo_vs_trl --lora --out bench_dpo_vs_trl_lora.json
    python -m benchmarks.bench_dpo_vs_trl --max-length 138 --prompt-words 56,72 --completion-words 32,64 \
        --out bench_dpo_vs_trl_p64.json                                       # prompts and completions set
    python -m benchmarks.bench_dpo_vs_trl --device cuda --bf16 --hidden 1024 --layers 8 --vocab 32000 \
        --batch-size 16 --max-length 512 --out bench_dpo_vs_trl_cuda.json       # on a GPU

With ``--device cuda`` both train on the first GPU, time steps after a device synchronisation, and also
report the peak of ``torch.cuda.max_memory_allocated`` over training; ``--bf16`` trains both in bf16
autocast over float32 weights (Lightning ``bf16-mixed``, TRL ``bf16=True``); each frozen-copy reference is then
its framework's default: TRL's float32, alignsuite's ``autocast`` (linear weights stored in bfloat16, the rest
float32: the same scores as a float32 copy under autocast). ``--alignsuite-ref-dtype`` sets alignsuite's
(``float32``; ``bfloat16``, wholly, whose first loss is then not exactly ln 2).

What it does:
1. Builds a tiny Llama from a ``LlamaConfig`` (random init, seeded) and a word-level tokenizer over a
   generated vocabulary, and saves both once with ``save_pretrained`` into a temporary folder.
   Nothing is downloaded.
2. Writes generated preference pairs (prompt/chosen/rejected plain text) to one jsonl that both read.
   Lengths are drawn from ``--max-length`` or set with ``--prompt-words`` / ``--completion-words``.
   Every row fits ``--max-length`` whole, so neither framework truncates (their truncation rules
   differ: alignsuite keeps the end of the prompt, TRL keeps the start of the sequence).
3. Runs each framework in its own subprocess (so peak memory is clean) on the same settings: float32,
   CPU, batch size, max length, AdamW (not fused, no weight decay), constant learning rate, gradient
   clipping at norm 1, beta 0.1 sigmoid DPO, a frozen copy of the model as reference (or, with
   ``--lora``, the same LoRA adapter and the policy with adapters disabled as reference), dropout
   off, gradient checkpointing off, no evaluation, no checkpoints, no logger. Both read the rows in
   file order (no shuffling), so step i sees the same pairs, padded to the same width, in both.
4. Times every optimizer step with ``time.perf_counter`` (a Lightning callback's
   ``on_train_batch_end``; a ``TrainerCallback``'s ``on_step_end``) and reports pairs/s over the steps
   after ``--warmup``; reports the process's peak resident memory (``ru_maxrss``) and, after resetting
   the high-water mark at the start of training (``/proc/self/clear_refs``), the peak during training
   minus the resident memory at that moment.
5. Checks that both did the same work: the first step's loss must be ln 2 (policy == reference) in
   both, each step's batch must have the same padded shape and token counts in both, and the loss
   curves are compared step by step.

alignsuite is driven programmatically through its real code path: ``PreferenceModule(CausalLM, DPO)``,
its data module over the jsonl and a ``lightning.Trainer``, with the backbone's defaults (a pair's prompt
shared by its two completions, the LM head at scored positions only). The only benchmark-side changes are a
train loader that does not shuffle, and a wrapper on ``backbone.prepare`` that records each batch's shape:
the sequences as one row each (compared with TRL's), and the rows alignsuite actually computes.

Ablations and options: ``--alignsuite-plain`` turns alignsuite's layouts off (one row per sequence, logits
at every position from the first completion token on); ``--no-share-prompt`` and ``--no-pack-rows`` one each;
``--lm-head-chunk N`` scores through the chunked LM head. ``--precompute-ref`` makes both frameworks score
the reference once before training (TRL's ``precompute_ref_log_probs``, alignsuite's ``Precomputed``); the
timed steps then hold no reference forward in either.

The workers, clocks, memory probes and the report are ``benchmarks.harness``'s; this file holds the two
arms, the model and data they share, and what is compared between them.
"""

from __future__ import annotations

import argparse
import os
import statistics
from pathlib import Path

from benchmarks import harness
from benchmarks.harness.figures import LN2
from benchmarks.harness.tables import fmt, print_arms, print_first_losses, print_ratios
from benchmarks.setups.tiny_llama import (
    add_size_options,
    build_model,
    check_tokenization,
    group_by_length,
    resolve_size,
    tokenizer_dir,
    write_pairs,
)

PACKAGES = ("torch", "transformers", "trl", "lightning", "peft", "datasets", "accelerate")


# ====================================================================== the arms (one per worker subprocess)
def datamodule(cfg: dict):
    """alignsuite's data module over the pairs jsonl, reading rows in file order as TRL's loader does here."""
    from alignsuite.data import PreferenceDataModule, TextPairs

    from benchmarks.harness.lightning_arm import in_file_order

    return in_file_order(PreferenceDataModule)(train=cfg["data"], layout=TextPairs(), batch_size=cfg["batch_size"],
                                               num_workers=cfg["workers"])


def run_alignsuite(cfg: dict) -> dict:
    import torch

    from alignsuite.backbones import CausalLM, LoraSpec
    from alignsuite.module import PreferenceModule
    from alignsuite.objectives import DPO

    from benchmarks.harness.lightning_arm import Recorder, trainer

    batches: list[list[int]] = []

    class Recording(Recorder):
        def on_train_start(self, trainer, pl_module):
            super().on_train_start(trainer, pl_module)  # after a precomputed reference's pass: not recorded
            backbone = pl_module.backbone
            prepare = backbone.prepare

            def recording_prepare(views):
                prepared = prepare(views)
                batches.append(sequence_shape(prepared) + computed_shape(prepared, backbone))
                return prepared

            backbone.prepare = recording_prepare  # an instance attribute shadows the method
            self.info["reference"] = type(pl_module.reference).__name__
            self.info["trainable_parameters"] = sum(p.numel() for p in pl_module.parameters() if p.requires_grad)

    from alignsuite.reference import FrozenCopy, Precomputed

    lora = reference = None  # no reference given: under LoRA, the adapters switched off
    if cfg["lora"]:
        lora = LoraSpec(r=cfg["lora_r"], alpha=cfg["lora_alpha"], dropout=0.0, target_modules="all-linear")
    if cfg["precompute_ref"]:
        reference = Precomputed()
    elif not cfg["lora"]:
        # None: alignsuite's default (under bf16 autocast its linear weights in bfloat16)
        reference = FrozenCopy(dtype=None if cfg["ref_dtype"] == "default" else cfg["ref_dtype"])
    lr = cfg["lr"]
    module = PreferenceModule(
        backbone=CausalLM(
            cfg["model_dir"],
            tokenizer_name_or_path=cfg["tokenizer_dir"],
            lora=lora,
            max_length=cfg["max_length"],
            max_prompt_length=cfg["max_length"] - 1,  # rows are built to fit whole: nothing is truncated
            dtype="float32",
            gradient_checkpointing=False,
            disable_dropout=True,
            share_prompt=not (cfg["alignsuite_plain"] or cfg["no_share_prompt"]),
            pack_rows=not (cfg["alignsuite_plain"] or cfg["no_pack_rows"]),
            lm_head_at_scored_only=not cfg["alignsuite_plain"],
            lm_head_chunk=cfg["lm_head_chunk"],
            attn_implementation=cfg["alignsuite_attn"],
        ),
        objective=DPO(beta=cfg["beta"]),
        reference=reference,
        optimizer=lambda params: torch.optim.AdamW(params, lr=lr, weight_decay=0.0),
        lr_schedule="constant",
        warmup_ratio=0.0,
    )
    recorder = Recording(cfg)
    trainer(cfg, [recorder], precision="bf16-mixed" if cfg["bf16"] else "32-true").fit(module, datamodule=datamodule(cfg))
    return {**recorder.record(), "batches": batches, "profile": recorder.profiler.table,
            "truncated": dict(module.backbone.truncated)}


def run_trl(cfg: dict) -> dict:
    import datasets
    import torch
    from transformers import AutoTokenizer, TrainerCallback
    import trl
    from trl import DPOConfig, DPOTrainer

    memory, clock, profiler = harness.MemoryProbe(), harness.StepClock(), harness.StepProfiler(cfg)
    losses: list[float] = []
    batches: list[list[int]] = []
    info: dict = {}

    class RecordingDPOTrainer(DPOTrainer):
        """TRL's trainer as is; only records each batch's shape and each step's loss."""

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if model.training:
                n, width = inputs["input_ids"].shape
                batches.append([n, width, int(inputs["attention_mask"].sum()), int(inputs["completion_mask"].sum()),
                                width])
            out = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            if model.training:
                losses.append(float((out[0] if return_outputs else out).detach()))
            return out

    class Timer(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            info["torch_threads"] = torch.get_num_threads()
            memory.train_start()

        def on_step_end(self, args, state, control, **kwargs):
            clock.tick()
            profiler.step(len(clock))

        def on_train_end(self, args, state, control, **kwargs):
            memory.train_end()

    peft_config = None
    if cfg["lora"]:
        from peft import LoraConfig

        peft_config = LoraConfig(r=cfg["lora_r"], lora_alpha=cfg["lora_alpha"], lora_dropout=0.0,
                                 target_modules="all-linear", task_type="CAUSAL_LM")
    args = DPOConfig(
        output_dir=str(Path(cfg["workdir"]) / "trl_out"),
        # the DPO settings
        beta=cfg["beta"],
        loss_type=["sigmoid"],
        max_length=cfg["max_length"],
        truncation_mode="keep_start",
        precompute_ref_log_probs=cfg["precompute_ref"],
        use_liger_kernel=cfg["trl_liger"],
        disable_dropout=True,
        model_init_kwargs={"dtype": "float32"},
        # the optimization, as alignsuite's: AdamW (not fused), no decay, constant lr, clipping at 1
        per_device_train_batch_size=cfg["batch_size"],
        gradient_accumulation_steps=1,
        max_steps=cfg["steps"],
        learning_rate=cfg["lr"],
        optim="adamw_torch",
        weight_decay=0.0,
        lr_scheduler_type="constant",
        warmup_steps=0,
        max_grad_norm=cfg["max_grad_norm"],
        seed=cfg["seed"],
        # float32 on CPU, no checkpointing, no evaluation, no saving, minimal logging
        bf16=cfg["bf16"],
        fp16=False,
        use_cpu=cfg["device"] == "cpu",
        gradient_checkpointing=False,
        eval_strategy="no",
        save_strategy="no",
        report_to=[],
        logging_steps=cfg["steps"],
        disable_tqdm=True,
        # data: rows in file order (as alignsuite here), as many loader workers
        train_sampling_strategy="sequential",
        dataloader_num_workers=cfg["workers"],
        dataloader_pin_memory=False,
    )
    tokenizer = AutoTokenizer.from_pretrained(cfg["tokenizer_dir"])
    train = datasets.load_dataset("json", data_files=[cfg["data"]], split="train")
    trainer = RecordingDPOTrainer(
        model=cfg["model_dir"],
        args=args,
        train_dataset=train,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[Timer()],
    )
    info["reference"] = "ref_model (frozen copy)" if trainer.ref_model is not None else "adapters disabled"
    info["trainable_parameters"] = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    info["optimizer_args"] = {"optim": str(args.optim), "fused": False}
    info["trl_version"] = trl.__version__
    trainer.train()
    return {"clock": clock.state(), "losses": losses, "batches": batches,
            "memory": memory.report(), "profile": profiler.table, **info}




def sequence_shape(prepared) -> list[int]:
    """The batch as one row per sequence, as TRL lays it out: [rows, padded width, tokens, completion tokens]."""
    import torch

    t = prepared.targets
    if prepared.segments is None:
        lengths = prepared.attention_mask.sum(-1)
    else:  # each sequence: its group's prompt and its own completion tokens
        keep = ~t.prompt
        out, row, pos = t.out[keep], t.row[keep], t.pos[keep]
        own = torch.bincount(out, minlength=t.n_out)
        first = torch.full((t.n_out,), len(out), dtype=torch.long).scatter_reduce(0, out, torch.arange(len(out)), "amin")
        prompt_segment = prepared.segments[row[first], pos[first]]  # a first token is predicted by the prompt's last
        prompt_length = (prepared.segments[row[first]] == prompt_segment[:, None]).sum(-1)
        lengths = prompt_length + own
    return [t.n_out, int(lengths.max()), int(lengths.sum()), int(prepared.completion_mask.sum())]


def computed_shape(prepared, backbone) -> list[int]:
    """What alignsuite computes: [rows, padded width, positions through the LM head]."""
    n, width = prepared.input_ids.shape
    scored_only = backbone.lm_head_at_scored_only or backbone.lm_head_chunk
    return [n, width, int(prepared.targets.row.numel()) if scored_only else n * prepared.logits_to_keep]


ARMS = {"alignsuite": run_alignsuite, "trl": run_trl}
BENCH = harness.Bench(module=__spec__.name, name="dpo_vs_trl", arms=ARMS, label="framework", packages=PACKAGES)


# ====================================================================== what is compared
def compare(a: dict, t: dict, batch_size: int, step_flops: list[float], peak: float | None) -> dict:
    """alignsuite (``a``) against TRL (``t``) in one repeat: the same work, the ratios a/t, and each one's
    model FLOPs per second and MFU over its timed steps (``harness.flops``; ``peak`` in TFLOP/s, or None)."""
    same_batches = bool(a["batches"]) and [b[:4] for b in a["batches"]] == [b[:4] for b in t["batches"]]
    n = min(len(a["losses"]), len(t["losses"]))
    diffs = [abs(x - y) for x, y in zip(a["losses"][:n], t["losses"][:n])]
    all_positions = sum(b[0] * b[1] for b in a["batches"])
    model_positions = sum(b[4] * b[5] for b in a["batches"])
    head_positions = sum(b[6] for b in a["batches"])
    first, first_ok = harness.first_losses({"alignsuite": a, "trl": t})
    # Steps clean in both runs: step i holds the same batch in both, so their times compare like for like.
    both = sorted(set(a["clean_steps"]) & set(t["clean_steps"])) if same_batches else []
    a_ms, t_ms = harness.step_ms(a), harness.step_ms(t)
    a_sum, t_sum = sum(a_ms[i] for i in both), sum(t_ms[i] for i in both)
    q = harness.ratios(a, t)
    return {
        "same_batches": same_batches,
        "first_loss": {**first, "ln2": LN2},
        "first_loss_is_ln2": first_ok,
        "last_loss": {"alignsuite": a["losses"][-1], "trl": t["losses"][-1]},
        "max_abs_loss_diff": max(diffs) if diffs else None,
        "alignsuite_model_positions_fraction": model_positions / all_positions,
        "alignsuite_head_positions_fraction": head_positions / all_positions,
        "ratio_pairs_per_s": q["pairs_per_s"],
        "ratio_median_step": q["median_step"],
        "matched_clean_steps": both,
        "matched_clean_pairs_per_s": {"alignsuite": 1000.0 * len(both) * batch_size / a_sum,
                                      "trl": 1000.0 * len(both) * batch_size / t_sum} if both else None,
        "ratio_matched_clean_pairs_per_s": t_sum / a_sum if both else None,
        "ratio_peak_rss": q["peak_rss"],
        "ratio_cuda_peak": q["cuda_peak"],
        "ratio_train_growth": q["train_growth"],
        "utilisation": {"alignsuite": harness.utilisation(step_flops, a_ms, peak),
                        "trl": harness.utilisation(step_flops, t_ms, peak)},
    }


def print_repeat(rep: int, a: dict, t: dict, c: dict) -> None:
    print_arms(f"repeat {rep}", {"alignsuite": a, "trl": t}, name_width=11,
               columns=[("MB@start", 10, lambda r: r["memory"]["rss_at_train_start_mb"], ".0f"),
                        ("GPU MB", 8, lambda r: r["memory"].get("cuda_peak_mb"), ".0f")])
    print_ratios("alignsuite", "trl", harness.ratios(a, t))
    mc = c["matched_clean_pairs_per_s"]
    if mc:
        print(f"  steps clean in both runs: {len(c['matched_clean_steps'])}; pairs/s over them: alignsuite"
              f" {mc['alignsuite']:.2f}, trl {mc['trl']:.2f}, ratio a/t {c['ratio_matched_clean_pairs_per_s']:.3f}")
    else:
        print("  no step was clean in both runs: the time figures of this repeat are not comparable")
    u = c["utilisation"]
    print("  model TFLOP/s (harness.flops): " + ", ".join(
        f"{fw} {u[fw]['model_tflops_per_s']:.3g}" + (f" = MFU {100 * u[fw]['mfu']:.1f}%" if u[fw]["mfu"] else "")
        for fw in u) + (f" of {u['trl']['peak_tflops']:g} peak" if u["trl"]["peak_tflops"] else " (no peak given: no MFU)"))
    print_first_losses({k: v for k, v in c["first_loss"].items() if k != "ln2"}, c["first_loss_is_ln2"])
    print(f"  same batches (rows, padded width, tokens, completion tokens at every step): {c['same_batches']};"
          f" max |loss difference| over steps: {fmt(c['max_abs_loss_diff'], '.2e')}")
    print(f"  of TRL's padded positions, alignsuite runs the model at {100 * c['alignsuite_model_positions_fraction']:.0f}%"
          f" and the LM head at {100 * c['alignsuite_head_positions_fraction']:.0f}%; TRL both at 100%")


def summarize(runs: list[dict], batch_size: int) -> dict:
    """Over the repeats: median ratios over the uncontended repeats (all, if none was), pairs/s over the
    steps clean in both runs of every repeat, and from each step's fastest time over the repeats."""
    frameworks = list(ARMS)
    clean = [r for r in runs if not r["comparison"]["contended"]]
    used = clean or runs
    summary: dict = {"whole_run_repeats_used": [runs.index(r) for r in used], "whole_run_only_clean_repeats": bool(clean)}
    for key in ("ratio_pairs_per_s", "ratio_median_step", "ratio_peak_rss", "ratio_train_growth", "ratio_cuda_peak"):
        summary[key] = harness.median_or_none(r["comparison"][key] for r in used)
    matched = sum(len(r["comparison"]["matched_clean_steps"]) for r in runs)
    total_ms = {fw: sum(harness.step_ms(r[fw])[i] for r in runs for i in r["comparison"]["matched_clean_steps"])
                for fw in frameworks}
    summary["matched_clean_steps"] = matched
    for fw in frameworks:
        summary[f"{fw}_best_of_repeats_pairs_per_s"] = harness.best_of_repeats(runs, fw, batch_size)
    summary["ratio_best_of_repeats_pairs_per_s"] = (
        summary["alignsuite_best_of_repeats_pairs_per_s"] / summary["trl_best_of_repeats_pairs_per_s"])
    summary["ratio_matched_clean_pairs_per_s"] = total_ms["trl"] / total_ms["alignsuite"] if matched else None
    for fw in frameworks:
        summary[fw] = {
            "pairs_per_s": statistics.median(r[fw]["pairs_per_s"] for r in used),
            "median_step_ms": statistics.median(r[fw]["median_step_ms"] for r in used),
            "matched_clean_pairs_per_s": 1000.0 * matched * batch_size / total_ms[fw] if matched else None,
            "peak_rss_mb": statistics.median(r[fw]["memory"]["peak_rss_mb"] for r in runs),
            "train_growth_mb": statistics.median(r[fw]["memory"].get("train_growth_mb", float("nan")) for r in runs),
            "cuda_peak_mb": statistics.median(r[fw]["memory"].get("cuda_peak_mb", float("nan")) for r in runs),
            "model_tflops_per_s": statistics.median(r["comparison"]["utilisation"][fw]["model_tflops_per_s"] for r in used),
            "mfu": harness.median_or_none(r["comparison"]["utilisation"][fw]["mfu"] for r in used),
        }
    if len(runs) > 1:
        print(f"\nover {len(runs)} repeats: {matched} steps clean in both runs; pairs/s over them: alignsuite"
              f" {summary['alignsuite']['matched_clean_pairs_per_s'] or float('nan'):.2f}, trl"
              f" {summary['trl']['matched_clean_pairs_per_s'] or float('nan'):.2f}, ratio a/t"
              f" {summary['ratio_matched_clean_pairs_per_s'] or float('nan'):.3f}")
        print(f"each step's fastest time over the {len(runs)} repeats: alignsuite"
              f" {summary['alignsuite_best_of_repeats_pairs_per_s']:.2f} pairs/s, trl"
              f" {summary['trl_best_of_repeats_pairs_per_s']:.2f} pairs/s, ratio a/t"
              f" {summary['ratio_best_of_repeats_pairs_per_s']:.3f}; median peak RSS ratio"
              f" {summary['ratio_peak_rss']:.3f}")
    bad = [i for i, r in enumerate(runs) if not (r["comparison"]["first_loss_is_ln2"] and r["comparison"]["same_batches"])]
    if bad:
        print(f"\nWARNING: repeats {bad} failed a sameness check (first loss != ln 2 or different batches)")
    return summary


# ====================================================================== options and driver
def parse_args(argv=None):
    p = harness.parser(BENCH, __doc__)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--prompt-words", type=_word_range, default=None,
                   help="prompt length range LO,HI in words (one word is one token; default 1/8 to 1/2 of max length)")
    p.add_argument("--completion-words", type=_word_range, default=None,
                   help="completion length range LO,HI in words (default 1/16 of max length to the room left)")
    add_size_options(p)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--max-grad-norm", type=float, default=1.0)
    p.add_argument("--bf16", action="store_true", help="bf16 autocast over float32 weights in both")
    p.add_argument("--lora", action="store_true", help="train the same LoRA adapter in both (reference: adapters off)")
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--lora-alpha", type=int, default=32)
    p.add_argument("--alignsuite-plain", action="store_true",
                   help="ablation: one row per sequence and logits at every kept position (share_prompt and"
                        " lm_head_at_scored_only off)")
    p.add_argument("--no-share-prompt", action="store_true", help="ablation: alignsuite's share_prompt off")
    p.add_argument("--no-pack-rows", action="store_true", help="ablation: alignsuite's pack_rows off")
    p.add_argument("--lm-head-chunk", type=int, default=None, help="alignsuite's lm_head_chunk (tokens per chunk)")
    p.add_argument("--alignsuite-attn", default=None,
                   help="alignsuite's attn_implementation (default: the model's, SDPA; flex_attention trains on a GPU only)")
    p.add_argument("--alignsuite-ref-dtype", choices=["default", "float32", "autocast", "bfloat16"], default="default",
                   help="weights of alignsuite's frozen-copy reference: its default (float32 here, `autocast` under"
                        " --bf16: linear weights in bfloat16), float32 (TRL's), or wholly bfloat16 (its first loss is"
                        " then not ln 2)")
    p.add_argument("--precompute-ref", action="store_true",
                   help="both score the reference once before training (TRL precompute_ref_log_probs, alignsuite"
                        " Precomputed)")
    p.add_argument("--profile", type=int, default=0,
                   help="torch.profiler over this many steps after the warm-up in each worker; prints the top ops"
                        " (the timings of such a run are not for reporting)")
    p.add_argument("--group-by-length", type=int, default=0, metavar="N",
                   help="order the pairs as alignsuite's data.group_by_length N orders an epoch, for both arms"
                        " (each reads the file in order): rows of similar length share a step")
    p.add_argument("--workers", type=int, default=0,
                   help="DataLoader worker processes in both arms: alignsuite tokenises each batch in them (TRL"
                        " tokenises the whole dataset before training), TRL only collates there")
    p.add_argument("--trl", default=harness.PINNED["trl"],
                   help="the TRL version the TRL arm imports, installed under benchmarks/.peers/ (python -m"
                        " benchmarks.peers); `installed`: the environment's own")
    p.add_argument("--trl-liger", action="store_true",
                   help="TRL with use_liger_kernel (its fused linear DPO loss; needs liger-kernel and a GPU)")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="the device's peak, for MFU (default on a GPU under --bf16: its dense bf16 peak, if known)")
    args = harness.parse_args(p, BENCH, "--frameworks", argv)
    resolve_size(args)
    if args.trl_liger and (args.device != "cuda" or args.precompute_ref):
        raise SystemExit("--trl-liger: Liger's kernels run on a GPU only (--device cuda), and TRL refuses them with"
                         " --precompute-ref")
    return args


def _word_range(text: str) -> tuple[int, int]:
    try:
        lo, hi = (int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LO,HI (two whole numbers of words), got {text!r}") from None
    if not 1 <= lo <= hi:
        raise argparse.ArgumentTypeError(f"expected 1 <= LO <= HI, got {text!r}")
    return lo, hi


def main(argv=None) -> None:
    args = parse_args(argv)
    with harness.scratch(BENCH, args.keep_workdir) as workdir:
        model_dir, data = workdir / "model", workdir / "pairs.jsonl"
        model = build_model(model_dir, args)
        words = model.pop("words")
        data_info = write_pairs(data, words, args.steps * args.batch_size, args.max_length, args.seed,
                                args.prompt_words, args.completion_words)
        pairs, b = data_info.pop("pair_tokens"), args.batch_size
        if args.group_by_length:
            pairs = [pairs[i] for i in group_by_length(data, b, args.group_by_length, args.seed)]
        step_flops = [harness.dpo_step_flops(model, pairs[i * b : (i + 1) * b], args.lora, not args.precompute_ref)
                      for i in range(args.steps)]
        peak = args.peak_tflops or (harness.bf16_peak_tflops(harness.gpu_name()) if args.device == "cuda" and args.bf16
                                    else None)
        check_tokenization(model_dir, data, args.max_length)
        cfg = {
            "model_dir": str(model_dir), "tokenizer_dir": str(tokenizer_dir(model_dir)), "data": str(data),
            "workdir": str(workdir),
            "steps": args.steps, "warmup": args.warmup, "batch_size": args.batch_size, "max_length": args.max_length,
            "prompt_words": args.prompt_words, "completion_words": args.completion_words,
            "lr": args.lr, "beta": args.beta, "max_grad_norm": args.max_grad_norm, "threads": args.threads,
            "workers": args.workers, "group_by_length": args.group_by_length,
            "lora": args.lora, "lora_r": args.lora_r, "lora_alpha": args.lora_alpha, "seed": args.seed,
            "alignsuite_plain": args.alignsuite_plain, "no_share_prompt": args.no_share_prompt,
            "no_pack_rows": args.no_pack_rows,
            "lm_head_chunk": args.lm_head_chunk, "precompute_ref": args.precompute_ref,
            "ref_dtype": args.alignsuite_ref_dtype, "profile": args.profile,
            "device": args.device, "bf16": args.bf16, "trl_liger": args.trl_liger, "alignsuite_attn": args.alignsuite_attn,
            "import_paths": {"trl": harness.import_path("trl", args.trl)},
        }
        print(f"model: {model['arch']} ({args.size}), {model['parameters'] / 1e6:.2f}M parameters (hidden"
              f" {model['hidden_size']}, {model['layers']} layers, {model['heads']} heads / {model['kv_heads']} kv,"
              f" MLP {model['intermediate_size']}, vocab {model['vocab_size']}"
              f"{', tied embeddings' if model['tied_embeddings'] else ''}); data: {data_info['rows']} pairs, mean prompt"
              f" {data_info['mean_prompt_tokens']:.1f} tokens, mean completion {data_info['mean_completion_tokens']:.1f}")
        print(f"settings: {args.steps} steps ({args.warmup} warm-up), batch {args.batch_size} pairs, max length"
              f" {args.max_length}, lr {args.lr}, beta {args.beta}, threads {args.threads}, loader workers {args.workers},"
              f" {'bf16 autocast' if args.bf16 else 'float32'}, {args.device},"
              f" {'LoRA r=%d alpha=%d, reference = adapters disabled' % (args.lora_r, args.lora_alpha) if args.lora else 'full fine-tuning, reference = frozen copy'}")
        vers = harness.versions(PACKAGES, {"trl": args.trl})

        runs = []
        for rep, order, results in harness.repeats(BENCH, cfg, workdir, args):
            entry = {"order": order, "loadavg_after": os.getloadavg(), **results}
            if "trl" in results:
                harness.check_version("trl", args.trl, results["trl"]["trl_version"])
            if len(results) == 2:
                a, t = results["alignsuite"], results["trl"]
                entry["comparison"] = compare(a, t, args.batch_size, step_flops, peak)
                entry["comparison"]["contended"] = any(harness.contended(r) for r in results.values())
                print_repeat(rep, a, t, entry["comparison"])
            runs.append(entry)
        summary = summarize(runs, args.batch_size) if len(args.arm_list) == 2 else {}
        harness.write_report(BENCH, args, vers, model, data_info, cfg, runs, summary)


if __name__ == "__main__":
    harness.main(BENCH, main)
