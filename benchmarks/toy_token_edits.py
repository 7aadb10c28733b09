"""How many tokens of the base model's answers an objective changes while it raises the language toy world's reward.

Not a comparison with a peer: each objective (``dpo`` and token-level ones) trains the language toy world's base
model (``recipes/toy/llm_dpo.yaml``'s settings: lr 5e-4, batch 16, 2048 pairs, linear schedule) for ``--steps``
steps from each ``--seeds``; then the greedy answers to the world's fixed evaluation prompts (those the
``GenerationReward`` callback scores) are compared with the base model's: the toy reward, and the token edit
distance (Levenshtein over whitespace tokens) to the base's answer, as a mean per prompt and as the fraction of
answers changed at all (and of the base's answers that were right already, how many changed); and, feeding the base's answers back (teacher forcing), how many of their tokens the model
no longer predicts greedily: a token-level method should flip the tokens where the answer goes wrong and leave the
rest of the base's choices as they are.

    python benchmarks/toy_token_edits.py --objectives dpo tdpo1 tdpo2 --seeds 0 1 2 --steps 128
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch


def edits(a: list[str], b: list[str]) -> int:
    """Levenshtein distance between two token lists."""
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
    return row[-1]


def answers(backbone, prompts: list[str], world) -> list[str]:
    return backbone.generate(prompts, **world.generation_kwargs)


@torch.no_grad()
def flipped_tokens(backbone, prompts: list[str], base_answers: list[str]) -> list[int]:
    """Per answer: how many of the base's answer tokens (its end-of-sequence token included) the model no longer
    predicts greedily when fed the base's answer (teacher forcing): the tokens whose greedy choice changed."""
    from alignsuite.backbones.base import ViewInputs

    share, pack = backbone.share_prompt, backbone.pack_rows
    backbone.share_prompt = backbone.pack_rows = False  # the plain layout: one row per answer
    try:
        batch = backbone.prepare([ViewInputs(prompts, base_answers)])
    finally:
        backbone.share_prompt, backbone.pack_rows = share, pack
    model = backbone.policy.eval()
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    t = batch.targets
    changed = (logits[t.row, t.pos].argmax(-1) != t.label).long()
    return torch.zeros(len(prompts), dtype=torch.long).index_add_(0, t.out, changed).tolist()


def train(objective: str, seed: int, steps: int, beta: float | None):
    import lightning
    from alignsuite.backbones import CausalLM
    from alignsuite.module import PreferenceModule
    from alignsuite.objectives import get_objective
    from alignsuite.toy.data import ToyPreferenceData

    lightning.seed_everything(seed, verbose=False)
    hparams = {"beta": beta} if beta is not None else {}
    module = PreferenceModule(
        CausalLM("toy:llm", max_length=32, max_prompt_length=16), get_objective(objective, **hparams),
        optimizer=lambda params: torch.optim.AdamW(params, lr=5e-4, weight_decay=0.0),
        lr_schedule="linear", warmup_ratio=0.1)
    data = ToyPreferenceData(world="llm", num_train=2048, num_val=16, batch_size=16, seed=seed)
    trainer = lightning.Trainer(accelerator="cpu", devices=1, max_steps=steps, logger=False, enable_checkpointing=False,
                                enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(module, datamodule=data)
    return module.backbone


def main() -> None:
    from alignsuite.backbones import CausalLM
    from alignsuite.toy import get_world

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objectives", nargs="+", default=["dpo", "tdpo1", "tdpo2"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=128)
    parser.add_argument("--beta", type=float, default=None, help="every objective's beta (its default when left out)")
    parser.add_argument("--num-prompts", type=int, default=128)
    args = parser.parse_args()

    world = get_world("llm")
    prompts = world.eval_prompts(args.num_prompts, 1234)  # GenerationReward's prompts
    base = CausalLM("toy:llm", max_length=32, max_prompt_length=16)
    base.configure()
    base_answers = answers(base, prompts, world)
    base_rewards = [world.reward(p, a) for p, a in zip(prompts, base_answers)]
    base_reward = statistics.mean(base_rewards)
    print(f"base reward {base_reward:.3f}")
    results = []
    for objective in args.objectives:
        for seed in args.seeds:
            backbone = train(objective, seed, args.steps, args.beta)
            trained = answers(backbone, prompts, world)
            distance = [edits(a.split(), b.split()) for a, b in zip(trained, base_answers)]
            row = {"objective": objective, "seed": seed, "steps": args.steps,
                   "reward": statistics.mean(world.reward(p, a) for p, a in zip(prompts, trained)),
                   "edits_per_answer": statistics.mean(distance),
                   "answers_changed": sum(d > 0 for d in distance) / len(distance),
                   "flipped_per_answer": statistics.mean(flipped_tokens(backbone, prompts, base_answers)),
                   # the base's answers that were right already (reward 1) and changed anyway
                   "right_answers_changed": sum(d > 0 for d, r in zip(distance, base_rewards) if r == 1)
                   / max(sum(r == 1 for r in base_rewards), 1)}
            results.append(row)
            print(json.dumps(row))
    print("\nobjective  reward  token edits per answer  answers changed  greedy choices flipped per answer"
          "  right answers changed  (means over seeds)")
    for objective in args.objectives:
        rows = [r for r in results if r["objective"] == objective]
        print(f"{objective:10s} {statistics.mean(r['reward'] for r in rows):6.3f}"
              f" {statistics.mean(r['edits_per_answer'] for r in rows):23.2f}"
              f" {statistics.mean(r['answers_changed'] for r in rows):16.2f}"
              f" {statistics.mean(r['flipped_per_answer'] for r in rows):34.2f}"
              f" {statistics.mean(r['right_answers_changed'] for r in rows):22.3f}")


if __name__ == "__main__":
    main()
