"""reference.data against llm.c itself: its mt19937, its permutations and its DataLoader's batches, bit for bit.

Every expected number below was printed by llm.c's own code, not by ours: small C programs (kept out of
this repository) that #include llm.c's llmc/rand.h and llmc/dataloader.h from karpathy/llm.c at commit
f1e2ace651495b74ae22d45d1723443fd00ecd3a, built with gcc 12 -O2. The mt19937 values of seed 137 are
also the ones rand.h's own comment lists (and PyTorch's torch.manual_seed(137)).
"""

import numpy as np
import pytest

from reference.data import MT19937, DataLoader, random_permutation, shard_paths
from reference.formats import FormatError, TrainerState, read_trainer_state, write_tokens, write_trainer_state

# ----------------------------------------------------------------------------- mt19937 and random_permutation
# seed -> (randint32 draws 1..5, draws 625..627: the second twist of the state)
# numbers as llm.c printed them, kept as rows of a table
# fmt: off
MT19937_DRAWS = {
    42: ([1608637542, 3421126067, 4083286876, 787846414, 3143890026], [108880612, 791707097, 4134543476]),
    43: ([494155588, 2134003008, 2615920895, 442015537, 572909845], [1322760595, 1315836958, 186503170]),
    137: ([4053805790, 2173880614, 380293709, 1237255315, 2986595568], [999252939, 2225504760, 2101254228]),
}
# fmt: on


@pytest.mark.parametrize("seed", MT19937_DRAWS)
def test_mt19937_matches_llmc(seed):
    rng = MT19937(seed)
    first, after_twist = MT19937_DRAWS[seed]
    assert [rng.randint32() for _ in range(5)] == first
    for _ in range(624 - 5):
        rng.randint32()
    assert [rng.randint32() for _ in range(3)] == after_twist


def test_random_permutation_matches_llmc():
    """The order dataloader.h draws in: shards (3), then one shard's samples (10), then the shards again
    in place (a second epoch permutes the first epoch's order)."""
    rng = MT19937(42)
    shards = np.arange(3, dtype=np.int32)
    random_permutation(shards, rng)
    assert shards.tolist() == [2, 1, 0]
    samples = np.arange(10, dtype=np.int32)
    random_permutation(samples, rng)
    assert samples.tolist() == [1, 0, 9, 7, 5, 8, 3, 2, 4, 6]
    random_permutation(shards, rng)
    assert shards.tolist() == [0, 2, 1]


def test_tinyshakespeare_permutation_matches_llmc():
    """train_gpt2.c's default run: tiny Shakespeare's 305,260 train tokens at B=4, T=64 are one shard of
    (305260 - 1) // 256 = 1192 samples, permuted by the rank-0 generator (seed 42)."""
    rng = MT19937(42)
    order = np.arange(1192, dtype=np.int32)
    random_permutation(order, rng)
    assert order[:12].tolist() == [408, 791, 914, 1057, 81, 450, 299, 907, 582, 321, 670, 134]
    assert int(order.astype(np.int64) @ np.arange(1, 1193)) == 423932559  # sum of order[i] * (i + 1)
    assert (rng.left, rng.next) == (58, 567)


# ----------------------------------------------------------------------------- llm.c's DataLoader
# Three shards of consecutive ids (shard k holds k*1000, k*1000 + 1, ...) of 140, 100 and 180 tokens, so a
# batch's first input id says which shard and offset it came from. B=2, T=4; the first input id of each
# of 40 batches (several epochs), as llm.c's dataloader_next_batch served them.
SHARD_SIZES = (140, 100, 180)
# numbers as llm.c printed them, kept as rows of a table
# fmt: off
LLMC_FIRST_IDS = {   # (process_rank, num_processes, shuffle)
    (0, 1, False): [0, 8, 16, 24, 32, 40, 48, 56, 64, 72, 80, 88, 96, 104, 112, 120, 128, 1000, 1008, 1016, 1024,
                    1032, 1040, 1048, 1056, 1064, 1072, 1080, 1088, 2000, 2008, 2016, 2024, 2032, 2040, 2048, 2056,
                    2064, 2072, 2080],
    (0, 1, True): [2104, 2040, 2136, 2144, 2072, 2056, 2120, 2024, 2080, 2008, 2032, 2096, 2016, 2000, 2064, 2168,
                   2088, 2128, 2112, 2048, 2152, 2160, 1072, 1032, 1040, 1000, 1048, 1056, 1064, 1008, 1016, 1080,
                   1024, 1088, 32, 64, 120, 72, 24, 40],
    (0, 2, True): [2096, 2160, 2048, 2016, 2128, 2032, 2080, 2112, 2000, 2064, 2144, 1000, 1080, 1016, 1048, 1064,
                   1032, 48, 96, 16, 0, 80, 64, 32, 112, 2112, 2064, 2096, 2128, 2080, 2000, 2032, 2048, 2160, 2144,
                   2016, 1064, 1032, 1048, 1000],
    (1, 2, True): [2136, 2008, 2024, 2168, 2104, 2056, 2152, 2040, 2072, 2120, 2088, 88, 8, 72, 56, 40, 120, 24, 104,
                   1008, 1088, 1040, 1024, 1072, 1056, 2120, 2056, 2152, 2008, 2104, 2040, 2088, 2136, 2168, 2024,
                   2072, 1088, 1008, 1024, 1072],
    (1, 2, False): [8, 24, 40, 56, 72, 88, 104, 120, 1008, 1024, 1040, 1056, 1072, 1088, 2008, 2024, 2040, 2056, 2072,
                    2088, 2104, 2120, 2136, 2152, 2168, 8, 24, 40, 56, 72, 88, 104, 120, 1008, 1024, 1040, 1056, 1072,
                    1088, 2008],
}
# fmt: on
B, T, V = 2, 4, 4096


@pytest.fixture
def shards(tmp_path):
    """The glob of the three shards (written in reverse order: the loader must sort, not list)."""
    for k in reversed(range(len(SHARD_SIZES))):
        write_tokens(tmp_path / f"shard_{k}.bin", 1000 * k + np.arange(SHARD_SIZES[k]))
    return str(tmp_path / "shard_*.bin")


@pytest.mark.parametrize("rank, nproc, shuffle", LLMC_FIRST_IDS)
def test_batches_match_llmc(shards, rank, nproc, shuffle):
    loader = DataLoader(shards, B, T, rank, nproc, shuffle, vocab_size=V)
    first_ids = []
    for _ in range(40):
        inputs, targets = loader.next_batch()
        assert inputs.shape == targets.shape == (B, T) and inputs.dtype == np.int32
        # a batch is B*T consecutive tokens of one shard, its targets shifted by one
        start = inputs[0, 0]
        np.testing.assert_array_equal(inputs.reshape(-1), start + np.arange(B * T))
        np.testing.assert_array_equal(targets.reshape(-1), start + 1 + np.arange(B * T))
        first_ids.append(int(start))
    assert first_ids == LLMC_FIRST_IDS[rank, nproc, shuffle]


@pytest.mark.parametrize("shuffle", [False, True])
def test_ranks_read_disjoint_slices_covering_every_sample(shards, shuffle):
    """Over one epoch, 3 ranks together read every token of every whole sample exactly once."""
    nproc = 3
    loaders = [DataLoader(shards, B, T, rank, nproc, shuffle) for rank in range(nproc)]
    assert len({loader.num_batches for loader in loaders}) == 1
    read = [int(x) for loader in loaders for _ in range(loader.num_batches) for x in loader.next_batch()[0].flat]
    sample = nproc * B * T
    expected = [1000 * k + i for k, n in enumerate(SHARD_SIZES) for i in range((n - 1) // sample * sample)]
    assert sorted(read) == expected


@pytest.mark.parametrize("rank, nproc, shuffle", [(0, 1, True), (1, 2, True), (1, 2, False)])
@pytest.mark.parametrize("stop", [0, 5, 17, 31, 52])  # mid-shard, at a shard's end, in the next epoch
def test_state_through_the_file_resumes_exactly(shards, tmp_path, rank, nproc, shuffle, stop):
    whole = DataLoader(shards, B, T, rank, nproc, shuffle)
    expected = [whole.next_batch()[0].copy() for _ in range(stop + 30)]
    first = DataLoader(shards, B, T, rank, nproc, shuffle)
    for _ in range(stop):
        first.next_batch()
    path = tmp_path / "state.bin"
    m = np.arange(3, dtype=np.float32)
    write_trainer_state(path, TrainerState(stop, B, T, 1, 1337, m, 2 * m, first.state()))
    resumed = DataLoader(shards, B, T, rank, nproc, shuffle)
    resumed.restore(read_trainer_state(path, 3).loader)
    for k in range(stop, stop + 30):
        np.testing.assert_array_equal(resumed.next_batch()[0], expected[k])


def test_restore_refuses_other_data_settings(shards):
    state = DataLoader(shards, B, T, 0, 2, True).state()
    for other in (
        DataLoader(shards, B, T, 1, 2, True),
        DataLoader(shards, B, T, 0, 1, True),
        DataLoader(shards, B, T, 0, 2, False),
    ):
        with pytest.raises(ValueError, match="process_rank, num_processes, shuffle, num_shards"):
            other.restore(state)
    with pytest.raises(ValueError, match="sample_order has"):
        DataLoader(shards, 1, T, 0, 2, True).restore(state)  # another B: another number of samples


def test_shards_sorted_as_glob3_sorts(tmp_path):
    for name in ("b.bin", "a_10.bin", "a_9.bin", "B.bin"):
        write_tokens(tmp_path / name, np.arange(20))
    assert [p.rsplit("/", 1)[1] for p in shard_paths(str(tmp_path / "*.bin"))] == [
        "B.bin",
        "a_10.bin",
        "a_9.bin",
        "b.bin",
    ]


def test_bad_shards_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no token file matches"):
        DataLoader(str(tmp_path / "none_*.bin"), B, T)
    write_tokens(tmp_path / "a.bin", np.arange(100))
    write_tokens(tmp_path / "b.bin", np.arange(16))  # 16 tokens: fewer than 2*B*T + 1
    with pytest.raises(FormatError, match=r"b\.bin: 16 tokens, too few for one sample") as info:
        DataLoader(str(tmp_path / "*.bin"), B, T, 0, 2)
    assert info.value.field == "header[2]"
    DataLoader(str(tmp_path / "*.bin"), B, T, 0, 1)  # 16 tokens hold one sample of one rank
    with pytest.raises(FormatError, match=r"a\.bin: .*tokens\[50\] is token id 50, outside \[0, vocab_size=50\)"):
        DataLoader(str(tmp_path / "a.bin"), B, T, vocab_size=50)


# ----------------------------------------------------------------------------- the trainer-state file's loader part
@pytest.mark.parametrize(
    "field, damage, detail",
    [
        (
            "shard_order",
            lambda s: s.loader.shard_order.__setitem__(0, 1),
            "shard_order (3 entries) is not a permutation",
        ),
        (
            "sample_order",
            lambda s: s.loader.sample_order.__setitem__(1, 0),
            "sample_order (17 entries) is not a permutation",
        ),
        ("header[18]", lambda s: setattr(s.loader, "current_shard", 3), "header[18] current_shard is 3, outside"),
        ("header[20]", lambda s: setattr(s.loader, "current_sample", 18), "header[20] current_sample is 18, beyond"),
        ("header[24]", lambda s: setattr(s.loader, "rng_left", 0), "header[24] mt19937 left is 0"),
        ("header[14]", lambda s: setattr(s.loader, "process_rank", 1), "header[14] process_rank is 1, outside [0, 1)"),
    ],
)
def test_malformed_loader_state_names_the_field(shards, tmp_path, field, damage, detail):
    loader = DataLoader(shards, B, T, shuffle=True)
    for _ in range(22 + 12 + 1):  # shards 2 and 1, then into shard 0 (140 tokens: 17 samples)
        loader.next_batch()
    assert loader.shard_num_samples == 17
    state = TrainerState(3, B, T, 1, 1337, np.zeros(4, np.float32), np.zeros(4, np.float32), loader.state())
    damage(state)
    path = tmp_path / "state.bin"
    write_trainer_state(path, state)
    with pytest.raises(FormatError) as info:
        read_trainer_state(path, 4)
    assert info.value.field == field and detail in str(info.value) and str(path) in str(info.value), info.value
