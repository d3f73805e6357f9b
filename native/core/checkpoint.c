/* llm.c's model checkpoint (gpt2_124M.bin), read once for every library. The checks, in
 * reference/formats.py read_checkpoint's order, each failure naming the file and the field:
 * a regular file (a FIFO must not block the open), magic, version, the config, the reserved header
 * fields zero, the exact file size (all before anything is allocated), then every parameter finite.
 * And written, for llmc_save_checkpoint: the same format, atomically.
 */
#include <errno.h>
#include <limits.h>
#include <fcntl.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include "core.h"

#define CHECKPOINT_MAGIC 20240326
#define VERSION_FP32 3
#define VERSION_BF16 5
#define HEADER_INTS 256
#define HEADER_BYTES (HEADER_INTS * 4)
#define FIRST_RESERVED 8 /* header[8..255] are zero */
#define CHUNK (1 << 14)  /* parameters per read */

/* Opens path for reading if it is a regular file. O_NONBLOCK: opening a FIFO (or a device) must not wait
 * for a writer; the type is then checked on the open descriptor, so what was checked is what is read. */
static FILE* open_regular(const char* path, long long* size) {
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
        llmc_fail(LLMC_ERR_FILE, "checkpoint '%s': cannot open: %s", path, strerror(errno));
        return NULL;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        llmc_fail(LLMC_ERR_FILE, "checkpoint '%s': not a regular file", path);
        return NULL;
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    FILE* f = fdopen(fd, "rb");
    if (f == NULL) {
        llmc_fail(LLMC_ERR_FILE, "checkpoint '%s': cannot open: %s", path, strerror(errno));
        close(fd);
        return NULL;
    }
    *size = (long long)st.st_size;
    return f;
}

void llmc_checkpoint_close(llmc_checkpoint* ck) {
    if (ck->file != NULL) fclose(ck->file);
    ck->file = NULL;
}

int llmc_checkpoint_open(const char* path, llmc_checkpoint* ck) {
    memset(ck, 0, sizeof *ck);
    long long size;
    FILE* f = open_regular(path, &size);
    if (f == NULL) return llmc_last_error_code();
    ck->file = f;
    ck->path = path;
    int32_t header[HEADER_INTS];
    int rc = LLMC_OK;
    if (fread(header, sizeof(int32_t), HEADER_INTS, f) != HEADER_INTS) {
        rc = llmc_fail(LLMC_ERR_FORMAT, "checkpoint '%s': %lld bytes, shorter than the %d-byte header", path, size,
                       HEADER_BYTES);
    } else if (header[0] != CHECKPOINT_MAGIC) {
        rc = llmc_fail(LLMC_ERR_FORMAT,
                       "checkpoint '%s': header[0] magic = %d, expected %d (an llm.c GPT-2 model "
                       "file)",
                       path, header[0], CHECKPOINT_MAGIC);
    } else if (header[1] != VERSION_FP32 && header[1] != VERSION_BF16) {
        rc = llmc_fail(LLMC_ERR_FORMAT, "checkpoint '%s': header[1] version = %d, expected %d (fp32) or %d (bf16)",
                       path, header[1], VERSION_FP32, VERSION_BF16);
    } else {
        ck->version = header[1];
        ck->config = (llmc_config){.max_seq_len = header[2],
                                   .vocab_size = header[3],
                                   .num_layers = header[4],
                                   .num_heads = header[5],
                                   .channels = header[6],
                                   .padded_vocab_size = header[7]};
        rc = llmc_check_config(&ck->config, path);
    }
    for (int i = FIRST_RESERVED; rc == LLMC_OK && i < HEADER_INTS; i++) {
        if (header[i] != 0)
            rc = llmc_fail(LLMC_ERR_FORMAT, "checkpoint '%s': header[%d] = %d, expected 0 (reserved)", path, i,
                           header[i]);
    }
    if (rc == LLMC_OK) {
        const llmc_config* c = &ck->config;
        ck->num_parameters = llmc_num_parameters(c);
        int elem = ck->version == VERSION_FP32 ? 4 : 2;
        long long expected = HEADER_BYTES + (long long)ck->num_parameters * elem;
        if (size != expected)
            rc = llmc_fail(LLMC_ERR_FORMAT,
                           "checkpoint '%s': file size %lld bytes (%s), expected %lld = %d-byte "
                           "header + %zu parameters x %d bytes for the header's config (L=%d, NH=%d, C=%d, V=%d, "
                           "Vp=%d, maxT=%d, version %d)",
                           path, size, size < expected ? "truncated" : "oversized", expected, HEADER_BYTES,
                           ck->num_parameters, elem, c->num_layers, c->num_heads, c->channels, c->vocab_size,
                           c->padded_vocab_size, c->max_seq_len, ck->version);
    }
    if (rc != LLMC_OK) llmc_checkpoint_close(ck);
    return rc;
}

/* "wte, flat index 5" for parameter number i of config c */
static int tensor_at(const llmc_config* c, size_t i, size_t* index) {
    size_t sizes[LLMC_NUM_PARAM_TENSORS];
    llmc_param_sizes(c, sizes);
    int t = 0;
    while (t < LLMC_NUM_PARAM_TENSORS - 1 && i >= sizes[t]) i -= sizes[t++];
    *index = i;
    return t;
}

int llmc_checkpoint_read(llmc_checkpoint* ck, float* params) {
    size_t n = ck->num_parameters, done = 0;
    int bf16 = ck->version == VERSION_BF16;
    while (done < n) {
        size_t want = n - done < CHUNK ? n - done : CHUNK, got;
        float* dst = params + done;
        if (bf16) { // the upper half of an fp32: widened exactly
            uint16_t half[CHUNK];
            got = fread(half, sizeof half[0], want, ck->file);
            for (size_t i = 0; i < got; i++) {
                uint32_t bits = (uint32_t)half[i] << 16;
                memcpy(dst + i, &bits, sizeof bits);
            }
        } else {
            got = fread(dst, sizeof(float), want, ck->file);
        }
        for (size_t i = 0; i < got; i++) {
            if (!isfinite(dst[i])) {
                size_t index;
                int t = tensor_at(&ck->config, done + i, &index);
                llmc_checkpoint_close(ck);
                return llmc_fail(LLMC_ERR_FORMAT,
                                 "checkpoint '%s': parameter %zu (%s, flat index %zu) is %g, "
                                 "checkpoints must hold finite values",
                                 ck->path, done + i, llmc_param_names[t], index, dst[i]);
            }
        }
        done += got;
        if (got < want) break;
    }
    llmc_checkpoint_close(ck);
    if (done != n)
        return llmc_fail(LLMC_ERR_FILE,
                         "checkpoint '%s': short read of the parameters (the file changed while "
                         "being read?)",
                         ck->path);
    return LLMC_OK;
}

/* float -> bf16 bits, round to nearest even (finite values only: the writer refuses the others) */
static uint16_t bf16_bits(float value) {
    uint32_t bits;
    memcpy(&bits, &value, sizeof bits);
    return (uint16_t)((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);
}

static int write_payload(FILE* f, const float* params, size_t n, int version) {
    if (version == VERSION_FP32) return fwrite(params, sizeof(float), n, f) == n;
    uint16_t half[CHUNK];
    for (size_t done = 0; done < n;) {
        size_t count = n - done < CHUNK ? n - done : CHUNK;
        for (size_t i = 0; i < count; i++) half[i] = bf16_bits(params[done + i]);
        if (fwrite(half, sizeof half[0], count, f) != count) return 0;
        done += count;
    }
    return 1;
}

int llmc_checkpoint_write(const char* path, const llmc_config* config, const float* params, int version) {
    if (version != VERSION_FP32 && version != VERSION_BF16)
        return llmc_fail(LLMC_ERR_ARGUMENT, "checkpoint '%s': version %d, expected %d (fp32) or %d (bf16)", path,
                         version, VERSION_FP32, VERSION_BF16);
    size_t n = llmc_num_parameters(config);
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(params[i])) {
            size_t index;
            int t = tensor_at(config, i, &index);
            return llmc_fail(LLMC_ERR_STATE,
                             "checkpoint '%s': parameter %zu (%s, flat index %zu) is %g, not "
                             "written: checkpoints hold finite values",
                             path, i, llmc_param_names[t], index, params[i]);
        }
    }
    int32_t header[HEADER_INTS] = {
        CHECKPOINT_MAGIC,   version,           config->max_seq_len, config->vocab_size,
        config->num_layers, config->num_heads, config->channels,    config->padded_vocab_size};
    /* named as reference/formats.py atomic_write names its temporaries (.NAME.PID.RANDOM.tmp), so the next
     * Python writer of the same file removes what a killed writer left */
    static unsigned counter = 0;
    const char* slash = strrchr(path, '/');
    int dir_len = slash ? (int)(slash - path + 1) : 0;
    char tmp[PATH_MAX];
    if (snprintf(tmp, sizeof tmp, "%.*s.%s.%ld.%08x.tmp", dir_len, path, path + dir_len, (long)getpid(),
                 (unsigned)time(NULL) * 2654435761u + __atomic_fetch_add(&counter, 1, __ATOMIC_RELAXED)) >=
        (int)sizeof tmp)
        return llmc_fail(LLMC_ERR_ARGUMENT, "checkpoint '%s': path too long", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    FILE* f = fd < 0 ? NULL : fdopen(fd, "wb");
    if (f == NULL) {
        int saved_errno = errno;
        if (fd >= 0) close(fd);
        return llmc_fail(LLMC_ERR_FILE, "checkpoint '%s': cannot create %s: %s", path, tmp, strerror(saved_errno));
    }
    int ok = fwrite(header, sizeof header[0], HEADER_INTS, f) == HEADER_INTS && write_payload(f, params, n, version) &&
             fflush(f) == 0 && fsync(fileno(f)) == 0;
    int saved_errno = errno;
    if (fclose(f) != 0) ok = 0;
    if (!ok || rename(tmp, path) != 0) {
        if (ok) saved_errno = errno;
        unlink(tmp);
        return llmc_fail(LLMC_ERR_FILE, "checkpoint '%s': writing failed, nothing written: %s", path,
                         strerror(saved_errno));
    }
    return LLMC_OK;
}
