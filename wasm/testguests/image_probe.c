/*
 * image_probe.c - a test guest for the `wasmedge_image` module: decodes stdin with
 * one function and prints the errno and an FNV-1a hash of the output bytes.
 *
 *   image_probe FUNC WIDTH HEIGHT TYPE [OUT_LEN|bad-out|bad-in|dump]
 *   (dump: also print the output bytes in hex, for small sizes)
 *     FUNC: load_image | load_jpg | load_png;  TYPE: 0 RGB8, 1 BGR8, 2 RGB32F, 3 BGR32F
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "wasmedge_image.h"

static uint8_t *read_stdin(uint32_t *len) {
    uint32_t cap = 1 << 16, n = 0;
    uint8_t *buf = malloc(cap);
    size_t got;
    while (buf && (got = fread(buf + n, 1, cap - n, stdin)) > 0) {
        n += (uint32_t)got;
        if (n == cap) {
            cap *= 2;
            buf = realloc(buf, cap);
        }
    }
    *len = n;
    return buf;
}

int main(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: image_probe FUNC WIDTH HEIGHT TYPE [OUT_LEN|bad-out|bad-in|dump]\n");
        return 64;
    }
    const char *func = argv[1];
    uint32_t w = (uint32_t)strtoul(argv[2], NULL, 10), h = (uint32_t)strtoul(argv[3], NULL, 10);
    uint32_t type = (uint32_t)strtoul(argv[4], NULL, 10);
    uint32_t need = w * h * 3 * (type >= IMG_RGB32F ? 4 : 1);
    uint32_t out_len = need;
    const char *variant = argc > 5 ? argv[5] : "";
    if (*variant >= '0' && *variant <= '9') out_len = (uint32_t)strtoul(variant, NULL, 10);

    uint32_t in_len;
    uint8_t *in = read_stdin(&in_len);
    uint8_t *out = calloc(out_len > need ? out_len : need, 1);
    if (!in || !out) return 70;
    const uint8_t *in_ptr = !strcmp(variant, "bad-in") ? (const uint8_t *)0xFFFFFF00u : in;
    uint8_t *out_ptr = !strcmp(variant, "bad-out") ? (uint8_t *)0xFFFFFF00u : out;

    int32_t err;
    if (!strcmp(func, "load_jpg")) err = img_load_jpg(in_ptr, in_len, w, h, type, out_ptr, out_len);
    else if (!strcmp(func, "load_png")) err = img_load_png(in_ptr, in_len, w, h, type, out_ptr, out_len);
    else err = img_load_image(in_ptr, in_len, w, h, type, out_ptr, out_len);

    uint32_t hash = 2166136261u; /* FNV-1a over the whole expected output */
    for (uint32_t i = 0; i < need; i++) hash = (hash ^ out[i]) * 16777619u;
    printf("errno %d\nhash %u\n", (int)err, (unsigned)hash);
    if (!strcmp(variant, "dump")) {
        printf("bytes ");
        for (uint32_t i = 0; i < need; i++) printf("%02x", out[i]);
        printf("\n");
    }
    return 0;
}
