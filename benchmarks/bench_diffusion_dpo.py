"""Diffusion-DPO throughput and memory: alignsuite against a diffusers-style training loop, same model, same data.

Run by hand (never a test):

    python benchmarks/bench_diffusion_dpo.py --repeats 2 --out bench_diffusion_dpo.json
    python benchmarks/bench_diffusion_dpo.py --device cuda --resolution 64 --unet-channels 64,128,256 \
        --batch-size 16 --repeats 2 --out bench_diffusion_dpo_cuda.json         # on a GPU
    python benchmarks/bench_diffusion_dpo.py --device cuda --resolution 128 --vae-channels 32,64,128,128 \
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

Timing and memory reuse ``bench_dpo_vs_trl``'s helpers: steps after ``--warmup`` are timed at the end of
each optimizer step (after a device synchronisation on CUDA); peak RSS over the process and over
training (after a reset of the high-water mark at its start); on CUDA ``torch.cuda.max_memory_allocated``
over training. Steps during which other processes or the hypervisor took 5% of the machine or more are
not clean, and a run where they took that much over the whole timed window is marked CONTENDED (see
benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# This folder (for the helpers below) and the checkout (as the workers see it, on PYTHONPATH).
sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]
from bench_dpo_vs_trl import MemoryProbe, StepClock, _gpu_name, contended, throughput, wait_for_idle  # noqa: E402

LN2 = math.log(2.0)
ARMS = ("diffusers", "alignsuite", "alignsuite-cache")
COUNTED = ("vae", "text", "policy", "reference")  # rows through each model, counted by forward hooks


# ====================================================================== model and data
def _ints(text: str | None) -> tuple[int, ...] | None:
    return tuple(int(x) for x in text.split(",")) if text else None


def build_pipeline(path: Path, args) -> dict:
    """The toy world's tiny SD pipeline (or, with channel options, a larger one of the same layout),
    random init under ``args.seed``, saved with ``save_pretrained``; returns its sizes."""
    import torch
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    from alignsuite.toy.diffusion import SquaresWorld

    world = SquaresWorld()
    vae_channels, unet_channels = _ints(args.vae_channels), _ints(args.unet_channels)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed)
        tok = world.build_tokenizer()
        text_encoder = CLIPTextModel(world.text_config(tok))
        if vae_channels is None:
            vae = world.build_vae()
        else:
            vae = AutoencoderKL.from_config(dict(world.build_vae().config, block_out_channels=vae_channels,
                                                 down_block_types=("DownEncoderBlock2D",) * len(vae_channels),
                                                 up_block_types=("UpDecoderBlock2D",) * len(vae_channels)))
        factor = 2 ** (len(vae.config.block_out_channels) - 1)
        latent = args.resolution // factor
        n = len(unet_channels or (32, 64))
        if args.resolution % factor or latent % 2 ** (n - 1):
            raise SystemExit(f"--resolution {args.resolution}: the VAE divides it by {factor}, and the UNet must"
                             f" halve the {latent}x{latent} latents {n - 1} times")
        if unet_channels is None and args.layers_per_block == 1:
            unet = world.build_unet(text_encoder.config.hidden_size)
        else:
            # The toy's layout: no attention at the finest level, self and cross attention below it.
            unet = UNet2DConditionModel(
                sample_size=latent, in_channels=4, out_channels=4, layers_per_block=args.layers_per_block,
                block_out_channels=unet_channels or (32, 64),
                down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n - 1),
                up_block_types=("CrossAttnUpBlock2D",) * (n - 1) + ("UpBlock2D",),
                cross_attention_dim=text_encoder.config.hidden_size, attention_head_dim=8, norm_num_groups=8)
        pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tok, unet=unet,
                                       scheduler=world.build_scheduler(), safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(path)

    def count(m):
        return sum(p.numel() for p in m.parameters())

    return {"unet_parameters": count(unet), "vae_parameters": count(vae), "text_encoder_parameters": count(text_encoder),
            "unet_channels": list(unet.config.block_out_channels), "layers_per_block": unet.config.layers_per_block,
            "vae_channels": list(vae.config.block_out_channels), "latent_size": latent}


def write_pairs(path: Path, n: int, resolution: int, seed: int) -> dict:
    """``n`` toy-world Pick-a-Pic rows, images upscaled (nearest) to ``resolution``, as one parquet file."""
    import datasets
    from PIL import Image

    from alignsuite.toy.diffusion import SquaresWorld

    def sized(png: bytes) -> bytes:
        image = Image.open(io.BytesIO(png)).convert("RGB")
        if image.size == (resolution, resolution):
            return png
        out = io.BytesIO()
        image.resize((resolution, resolution), Image.NEAREST).save(out, format="PNG")
        return out.getvalue()

    rows = [{"caption": r["caption"], "jpg_0": sized(r["jpg_0"]), "jpg_1": sized(r["jpg_1"]),
             "label_0": r["label_0"], "label_1": r["label_1"]} for r in SquaresWorld().make_pairs(n, seed)]
    datasets.Dataset.from_list(rows).to_parquet(str(path))
    return {"rows": n, "image_size": resolution, "mean_png_bytes": statistics.mean(len(r[k]) for r in rows for k in ("jpg_0", "jpg_1"))}


# ====================================================================== workers (one per subprocess)
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
    tokenizer = CLIPTokenizer.from_pretrained(path, subfolder="tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(path, subfolder="text_encoder").requires_grad_(False).to(device)
    vae = AutoencoderKL.from_pretrained(path, subfolder="vae").requires_grad_(False).to(device)
    unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet").to(device)
    ref_unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet").requires_grad_(False).eval().to(device)
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
    memory, clock = MemoryProbe(), StepClock()
    losses, rows = [], []
    beta_dpo = cfg["beta"] / 2  # diffusers' convention: no 0.5 in the loss, half the paper's beta
    chunk = cfg["vae_encode_batch_size"]

    unet.train()
    memory.train_start()
    counter.mark()
    for step, batch in enumerate(loader):
        pixels = batch["pixel_values"].to(device)
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


def run_alignsuite(cfg: dict, cached: bool) -> dict:
    import lightning as L
    import torch
    from lightning.pytorch.callbacks import Callback

    from alignsuite.backbones import TextToImage
    from alignsuite.data import ImagePairs, PreferenceDataModule
    from alignsuite.module import PreferenceModule
    from alignsuite.objectives import DPO
    from alignsuite.reference import FrozenCopy

    counter, memory, clock = WorkCounter(), MemoryProbe(), StepClock()
    losses, rows, info = [], [], {}

    class InFileOrder(PreferenceDataModule):
        """The real data module; only its train loader reads rows in file order, as the other arm's does."""

        def train_dataloader(self):
            return self._loader(self._dataset("train"), self.batch_size, shuffle=False)

    class Timer(Callback):
        def on_fit_start(self, trainer, pl_module):
            backbone = pl_module.backbone
            for name, module in (("vae", backbone.frozen["vae"].encoder), ("text", backbone.frozen["text_encoder"]),
                                 ("policy", backbone.policy), ("reference", pl_module.reference.model)):
                counter.watch(name, module)
            warm_cache = backbone.warm_cache

            def timed_warm_cache(*a, **kw):  # runs inside PreferenceModule.on_fit_start, after this hook
                before = dict(counter.totals)
                if torch.cuda.is_available() and torch.cuda.is_initialized():
                    torch.cuda.synchronize()
                started = time.perf_counter()
                warm_cache(*a, **kw)
                if torch.cuda.is_available() and torch.cuda.is_initialized():
                    torch.cuda.synchronize()
                info["warm_s"] = time.perf_counter() - started
                info["warm_work"] = {k: counter.totals[k] - before[k] for k in COUNTED}
                info["cache_entries"] = len(backbone.cache)

            backbone.warm_cache = timed_warm_cache  # an instance attribute shadows the method

        def on_train_start(self, trainer, pl_module):
            if torch.cuda.is_available() and torch.cuda.is_initialized():
                info["cuda_peak_before_train_mb"] = torch.cuda.max_memory_allocated() / 2**20
            memory.train_start()
            counter.mark()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if cfg["alignsuite_free_grads"]:  # ablation: free the gradients now, as the plain loop's zero_grad does
                for p in pl_module.parameters():
                    p.grad = None
            clock.tick()
            counter.mark()
            losses.append(float(outputs["loss"]))
            rows.append(batch["index"].tolist())

        def on_train_end(self, trainer, pl_module):
            memory.train_end()

    lr, wd = cfg["lr"], cfg["weight_decay"]
    cache_dir = str(Path(cfg["workdir"]) / f"cache-{os.getpid()}") if cached else None
    module = PreferenceModule(
        backbone=TextToImage(cfg["model_dir"], resolution=cfg["resolution"], random_flip=cfg["flip"],
                             seed=cfg["seed"], cache_dir=cache_dir),
        objective=DPO(beta=cfg["beta"]),
        reference=FrozenCopy(),
        optimizer=lambda params: torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), weight_decay=wd, eps=1e-8),
        lr_schedule="constant",
        warmup_ratio=0.0,
    )
    data = InFileOrder(train=cfg["data"], layout=ImagePairs(), batch_size=cfg["batch_size"], num_workers=cfg["num_workers"])
    trainer = L.Trainer(
        accelerator="gpu" if cfg["device"] == "cuda" else "cpu", devices=1, precision="32-true",
        max_steps=cfg["steps"], gradient_clip_val=cfg["max_grad_norm"], logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
        callbacks=[Timer()],
    )
    trainer.fit(module, datamodule=data)
    cache = module.backbone.cache
    if cache is not None:
        info["cache_hits"], info["cache_misses"] = cache.hits, cache.misses
    return {"clock": clock.state(), "losses": losses, "rows": rows, "work": counter.per_step(),
            "memory": memory.report(), "reference": type(module.reference).__name__, **info}


def worker_main(arm: str, cfg_path: str, result_path: str) -> None:
    import torch

    cfg = json.loads(Path(cfg_path).read_text())
    torch.set_num_threads(cfg["threads"])
    torch.manual_seed(cfg["seed"])
    result = run_diffusers(cfg) if arm == "diffusers" else run_alignsuite(cfg, cached=arm == "alignsuite-cache")
    result["arm"] = arm
    result["torch_threads"] = torch.get_num_threads()
    result.update(throughput(result.pop("clock"), cfg["batch_size"], cfg["warmup"], cfg["threads"]))
    Path(result_path).write_text(json.dumps(result))


# ====================================================================== driver
def run_worker(arm: str, cfg: dict, workdir: Path, tag: str, quiet: bool) -> dict:
    cfg_path, result_path = workdir / "config.json", workdir / f"result_{arm}_{tag}.json"
    cfg_path.write_text(json.dumps(cfg))
    env = dict(os.environ, OMP_NUM_THREADS=str(cfg["threads"]), MKL_NUM_THREADS=str(cfg["threads"]),
               TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               HF_DATASETS_CACHE=str(workdir / "datasets_cache"), PYTHONWARNINGS="ignore", TQDM_DISABLE="1")
    repo = Path(__file__).resolve().parents[1]
    env["PYTHONPATH"] = str(repo) + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", arm, str(cfg_path), str(result_path)]
    started = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0 or not result_path.exists():
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
        raise SystemExit(f"{arm} worker failed (exit {proc.returncode})")
    if not quiet and proc.stderr.strip():
        sys.stderr.write(f"--- {arm} stderr (tail) ---\n{proc.stderr[-1500:]}\n")
    result = json.loads(result_path.read_text())
    result["wall_s"] = time.perf_counter() - started
    return result


def check(results: dict, batch_size: int) -> dict:
    """Did every arm do the same work?"""
    b = batch_size
    first = {arm: r["losses"][0] for arm, r in results.items()}
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
        "first_loss_is_ln2": all(abs(x - LN2) < 1e-4 for x in first.values()),
        "same_rows": all(rl == row_lists[0] for rl in row_lists),
        "pairs_per_step": sorted({len(x) for x in row_lists[0]}),
        "expected_rows_per_step": expected,
        "work_as_expected": work_ok,
    }


def ratios(results: dict) -> dict:
    base = results.get("diffusers")
    out = {}
    if base is None:
        return out
    for arm in ("alignsuite", "alignsuite-cache"):
        r = results.get(arm)
        if r is None:
            continue
        m, bm = r["memory"], base["memory"]
        out[arm] = {
            "pairs_per_s": r["pairs_per_s"] / base["pairs_per_s"],
            "clean_pairs_per_s": r["clean_pairs_per_s"] / base["clean_pairs_per_s"]
            if r["clean_pairs_per_s"] and base["clean_pairs_per_s"] else None,
            "peak_rss": m["peak_rss_mb"] / bm["peak_rss_mb"],
            "train_growth": m["train_growth_mb"] / bm["train_growth_mb"]
            if m.get("train_growth_mb") and bm.get("train_growth_mb") else None,
            "cuda_peak": m["cuda_peak_mb"] / bm["cuda_peak_mb"] if m.get("cuda_peak_mb") and bm.get("cuda_peak_mb") else None,
        }
    plain, cached = results.get("alignsuite"), results.get("alignsuite-cache")
    if plain and cached and cached.get("warm_s") is not None:
        saved_s = (plain["median_step_ms"] - cached["median_step_ms"]) / 1000.0
        out["cache_break_even_steps"] = cached["warm_s"] / saved_s if saved_s > 0 else None
    return out


def print_table(rep: int, order: list[str], results: dict, rat: dict, chk: dict) -> None:
    def fmt(x, spec, width):
        return f"{'-' if x is None else format(x, spec):>{width}}"

    print(f"\nrepeat {rep} (order: {', '.join(order)})")
    print(f"  {'arm':<17}{'pairs/s':>8}{'med ms/st':>10}{'peak MB':>9}{'train +MB':>10}{'GPU MB':>8}{'warm s':>8}"
          f"{'loss@1':>10}{'loss@last':>11}{'vae/txt/unet/ref per st':>25}{'others%':>8}{'steal%':>7}{'clean':>8}")
    for arm in ARMS:
        r = results.get(arm)
        if r is None:
            continue
        m, w = r["memory"], r["work"][-1]
        work = f"{w['vae']}/{w['text']}/{w['policy']}/{w['reference']}"
        print(f"  {arm:<17}{r['pairs_per_s']:>8.2f}{r['median_step_ms']:>10.1f}{m['peak_rss_mb']:>9.0f}"
              f"{fmt(m.get('train_growth_mb'), '.0f', 10)}{fmt(m.get('cuda_peak_mb'), '.0f', 8)}{fmt(r.get('warm_s'), '.2f', 8)}"
              f"{r['losses'][0]:>10.6f}{r['losses'][-1]:>11.4g}{work:>25}{100 * r['others']:>8.1f}{100 * r['steal']:>7.1f}"
              f"{len(r['clean_steps']):>4}/{r['timed_steps']:<3}" + ("  <- CONTENDED" if contended(r, 0) else ""))
    for arm, q in rat.items():
        if arm == "cache_break_even_steps":
            continue
        print(f"  ratio {arm} / diffusers: pairs/s {q['pairs_per_s']:.3f} (clean steps only {fmt(q['clean_pairs_per_s'], '.3f', 0)}),"
              f" peak RSS {q['peak_rss']:.3f}, training growth {fmt(q['train_growth'], '.3f', 0)}"
              + (f", GPU peak {q['cuda_peak']:.3f}" if q["cuda_peak"] else ""))
    cached = results.get("alignsuite-cache")
    if cached:
        ww = cached.get("warm_work", {})
        be = rat.get("cache_break_even_steps")
        print(f"  encoding cache: warm pass {cached.get('warm_s', float('nan')):.2f} s ({ww.get('vae', 0)} images and"
              f" {ww.get('text', 0)} captions encoded, {cached.get('cache_entries')} entries); training hits"
              f" {cached.get('cache_hits')}, misses {cached.get('cache_misses')}"
              + (f"; pays for itself after ~{be:.0f} steps" if be else "; no per-step saving measured here"))
    print(f"  first-step loss {', '.join(f'{a} {x:.6f}' for a, x in chk['first_loss'].items())} (ln 2 = {LN2:.6f})"
          f" -> {'OK' if chk['first_loss_is_ln2'] else 'MISMATCH'}")
    print(f"  same dataset rows at every step in every arm: {chk['same_rows']}; pairs per step {chk['pairs_per_step']};"
          f" rows through vae/text/unet/ref as expected: {chk['work_as_expected']}")
    if chk["cache_max_abs_loss_diff"] is not None:
        print(f"  alignsuite with and without the cache, max |loss difference| over steps: {chk['cache_max_abs_loss_diff']:.2e}")


def versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for name in ("torch", "torchvision", "diffusers", "transformers", "lightning", "datasets"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    try:  # the checkout the workers import alignsuite from
        out["alignsuite_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent,
                                                  capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        out["alignsuite_commit"] = None
    return out


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--warmup", type=int, default=5, help="steps left out of the timing")
    p.add_argument("--batch-size", type=int, default=8, help="preference pairs per step")
    p.add_argument("--resolution", type=int, default=16, help="training resolution; the images are made at this size")
    p.add_argument("--unet-channels", default=None, help="UNet block widths, e.g. 64,128,256 (default: the toy's 32,64)")
    p.add_argument("--vae-channels", default=None, help="VAE block widths (default: the toy's 16,32, a 2x VAE)")
    p.add_argument("--layers-per-block", type=int, default=1)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--weight-decay", type=float, default=1e-2, help="AdamW's (diffusers' script default)")
    p.add_argument("--beta", type=float, default=5000.0, help="the paper's beta (diffusers' beta_dpo is half)")
    p.add_argument("--max-grad-norm", type=float, default=1.0)
    p.add_argument("--no-flip", action="store_true", help="no random horizontal flip (the cache then encodes one orientation)")
    p.add_argument("--vae-encode-batch-size", type=int, default=8, help="the diffusers arm's VAE chunk (its script's default)")
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader workers in every arm")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch.set_num_threads in every arm")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--alignsuite-free-grads", action="store_true",
                   help="ablation: free alignsuite's gradients right after each optimizer step (Lightning frees them"
                        " only before the next backward, so they live through the next forward)")
    p.add_argument("--repeats", type=int, default=1, help="run every arm this many times, alternating the order")
    p.add_argument("--arms", default=",".join(ARMS))
    p.add_argument("--wait-idle", type=float, default=0.0, help="before each arm, wait up to this many seconds for an idle machine")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the figures as JSON here")
    p.add_argument("--keep-workdir", action="store_true")
    p.add_argument("--quiet", action="store_true", help="do not echo the workers' stderr")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("TQDM_DISABLE", "1")  # the save_pretrained and parquet progress bars
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    if not arms or not set(arms) <= set(ARMS):
        raise SystemExit(f"--arms: choose from {ARMS}")
    if args.steps <= args.warmup:
        raise SystemExit("--steps must be larger than --warmup")
    workdir = Path(tempfile.mkdtemp(prefix="bench_diffusion_dpo_"))
    try:
        model_dir, data = workdir / "pipeline", workdir / "pairs.parquet"
        model = build_pipeline(model_dir, args)
        data_info = write_pairs(data, args.steps * args.batch_size, args.resolution, args.seed)
        cfg = {"model_dir": str(model_dir), "data": str(data), "workdir": str(workdir), "steps": args.steps,
               "warmup": args.warmup, "batch_size": args.batch_size, "resolution": args.resolution, "lr": args.lr,
               "weight_decay": args.weight_decay, "beta": args.beta, "max_grad_norm": args.max_grad_norm,
               "flip": not args.no_flip, "vae_encode_batch_size": args.vae_encode_batch_size,
               "num_workers": args.num_workers, "threads": args.threads, "device": args.device, "seed": args.seed,
               "alignsuite_free_grads": args.alignsuite_free_grads}
        print(f"model: StableDiffusionPipeline, UNet {model['unet_parameters'] / 1e6:.2f}M parameters (blocks"
              f" {model['unet_channels']}, {model['layers_per_block']} layer each), VAE {model['vae_parameters'] / 1e6:.2f}M"
              f" (blocks {model['vae_channels']}), text encoder {model['text_encoder_parameters'] / 1e6:.2f}M;"
              f" {args.resolution}px images, {model['latent_size']}x{model['latent_size']}x4 latents")
        print(f"settings: {args.steps} steps ({args.warmup} warm-up), batch {args.batch_size} pairs, lr {args.lr},"
              f" weight decay {args.weight_decay}, beta {args.beta}, clip {args.max_grad_norm}, flip {not args.no_flip},"
              f" float32, {args.device}, threads {args.threads}, data {data_info['rows']} pairs")
        vers = versions()
        print("versions: " + ", ".join(f"{k} {v}" for k, v in vers.items()))

        runs = []
        for rep in range(args.repeats):
            order = arms if rep % 2 == 0 else arms[::-1]
            results = {}
            for arm in order:
                if args.wait_idle:
                    wait_for_idle(args.wait_idle)
                r = results[arm] = run_worker(arm, cfg, workdir, str(rep), args.quiet)
                print(f"  [{rep}] {arm}: {r['pairs_per_s']:.2f} pairs/s, peak {r['memory']['peak_rss_mb']:.0f} MB,"
                      f" first loss {r['losses'][0]:.6f}, others {100 * r['others']:.0f}%, steal {100 * r['steal']:.0f}%,"
                      f" clean steps {len(r['clean_steps'])}/{r['timed_steps']}, wall {r['wall_s']:.0f}s", flush=True)
            entry = {"order": order, **results, "checks": check(results, args.batch_size), "ratios": ratios(results),
                     "contended": any(contended(r, args.threads) for r in results.values())}
            print_table(rep, order, results, entry["ratios"], entry["checks"])
            runs.append(entry)

        summary = {arm: {"pairs_per_s": statistics.median(r[arm]["pairs_per_s"] for r in runs),
                         "peak_rss_mb": statistics.median(r[arm]["memory"]["peak_rss_mb"] for r in runs),
                         "cuda_peak_mb": statistics.median(r[arm]["memory"].get("cuda_peak_mb") or float("nan") for r in runs)}
                   for arm in arms}
        if "alignsuite-cache" in arms:
            summary["alignsuite-cache"]["warm_s"] = statistics.median(r["alignsuite-cache"]["warm_s"] for r in runs)
        for arm in ("alignsuite", "alignsuite-cache"):
            if arm in arms and "diffusers" in arms:
                for key in ("pairs_per_s", "peak_rss", "cuda_peak"):
                    vals = [r["ratios"][arm][key] for r in runs if r["ratios"][arm][key] is not None]
                    summary[f"ratio_{key}_{arm}_vs_diffusers"] = statistics.median(vals) if vals else None
        summary["all_checks_passed"] = all(r["checks"]["first_loss_is_ln2"] and r["checks"]["same_rows"]
                                           and all(r["checks"]["work_as_expected"].values()) for r in runs)
        summary["any_contended"] = any(r["contended"] for r in runs)
        if args.repeats > 1:
            print("\nmedian over repeats: " + "; ".join(f"{a} {s['pairs_per_s']:.2f} pairs/s, peak {s['peak_rss_mb']:.0f} MB"
                                                      for a, s in summary.items() if isinstance(s, dict)))
        if not summary["all_checks_passed"]:
            print("\nWARNING: a sameness check failed (first loss != ln 2, different rows, or unexpected work per step)")
        report = {"benchmark": "diffusion_dpo",
                  "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                              "gpu": _gpu_name() if args.device == "cuda" else None},
                  "versions": vers, "model": model, "data": data_info,
                  "settings": {k: v for k, v in cfg.items() if k not in ("model_dir", "data", "workdir")},
                  "runs": runs, "summary": summary}
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
