"""The squares world with two users who disagree ("diffusion_users"): one wants the square red, the other blue.

The images, captions and base model are the diffusion world's (:mod:`alignsuite.toy.squares`), which draws a red or
a blue square at the captioned place about half the time each. Each preference pair belongs to one of two users,
drawn evenly: user ``red`` prefers the red square, user ``blue`` the blue one, at the same place. A pair carries its
user's embedding (``user_embedding``: ``red`` is ``[1, 0]``, ``blue`` ``[0, 1]``) and name (``user``).

Each user's reward is the diffusion world's ``red * clean`` for their own colour (for ``blue``, read with the red and
blue channels swapped). The two conflict completely: one model that draws the same for both users earns them
rewards that sum to at most about 1 (drawing red half the time gives each about 0.5, the base's figure), and
Diffusion-DPO on both users' pairs without knowing whose pair is whose is pushed both ways at once and stays
there. With the user embedding as a condition (PPD), one model can serve each user their own colour.

The colour is the conflict rather than the place: the base model draws both colours, so each user's wish is within
its reach, and it puts the square where the caption says, so a conflict over the place would fight the caption.
"""

from __future__ import annotations

import random

import numpy as np

from alignsuite.toy.squares import POSITIONS, SquaresWorld, as_array, caption_for, draw_square, encode_png

USERS = {"red": [1.0, 0.0], "blue": [0.0, 1.0]}  # each user's embedding, the rows' ``user_embedding``


class UserSquaresWorld(SquaresWorld):
    """:class:`SquaresWorld` with two users who prefer opposite colours (module docstring)."""

    base_world = "diffusion"  # the squares world's base model, captions and images
    users = tuple(USERS)

    def user_embedding(self, user: str) -> list[float]:
        if user not in USERS:
            raise ValueError(f"unknown user {user!r} of the diffusion_users world; known: {', '.join(USERS)}")
        return list(USERS[user])

    def user_reward(self, user: str, prompt: str, output) -> float:
        """User ``user``'s reward in [0, 1]: the diffusion world's reward for a square of their colour."""
        image = as_array(output)
        if user == "blue":
            image = image[..., ::-1]  # blue read as red: the same reward for the other colour
        elif user != "red":
            raise ValueError(f"unknown user {user!r} of the diffusion_users world; known: {', '.join(USERS)}")
        return SquaresWorld.reward(self, prompt, np.ascontiguousarray(image))

    def rewards(self, prompt: str, output) -> dict[str, float]:
        """Every user's reward for one image."""
        return {user: self.user_reward(user, prompt, output) for user in USERS}

    def eval_prompts(self, n: int, seed: int) -> list[dict]:
        """``n`` rows (``prompt``, ``user``, ``user_embedding``): every position under every user equally often
        (up to one), in an order fixed by ``seed``."""
        rng = random.Random(f"users-eval-{seed}")
        names, users = list(POSITIONS), list(USERS)
        rows = [{"prompt": caption_for(names[i % len(names)]), "user": users[(i // len(names)) % len(users)]}
                for i in range(n)]
        rng.shuffle(rows)
        return [dict(r, user_embedding=self.user_embedding(r["user"])) for r in rows]

    def make_pairs(self, n: int, seed: int) -> list[dict]:
        """``n`` Pick-a-Pic v2 rows as the diffusion world's, each one user's (drawn evenly): ``user``,
        ``user_embedding``, the winner in that user's colour, and ``reward_0``/``reward_1`` under that user."""
        rng = random.Random(f"users-pairs-{seed}")
        rows = []
        for _ in range(n):
            user = rng.choice(list(USERS))
            position = rng.choice(list(POSITIONS))
            caption = caption_for(position)
            red, blue = draw_square(position, "red", rng), draw_square(position, "blue", rng)
            won, lost = (red, blue) if user == "red" else (blue, red)
            first = rng.random() < 0.5
            image_0, image_1 = (won, lost) if first else (lost, won)
            rows.append({
                "caption": caption, "jpg_0": encode_png(image_0), "jpg_1": encode_png(image_1),
                "label_0": 1.0 if first else 0.0, "label_1": 0.0 if first else 1.0,
                "reward_0": self.user_reward(user, caption, image_0), "reward_1": self.user_reward(user, caption, image_1),
                "user": user, "user_embedding": self.user_embedding(user),
            })
        return rows

    def make_lists(self, n: int, seed: int, list_size: int = 4) -> list[dict]:
        raise ValueError("the diffusion_users world makes pairs, each one user's; it makes no lists")

    def reward(self, prompt: str, output) -> float:
        raise ValueError("the diffusion_users world has a reward per user: use user_reward(user, prompt, output),"
                         " or score rows that name their user (evaluate.prompts toy:diffusion_users)")


def user_rewards(backbone, world: UserSquaresWorld, num_prompts: int = 64, seed: int = 1234, batch_size: int = 64,
                 user_embedding: dict | None = None, **generation) -> dict[str, float]:
    """The mean reward of each user over the world's ``num_prompts`` evaluation rows, generating each row with its
    user's embedding (with none when ``user_embedding`` is ``{}``; with ``user_embedding[user]`` instead where
    given), the same prompts and seeds for every model."""
    rows = world.eval_prompts(num_prompts, seed)
    out: dict[str, list[float]] = {u: [] for u in USERS}
    kwargs = dict(world.generation_kwargs, **generation)
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        extra = {"without_user": True}
        if user_embedding != {}:
            extra = {"user_embedding": [(user_embedding or {}).get(r["user"], r["user_embedding"]) for r in chunk]}
        images = backbone.generate([r["prompt"] for r in chunk], seed=seed + start, **extra, **kwargs)
        for r, image in zip(chunk, images):
            out[r["user"]].append(world.user_reward(r["user"], r["prompt"], image))
    return {u: sum(v) / len(v) for u, v in out.items()}
