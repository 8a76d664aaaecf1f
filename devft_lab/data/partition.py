"""Split one example pool across federated clients, in the spirit of Flower Datasets' partitioners.

Every partitioner sees only the examples' categories and returns, per client, the indices
of its examples; every index lands in exactly one client (each client's list is sorted).

==================  ==========================================================================
``iid``             a seeded shuffle cut into near-equal parts.
``dirichlet``       per category, client shares drawn from Dir(alpha) (Hsu et al. 2019,
                    arXiv 1909.06335; Yurochkin et al. 2019); small alpha -> each client sees
                    few categories. ``balance=True`` stops feeding clients already above the
                    mean size (as Flower's ``self_balancing``).
``pathological``    each client holds at most ``k`` categories; a category's examples are split
                    evenly among the clients that hold it (Flower's ``PathologicalPartitioner``).
``shards``          McMahan et al. 2017: sort by category, cut into ``num_clients *
                    shards_per_client`` equal shards, deal them out at random.
``natural``         one category = one client (Flower's ``NaturalIdPartitioner``); clients in
                    sorted category order, or the order given by ``order``.
``quantity_skew``   categories spread IID, client sizes skewed: shares from Dir(alpha) or a
                    log-normal(0, sigma) (Li et al. 2022, NIID-Bench, "quantity skew").
==================  ==========================================================================

Stochastic partitioners redraw (up to ``MAX_DRAWS`` times, as Flower does) when a client gets
fewer than ``min_samples`` examples, then raise :class:`DataError` saying which client, how
many, and what to change.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from devft_lab.data.records import DataError

MAX_DRAWS = 10  # redraws of a stochastic partition before a min_samples error
Parts = list[list[int]]


def _encode(categories: Sequence[Any]) -> tuple[np.ndarray, list[str]]:
    """Category names (sorted, as strings) and each example's index into them."""
    names, codes = np.unique(np.asarray([str(c) for c in categories], dtype=object), return_inverse=True)
    return codes.astype(np.int64), [str(n) for n in names]


def _split_by_shares(idx: np.ndarray, shares: np.ndarray) -> list[np.ndarray]:
    """Cut ``idx`` into ``len(shares)`` consecutive pieces proportional to ``shares``."""
    cuts = (np.cumsum(shares / shares.sum()) * len(idx)).round().astype(int)[:-1]
    return np.split(idx, cuts)


def iid(codes: np.ndarray, num_clients: int, rng: np.random.Generator) -> Parts:
    """Seeded shuffle cut into ``num_clients`` near-equal parts (sizes differ by at most one)."""
    return [p.tolist() for p in np.array_split(rng.permutation(len(codes)), num_clients)]


def dirichlet(codes: np.ndarray, num_clients: int, rng: np.random.Generator, *,
              alpha: float | Sequence[float] = 0.5, balance: bool = False) -> Parts:
    """Label-skew split: for each category, client shares ~ Dir(alpha * 1) (one alpha or one per client)."""
    a = np.broadcast_to(np.asarray(alpha, dtype=float), (num_clients,)) if np.ndim(alpha) == 0 \
        else np.asarray(alpha, dtype=float)
    if a.shape != (num_clients,) or not np.all(a > 0):
        raise DataError(f"dirichlet: alpha = {alpha!r} must be one positive number "
                        f"(or {num_clients} positive numbers, one per client).")
    parts: Parts = [[] for _ in range(num_clients)]
    target = len(codes) / num_clients
    for c in rng.permutation(codes.max() + 1 if len(codes) else 0):
        idx = rng.permutation(np.flatnonzero(codes == c))
        shares = rng.dirichlet(a)
        if balance:  # clients already at or above the mean size take no more (Flower's self_balancing)
            full = np.array([len(p) >= target for p in parts])
            if not full.all():
                shares = np.where(full, 0.0, shares)
        for client, piece in enumerate(_split_by_shares(idx, shares)):
            parts[client].extend(piece.tolist())
    return parts


def pathological(codes: np.ndarray, num_clients: int, rng: np.random.Generator, *, k: int = 2) -> Parts:
    """Each client holds ``k`` categories (client i: positions i*k .. i*k+k-1, mod C, of a shuffled
    category order), so every category has a holder; its examples are split evenly among them."""
    n_cat = int(codes.max()) + 1 if len(codes) else 0
    if not isinstance(k, (int, np.integer)) or not 1 <= k <= n_cat:
        raise DataError(f"pathological: k = {k!r} must be an integer between 1 and the number "
                        f"of categories ({n_cat}).")
    if num_clients * k < n_cat:
        raise DataError(f"pathological: {num_clients} clients x k={k} categories cannot cover all "
                        f"{n_cat} categories; raise k to >= {-(-n_cat // num_clients)} or use more clients.")
    order = rng.permutation(n_cat)
    holders: dict[int, list[int]] = {int(c): [] for c in order}
    for client in range(num_clients):
        for j in range(k):
            holders[int(order[(client * k + j) % n_cat])].append(client)
    parts: Parts = [[] for _ in range(num_clients)]
    for c, clients in holders.items():
        pieces = np.array_split(rng.permutation(np.flatnonzero(codes == c)), len(clients))
        for client, piece in zip(clients, pieces):
            parts[client].extend(piece.tolist())
    return parts


def shards(codes: np.ndarray, num_clients: int, rng: np.random.Generator, *,
           shards_per_client: int = 2) -> Parts:
    """McMahan et al. (2017): sort by category, cut into ``num_clients * shards_per_client`` equal
    shards, deal ``shards_per_client`` random ones to each client."""
    s = shards_per_client
    if not isinstance(s, (int, np.integer)) or s < 1:
        raise DataError(f"shards: shards_per_client = {s!r} must be a positive integer.")
    order = np.lexsort((rng.permutation(len(codes)), codes))  # by category, random within
    pieces = np.array_split(order, num_clients * s)
    deal = rng.permutation(len(pieces)).reshape(num_clients, s)
    return [np.concatenate([pieces[s] for s in row]).tolist() for row in deal]


def natural(codes: np.ndarray, num_clients: int, rng: np.random.Generator, *,
            order: Sequence[str] | None = None, names: Sequence[str] = ()) -> Parts:
    """One client per category: client i holds category ``order[i]`` (default: sorted names)."""
    if num_clients != len(names):
        raise DataError(f"natural: num_clients = {num_clients} but the data has {len(names)} "
                        f"categories ({', '.join(names)}); set num_clients to {len(names)}.")
    if order is not None:
        unknown = [c for c in order if c not in names]
        if unknown or sorted(order) != sorted(names):
            raise DataError(f"natural: order must list each category once; unknown: {unknown}, "
                            f"known: {list(names)}.")
        position = {n: i for i, n in enumerate(names)}
        return [np.flatnonzero(codes == position[c]).tolist() for c in order]
    return [np.flatnonzero(codes == c).tolist() for c in range(len(names))]


def quantity_skew(codes: np.ndarray, num_clients: int, rng: np.random.Generator, *,
                  alpha: float = 0.5, sigma: float | None = None) -> Parts:
    """IID contents, skewed sizes: shares ~ Dir(alpha), or log-normal(0, sigma) when sigma is set."""
    if sigma is not None:
        if sigma < 0:
            raise DataError(f"quantity_skew: sigma = {sigma} must be >= 0.")
        shares = rng.lognormal(0.0, sigma, num_clients)
    else:
        if alpha <= 0:
            raise DataError(f"quantity_skew: alpha = {alpha} must be > 0 (smaller: more unequal sizes).")
        shares = rng.dirichlet(np.full(num_clients, float(alpha)))
    return [p.tolist() for p in _split_by_shares(rng.permutation(len(codes)), shares)]


PARTITIONERS: dict[str, Callable[..., Parts]] = {
    "iid": iid, "dirichlet": dirichlet, "pathological": pathological, "shards": shards,
    "natural": natural, "quantity_skew": quantity_skew,
}
STOCHASTIC = {"dirichlet", "shards", "quantity_skew"}  # redrawn when min_samples is not met
_FIX = {"dirichlet": "raise alpha", "quantity_skew": "raise alpha (or lower sigma)",
        "pathological": "raise k", "shards": "use fewer shards_per_client", "natural": "merge small categories"}


def params_of(name: str) -> list[str]:
    """The keyword parameters partitioner ``name`` accepts (its ``partitioner_params``)."""
    return [p for p, v in inspect.signature(PARTITIONERS[name]).parameters.items()
            if v.kind is inspect.Parameter.KEYWORD_ONLY and p != "names"]


def partition(categories: Sequence[Any], partitioner: str, num_clients: int, seed: int = 0,
              min_samples: int = 1, **params: Any) -> Parts:
    """Indices of each client's examples; every index ``0..len(categories)-1`` exactly once.

    ``categories[i]`` is example i's category; ``params`` go to the partitioner (see
    :func:`params_of`). Same seed -> same split. Raises :class:`DataError` on an unknown
    partitioner or parameter, or when a client ends with fewer than ``min_samples`` examples.
    """
    if partitioner not in PARTITIONERS:
        raise DataError(f"unknown partitioner {partitioner!r}; choose one of {sorted(PARTITIONERS)}.")
    unknown = sorted(set(params) - set(params_of(partitioner)))
    if unknown:
        raise DataError(f"partitioner {partitioner!r} has no parameter(s) {unknown}; "
                        f"it accepts {params_of(partitioner) or 'none'}.")
    if not isinstance(num_clients, (int, np.integer)) or num_clients < 1:
        raise DataError(f"num_clients = {num_clients!r} must be a positive integer.")
    n = len(categories)
    if n < num_clients * min_samples:
        raise DataError(f"{n} examples cannot give {num_clients} clients {min_samples} each "
                        f"(needs {num_clients * min_samples}); use more data, fewer clients, "
                        "or a smaller min_samples.")
    codes, names = _encode(categories)
    if partitioner == "natural":
        params = {**params, "names": names}
    rng = np.random.default_rng(seed)
    draws = MAX_DRAWS if partitioner in STOCHASTIC else 1
    for _ in range(draws):
        parts = [sorted(int(i) for i in p) for p in PARTITIONERS[partitioner](codes, num_clients, rng, **params)]
        sizes = [len(p) for p in parts]
        if min(sizes) >= min_samples:
            return parts
    worst = int(np.argmin(sizes))
    raise DataError(
        f"partitioner {partitioner!r}: client {worst} got {sizes[worst]} examples, fewer than "
        f"min_samples = {min_samples} (after {draws} draw(s) with seed {seed}). Use more data, "
        f"fewer clients (num_clients = {num_clients}), {_FIX.get(partitioner, 'another partitioner')}, "
        "or lower min_samples.")


def feasible_split(categories: Sequence[Any], partitioner: str, num_clients: int, seed: int = 0,
                   min_samples: int = 1, **params: Any) -> tuple[int | None, int | None]:
    """``(most clients <= num_clients, largest min_samples <= min_samples)`` for which
    :func:`partition` succeeds with the same seed and parameters (None: no value works).
    Each is searched on its own, the other setting kept."""
    def works(k: int, m: int) -> bool:
        try:
            partition(categories, partitioner, k, seed, m, **params)
            return True
        except DataError:
            return False

    clients = next((k for k in range(min(num_clients, len(categories)), 0, -1) if works(k, min_samples)), None)
    least = next((m for m in range(min_samples, 0, -1) if works(num_clients, m)), None)
    return clients, least


def partition_counts(parts: Sequence[Sequence[int]], categories: Sequence[Any]) -> tuple[np.ndarray, list[str]]:
    """``(counts, names)``: ``counts[client, j]`` examples of category ``names[j]`` (sorted names)."""
    codes, names = _encode(categories)
    counts = np.zeros((len(parts), len(names)), dtype=np.int64)
    for client, idx in enumerate(parts):
        np.add.at(counts[client], codes[np.asarray(idx, dtype=np.int64)], 1)
    return counts, names


def category_skew(parts: Sequence[Sequence[int]], categories: Sequence[Any]) -> float:
    """Mean over non-empty clients of the total-variation distance between the client's category
    distribution and the pool's: 0 for identical mixes, towards 1 for disjoint ones."""
    counts, _ = partition_counts(parts, categories)
    counts = counts[counts.sum(1) > 0]
    if not len(counts):
        return 0.0
    glob = counts.sum(0) / counts.sum()
    local = counts / counts.sum(1, keepdims=True)
    return float(0.5 * np.abs(local - glob).sum(1).mean())


def plot_partition(parts: Sequence[Sequence[int]], categories: Sequence[Any], ax=None,
                   title: str | None = None):
    """Stacked bars of client x category counts (matplotlib); returns the axes."""
    import matplotlib.pyplot as plt  # optional/heavy: matplotlib

    counts, names = partition_counts(parts, categories)
    if ax is None:
        _, ax = plt.subplots(figsize=(max(4.0, 0.35 * len(parts) + 2), 3.2))
    clients = np.arange(len(parts))
    bottom = np.zeros(len(parts))
    cmap = plt.get_cmap("tab20" if len(names) > 10 else "tab10")
    for j, name in enumerate(names):
        ax.bar(clients, counts[:, j], bottom=bottom, label=name, color=cmap(j % cmap.N), width=0.85)
        bottom += counts[:, j]
    ax.set_xlabel("client")
    ax.set_ylabel("examples")
    ax.set_xticks(clients)
    ax.set_title(title or f"{len(parts)} clients x {len(names)} categories")
    if len(names) <= 20:
        ax.legend(fontsize="small", ncol=max(1, len(names) // 10), bbox_to_anchor=(1.01, 1), loc="upper left")
    return ax


def partition_examples(pool: Sequence[Mapping[str, Any]], partitioner: str, num_clients: int,
                      seed: int = 0, min_samples: int = 1, key: str = "category", **params: Any) -> list[list[Mapping[str, Any]]]:
    """Convenience: partition a list of examples by ``example[key]``; returns the examples per client."""
    missing = [i for i, ex in enumerate(pool) if key not in ex]
    if missing:
        raise DataError(f"example {missing[0]} has no {key!r} field; give each example a category "
                        f"(loaders set 'default') or pick another key.")
    parts = partition([ex[key] for ex in pool], partitioner, num_clients, seed, min_samples, **params)
    return [[pool[i] for i in p] for p in parts]
