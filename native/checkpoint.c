/* llm.c's model checkpoint (gpt2_124M.bin): a 256 x int32 header, then every parameter in llm.c's
 * order, fp32 (version 3) or bf16 (version 5). Every header field and the exact file size are checked
 * before anything is allocated; each failure names the file and the field.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include "internal.h"

#define CHECKPOINT_MAGIC 20240326
#define HEADER_INTS 256
#define HEADER_BYTES (HEADER_INTS * 4)

static FILE* open_regular(const char* path, long long* size) {
    FILE* f = fopen(path, "rb");
    if (f == NULL) {
        llmc_fail(LLMC_ERR_FILE, "checkpoint '%s': cannot open: %s", path, strerror(errno));
        return NULL;
    }
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        fclose(f);
        llmc_fail(LLMC_ERR_FILE, "checkpoint '%s': not a regular file", path);
        return NULL;
    }
    *size = (long long)st.st_size;
    return f;
}

int llmc_open_checkpoint(const char* path, llmc_checkpoint* ck) {
    long long size;
    FILE* f = open_regular(path, &size);
    if (f == NULL) return llmc_last_error_code();
    int32_t header[HEADER_INTS];
    size_t got = fread(header, sizeof(int32_t), HEADER_INTS, f);
    fclose(f);
    if (got != HEADER_INTS)
        return llmc_fail(LLMC_ERR_FORMAT, "checkpoint '%s': %lld bytes, shorter than the %d-byte header", path, size,
                         HEADER_BYTES);
    if (header[0] != CHECKPOINT_MAGIC)
        return llmc_fail(LLMC_ERR_FORMAT, "checkpoint '%s': header[0] magic = %d, expected %d (an llm.c GPT-2 model "
                         "file)", path, header[0], CHECKPOINT_MAGIC);
    if (header[1] != 3 && header[1] != 5)
        return llmc_fail(LLMC_ERR_FORMAT, "checkpoint '%s': header[1] version = %d, expected 3 (fp32) or 5 (bf16)",
                         path, header[1]);
    llmc_config c = {.max_seq_len = header[2], .vocab_size = header[3], .num_layers = header[4],
                     .num_heads = header[5], .channels = header[6], .padded_vocab_size = header[7]};
    char where[600];
    snprintf(where, sizeof where, "checkpoint '%s': header", path);
    int rc = llmc_check_config(&c, where);
    if (rc != LLMC_OK) return rc;
    size_t sizes[LLMC_NUM_PARAM_TENSORS], n = 0;
    llmc_param_sizes(&c, sizes);
    for (int i = 0; i < LLMC_NUM_PARAM_TENSORS; i++) n += sizes[i];
    int elem = header[1] == 3 ? 4 : 2;
    long long expected = HEADER_BYTES + (long long)n * elem;
    if (size != expected)
        return llmc_fail(LLMC_ERR_FORMAT, "checkpoint '%s': file size %lld bytes (%s), expected %lld = %d-byte header "
                         "+ %zu parameters x %d bytes for the header's config (L=%d, NH=%d, C=%d, V=%d, Vp=%d, "
                         "maxT=%d, version %d)", path, size, size < expected ? "truncated" : "oversized", expected,
                         HEADER_BYTES, n, elem, c.num_layers, c.num_heads, c.channels, c.vocab_size,
                         c.padded_vocab_size, c.max_seq_len, header[1]);
    ck->path = path;
    ck->config = c;
    ck->version = header[1];
    ck->num_parameters = n;
    return LLMC_OK;
}

int llmc_read_params(const llmc_checkpoint* ck, float* params) {
    long long size;
    FILE* f = open_regular(ck->path, &size);
    if (f == NULL) return llmc_last_error_code();
    size_t n = ck->num_parameters, done = 0;
    if (fseek(f, HEADER_BYTES, SEEK_SET) != 0) done = (size_t)-1;
    if (ck->version == 3 && done == 0) {
        done = fread(params, sizeof(float), n, f);
    } else if (done == 0) {   // bf16: the upper half of an fp32, read in chunks and widened
        uint16_t chunk[1 << 14];
        while (done < n) {
            size_t want = n - done < (sizeof chunk / 2) ? n - done : sizeof chunk / 2;
            size_t got = fread(chunk, 2, want, f);
            for (size_t i = 0; i < got; i++) {
                uint32_t bits = (uint32_t)chunk[i] << 16;
                memcpy(params + done + i, &bits, 4);
            }
            done += got;
            if (got < want) break;
        }
    }
    fclose(f);
    if (done != n)
        return llmc_fail(LLMC_ERR_FILE, "checkpoint '%s': short read of the parameters (the file changed while "
                         "being read?)", ck->path);
    return LLMC_OK;
}
