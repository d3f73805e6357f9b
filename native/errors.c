/* The last error of the calling thread: a code and a message naming what was wrong. */
#include <stdarg.h>
#include <stdio.h>
#include "internal.h"

static _Thread_local int last_code = LLMC_OK;
static _Thread_local char last_message[1024];

int llmc_fail(int code, const char* fmt, ...) {
    va_list args;
    va_start(args, fmt);
    vsnprintf(last_message, sizeof last_message, fmt, args);
    va_end(args);
    last_code = code;
    return code;
}

/* The message stays: llmc_last_error() describes the last *failed* call. */
int llmc_ok(void) {
    last_code = LLMC_OK;
    return LLMC_OK;
}

const char* llmc_last_error(void) { return last_message; }
int llmc_last_error_code(void) { return last_code; }
