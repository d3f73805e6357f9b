/* Stand-in for llm.c's llmc/utils.h: the checked file and memory helpers train_gpt2.c uses.
 * Like llm.c's, they print where the failure happened and exit(): llm.c ends the process on bad input,
 * which is why native/llmc_adapter.c validates everything before it calls into train_gpt2.c. */
#ifndef STANDIN_LLMC_UTILS_H
#define STANDIN_LLMC_UTILS_H
#include <stdio.h>
#include <stdlib.h>

static inline FILE* fopen_check(const char* path, const char* mode, const char* file, int line) {
    FILE* fp = fopen(path, mode);
    if (fp == NULL) {
        fprintf(stderr, "Error: failed to open '%s' with mode '%s' at %s:%d\n", path, mode, file, line);
        exit(EXIT_FAILURE);
    }
    return fp;
}
#define fopenCheck(path, mode) fopen_check(path, mode, __FILE__, __LINE__)

static inline void fread_check(void* ptr, size_t size, size_t nmemb, FILE* stream, const char* file, int line) {
    if (fread(ptr, size, nmemb, stream) != nmemb) {
        fprintf(stderr, "Error: short read (expected %zu elements) at %s:%d\n", nmemb, file, line);
        exit(EXIT_FAILURE);
    }
}
#define freadCheck(ptr, size, nmemb, stream) fread_check(ptr, size, nmemb, stream, __FILE__, __LINE__)

static inline void fclose_check(FILE* fp, const char* file, int line) {
    if (fclose(fp) != 0) {
        fprintf(stderr, "Error: failed to close file at %s:%d\n", file, line);
        exit(EXIT_FAILURE);
    }
}
#define fcloseCheck(fp) fclose_check(fp, __FILE__, __LINE__)

static inline void* malloc_check(size_t size, const char* file, int line) {
    void* ptr = malloc(size);
    if (ptr == NULL) {
        fprintf(stderr, "Error: malloc of %zu bytes failed at %s:%d\n", size, file, line);
        exit(EXIT_FAILURE);
    }
    return ptr;
}
#define mallocCheck(size) malloc_check(size, __FILE__, __LINE__)

#endif
