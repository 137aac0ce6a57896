/*
 * nn_conformance.c - a test guest (WASI command) for the host's wasi-nn
 * functions (module `wasi_ephemeral_nn`, see wasi_nn.h).
 *
 *   nn_conformance --model-file PATH --preloaded NAME
 *
 * PATH is the birds model (uint8 [1,224,224,3] in, uint8 [1,965] out) as seen
 * through a preopened directory; NAME is the same model preloaded by the host
 * (--nn-preload). The guest runs a fixed list of named checks, each one
 * wasi-nn call on a success or an error path, and prints one line per check:
 *
 *   <check> <errno>
 *
 * and, for some successful checks, facts about the result:
 *
 *   <check>.<fact> <value>
 *
 * It never stops at a failing call. After the last check it prints `done` and
 * exits 0; tests/test_wasi_nn.py holds the expected value of every line.
 *
 * Out-of-bounds pointers are made by casting integers; the guest itself never
 * dereferences them, only passes them to the host.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "wasi_nn.h"

#define INPUT_BYTES (1u * 224u * 224u * 3u)
#define OUTPUT_BYTES 965u
#define OUT_BUFFER_BYTES 4096u

/* Far outside any wasm32 guest memory (the host caps memory well below 4 GiB). */
#define BAD_ADDR 0xFFFFFFF0u
#define BAD_PTR(type) ((type)(uintptr_t)BAD_ADDR)

#define UNKNOWN_HANDLE 999u
#define MINUS_ONE 0xFFFFFFFFu /* -1 as the host's i32 parameter */

static const uint32_t DIMS[4] = {1, 224, 224, 3};
static const uint32_t DIMS_RANK3[3] = {224, 224, 3};
static const uint32_t DIMS_RANK5[5] = {1, 1, 224, 224, 3};
static const uint32_t DIMS_TRANSPOSED[4] = {1, 3, 224, 224}; /* same byte size */

static uint8_t grey[INPUT_BYTES];       /* the input that is meant to be used */
static uint8_t zeros[INPUT_BYTES + 1];  /* the input of every rejected set_input */
static uint8_t out[OUT_BUFFER_BYTES];
static uint8_t out2[OUT_BUFFER_BYTES];

static const char GARBAGE[] = "this is not a TensorFlow Lite model, just some text bytes";

/* Prints `<name> <errno>` and passes the errno on. */
static int32_t check(const char *name, int32_t err)
{
    printf("%s %d\n", name, (int)err);
    return err;
}

static void fact(const char *name, const char *what, unsigned long value)
{
    printf("%s.%s %lu\n", name, what, value);
}

/* An address `back` bytes before the end of linear memory: any range starting
 * there that is longer than `back` runs off the end. Computed right before the
 * call it is used in, so that no memory.grow happens in between. */
static uintptr_t near_end(uint32_t back)
{
    return (uintptr_t)__builtin_wasm_memory_size(0) * 65536u - back;
}

static nn_tensor tensor(const uint32_t *dims, uint32_t rank, uint32_t type, const uint8_t *data,
                        uint32_t len)
{
    nn_tensor t = {dims, rank, type, data, len};
    return t;
}

static nn_graph_builder builder(const uint8_t *data, uint32_t len)
{
    nn_graph_builder b = {data, len};
    return b;
}

static uint32_t fnv1a(const uint8_t *data, uint32_t len)
{
    uint32_t hash = 2166136261u;
    for (uint32_t i = 0; i < len; i++) {
        hash = (hash ^ data[i]) * 16777619u;
    }
    return hash;
}

/* Index of the first largest byte. */
static uint32_t top1(const uint8_t *data, uint32_t len)
{
    uint32_t best = 0;
    for (uint32_t i = 1; i < len; i++) {
        if (data[i] > data[best]) {
            best = i;
        }
    }
    return best;
}

static int all_equal(const uint8_t *data, uint32_t len, uint8_t value)
{
    for (uint32_t i = 0; i < len; i++) {
        if (data[i] != value) {
            return 0;
        }
    }
    return 1;
}

static uint8_t *read_file(const char *path, uint32_t *len)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        return NULL;
    }
    uint8_t *data = NULL;
    long size = -1;
    if (fseek(f, 0, SEEK_END) == 0) {
        size = ftell(f);
    }
    if (size > 0 && fseek(f, 0, SEEK_SET) == 0) {
        data = malloc((size_t)size);
        if (data != NULL && fread(data, 1, (size_t)size, f) != (size_t)size) {
            free(data);
            data = NULL;
        }
    }
    fclose(f);
    *len = (uint32_t)size;
    return data;
}

/* --- load ----------------------------------------------------------------- */

static void load_checks(const uint8_t *model, uint32_t model_len, nn_graph *g0, nn_graph *g1)
{
    nn_graph_builder one[1] = {builder(model, model_len)};
    nn_graph_builder two[2] = {builder(model, model_len), builder(model, model_len)};
    nn_graph g = UNKNOWN_HANDLE;

    if (check("load_ok", nn_load(one, 1, NN_ENCODING_TENSORFLOWLITE, NN_TARGET_CPU, g0)) == 0) {
        fact("load_ok", "graph", *g0);
    }
    if (check("load_again_ok", nn_load(one, 1, NN_ENCODING_TENSORFLOWLITE, NN_TARGET_CPU, g1)) == 0) {
        fact("load_again_ok", "graph", *g1);
    }

    check("load_encoding_openvino", nn_load(one, 1, NN_ENCODING_OPENVINO, NN_TARGET_CPU, &g));
    check("load_encoding_tensorflow", nn_load(one, 1, NN_ENCODING_TENSORFLOW, NN_TARGET_CPU, &g));
    check("load_encoding_autodetect", nn_load(one, 1, NN_ENCODING_AUTODETECT, NN_TARGET_CPU, &g));
    check("load_encoding_99", nn_load(one, 1, 99, NN_TARGET_CPU, &g));
    check("load_encoding_minus1", nn_load(one, 1, MINUS_ONE, NN_TARGET_CPU, &g));

    check("load_target_gpu", nn_load(one, 1, NN_ENCODING_TENSORFLOWLITE, NN_TARGET_GPU, &g));
    check("load_target_tpu", nn_load(one, 1, NN_ENCODING_TENSORFLOWLITE, NN_TARGET_TPU, &g));
    check("load_target_3", nn_load(one, 1, NN_ENCODING_TENSORFLOWLITE, 3, &g));
    check("load_target_minus1", nn_load(one, 1, NN_ENCODING_TENSORFLOWLITE, MINUS_ONE, &g));

    check("load_builders_0", nn_load(one, 0, NN_ENCODING_TENSORFLOWLITE, NN_TARGET_CPU, &g));
    check("load_builders_2", nn_load(two, 2, NN_ENCODING_TENSORFLOWLITE, NN_TARGET_CPU, &g));
    check("load_builders_minus1",
          nn_load(one, MINUS_ONE, NN_ENCODING_TENSORFLOWLITE, NN_TARGET_CPU, &g));

    nn_graph_builder garbage[1] = {builder((const uint8_t *)GARBAGE, sizeof GARBAGE - 1)};
    check("load_garbage", nn_load(garbage, 1, NN_ENCODING_TENSORFLOWLITE, NN_TARGET_CPU, &g));
    nn_graph_builder truncated[1] = {builder(model, model_len < 1000 ? model_len : 1000)};
    check("load_truncated", nn_load(truncated, 1, NN_ENCODING_TENSORFLOWLITE, NN_TARGET_CPU, &g));
    nn_graph_builder empty[1] = {builder(model, 0)};
    check("load_empty", nn_load(empty, 1, NN_ENCODING_TENSORFLOWLITE, NN_TARGET_CPU, &g));

    check("load_builders_oob", nn_load(BAD_PTR(const nn_graph_builder *), 1,
                                       NN_ENCODING_TENSORFLOWLITE, NN_TARGET_CPU, &g));
    check("load_builders_partial_oob",
          nn_load((const nn_graph_builder *)near_end(4), 1, NN_ENCODING_TENSORFLOWLITE,
                  NN_TARGET_CPU, &g));
    nn_graph_builder bad_data[1] = {builder(BAD_PTR(const uint8_t *), 64)};
    check("load_builder_data_oob",
          nn_load(bad_data, 1, NN_ENCODING_TENSORFLOWLITE, NN_TARGET_CPU, &g));
    nn_graph_builder tail_data[1] = {builder((const uint8_t *)near_end(16), 64)};
    check("load_builder_data_partial_oob",
          nn_load(tail_data, 1, NN_ENCODING_TENSORFLOWLITE, NN_TARGET_CPU, &g));
    check("load_graph_out_oob",
          nn_load(one, 1, NN_ENCODING_TENSORFLOWLITE, NN_TARGET_CPU, BAD_PTR(nn_graph *)));
    check("load_graph_out_partial_oob", nn_load(one, 1, NN_ENCODING_TENSORFLOWLITE,
                                                NN_TARGET_CPU, (nn_graph *)near_end(2)));
}

/* --- load_by_name, load_by_name_with_config ------------------------------- */

static void load_by_name_checks(const char *name, nn_graph *named)
{
    uint32_t len = (uint32_t)strlen(name); /* excludes the NUL */
    nn_graph g = UNKNOWN_HANDLE;
    static const char UNKNOWN[] = "no-such-model";
    static const char NOT_UTF8[] = "\xff\xfe";
    static const char CONFIG[] = "{}";

    if (check("load_by_name_ok", nn_load_by_name(name, len, named)) == 0) {
        fact("load_by_name_ok", "graph", *named);
    }
    if (check("load_by_name_again_ok", nn_load_by_name(name, len, &g)) == 0) {
        fact("load_by_name_again_ok", "same_graph", g == *named);
    }
    check("load_by_name_unknown", nn_load_by_name(UNKNOWN, sizeof UNKNOWN - 1, &g));
    check("load_by_name_empty", nn_load_by_name(name, 0, &g));
    check("load_by_name_truncated", nn_load_by_name(name, len > 0 ? len - 1 : 0, &g));
    check("load_by_name_not_utf8", nn_load_by_name(NOT_UTF8, sizeof NOT_UTF8 - 1, &g));
    check("load_by_name_name_oob", nn_load_by_name(BAD_PTR(const char *), len, &g));
    check("load_by_name_graph_out_oob", nn_load_by_name(name, len, BAD_PTR(nn_graph *)));

    g = UNKNOWN_HANDLE;
    if (check("load_by_name_with_config_ok",
              nn_load_by_name_with_config(name, len, CONFIG, sizeof CONFIG - 1, &g)) == 0) {
        fact("load_by_name_with_config_ok", "same_graph", g == *named);
    }
    check("load_by_name_with_config_no_config",
          nn_load_by_name_with_config(name, len, NULL, 0, &g));
    check("load_by_name_with_config_unknown",
          nn_load_by_name_with_config(UNKNOWN, sizeof UNKNOWN - 1, CONFIG, sizeof CONFIG - 1, &g));
    check("load_by_name_with_config_name_oob",
          nn_load_by_name_with_config(BAD_PTR(const char *), len, CONFIG, sizeof CONFIG - 1, &g));
    check("load_by_name_with_config_config_oob",
          nn_load_by_name_with_config(name, len, BAD_PTR(const char *), 64, &g));
    check("load_by_name_with_config_graph_out_oob",
          nn_load_by_name_with_config(name, len, CONFIG, sizeof CONFIG - 1, BAD_PTR(nn_graph *)));
}

/* --- init_execution_context ----------------------------------------------- */

static void init_checks(nn_graph g0, nn_graph named, nn_context *c0, nn_context *c1)
{
    nn_context c = UNKNOWN_HANDLE;

    if (check("init_ok", nn_init_execution_context(g0, c0)) == 0) {
        fact("init_ok", "context", *c0);
    }
    check("init_unknown_graph", nn_init_execution_context(UNKNOWN_HANDLE, &c));
    check("init_graph_minus1", nn_init_execution_context(MINUS_ONE, &c));
    check("init_context_out_oob", nn_init_execution_context(g0, BAD_PTR(nn_context *)));
    /* The failed calls above must not have used up a context id. */
    if (check("init_preloaded_ok", nn_init_execution_context(named, c1)) == 0) {
        fact("init_preloaded_ok", "context", *c1);
    }
}

/* --- set_input ------------------------------------------------------------ */

static void set_input_checks(nn_context c0)
{
    nn_tensor t;

    /* The accepted type codes for a uint8 input, each with the grey image. */
    t = tensor(DIMS, 4, NN_TYPE_U8, grey, INPUT_BYTES);
    check("set_input_ok_u8", nn_set_input(c0, 0, &t));
    t = tensor(DIMS, 4, 2, grey, INPUT_BYTES); /* U8 in the old numbering */
    check("set_input_ok_u8_old_code", nn_set_input(c0, 0, &t));
    t = tensor(DIMS, 4, 0xFFFFFF03u, grey, INPUT_BYTES); /* only the low byte counts */
    check("set_input_ok_type_low_byte", nn_set_input(c0, 0, &t));
    t = tensor(DIMS, 4, 0xABCDEF02u, grey, INPUT_BYTES);
    check("set_input_ok_type_low_byte_old_code", nn_set_input(c0, 0, &t));

    /* Rejected calls pass zeros: were one taken anyway, the output would change. */
    t = tensor(DIMS, 4, NN_TYPE_F16, zeros, INPUT_BYTES);
    check("set_input_type_f16", nn_set_input(c0, 0, &t));
    t = tensor(DIMS, 4, NN_TYPE_F32, zeros, INPUT_BYTES);
    check("set_input_type_f32", nn_set_input(c0, 0, &t));
    t = tensor(DIMS, 4, NN_TYPE_I32, zeros, INPUT_BYTES);
    check("set_input_type_i32", nn_set_input(c0, 0, &t));
    t = tensor(DIMS, 4, NN_TYPE_I64, zeros, INPUT_BYTES);
    check("set_input_type_i64", nn_set_input(c0, 0, &t));
    t = tensor(DIMS, 4, 0x00000301u, zeros, INPUT_BYTES); /* low byte 1 = f32 */
    check("set_input_type_low_byte_f32", nn_set_input(c0, 0, &t));

    t = tensor(DIMS, 4, NN_TYPE_U8, zeros, INPUT_BYTES - 1);
    check("set_input_bytes_short", nn_set_input(c0, 0, &t));
    t = tensor(DIMS, 4, NN_TYPE_U8, zeros, INPUT_BYTES + 1);
    check("set_input_bytes_long", nn_set_input(c0, 0, &t));
    t = tensor(DIMS_RANK3, 3, NN_TYPE_U8, zeros, INPUT_BYTES);
    check("set_input_rank_3", nn_set_input(c0, 0, &t));
    t = tensor(DIMS_RANK5, 5, NN_TYPE_U8, zeros, INPUT_BYTES);
    check("set_input_rank_5", nn_set_input(c0, 0, &t));
    t = tensor(DIMS_TRANSPOSED, 4, NN_TYPE_U8, zeros, INPUT_BYTES);
    check("set_input_dims_transposed", nn_set_input(c0, 0, &t));

    t = tensor(DIMS, 4, NN_TYPE_U8, zeros, INPUT_BYTES);
    check("set_input_index_1", nn_set_input(c0, 1, &t));
    check("set_input_index_minus1", nn_set_input(c0, MINUS_ONE, &t));
    check("set_input_unknown_context", nn_set_input(UNKNOWN_HANDLE, 0, &t));
    check("set_input_context_minus1", nn_set_input(MINUS_ONE, 0, &t));

    check("set_input_tensor_oob", nn_set_input(c0, 0, BAD_PTR(const nn_tensor *)));
    check("set_input_tensor_partial_oob", nn_set_input(c0, 0, (const nn_tensor *)near_end(8)));
    t = tensor(BAD_PTR(const uint32_t *), 4, NN_TYPE_U8, zeros, INPUT_BYTES);
    check("set_input_dims_oob", nn_set_input(c0, 0, &t));
    t = tensor(DIMS, 4, NN_TYPE_U8, BAD_PTR(const uint8_t *), INPUT_BYTES);
    check("set_input_data_oob", nn_set_input(c0, 0, &t));
    t = tensor(DIMS, 4, NN_TYPE_U8, (const uint8_t *)near_end(1000), INPUT_BYTES);
    check("set_input_data_partial_oob", nn_set_input(c0, 0, &t));
}

/* --- compute, get_output -------------------------------------------------- */

static void compute_and_output_checks(nn_context c0)
{
    uint32_t written = 0;

    check("compute_ok", nn_compute(c0));
    check("compute_unknown_context", nn_compute(UNKNOWN_HANDLE));
    check("compute_context_minus1", nn_compute(MINUS_ONE));

    if (check("get_output_ok", nn_get_output(c0, 0, out, sizeof out, &written)) == 0) {
        fact("get_output_ok", "bytes_written", written);
        uint32_t n = written <= sizeof out ? written : sizeof out;
        fact("get_output_ok", "top1", top1(out, n));
        fact("get_output_ok", "fnv1a", fnv1a(out, n));
    }
    written = 0;
    if (check("get_output_exact_size", nn_get_output(c0, 0, out2, OUTPUT_BYTES, &written)) == 0) {
        fact("get_output_exact_size", "bytes_written", written);
        fact("get_output_exact_size", "same_output", memcmp(out, out2, OUTPUT_BYTES) == 0);
    }

    written = 0xDEADBEEFu;
    memset(out2, 0xAA, sizeof out2);
    check("get_output_small", nn_get_output(c0, 0, out2, OUTPUT_BYTES - 1, &written));
    fact("get_output_small", "bytes_written_untouched", written == 0xDEADBEEFu);
    fact("get_output_small", "buffer_untouched", all_equal(out2, sizeof out2, 0xAA));
    check("get_output_zero_size", nn_get_output(c0, 0, out2, 0, &written));

    check("get_output_index_1", nn_get_output(c0, 1, out2, sizeof out2, &written));
    check("get_output_index_minus1", nn_get_output(c0, MINUS_ONE, out2, sizeof out2, &written));
    check("get_output_unknown_context",
          nn_get_output(UNKNOWN_HANDLE, 0, out2, sizeof out2, &written));
    check("get_output_context_minus1", nn_get_output(MINUS_ONE, 0, out2, sizeof out2, &written));
    check("get_output_out_oob",
          nn_get_output(c0, 0, BAD_PTR(uint8_t *), OUTPUT_BYTES, &written));
    check("get_output_out_partial_oob",
          nn_get_output(c0, 0, (uint8_t *)near_end(100), OUTPUT_BYTES, &written));
    check("get_output_bytes_written_oob",
          nn_get_output(c0, 0, out2, sizeof out2, BAD_PTR(uint32_t *)));
}

/* --- the preloaded graph's context, then finalize ------------------------- */

static void preloaded_and_finalize_checks(nn_context c0, nn_context c1)
{
    uint32_t written = 0;
    nn_tensor t = tensor(DIMS, 4, NN_TYPE_U8, grey, INPUT_BYTES);

    check("compute_before_set_input", nn_compute(c1));
    check("set_input_preloaded_ok", nn_set_input(c1, 0, &t));
    check("compute_preloaded_ok", nn_compute(c1));
    memset(out2, 0, sizeof out2);
    if (check("get_output_preloaded_ok", nn_get_output(c1, 0, out2, sizeof out2, &written)) == 0) {
        fact("get_output_preloaded_ok", "same_output",
             written == OUTPUT_BYTES && memcmp(out, out2, OUTPUT_BYTES) == 0);
    }

    check("finalize_ok", nn_finalize_execution_context(c1));
    check("finalize_again", nn_finalize_execution_context(c1));
    check("finalize_unknown", nn_finalize_execution_context(UNKNOWN_HANDLE));
    check("finalize_minus1", nn_finalize_execution_context(MINUS_ONE));
    check("set_input_finalized", nn_set_input(c1, 0, &t));
    check("compute_finalized", nn_compute(c1));
    check("get_output_finalized", nn_get_output(c1, 0, out2, sizeof out2, &written));
    /* Other contexts are unaffected. */
    check("compute_other_context_ok", nn_compute(c0));
}

/* --- unload --------------------------------------------------------------- */

static void unload_checks(nn_graph g0, nn_graph g1)
{
    nn_context c = UNKNOWN_HANDLE;

    check("unload_ok", nn_unload(g1));
    check("unload_again", nn_unload(g1));
    check("unload_unknown", nn_unload(UNKNOWN_HANDLE));
    check("unload_minus1", nn_unload(MINUS_ONE));
    check("init_unloaded_graph", nn_init_execution_context(g1, &c));
    /* Other graphs are unaffected. */
    check("init_other_graph_ok", nn_init_execution_context(g0, &c));
}

int main(int argc, char **argv)
{
    const char *model_path = NULL;
    const char *preloaded = NULL;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--model-file") == 0) {
            model_path = argv[i + 1];
        } else if (strcmp(argv[i], "--preloaded") == 0) {
            preloaded = argv[i + 1];
        } else {
            model_path = NULL;
            break;
        }
    }
    if (model_path == NULL || preloaded == NULL || argc != 5) {
        fprintf(stderr, "usage: nn_conformance --model-file PATH --preloaded NAME\n");
        return 64;
    }

    uint32_t model_len = 0;
    uint8_t *model = read_file(model_path, &model_len);
    if (model == NULL) {
        fprintf(stderr, "nn_conformance: cannot read %s\n", model_path);
        return 66;
    }

    /* Line-buffered, so a trap still leaves every line printed before it. */
    setvbuf(stdout, NULL, _IOLBF, 0);
    memset(grey, 128, sizeof grey);

    nn_graph g0 = UNKNOWN_HANDLE, g1 = UNKNOWN_HANDLE, named = UNKNOWN_HANDLE;
    nn_context c0 = UNKNOWN_HANDLE, c1 = UNKNOWN_HANDLE;

    load_checks(model, model_len, &g0, &g1);
    load_by_name_checks(preloaded, &named);
    init_checks(g0, named, &c0, &c1);
    set_input_checks(c0);
    compute_and_output_checks(c0);
    preloaded_and_finalize_checks(c0, c1);
    unload_checks(g0, g1);

    free(model);
    printf("done\n");
    return 0;
}
