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
