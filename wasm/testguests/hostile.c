/*
 * hostile.c - a business-logic guest that misbehaves on request, for the
 * hardening tests. It takes the default guest's command line (--model NAME
 * --input-shape 1xHxWx3 ... --top-k K; u8 input and output models only).
 *
 * stdin that does not start with "HOSTILE " is an image: it is classified like
 * the default guest does (top-1 only), so the same service can be shown to
 * answer normally right after a hostile request. Otherwise the first line is
 *
 *   HOSTILE MODE [ARG]\n[image bytes]
 *
 * with MODE one of
 *   loop             spin forever (the epoch deadline must stop it)
 *   grow             malloc 1 MiB blocks until refused, then abort (a trap)
 *   trap             execute `unreachable`
 *   exit N           exit with code N
 *   flood | flood-stderr   write forever, ignoring write errors
 *   oob              store to an address past the end of linear memory (a trap)
 *   wildptr          pass out-of-range pointers to every kind of host call, then
 *                    exit 70 listing the errnos it got
 *   compute-loop     call wasi-nn compute forever (host work, not wasm work)
 *   decode-loop      decode the image after the first line forever
 *   sleep N          sleep N seconds (WASI poll_oneoff)
 *   sandbox OTHER    print what the sandbox lets it see and do; OTHER is a model
 *                    the request did not ask for
 *   mark HEX         fill 8 MiB of memory with the bytes HEX encodes
 *   scan HEX         count copies of those bytes anywhere in linear memory
 *   peek             read the model's output tensor without computing
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <wasi/api.h>

#include "wasi_nn.h"
#include "wasmedge_image.h"

extern char **environ;

static const char *model = "";
static uint32_t height = 224, width = 224;

static uint8_t *stdin_data;
static size_t stdin_len;

static void read_stdin(void) {
    size_t cap = 1 << 16;
    stdin_data = malloc(cap);
    size_t got;
    while (stdin_data && (got = fread(stdin_data + stdin_len, 1, cap - stdin_len, stdin)) > 0) {
        stdin_len += got;
        if (stdin_len == cap) {
            cap *= 2;
            stdin_data = realloc(stdin_data, cap);
        }
    }
    if (!stdin_data) {
        fputs("hostile: out of memory reading stdin\n", stderr);
        exit(70);
    }
}

static void parse_args(int argc, char **argv) {
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--model")) model = argv[i + 1];
        if (!strcmp(argv[i], "--input-shape")) {
            unsigned n, h, w, c;
            if (sscanf(argv[i + 1], "%ux%ux%ux%u", &n, &h, &w, &c) == 4 && n == 1 && c == 3) {
                height = h;
                width = w;
            }
        }
    }
}

/* -- the normal path: decode, infer, print the top-1 class ------------------------------ */

static nn_context open_context(void) {
    nn_graph graph;
    nn_context context;
    int32_t err = nn_load_by_name(model, (uint32_t)strlen(model), &graph);
    if (err == NN_SUCCESS) err = nn_init_execution_context(graph, &context);
    if (err != NN_SUCCESS) {
        fprintf(stderr, "hostile: cannot open model %s: errno %d\n", model, (int)err);
        exit(70);
    }
    return context;
}

static int classify(const uint8_t *image, size_t len) {
    uint32_t pixels_len = width * height * 3;
    uint8_t *pixels = malloc(pixels_len);
    if (!pixels) return 70;
    if (img_load_image(image, (uint32_t)len, width, height, IMG_RGB8, pixels, pixels_len) != IMG_SUCCESS) {
        fputs("hostile: the image could not be decoded\n", stderr);
        return 65;
    }
    nn_context context = open_context();
    uint32_t dims[4] = {1, height, width, 3};
    nn_tensor tensor = {dims, 4, NN_TYPE_U8, pixels, pixels_len};
    static uint8_t scores[1 << 16];
    uint32_t written = 0;
    int32_t err = nn_set_input(context, 0, &tensor);
    if (err == NN_SUCCESS) err = nn_compute(context);
    if (err == NN_SUCCESS) err = nn_get_output(context, 0, scores, sizeof scores, &written);
    if (err != NN_SUCCESS || written == 0) {
        fprintf(stderr, "hostile: inference failed: errno %d\n", (int)err);
        return 70;
    }
    uint32_t best = 0;
    for (uint32_t i = 1; i < written; i++)
        if (scores[i] > scores[best]) best = i;
    printf("{\"predictions\":[{\"index\":%u,\"score\":%.6g}]}\n", (unsigned)best, scores[best] / 255.0);
    return 0;
}

/* -- hostile modes ----------------------------------------------------------------------- */

static void *volatile kept; /* the blocks form a list, so the compiler cannot drop them */

static int mode_grow(void) {
    for (;;) {
        void **block = malloc(1 << 20);
        if (!block) abort(); /* what a careless guest does when memory runs out */
        memset(block, 1, 1 << 20);
        *block = kept;
        kept = block;
    }
}

static int mode_flood(FILE *stream) {
    for (;;) fputs("flood flood flood flood flood flood flood flood flood flood\n", stream);
}

static int mode_oob(void) {
    volatile uint32_t *past_the_end = (volatile uint32_t *)(uintptr_t)0xFFFFFFF0u;
    *past_the_end = 1;
    return 0;
}

static int mode_wildptr(void) {
    uint8_t *wild = (uint8_t *)(uintptr_t)0xFFFFFF00u;
    static uint8_t buffer[256];
    nn_graph graph;
    nn_context context = open_context();
    uint32_t written;
    uint32_t dims[4] = {1, height, width, 3};
    nn_tensor wild_dims = {(const uint32_t *)wild, 4, NN_TYPE_U8, buffer, sizeof buffer};
    nn_tensor wild_data = {dims, 4, NN_TYPE_U8, wild, width * height * 3};
    int32_t image = img_load_image(wild, 1u << 30, width, height, IMG_RGB8, buffer, sizeof buffer);
    int32_t image_out = img_load_image(stdin_data, (uint32_t)stdin_len, 2, 2, IMG_RGB8, wild, 12);
    int32_t by_name = nn_load_by_name((const char *)wild, 64, &graph);
    int32_t graph_out = nn_load_by_name(model, (uint32_t)strlen(model), (nn_graph *)wild);
    int32_t tensor = nn_set_input(context, 0, (const nn_tensor *)wild);
    int32_t tensor_dims = nn_set_input(context, 0, &wild_dims);
    int32_t tensor_data = nn_set_input(context, 0, &wild_data);
    int32_t output = nn_get_output(context, 0, wild, 1u << 31, &written);
    fprintf(stderr,
            "hostile: wild pointers got load_image=%d/%d load_by_name=%d/%d set_input=%d/%d/%d get_output=%d\n",
            (int)image, (int)image_out, (int)by_name, (int)graph_out, (int)tensor, (int)tensor_dims,
            (int)tensor_data, (int)output);
    return 70;
}

static int mode_compute_loop(void) {
    nn_context context = open_context();
    for (;;) nn_compute(context); /* errors ignored: keep the host busy */
}

static int mode_decode_loop(const uint8_t *image, size_t len) {
    uint32_t pixels_len = width * height * 3;
    uint8_t *pixels = malloc(pixels_len);
    for (;;) img_load_image(image, (uint32_t)len, width, height, IMG_RGB8, pixels, pixels_len);
}

/* -- sandbox probes ------------------------------------------------------------------------ */

static void json_string(const char *s) {
    putchar('"');
    for (; *s; s++) {
        if (*s == '"' || *s == '\\') printf("\\%c", *s);
        else if ((unsigned char)*s < 0x20) printf("\\u%04x", *s);
        else putchar(*s);
    }
    putchar('"');
}

/* "ok" or the error, for one attempt to create a file */
static const char *try_write(const char *path) {
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) return strerror(errno);
    close(fd);
    return "ok";
}

static const char *try_read(const char *path) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) return strerror(errno);
    close(fd);
    return "ok";
}

static void print_listing(const char *path) {
    DIR *dir = opendir(path);
    if (!dir) {
        json_string(strerror(errno));
        return;
    }
    putchar('[');
    int first = 1;
    struct dirent *entry;
    while ((entry = readdir(dir)) != NULL) {
        if (!strcmp(entry->d_name, ".") || !strcmp(entry->d_name, "..")) continue;
        if (!first) putchar(',');
        json_string(entry->d_name);
        first = 0;
    }
    closedir(dir);
    putchar(']');
}

static int mode_sandbox(const char *other_model) {
    printf("{\"probe\":{\"env\":[");
    for (char **e = environ; *e; e++) {
        if (e != environ) putchar(',');
        json_string(*e);
    }
    printf("],\"preopens\":[");
    for (__wasi_fd_t fd = 3; fd < 64; fd++) {
        __wasi_prestat_t prestat;
        if (__wasi_fd_prestat_get(fd, &prestat) != 0) continue;
        char name[256] = {0};
        uint32_t len = prestat.u.dir.pr_name_len < 255 ? prestat.u.dir.pr_name_len : 255;
        if (__wasi_fd_prestat_dir_name(fd, (uint8_t *)name, len) != 0) continue;
        if (fd > 3) putchar(',');
        json_string(name);
    }
    printf("],\"model_dir\":");
    print_listing("/model");
    printf(",\"root_dir\":");
    print_listing("/");
    printf(",\"write\":{");
    const char *write_paths[] = {"/model/planted.txt", "/planted.txt", "/tmp/planted.txt"};
    for (int i = 0; i < 3; i++) {
        printf("%s", i ? "," : "");
        json_string(write_paths[i]);
        putchar(':');
        json_string(try_write(write_paths[i]));
    }
    printf("},\"read\":{");
    char escape[300];
    snprintf(escape, sizeof escape, "/model/../%s/model.tflite", other_model);
    const char *read_paths[] = {"/etc/passwd", "/proc/self/environ", "/model/../../etc/passwd", escape};
    for (int i = 0; i < 4; i++) {
        printf("%s", i ? "," : "");
        json_string(read_paths[i]);
        putchar(':');
        json_string(try_read(read_paths[i]));
    }
    printf("},\"sock_accept\":[");
    for (__wasi_fd_t fd = 0; fd < 8; fd++) {
        __wasi_fd_t accepted = 0;
        printf("%s%d", fd ? "," : "", (int)__wasi_sock_accept(fd, 0, &accepted));
    }
    uint8_t byte = 0;
    __wasi_iovec_t in_vec = {&byte, 1};
    __wasi_ciovec_t out_vec = {&byte, 1};
    __wasi_size_t count = 0;
    __wasi_roflags_t roflags = 0;
    printf("],\"sock_recv\":[");
    for (__wasi_fd_t fd = 0; fd < 4; fd++)
        printf("%s%d", fd ? "," : "", (int)__wasi_sock_recv(fd, &in_vec, 1, 0, &count, &roflags));
    printf("],\"sock_send\":[");
    for (__wasi_fd_t fd = 0; fd < 4; fd++)
        printf("%s%d", fd ? "," : "", (int)__wasi_sock_send(fd, &out_vec, 1, 0, &count));
    printf("],\"sock_shutdown\":[");
    for (__wasi_fd_t fd = 0; fd < 4; fd++)
        printf("%s%d", fd ? "," : "", (int)__wasi_sock_shutdown(fd, __WASI_SDFLAGS_RD | __WASI_SDFLAGS_WR));
    nn_graph graph;
    printf("],\"other_model\":%d}}\n", (int)nn_load_by_name(other_model, (uint32_t)strlen(other_model), &graph));
    return 0;
}

/* -- leftovers: is anything of an earlier request still in memory? ------------------------ */

static size_t unhex(const char *hex, uint8_t *out, size_t cap) {
    size_t n = 0;
    unsigned value;
    while (n < cap && sscanf(hex + 2 * n, "%2x", &value) == 1) out[n++] = (uint8_t)value;
    return n;
}

static int mode_mark(const char *hex) {
    uint8_t needle[64];
    size_t n = unhex(hex, needle, sizeof needle);
    size_t size = 8 << 20;
    uint8_t *block = malloc(size);
    if (!block || n == 0) return 70;
    size_t copies = 0;
    for (size_t at = 0; at + n <= size; at += n, copies++) memcpy(block + at, needle, n);
    printf("{\"marked\":%zu}\n", copies);
    return 0;
}

static int mode_scan(const char *hex) {
    uint8_t *needle = malloc(64);
    size_t n = unhex(hex, needle, 64);
    if (n == 0) return 70;
    size_t memory_size = __builtin_wasm_memory_size(0) * 65536;
    size_t found = 0;
    /* Address 0 is valid wasm memory; start at 1 to stay clear of C's null pointer. */
    for (uintptr_t at = 1; at + n <= memory_size; at++) {
        const volatile uint8_t *p = (const volatile uint8_t *)at;
        if (p == needle || p[0] != needle[0]) continue;
        size_t i = 1;
        while (i < n && p[i] == needle[i]) i++;
        found += i == n;
    }
    printf("{\"memory_bytes\":%zu,\"found\":%zu}\n", memory_size, found);
    return 0;
}

static int mode_peek(void) {
    nn_context context = open_context();
    static uint8_t output[1 << 16];
    uint32_t written = 0;
    int32_t err = nn_get_output(context, 0, output, sizeof output, &written);
    uint32_t nonzero = 0;
    for (uint32_t i = 0; i < written; i++) nonzero += output[i] != 0;
    printf("{\"peek\":{\"errno\":%d,\"bytes\":%u,\"nonzero\":%u}}\n", (int)err, (unsigned)written,
           (unsigned)nonzero);
    return 0;
}

int main(int argc, char **argv) {
    parse_args(argc, argv);
    read_stdin();
    if (stdin_len < 8 || memcmp(stdin_data, "HOSTILE ", 8) != 0) return classify(stdin_data, stdin_len);

    /* The command line: "HOSTILE MODE [ARG]", then optional bytes after a newline. */
    char line[512] = {0};
    size_t line_len = 0;
    while (8 + line_len < stdin_len && stdin_data[8 + line_len] != '\n' && line_len < sizeof line - 1) {
        line[line_len] = (char)stdin_data[8 + line_len];
        line_len++;
    }
    size_t body_at = 8 + line_len + 1;
    const uint8_t *body = stdin_data + (body_at < stdin_len ? body_at : stdin_len);
    size_t body_len = body_at < stdin_len ? stdin_len - body_at : 0;
    char *arg = strchr(line, ' ');
    if (arg) *arg++ = '\0';
    else arg = "";
    const char *mode = line;

    if (!strcmp(mode, "loop")) {
        volatile unsigned long spin = 0;
        for (;;) spin++;
    }
    if (!strcmp(mode, "grow")) return mode_grow();
    if (!strcmp(mode, "trap")) __builtin_trap();
    if (!strcmp(mode, "exit")) {
        fprintf(stderr, "hostile: exiting with %s as asked\n", arg);
        return atoi(arg);
    }
    if (!strcmp(mode, "flood")) return mode_flood(stdout);
    if (!strcmp(mode, "flood-stderr")) return mode_flood(stderr);
    if (!strcmp(mode, "oob")) return mode_oob();
    if (!strcmp(mode, "wildptr")) return mode_wildptr();
    if (!strcmp(mode, "compute-loop")) return mode_compute_loop();
    if (!strcmp(mode, "decode-loop")) return mode_decode_loop(body, body_len);
    if (!strcmp(mode, "sleep")) {
        sleep((unsigned)atoi(arg));
        puts("{\"slept\":true}");
        return 0;
    }
    if (!strcmp(mode, "sandbox")) return mode_sandbox(arg);
    if (!strcmp(mode, "mark")) return mode_mark(arg);
    if (!strcmp(mode, "scan")) return mode_scan(arg);
    if (!strcmp(mode, "peek")) return mode_peek();
    fprintf(stderr, "hostile: unknown mode %s\n", mode);
    return 64;
}
