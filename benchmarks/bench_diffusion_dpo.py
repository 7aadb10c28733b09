"""Diffusion-DPO throughput and memory: alignsuite against a diffusers-style training loop, same model, same data.

Run by hand (never a test), from the repository root:

    python -m benchmarks.bench_diffusion_dpo --repeats 2 --out bench_diffusion_dpo.json
    python -m benchmarks.bench_diffusion_dpo --device cuda --resolution 64 --unet-channels 64,128,256 \
        --batch-size 16 --repeats 2 --out bench_diffusion_dpo_cuda.json         # on a GPU
    python -m benchmarks.bench_diffusion_dpo --device cuda --resolution 128 --vae-channels 32,64,128,128 \
        --unet-channels 64,128,256 --batch-size 16 --repeats 2 --out bench_diffusion_dpo_cuda_vae8.json
                                              # an SD-like 8x VAE, where the encoding cache has work to save

Three arms, each in its own subprocess (so peak memory is clean), on the same pipeline folder and the same
Pick-a-Pic-layout parquet, in float32, with the same batch size, AdamW settings, constant learning rate,
gradient clipping, beta and frozen-copy reference:

- ``diffusers``: a plain PyTorch loop that does a step the way diffusers' research script
  ``examples/research_projects/diffusion_dpo/train_diffusion_dpo.py`` does (written here, not copied):
  a ``DataLoader`` over the parquet whose transform decodes both images, resizes, centre-crops, flips
  (each image on its own draw, as that script does), normalises and swaps the pair when ``label_0 == 0``,
  and tokenizes the caption; then per step the VAE encodes winners and losers (in chunks of
  ``--vae-encode-batch-size``, ``latent_dist.sample() * scaling_factor``), the text encoder encodes the
  captions, one noise and timestep are drawn per pair and shared by winner and loser, ``add_noise``, the
  UNet runs over the concatenated winner+loser batch and a frozen copy of it under ``no_grad``, and the
  loss is diffusers' ``-logsigmoid(beta_dpo * (ref_diff - model_diff))`` with ``beta_dpo = beta / 2``
  (the paper's and official code's ``-0.5 * beta``); backward, clipping, AdamW step, scheduler step.
  Its reference is a second UNet (the official code's), not diffusers' LoRA-with-adapters-disabled.
- ``alignsuite``: ``PreferenceModule(TextToImage(folder, resolution), DPO(beta), FrozenCopy())`` with a
  ``PreferenceDataModule`` over the parquet, through a ``lightning.Trainer`` (no logger, no
  checkpoints, no validation): alignsuite's real code path. alignsuite's score is ``-0.5 * mse``, so its
  ``DPO(beta)`` is the paper's Diffusion-DPO at the same ``beta``.
- ``alignsuite-cache``: the same with ``TextToImage(cache_dir=<fresh temporary folder>)``. Its one
  encoding pass (every image in both orientations under the flip, every caption) runs in
  ``on_fit_start``; its time is reported on its own (``warm s``), and pairs/s is the training after it.

The only benchmark-side changes to alignsuite: a data module subclass whose train loader reads rows in
file order (as the ``diffusers`` arm does here; ordering does not change the work), and forward hooks
that count rows through the models.

Model: the diffusion toy world's tiny ``StableDiffusionPipeline`` (random init, seeded; 16x16 images,
8x8x4 latents), saved once with ``save_pretrained``. ``--unet-channels`` (and ``--vae-channels``,
``--layers-per-block``) build a larger UNet (and VAE) of the same layout, and ``--resolution`` trains at
a larger size, so that a GPU run is not dominated by Python overhead. Data: ``SquaresWorld().make_pairs``
rows (caption, jpg_0, jpg_1 as PNG bytes, label_0, label_1), upscaled (nearest) to ``--resolution``.
Nothing is downloaded.

Checks that the arms did the same work: the first step's loss is ln 2 in every arm (policy ==
reference); every step holds the same dataset rows in every arm; per step the policy and the reference
UNet each see 2 x batch rows in every arm, and the VAE and text encoder see 2 x batch images and batch
captions in the uncached arms and none in the cached one (forward hooks count them).

``--alignsuite-free-grads`` is an ablation: alignsuite's gradients are freed right after each optimizer
step, as the plain loop's ``zero_grad`` does. Lightning zeroes them only just before the next backward, so
without it the previous step's gradients (one float32 copy of the trainable weights) are alive through
the next forward, and the GPU peak is higher by about that much.

On CUDA every arm runs with torch's defaults (cuDNN convolutions may use TF32). With the cache, alignsuite
encodes images in the warm pass's batches rather than the step's, and a VAE's output can depend in its last
bits on the batch it was computed in (more so on a GPU); Diffusion-DPO's large beta and Adam's sign-like
first steps amplify that, so the cached and uncached loss curves agree at the first step and then drift
apart (the script prints by how much). Throughput and memory are what this compares, not the curves.

``--threads`` defaults to every core. On a machine that other work shares, the threads of a parallel
region wait for the one that lost its core, and a run can be many times slower than with ``--threads 1``.

Timing and memory are ``benchmarks.harness``'s, as in ``bench_dpo_vs_trl``: steps after ``--warmup`` are timed at the end of
each optimizer step (after a device synchronisation on CUDA); peak RSS over the process and over
training (after a reset of the high-water mark at its start); on CUDA ``torch.cuda.max_memory_allocated``
over training. Steps during which other processes or the hypervisor took 5% of the machine or more are
not clean, and a run where they took that much over the whole timed window is marked CONTENDED (see
benchmarks/README.md).
"""

from __future__ import annotations

import io
import os
import statistics
import time
from functools import partial
from pathlib import Path

from benchmarks import harness
from benchmarks.harness.tables import fmt, print_arms, print_first_losses, print_ratios
from benchmarks.setups.tiny_sd import build_pipeline, write_pairs

PACKAGES = ("torch", "torchvision", "diffusers", "transformers", "lightning", "datasets")
COUNTED = ("vae", "text", "policy", "reference")  # rows through each model, counted by forward hooks


# ====================================================================== the arms (one per worker subprocess)
class WorkCounter:
    """Rows through each watched model (forward hooks), snapshotted at every ``mark``."""

    def __init__(self) -> None:
        self.totals = dict.fromkeys(COUNTED, 0)
        self.marks: list[dict] = []

    def watch(self, name: str, module) -> None:
        def hook(mod, args, kwargs, out):
            x = args[0] if args else kwargs.get("input_ids", kwargs.get("sample"))
            self.totals[name] += int(x.shape[0])

        module.register_forward_hook(hook, with_kwargs=True)

    def mark(self) -> None:
        self.marks.append(dict(self.totals))

    def per_step(self) -> list[dict]:
        """Rows per step: the differences of consecutive marks (the first mark is the start of training)."""
        return [{k: b[k] - a[k] for k in COUNTED} for a, b in zip(self.marks, self.marks[1:])]


def run_diffusers(cfg: dict) -> dict:
    import datasets
    import torch
    import torch.nn.functional as F
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from diffusers.optimization import get_scheduler
    from PIL import Image
    from torchvision import transforms
    from transformers import CLIPTextModel, CLIPTokenizer

    device = torch.device(cfg["device"])
    path = cfg["model_dir"]
    # The script's mixed precision: the frozen models' weights in the autocast dtype, the policy's in float32.
    weight_dtype = torch.bfloat16 if cfg["bf16"] else torch.float32
    tokenizer = CLIPTokenizer.from_pretrained(path, subfolder="tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(path, subfolder="text_encoder").requires_grad_(False).to(device, weight_dtype)
    vae = AutoencoderKL.from_pretrained(path, subfolder="vae").requires_grad_(False).to(device, weight_dtype)
    unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet").to(device)
    ref_unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet").requires_grad_(False).eval().to(device, weight_dtype)
    noise_scheduler = DDPMScheduler.from_pretrained(path, subfolder="scheduler")

    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg["lr"], betas=(0.9, 0.999), weight_decay=cfg["weight_decay"], eps=1e-8)
    lr_scheduler = get_scheduler("constant", optimizer=optimizer)

    r = cfg["resolution"]
    transform = transforms.Compose([
        transforms.Resize(r, interpolation=transforms.InterpolationMode.BILINEAR),
        transforms.CenterCrop(r),
        transforms.RandomHorizontalFlip() if cfg["flip"] else transforms.Lambda(lambda x: x),
        transforms.ToTensor(),
        transforms.Normalize([0.5], [0.5]),
    ])

    def preprocess(examples: dict) -> dict:
        # Both images of a row on the channel axis, the winner first.
        images = [[transform(Image.open(io.BytesIO(b)).convert("RGB")) for b in examples[c]] for c in ("jpg_0", "jpg_1")]
        pairs = [torch.cat(p if label != 0 else p[::-1]) for p, label in zip(zip(*images), examples["label_0"])]
        ids = tokenizer(examples["caption"], max_length=tokenizer.model_max_length, padding="max_length",
                        truncation=True, return_tensors="pt").input_ids
        return {"pixel_values": pairs, "input_ids": list(ids), "row": examples["row"]}

    def collate(examples: list[dict]) -> dict:
        pixels = torch.stack([e["pixel_values"] for e in examples]).to(memory_format=torch.contiguous_format).float()
        return {"pixel_values": pixels, "input_ids": torch.stack([e["input_ids"] for e in examples]),
                "row": [e["row"] for e in examples]}

    table = datasets.load_dataset("parquet", data_files=[cfg["data"]], split="train")
    table = table.add_column("row", list(range(len(table)))).with_transform(preprocess)
    loader = torch.utils.data.DataLoader(table, batch_size=cfg["batch_size"], shuffle=False, collate_fn=collate,
                                         num_workers=cfg["num_workers"])

    counter = WorkCounter()
    for name, module in (("vae", vae.encoder), ("text", text_encoder), ("policy", unet), ("reference", ref_unet)):
        counter.watch(name, module)
    memory, clock = harness.MemoryProbe(), harness.StepClock()
    losses, rows = [], []
    beta_dpo = cfg["beta"] / 2  # diffusers' convention: no 0.5 in the loss, half the paper's beta
    chunk = cfg["vae_encode_batch_size"]

    unet.train()
    memory.train_start()
    counter.mark()
    for step, batch in enumerate(loader):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg["bf16"]):
            pixels = batch["pixel_values"].to(device, weight_dtype)
            feed = torch.cat(pixels.chunk(2, dim=1))  # [B, 6, R, R] -> [2B, 3, R, R]: winners, then losers
            with torch.no_grad():
                latents = torch.cat([vae.encode(feed[i:i + chunk]).latent_dist.sample() for i in range(0, len(feed), chunk)])
                latents = latents * vae.config.scaling_factor
                hidden = text_encoder(batch["input_ids"].to(device))[0].repeat(2, 1, 1)
            noise = torch.randn_like(latents).chunk(2)[0].repeat(2, 1, 1, 1)
            bsz = latents.shape[0] // 2
            timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (bsz,), device=device).repeat(2)
            noisy = noise_scheduler.add_noise(latents, noise, timesteps)
            target = noise  # epsilon prediction

            pred = unet(noisy, timesteps, hidden).sample
            model_losses = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=[1, 2, 3])
            model_w, model_l = model_losses.chunk(2)
            model_diff = model_w - model_l
            with torch.no_grad():
                ref_pred = ref_unet(noisy, timesteps, hidden).sample
                ref_losses = F.mse_loss(ref_pred.float(), target.float(), reduction="none").mean(dim=[1, 2, 3])
                ref_w, ref_l = ref_losses.chunk(2)
                ref_diff = ref_w - ref_l
            logits = ref_diff - model_diff
            loss = -F.logsigmoid(beta_dpo * logits).mean()
            implicit_acc = (logits > 0).float().mean() + 0.5 * (logits == 0).float().mean()

        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg["max_grad_norm"])
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad()
        # What the script logs every step (each .item() waits for the device, as there).
        logs = {"loss": loss.detach().item(), "raw_model_loss": (0.5 * (model_w.mean() + model_l.mean())).item(),
                "ref_loss": ref_losses.mean().item(), "implicit_acc": implicit_acc.item()}
        clock.tick()
        counter.mark()
        losses.append(logs["loss"])
        rows.append(batch["row"])
        if step + 1 >= cfg["steps"]:
            break
    memory.train_end()
    return {"clock": clock.state(), "losses": losses, "rows": rows, "work": counter.per_step(),
            "memory": memory.report(), "reference": "second UNet (frozen copy)"}


def datamodule(cfg: dict):
    """alignsuite's data module over the Pick-a-Pic parquet, reading rows in file order as the other arm does."""
    from alignsuite.data import ImagePairs, PreferenceDataModule

    from benchmarks.harness.lightning_arm import in_file_order

    return in_file_order(PreferenceDataModule)(train=cfg["data"], layout=ImagePairs(), batch_size=cfg["batch_size"],
                                               num_workers=cfg["num_workers"])


def run_alignsuite(cfg: dict, cached: bool) -> dict:
    import torch

    from alignsuite.backbones import TextToImage
    from alignsuite.module import PreferenceModule
    from alignsuite.objectives import DPO
    from alignsuite.reference import FrozenCopy

    from benchmarks.harness.lightning_arm import Recorder, trainer

    counter, rows = WorkCounter(), []

    class Counting(Recorder):
        """The harness's recorder, and the rows through each model per step and in the cache's warm pass."""

        def on_fit_start(self, trainer, pl_module):
            backbone, info = pl_module.backbone, self.info
            for name, module in (("vae", backbone.frozen["vae"].encoder), ("text", backbone.frozen["text_encoder"]),
                                 ("policy", backbone.policy), ("reference", pl_module.reference.model)):
                counter.watch(name, module)
            warm_cache = backbone.warm_cache

            def timed_warm_cache(*a, **kw):  # runs inside PreferenceModule.on_fit_start, after this hook
                before = dict(counter.totals)
                harness.cuda_sync()
                started = time.perf_counter()
                warm_cache(*a, **kw)
                harness.cuda_sync()
                info["warm_s"] = time.perf_counter() - started
                info["warm_work"] = {k: counter.totals[k] - before[k] for k in COUNTED}
                info["cache_entries"] = len(backbone.cache)

            backbone.warm_cache = timed_warm_cache  # an instance attribute shadows the method

        def on_train_start(self, trainer, pl_module):
            if harness.cuda_sync():
                self.info["cuda_peak_before_train_mb"] = torch.cuda.max_memory_allocated() / 2**20
            super().on_train_start(trainer, pl_module)
            counter.mark()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if cfg["alignsuite_free_grads"]:  # ablation: free the gradients now, as the plain loop's zero_grad does
                for p in pl_module.parameters():
                    p.grad = None
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
            counter.mark()
            rows.append(batch["index"].tolist())

    lr, wd = cfg["lr"], cfg["weight_decay"]
    cache_dir = str(Path(cfg["workdir"]) / f"cache-{os.getpid()}") if cached else None
    frozen_dtype = "bfloat16" if cfg["bf16"] else "float32"  # the policy's trainable weights stay float32
    module = PreferenceModule(
        backbone=TextToImage(cfg["model_dir"], resolution=cfg["resolution"], random_flip=cfg["flip"],
                             seed=cfg["seed"], cache_dir=cache_dir, dtype=frozen_dtype, vae_dtype=frozen_dtype),
        objective=DPO(beta=cfg["beta"]),
        reference=FrozenCopy(),
        optimizer=lambda params: torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), weight_decay=wd, eps=1e-8),
        lr_schedule="constant",
        warmup_ratio=0.0,
    )
    recorder = Counting(cfg)
    trainer(cfg, [recorder], precision="bf16-mixed" if cfg["bf16"] else "32-true").fit(module, datamodule=datamodule(cfg))
    cache = module.backbone.cache
    if cache is not None:
        recorder.info["cache_hits"], recorder.info["cache_misses"] = cache.hits, cache.misses
    return {**recorder.record(), "rows": rows, "work": counter.per_step(), "reference": type(module.reference).__name__}


ARMS = {"diffusers": run_diffusers, "alignsuite": partial(run_alignsuite, cached=False),
        "alignsuite-cache": partial(run_alignsuite, cached=True)}
BENCH = harness.Bench(module=__spec__.name, name="diffusion_dpo", arms=ARMS, label="arm", packages=PACKAGES)


# ====================================================================== what is compared
def check(results: dict, batch_size: int) -> dict:
    """Did every arm do the same work?"""
    b = batch_size
    first, first_ok = harness.first_losses(results)
    row_lists = [r["rows"] for r in results.values()]
    expected = {arm: ({"vae": 0, "text": 0} if arm == "alignsuite-cache" else {"vae": 2 * b, "text": b})
                | {"policy": 2 * b, "reference": 2 * b} for arm in results}
    # The last batch may be short; compare each step against its own row count.
    work_ok = {arm: all(w == {k: v * len(rows) // b for k, v in expected[arm].items()}
                        for w, rows in zip(r["work"], r["rows"])) and len(r["work"]) == len(r["rows"])
               for arm, r in results.items()}
    plain, cached = results.get("alignsuite"), results.get("alignsuite-cache")
    return {
        # The cache stores the VAE's moments and draws the same latent sample: the two train alike.
        "cache_max_abs_loss_diff": max(abs(x - y) for x, y in zip(plain["losses"], cached["losses"]))
        if plain and cached else None,
        "first_loss": first,
        "first_loss_is_ln2": first_ok,
        "same_rows": all(rl == row_lists[0] for rl in row_lists),
        "pairs_per_step": sorted({len(x) for x in row_lists[0]}),
        "expected_rows_per_step": expected,
        "work_as_expected": work_ok,
    }


def ratios(results: dict) -> dict:
    """Each alignsuite arm against ``diffusers``, and after how many steps the cache's warm pass pays off."""
    base = results.get("diffusers")
    out = {}
    if base is None:
        return out
    for arm in ("alignsuite", "alignsuite-cache"):
        if arm in results:
            q = harness.ratios(results[arm], base)
            out[arm] = {k: q[k] for k in ("pairs_per_s", "clean_pairs_per_s", "peak_rss", "train_growth", "cuda_peak")}
    plain, cached = results.get("alignsuite"), results.get("alignsuite-cache")
    if plain and cached and cached.get("warm_s") is not None:
        saved_s = (plain["median_step_ms"] - cached["median_step_ms"]) / 1000.0
        out["cache_break_even_steps"] = cached["warm_s"] / saved_s if saved_s > 0 else None
    return out


def _work(r: dict) -> str:
    w = r["work"][-1]
    return f"{w['vae']}/{w['text']}/{w['policy']}/{w['reference']}"


def print_repeat(rep: int, order: list[str], results: dict, rat: dict, chk: dict) -> None:
    print_arms(f"repeat {rep} (order: {', '.join(order)})", {arm: results[arm] for arm in ARMS if arm in results},
               columns=[("GPU MB", 8, lambda r: r["memory"].get("cuda_peak_mb"), ".0f"),
                        ("warm s", 8, lambda r: r.get("warm_s"), ".2f"),
                        ("vae/txt/unet/ref per st", 25, _work, "")])
    for arm in ("alignsuite", "alignsuite-cache"):
        if arm in rat:
            print_ratios(arm, "diffusers", harness.ratios(results[arm], results["diffusers"]))
    cached = results.get("alignsuite-cache")
    if cached:
        ww = cached.get("warm_work", {})
        be = rat.get("cache_break_even_steps")
        print(f"  encoding cache: warm pass {cached.get('warm_s', float('nan')):.2f} s ({ww.get('vae', 0)} images and"
              f" {ww.get('text', 0)} captions encoded, {cached.get('cache_entries')} entries); training hits"
              f" {cached.get('cache_hits')}, misses {cached.get('cache_misses')}"
              + (f"; pays for itself after ~{be:.0f} steps" if be else "; no per-step saving measured here"))
    print_first_losses(chk["first_loss"], chk["first_loss_is_ln2"])
    print(f"  same dataset rows at every step in every arm: {chk['same_rows']}; pairs per step {chk['pairs_per_step']};"
          f" rows through vae/text/unet/ref as expected: {chk['work_as_expected']}")
    if chk["cache_max_abs_loss_diff"] is not None:
        print(f"  alignsuite with and without the cache, max |loss difference| over steps:"
              f" {fmt(chk['cache_max_abs_loss_diff'], '.2e')}")


def summarize(runs: list[dict], arms: list[str]) -> dict:
    """Medians over the repeats, each alignsuite arm's median ratios to ``diffusers``, and the checks."""
    summary = {arm: {"pairs_per_s": statistics.median(r[arm]["pairs_per_s"] for r in runs),
                     "peak_rss_mb": statistics.median(r[arm]["memory"]["peak_rss_mb"] for r in runs),
                     "cuda_peak_mb": statistics.median(r[arm]["memory"].get("cuda_peak_mb") or float("nan") for r in runs)}
               for arm in arms}
    if "alignsuite-cache" in arms:
        summary["alignsuite-cache"]["warm_s"] = statistics.median(r["alignsuite-cache"]["warm_s"] for r in runs)
    for arm in ("alignsuite", "alignsuite-cache"):
        if arm in arms and "diffusers" in arms:
            for key in ("pairs_per_s", "peak_rss", "cuda_peak"):
                summary[f"ratio_{key}_{arm}_vs_diffusers"] = harness.median_or_none(r["ratios"][arm][key] for r in runs)
    summary["all_checks_passed"] = all(r["checks"]["first_loss_is_ln2"] and r["checks"]["same_rows"]
                                       and all(r["checks"]["work_as_expected"].values()) for r in runs)
    summary["any_contended"] = any(r["contended"] for r in runs)
    if len(runs) > 1:
        print("\nmedian over repeats: " + "; ".join(f"{a} {s['pairs_per_s']:.2f} pairs/s, peak {s['peak_rss_mb']:.0f} MB"
                                                  for a, s in summary.items() if isinstance(s, dict)))
    if not summary["all_checks_passed"]:
        print("\nWARNING: a sameness check failed (first loss != ln 2, different rows, or unexpected work per step)")
    return summary


# ====================================================================== options and driver
def parse_args(argv=None):
    p = harness.parser(BENCH, __doc__)
    p.add_argument("--resolution", type=int, default=16, help="training resolution; the images are made at this size")
    p.add_argument("--unet-channels", default=None, help="UNet block widths, e.g. 64,128,256 (default: the toy's 32,64)")
    p.add_argument("--vae-channels", default=None, help="VAE block widths (default: the toy's 16,32, a 2x VAE)")
    p.add_argument("--layers-per-block", type=int, default=1)
    p.add_argument("--sd15", action="store_true",
                   help="Stable Diffusion 1.5's UNet (860M), VAE and CLIP-L-sized text encoder, random init (use with"
                        " --resolution 512 on a GPU)")
    p.add_argument("--bf16", action="store_true",
                   help="bf16 autocast in every arm, the frozen VAE, text encoder and reference UNet in bfloat16 and"
                        " the policy in float32 (the diffusers script's --mixed_precision bf16, alignsuite's"
                        " bf16-mixed with dtype and vae_dtype bfloat16)")
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--weight-decay", type=float, default=1e-2, help="AdamW's (diffusers' script default)")
    p.add_argument("--beta", type=float, default=5000.0, help="the paper's beta (diffusers' beta_dpo is half)")
    p.add_argument("--max-grad-norm", type=float, default=1.0)
    p.add_argument("--no-flip", action="store_true", help="no random horizontal flip (the cache then encodes one orientation)")
    p.add_argument("--vae-encode-batch-size", type=int, default=8, help="the diffusers arm's VAE chunk (its script's default)")
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader workers in every arm")
    p.add_argument("--alignsuite-free-grads", action="store_true",
                   help="ablation: free alignsuite's gradients right after each optimizer step (Lightning frees them"
                        " only before the next backward, so they live through the next forward)")
    return harness.parse_args(p, BENCH, "--arms", argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("TQDM_DISABLE", "1")  # the save_pretrained and parquet progress bars
    with harness.scratch(BENCH, args.keep_workdir) as workdir:
        model_dir, data = workdir / "pipeline", workdir / "pairs.parquet"
        model = build_pipeline(model_dir, args)
        data_info = write_pairs(data, args.steps * args.batch_size, args.resolution, args.seed)
        cfg = {"model_dir": str(model_dir), "data": str(data), "workdir": str(workdir), "steps": args.steps,
               "warmup": args.warmup, "batch_size": args.batch_size, "resolution": args.resolution, "lr": args.lr,
               "weight_decay": args.weight_decay, "beta": args.beta, "max_grad_norm": args.max_grad_norm,
               "flip": not args.no_flip, "vae_encode_batch_size": args.vae_encode_batch_size,
               "num_workers": args.num_workers, "threads": args.threads, "device": args.device, "seed": args.seed,
               "alignsuite_free_grads": args.alignsuite_free_grads, "bf16": args.bf16}
        print(f"model: StableDiffusionPipeline, UNet {model['unet_parameters'] / 1e6:.2f}M parameters (blocks"
              f" {model['unet_channels']}, {model['layers_per_block']} layer each), VAE {model['vae_parameters'] / 1e6:.2f}M"
              f" (blocks {model['vae_channels']}), text encoder {model['text_encoder_parameters'] / 1e6:.2f}M;"
              f" {args.resolution}px images, {model['latent_size']}x{model['latent_size']}x4 latents")
        print(f"settings: {args.steps} steps ({args.warmup} warm-up), batch {args.batch_size} pairs, lr {args.lr},"
              f" weight decay {args.weight_decay}, beta {args.beta}, clip {args.max_grad_norm}, flip {not args.no_flip},"
              f" {'bf16 autocast, frozen models in bfloat16' if args.bf16 else 'float32'}, {args.device}, threads {args.threads}, data {data_info['rows']} pairs")
        vers = harness.versions(PACKAGES)

        runs = []
        for rep, order, results in harness.repeats(BENCH, cfg, workdir, args):
            entry = {"order": order, **results, "checks": check(results, args.batch_size), "ratios": ratios(results),
                     "contended": any(harness.contended(r) for r in results.values())}
            print_repeat(rep, order, results, entry["ratios"], entry["checks"])
            runs.append(entry)
        harness.write_report(BENCH, args, vers, model, data_info, cfg, runs, summarize(runs, args.arm_list))


if __name__ == "__main__":
    harness.main(BENCH, main)
