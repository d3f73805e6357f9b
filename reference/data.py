"""Training data as llm.c serves it (llmc/dataloader.h, llmc/rand.h), batch for batch and bit for bit.

A data set is a glob of token files (shards, reference.formats' token format), in sorted order as C's
glob(3) returns them. Each shard is cut into samples of num_processes * B * T tokens; process `rank`
reads, of every sample, its own B*T tokens (plus the next one, the last target):

    shard tokens   | sample 0                      | sample 1                      | ...
                   | rank 0: B*T | rank 1: B*T | ..| rank 0: B*T | rank 1: B*T | ..|

so the ranks read disjoint slices. A shard of n tokens holds (n - 1) // (num_processes * B * T) samples;
the tokens past the last whole sample are never read. After the last sample of the last shard the
loader starts the next epoch.

Unshuffled (llm.c's validation loader), shards and samples come in file order. Shuffled (llm.c's training
loader, train_gpt2.c's default), each rank seeds llm.c's mt19937 with 42 + rank; every epoch first permutes
the shard order (in place, so each epoch's order permutes the previous one), and every shard, when it is
loaded, gets a fresh permutation of its samples; both by llm.c's random_permutation (Fisher-Yates from the
last element down, j = randint32() % (i + 1)). DataLoader.state() / restore() carry all of it across a
checkpoint.
"""

from __future__ import annotations

import glob
import os

import numpy as np

from reference.formats import MT19937_WORDS, FormatError, LoaderState, check_tokens, count_tokens, read_tokens

SHUFFLE_SEED = 42  # llm.c's dataloader_init: manual_seed(42 + process_rank)


# ----------------------------------------------------------------------------- llm.c's mt19937
class MT19937:
    """llm.c's Mersenne Twister (llmc/rand.h, which follows PyTorch's): manual_seed and randint32."""

    M = 397
    MATRIX_A = 0x9908B0DF
    UPPER, LOWER = 0x80000000, 0x7FFFFFFF

    def __init__(self, seed: int):
        words = [seed & 0xFFFFFFFF]
        for j in range(1, MT19937_WORDS):
            words.append((1812433253 * (words[-1] ^ (words[-1] >> 30)) + j) & 0xFFFFFFFF)
        self.words = words
        self.left = 1  # draws left before the next twist; 1 after seeding: the first draw twists
        self.next = 0  # index of the next word to temper

    def _twist(self):
        w, N, M = self.words, MT19937_WORDS, self.M
        for j in range(N):  # in place, in order: words past j are still the old ones, words before it new
            y = (w[j] & self.UPPER) | (w[(j + 1) % N] & self.LOWER)
            w[j] = w[(j + M) % N] ^ (y >> 1) ^ (self.MATRIX_A if y & 1 else 0)
        self.left, self.next = N, 0

    def randint32(self) -> int:
        self.left -= 1
        if self.left <= 0:
            self._twist()
        y = self.words[self.next]
        self.next += 1
        y ^= y >> 11
        y ^= (y << 7) & 0x9D2C5680
        y ^= (y << 15) & 0xEFC60000
        return y ^ (y >> 18)


def random_permutation(values: np.ndarray, rng: MT19937) -> None:
    """llm.c's random_permutation, in place: for i = n-1 down to 1, swap values[i] with values[j],
    j = randint32() % (i + 1)."""
    for i in range(values.size - 1, 0, -1):
        j = rng.randint32() % (i + 1)
        values[i], values[j] = values[j], values[i]


# ----------------------------------------------------------------------------- shards
def shard_paths(pattern: str) -> list[str]:
    """The files `pattern` matches, sorted bytewise as glob(3) sorts them in the C locale; a pattern that
    matches nothing but names an existing file (one with glob characters in its name) is that file."""
    paths = sorted(glob.glob(pattern), key=os.fsencode)
    if not paths and os.path.isfile(pattern):
        paths = [pattern]
    if not paths:
        raise FileNotFoundError(f"{pattern}: no token file matches")
    return paths


class DataLoader:
    """llm.c's DataLoader over the shards `pattern` matches, for process `process_rank` of `num_processes`.

    next_batch() -> (inputs, targets), int32 (B, T) each. vocab_size, when given, is checked against every
    token of a shard as it is loaded (FormatError naming the file). Every shard must hold at least one
    sample (num_processes * B * T + 1 tokens), checked for all of them up front from their headers."""

    def __init__(
        self,
        pattern: str,
        B: int,
        T: int,
        process_rank: int = 0,
        num_processes: int = 1,
        shuffle: bool = False,
        vocab_size: int | None = None,
    ):
        if B <= 0 or T <= 0:
            raise ValueError(f"DataLoader: B and T must be positive, got B={B}, T={T}")
        if not 0 <= process_rank < num_processes:
            raise ValueError(f"DataLoader: process_rank {process_rank} is outside [0, num_processes={num_processes})")
        self.B, self.T = B, T
        self.process_rank, self.num_processes = process_rank, num_processes
        self.shuffle = shuffle
        self.vocab_size = vocab_size
        self.paths = shard_paths(pattern)
        self.sample_tokens = num_processes * B * T  # one sample: every rank's B*T tokens
        self.shard_tokens = []
        for path in self.paths:
            ntok = count_tokens(path)
            if ntok < self.sample_tokens + 1:
                raise FormatError(
                    path,
                    "header[2]",
                    f"{ntok} tokens, too few for one sample of num_processes*B*T+1 = "
                    f"{self.sample_tokens + 1} (num_processes={num_processes}, "
                    f"B={B}, T={T})",
                )
            self.shard_tokens.append(ntok)
        self.num_tokens = sum(self.shard_tokens)
        # this rank's batches in one epoch
        self.num_batches = sum((n - 1) // self.sample_tokens for n in self.shard_tokens)
        self.rng = MT19937(SHUFFLE_SEED + process_rank) if shuffle else None
        self.shard_order = np.arange(len(self.paths), dtype=np.int32)  # permuted in place, epoch after epoch
        self.sample_order = None
        self.tokens, self._loaded = None, None
        self.reset()

    # llm.c's dataloader_load_shard_
    def _load_shard(self, position):
        index = int(self.shard_order[position]) if self.shuffle else position
        if self._loaded != index:  # llm.c reopens the file; the same file reads the same tokens
            path = self.paths[index]
            tokens = read_tokens(path)
            if tokens.size != self.shard_tokens[index]:
                raise FormatError(
                    path, "header[2]", f"{tokens.size} tokens now, {self.shard_tokens[index]} when the loader started"
                )
            if self.vocab_size is not None:
                check_tokens(tokens, self.vocab_size, path)
            self.tokens, self._loaded = tokens, index
        self.shard_num_samples = (self.tokens.size - 1) // self.sample_tokens

    def _shuffle_samples(self):
        self.sample_order = np.arange(self.shard_num_samples, dtype=np.int32)
        random_permutation(self.sample_order, self.rng)

    def reset(self):
        """Back to the first shard (llm.c's dataloader_reset): a new epoch, reshuffled when shuffling."""
        self.current_shard, self.current_sample = 0, 0
        if self.shuffle:
            random_permutation(self.shard_order, self.rng)
        self._load_shard(0)
        if self.shuffle:
            self._shuffle_samples()

    def _advance(self):
        if self.current_shard == len(self.paths) - 1:
            self.reset()
            return
        self.current_shard += 1
        self.current_sample = 0
        self._load_shard(self.current_shard)
        if self.shuffle:
            self._shuffle_samples()

    def next_batch(self) -> tuple[np.ndarray, np.ndarray]:
        if self.current_sample >= self.shard_num_samples:
            self._advance()
        sample = int(self.sample_order[self.current_sample]) if self.shuffle else self.current_sample
        start = sample * self.sample_tokens + self.process_rank * self.B * self.T
        buf = self.tokens[start : start + self.B * self.T + 1].astype(np.int32)
        self.current_sample += 1
        return buf[:-1].reshape(self.B, self.T), buf[1:].reshape(self.B, self.T)

    # ------------------------------------------------------------------------- checkpoints
    def state(self) -> LoaderState:
        state = LoaderState(
            self.process_rank,
            self.num_processes,
            self.shuffle,
            len(self.paths),
            self.current_shard,
            self.current_sample,
        )
        if self.shuffle:
            state.shard_order = self.shard_order.copy()
            state.sample_order = self.sample_order.copy()
            state.rng_words = np.array(self.rng.words, np.uint32)
            state.rng_left, state.rng_next = self.rng.left, self.rng.next
        return state

    def restore(self, state: LoaderState) -> None:
        """Continue exactly where state() was taken, on the same shards (ValueError names what differs;
        the loader is unchanged then)."""
        ours = (self.process_rank, self.num_processes, self.shuffle, len(self.paths))
        theirs = (state.process_rank, state.num_processes, state.shuffle, state.num_shards)
        if ours != theirs:
            raise ValueError(
                "the data loader was saved as (process_rank, num_processes, shuffle, num_shards) = "
                f"{theirs}, this one is {ours}"
            )
        if not 0 <= state.current_shard < len(self.paths):
            raise ValueError(f"current_shard {state.current_shard} is outside the {len(self.paths)} shards")
        shard_order = np.array(state.shard_order if self.shuffle else self.shard_order, np.int32)
        if shard_order.size != len(self.paths):
            raise ValueError(f"shard_order has {shard_order.size} entries, there are {len(self.paths)} shards")
        index = int(shard_order[state.current_shard]) if self.shuffle else state.current_shard
        num_samples = (self.shard_tokens[index] - 1) // self.sample_tokens
        if self.shuffle and state.sample_order.size != num_samples:
            raise ValueError(
                f"sample_order has {state.sample_order.size} entries, shard {self.paths[index]} "
                f"holds {num_samples} samples"
            )
        if not 0 <= state.current_sample <= num_samples:
            raise ValueError(
                f"current_sample {state.current_sample} is outside [0, {num_samples}], the samples "
                f"of shard {self.paths[index]}"
            )
        self.shard_order = shard_order
        self.current_shard, self.current_sample = state.current_shard, state.current_sample
        self._load_shard(self.current_shard)
        if self.shuffle:
            self.sample_order = np.array(state.sample_order, np.int32)
            self.rng.words = [int(w) for w in state.rng_words]
            self.rng.left, self.rng.next = state.rng_left, state.rng_next
