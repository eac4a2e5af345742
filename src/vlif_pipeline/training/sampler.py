"""Training triples (user, positive, negative), vectorised and reproducible per epoch."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


class TripleSampler:
    """One triple per training interaction per epoch, in a shuffled order.

    Negatives are uniform over the items NOT in the user's training set (rejection sampling,
    vectorised: only the rejected draws are redrawn). Epoch ``e`` uses the generator seeded with
    (seed, e), so a resumed run draws exactly what an uninterrupted run would.
    """

    def __init__(self, train: sp.csr_matrix, seed: int) -> None:
        coo = train.tocoo()
        order = np.lexsort((coo.col, coo.row))
        self.users = coo.row[order].astype(np.int64)
        self.items = coo.col[order].astype(np.int64)
        self.n_items = train.shape[1]
        self.keys = self.users * self.n_items + self.items
        self.seed = seed
        full = np.flatnonzero(train.getnnz(axis=1) >= self.n_items)
        if full.size:
            raise ValueError(f"user {int(full[0])} interacted with every item in train: no negative exists")

    def __len__(self) -> int:
        return self.users.size

    def _is_positive(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Boolean (n,): whether each (user, item) pair is a training interaction."""
        queries = users * self.n_items + items
        where = np.searchsorted(self.keys, queries)
        return self.keys[np.minimum(where, self.keys.size - 1)] == queries

    def epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(users, positives, negatives), each (N,) int64 with N = number of training interactions."""
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(self.users.size)
        users, pos = self.users[order], self.items[order]
        neg = rng.integers(0, self.n_items, size=users.size)
        redraw = np.flatnonzero(self._is_positive(users, neg))
        while redraw.size:
            neg[redraw] = rng.integers(0, self.n_items, size=redraw.size)
            redraw = redraw[self._is_positive(users[redraw], neg[redraw])]
        return users, pos, neg
