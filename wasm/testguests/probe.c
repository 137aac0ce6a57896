/*
 * probe.c - a test guest for the sandbox: each mode pokes at one thing the host
 * controls (state between runs, args, environment, stdin, files, time, memory,
 * output) and prints what it saw.
 *
 *   probe counter | args A... | env | stdin | read PATH | write PATH | ls DIR
 *         loop | grow | flood | trap | exit N | stderr TEXT | residue [again]
 */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern char **environ;

static int run_count; /* a fresh instance starts at 0 every run */

static int mode_counter(void) {
    run_count++;
    printf("count %d\n", run_count);
    return 0;
}

static int mode_stdin(void) {
    unsigned long long total = 0, sum = 0;
    int c;
    while ((c = getchar()) != EOF) {
        total++;
        sum = (sum * 31 + (unsigned char)c) % 1000000007ULL;
    }
    printf("bytes %llu hash %llu\n", total, sum);
    return 0;
}

static int mode_read(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        printf("read-failed %s\n", strerror(errno));
        return 1;
    }
    unsigned long n = 0;
    while (fgetc(f) != EOF) n++;
    fclose(f);
    printf("read %lu\n", n);
    return 0;
}

static int mode_write(const char *path) {
    FILE *f = fopen(path, "wb");
    if (!f) {
        printf("write-failed %s\n", strerror(errno));
        return 1;
    }
    fputs("written by a guest\n", f);
    fclose(f);
    printf("write-ok\n");
    return 0;
}

static int mode_ls(const char *path) {
    DIR *dir = opendir(path);
    if (!dir) {
        printf("ls-failed %s\n", strerror(errno));
        return 1;
    }
    struct dirent *entry;
    while ((entry = readdir(dir)) != NULL) printf("entry %s\n", entry->d_name);
    closedir(dir);
    return 0;
}

/* Memory left by an earlier run: grow to RESIDUE_PAGES pages, count the words holding the
 * marker anywhere past the first 1 KiB, then fill everything past the heap's start with it.
 * A fresh instance counts 0. `again` counts a second time after the fill: the count the
 * scan gives when the marker is there. */
#define RESIDUE_PAGES 160 /* 10 MiB: past any part of a memory an allocator keeps resident */
#define RESIDUE_MARKER 0x5EC2E7A5u
extern unsigned char __heap_base;

static unsigned long residue_count(void) {
    volatile unsigned int *word = (volatile unsigned int *)1024;
    volatile unsigned int *end = (volatile unsigned int *)(__builtin_wasm_memory_size(0) * 65536);
    unsigned long found = 0;
    for (; word < end; word++)
        found += *word == RESIDUE_MARKER;
    return found;
}

static int mode_residue(int again) {
    unsigned long pages = __builtin_wasm_memory_size(0);
    if (pages < RESIDUE_PAGES && __builtin_wasm_memory_grow(0, RESIDUE_PAGES - pages) < 0) {
        printf("grow-failed\n");
        return 1;
    }
    printf("residue %lu\n", residue_count());
    unsigned int *word = (unsigned int *)(((unsigned long)&__heap_base + 3) & ~3ul);
    unsigned int *end = (unsigned int *)(RESIDUE_PAGES * 65536ul);
    for (; word < end; word++)
        *word = RESIDUE_MARKER;
    if (again)
        printf("residue %lu\n", residue_count());
    return 0;
}

static int mode_grow(void) {
    unsigned long mib = 0;
    char *block;
    /* Touch each block so the compiler cannot drop the allocation. */
    while ((block = malloc(1 << 20)) != NULL) {
        ((volatile char *)block)[0] = 1;
        mib++;
    }
    printf("allocated %lu MiB\n", mib);
    return 0;
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "";
    if (!strcmp(mode, "counter")) return mode_counter();
    if (!strcmp(mode, "args")) {
        for (int i = 0; i < argc; i++) printf("arg %s\n", argv[i]);
        return 0;
    }
    if (!strcmp(mode, "env")) {
        for (char **e = environ; *e; e++) printf("env %s\n", *e);
        printf("env-end\n");
        return 0;
    }
    if (!strcmp(mode, "stdin")) return mode_stdin();
    if (!strcmp(mode, "read") && argc > 2) return mode_read(argv[2]);
    if (!strcmp(mode, "write") && argc > 2) return mode_write(argv[2]);
    if (!strcmp(mode, "ls") && argc > 2) return mode_ls(argv[2]);
    if (!strcmp(mode, "loop")) {
        volatile unsigned long spin = 0;
        for (;;) spin++;
    }
    if (!strcmp(mode, "grow")) return mode_grow();
    if (!strcmp(mode, "residue")) return mode_residue(argc > 2 && !strcmp(argv[2], "again"));
    if (!strcmp(mode, "flood")) {
        for (;;) fputs("flood flood flood flood flood flood flood flood\n", stdout);
    }
    if (!strcmp(mode, "trap")) __builtin_trap();
    if (!strcmp(mode, "exit") && argc > 2) return atoi(argv[2]);
    if (!strcmp(mode, "stderr") && argc > 2) {
        fprintf(stderr, "%s\n", argv[2]);
        return 0;
    }
    fprintf(stderr, "probe: unknown mode %s\n", mode);
    return 64;
}
