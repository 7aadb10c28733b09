"""The physics of the speech toy worlds: a synthetic "speech" that is a noisy function of the text, and a
recogniser that inverts it exactly, so that word error rate is computable without a real ASR.

Words are two-letter syllables (``ba ko mi ...``). Each word is pronounced as two units of a 32-code
codec; code 0 is silence, which separates words. A speaker shifts every unit: speaker 0 speaks codes
1..15, speaker 1 the same units at 17..31. So an utterance of ``ba ko`` by speaker 0 might be the codes
``3 3 9 0 12 7 7``: each unit held for one or two frames (the noise), words separated by silence.

- :func:`speak` turns words into codes (durations drawn from a generator; fixed for the flow world).
- :func:`transcribe_codes` inverts it: split at silence, merge repeated codes, look the unit pair up,
  speaker-blind. A skipped, doubled or garbled word shows up as a deletion, insertion or substitution.
- Mel frames: each code is a 16-band spectral envelope (two bands lit, silence dark), plus noise;
  :func:`frames_to_codes` reads frames back by the nearest envelope.
- :class:`ToyVocoder` makes audible audio: one 20 ms frame per code or mel frame, each band a sine.
- :func:`word_error_rate` is torchmetrics' WER over a list of utterances (errors / reference words).
"""

from __future__ import annotations

import math
import random

import torch

from alignsuite import judging
from alignsuite.speech.asr import Recogniser, SpeakerSimilarity

WORDS = ("ba", "ko", "mi", "du", "fe", "lo", "ni", "ra", "su", "te", "vo", "zi")
CODEBOOK_SIZE = 32
SILENCE = 0
SPEAKER_SHIFT = 16  # speaker s speaks unit u as code u + 16 * s
N_MELS = 16
SAMPLING_RATE = 16000
FRAME_SAMPLES = 320  # 20 ms per frame


def _pronunciations() -> dict[str, tuple[int, int]]:
    """Two distinct units (1..15) per word, every pair different: fixed for the world's lifetime."""
    rng = random.Random("toy-speech-pronunciations")
    pairs = [(a, b) for a in range(1, 16) for b in range(1, 16) if a != b]
    rng.shuffle(pairs)
    return dict(zip(WORDS, pairs[: len(WORDS)]))


PRONUNCIATION = _pronunciations()
_WORD_OF = {units: word for word, units in PRONUNCIATION.items()}


def speak(words: list[str], speaker: int, rng: random.Random | None = None, durations: tuple[int, ...] = (1, 2)) -> list[int]:
    """The codes of ``words`` spoken by ``speaker``: each unit held for a duration drawn from ``durations``
    (by ``rng``; the first one without it), one silence between words."""
    codes: list[int] = []
    for i, word in enumerate(words):
        if i:
            codes.append(SILENCE)
        for unit in PRONUNCIATION[word]:
            held = rng.choice(durations) if rng is not None else durations[0]
            codes += [unit + SPEAKER_SHIFT * speaker] * held
    return codes


def spoken_words(codes) -> list[list[tuple[int, int]]]:
    """Each word ``codes`` say (the stretches between silences) as its units, speaker-blind, with the frames each
    is held: ``[(unit, frames), ...]``."""
    words, segment = [], []
    for code in [*map(int, codes), SILENCE]:
        if code == SILENCE:
            if segment:
                words.append(segment)
            segment = []
        elif segment and segment[-1][0] == code % SPEAKER_SHIFT:
            segment[-1] = (segment[-1][0], segment[-1][1] + 1)
        else:
            segment.append((code % SPEAKER_SHIFT, 1))
    return words


def word_of(units: list[tuple[int, int]]) -> str:
    """The word spoken as ``units`` (``spoken_words``' items), ``?`` for a unit sequence that is no word."""
    return _WORD_OF.get(tuple(u for u, _ in units), "?")


def transcribe_codes(codes) -> str:
    """The words ``codes`` say (``?`` for a unit sequence that is no word); the recogniser of the world."""
    return " ".join(word_of(units) for units in spoken_words(codes))


def speaker_share(codes, speaker: int) -> float:
    """The fraction of non-silent codes in ``speaker``'s range: the toy's speaker similarity."""
    voiced = [int(c) for c in codes if int(c) != SILENCE]
    if not voiced:
        return 0.0
    return sum(c // SPEAKER_SHIFT == speaker for c in voiced) / len(voiced)


def _envelopes() -> torch.Tensor:
    """``[CODEBOOK_SIZE, N_MELS]``: two lit bands per code (distinct pairs), silence all dark."""
    rng = random.Random("toy-speech-envelopes")
    bands = [(a, b) for a in range(N_MELS) for b in range(a + 1, N_MELS)]
    rng.shuffle(bands)
    table = torch.zeros(CODEBOOK_SIZE, N_MELS)
    for code in range(1, CODEBOOK_SIZE):
        a, b = bands[code]
        table[code, a] = table[code, b] = 1.0
    return table


ENVELOPES = _envelopes()
# Codes that are ever spoken: silence and units 1..15 of both speakers (16 is no unit).
SPOKEN = torch.tensor([c for c in range(CODEBOOK_SIZE) if c % SPEAKER_SHIFT != 0 or c == SILENCE])


def codes_to_frames(codes, noise: float = 0.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """Mel frames ``[len(codes), N_MELS]``: each code's envelope plus Gaussian noise of std ``noise``."""
    frames = ENVELOPES[torch.as_tensor(list(codes), dtype=torch.long)]
    if noise:
        frames = frames + noise * torch.randn(frames.shape, generator=generator)
    return frames


def frames_to_codes(frames: torch.Tensor) -> list[int]:
    """The nearest spoken code of each frame."""
    frames = torch.as_tensor(frames, dtype=torch.float32).reshape(-1, N_MELS)
    distance = torch.cdist(frames, ENVELOPES[SPOKEN])
    return SPOKEN[distance.argmin(dim=1)].tolist()


def as_codes(speech) -> list[int]:
    """Codes of an utterance given as codes (``[frames]``) or as mel frames (``[frames, N_MELS]``)."""
    if isinstance(speech, list) and all(type(c) is int for c in speech):  # codes as the online loop's files hold them
        return speech
    speech = torch.as_tensor(speech)
    if speech.is_floating_point() and speech.dim() == 2:
        return frames_to_codes(speech)
    return [int(c) for c in speech.reshape(-1).tolist()]


def transcribe(speech) -> str:
    """What an utterance (codes or mel frames) says."""
    return transcribe_codes(as_codes(speech))


def word_error_rate(transcripts: list[str], references: list[str]) -> float:
    """Corpus WER: word edits over all utterances divided by the references' words
    (:func:`alignsuite.judging.word_error_rate`)."""
    return judging.word_error_rate(list(transcripts), list(references))


class ToyRecogniser(Recogniser):
    """The world's ASR: what each utterance says, read from its codes or mel frames (not its audio)."""

    def transcribe(self, utterances: list) -> list[str]:
        return [transcribe(u.speech) for u in utterances]


class ToySimilarity(SpeakerSimilarity):
    """The world's speaker similarity: the share of an utterance's voiced codes in the range of its prompt's
    (majority) speaker; NaN without a prompt."""

    def similarity(self, utterances: list, prompts: list) -> list[float]:
        out = []
        for u, p in zip(utterances, prompts):
            voiced = [c // SPEAKER_SHIFT for c in as_codes(p.speech) if c != SILENCE] if p is not None else []
            out.append(speaker_share(as_codes(u.speech), max(set(voiced), key=voiced.count)) if voiced else float("nan"))
        return out


class ToyVocoder:
    """Audio for the toy's codes or mel frames: each frame 20 ms at 16 kHz, each lit band a sine at
    ``250 * (band + 1)`` Hz with the band's level as amplitude (negative levels are silent)."""

    sampling_rate = SAMPLING_RATE

    def __call__(self, speech: list) -> list[torch.Tensor]:
        t = torch.arange(FRAME_SAMPLES) / SAMPLING_RATE
        tones = torch.stack([torch.sin(2 * math.pi * 250 * (b + 1) * t) for b in range(N_MELS)])  # [bands, samples]
        out = []
        for utterance in speech:
            utterance = torch.as_tensor(utterance)
            frames = utterance.float() if utterance.is_floating_point() else codes_to_frames(utterance.reshape(-1))
            levels = frames.reshape(-1, N_MELS).clamp(min=0)
            wave = (levels @ tones).reshape(-1) / 4  # two lit bands at level 1 peak at 0.5
            out.append(wave.clamp(-1, 1))
        return out


__all__ = ["CODEBOOK_SIZE", "N_MELS", "PRONUNCIATION", "SAMPLING_RATE", "ToyRecogniser", "ToySimilarity", "ToyVocoder", "WORDS",
           "codes_to_frames", "frames_to_codes", "speak", "speaker_share", "transcribe", "transcribe_codes",
           "word_error_rate"]
