"""PAD on the language toy world: the toy base model, never trained, guided at decoding time by a DPO-trained reward
model, at several weights; and the guide's speed against unguided decoding.

    python scripts/toy_pad.py --seeds 0 1 2 3
    python scripts/toy_pad.py --seeds 0 --speed

For each seed, DPO trains a reward model from the toy base for ``--steps`` steps of 16 pairs (the settings of
``recipes/toy/llm_dpo.yaml``, other data and shuffle per seed); the base then answers the world's 128 evaluation
prompts greedily (8 new tokens) guided by it at each weight, and the mean toy reward is printed per weight
(w = 0 is the unguided base). ``--speed`` also times 128 prompts in batches of 64 with every answer 48 tokens long:
unguided, guided with the reward model's key-value cache, and guided re-encoding its whole prefix every step (the
official code's way), in generated tokens per second (best of 3, after a warm-up).
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from functools import partial

import torch

WEIGHTS = (0.0, 0.2, 0.4, 0.8, 1.0, 1.5)


def train_reward_model(path: str, seed: int, steps: int = 32) -> None:
    """DPO from the toy base on the echo world's pairs for ``steps`` steps of 16 (lr 5e-4, beta 0.1), saved at
    ``path``: the reward model."""
    from lightning.pytorch import Trainer, seed_everything

    from alignsuite.backbones import CausalLM
    from alignsuite.module import PreferenceModule
    from alignsuite.objectives import DPO
    from alignsuite.toy.data import ToyPreferenceData

    seed_everything(seed)
    backbone = CausalLM("toy:llm", max_length=32, max_prompt_length=16)
    module = PreferenceModule(backbone, DPO(beta=0.1), optimizer=partial(torch.optim.AdamW, lr=5e-4, weight_decay=0.0))
    data = ToyPreferenceData(world="llm", num_train=16 * steps, num_val=16, batch_size=16, seed=seed)
    Trainer(accelerator="cpu", devices=1, max_steps=steps, logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0).fit(module, data)
    backbone.save_pretrained(path)


def guided_rewards(base, reward_model: str, weights=WEIGHTS, num_prompts: int = 128, seed: int = 1234) -> list[float]:
    """The mean toy reward of ``base``'s greedy answers to the world's evaluation prompts, guided at each weight."""
    from alignsuite.backbones import PAD
    from alignsuite.toy import get_world

    world = get_world("llm")
    prompts = world.eval_prompts(num_prompts, seed)
    means = []
    for w in weights:
        outputs = base.generate(prompts, max_new_tokens=8, guide=PAD(reward_model, weight=w))
        means.append(sum(world.reward(p, o) for p, o in zip(prompts, outputs)) / len(prompts))
    return means


def tokens_per_second(base, guide, num_prompts: int = 128, batch_size: int = 64, new_tokens: int = 48,
                      repeats: int = 3) -> float:
    """Generated tokens per second, every answer ``new_tokens`` long; best of ``repeats`` after a warm-up."""
    from alignsuite.toy import get_world

    prompts = get_world("llm").eval_prompts(num_prompts, 1234)
    kwargs = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "guide": guide}

    def run():
        for start in range(0, num_prompts, batch_size):
            base.generate(prompts[start:start + batch_size], **kwargs)

    run()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - t0)
    return num_prompts * new_tokens / best


def main(argv: list[str] | None = None) -> None:
    from alignsuite.backbones import PAD, CausalLM

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--steps", type=int, default=32, help="DPO steps of the reward model")
    parser.add_argument("--weights", type=float, nargs="+", default=list(WEIGHTS))
    parser.add_argument("--speed", action="store_true", help="time the guide against unguided decoding")
    args = parser.parse_args(argv)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)  # the table alone, not each fit's banner
    base = CausalLM("toy:llm", max_length=32, max_prompt_length=16)
    base.configure()
    print("seed | " + " | ".join(f"w = {w:g}" for w in args.weights))
    with tempfile.TemporaryDirectory() as work:
        for seed in args.seeds:
            path = os.path.join(work, f"rm{seed}")
            train_reward_model(path, seed, args.steps)
            rewards = guided_rewards(base, path, args.weights)
            print(f"{seed} | " + " | ".join(f"{r:.3f}" for r in rewards), flush=True)
        if args.speed:
            print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; tokens/s at 48 new tokens, batch 64:")
            for name, guide in (("unguided", None), ("PAD, reward model cached", PAD(path)),
                                ("PAD, prefix re-encoded each step", PAD(path, cache=False))):
                print(f"  {name}: {tokens_per_second(base, guide):.0f}", flush=True)


if __name__ == "__main__":
    main()
