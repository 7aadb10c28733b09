"""The vision-language toy world ("vlm"): what colour is the shape? Tiny LLaVA and Qwen2.5-VL models too.

Images are 32x32 RGB: one circle, square or triangle, red, green, blue or yellow, large or small, somewhere
on a dark background. The question names the shape ("what colour is the circle ?"); the answer is its
colour, which only the image shows. Each shape has a *language prior*, the colour a text-only guess gives:
circles are red, squares green, triangles blue.

The base model is a tiny LLaVA (shipped) trained by next-token prediction on captions of the kind a
weak annotator writes: right for large shapes, but for small ones, which are hard to see, the prior colour
80% of the time whatever the image shows. So it starts half grounded: it reads the colour of large shapes
and says the prior for small ones (reward about 0.6 on evaluation items balanced over shape, colour and
size; a prior-only answerer gets 0.25).

Preference pairs are RLAIF-V rows for the images where the prior is wrong: chosen is the true colour,
rejected the prior's (the hallucination, plausible without the image). They separate DPO from mDPO:

- DPO can lower its loss without looking: "never say red after circle" is consistent with every pair.
  That text-only rule gets small shapes right only when they are *not* the prior colour, and makes
  small (and, pushed far enough, large) prior-coloured shapes wrong, so the reward stalls or falls on
  them and ``image_sensitivity`` does not rise.
- mDPO adds a term preferring the chosen answer under the true image over the same answer under a
  corrupted (cropped) one, which only reading the image satisfies, and an anchor that keeps the chosen
  answer's likelihood from falling: the reward on small shapes of *every* colour rises, and with it
  ``image_sensitivity`` (how often the answer changes when the image is swapped for one of the same shape
  and size in another colour).
"""

from __future__ import annotations

import io
import random

import numpy as np
import torch

from alignsuite.lazy import optional

IMAGE_SIZE = 32
PATCH = 8  # LLaVA's CLIP patch: 16 image tokens
COLOURS = {"red": (220, 40, 40), "green": (40, 190, 50), "blue": (40, 70, 230), "yellow": (225, 215, 40)}
PRIOR = {"circle": "red", "square": "green", "triangle": "blue"}
SHAPES = tuple(PRIOR)
SIZES = {"small": (5, 7), "large": (13, 17)}  # side of the shape's box, in pixels
HALLUCINATION = 0.8  # how often the base model's caption of a small shape gives the prior colour
QUESTION = "what colour is the {} ?"

SPECIAL = ["<pad>", "<unk>", "<bos>", "<eos>"]
WORDS = ["user", "assistant", "system", "user:", "assistant:", "system:", "what", "colour", "is", "the", "?",
         "it", "a", "of", "shape", "image", "this", "in"] + list(SHAPES) + list(COLOURS) + list(SIZES)
LLAVA_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: "
    "{% if m['content'] is string %}{{ m['content'] }} {% else %}{% for part in m['content'] %}"
    "{% if part['type'] == 'image' %}<image> {% elif part['type'] == 'text' %}{{ part['text'] }} {% endif %}"
    "{% endfor %}{% endif %}{% if m['role'] == 'assistant' %}<eos> {% endif %}{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)
QWEN_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                "<|image_pad|>", "<|video_pad|>"]
QWEN_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for part in m['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


# ------------------------------------------------------------------ tiny models of two families
def build_tokenizer(family: str):
    """A word-level tokenizer of the world's words and ``family``'s special tokens (image placeholders as
    added tokens, so that a run of them with no spaces between still splits into single tokens)."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = SPECIAL + (["<image>"] if family == "llava" else QWEN_SPECIAL)
    vocab = {w: i for i, w in enumerate(specials + WORDS)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.add_special_tokens([AddedToken(t, normalized=False) for t in specials])
    if family == "llava":
        return PreTrainedTokenizerFast(
            tokenizer_object=core, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>",
            chat_template=LLAVA_TEMPLATE, extra_special_tokens={"image_token": "<image>"},
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token="<unk>",
        chat_template=QWEN_TEMPLATE,
        extra_special_tokens={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"},
    )


def llava_parts(hidden: int = 64, vision_hidden: int = 32, layers: int = 2, seed: int = 0):
    """A random-init ``LlavaForConditionalGeneration`` (CLIP tower, projector, Llama) and its processor."""
    from transformers import CLIPImageProcessorPil, CLIPVisionConfig, LlamaConfig, LlavaConfig
    from transformers import LlavaForConditionalGeneration, LlavaProcessor

    tok = build_tokenizer("llava")
    vision = CLIPVisionConfig(hidden_size=vision_hidden, intermediate_size=2 * vision_hidden, num_hidden_layers=layers,
                              num_attention_heads=4, image_size=IMAGE_SIZE, patch_size=PATCH, projection_dim=vision_hidden)
    text = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                       num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128,
                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=tok.convert_tokens_to_ids("<image>"),
                         vision_feature_layer=-1, vision_feature_select_strategy="default",
                         image_seq_length=(IMAGE_SIZE // PATCH) ** 2, tie_word_embeddings=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlavaForConditionalGeneration(config)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    images = CLIPImageProcessorPil(size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    processor = LlavaProcessor(image_processor=images, tokenizer=tok, patch_size=PATCH, vision_feature_select_strategy="default",
                               num_additional_image_tokens=1, chat_template=LLAVA_TEMPLATE)
    return model, processor


def qwen2_5_vl_parts(hidden: int = 64, layers: int = 2, seed: int = 0):
    """A random-init ``Qwen2_5_VLForConditionalGeneration`` and its processor; 4-pixel patches merged 2x2,
    so a 32x32 image is 16 image tokens.

    The processor needs torchvision: transformers' Qwen2-VL processors hold a video processor, which
    cannot be built (nor loaded by ``AutoProcessor``) without it."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor
    from transformers import Qwen2VLImageProcessorPil
    with optional("vision", "a Qwen2.5-VL processor (its video processor)"):
        import torchvision  # noqa: F401
    from transformers import Qwen2VLVideoProcessor

    tok = build_tokenizer("qwen2_5_vl")
    ids = tok.convert_tokens_to_ids
    vision = dict(depth=layers, hidden_size=32, intermediate_size=64, num_heads=4, patch_size=4, spatial_merge_size=2,
                  temporal_patch_size=2, window_size=16, out_hidden_size=hidden, fullatt_block_indexes=[layers - 1])
    text = dict(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
                bos_token_id=None, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    config = Qwen2_5_VLConfig(vision_config=vision, text_config=text, image_token_id=ids("<|image_pad|>"),
                              video_token_id=ids("<|video_pad|>"), vision_start_token_id=ids("<|vision_start|>"),
                              vision_end_token_id=ids("<|vision_end|>"), tie_word_embeddings=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(config)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    pixels = IMAGE_SIZE * IMAGE_SIZE
    images = Qwen2VLImageProcessorPil(patch_size=4, merge_size=2, temporal_patch_size=2, min_pixels=pixels, max_pixels=pixels)
    videos = Qwen2VLVideoProcessor(patch_size=4, merge_size=2, temporal_patch_size=2, min_pixels=pixels, max_pixels=pixels)
    processor = Qwen2_5_VLProcessor(image_processor=images, tokenizer=tok, video_processor=videos, chat_template=QWEN_TEMPLATE)
    return model, processor


_FAMILIES = {"llava": llava_parts, "qwen2_5_vl": qwen2_5_vl_parts}


def build_tiny_vlm(family: str, path: str, seed: int = 0) -> str:
    """Save a seeded random-init tiny VLM of ``family`` ("llava" or "qwen2_5_vl") and its processor in
    ``path``; both load back with ``AutoModelForImageTextToText`` / ``AutoProcessor``."""
    try:
        parts = _FAMILIES[family]
    except KeyError:
        raise ValueError(f"unknown VLM family {family!r}; known: {', '.join(_FAMILIES)}") from None
    model, processor = parts(seed=seed)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return str(path)


def generate_answers(model, processor, prompts: list, images: list, max_new_tokens: int = 3) -> list[str]:
    """Greedy completions of chat ``prompts`` (one list of images per prompt) straight from a model and its
    processor: what the world's base-model check uses, with no backbone in between."""
    texts = [processor.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in prompts]
    tok = processor.tokenizer
    side, tok.padding_side = tok.padding_side, "left"  # generation continues from every row's last position
    try:
        enc = processor(text=texts, images=images, return_tensors="pt", padding=True)
    finally:
        tok.padding_side = side
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
    finally:
        model.train(was_training)
    return tok.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)


# ------------------------------------------------------------------ the world
def draw_shape(shape: str, colour: str, size: str, rng: random.Random):
    """A 32x32 RGB PIL image: one ``shape`` in ``colour`` (shade jittered), its box ``size``, anywhere."""
    from PIL import Image

    image = np.full((IMAGE_SIZE, IMAGE_SIZE, 3), rng.randint(5, 45), dtype=np.int32)
    side = rng.randint(*SIZES[size])
    y, x = rng.randint(1, IMAGE_SIZE - side - 1), rng.randint(1, IMAGE_SIZE - side - 1)
    yy, xx = np.mgrid[0:side, 0:side] + 0.5
    half = side / 2
    if shape == "circle":
        mask = (yy - half) ** 2 + (xx - half) ** 2 <= half**2
    elif shape == "square":
        mask = np.ones((side, side), dtype=bool)
    elif shape == "triangle":  # apex up
        mask = np.abs(xx - half) <= yy / 2
    else:
        raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")
    rgb = np.array([c + rng.randint(-15, 15) for c in COLOURS[colour]])
    image[y : y + side, x : x + side][mask] = rgb
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))


def png_bytes(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def first_word(completion: str) -> str:
    words = completion.strip().lower().split()
    return words[0] if words else ""


def prompt_for(shape: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION.format(shape)}]}]


class ShapesWorld:
    """Preference pairs, evaluation items, the reward and the base model of the "vlm" world (see the module
    docstring for the design)."""

    version = "v1"
    modality = "vision_language"
    image_size = IMAGE_SIZE
    generation_kwargs = {"max_new_tokens": 3}

    # ------------------------------------------------------------- data
    def make_pairs(self, n: int, seed: int) -> list[dict]:
        """``n`` RLAIF-V rows, ``image`` (PNG bytes), ``question``, ``chosen`` (the shape's colour) and
        ``rejected`` (the shape's prior colour, which the image contradicts)."""
        rng = random.Random(f"pairs-{seed}")
        rows = []
        for _ in range(n):
            shape, size = rng.choice(SHAPES), rng.choice(list(SIZES))
            colour = rng.choice([c for c in COLOURS if c != PRIOR[shape]])
            rows.append({"image": png_bytes(draw_shape(shape, colour, size, rng)), "question": QUESTION.format(shape),
                         "chosen": colour, "rejected": PRIOR[shape]})
        return rows

    def eval_prompts(self, n: int, seed: int) -> list[dict]:
        """``n`` items balanced over shape, colour and size (up to one of each kind), in an order fixed by
        ``seed``: ``prompt`` (chat messages), ``images``, ``answer``, ``prior`` and ``swap_images``, the image
        of the next item with the same shape and size in another colour (a fresh drawing if there is none)."""
        rng = random.Random(f"eval-{seed}")
        kinds = [(s, c, z) for s in SHAPES for c in COLOURS for z in SIZES]
        order = [kinds[i % len(kinds)] for i in range(n)]
        rng.shuffle(order)
        items = [{"prompt": prompt_for(s), "images": [draw_shape(s, c, z, rng)], "answer": c, "prior": PRIOR[s],
                  "shape": s, "size": z} for s, c, z in order]
        for i, item in enumerate(items):
            others = [items[(i + k) % n] for k in range(1, n)]
            partner = next((o for o in others if (o["shape"], o["size"]) == (item["shape"], item["size"])
                            and o["answer"] != item["answer"]), None)
            if partner is not None:
                item["swap_images"] = partner["images"]
            else:
                colour = list(COLOURS)[(list(COLOURS).index(item["answer"]) + 1) % len(COLOURS)]
                item["swap_images"] = [draw_shape(item["shape"], colour, item["size"], rng)]
        return items

    # ------------------------------------------------------------- scoring
    def reward(self, item: dict, completion: str) -> float:
        """1 when the completion's first word is the colour of the shape in the image, else 0."""
        return float(first_word(completion) == item["answer"])

    def evaluate(self, generate, items: list[dict]) -> dict[str, float]:
        """Generate for every item with its image and with its swapped image; return

        - ``reward``: how often the answer is the colour shown;
        - ``image_sensitivity``: how often the answer changes when the image is swapped for one of the same
          shape and size in another colour (0 for a model that ignores the image);
        - ``hallucination``: how often the answer is the prior colour where the image shows another.
        """
        prompts = [item["prompt"] for item in items]
        real = generate(prompts, images=[item["images"] for item in items])
        swapped = generate(prompts, images=[item["swap_images"] for item in items])
        judged = [self.judge(item, a, b) for item, a, b in zip(items, real, swapped)]
        contradicted = [v["hallucination"] for v in judged if v["hallucination"] is not None]
        return {
            "reward": sum(v["reward"] for v in judged) / len(items),
            "image_sensitivity": sum(v["image_sensitivity"] for v in judged) / len(items),
            "hallucination": sum(contradicted) / max(len(contradicted), 1),
        }

    def judge(self, item: dict, completion: str, swapped: str | None = None) -> dict[str, float | None]:
        """One item's values: ``reward``; ``image_sensitivity``, 1 when the answer to the swapped image
        (``swapped``) differs (``None`` without it); ``hallucination``, 1 when the answer is the prior colour
        where the image shows another (``None`` where the image shows the prior colour)."""
        return {
            "reward": self.reward(item, completion),
            "image_sensitivity": None if swapped is None else float(first_word(completion) != first_word(swapped)),
            "hallucination": float(first_word(completion) == item["prior"]) if item["answer"] != item["prior"] else None,
        }

    # ------------------------------------------------------------- the base model
    def caption(self, shape: str, colour: str, size: str, rng: random.Random) -> str:
        """The base model's training answer: right for large shapes; for small ones the prior colour
        ``HALLUCINATION`` of the time."""
        if size == "small" and rng.random() < HALLUCINATION:
            return PRIOR[shape]
        return colour

    def build_base_model(self, path: str, steps: int = 600, batch_size: int = 64, pool: int = 4096, seed: int = 0) -> None:
        """Train a tiny LLaVA (vision tower included) by next-token prediction on the answer, then save it.

        Images come from a pool of ``pool`` drawings, processed once; shapes are drawn evenly, colours with
        the prior's colour 40% of the time (the rest evenly), sizes evenly."""
        rng = random.Random(f"sft-{seed}")
        model, processor = llava_parts(seed=seed)
        texts, images = [], []
        for _ in range(pool):
            shape, size = rng.choice(SHAPES), rng.choice(list(SIZES))
            others = [c for c in COLOURS if c != PRIOR[shape]]
            colour = PRIOR[shape] if rng.random() < 0.4 else rng.choice(others)
            answer = [{"role": "assistant", "content": [{"type": "text", "text": self.caption(shape, colour, size, rng)}]}]
            texts.append(processor.apply_chat_template(prompt_for(shape) + answer, tokenize=False))
            images.append([draw_shape(shape, colour, size, rng)])
        enc = processor(text=texts, images=images, return_tensors="pt", padding=True)
        start = len(processor(text=[processor.apply_chat_template(prompt_for("circle"), add_generation_prompt=True,
                                                                  tokenize=False)], images=[images[0]])["input_ids"][0])
        labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
        labels[:, :start] = -100  # every prompt has the same length: score the answer and its end only

        torch.manual_seed(seed)
        optim = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
        warmup = torch.optim.lr_scheduler.LambdaLR(optim, lambda step: min(1.0, (step + 1) / 50))
        model.train()
        # One thread: sums then run in one order, so every machine builds the same weights (with two threads
        # the 600 steps drift to another base model, whose figures differ from the README's).
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            for _ in range(steps):
                idx = torch.randint(pool, (batch_size,))
                loss = model(input_ids=enc["input_ids"][idx], attention_mask=enc["attention_mask"][idx],
                             pixel_values=enc["pixel_values"][idx], labels=labels[idx]).loss
                loss.backward()
                optim.step()
                optim.zero_grad()
                warmup.step()
        finally:
            torch.set_num_threads(threads)
        model.save_pretrained(path)
        processor.save_pretrained(path)
