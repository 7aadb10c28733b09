"""What draws a round's samples: the backbone's own ``generate`` (the default), or a faster engine where one is
installed (vLLM on GPUs). An engine is never a dependency: it is imported when a recipe names it.

An engine's :meth:`GenerationEngine.start` gets the round's policy (a built backbone holding the round's weights)
and returns a function with the backbone's ``generate`` signature, ``generate(prompts, seed=..., **kwargs)``, one
output per prompt; :meth:`GenerationEngine.stop` releases what it holds before the round's fit."""

from __future__ import annotations

import copy
import gc
import importlib.util
import os
from typing import Callable

from alignsuite.iterate.errors import IterateError


class GenerationEngine:
    """The backbone's own ``generate``: every modality, the seeds of :func:`alignsuite.generation.chunk_seed`."""

    modalities: tuple[str, ...] = ()  # the backbones' modalities the engine draws for; empty: all of them

    def start(self, backbone, folder: str) -> Callable:
        """A ``generate`` function for ``backbone``'s current weights (``folder``: the round's, for any file the
        engine needs to write)."""
        return backbone.generate

    def stop(self) -> None:
        """Release what :meth:`start` took (memory on the device) before the round's fit."""

    def check(self, modality: str) -> None:
        if self.modalities and modality not in self.modalities:
            raise IterateError(f"iterate.engine: {type(self).__name__} draws for {', '.join(self.modalities)}"
                               f" backbones, not {modality}; leave iterate.engine unset for the backbone's generate")


class VLLMEngine(GenerationEngine):
    """vLLM's offline ``LLM`` for a causal language model's samples (``pip install vllm``; GPUs).

    Each round, the policy's weights (LoRA merged in) and tokenizer are saved as a Hugging Face folder under the
    round's ``engine/`` and loaded by vLLM; chat prompts are rendered with the backbone's chat template, as its
    own ``generate`` renders them. ``temperature``, ``top_p``, ``top_k`` and ``max_new_tokens`` of
    ``iterate.generation_kwargs`` map onto vLLM's ``SamplingParams`` (``do_sample: false``: temperature 0); each
    prompt gets its own seed, ``seed + i`` within a chunk seeded ``seed``. vLLM's samples are not the backbone's
    for the same seed: compare runs with one engine.

    Args:
        gpu_memory_utilization: the share of the GPU's memory vLLM may take (the policy's fit waits until it is freed).
        dtype: vLLM's ``dtype``.
        tensor_parallel_size: GPUs per engine.
        llm_kwargs: anything else for ``vllm.LLM``.
    """

    modalities = ("text",)
    KWARGS = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "max_new_tokens": "max_tokens"}

    def __init__(self, gpu_memory_utilization: float = 0.5, dtype: str = "auto", tensor_parallel_size: int = 1,
                 llm_kwargs: dict | None = None) -> None:
        self.options = {"gpu_memory_utilization": gpu_memory_utilization, "dtype": dtype,
                        "tensor_parallel_size": tensor_parallel_size, **dict(llm_kwargs or {})}
        self.llm = None

    def check(self, modality: str) -> None:
        super().check(modality)
        if importlib.util.find_spec("vllm") is None:
            raise IterateError("iterate.engine VLLMEngine: vllm is not installed (pip install vllm, on a machine"
                               " with a GPU); leave iterate.engine unset to generate with the backbone")

    def start(self, backbone, folder: str) -> Callable:
        import vllm

        from alignsuite.backbones.tokenize import render_prompt

        self.vllm = vllm
        weights = os.path.join(folder, "engine")
        policy = backbone.policy
        if hasattr(policy, "merge_and_unload"):  # a LoRA policy: the adapter merged into a copy of the base
            policy = copy.deepcopy(policy).merge_and_unload()
        policy.save_pretrained(weights)
        backbone.tokenizer.save_pretrained(weights)
        self.llm = self.vllm.LLM(model=weights, **self.options)
        tokenizer = backbone.tokenizer

        def generate(prompts: list, seed: int | None = None, do_sample: bool | None = None, **kwargs) -> list[str]:
            unknown = sorted(set(kwargs) - set(self.KWARGS))
            if unknown:
                raise IterateError(f"iterate.generation_kwargs: VLLMEngine maps {', '.join(self.KWARGS)} and do_sample;"
                                   f" it does not take {', '.join(unknown)}")
            options = {self.KWARGS[k]: v for k, v in kwargs.items()}
            options.setdefault("max_tokens", 64)
            if do_sample is False or (do_sample is None and seed is None):  # greedy, as the backbone's default
                options["temperature"] = 0.0
            texts = [render_prompt(tokenizer, p) if isinstance(p, list) else p for p in prompts]
            params = [self.vllm.SamplingParams(n=1, seed=None if seed is None else seed + i, **options)
                      for i in range(len(texts))]
            return [out.outputs[0].text for out in self.llm.generate(texts, params, use_tqdm=False)]

        return generate

    def stop(self) -> None:
        if self.llm is None:
            return
        self.llm = None
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:  # pragma: no cover - torch is always there
            pass


__all__ = ["GenerationEngine", "VLLMEngine"]
