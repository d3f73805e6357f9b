// Data parallelism over NCCL: one process per GPU, every collective through NCCL, no transport of our own.
// model.cu decides what to communicate (ZeRO-0: all-reduce the gradients; ZeRO-1: reduce-scatter them,
// AdamW on this rank's shard, all-gather the parameters); this file wraps the NCCL calls and turns their
// failures into error codes. Built with NCCL where native/cuda.mk finds it (-DLLMC_WITH_NCCL); without,
// every function says so with LLMC_ERR_UNSUPPORTED and the library is single-GPU.
//
// Bitwise reproducible for a fixed world size: NCCL's reductions run in an order fixed by the topology and
// the message size, and no float atomics are involved.
#include <cstring>
#include <new>

#include "common.cuh"

#ifdef LLMC_WITH_NCCL
#include <nccl.h>

static_assert(NCCL_UNIQUE_ID_BYTES == LLMC_DIST_ID_BYTES, "llmc.h's id size must be NCCL's");

struct DistComm {
    ncclComm_t comm;
    int rank, world_size;
};

#define NCCL_TRY(call)                                                                                  \
    do {                                                                                                \
        ncclResult_t r_ = (call);                                                                       \
        if (r_ != ncclSuccess)                                                                          \
            return set_error(LLMC_ERR_DEVICE, "%s failed at %s:%d: %s (%s)", #call, __FILE__, __LINE__, \
                             ncclGetErrorString(r_), ncclGetLastError(nullptr));                        \
    } while (0)

const char* dist_nccl_version() {
    static char text[32];
    int v = 0;
    ncclGetVersion(&v);
    snprintf(text, sizeof(text), "NCCL %d.%d.%d", v / 10000, (v / 100) % 100, v % 100);
    return text;
}

int dist_unique_id(unsigned char* id) {
    ncclUniqueId uid;
    NCCL_TRY(ncclGetUniqueId(&uid));
    memcpy(id, uid.internal, NCCL_UNIQUE_ID_BYTES);
    return LLMC_OK;
}

int dist_create(const unsigned char* id, int rank, int world_size, DistComm** out) {
    ncclUniqueId uid;
    memcpy(uid.internal, id, NCCL_UNIQUE_ID_BYTES);
    DistComm* d = new (std::nothrow) DistComm();
    if (!d) return set_error(LLMC_ERR_ALLOC, "cannot allocate the communicator's struct");
    ncclResult_t r = ncclCommInitRank(&d->comm, world_size, uid, rank);
    if (r != ncclSuccess) {
        delete d;
        return set_error(LLMC_ERR_DEVICE, "ncclCommInitRank(rank %d of %d) failed: %s (%s)", rank, world_size,
                         ncclGetErrorString(r), ncclGetLastError(nullptr));
    }
    d->rank = rank;
    d->world_size = world_size;
    *out = d;
    return LLMC_OK;
}

void dist_free(DistComm* d) {
    if (!d) return;
    ncclCommDestroy(d->comm);
    delete d;
}

int dist_allreduce_mean(DistComm* d, float* data, size_t n) {
    NCCL_TRY(ncclAllReduce(data, data, n, ncclFloat, ncclAvg, d->comm, 0));
    return LLMC_OK;
}

// data holds world_size shards of `shard` floats; afterwards this rank's shard (data + rank*shard) holds the
// mean over the ranks of that shard (NCCL's in-place convention).
int dist_reduce_scatter_mean(DistComm* d, float* data, size_t shard) {
    NCCL_TRY(ncclReduceScatter(data, data + (size_t)d->rank * shard, shard, ncclFloat, ncclAvg, d->comm, 0));
    return LLMC_OK;
}

// Each rank's shard (data + rank*shard) to every rank, in place.
int dist_allgather(DistComm* d, float* data, size_t shard) {
    NCCL_TRY(ncclAllGather(data + (size_t)d->rank * shard, data, shard, ncclFloat, d->comm, 0));
    return LLMC_OK;
}

// Host values through a device buffer: the sum (doubles) or the mean (floats) over the ranks.
template <typename T>
static int reduce_host(DistComm* d, T* values, int n, ncclDataType_t type, ncclRedOp_t op) {
    void* scratch;
    TRY(scratch_get(n * sizeof(T), &scratch));
    CUDA_TRY(cudaMemcpy(scratch, values, n * sizeof(T), cudaMemcpyHostToDevice));
    NCCL_TRY(ncclAllReduce(scratch, scratch, n, type, op, d->comm, 0));
    CUDA_TRY(cudaMemcpy(values, scratch, n * sizeof(T), cudaMemcpyDeviceToHost));
    return LLMC_OK;
}

int dist_sum_doubles(DistComm* d, double* values, int n) { return reduce_host(d, values, n, ncclDouble, ncclSum); }
int dist_mean_floats(DistComm* d, float* values, int n) { return reduce_host(d, values, n, ncclFloat, ncclAvg); }

#else // built without NCCL

struct DistComm {};

static int no_nccl() {
    return set_error(LLMC_ERR_UNSUPPORTED,
                     "this libllmc_cuda was built without NCCL (install the nvidia-nccl-cu13 "
                     "wheel, the [nccl] extra, and rebuild): one GPU only");
}

const char* dist_nccl_version() { return "no NCCL"; }
int dist_unique_id(unsigned char*) { return no_nccl(); }
int dist_create(const unsigned char*, int, int, DistComm**) { return no_nccl(); }
void dist_free(DistComm*) {}
int dist_allreduce_mean(DistComm*, float*, size_t) { return no_nccl(); }
int dist_reduce_scatter_mean(DistComm*, float*, size_t) { return no_nccl(); }
int dist_allgather(DistComm*, float*, size_t) { return no_nccl(); }
int dist_sum_doubles(DistComm*, double*, int) { return no_nccl(); }
int dist_mean_floats(DistComm*, float*, int) { return no_nccl(); }

#endif
