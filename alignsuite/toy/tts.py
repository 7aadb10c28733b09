"""The text-to-speech toy worlds: say the text, in the prompt speaker's voice (see :mod:`alignsuite.toy.speech`).

``tts``: a tiny speech-token LM (a Llama whose vocabulary holds the 32 codec codes at an offset, as
CosyVoice 2 and Ints extend Qwen and Phi), conditioned on the text and a speaker prompt. ``tts_flow``: a
tiny F5-TTS-style flow-matching model over 16-band mel frames, infilling the frames after the prompt's.

Both base models (shipped; trained by the code below) learn mostly on short texts, so that like real
zero-shot TTS they read short sentences well and stumble on hard ones: long texts and runs of a repeated word (``ba ba ba``),
where they skip, double or garble words. The evaluation items and the preference pairs are hard texts.
Pairs are what INTP builds: the base model samples candidates for each text, the world's recogniser
transcribes them, and the lowest-WER one is chosen over the highest (:mod:`alignsuite.speech.pairs`);
the recipes' pairs ship beside the base models, others are built once per size and seed and cached.
``val/wer`` (corpus WER of the evaluation items) falls when alignment works.
"""

from __future__ import annotations

import contextlib
import json
import os
import random

import torch

from alignsuite.toy import speech

TEXT_SPECIAL = ["<pad>", "<unk>", "<bos>", "<eos>"]
SPEECH_START, SPEECH_END = "<speech>", "</speech>"
CODE_TOKENS = [f"<c{i}>" for i in range(speech.CODEBOOK_SIZE)]
VOCAB = TEXT_SPECIAL + list(speech.WORDS) + [SPEECH_START, SPEECH_END] + CODE_TOKENS
OFFSET = VOCAB.index("<c0>")


@contextlib.contextmanager
def one_thread():
    """Sums in one order, so every machine builds the same base model (two threads drift to other weights over
    hundreds of steps, and the README's figures come from one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def draw_words(rng: random.Random, lengths: tuple[int, int], repeat: float) -> list[str]:
    """A text of ``lengths[0]..lengths[1]`` words; with probability ``repeat`` one word is said 2-4 times in a row."""
    n = rng.randint(*lengths)
    words = [rng.choice(speech.WORDS) for _ in range(n)]
    if rng.random() < repeat:
        at = rng.randrange(n)
        words[at:at + 1] = [words[at]] * rng.randint(2, 4)
    return words


class SpeechWorld:
    """What both TTS worlds share: the item distribution, the judges, the cached pairs."""

    modality = "text_to_speech"
    name: str
    version: str
    speech_kind: str  # the data layout's speech kind: tokens or features
    durations: tuple[int, ...]
    noise = 0.0
    train_lengths, train_repeat = (1, 6), 0.15  # the base model's data: mostly short, few repeats
    hard_lengths, hard_repeat = (4, 9), 0.5  # evaluation and pairs: long, often repeated words
    items_per_pair = 2.0  # items sampled per pair still wanted (some give no pair: all samples equally good)

    def item(self, rng: random.Random, hard: bool = True) -> dict:
        """A text with its speaker prompt (one or two words of another text, by speaker 0 or 1)."""
        words = draw_words(rng, self.hard_lengths if hard else self.train_lengths, self.hard_repeat if hard else self.train_repeat)
        speaker = rng.randrange(2)
        prompt_words = [rng.choice(speech.WORDS) for _ in range(rng.randint(1, 2))]
        prompt = self.utterance(prompt_words, speaker, rng)
        item = {"text": " ".join(words), "prompt_text": " ".join(prompt_words), "prompt_speech": prompt, "speaker": speaker}
        if self.speech_kind == "features":  # the flow model is told how long to speak
            item["num_frames"] = self.frames_for(words)
        return item

    def utterance(self, words: list[str], speaker: int, rng: random.Random) -> torch.Tensor:
        codes = speech.speak(words, speaker, rng, self.durations)
        if self.speech_kind == "tokens":
            return torch.tensor(codes)
        generator = torch.Generator().manual_seed(rng.randrange(2**31))
        return speech.codes_to_frames(codes, self.noise, generator)

    def frames_for(self, words: list[str]) -> int:
        """Frames of ``words`` at the fixed durations (the flow world's exact duration)."""
        return len(speech.speak(words, 0, None, self.durations[:1]))

    def eval_prompts(self, n: int, seed: int) -> list[dict]:
        """``n`` hard items, each with its text also as ``prompt`` (what ``evaluate`` and ``iterate`` generate
        from; the judge reads ``text``)."""
        rng = random.Random(f"eval-{seed}")
        return [{"prompt": item["text"], **item} for item in (self.item(rng) for _ in range(n))]

    def recogniser(self) -> speech.ToyRecogniser:
        return speech.ToyRecogniser()

    def similarity(self) -> speech.ToySimilarity:
        return speech.ToySimilarity()

    def vocoder(self) -> speech.ToyVocoder:
        return speech.ToyVocoder()

    # ------------------------------------------------------------- preference pairs from the base model
    def backbone(self, path: str | None = None):
        """The world's backbone over the base model in folder ``path`` (default: the world's own)."""
        raise NotImplementedError

    def make_pairs(self, n: int, seed: int) -> list[dict]:
        """``n`` INTP rows built from the base model's own samples (fewer if too few items disagree).

        The recipe's pairs ship beside the shipped base model (sampling and the recogniser's verdicts move with a
        CPU's float kernels, so the same base could give other pairs elsewhere); any other size or seed is built
        on first use and cached."""
        from filelock import FileLock

        from alignsuite.toy.worlds import cache_root, shipped_path

        name = f"-pairs-{n}-{seed}.jsonl"
        path = shipped_path(self.name, name)
        if not os.path.isfile(path):
            path = os.path.join(cache_root(), "toy", os.path.basename(path))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with FileLock(path + ".lock"):
                if not os.path.isfile(path):
                    self.write_pairs(path, n, seed)
        with open(path, encoding="utf-8") as f:
            return [json.loads(line) for line in f]

    def write_pairs(self, path: str, n: int, seed: int, base: str | None = None, num_samples: int = 6) -> None:
        """Sample, judge and write ``n`` pairs from the base model in folder ``base`` (default: the world's own)."""
        from alignsuite.speech.pairs import build_pairs, write_jsonl

        backbone = self.backbone(base)
        backbone.configure()
        backbone.policy.eval()
        rng = random.Random(f"pairs-{seed}")
        rows: list[dict] = []
        while len(rows) < n:
            items = [self.item(rng) for _ in range(int(max(n - len(rows), 16) * self.items_per_pair))]
            new, _ = build_pairs(backbone, items, self.recogniser(), self.similarity(), num_samples, seed=seed + len(rows),
                                 batch_size=64, generation_kwargs=self.generation_kwargs)
            rows += new
        write_jsonl(path, rows[:n])


class SpeechTokenWorld(SpeechWorld):
    """``toy:tts``: the speech-token LM world."""

    name, version, speech_kind = "tts", "v1", "tokens"
    durations = (1, 2)
    items_per_pair = 1.5
    generation_kwargs = {"max_new_tokens": 56}
    backbone_args = {"speech_token_offset": OFFSET, "codebook_size": speech.CODEBOOK_SIZE,
                     "speech_start_token": SPEECH_START, "speech_end_token": SPEECH_END}

    shipped_pairs = ((1024, 0), (64, 1_000_003))  # the toy recipe's train and validation pairs

    def backbone(self, path: str | None = None):
        from alignsuite.backbones.speech_tokens import SpeechTokenLM
        from alignsuite.toy.worlds import resolve_toy_model

        return SpeechTokenLM(path or resolve_toy_model(self.name), max_length=96, **self.backbone_args)

    def build_tokenizer(self):
        from tokenizers import Tokenizer, models, pre_tokenizers, processors
        from transformers import PreTrainedTokenizerFast

        vocab = {w: i for i, w in enumerate(VOCAB)}
        core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
        core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        core.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", vocab["<bos>"])])
        return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                       unk_token="<unk>")

    def sequence(self, item: dict, codes: torch.Tensor) -> tuple[list[int], int]:
        """``(ids, first scored position)``: bos, prompt text and text, speech start, prompt codes | codes, end."""
        words = (item["prompt_text"] + " " + item["text"]).split()
        prompt = [VOCAB.index("<bos>")] + [VOCAB.index(w) for w in words] + [VOCAB.index(SPEECH_START)]
        prompt += [OFFSET + int(c) for c in item["prompt_speech"]]
        return prompt + [OFFSET + int(c) for c in codes] + [VOCAB.index(SPEECH_END)], len(prompt)

    def build_base_model(self, path: str, steps: int = 700, batch_size: int = 32, seed: int = 0) -> None:
        """Next-token prediction on the speech of mostly short texts (the completion's codes and end only)."""
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.manual_seed(seed)
        tok = self.build_tokenizer()
        config = LlamaConfig(vocab_size=len(VOCAB), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128,
                             tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=VOCAB.index(SPEECH_END),
                             pad_token_id=tok.pad_token_id)
        model = LlamaForCausalLM(config)
        optim = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
        warmup = torch.optim.lr_scheduler.LambdaLR(optim, lambda step: min(1.0, (step + 1) / 50))
        rng = random.Random(f"sft-{seed}")
        model.train()
        with one_thread():
            self._train_lm(model, tok, optim, warmup, rng, steps, batch_size)
        model.save_pretrained(path)
        tok.save_pretrained(path)

    def _train_lm(self, model, tok, optim, warmup, rng, steps: int, batch_size: int) -> None:
        """Next-token steps on batches of short texts' speech."""
        for _ in range(steps):
            rows = []
            for _ in range(batch_size):
                item = self.item(rng, hard=False)
                codes = self.utterance(item["text"].split(), item["speaker"], rng)
                rows.append(self.sequence(item, codes))
            width = max(len(ids) for ids, _ in rows)
            input_ids = torch.full((len(rows), width), tok.pad_token_id)
            labels = torch.full((len(rows), width), -100)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for i, (ids, start) in enumerate(rows):
                input_ids[i, : len(ids)] = torch.tensor(ids)
                labels[i, start : len(ids)] = torch.tensor(ids[start:])
                mask[i, : len(ids)] = 1
            loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            optim.step()
            optim.zero_grad()
            warmup.step()


class SpeechFlowWorld(SpeechWorld):
    """``toy:tts_flow``: the flow-matching world. Units are held two frames each (a fixed duration, so the
    length to generate is known, as F5-TTS takes it from the prompt's speaking rate), frames carry noise."""

    name, version, speech_kind = "tts_flow", "v1", "features"
    durations = (2,)
    noise = 0.1
    generation_kwargs = {"steps": 8}
    backbone_args = {"sample_steps": 8, "vocoder": "alignsuite.toy.speech.ToyVocoder"}
    shipped_pairs = ((512, 0), (64, 1_000_003))  # the toy recipe's train and validation pairs
    model_config = {"n_mels": speech.N_MELS, "dim": 64, "depth": 4, "heads": 4, "ff_mult": 2, "text_dim": 32,
                    "text_conv_layers": 1, "sampling_rate": speech.SAMPLING_RATE, "hop_length": speech.FRAME_SAMPLES,
                    "n_fft": 2 * speech.FRAME_SAMPLES, "win_length": 2 * speech.FRAME_SAMPLES}

    def backbone(self, path: str | None = None):
        from alignsuite.backbones.flow_tts import FlowMatchingTTS
        from alignsuite.toy.worlds import resolve_toy_model

        return FlowMatchingTTS(path or resolve_toy_model(self.name), **self.backbone_args)

    def build_base_model(self, path: str, steps: int = 1200, batch_size: int = 32, seed: int = 0) -> None:
        """Flow matching on the frames after the prompt's (F5's infill loss, through the backbone's own
        scoring: the loss is ``-2 *`` the denoising score), mostly on short texts."""
        from alignsuite.backbones.flow_tts_model import FlowTTSModel

        torch.manual_seed(seed)
        FlowTTSModel(**self.model_config).save_pretrained(path)
        backbone = self.backbone(path)
        backbone.seed = seed
        backbone.configure()
        model = backbone.policy
        optim = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
        schedule = torch.optim.lr_scheduler.LambdaLR(optim, lambda step: min(1.0, (step + 1) / 50))
        rng = random.Random(f"sft-{seed}")
        with one_thread():
            for _ in range(steps):
                self._train_step(backbone, optim, schedule, rng, batch_size)
        model.config._name_or_path = ""  # loaded from the build folder, which is temporary: do not record it
        model.save_pretrained(path)

    def _train_step(self, backbone, optim, schedule, rng: random.Random, batch_size: int) -> None:
        """One step of flow matching on a batch of short texts."""
        from alignsuite.backbones.base import ViewInputs

        items = [self.item(rng, hard=False) for _ in range(batch_size)]
        frames = [self.utterance(it["text"].split(), it["speaker"], rng) for it in items]
        batch = {"prompt_speech": [it["prompt_speech"] for it in items], "prompt_text": [it["prompt_text"] for it in items]}
        prepared = backbone.prepare([ViewInputs([it["text"] for it in items], frames, batch)])
        loss = -2 * backbone.score(prepared).score.mean()
        loss.backward()
        optim.step()
        optim.zero_grad()
        schedule.step()


__all__ = ["SpeechFlowWorld", "SpeechTokenWorld", "SpeechWorld", "draw_words"]
