"""LoRA settings as plain typed fields, so a recipe can write them and jsonargparse can check them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class LoraSpec:
    """A LoRA adapter (Hu et al. 2021) to train instead of the full weights.

    ``target_modules`` is "all-linear" (every linear layer but the output head) or a list of module
    names such as ``[q_proj, k_proj, v_proj, o_proj]``.
    """

    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: str | list[str] = "all-linear"
    modules_to_save: list[str] | None = None

    def to_peft(self, task_type: str):
        from peft import LoraConfig

        return LoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=self.target_modules,
            modules_to_save=self.modules_to_save,
            task_type=task_type,
        )


def merge_and_reinit(policy, seed: int) -> list:
    """mrDPO's round boundary (video-SALMONN 2, ``merge_and_new_lora``): merge every LoRA adapter of ``policy`` (a
    peft model) into its base weights, ``W <- W + scale * B A`` (computed in float32, stored in the base's dtype),
    then start a fresh adapter in place: ``A`` drawn as peft's default (Kaiming uniform, seeded by ``seed``),
    ``B = 0``. The function is unchanged at the boundary, and with the adapter disabled the policy now computes
    as the merged model. Returns the re-initialised parameters (their optimizer state is stale).

    The parameters stay the same objects, so an optimizer keeps holding them. Refused for what a merge cannot
    carry: DoRA, LoRA on embeddings, ``modules_to_save`` (disabling the adapter would restore their originals),
    and sharded (FSDP2) weights, whose merge would need each rank's shards of A, B and W to line up.
    """
    import math

    import torch
    from peft.tuners.lora.layer import LoraLayer

    from alignsuite.sharding import is_sharded

    if is_sharded(policy):
        raise ValueError("LoRA merge-and-reinit is not supported under FSDP2 (model parallel strategy): the merge"
                         " W += B A needs the full weights or matching shards of A, B and W; use DDP")
    if any("modules_to_save" in name for name, _ in policy.named_modules()):
        raise ValueError("LoRA merge-and-reinit with lora.modules_to_save: those modules are trained in full and not"
                         " merged, so the adapter-disabled reference would not be the merged model; leave them out")
    generator = torch.Generator().manual_seed(seed)
    fresh = []
    with torch.no_grad():
        for name, layer in policy.named_modules():
            if not isinstance(layer, LoraLayer):
                continue
            for adapter in layer.active_adapters:
                if adapter in layer.lora_embedding_A or layer.use_dora.get(adapter) or layer.lora_bias.get(adapter):
                    raise ValueError(f"LoRA merge-and-reinit supports plain linear LoRA layers only ({name}: DoRA, a"
                                     " LoRA bias or an embedding)")
                if adapter not in layer.lora_A:
                    continue
                base = layer.get_base_layer().weight
                delta = layer.get_delta_weight(adapter).float()
                base.copy_((base.float() + delta).to(base.dtype))
                a, b = layer.lora_A[adapter].weight, layer.lora_B[adapter].weight
                fresh_a = torch.empty(a.shape, dtype=torch.float32)
                torch.nn.init.kaiming_uniform_(fresh_a, a=math.sqrt(5), generator=generator)
                a.copy_(fresh_a)
                b.zero_()
                fresh += [a, b]
    return fresh


def merged_weights(policy) -> dict:
    """The weights the LoRA ``policy`` (a peft model) computes with, named as in its plain model: each adapted layer's
    base weight plus its active adapters' ``scale * B A`` (in float32), every other weight as it is. What a full
    copy of the policy is, without merging anything into it. Refused for ``modules_to_save`` (their trained copies
    sit beside the originals) and for sharded (FSDP2) weights."""
    from peft.tuners.lora.layer import LoraLayer

    from alignsuite.sharding import is_sharded

    if is_sharded(policy) or any("modules_to_save" in name for name, _ in policy.named_modules()):
        raise ValueError("a full copy of a LoRA policy is built from unsharded weights without lora.modules_to_save")
    deltas = {}
    for name, layer in policy.named_modules():
        if isinstance(layer, LoraLayer):
            for adapter in layer.active_adapters:
                delta = layer.get_delta_weight(adapter).float()
                key = f"{name}.base_layer.weight"
                deltas[key] = deltas[key] + delta if key in deltas else delta
    out = {}
    for name, weight in policy.named_parameters():
        if ".lora_" in name:
            continue
        weight = weight.detach()
        plain = name.removeprefix("base_model.model.").replace(".base_layer.", ".")
        out[plain] = weight.float() + deltas[name] if name in deltas else weight
    return out
