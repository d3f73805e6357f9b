/* The last error of the calling thread: a code and a message naming what was wrong. */
#include <stdarg.h>
#include <stdio.h>
#include "core.h"

static _Thread_local int last_code = LLMC_OK;
static _Thread_local char last_message[1024];

int llmc_vfail(int code, const char* fmt, va_list args) {
    vsnprintf(last_message, sizeof last_message, fmt, args);
    last_code = code;
    return code;
}

int llmc_fail(int code, const char* fmt, ...) {
    va_list args;
    va_start(args, fmt);
    llmc_vfail(code, fmt, args);
    va_end(args);
    return code;
}

/* The message stays: llmc_last_error() describes the last *failed* call (llmc.h). */
int llmc_ok(void) {
    last_code = LLMC_OK;
    return LLMC_OK;
}

const char* llmc_last_error(void) { return last_message; }
int llmc_last_error_code(void) { return last_code; }
