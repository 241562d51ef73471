"""Random-token batches with the MixtureStream interface, for throughput benchmarks on a machine without data.

Needs numpy only (no pyarrow, no tokenizer), so ``benchmarks/train_mfu.py`` runs on a bare GPU box.
"""

from __future__ import annotations

import numpy as np


class SyntheticStream:
    """Uniform token ids in [0, vocab_size), shape [micro_batch_size, seq_len], int64; each rank its own draw.

    Same methods as ``trainer.data.MixtureStream``: ``next_batch``, ``state_dict``, ``load_state_dict``,
    ``realised``.
    """

    def __init__(self, vocab_size: int, seq_len: int, seed: int, rank: int, world_size: int):
        self.vocab_size, self.seq_len, self.rank, self.world_size = vocab_size, seq_len, rank, world_size
        self.rng = np.random.default_rng([seed, rank])
        self.sequences = 0

    def next_batch(self, micro_batch_size: int) -> np.ndarray:
        self.sequences += micro_batch_size
        return self.rng.integers(0, self.vocab_size, size=(micro_batch_size, self.seq_len), dtype=np.int64)

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state, "sequences": self.sequences, "rank": self.rank,
                "world_size": self.world_size}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.sequences = state["sequences"]

    def realised(self) -> dict:
        """Over the global stream (all ranks draw in lock step), like MixtureStream.realised()."""
        n = self.sequences * self.world_size
        return {"synthetic": {"sequences": n, "tokens": n * self.seq_len, "share": 1.0, "configured_share": 1.0}}
