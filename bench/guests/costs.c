/*
 * costs.c - a probe guest for `python -m bench.profile`: does the operations
 * named by its arguments, in order, so the host can time each one as the
 * difference between a run with it and a run without it.
 *
 *   stdin            read all of stdin with fread into a 1 MiB buffer
 *   stdin-realloc    the same, growing a 64 KiB buffer with realloc
 *   stdin-copy       the same, growing a 64 KiB buffer with malloc + memcpy
 *   file:PATH        fopen, fread and fclose a file (e.g. the labels)
 *   write            one 400-byte write to stdout
 *   touch:MIB        malloc MIB MiB and write one byte per 4 KiB page
 *   hostcall:N       N calls of a host function that fails at once
 *                    (wasi-nn load_by_name of an unknown name)
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "wasi_nn.h"

enum { CHUNK = 64 * 1024 };

static uint8_t *grow(uint8_t *data, size_t len, size_t cap, int use_realloc)
{
    if (use_realloc)
        return realloc(data, cap);
    uint8_t *bigger = malloc(cap);
    memcpy(bigger, data, len);
    free(data);
    return bigger;
}

static size_t read_stream(FILE *f, size_t cap, int growth)
{
    size_t len = 0;
    uint8_t *data = malloc(cap);
    for (;;) {
        if (cap - len < CHUNK) {
            data = grow(data, len, cap * 2, growth == 'r');
            cap *= 2;
        }
        size_t n = fread(data + len, 1, cap - len, f);
        len += n;
        if (n == 0)
            break;
    }
    free(data);
    return len;
}

int main(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        const char *op = argv[i];
        if (strcmp(op, "stdin") == 0) {
            read_stream(stdin, 1024 * 1024, 0);
        } else if (strcmp(op, "stdin-realloc") == 0) {
            read_stream(stdin, CHUNK, 'r');
        } else if (strcmp(op, "stdin-copy") == 0) {
            read_stream(stdin, CHUNK, 'c');
        } else if (strncmp(op, "file:", 5) == 0) {
            FILE *f = fopen(op + 5, "rb");
            if (f == NULL)
                return 2;
            read_stream(f, 1024 * 1024, 0);
            fclose(f);
        } else if (strcmp(op, "write") == 0) {
            char line[401];
            memset(line, 'x', 399);
            line[399] = '\n';
            line[400] = '\0';
            fputs(line, stdout);
            fflush(stdout);
        } else if (strncmp(op, "touch:", 6) == 0) {
            size_t size = (size_t)atoi(op + 6) << 20;
            volatile uint8_t *p = malloc(size);
            for (size_t j = 0; j < size; j += 4096)
                p[j] = 1;
        } else if (strncmp(op, "hostcall:", 9) == 0) {
            nn_graph graph;
            for (int n = atoi(op + 9); n > 0; n--)
                (void)nn_load_by_name("", 0, &graph);
        } else {
            fprintf(stderr, "costs: unknown operation %s\n", op);
            return 64;
        }
    }
    return 0;
}
