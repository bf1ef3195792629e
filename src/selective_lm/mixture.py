"""Several prepared datasets trained on as one: ``--data ds/web:6,ds/code:3,ds/owm:1``.

A :class:`Mixture` puts the datasets' windows into one index space (window w of dataset d is
``offsets[d] + w``), so everything the training loop indexes by window (the batch, the provenance labels, the
offline reference scores of each dataset: :class:`Rows`) works on a mixture as on one dataset, and selection
ranks the tokens of a micro-batch whatever dataset each window came from.

:class:`MixtureOrder` decides which dataset fills each window slot of an optimizer step: the W slots of step s
(W = batch × accumulation × ranks, the windows of a step, which a resume keeps) are drawn from the weights by
a generator seeded by (data_seed, s); dataset d's k-th draw is the k-th window of its own seeded order (a
permutation per epoch, as for one dataset). So the windows are a pure function of (seed, step): a resumed run
and any world size draw the same ones. :meth:`MixtureOrder.counts` gives the realised windows per dataset.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .data import TokenDataset
from .files import UserError, sha256_json
from .options import is_mixture, parse_data


def open_data(spec: str) -> TokenDataset | Mixture:
    """A TokenDataset for one directory, a :class:`Mixture` for a weighted list."""
    parts = parse_data(spec)
    return TokenDataset(parts[0][0]) if not is_mixture(spec) else Mixture(parts)


class Rows:
    """Per-dataset row arrays ([windows, width] memmaps, or None for a dataset without them: ``fill``) read as one,
    by global window index: ``rows[idx]`` and ``rows[idx, cols]``."""

    def __init__(self, parts: list[np.ndarray | None], offsets: np.ndarray, width: int, dtype, fill=0):
        self.parts, self.offsets, self.width, self.dtype, self.fill = parts, offsets, width, np.dtype(dtype), fill

    def __getitem__(self, key) -> np.ndarray:
        idx, cols = key if isinstance(key, tuple) else (key, slice(None))
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        out = np.full((len(idx), self.width), self.fill, dtype=self.dtype)
        which = np.searchsorted(self.offsets, idx, side="right") - 1
        for d in np.unique(which):
            sel = which == d
            if self.parts[d] is not None:
                out[sel] = self.parts[d][idx[sel] - self.offsets[d]]
        return out[:, cols]


class Mixture:
    """Weighted datasets sharing one tokenizer and window length, as one dataset (see the module docstring)."""

    def __init__(self, parts: list[tuple[str, float | None]]):
        self.datasets = [TokenDataset(p) for p, _ in parts]
        first = self.datasets[0]
        for ds in self.datasets[1:]:
            if ds.manifest["tokenizer_fingerprint"] != first.manifest["tokenizer_fingerprint"] or ds.seq_len != first.seq_len:
                raise UserError(f"datasets {first.path} and {ds.path} of --data differ in tokenizer or seq_len: prepare "
                                "every dataset of a mixture with the same tokenizer (tokenizer=DIR) and seq_len")
        w = np.array([1.0 if x is None else x for _, x in parts], dtype=np.float64)
        self.weights = w / w.sum()
        self.path = Path(parts[0][0])  # for messages; the mixture is every dataset of `datasets`
        self.seq_len, self.window_len, self.vocab_size = first.seq_len, first.window_len, first.vocab_size
        self.eos_id, self.bos_id, self.dtype, self.tokenizer_dir = first.eos_id, first.bos_id, first.dtype, first.tokenizer_dir
        self.manifest = {"kind": "mixture", "tokenizer_fingerprint": first.manifest["tokenizer_fingerprint"]}
        self.fingerprint = sha256_json({"mixture": [[ds.fingerprint, float(x)] for ds, x in zip(self.datasets, self.weights)]})
        self.names = unique_names([ds.path for ds in self.datasets])

    def __repr__(self) -> str:
        return "Mixture(" + ", ".join(f"{ds.path}:{w:.3g}" for ds, w in zip(self.datasets, self.weights)) + ")"

    def splits(self) -> list[str]:
        return [s for s in ("train", "validation", "test") if any(s in ds.splits() for ds in self.datasets)]

    def sizes(self, split: str) -> np.ndarray:
        return np.array([ds.num_windows(split) if split in ds.splits() else 0 for ds in self.datasets], dtype=np.int64)

    def offsets(self, split: str) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.sizes(split))[:-1]]).astype(np.int64)

    def num_windows(self, split: str) -> int:
        return int(self.sizes(split).sum())

    def rows(self, split: str, arrays: list[np.ndarray | None], dtype, width: int | None = None) -> Rows:
        return Rows(arrays, self.offsets(split), self.window_len if width is None else width, dtype)

    def windows(self, split: str) -> Rows:
        return self.rows(split, [ds.windows(split) if split in ds.splits() else None for ds in self.datasets], self.dtype)

    def provenance(self, split: str) -> Rows | None:
        """Labels by global index; a dataset without labels reads 0 (content), as `slm prepare` fills them."""
        provs = [ds.provenance(split) if split in ds.splits() else None for ds in self.datasets]
        return None if all(p is None for p in provs) else self.rows(split, provs, np.uint8)

    def batch(self, split: str, indices):
        """(inputs, targets) of global window indices, in their order (each dataset's own ``batch``)."""
        import torch

        idx = np.asarray(indices.detach().cpu().numpy() if hasattr(indices, "detach") else indices,
                         dtype=np.int64).reshape(-1)
        offsets = self.offsets(split)
        which = np.searchsorted(offsets, idx, side="right") - 1
        inputs = torch.empty((len(idx), self.seq_len), dtype=torch.int64)
        targets = torch.empty_like(inputs)
        for d in np.unique(which):
            sel = np.flatnonzero(which == d)
            x, y = self.datasets[d].batch(split, idx[sel] - offsets[d])
            inputs[sel], targets[sel] = x, y
        return inputs, targets

    def tokenizer(self):
        return self.datasets[0].tokenizer()


def unique_names(paths: list[Path]) -> list[str]:
    """Each dataset's directory name; repeated names get their position (web, web-2)."""
    names: list[str] = []
    for i, p in enumerate(paths):
        name = Path(p).name
        names.append(name if name not in names else f"{name}-{i + 1}")
    return names


class MixtureOrder:
    """Which window of which dataset fills each global position (see the module docstring); positions as in
    :func:`selective_lm.train.step_windows`, ``per_step`` windows per optimizer step."""

    def __init__(self, mixture: Mixture, seed: int, per_step: int):
        self.mixture, self.seed, self.per_step = mixture, seed, per_step
        self.sizes, self.offsets = mixture.sizes("train"), mixture.offsets("train")
        self.orders = [_Order(int(n), [seed, 0x313, d]) for d, n in enumerate(self.sizes)]
        self._step, self._before = 0, np.zeros(len(self.sizes), dtype=np.int64)  # draws before step _step

    def slots(self, step: int) -> np.ndarray:
        """The dataset of each of the step's ``per_step`` window slots."""
        live = self.mixture.weights * (self.sizes > 0)
        rng = np.random.default_rng([self.seed, 0x5107, step])
        return rng.choice(len(live), size=self.per_step, p=live / live.sum())

    def counts(self, step: int) -> np.ndarray:
        """Windows drawn from each dataset by the first ``step`` optimizer steps."""
        if step < self._step:
            self._step, self._before = 0, np.zeros_like(self._before)
        while self._step < step:
            self._before = self._before + np.bincount(self.slots(self._step), minlength=len(self.sizes))
            self._step += 1
        return self._before.copy()

    def _plan(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """(dataset of each slot of the step, its draw number within that dataset over the whole run)."""
        if getattr(self, "_planned", (None,))[0] != step:
            slots, draw = self.slots(step), np.empty(self.per_step, dtype=np.int64)
            before = self.counts(step)
            for d in np.unique(slots):
                sel = slots == d
                draw[sel] = before[d] + np.arange(np.count_nonzero(sel))
            self._planned = (step, slots, draw)
        return self._planned[1], self._planned[2]

    def indices(self, start: int, count: int) -> np.ndarray:
        out = np.empty(count, dtype=np.int64)
        for i, pos in enumerate(range(start, start + count)):
            step, j = divmod(pos, self.per_step)
            slots, draw = self._plan(step)
            d = slots[j]
            out[i] = self.offsets[d] + self.orders[d].at(int(draw[j]))
        return out


class _Order:
    """Dataset d's window order: a permutation per epoch seeded by (data_seed, d, epoch)."""

    def __init__(self, n: int, key: list[int]):
        self.n, self.key, self._cache = n, key, {}

    def at(self, k: int) -> int:
        epoch, j = divmod(k, self.n)
        if epoch not in self._cache:
            self._cache = {epoch: np.random.default_rng([*self.key, epoch]).permutation(self.n)}
        return int(self._cache[epoch][j])
