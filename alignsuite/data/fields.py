"""Column names of the text preference layouts, for datasets that do not use the usual ones.

Their own module, below both readers of a row: `alignsuite.data.preference` (the canonical row) and
`alignsuite.data.llama_factory` (LLaMA-Factory's prompts), which `preference` calls.
"""

from __future__ import annotations

from dataclasses import dataclass


# The batch column that marks a tied pair (1.0: neither answer is preferred; 0.0: the first is), given by a layout
# only when asked (TextPairs/ImagePairs ``tie_column``): objectives that read ties declare it in ``extra_columns``,
# and every other objective is refused such data at setup.
TIE_COLUMN = "tie"


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


__all__ = ["TIE_COLUMN", "PairFields", "UnpairedFields"]
