"""Text scorers: word and character error rates (of text, or of speech through a recogniser), reward models,
and the toy worlds' programmatic rewards, one :class:`alignsuite.judging.Scorer` each.
"""

from __future__ import annotations

from typing import Callable

import torch

from alignsuite.components import default_device, import_object
from alignsuite.judging import Scorer, check_weights, checked_transcripts, error_rates, load_pretrained, prompt_text


class WER(Scorer):
    """Word error rate of a transcript against the reference text (:func:`alignsuite.judging.word_error_rate`), a
    fraction; lower is better. For speech, ``transcribe`` (an ASR: a callable, or the import path of one, taking
    the outputs and returning their transcripts) runs first; without it the outputs are taken as the transcripts.

    The reference is the row's ``reference_column``. A speech model's prompt is the text it speaks, so a row
    without the column is scored against its prompt; a text model's prompt is what it answers, never the answer's
    reference, so for a text model every row must have the column (:meth:`columns`).

    Args:
        transcribe: ``audio outputs -> transcripts``; ``None`` when the outputs are text already.
        reference_column: the prompt set's column holding the reference text.
    """

    name, unit, higher_is_better, modalities = "wer", "fraction", False, ("text_to_speech", "text")
    tokens = "word"  # what an edit changes (error_rates' unit)

    def __init__(self, transcribe: str | Callable | None = None, reference_column: str = "reference",
                 batch_size: int = 16) -> None:
        self.transcribe = import_object(transcribe) if isinstance(transcribe, str) else transcribe
        self.reference_column, self.batch_size = reference_column, batch_size

    def columns(self, modality: str) -> dict[str, str]:
        if modality != "text":
            return {}
        return {self.reference_column: f"the reference text scorer {self.name!r} compares a text model's answers"
                f" with ({type(self).__name__}.reference_column names it)"}

    def score_batch(self, prompts, outputs, conditions, rows):
        transcripts = (checked_transcripts(self.transcribe, self.transcribe(outputs), len(outputs))
                       if self.transcribe is not None else outputs)
        targets = [(row or {}).get(self.reference_column) or prompt_text(p)
                   for p, row in zip(prompts, rows or [None] * len(prompts))]
        return error_rates([str(t) for t in transcripts], [str(r) for r in targets], unit=self.tokens)


class CER(WER):
    """Character error rate, as :class:`WER` with characters for words."""

    name, tokens = "cer", "char"


class RewardModel(Scorer):
    """A sequence-classification reward model (``AutoModelForSequenceClassification``, one logit) on the
    prompt and answer: as a chat (user prompt, assistant answer) through the tokenizer's chat template when
    it has one, else ``prompt + "\\n" + answer``. The unit is the model's own.

    Args:
        model_name_or_path: a reward model folder or hub id (``Skywork/Skywork-Reward-Llama-3.1-8B-v0.2`` ...).
        max_length: longer inputs are truncated.
    """

    name, unit, modalities = "reward_model", "logit", ("text", "vision_language")

    def __init__(self, model_name_or_path: str, max_length: int = 2048, dtype: str = "auto",
                 device: str | None = None, batch_size: int = 8) -> None:
        check_weights(model_name_or_path, "RewardModel", "give a folder written by save_pretrained, or a hub id")
        self.model_name_or_path, self.max_length, self.dtype = model_name_or_path, max_length, dtype
        self.device, self.batch_size = default_device(device), batch_size
        self.model = self.tokenizer = None

    def load(self):
        if self.model is None:
            from transformers import AutoModelForSequenceClassification, AutoTokenizer

            path, how = self.model_name_or_path, "give a folder written by save_pretrained, or a hub id"
            model = load_pretrained(AutoModelForSequenceClassification, path, "RewardModel", how, dtype=self.dtype)
            self.model = model.eval().to(self.device)
            self.tokenizer = load_pretrained(AutoTokenizer, path, "RewardModel tokenizer", how)
            if self.tokenizer.pad_token is None:
                self.tokenizer.pad_token = self.tokenizer.eos_token
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        return self.model, self.tokenizer

    def texts(self, prompts, outputs) -> list[str]:
        _, tok = self.load()
        if tok.chat_template:
            return [tok.apply_chat_template([{"role": "user", "content": prompt_text(p)},
                                             {"role": "assistant", "content": o}], tokenize=False)
                    for p, o in zip(prompts, outputs)]
        return [f"{prompt_text(p)}\n{o}" for p, o in zip(prompts, outputs)]

    @torch.no_grad()
    def score_batch(self, prompts, outputs, conditions, rows):
        model, tok = self.load()
        enc = tok(self.texts(prompts, outputs), return_tensors="pt", padding=True, truncation=True,
                  max_length=self.max_length, add_special_tokens=not tok.chat_template).to(self.device)
        return model(**enc).logits[:, 0].float().tolist()


# ------------------------------------------------------------------------------------------ the toy worlds
class ToyReward(Scorer):
    """A toy world's programmatic reward (``alignsuite.toy.get_world(world).reward``), in [0, 1]: so
    ``evaluate`` runs on every toy recipe with no download. The vision-language world scores against the
    prompt set's row (its ``answer``), which the toy prompts hold, and judges three values
    (``world.judge``): the reward, ``image_sensitivity`` (against its answer to the swapped image, a
    declared rewrite of ``images`` by the row's ``swap_images``) and ``hallucination``. A world judged under
    several dimensions (``llm_case``, ``diffusion_colours``; ``vlm_prior`` against the prompt set's row; ``tts_pace``,
    a speech-token model's utterances of the prompt's text) judges each dimension's reward as ``reward_<dimension>``
    beside the main value (the primary's).

    Args:
        world: ``llm``, ``llm_case``, ``diffusion``, ``diffusion_corner``, ``diffusion_users``, ``diffusion_colours``,
            ``vlm``, ``vlm_prior`` or ``tts_pace``. The
            world with users (``diffusion_users``) scores each row under the user it names, as ``reward_<user>`` too.
    """

    unit = "reward"
    WORLD_MODALITY = {"llm": "text", "llm_case": "text", "diffusion": "text_to_image", "diffusion_corner": "text_to_image",
                      "diffusion_users": "text_to_image", "diffusion_colours": "text_to_image", "vlm": "vision_language",
                      "vlm_prior": "vision_language", "tts_pace": "text_to_speech"}

    def __init__(self, world: str = "llm") -> None:
        from alignsuite.toy import get_world

        self.world_name, self.world = world, get_world(world)
        self.name = f"toy_reward_{world}"
        self.modalities = (self.WORLD_MODALITY[world],)
        self.batch_size = 256
        if world == "vlm":
            self.values = (self.name, "image_sensitivity", "hallucination")
            self.rewrites = {"swapped": {"images": "swap_images"}}
        self.dimensions = tuple(getattr(self.world, "dimensions", ()))
        self.users = tuple(getattr(self.world, "users", ()))
        if self.users:  # each row scored under its own user; per user as reward_<user>
            self.values = (self.name, *(f"reward_{u}" for u in self.users))
        if self.dimensions:  # one reward per dimension beside the main (the primary's), as reward_<dimension>
            self.values = (self.name, *(f"reward_{d}" for d in self.dimensions))

    def columns(self, modality: str) -> dict[str, str]:
        if self.modalities[0] != "vision_language":
            return {}
        return {"answer": f"the toy world's answer to the row's image (use evaluate.prompts toy:{self.world_name})"}

    def items(self, rows) -> list[dict]:
        """The prompt set's rows, which a vision-language world judges each answer against (their ``answer``)."""
        if rows is None or any("answer" not in (r or {}) for r in rows):
            raise ValueError(f"ToyReward({self.world_name}) scores against the toy world's items: use evaluate.prompts"
                             f" toy:{self.world_name}")
        return rows

    def score_batch(self, prompts, outputs, conditions, rows):
        if self.world_name == "vlm":
            judged = [self.world.judge(row, out, row.get("swapped")) for row, out in zip(self.items(rows), outputs)]
            return [{self.name: v.pop("reward"), **v} for v in judged]
        if self.users:
            if rows is None or any((r or {}).get("user") not in self.users for r in rows):
                raise ValueError(f"ToyReward({self.world_name}) scores each row under its user (a 'user' column naming one"
                                 f" of {', '.join(self.users)}): use evaluate.prompts toy:{self.world_name}")
            judged = [self.world.user_reward(r["user"], prompt_text(p), out) for p, out, r in zip(prompts, outputs, rows)]
            return [{self.name: v, f"reward_{r['user']}": v} for v, r in zip(judged, rows)]
        if self.dimensions:  # a vision-language world judges against the row's item, a speech one the text said
            modality = self.modalities[0]
            judged = ([self.world.rewards(r, out) for r, out in zip(self.items(rows), outputs)]
                      if modality == "vision_language" else
                      [self.world.rewards({"text": prompt_text(p)}, out) for p, out in zip(prompts, outputs)]
                      if modality == "text_to_speech" else
                      [self.world.rewards(prompt_text(p), out) for p, out in zip(prompts, outputs)])
            return [{self.name: v[self.dimensions[0]], **{f"reward_{d}": v[d] for d in self.dimensions}} for v in judged]
        return [self.world.reward(prompt_text(p), out) for p, out in zip(prompts, outputs)]


__all__ = ["CER", "WER", "RewardModel", "ToyReward"]
