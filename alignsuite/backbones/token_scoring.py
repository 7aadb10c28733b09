"""Which tokens a causal LM scores, and how the stacked rows are laid out for it.

Two layouts of the same sequences (``(prompt ids, completion ids)`` each, view-major):

- plain: one row per sequence, ``prompt + completion``, right-padded, causal attention;
- packed (:class:`Packing`, :func:`pack_rows`): sequences form groups, one per distinct prompt (``share``), laid out as
  ``prompt + completion_1 + completion_2 + ...``: each completion attends to its prompt and to itself only,
  and its positions continue from the prompt's end. A DPO pair's chosen and rejected rows share their prompt,
  so its tokens go through the model once, not twice. Groups are then packed several to a row (``pack``),
  first-fit decreasing into rows as wide as the widest group, each group attending within itself only, so
  rows carry less padding. Every completion token sees exactly the context and positions it has in the plain
  layout, so log-probs are equal up to float rounding.

Either way the scored tokens are listed once (:class:`Targets`): for each, the batch row, the position whose
output predicts it (the token before it, or the prompt's last token for a completion's first token), the
token, and the sequence it counts for. :func:`head_at` then applies the LM head at those positions only
(never at padding, prompt or other sequences' positions), and with ``chunk`` as a fused head + log-softmax
that keeps no vocabulary-sized tensor for backward (:class:`ChunkedTokenLogProbs`).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Row = tuple[list[int], list[int]]  # (prompt ids, completion ids)


@dataclass
class Targets:
    """The scored tokens of a batch, flattened: ``M`` entries."""

    row: Tensor  # [M] batch row holding the token
    pos: Tensor  # [M] position whose output predicts it
    label: Tensor  # [M] the token
    out: Tensor  # [M] the sequence (view-major) whose score it adds to
    prompt: Tensor  # [M] bool: a prompt token (a view's score_prompt), else a completion token
    n_out: int  # number of sequences

    def to(self, device) -> "Targets":
        return Targets(self.row.to(device), self.pos.to(device), self.label.to(device), self.out.to(device),
                       self.prompt.to(device), self.n_out)

    @classmethod
    def from_masks(cls, input_ids: Tensor, completion_mask: Tensor, prompt_mask: Tensor | None = None) -> "Targets":
        """The plain layout's targets: each masked token at ``t >= 1``, predicted from ``t - 1``."""
        parts = [(completion_mask, False)] + ([(prompt_mask, True)] if prompt_mask is not None else [])
        fields: list[list[Tensor]] = [[], [], [], []]
        for mask, is_prompt in parts:
            mask = mask.clone()
            mask[:, 0] = 0  # nothing predicts a row's first token
            row, pos = mask.nonzero(as_tuple=True)
            for store, value in zip(fields, (row, pos - 1, input_ids[row, pos], torch.full_like(row, is_prompt, dtype=torch.bool))):
                store.append(value)
        row, pos, label, prompt = (torch.cat(f) for f in fields)
        return cls(row, pos, label, row.clone(), prompt, input_ids.shape[0])

    def sum(self, token_logps: Tensor, prompt: bool = False) -> tuple[Tensor, Tensor]:
        """Per sequence: the summed log-probs of its completion (or prompt) tokens, and their count. Summed over
        :meth:`matrix`'s rows, so that per-token scores summed the same way give these numbers exactly (and in a
        fixed order on every device, where an ``index_add_`` on a GPU adds in any order)."""
        values, mask = self.matrix(token_logps, prompt)
        return values.sum(dim=1), mask.sum(dim=1).to(values.dtype)

    def matrix(self, token_values: Tensor, prompt: bool = False) -> tuple[Tensor, Tensor]:
        """``[N, T]``: each sequence's completion (or prompt) tokens' values in order, 0 after its last token,
        and the ``[N, T]`` boolean mask of its tokens (``T`` the longest sequence's count, at least 1)."""
        keep = self.prompt if prompt else ~self.prompt
        values, out = token_values[keep], self.out[keep]
        counts = torch.bincount(out, minlength=self.n_out)
        # Each token's place in its sequence: tokens of one sequence are listed in order (see pack_rows, from_masks).
        order = torch.argsort(out, stable=True)
        starts = counts.cumsum(0) - counts
        place = torch.empty_like(out)
        place[order] = torch.arange(out.numel(), device=out.device) - starts[out[order]]
        width = max(int(counts.max()) if counts.numel() else 0, 1)
        matrix = torch.zeros(self.n_out, width, *values.shape[1:], dtype=values.dtype, device=values.device)
        matrix = matrix.index_put((out, place), values)
        mask = torch.arange(width, device=out.device)[None, :] < counts[:, None]
        return matrix, mask


SEGMENT_STRIDE = 1 << 20  # segment id = group * SEGMENT_STRIDE + j: j = 0 the group's prompt, j >= 1 its completions


@dataclass
class PackedLayout:
    """Sequences packed in groups (a prompt and its completions), several groups to a row: what a forward
    needs besides the attention mask (:func:`packed_attention_mask` builds it from ``segments``)."""

    input_ids: Tensor  # [R, L]
    segments: Tensor  # [R, L]: the segment of each token (SEGMENT_STRIDE), -1 on padding
    position_ids: Tensor  # [R, L]: from 0 at each group's prompt; each completion continues its prompt's
    completion_mask: Tensor  # [R, L]: 1 on completion tokens
    prompt_mask: Tensor | None  # [R, L]: 1 on the prompt tokens scored for some sequence; None if none asks
    targets: Targets


def groups_of(rows: list[Row], share: bool) -> list[list[int]]:
    """The sequences of each group: those with the same prompt when ``share`` (never an empty prompt), else one
    each; in order of first appearance."""
    groups: dict[tuple, list[int]] = {}
    for i, (p, _) in enumerate(rows):
        groups.setdefault(tuple(p) if share and p else ("alone", i), []).append(i)
    return list(groups.values())


def pack_groups(widths: list[int], pack: bool) -> list[list[int]]:
    """Groups per row: with ``pack``, first-fit decreasing into rows as wide as the widest group (so no row
    grows wider than that group alone); else one group per row."""
    if not pack:
        return [[g] for g in range(len(widths))]
    capacity = max(widths)
    rows: list[list[int]] = []
    room: list[int] = []
    for g in sorted(range(len(widths)), key=lambda g: -widths[g]):
        r = next((r for r in range(len(rows)) if room[r] >= widths[g]), None)
        if r is None:
            rows.append([])
            room.append(capacity)
            r = len(rows) - 1
        rows[r].append(g)
        room[r] -= widths[g]
    return rows


@dataclass
class Packing:
    """Where :func:`pack_rows` puts each sequence: its groups, the groups of each row, and the rows' width."""

    groups: list[list[int]]
    rows: list[list[int]]
    width: int

    @classmethod
    def plan(cls, rows: list[Row], share: bool = True, pack: bool = True) -> "Packing":
        groups = groups_of(rows, share)
        widths = [len(rows[m[0]][0]) + sum(len(rows[i][1]) for i in m) for m in groups]
        layout = pack_groups(widths, pack)
        return cls(groups, layout, max(sum(widths[g] for g in row) for row in layout))

    @property
    def size(self) -> int:
        """Positions of the packed batch, padding included."""
        return len(self.rows) * self.width


def pack_rows(rows: list[Row], score_prompt: list[bool], pad_id: int, packing: Packing) -> PackedLayout:
    """Lay ``rows`` out as ``packing`` plans (:meth:`Packing.plan`: in groups, one per distinct prompt with
    ``share``, several to a row with ``pack``); see the module docstring."""
    groups, layout = packing.groups, packing.rows
    t_row, t_pos, t_label, t_out, t_prompt = [], [], [], [], []

    def add(row: int, pos: list[int], labels: list[int], out: int, is_prompt: bool) -> None:
        t_row.extend([row] * len(pos))
        t_pos.extend(pos)
        t_label.extend(labels)
        t_out.extend([out] * len(pos))
        t_prompt.extend([is_prompt] * len(pos))

    # Per row, as lists: token, segment, position, scored-prompt flag; tensors at the end.
    lines: list[tuple[list[int], list[int], list[int], list[int]]] = []
    for r, row_groups in enumerate(layout):
        ids, segs, positions, scored_prompt = [], [], [], []
        for g in row_groups:
            members = groups[g]
            p = rows[members[0]][0]
            n_p, first_p = len(p), len(ids)
            seg = g * SEGMENT_STRIDE
            ids += p
            segs += [seg] * n_p
            positions += range(n_p)
            scored_prompt += [0] * n_p
            for j, i in enumerate(members, start=1):
                c = rows[i][1]
                start = len(ids)
                ids += c
                segs += [seg + j] * len(c)
                positions += range(n_p, n_p + len(c))
                scored_prompt += [0] * len(c)
                # The first token is predicted by the prompt's last, every later one by the token before it.
                pos = [first_p + n_p - 1] + list(range(start, start + len(c) - 1))
                skip = 0 if n_p > 0 else 1  # with no prompt, nothing predicts the first token
                add(r, pos[skip:], c[skip:], i, False)
                if score_prompt[i] and n_p > 1:
                    add(r, list(range(first_p, first_p + n_p - 1)), p[1:], i, True)
                    scored_prompt[first_p + 1 : first_p + n_p] = [1] * (n_p - 1)
        lines.append((ids, segs, positions, scored_prompt))
    width = packing.width

    def tensor(k: int, fill: int) -> Tensor:
        return torch.tensor([line[k] + [fill] * (width - len(line[k])) for line in lines], dtype=torch.long)

    input_ids, segments, position_ids = tensor(0, pad_id), tensor(1, -1), tensor(2, 0)
    completion_mask = ((segments >= 0) & (segments % SEGMENT_STRIDE != 0)).long()  # a completion's segment: j >= 1
    prompt_mask = tensor(3, 0) if any(score_prompt) else None
    targets = Targets(torch.tensor(t_row), torch.tensor(t_pos), torch.tensor(t_label), torch.tensor(t_out),
                      torch.tensor(t_prompt, dtype=torch.bool), len(rows))
    return PackedLayout(input_ids, segments, position_ids, completion_mask, prompt_mask, targets)


def packed_attention_mask(segments: Tensor, attn_implementation: str | None, dtype: torch.dtype):
    """The ``[R, 1, L, L]`` mask of the packed layout in the form the attention implementation takes: boolean
    (True attends) for SDPA, additive float for eager, a ``BlockMask`` for flex attention (whose kernels then
    skip the blocks it hides: across packed groups, between a prompt's completions, the padding). A query
    attends to the earlier positions of its own segment and of its group's prompt; padding attends to itself
    only, so that no row is all masked (which gives NaN)."""
    if attn_implementation == "flex_attention":
        from torch.nn.attention.flex_attention import create_block_mask

        rows, length = segments.shape
        return create_block_mask(packed_mask_mod(segments), rows, None, length, length, device=segments.device)
    q = segments.unsqueeze(-1)
    k = segments.unsqueeze(-2)
    length = segments.shape[-1]
    causal = torch.ones(length, length, dtype=torch.bool, device=segments.device).tril()
    allowed = causal & (k >= 0) & ((k == q) | (k == q - q % SEGMENT_STRIDE))
    allowed |= torch.eye(length, dtype=torch.bool, device=segments.device)
    allowed = allowed.unsqueeze(1)
    if attn_implementation == "eager":
        return torch.zeros(allowed.shape, dtype=dtype, device=segments.device).masked_fill_(~allowed, torch.finfo(dtype).min)
    return allowed


def packed_mask_mod(segments: Tensor):
    """The packed layout's mask as a flex-attention ``mask_mod`` (row, head, query, key -> attends): the rule
    of :func:`packed_attention_mask`, one query-key pair at a time."""

    def mask_mod(row, head, q, k):
        sq, sk = segments[row, q], segments[row, k]
        return ((k <= q) & (sk >= 0) & ((sk == sq) | (sk == sq - sq % SEGMENT_STRIDE))) | (q == k)

    return mask_mod


MASKED_ATTENTION = ("sdpa", "eager", "flex_attention")  # implementations that take the packed layout's mask


class ChunkedTokenLogProbs(torch.autograd.Function):
    """``log_softmax(h @ W.T + b)[label]`` for ``M`` positions, ``chunk`` at a time.

    Forward keeps only the per-position log-normaliser; backward recomputes each chunk's logits and turns
    them into the gradients of ``h``, ``W`` and ``b`` at once. Peak memory is one ``chunk x V`` block, never
    ``M x V``; the price is the head's matmul once more in backward. Under autocast the head computes in the
    autocast dtype, as ``nn.Linear`` would; the softmax and the log-probs are float32 (float64 for float64).
    """

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, bias: Tensor | None, labels: Tensor, chunk: int) -> Tensor:
        device = hidden.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weight.dtype
        exact = torch.promote_types(dtype, torch.float32)  # the softmax's dtype: float32, or float64 for float64
        out = torch.empty(hidden.shape[0], dtype=exact, device=hidden.device)
        lse = torch.empty_like(out)
        with torch.autocast(device, enabled=False):
            w = weight.to(dtype)
            b = bias.to(dtype) if bias is not None else None
            for s in range(0, hidden.shape[0], chunk):
                z = nn.functional.linear(hidden[s : s + chunk].to(dtype), w, b).to(exact)
                lse[s : s + chunk] = torch.logsumexp(z, dim=-1)
                out[s : s + chunk] = z.gather(-1, labels[s : s + chunk, None]).squeeze(-1) - lse[s : s + chunk]
        ctx.save_for_backward(hidden, weight, bias, labels, lse)
        ctx.chunk, ctx.dtype = chunk, dtype
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        hidden, weight, bias, labels, lse = ctx.saved_tensors
        dtype, chunk = ctx.dtype, ctx.chunk
        device = hidden.device.type
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        exact = lse.dtype
        grad_weight = torch.zeros(weight.shape, dtype=exact, device=weight.device) if ctx.needs_input_grad[1] else None
        grad_bias = torch.zeros(bias.shape, dtype=exact, device=bias.device) if bias is not None and ctx.needs_input_grad[2] else None
        with torch.autocast(device, enabled=False):
            w = weight.to(dtype)
            b = bias.to(dtype) if bias is not None else None
            for s in range(0, hidden.shape[0], chunk):
                h = hidden[s : s + chunk].to(dtype)
                g = grad[s : s + chunk].to(exact)
                # d/dz [z_label - logsumexp(z)] = onehot(label) - softmax(z), times the incoming gradient.
                dz = torch.exp(nn.functional.linear(h, w, b).to(exact) - lse[s : s + chunk, None]).mul_(-g[:, None])
                dz.scatter_add_(-1, labels[s : s + chunk, None], g[:, None])
                dz = dz.to(dtype)
                if grad_hidden is not None:
                    grad_hidden[s : s + chunk] = (dz @ w).to(hidden.dtype)
                if grad_weight is not None:
                    grad_weight += (dz.t() @ h).to(exact)
                if grad_bias is not None:
                    grad_bias += dz.to(exact).sum(0)
        if grad_weight is not None:
            grad_weight = grad_weight.to(weight.dtype)
        if grad_bias is not None:
            grad_bias = grad_bias.to(bias.dtype)
        return grad_hidden, grad_weight, grad_bias, None, None


@contextlib.contextmanager
def head_at(model: nn.Module, targets: Targets, offset: int = 0, chunk: int | None = None, compute=None):
    """Within the context, the model's LM head computes only at ``targets`` (positions shifted by ``offset``,
    for a model that hands the head its last positions only): its "logits" are ``[M, V]``, or with ``chunk``
    the ``[M]`` token log-probs themselves. The head's own forward runs (adapters on it included) unless
    chunked, which needs a plain ``nn.Linear``; ``compute(hidden [M, H], head)``, where given, replaces it (the
    per-token statistics of :mod:`.token_kl`). Yields a dict whose ``"out"`` is what the head returned and
    ``"input"`` the hidden states it was applied to."""
    head = model.get_output_embeddings()
    if head is None:
        raise ValueError(f"{type(model).__name__} has no output embeddings (LM head) to score tokens with")
    if (chunk is not None or compute is not None) and type(head) is not nn.Linear:
        what = "backbone.lm_head_chunk" if compute is None else "the full-vocabulary token statistics (KL, WPO's norm)"
        fix = "set lm_head_chunk to null" if compute is None else "leave the LM head out of lora.target_modules"
        raise ValueError(
            f"{what} needs the LM head to be a plain nn.Linear; {type(model).__name__}'s is a"
            f" {type(head).__name__} (an adapter on it, or a quantised layer): {fix}"
        )
    own = vars(head).get("forward")
    original = head.forward
    rows, pos = targets.row, targets.pos - offset
    returned: dict[str, Tensor] = {}

    def forward(hidden: Tensor) -> Tensor:
        picked = returned["input"] = hidden[rows, pos]
        if compute is not None:
            returned["out"] = compute(picked, head)
        elif chunk is None:
            returned["out"] = original(picked)
        else:
            returned["out"] = ChunkedTokenLogProbs.apply(picked, head.weight, head.bias, targets.label, chunk)
        return returned["out"]

    head.forward = forward
    try:
        yield returned
    finally:
        if own is None:
            del head.forward
        else:
            head.forward = own


def selective_log_softmax(logits: Tensor, labels: Tensor) -> Tensor:
    """``log_softmax(logits)[labels]`` over the last dimension, in float32 (float64 for float64 logits)."""
    exact = torch.promote_types(logits.dtype, torch.float32)
    flat = logits.reshape(-1, logits.shape[-1]).to(exact)
    # cross_entropy is the log-softmax and the pick in one kernel each way: on a CPU about twice as fast, forward
    # and backward, as the label's logit minus a logsumexp, and it keeps the same one tokens x vocabulary tensor.
    return -F.cross_entropy(flat, labels.reshape(-1), reduction="none").reshape(labels.shape)
