"""DGLG: deconfliction-guided layer grouping.

The paper (STATED): a complete graph over the L layers with weights W_ij = sim(i, j);
split it into L_s groups minimising the weight cut between groups::

    cut(A_1..A_k) = 1/2 sum_g sum_{i in A_g, j not in A_g} W_ij

solved by spectral clustering: unnormalised Laplacian Lap = D - W (D = diag of row sums),
the eigenvectors of the k = L_s smallest eigenvalues as an L x k embedding, k-means on
its rows. (Spectral clustering with D - W is the relaxation of RatioCut,
sum_g cut(A_g, rest) / |A_g|, which is why its groups do not collapse into singletons.)

OPEN, chosen here:
- negative similarities: ``negatives="clip"`` (default, W <- max(W, 0)) or ``"shift"``
  (W <- W - min(W) over the off-diagonal, so the smallest affinity becomes 0);
- the diagonal is ignored (W_ii = 0; it cancels in D - W anyway);
- k-means: scikit-learn KMeans, ``n_init=10`` restarts, seeded;
- contiguity: :func:`contiguous_groups` solves the same objective exactly over ordered
  partitions into k contiguous runs by dynamic programming (the paper's published groups
  are contiguous).

Groups are ``list[list[int]]``: exactly k non-empty groups, every layer once, members
sorted, groups ordered by their first layer.
"""
from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np
import torch

Groups = list[list[int]]
NEGATIVES = ("clip", "shift")
OBJECTIVES = ("ratio", "cut")


def validate_groups(groups: Sequence[Sequence[int]], num_layers: int, num_groups: int | None = None) -> None:
    """Raise ValueError unless ``groups`` covers each of the ``num_layers`` layers exactly once."""
    if num_groups is not None and len(groups) != num_groups:
        raise ValueError(f"expected {num_groups} groups, got {len(groups)}.")
    if any(len(g) == 0 for g in groups):
        raise ValueError(f"every group must be non-empty, got {list(map(list, groups))}.")
    flat = [int(i) for g in groups for i in g]
    seen, repeated = set(), set()
    for i in flat:
        (repeated if i in seen else seen).add(i)
    if repeated:
        raise ValueError(f"groups repeat layer(s) {sorted(repeated)}: each layer must be in exactly one group.")
    outside = sorted(i for i in seen if not 0 <= i < num_layers)
    if outside:
        raise ValueError(f"groups name layer(s) {outside} outside 0..{num_layers - 1}.")
    missing = sorted(set(range(num_layers)) - seen)
    if missing:
        raise ValueError(f"groups miss layer(s) {missing}: every one of the {num_layers} layers needs a group.")


def canonical(groups: Sequence[Sequence[int]]) -> Groups:
    """Members sorted, groups ordered by their first layer."""
    return sorted((sorted(int(i) for i in g) for g in groups if len(g)), key=lambda g: g[0])


def affinity(similarity: torch.Tensor | np.ndarray, negatives: str = "clip") -> np.ndarray:
    """W from a similarity matrix: symmetric, zero diagonal, negatives clipped or shifted."""
    w = np.asarray(similarity, dtype=np.float64)
    if w.ndim != 2 or w.shape[0] != w.shape[1]:
        raise ValueError(f"similarity must be a square L x L matrix, got shape {w.shape}.")
    if not np.all(np.isfinite(w)):
        raise ValueError("similarity has NaN or inf entries.")
    w = (w + w.T) / 2
    np.fill_diagonal(w, 0.0)
    if negatives == "clip":
        w = np.maximum(w, 0.0)
    elif negatives == "shift":
        off = w[~np.eye(len(w), dtype=bool)]
        if off.size and off.min() < 0:
            w = w - off.min()
            np.fill_diagonal(w, 0.0)
    else:
        raise ValueError(f"negatives must be one of {NEGATIVES}, got {negatives!r}.")
    return w


def cut_value(similarity: torch.Tensor | np.ndarray, groups: Sequence[Sequence[int]],
              objective: str = "cut", negatives: str = "clip") -> float:
    """cut = 1/2 sum_g W(A_g, rest);  ratio = sum_g W(A_g, rest) / |A_g|."""
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}.")
    w = affinity(similarity, negatives)
    deg = w.sum(1)
    total = 0.0
    for g in groups:
        idx = np.asarray(g)
        out = deg[idx].sum() - w[np.ix_(idx, idx)].sum()
        total += out / len(g) if objective == "ratio" else out / 2
    return float(total)


def _check_k(num_layers: int, k: int) -> None:
    if not 1 <= k <= num_layers:
        raise ValueError(f"cannot split {num_layers} layers into {k} non-empty groups; need 1 <= k <= {num_layers}.")


def _repair(labels: np.ndarray, k: int) -> Groups:
    """Exactly k non-empty groups from k-means labels: while fewer than k, split the largest
    group (ties: the earliest) by moving its last layer into a new group."""
    groups = canonical([list(np.flatnonzero(labels == c)) for c in np.unique(labels)])
    while len(groups) < k:
        big = max(range(len(groups)), key=lambda g: (len(groups[g]), -groups[g][0]))
        groups.append([groups[big].pop()])
        groups = canonical(groups)
    return groups


def spectral_groups(similarity: torch.Tensor | np.ndarray, k: int, negatives: str = "clip",
                    seed: int = 0, n_init: int = 10) -> Groups:
    """DGLG: spectral clustering of the layer graph into k groups.

    Lap = D - W,  U = eigenvectors of the k smallest eigenvalues of Lap (L x k),
    groups = k-means(rows of U, k).
    """
    from sklearn.cluster import KMeans  # optional/heavy: sklearn

    w = affinity(similarity, negatives)
    n = len(w)
    _check_k(n, k)
    if k == n:
        return [[i] for i in range(n)]
    if k == 1:
        return [list(range(n))]
    lap = np.diag(w.sum(1)) - w
    _, vecs = np.linalg.eigh(lap)  # eigenvalues ascending
    emb = vecs[:, :k]
    labels = KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit_predict(emb)
    return _repair(labels, k)


def contiguous_groups(similarity: torch.Tensor | np.ndarray, k: int, negatives: str = "clip",
                      objective: str = "ratio") -> Groups:
    """The best partition into k contiguous runs of layers, by dynamic programming.

    best[g][j] = min_{i < j} best[g-1][i] + c(i, j),  c(i, j) = the cost of run i..j-1:
    W(run, rest) / |run| for ``objective="ratio"`` (what spectral clustering relaxes, the
    default) or W(run, rest) / 2 for ``"cut"`` (the plain cut, which favours tiny runs).
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}.")
    w = affinity(similarity, negatives)
    n = len(w)
    _check_k(n, k)
    deg = w.sum(1)
    pre = np.zeros((n + 1, n + 1))
    pre[1:, 1:] = w.cumsum(0).cumsum(1)
    dpre = np.concatenate([[0.0], deg.cumsum()])

    def cost(i: int, j: int) -> float:  # run i..j-1
        inner = pre[j, j] - pre[i, j] - pre[j, i] + pre[i, i]
        out = dpre[j] - dpre[i] - inner
        return out / (j - i) if objective == "ratio" else out / 2

    inf = float("inf")
    best = np.full((k + 1, n + 1), inf)
    arg = np.zeros((k + 1, n + 1), dtype=int)
    best[0, 0] = 0.0
    for g in range(1, k + 1):
        for j in range(g, n - (k - g) + 1):
            for i in range(g - 1, j):
                v = best[g - 1, i] + cost(i, j)
                if v < best[g, j] - 1e-12:
                    best[g, j], arg[g, j] = v, i
    bounds, j = [], n
    for g in range(k, 0, -1):
        i = arg[g, j]
        bounds.append((i, j))
        j = i
    return [list(range(i, j)) for i, j in reversed(bounds)]


def even_groups(num_layers: int, k: int) -> Groups:
    """EVEN baseline: k contiguous runs of equal size (the first ``L mod k`` runs one longer)."""
    _check_k(num_layers, k)
    q, r = divmod(num_layers, k)
    out, start = [], 0
    for g in range(k):
        size = q + (1 if g < r else 0)
        out.append(list(range(start, start + size)))
        start += size
    return out


def random_groups(num_layers: int, k: int, seed: int = 0) -> Groups:
    """RANDOM baseline: a seeded random partition into k non-empty groups."""
    _check_k(num_layers, k)
    rng = random.Random(seed)
    perm = list(range(num_layers))
    rng.shuffle(perm)
    cuts = sorted(rng.sample(range(1, num_layers), k - 1))
    parts = [perm[a:b] for a, b in zip([0, *cuts], [*cuts, num_layers])]
    return canonical(parts)


METHODS = ("spectral", "contiguous", "even", "random")


def group_layers(similarity: torch.Tensor | np.ndarray | None, num_layers: int, k: int,
                 method: str = "spectral", negatives: str = "clip", seed: int = 0,
                 n_init: int = 10, objective: str = "ratio") -> Groups:
    """One entry point for every grouping rule; the result is validated."""
    if method == "spectral":
        groups = spectral_groups(_need(similarity, method), k, negatives, seed, n_init)
    elif method == "contiguous":
        groups = contiguous_groups(_need(similarity, method), k, negatives, objective)
    elif method == "even":
        groups = even_groups(num_layers, k)
    elif method == "random":
        groups = random_groups(num_layers, k, seed)
    else:
        raise ValueError(f"grouping method must be one of {METHODS}, got {method!r}.")
    validate_groups(groups, num_layers, k)
    return groups


def _need(similarity, method: str):
    if similarity is None:
        raise ValueError(f"grouping method {method!r} needs a similarity matrix.")
    return similarity
