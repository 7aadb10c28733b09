"""Column names of the text preference layouts, for datasets that do not use the usual ones.

Their own module, below both readers of a row: `alignsuite.data.preference` (the canonical row) and
`alignsuite.data.llama_factory` (LLaMA-Factory's prompts), which `preference` calls.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PairFields:
    """Column names of a pair dataset, for datasets that do not use the usual ones."""

    prompt: str = "prompt"
    chosen: str = "chosen"
    rejected: str = "rejected"
    instruction: str = "instruction"
    input: str = "input"
    conversations: str = "conversations"
    system: str = "system"
    history: str = "history"
    tools: str = "tools"


@dataclass(frozen=True)
class UnpairedFields:
    """Column names of an unpaired (KTO) dataset."""

    prompt: str = "prompt"
    completion: str = "completion"
    label: str = "label"
    tools: str = "tools"


__all__ = ["PairFields", "UnpairedFields"]
