"""Plain-Python forms of every list objective, written from the equations in research/families.md §1 with
``math`` alone, over one list (its existing responses only, in any order): ``s`` the implicit rewards (the
per-token mean log-probs for PRO), ``r`` the labels. The tests compare the torch objectives against them."""

import math


def lse(*xs):
    top = max(xs)
    return top + math.log(sum(math.exp(x - top) for x in xs))


def logsig(x):
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def softmax(xs):
    z = lse(*xs)
    return [math.exp(x - z) for x in xs]


def by_label(s, r):
    """(s, r) sorted best first by label, equal labels in data order."""
    order = sorted(range(len(r)), key=lambda i: -r[i])
    return [s[i] for i in order], [r[i] for i in order]


def plain_list_mle(s, r):
    s, _ = by_label(s, r)
    return -sum(s[k] - lse(*s[k:]) for k in range(len(s)))


def plain_lipo(s, r, loss_type="lambda", discount="log2"):
    if loss_type == "list_mle":
        return plain_list_mle(s, r)
    if loss_type == "softmax":
        return -sum(ri / sum(r) * math.log(p) for ri, p in zip(r, softmax(s)))
    log = math.log2 if discount == "log2" else math.log
    ranked = sorted(range(len(s)), key=lambda i: -s[i])
    rank = {i: pos + 1 for pos, i in enumerate(ranked)}
    total = 0.0
    for i in range(len(s)):
        for j in range(len(s)):
            if r[i] > r[j]:
                if loss_type == "pair_hinge":
                    total += max(0.0, 1 - (s[i] - s[j]))
                    continue
                weight = 1.0
                if loss_type == "lambda":
                    weight = abs(2 ** r[i] - 2 ** r[j]) * abs(1 / log(1 + rank[i]) - 1 / log(1 + rank[j]))
                total += weight * -logsig(s[i] - s[j])
    return total


def plain_pro(m, r):
    m, r = by_label(m, r)
    total = 0.0
    for k in range(len(m) - 1):
        temps = [r[k] - r[j] for j in range(k + 1, len(m))]
        top = max(temps)
        total += math.log(1e-10 + math.exp(m[k] * top) + sum(math.exp(m[j] * t) for j, t in zip(range(k + 1, len(m)), temps)))
        total -= m[k] * top
    return total


def plain_infonca(s, r, alpha=1.0):
    p = softmax([x / alpha for x in r])
    return -sum(pk * math.log(q) for pk, q in zip(p, softmax(s)))


def plain_nca(s, r, alpha=1.0):
    p = softmax([x / alpha for x in r])
    return -sum(logsig(-x) for x in s) / len(s) - sum(pk * logsig(x) for pk, x in zip(p, s))


def plain_exo(s, r, beta_r=1.0):
    p, q = softmax(s), softmax([x / beta_r for x in r])
    return sum(pk * (math.log(pk) - math.log(qk)) for pk, qk in zip(p, q))


def plain_mpo(s, r, alpha=1.0, absolute=False):
    mean = sum(r) / len(r)
    weighted = [x + alpha * (abs(ri - mean) if absolute else ri - mean) for x, ri in zip(s, r)]
    chosen = [w for w, ri in zip(weighted, r) if ri > mean]
    return lse(*weighted) - lse(*chosen) if chosen else 0.0
