"""The language toy world: echo the letters of the prompt, in capitals.

Prompts look like ``echo c a f``. The base model (shipped; its training here, in seconds) learns on a mix of
answers in capitals (``C A F``) and in lower case (``c a f``), so it starts out producing both kinds,
about half each. Preference pairs prefer the capital answer over a lower-case one or a capital one with
a wrong letter. The reward scores a generation by how many positions hold the right capital letter,
divided by the longer of the two lengths, so it is 1 only for the exact capital echo and about 0.5 for
the base model. Alignment that works moves it towards 1; an objective wired the wrong way round moves
it towards 0.
"""

from __future__ import annotations

import random

import torch

LETTERS = "abcdefghij"
SPECIAL = ["<pad>", "<unk>", "<bos>", "<eos>"]
WORDS = ["echo", "user:", "assistant:"] + list(LETTERS) + list(LETTERS.upper())
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }} {% if m['role'] == 'assistant' %}<eos> {% endif %}{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)


class EchoWorld:
    version = "v2"
    generation_kwargs = {"max_new_tokens": 8}

    def __init__(self, min_letters: int = 3, max_letters: int = 5) -> None:
        self.min_letters, self.max_letters = min_letters, max_letters

    # ------------------------------------------------------------- data
    def _letters(self, rng: random.Random) -> list[str]:
        return [rng.choice(LETTERS) for _ in range(rng.randint(self.min_letters, self.max_letters))]

    def eval_prompts(self, n: int, seed: int) -> list[str]:
        rng = random.Random(f"eval-{seed}")
        return ["echo " + " ".join(self._letters(rng)) for _ in range(n)]

    def make_pairs(self, n: int, seed: int, ties: float = 0.0) -> list[dict]:
        """``n`` rows of prompt/chosen/rejected text, as a preference dataset would hold them.

        With ``ties`` > 0, that fraction of the rows (drawn at random) are tied pairs: two capital answers, each
        with one wrong letter at a different place, so that they score alike; every row then has a ``tie`` flag,
        as TODO's tied UltraFeedback does.
        """
        rng = random.Random(f"pairs-{seed}")
        rows = []
        for _ in range(n):
            letters = self._letters(rng)
            if ties > 0 and rng.random() < ties:
                i, j = rng.sample(range(len(letters)), 2)
                first, second = self._wrong_letter(letters, i, rng), self._wrong_letter(letters, j, rng)
                rows.append({"prompt": "echo " + " ".join(letters), "chosen": first, "rejected": second, "tie": True})
                continue
            chosen = " ".join(x.upper() for x in letters)
            if rng.random() < 0.7:
                rejected = " ".join(letters)
            else:  # the right case with a wrong letter: the preference is about content, not case alone
                rejected = self._wrong_letter(letters, rng.randrange(len(letters)), rng)
            row = {"prompt": "echo " + " ".join(letters), "chosen": chosen, "rejected": rejected}
            rows.append({**row, "tie": False} if ties > 0 else row)
        return rows

    def make_lists(self, n: int, seed: int, list_size: int = 4) -> list[dict]:
        """``n`` rows of prompt/responses/scores: ``list_size`` different answers per prompt, each graded by
        `reward`: the capital echo, the lower-case echo, and capital echoes with 1, 2 ... letters wrong (the
        pairs' answers, graded, and more of them), in a random order."""
        rng = random.Random(f"lists-{seed}")
        rows = []
        for _ in range(n):
            letters = self._letters(rng)
            answers = [" ".join(x.upper() for x in letters), " ".join(letters)]
            wrong = 1
            while len(answers) < list_size:
                answer = " ".join(self._wrong(letters, min(wrong, len(letters)), rng))
                if answer not in answers:
                    answers.append(answer)
                    wrong += 1
            rng.shuffle(answers)
            prompt = "echo " + " ".join(letters)
            rows.append({"prompt": prompt, "responses": answers, "scores": [self.reward(prompt, a) for a in answers]})
        return rows

    def make_trees(self, n: int, seed: int, list_size: int = 4, step: int = 2) -> list[dict]:
        """``n`` rows of a preference tree's paths: prompt/responses/scores/step_starts. An answer is written in
        steps of ``step`` letters; the tree's best path is the capital echo, and every other path branches from it
        at a random step, keeping the steps before and spoiling that step and the rest (lower case, or a wrong
        letter in each), so paths share prefixes as a tree of thoughts' leaves do. ``step_starts`` are the answer
        tokens where each step begins (one token per letter in this world's tokenizer)."""
        rng = random.Random(f"trees-{seed}")
        rows = []
        for _ in range(n):
            letters = self._letters(rng)
            best = [x.upper() for x in letters]
            starts = list(range(0, len(letters), step))
            paths = [best]
            while len(paths) < list_size:
                branch = starts[rng.randrange(len(starts))]
                lower = rng.random() < 0.5
                path = best[:branch] + [x if lower else rng.choice([y for y in LETTERS if y != x]).upper()
                                        for x in letters[branch:]]
                if path not in paths:
                    paths.append(path)
            rng.shuffle(paths)
            prompt = "echo " + " ".join(letters)
            answers = [" ".join(p) for p in paths]
            rows.append({"prompt": prompt, "responses": answers, "scores": [self.reward(prompt, a) for a in answers],
                         "step_starts": [list(starts) for _ in paths]})
        return rows

    @staticmethod
    def _wrong(letters: list[str], k: int, rng: random.Random) -> list[str]:
        """The capital echo with ``k`` letters replaced by other capitals."""
        out = [x.upper() for x in letters]
        for i in rng.sample(range(len(out)), k):
            out[i] = rng.choice([x for x in LETTERS if x != letters[i]]).upper()
        return out

    @staticmethod
    def _wrong_letter(letters: list[str], i: int, rng: random.Random) -> str:
        wrong = list(letters)
        wrong[i] = rng.choice([x for x in LETTERS if x != wrong[i]])
        return " ".join(x.upper() for x in wrong)

    def reward(self, prompt: str, completion: str) -> float:
        target = [x.upper() for x in prompt.split()[1:]]
        got = completion.split()
        hits = sum(a == b for a, b in zip(got, target))
        return hits / max(len(got), len(target), 1)

    # ------------------------------------------------------------- the base model
    def build_tokenizer(self):
        from tokenizers import Tokenizer, models, pre_tokenizers, processors
        from transformers import PreTrainedTokenizerFast

        vocab = {w: i for i, w in enumerate(SPECIAL + WORDS)}
        core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
        core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        core.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", vocab["<bos>"])])
        return PreTrainedTokenizerFast(
            tokenizer_object=core, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>",
            chat_template=CHAT_TEMPLATE,
        )

    def build_config(self, tokenizer):
        from transformers import LlamaConfig

        return LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64, tie_word_embeddings=True,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        )

    def build_base_model(self, path: str, steps: int = 800, batch_size: int = 64, seed: int = 0) -> None:
        """Train the base model by plain next-token prediction on both kinds of answer, then save it."""
        from transformers import LlamaForCausalLM

        torch.manual_seed(seed)
        tok = self.build_tokenizer()
        model = LlamaForCausalLM(self.build_config(tok))
        optim = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
        warmup = torch.optim.lr_scheduler.LambdaLR(optim, lambda step: min(1.0, (step + 1) / 100))
        rng = random.Random(f"sft-{seed}")
        model.train()
        for _ in range(steps):
            texts = []
            for _ in range(batch_size):
                letters = self._letters(rng)
                answer = [x.upper() for x in letters] if rng.random() < 0.5 else letters
                texts.append("echo " + " ".join(letters) + " " + " ".join(answer) + " <eos>")
            enc = tok(texts, return_tensors="pt", padding=True)
            labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
            loss = model(**enc, labels=labels).loss
            loss.backward()
            optim.step()
            optim.zero_grad()
            warmup.step()
        model.save_pretrained(path)
        tok.save_pretrained(path)
