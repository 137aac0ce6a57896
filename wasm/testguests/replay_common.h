/*
 * replay_common.h - helpers shared by the test guests that replay what guests
 * built for WasmEdge do (wasmedge_tf_v02.c, wasmedge_tf_v03.c,
 * wasi_nn_crates.c, legacy_probe.c): reading files, picking the top class,
 * and printing a score the way Rust prints an f32.
 */
#ifndef REPLAY_COMMON_H
#define REPLAY_COMMON_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The whole file, or NULL (errors on stderr). */
static inline uint8_t *read_file(const char *path, uint32_t *len)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        fprintf(stderr, "cannot open %s\n", path);
        return NULL;
    }
    size_t cap = 1 << 16, n = 0, got;
    uint8_t *data = malloc(cap);
    while (data != NULL && (got = fread(data + n, 1, cap - n, f)) > 0) {
        n += got;
        if (n == cap) {
            cap *= 2;
            uint8_t *bigger = realloc(data, cap);
            if (bigger == NULL) {
                free(data);
            }
            data = bigger;
        }
    }
    fclose(f);
    *len = (uint32_t)n;
    return data;
}

static inline int is_png(const uint8_t *data, uint32_t len)
{
    static const uint8_t SIGNATURE[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    return len >= 8 && memcmp(data, SIGNATURE, 8) == 0;
}

static inline int ends_with(const char *text, const char *suffix)
{
    size_t n = strlen(text), m = strlen(suffix);
    return n >= m && strcmp(text + n - m, suffix) == 0;
}

/* An f32 in the shortest form that reads back the same, as Rust's `{}` prints
 * the scores these guests print (e.g. 0.87058824). */
static inline void format_f32(float value, char *out, size_t out_len)
{
    for (int digits = 1; digits <= 9; digits++) {
        snprintf(out, out_len, "%.*g", digits, (double)value);
        if (strtof(out, NULL) == value) {
            return;
        }
    }
}

/* The first largest element, by the birds example's rule (strictly greater,
 * starting from index -1 and value 0); the score of a u8 output is max / 255. */
static inline void top1_u8(const uint8_t *data, uint32_t len, int32_t *index, float *score)
{
    uint8_t best = 0;
    *index = -1;
    for (uint32_t i = 0; i < len; i++) {
        if (data[i] > best) {
            best = data[i];
            *index = (int32_t)i;
        }
    }
    *score = (float)best / 255.0f;
}

static inline void top1_f32(const float *data, uint32_t count, int32_t *index, float *score)
{
    float best = 0.0f;
    *index = -1;
    for (uint32_t i = 0; i < count; i++) {
        if (data[i] > best) {
            best = data[i];
            *index = (int32_t)i;
        }
    }
    *score = best;
}

/* MobileNet's float input range: the image functions give [0, 1], the model
 * wants [-1, 1]. */
static inline void to_signed_unit(float *values, uint32_t count)
{
    for (uint32_t i = 0; i < count; i++) {
        values[i] = values[i] * 2.0f - 1.0f;
    }
}

#endif
