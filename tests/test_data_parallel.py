"""The data-parallel backend's harness without GPUs: N reference models stand in for the ranks, a numpy
all-reduce for NCCL, and the model-level suite must pass for ZeRO-0 and ZeRO-1 over the split batch, and fail,
naming the checks, when the "all-reduce" sums instead of averaging or a rank's update drifts. The NCCL code
itself runs on GPUs only (dp2:cuda in the conformance suite; skipped here, saying why)."""

import numpy as np
import pytest

from backends.data_parallel import DataParallelBackend, DataParallelModel, data_parallel_backend
from backends.protocol import PortUnsupported
from backends.reference import ReferenceBackend
from backends.registry import get_backend
from conformance.fixture import FIXTURES_DIR, load_fixture
from conformance.model_checks import run_model


class FakeRank:
    """A reference model behind the post/collect interface of backends.ports.RemoteModel, with the
    llmc_dist_* methods done in numpy over a shared group."""

    def __init__(self, group, rank, model):
        self.group, self.rank, self.model = group, rank, model
        self.config, self.num_parameters = model.config, model.config.num_parameters
        self.pending = None

    def post(self, method, *args):
        self.pending = (method, args)

    def collect(self, method):
        name, args = self.pending
        assert name == method
        if name.startswith("dist_"):
            return getattr(self.group, name)(self, *args)
        if name in ("backward", "zero_grad"):
            self.group.synced = False
        if name == "update":  # as llmc_update: the average first, where not yet taken
            self.group.sync()
        value = getattr(self.model, name)(*args)
        if name == "update":
            value = self.group.after_update(self, value)
        return value

    def begin_close(self):
        self.model.close()
        return False


class FakeGroup:
    """What NCCL does for the ranks, in numpy; `mistake` makes it wrong on purpose."""

    def __init__(self, world_size, zero_stage, mistake=None):
        self.world_size, self.zero_stage, self.mistake = world_size, zero_stage, mistake
        self.ranks, self.synced = [], False

    def shard(self, P):
        stride = -(-P // self.world_size)
        return [(min(P, r * stride), min(P, (r + 1) * stride) - min(P, r * stride)) for r in range(self.world_size)]

    def dist_join(self, rank, unique_id, r, world_size, zero_stage):
        assert (r, world_size, zero_stage) == (rank.rank, self.world_size, self.zero_stage)
        self.ranks.append(rank)

    def sync(self):
        """Every rank's gradients replaced by their average (each rank has finished its backward: the posts
        of a collective all come before its first collect)."""
        if self.synced:
            return
        grads = [r.model.gpt.grads_memory for r in self.ranks]
        mean = np.sum(grads, axis=0) / (1 if self.mistake == "sum" else self.world_size)
        for r in self.ranks:
            r.model.gpt.grads_memory[:] = mean
        self.synced = True

    def dist_sync_grads(self, rank):
        self.sync()

    def dist_mean(self, rank, values):
        posted = [r.pending[1][0] for r in self.ranks]  # every rank posted before the first collect
        return np.sum(posted, axis=0) / (1 if self.mistake == "loss-sum" else self.world_size)

    def dist_shard(self, rank):
        return self.shard(rank.num_parameters)[rank.rank] if self.zero_stage else (0, rank.num_parameters)

    def after_update(self, rank, norm):
        if self.mistake == "drift" and rank.rank == 1:
            rank.model.gpt.params_memory[0] += 1e-3
        return norm


class FakeDataParallel(DataParallelBackend):
    def __init__(self, world_size, zero_stage, mistake=None):
        self.name = f"fake-dp{world_size}{'-zero1' if zero_stage else ''}" + (f"[{mistake}]" if mistake else "")
        self.precision, self.deterministic = "fp32", True
        self.world_size, self.zero_stage, self.mistake = world_size, zero_stage, mistake
        self.description = "reference models as ranks, numpy as NCCL"

    def unsupported(self, feature):
        return None

    def _ranks(self, make):
        group = FakeGroup(self.world_size, self.zero_stage, self.mistake)
        ranks = [FakeRank(group, r, make()) for r in range(self.world_size)]
        for rank in ranks:  # the models join, as _join does through the ranks' processes
            rank.post("dist_join", b"id", rank.rank, self.world_size, self.zero_stage)
        for rank in ranks:
            rank.collect("dist_join")
        return DataParallelModel(self, ranks)

    def model(self, config, params, max_B, max_T):
        rows = self._rows(max_B)
        return self._ranks(lambda: ReferenceBackend().model(config, params, rows, max_T))

    def model_from_checkpoint(self, path, max_B, max_T):
        rows = self._rows(max_B)
        return self._ranks(lambda: ReferenceBackend().model_from_checkpoint(path, rows, max_T))


@pytest.fixture(scope="module")
def tiny():
    return load_fixture(FIXTURES_DIR / "tiny-bytes")  # B=4: 2 rows per rank


@pytest.mark.parametrize("zero_stage", [0, 1])
def test_split_batch_equals_the_whole_batch(tiny, zero_stage):
    run = run_model(FakeDataParallel(2, zero_stage), tiny)
    failed = [r.message() for r in run.results if not r.passed]
    assert not failed, "\n".join(failed)
    assert not run.not_run, run.not_run
    assert len(run.results) > 100


def test_summing_instead_of_averaging_is_caught(tiny):
    run = run_model(FakeDataParallel(2, 0, mistake="sum"), tiny)
    failed = {r.check.split("/", 1)[1] for r in run.results if not r.passed}
    assert {f"grad/d{name}" for name in ("wte", "wpe", "qkvw", "fcw", "lnfb")} <= failed, failed


def test_a_mean_loss_that_sums_is_caught(tiny):
    """llmc_dist_mean's output (the whole batch's loss) is judged by the loss checks."""
    run = run_model(FakeDataParallel(2, 0, mistake="loss-sum"), tiny)
    failed = {r.check.split("/", 1)[1] for r in run.results if not r.passed}
    assert {"loss", "train_loss/1"} <= failed, failed


def test_ranks_that_drift_apart_are_an_error(tiny):
    run = run_model(FakeDataParallel(2, 0, mistake="drift"), tiny)
    assert run.cause is not None and "differ from rank 0's" in str(run.cause)


def test_a_batch_that_does_not_split_is_unsupported():
    with pytest.raises(PortUnsupported, match="does not split evenly"):
        FakeDataParallel(2, 0).model(load_fixture(FIXTURES_DIR / "tiny-gpt2").config, None, 1, 8)


def test_names_and_reasons():
    with pytest.raises(ValueError, match="dpN:BASE"):
        data_parallel_backend("dp:cuda")
    with pytest.raises(ValueError, match="BASE must be"):
        get_backend("dp2:reference")
