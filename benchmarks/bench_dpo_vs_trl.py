"""DPO throughput and memory: alignsuite against TRL's ``DPOTrainer``, same model, same data, same settings.

Run by hand (never a test):

    python benchmarks/bench_dpo_vs_trl.py --out bench_dpo_vs_trl.json
    python benchmarks/bench_dpo_vs_trl.py --lora --out bench_dpo_vs_trl_lora.json
    python benchmarks/bench_dpo_vs_trl.py --device cuda --bf16 --hidden 1024 --layers 8 --vocab 32000 \
        --batch-size 16 --max-length 512 --out bench_dpo_vs_trl_cuda.json       # on a GPU

With ``--device cuda`` both train on the first GPU, time steps after a device synchronisation, and also
report the peak of ``torch.cuda.max_memory_allocated`` over training; ``--bf16`` trains both in bf16
autocast over float32 weights (Lightning ``bf16-mixed``, TRL ``bf16=True``).

What it does:
1. Builds a tiny Llama from a ``LlamaConfig`` (random init, seeded) and a word-level tokenizer over a
   generated vocabulary, and saves both once with ``save_pretrained`` into a temporary folder.
   Nothing is downloaded.
2. Writes generated preference pairs (prompt/chosen/rejected plain text) to one jsonl that both read.
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
``PreferenceDataModule(train=jsonl)`` and a ``lightning.Trainer``. The only benchmark-side changes are a
data module subclass whose train loader does not shuffle, and a wrapper on ``backbone.prepare`` that
records each batch's shape (and, with ``--alignsuite-full-logits``, an ablation that turns off its
``logits_to_keep`` so the policy and reference compute logits at every position, as TRL does).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LN2 = math.log(2.0)
SPECIAL = ["<pad>", "<unk>", "<bos>", "<eos>"]
FRAMEWORKS = ("alignsuite", "trl")


# ====================================================================== memory and timing helpers
def _proc_status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


class MemoryProbe:
    """RSS at the start of training, the peak before it, and the peak during it.

    Writing ``5`` to ``/proc/self/clear_refs`` resets the process's RSS high-water mark (VmHWM, which
    ``ru_maxrss`` reads), so the peak after the reset is the training phase's alone. Where the reset is
    not allowed, the training peak is the whole-process peak and ``train_peak_is_whole_process`` says so.
    """

    def __init__(self) -> None:
        self.rss_at_train_start_mb = None
        self.peak_before_train_mb = None
        self.peak_during_train_mb = None
        self.reset_ok = False
        self.cuda_at_train_start_mb = None  # GPU runs: allocated at the start of training, and the peak over it
        self.cuda_peak_mb = None

    def train_start(self) -> None:
        import torch

        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.cuda_at_train_start_mb = torch.cuda.memory_allocated() / 2**20
        self.peak_before_train_mb = _maxrss_mb()
        rss = _proc_status_kb("VmRSS")
        self.rss_at_train_start_mb = rss / 1024.0 if rss is not None else None
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.reset_ok = True
        except OSError:
            self.reset_ok = False

    def train_end(self) -> None:
        import torch

        self.peak_during_train_mb = _maxrss_mb()
        if self.cuda_at_train_start_mb is not None:
            self.cuda_peak_mb = torch.cuda.max_memory_allocated() / 2**20

    def report(self) -> dict:
        peak = max(self.peak_before_train_mb or 0.0, self.peak_during_train_mb or 0.0)
        out = {
            "peak_rss_mb": peak,
            "peak_before_train_mb": self.peak_before_train_mb,
            "rss_at_train_start_mb": self.rss_at_train_start_mb,
            "peak_during_train_mb": self.peak_during_train_mb,
            "train_peak_is_whole_process": not self.reset_ok,
        }
        if self.cuda_peak_mb is not None:
            out["cuda_peak_mb"] = self.cuda_peak_mb
            out["cuda_at_train_start_mb"] = self.cuda_at_train_start_mb
        if self.rss_at_train_start_mb is not None and self.peak_during_train_mb is not None:
            out["train_growth_mb"] = self.peak_during_train_mb - self.rss_at_train_start_mb
        return out


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _cpu_jiffies() -> tuple[int, int, int]:
    """(busy, steal, total) jiffies summed over the machine's CPUs, from ``/proc/stat``: time any process
    ran, time the hypervisor gave this VM's vCPUs to other guests, and all time. Zeros without /proc."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return 0, 0, 0
    v += [0] * (8 - len(v))
    user, nice, system, idle, iowait, irq, softirq, steal = v
    return user + nice + system + irq + softirq, steal, sum(v)


class StepClock:
    """At the end of every optimizer step: wall time (``perf_counter``), the process's CPU time (all
    threads), and the machine's busy, steal and total jiffies, so each step can be told clean or not."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self.busy: list[int] = []
        self.steal: list[int] = []
        self.total: list[int] = []

    def tick(self) -> None:
        import torch

        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()  # the step's kernels are done before its end is timed
        self.wall.append(time.perf_counter())
        self.cpu.append(time.process_time())
        busy, steal, total = _cpu_jiffies()
        self.busy.append(busy)
        self.steal.append(steal)
        self.total.append(total)

    def __len__(self) -> int:
        return len(self.wall)

    def state(self) -> dict:
        return {"wall": self.wall, "cpu": self.cpu, "busy": self.busy, "steal": self.steal, "total": self.total}


def throughput(clock: dict, batch_size: int, warmup: int, threads: int) -> dict:
    """pairs/s over the steps after ``warmup``: from the end of step ``warmup`` to the end of the last
    (with no warm-up, from the end of step 1).

    Also, per timed step: its duration; ``cpu_per_wall``, this process's CPU seconds per wall second;
    ``others``, the share of the machine's CPU time that other processes used (the machine's busy time
    minus this process's), and ``steal``, the share the hypervisor gave to other guests. A step is *clean*
    when both shares are under 5%; ``clean_*`` figures use those steps only. (``cpu_per_wall`` alone does
    not tell: OpenMP threads spin while they wait, and spinning counts as CPU time.)
    """
    wall, cpu, busy, steal, total = (clock[k] for k in ("wall", "cpu", "busy", "steal", "total"))
    first = max(warmup, 1) - 1
    if len(wall) < first + 2:
        raise RuntimeError(f"only {len(wall)} steps were timed; need at least --warmup + 1")

    def shares(i: int, j: int) -> tuple[float, float]:
        jiffies = max(total[j] - total[i], 1)
        mine = (cpu[j] - cpu[i]) * _TICK
        return max(busy[j] - busy[i] - mine, 0.0) / jiffies, (steal[j] - steal[i]) / jiffies

    steps = range(first + 1, len(wall))
    step_s = [wall[i] - wall[i - 1] for i in steps]
    step_cpu = [(cpu[i] - cpu[i - 1]) / (wall[i] - wall[i - 1]) for i in steps]
    step_others, step_steal = zip(*(shares(i - 1, i) for i in steps))
    clean = [i for i, o, st in zip(steps, step_others, step_steal) if o < 0.05 and st < 0.05]
    clean_s = [wall[i] - wall[i - 1] for i in clean]
    elapsed = wall[-1] - wall[first]
    others, stolen = shares(first, len(wall) - 1)
    return {
        "timed_steps": len(step_s),
        "timed_seconds": elapsed,
        "pairs_per_s": len(step_s) * batch_size / elapsed,
        "median_step_ms": 1000.0 * statistics.median(step_s),
        "min_step_ms": 1000.0 * min(step_s),
        "cpu_per_wall": (cpu[-1] - cpu[first]) / elapsed,
        "others": others,
        "steal": stolen,
        "step_index": list(steps),
        "step_ms": [1000.0 * x for x in step_s],
        "step_cpu_per_wall": step_cpu,
        "step_others": list(step_others),
        "step_steal": list(step_steal),
        "clean_steps": clean,
        "clean_pairs_per_s": len(clean) * batch_size / sum(clean_s) if clean else None,
        "clean_median_step_ms": 1000.0 * statistics.median(clean_s) if clean else None,
    }


class StepProfiler:
    """With ``--profile N``: ``torch.profiler`` over N steps after the warm-up; keeps the top ops by self CPU time.

    The profiled steps are slower than the others, so a profiled run's pairs/s is not a figure to report.
    """

    def __init__(self, cfg: dict) -> None:
        self.steps, self.start = cfg.get("profile", 0), cfg["warmup"]
        self.prof, self.table = None, None

    def step(self, done: int) -> None:
        if not self.steps:
            return
        if done == self.start:
            import torch.profiler as tp

            self.prof = tp.profile(activities=[tp.ProfilerActivity.CPU])
            self.prof.__enter__()
        elif self.prof is not None and done == self.start + self.steps:
            self.prof.__exit__(None, None, None)
            averages = self.prof.key_averages()
            self.table = averages.table(sort_by="self_cpu_time_total", row_limit=30)
            self.prof = None


# ====================================================================== model, tokenizer and data
def _make_words(n: int, seed: int) -> list[str]:
    """``n`` distinct pronounceable pseudo-words (two or three syllables)."""
    rng = random.Random(f"words-{seed}")
    onsets = list("bcdfghjklmnprstvwz") + ["br", "ch", "dr", "fl", "gr", "pl", "sh", "st", "th", "tr"]
    vowels = ["a", "e", "i", "o", "u", "ai", "ea", "ou"]
    codas = ["", "", "", "n", "r", "s", "l", "m", "t"]
    words: set[str] = set()
    while len(words) < n:
        k = rng.choice((2, 2, 3))
        words.add("".join(rng.choice(onsets) + rng.choice(vowels) + rng.choice(codas) for _ in range(k)))
    return sorted(words)


def build_tokenizer(vocab_size: int, seed: int):
    """Word-level tokenizer, like ``alignsuite/toy/llm.py``'s but over ``vocab_size`` generated words.

    Its post-processor prepends ``<bos>``, so both frameworks build ``<bos> prompt completion <eos>``.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = _make_words(vocab_size - len(SPECIAL), seed)
    vocab = {w: i for i, w in enumerate(SPECIAL + words)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", vocab["<bos>"])])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )
    return tok, words


def build_model(path: Path, args) -> dict:
    """Random-init Llama and the tokenizer, saved once with ``save_pretrained``; returns the model's size."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    tok, words = build_tokenizer(args.vocab, args.seed)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=args.hidden,
        intermediate_size=args.intermediate or int(round(args.hidden * 8 / 3 / 64)) * 64,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.heads,
        max_position_embeddings=max(args.max_length, 128),
        tie_word_embeddings=False,
        attention_dropout=0.0,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(args.seed)
    model = LlamaForCausalLM(config).to(torch.float32)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "layers": config.num_hidden_layers,
        "heads": config.num_attention_heads,
        "tied_embeddings": config.tie_word_embeddings,
        "words": words,
    }


def write_pairs(path: Path, words: list[str], n: int, max_length: int, seed: int) -> dict:
    """``n`` rows of prompt/chosen/rejected text whose every row fits ``max_length`` tokens whole.

    One word is one token. A row is ``<bos>`` + prompt + completion + ``<eos>``: prompts take 1/8 to
    1/2 of ``max_length``, completions from 1/16 of it to whatever room is left, so batches vary in
    width and in how much of each row is prompt. Completions start with a space, because TRL tokenizes
    ``prompt + completion`` as one string and alignsuite tokenizes them apart: with the space both give
    the same ids.
    """
    rng = random.Random(f"pairs-{seed}")
    weights = [1.0 / (r + 1) for r in range(len(words))]  # Zipf-like word frequencies

    def text(k: int) -> str:
        return " ".join(rng.choices(words, weights=weights, k=k))

    lo_p, hi_p = max(1, max_length // 8), max(1, max_length // 2)
    lo_c = max(1, max_length // 16)
    prompt_tokens, completion_tokens = [], []
    with open(path, "w") as f:
        for _ in range(n):
            p = rng.randint(lo_p, hi_p)
            room = max_length - 2 - p  # <bos> and <eos>
            c, r = rng.randint(lo_c, room), rng.randint(lo_c, room)
            row = {"prompt": text(p), "chosen": " " + text(c), "rejected": " " + text(r)}
            f.write(json.dumps(row) + "\n")
            prompt_tokens.append(p + 1)
            completion_tokens += [c + 1, r + 1]
    return {
        "rows": n,
        "mean_prompt_tokens": statistics.mean(prompt_tokens),
        "mean_completion_tokens": statistics.mean(completion_tokens),
    }


def check_tokenization(model_dir: Path, data: Path, max_length: int) -> None:
    """Both frameworks' tokenization of every row must agree (separately vs. concatenated)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    with open(data) as f:
        for i, line in enumerate(f):
            row = json.loads(line)
            for side in ("chosen", "rejected"):
                # alignsuite: prompt with special tokens, completion without, then <eos>
                ours = tok(row["prompt"])["input_ids"] + tok(row[side], add_special_tokens=False)["input_ids"]
                ours += [tok.eos_token_id]
                # TRL: prompt + completion + eos text, tokenized as one string
                theirs = tok(row["prompt"] + row[side] + tok.eos_token)["input_ids"]
                if ours != theirs:
                    raise AssertionError(f"row {i} {side}: the frameworks would tokenize it differently")
                if tok.unk_token_id in ours:
                    raise AssertionError(f"row {i} {side}: unknown token")
                if len(ours) > max_length:
                    raise AssertionError(f"row {i} {side}: {len(ours)} tokens > max_length {max_length}")


# ====================================================================== workers (one per subprocess)
def _common_worker_setup(cfg: dict) -> None:
    import torch

    torch.set_num_threads(cfg["threads"])
    torch.manual_seed(cfg["seed"])


def run_alignsuite(cfg: dict) -> dict:
    import lightning as L
    import torch
    from lightning.pytorch.callbacks import Callback

    from alignsuite.backbones import CausalLM, LoraSpec
    from alignsuite.data import PreferenceDataModule
    from alignsuite.module import PreferenceModule
    from alignsuite.objectives import DPO

    _common_worker_setup(cfg)
    memory = MemoryProbe()
    clock = StepClock()
    profiler = StepProfiler(cfg)
    losses: list[float] = []
    batches: list[list[int]] = []
    info: dict = {}

    class InFileOrder(PreferenceDataModule):
        """The real data module; only its train loader reads rows in file order, as TRL's does here."""

        def train_dataloader(self):
            return self._loader(self._dataset("train"), self.batch_size, shuffle=False)

    class Timer(Callback):
        def on_fit_start(self, trainer, pl_module):
            backbone = pl_module.backbone
            prepare = backbone.prepare

            def recording_prepare(prompts, views):
                prepared = prepare(prompts, views)
                n, width = prepared.input_ids.shape
                batches.append([n, width, int(prepared.attention_mask.sum()), int(prepared.completion_mask.sum()),
                                int(prepared.logits_to_keep)])
                return prepared

            backbone.prepare = recording_prepare  # an instance attribute shadows the method
            if cfg["alignsuite_full_logits"]:
                backbone._accepts_logits_to_keep = False  # ablation: logits at every position, as TRL
            info["uses_logits_to_keep"] = bool(backbone._accepts_logits_to_keep)
            info["reference"] = type(pl_module.reference).__name__
            info["trainable_parameters"] = sum(p.numel() for p in pl_module.parameters() if p.requires_grad)

        def on_train_start(self, trainer, pl_module):
            info["torch_threads"] = torch.get_num_threads()
            memory.train_start()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            clock.tick()
            losses.append(float(outputs["loss"]))
            profiler.step(len(clock))

        def on_train_end(self, trainer, pl_module):
            memory.train_end()

    lora = None
    if cfg["lora"]:
        lora = LoraSpec(r=cfg["lora_r"], alpha=cfg["lora_alpha"], dropout=0.0, target_modules="all-linear")
    lr = cfg["lr"]
    module = PreferenceModule(
        backbone=CausalLM(
            cfg["model_dir"],
            lora=lora,
            max_length=cfg["max_length"],
            max_prompt_length=cfg["max_length"] - 1,  # rows are built to fit whole: nothing is truncated
            dtype="float32",
            gradient_checkpointing=False,
            disable_dropout=True,
        ),
        objective=DPO(beta=cfg["beta"]),
        optimizer=lambda params: torch.optim.AdamW(params, lr=lr, weight_decay=0.0),
        lr_schedule="constant",
        warmup_ratio=0.0,
    )
    data = InFileOrder(train=cfg["data"], batch_size=cfg["batch_size"], num_workers=0)
    trainer = L.Trainer(
        accelerator="gpu" if cfg["device"] == "cuda" else "cpu",
        devices=1,
        precision="bf16-mixed" if cfg["bf16"] else "32-true",
        max_steps=cfg["steps"],
        gradient_clip_val=cfg["max_grad_norm"],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[Timer()],
    )
    trainer.fit(module, datamodule=data)
    info["truncated"] = dict(module.backbone.truncated)
    return {"clock": clock.state(), "losses": losses, "batches": batches,
            "memory": memory.report(), "profile": profiler.table, **info}


def run_trl(cfg: dict) -> dict:
    import datasets
    import torch
    from transformers import AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    _common_worker_setup(cfg)
    memory = MemoryProbe()
    clock = StepClock()
    profiler = StepProfiler(cfg)
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
        precompute_ref_log_probs=False,
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
        # data: rows in file order (as alignsuite here), no workers
        train_sampling_strategy="sequential",
        dataloader_num_workers=0,
        dataloader_pin_memory=False,
    )
    tokenizer = AutoTokenizer.from_pretrained(cfg["model_dir"])
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
    trainer.train()
    return {"clock": clock.state(), "losses": losses, "batches": batches,
            "memory": memory.report(), "profile": profiler.table, **info}


def worker_main(framework: str, cfg_path: str, result_path: str) -> None:
    cfg = json.loads(Path(cfg_path).read_text())
    result = run_alignsuite(cfg) if framework == "alignsuite" else run_trl(cfg)
    result["framework"] = framework
    result.update(throughput(result.pop("clock"), cfg["batch_size"], cfg["warmup"], cfg["threads"]))
    Path(result_path).write_text(json.dumps(result))


# ====================================================================== driver
def _gpu_name() -> str | None:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for name in ("torch", "transformers", "trl", "lightning", "peft", "datasets", "accelerate"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def wait_for_idle(limit_s: float) -> float:
    """Wait (up to ``limit_s``) until the machine's CPUs have been under 5% busy, steal included, over 3 s;
    returns the busy share seen last. On a shared machine this makes a clean run likelier, not certain."""
    deadline = time.monotonic() + limit_s
    while True:
        b0, s0, t0 = _cpu_jiffies()
        time.sleep(3.0)
        b1, s1, t1 = _cpu_jiffies()
        share = (b1 - b0 + s1 - s0) / max(t1 - t0, 1)
        if share < 0.05 or time.monotonic() > deadline:
            return share


def run_worker(framework: str, cfg: dict, workdir: Path, tag: str, quiet: bool) -> dict:
    cfg_path, result_path = workdir / "config.json", workdir / f"result_{framework}_{tag}.json"
    cfg_path.write_text(json.dumps(cfg))
    env = dict(os.environ)
    env.update({
        "OMP_NUM_THREADS": str(cfg["threads"]),
        "MKL_NUM_THREADS": str(cfg["threads"]),
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_CACHE": str(workdir / "datasets_cache"),
        "PYTHONWARNINGS": "ignore",
        "TQDM_DISABLE": "1",
    })
    repo = Path(__file__).resolve().parents[1]
    env["PYTHONPATH"] = str(repo) + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", framework, str(cfg_path), str(result_path)]
    started = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0 or not result_path.exists():
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
        raise SystemExit(f"{framework} worker failed (exit {proc.returncode})")
    if not quiet and proc.stderr.strip():
        sys.stderr.write(f"--- {framework} stderr (tail) ---\n{proc.stderr[-2000:]}\n")
    result = json.loads(result_path.read_text())
    result["wall_s"] = time.perf_counter() - started
    return result


def compare(a: dict, t: dict, batch_size: int) -> dict:
    same_batches = bool(a["batches"]) and [b[:4] for b in a["batches"]] == [b[:4] for b in t["batches"]]
    n = min(len(a["losses"]), len(t["losses"]))
    diffs = [abs(x - y) for x, y in zip(a["losses"][:n], t["losses"][:n])]
    logits_rows = sum(b[0] * b[4] for b in a["batches"])
    all_rows = sum(b[0] * b[1] for b in a["batches"])
    # Steps clean in both runs: step i holds the same batch in both, so their times compare like for like.
    both = sorted(set(a["clean_steps"]) & set(t["clean_steps"])) if same_batches else []
    a_ms = {i: ms for i, ms in zip(a["step_index"], a["step_ms"])}
    t_ms = {i: ms for i, ms in zip(t["step_index"], t["step_ms"])}
    a_sum, t_sum = sum(a_ms[i] for i in both), sum(t_ms[i] for i in both)
    return {
        "same_batches": same_batches,
        "first_loss": {"alignsuite": a["losses"][0], "trl": t["losses"][0], "ln2": LN2},
        "first_loss_is_ln2": abs(a["losses"][0] - LN2) < 1e-4 and abs(t["losses"][0] - LN2) < 1e-4,
        "last_loss": {"alignsuite": a["losses"][-1], "trl": t["losses"][-1]},
        "max_abs_loss_diff": max(diffs) if diffs else None,
        "alignsuite_logit_positions_fraction": logits_rows / all_rows if a.get("uses_logits_to_keep") else 1.0,
        "ratio_pairs_per_s": a["pairs_per_s"] / t["pairs_per_s"],
        "ratio_median_step": a["median_step_ms"] / t["median_step_ms"],
        "matched_clean_steps": both,
        "matched_clean_pairs_per_s": {"alignsuite": 1000.0 * len(both) * batch_size / a_sum,
                                      "trl": 1000.0 * len(both) * batch_size / t_sum} if both else None,
        "ratio_matched_clean_pairs_per_s": t_sum / a_sum if both else None,
        "ratio_peak_rss": a["memory"]["peak_rss_mb"] / t["memory"]["peak_rss_mb"],
        "ratio_cuda_peak": a["memory"]["cuda_peak_mb"] / t["memory"]["cuda_peak_mb"]
        if a["memory"].get("cuda_peak_mb") and t["memory"].get("cuda_peak_mb") else None,
        "ratio_train_growth": (a["memory"]["train_growth_mb"] / t["memory"]["train_growth_mb"])
        if a["memory"].get("train_growth_mb") and t["memory"].get("train_growth_mb") else None,
    }


def contended(r: dict, threads: int) -> bool:
    """Over the timed window other processes used, or the hypervisor gave to other guests, 5% or more of
    the machine's CPU time: the worker's whole-run figures are not clean."""
    return r["others"] >= 0.05 or r["steal"] >= 0.05


def print_table(rep: int, a: dict, t: dict, c: dict, threads: int) -> None:
    def row(name, r):
        m = r["memory"]
        return (f"  {name:<11} {r['pairs_per_s']:>8.2f} {r['median_step_ms']:>10.1f} {m['peak_rss_mb']:>9.0f}"
                f" {m['rss_at_train_start_mb']:>10.0f} {m.get('train_growth_mb', float('nan')):>10.0f}"
                f" {r['losses'][0]:>10.6f} {r['losses'][-1]:>10.6f} {r['cpu_per_wall']:>8.2f} {100 * r['others']:>7.1f}"
                f" {100 * r['steal']:>6.1f}"
                f" {len(r['clean_steps']):>3}/{r['timed_steps']:<3}"
                + ("  <- CONTENDED" if contended(r, threads) else ""))

    def fmt(x, spec):
        return "-" if x is None else format(x, spec)

    print(f"\nrepeat {rep}")
    print(f"  {'framework':<11} {'pairs/s':>8} {'med ms/st':>10} {'peak MB':>9} {'MB@start':>10} {'train +MB':>10}"
          f" {'loss@1':>10} {'loss@last':>10} {'CPU/wall':>8} {'others%':>7} {'steal%':>6} {'clean':>7}")
    print(row("alignsuite", a))
    print(row("trl", t))
    print(f"  {'ratio a/t':<11} {c['ratio_pairs_per_s']:>8.3f} {c['ratio_median_step']:>10.3f}"
          f" {c['ratio_peak_rss']:>9.3f} {'':>10} {fmt(c['ratio_train_growth'], '.3f'):>10}")
    mc = c["matched_clean_pairs_per_s"]
    if mc:
        print(f"  steps clean in both runs: {len(c['matched_clean_steps'])}; pairs/s over them: alignsuite"
              f" {mc['alignsuite']:.2f}, trl {mc['trl']:.2f}, ratio a/t {c['ratio_matched_clean_pairs_per_s']:.3f}")
    else:
        print("  no step was clean in both runs: the time figures of this repeat are not comparable")
    if c.get("ratio_cuda_peak"):
        print(f"  GPU peak allocated over training: alignsuite {a['memory']['cuda_peak_mb']:.0f} MB,"
              f" trl {t['memory']['cuda_peak_mb']:.0f} MB, ratio a/t {c['ratio_cuda_peak']:.3f}")
    print(f"  first-step loss: alignsuite {a['losses'][0]:.6f}, trl {t['losses'][0]:.6f} (ln 2 = {LN2:.6f})"
          f" -> {'OK' if c['first_loss_is_ln2'] else 'MISMATCH'}")
    print(f"  same batches (rows, padded width, tokens, completion tokens at every step): {c['same_batches']};"
          f" max |loss difference| over steps: {c['max_abs_loss_diff']:.2e}")
    print(f"  alignsuite computes logits at {100 * c['alignsuite_logit_positions_fraction']:.0f}% of positions"
          f" (logits_to_keep {'on' if a.get('uses_logits_to_keep') else 'off'}); TRL at 100%")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--warmup", type=int, default=5, help="steps left out of the timing")
    p.add_argument("--batch-size", type=int, default=8, help="preference pairs per step")
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--intermediate", type=int, default=None, help="MLP width (default 8/3 hidden, rounded to 64)")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--max-grad-norm", type=float, default=1.0)
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch.set_num_threads in both")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast over float32 weights in both")
    p.add_argument("--lora", action="store_true", help="train the same LoRA adapter in both (reference: adapters off)")
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--lora-alpha", type=int, default=32)
    p.add_argument("--alignsuite-full-logits", action="store_true",
                   help="ablation: turn off alignsuite's logits_to_keep (logits at every position, like TRL)")
    p.add_argument("--profile", type=int, default=0,
                   help="torch.profiler over this many steps after the warm-up in each worker; prints the top ops"
                        " (the timings of such a run are not for reporting)")
    p.add_argument("--repeats", type=int, default=1, help="run both this many times, alternating the order")
    p.add_argument("--frameworks", default="alignsuite,trl")
    p.add_argument("--wait-idle", type=float, default=0.0,
                   help="before each worker, wait up to this many seconds for the machine to be idle")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=str, default=None, help="write the figures as JSON here")
    p.add_argument("--keep-workdir", action="store_true")
    p.add_argument("--quiet", action="store_true", help="do not echo the workers' stderr")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    frameworks = [f.strip() for f in args.frameworks.split(",") if f.strip()]
    if not set(frameworks) <= set(FRAMEWORKS):
        raise SystemExit(f"--frameworks: choose from {FRAMEWORKS}")
    workdir = Path(tempfile.mkdtemp(prefix="bench_dpo_"))
    try:
        model_dir, data = workdir / "model", workdir / "pairs.jsonl"
        model = build_model(model_dir, args)
        words = model.pop("words")
        data_info = write_pairs(data, words, args.steps * args.batch_size, args.max_length, args.seed)
        check_tokenization(model_dir, data, args.max_length)
        cfg = {
            "model_dir": str(model_dir), "data": str(data), "workdir": str(workdir),
            "steps": args.steps, "warmup": args.warmup, "batch_size": args.batch_size, "max_length": args.max_length,
            "lr": args.lr, "beta": args.beta, "max_grad_norm": args.max_grad_norm, "threads": args.threads,
            "lora": args.lora, "lora_r": args.lora_r, "lora_alpha": args.lora_alpha, "seed": args.seed,
            "alignsuite_full_logits": args.alignsuite_full_logits, "profile": args.profile,
            "device": args.device, "bf16": args.bf16,
        }
        print(f"model: Llama, {model['parameters'] / 1e6:.2f}M parameters (hidden {model['hidden_size']},"
              f" {model['layers']} layers, {model['heads']} heads, MLP {model['intermediate_size']},"
              f" vocab {model['vocab_size']}); data: {data_info['rows']} pairs, mean prompt"
              f" {data_info['mean_prompt_tokens']:.1f} tokens, mean completion {data_info['mean_completion_tokens']:.1f}")
        print(f"settings: {args.steps} steps ({args.warmup} warm-up), batch {args.batch_size} pairs, max length"
              f" {args.max_length}, lr {args.lr}, beta {args.beta}, threads {args.threads},"
              f" {'bf16 autocast' if args.bf16 else 'float32'}, {args.device},"
              f" {'LoRA r=%d alpha=%d, reference = adapters disabled' % (args.lora_r, args.lora_alpha) if args.lora else 'full fine-tuning, reference = frozen copy'}")
        vers = versions()
        print("versions: " + ", ".join(f"{k} {v}" for k, v in vers.items()))

        runs = []
        for rep in range(args.repeats):
            order = frameworks if rep % 2 == 0 else frameworks[::-1]
            results = {}
            for fw in order:
                if args.wait_idle:
                    share = wait_for_idle(args.wait_idle)
                    print(f"  [{rep}] machine {100 * share:.0f}% busy before {fw}", flush=True)
                results[fw] = run_worker(fw, cfg, workdir, str(rep), args.quiet)
                r = results[fw]
                if r.get("profile"):
                    print(f"--- {fw}: top ops over {args.profile} profiled steps ---\n{r['profile']}")
                print(f"  [{rep}] {fw}: {r['pairs_per_s']:.2f} pairs/s, peak {r['memory']['peak_rss_mb']:.0f} MB,"
                      f" first loss {r['losses'][0]:.6f}, CPU/wall {r['cpu_per_wall']:.2f}, others {100 * r['others']:.0f}%,"
                      f" steal {100 * r['steal']:.0f}%,"
                      f" clean steps {len(r['clean_steps'])}/{r['timed_steps']}, wall {r['wall_s']:.0f}s,"
                      f" load average now {os.getloadavg()[0]:.2f}", flush=True)
            entry = {"order": order, "loadavg_after": os.getloadavg(),
                     **results}
            if len(results) == 2:
                entry["comparison"] = compare(results["alignsuite"], results["trl"], args.batch_size)
                entry["comparison"]["contended"] = any(contended(r, args.threads) for r in results.values())
                print_table(rep, results["alignsuite"], results["trl"], entry["comparison"], args.threads)
            runs.append(entry)

        summary = {}
        if len(frameworks) == 2:
            clean = [r for r in runs if not r["comparison"]["contended"]]
            used = clean or runs
            summary["whole_run_repeats_used"] = [runs.index(r) for r in used]
            summary["whole_run_only_clean_repeats"] = bool(clean)
            for key in ("ratio_pairs_per_s", "ratio_median_step", "ratio_peak_rss", "ratio_train_growth", "ratio_cuda_peak"):
                vals = [r["comparison"][key] for r in used if r["comparison"][key] is not None]
                summary[key] = statistics.median(vals) if vals else None
            # Over all repeats, the steps that were clean in both frameworks' runs.
            a_ms = t_ms = 0.0
            matched = 0
            for r in runs:
                steps = r["comparison"]["matched_clean_steps"]
                for fw, acc in (("alignsuite", "a"), ("trl", "t")):
                    times = dict(zip(r[fw]["step_index"], r[fw]["step_ms"]))
                    total = sum(times[i] for i in steps)
                    if acc == "a":
                        a_ms += total
                    else:
                        t_ms += total
                matched += len(steps)
            summary["matched_clean_steps"] = matched
            # Noise on a shared machine only ever adds time, and step i holds the same batch in every run:
            # the fastest time of each step over the repeats estimates the uncontended time of that step.
            for fw in frameworks:
                per_step = [dict(zip(r[fw]["step_index"], r[fw]["step_ms"])) for r in runs]
                best = [min(d[i] for d in per_step) for i in per_step[0]]
                summary[f"{fw}_best_of_repeats_pairs_per_s"] = 1000.0 * len(best) * args.batch_size / sum(best)
            summary["ratio_best_of_repeats_pairs_per_s"] = (
                summary["alignsuite_best_of_repeats_pairs_per_s"] / summary["trl_best_of_repeats_pairs_per_s"])
            summary["ratio_matched_clean_pairs_per_s"] = t_ms / a_ms if matched else None
            for fw, ms in (("alignsuite", a_ms), ("trl", t_ms)):
                summary[fw] = {
                    "pairs_per_s": statistics.median(r[fw]["pairs_per_s"] for r in used),
                    "median_step_ms": statistics.median(r[fw]["median_step_ms"] for r in used),
                    "matched_clean_pairs_per_s": 1000.0 * matched * args.batch_size / ms if matched else None,
                    "peak_rss_mb": statistics.median(r[fw]["memory"]["peak_rss_mb"] for r in runs),
                    "train_growth_mb": statistics.median(r[fw]["memory"].get("train_growth_mb", float("nan")) for r in runs),
                    "cuda_peak_mb": statistics.median(r[fw]["memory"].get("cuda_peak_mb", float("nan")) for r in runs),
                }
            if args.repeats > 1:
                print(f"\nover {args.repeats} repeats: {matched} steps clean in both runs; pairs/s over them: alignsuite"
                      f" {summary['alignsuite']['matched_clean_pairs_per_s'] or float('nan'):.2f}, trl"
                      f" {summary['trl']['matched_clean_pairs_per_s'] or float('nan'):.2f}, ratio a/t"
                      f" {summary['ratio_matched_clean_pairs_per_s'] or float('nan'):.3f}")
                print(f"each step's fastest time over the {args.repeats} repeats: alignsuite"
                      f" {summary['alignsuite_best_of_repeats_pairs_per_s']:.2f} pairs/s, trl"
                      f" {summary['trl_best_of_repeats_pairs_per_s']:.2f} pairs/s, ratio a/t"
                      f" {summary['ratio_best_of_repeats_pairs_per_s']:.3f}; median peak RSS ratio"
                      f" {summary['ratio_peak_rss']:.3f}")
            bad = [i for i, r in enumerate(runs) if not (r["comparison"]["first_loss_is_ln2"] and r["comparison"]["same_batches"])]
            if bad:
                print(f"\nWARNING: repeats {bad} failed a sameness check (first loss != ln 2 or different batches)")

        report = {
            "benchmark": "dpo_vs_trl",
            "machine": {"platform": platform.platform(), "machine": platform.machine(), "cpus": os.cpu_count(),
                        "gpu": _gpu_name() if args.device == "cuda" else None},
            "versions": vers,
            "model": model,
            "data": data_info,
            "settings": {k: v for k, v in cfg.items() if k not in ("model_dir", "data", "workdir")},
            "runs": runs,
            "summary": summary,
        }
        if args.out:
            Path(args.out).write_text(json.dumps(report, indent=2))
            print(f"\nwrote {args.out}")
    finally:
        if args.keep_workdir:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--worker":
        worker_main(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        main()
