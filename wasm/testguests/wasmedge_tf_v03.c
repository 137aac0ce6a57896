/*
 * wasmedge_tf_v03.c - a test guest that makes the host calls a Rust guest built
 * with the crate wasmedge_tensorflow_interface 0.3 makes: WasmEdge's plugin
 * ABI (unprefixed functions returning errnos, module wasmedge_tensorflowlite,
 * or wasmedge_tensorflow for a TensorFlow graph) and the image plugin's
 * load_jpg / load_png.
 *
 *   wasmedge_tf_v03 MODEL IMAGE [INPUT OUTPUT [LAYOUT [SIZE]]]
 *   wasmedge_tf_v03 --checks MODEL
 *
 * The first form takes the arguments of wasmedge_tf_v02.c and prints the same
 * "<top-1 index> : <score>" line. Like the crate, it unwraps every result: an
 * errno prints a panic message on stderr and aborts (a trap).
 *
 * The second runs the plugin ABI's success and error paths on MODEL (the AIY
 * birds model: input "module/hub_input/images_uint8" of 150528 bytes, output
 * "module/prediction" of 965) and prints "<check> <errno>" and some
 * "<check>.<fact> <value>" lines, then "done"; tests/test_legacy_abis.py holds
 * the expected values.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "replay_common.h"
#include "wasmedge_image.h"
#include "wasmedge_tensorflow.h"
#include "wasmedge_tensorflowlite.h"

enum { TF_FLOAT = 1, TF_UINT8 = 4 }; /* TF_DataType codes the crate sends */

static const char *const ERRNO_NAMES[] = {"SUCCESS",        "INVALID_ARGUMENT", "INVALID_ENCODING",
                                          "MISSING_MEMORY", "BUSY",             "RUNTIME_ERROR"};

/* Result::unwrap() on an Err: Rust prints the panic, then aborts. */
static void unwrap(int32_t err, const char *what)
{
    if (err != 0) {
        const char *name = err > 0 && err < 6 ? ERRNO_NAMES[err] : "UNKNOWN";
        fprintf(stderr,
                "thread 'main' panicked at %s: called `Result::unwrap()` on an `Err` value: "
                "%s (error %d)\n",
                what, name, (int)err);
        abort();
    }
}

static uint8_t *run_tflite(const uint8_t *model, uint32_t model_len, const char *input,
                           const void *data, uint32_t data_len, const char *output,
                           uint32_t *out_len)
{
    uint8_t *model_copy = malloc(model_len); /* TFLiteSession::new copies the buffer */
    memcpy(model_copy, model, model_len);
    uint32_t session = 0, tensor = 0, len = 0, written = 0;
    unwrap(tflite_create_session(model_copy, model_len, &session), "create_session");
    unwrap(tflite_append_input(session, input, (uint32_t)strlen(input), data, data_len), "append_input");
    unwrap(tflite_run_session(session), "run_session");
    unwrap(tflite_get_output_tensor(session, output, (uint32_t)strlen(output), &tensor),
           "get_output_tensor");
    unwrap(tflite_get_tensor_len(session, tensor, &len), "get_tensor_len");
    uint8_t *result = NULL;
    if (len > 0) {
        result = calloc(len, 1);
        unwrap(tflite_get_tensor_data(session, tensor, result, len, &written), "get_tensor_data");
    }
    unwrap(tflite_delete_session(session), "delete_session");
    free(model_copy);
    *out_len = len;
    return result;
}

static uint8_t *run_tf(const uint8_t *model, uint32_t model_len, const char *input, const void *data,
                       uint32_t data_len, uint32_t dtype, uint32_t size, const char *output,
                       uint32_t *out_len)
{
    const int64_t dims[4] = {1, size, size, 3};
    uint32_t session = 0, tensor = 0, len = 0, written = 0;
    unwrap(tf_create_session(model, model_len, &session), "create_session");
    unwrap(tf_append_input(session, input, (uint32_t)strlen(input), dims, 4, dtype, data, data_len),
           "append_input");
    unwrap(tf_append_output(session, output, (uint32_t)strlen(output)), "append_output");
    unwrap(tf_run_session(session), "run_session");
    unwrap(tf_get_output_tensor(session, output, (uint32_t)strlen(output), &tensor), "get_output_tensor");
    unwrap(tf_get_tensor_len(session, tensor, &len), "get_tensor_len");
    uint8_t *result = NULL;
    if (len > 0) {
        result = calloc(len, 1);
        unwrap(tf_get_tensor_data(session, tensor, result, len, &written), "get_tensor_data");
    }
    unwrap(tf_clear_input(session), "clear_input");
    unwrap(tf_clear_output(session), "clear_output");
    unwrap(tf_delete_session(session), "delete_session");
    *out_len = len;
    return result;
}

static int run(int argc, char **argv)
{
    const char *input = argc > 3 ? argv[3] : "module/hub_input/images_uint8";
    const char *output = argc > 4 ? argv[4] : "module/prediction";
    const char *layout = argc > 5 ? argv[5] : "rgb8";
    uint32_t size = argc > 6 ? (uint32_t)strtoul(argv[6], NULL, 10) : 224;
    static const char *const LAYOUTS[] = {"rgb8", "bgr8", "rgb32f", "bgr32f"};
    uint32_t out_type = 4;
    for (uint32_t i = 0; i < 4; i++) {
        if (strcmp(layout, LAYOUTS[i]) == 0) {
            out_type = i;
        }
    }
    int is_float = out_type >= IMG_RGB32F;

    uint32_t model_len = 0, image_len = 0;
    uint8_t *model = read_file(argv[1], &model_len);
    uint8_t *image = read_file(argv[2], &image_len);
    if (model == NULL || image == NULL || out_type == 4 || size == 0 || size > 4096) {
        fprintf(stderr, "wasmedge_tf_v03: bad arguments\n");
        return 64;
    }

    uint32_t values = size * size * 3;
    uint32_t pixel_bytes = values * (is_float ? 4 : 1);
    void *pixels = calloc(pixel_bytes, 1);
    if (is_png(image, image_len)) {
        unwrap(img_load_png(image, image_len, size, size, out_type, pixels, pixel_bytes), "load_png");
    } else {
        unwrap(img_load_jpg(image, image_len, size, size, out_type, pixels, pixel_bytes), "load_jpg");
    }
    if (is_float) {
        to_signed_unit(pixels, values);
    }

    uint32_t result_len = 0;
    uint8_t *result =
        ends_with(argv[1], ".pb")
            ? run_tf(model, model_len, input, pixels, pixel_bytes, is_float ? TF_FLOAT : TF_UINT8, size,
                     output, &result_len)
            : run_tflite(model, model_len, input, pixels, pixel_bytes, output, &result_len);

    int32_t index;
    float score;
    if (is_float) {
        top1_f32((const float *)result, result_len / 4, &index, &score);
    } else {
        top1_u8(result, result_len, &index, &score);
    }
    char text[32];
    format_f32(score, text, sizeof text);
    printf("%d : %s\n", (int)index, text);
    return 0;
}

/* --- the plugin ABI's paths -------------------------------------------------- */

#define INPUT_NAME "module/hub_input/images_uint8"
#define OUTPUT_NAME "module/prediction"
#define INPUT_BYTES (224u * 224u * 3u)
#define OUTPUT_BYTES 965u
#define UNKNOWN 999u

/* Far outside any wasm32 guest memory the host allows. */
#define BAD_ADDR 0xFFFFFFF0u
#define BAD_PTR(type) ((type)(uintptr_t)BAD_ADDR)

static uint8_t grey[INPUT_BYTES];
static uint8_t out[OUTPUT_BYTES + 16];

static int32_t check(const char *name, int32_t err)
{
    printf("%s %d\n", name, (int)err);
    return err;
}

static void fact(const char *name, const char *what, unsigned long value)
{
    printf("%s.%s %lu\n", name, what, value);
}

/* An address `back` bytes before the end of linear memory. */
static uintptr_t near_end(uint32_t back)
{
    return (uintptr_t)__builtin_wasm_memory_size(0) * 65536u - back;
}

static int checks(const char *model_path)
{
    uint32_t model_len = 0;
    uint8_t *model = read_file(model_path, &model_len);
    if (model == NULL) {
        return 66;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    memset(grey, 128, sizeof grey);
    static const char GARBAGE[] = "not a model";
    uint32_t s0 = UNKNOWN, s1 = UNKNOWN, s = UNKNOWN, t = UNKNOWN, len = 0, written = 0;

    if (check("create_ok", tflite_create_session(model, model_len, &s0)) == 0) {
        fact("create_ok", "session", s0);
    }
    if (check("create_second_ok", tflite_create_session(model, model_len, &s1)) == 0) {
        fact("create_second_ok", "session", s1);
    }
    check("create_garbage", tflite_create_session((const uint8_t *)GARBAGE, sizeof GARBAGE, &s));
    check("create_model_oob", tflite_create_session(BAD_PTR(const uint8_t *), 64, &s));
    check("create_model_partial_oob", tflite_create_session((const uint8_t *)near_end(10), 64, &s));
    check("create_out_oob", tflite_create_session(model, model_len, BAD_PTR(uint32_t *)));

    check("append_ok", tflite_append_input(s0, INPUT_NAME, strlen(INPUT_NAME), grey, INPUT_BYTES));
    check("append_unknown_session",
          tflite_append_input(UNKNOWN, INPUT_NAME, strlen(INPUT_NAME), grey, INPUT_BYTES));
    check("append_unknown_name", tflite_append_input(s0, "images", 6, grey, INPUT_BYTES));
    check("append_name_with_nul",
          tflite_append_input(s0, INPUT_NAME, strlen(INPUT_NAME) + 1, grey, INPUT_BYTES));
    check("append_short", tflite_append_input(s0, INPUT_NAME, strlen(INPUT_NAME), grey, INPUT_BYTES - 1));
    check("append_data_oob", tflite_append_input(s0, INPUT_NAME, strlen(INPUT_NAME),
                                                 BAD_PTR(const uint8_t *), INPUT_BYTES));
    check("append_name_oob", tflite_append_input(s0, BAD_PTR(const char *), 8, grey, INPUT_BYTES));

    check("run_ok", tflite_run_session(s0));
    check("run_unknown_session", tflite_run_session(UNKNOWN));

    if (check("output_ok", tflite_get_output_tensor(s0, OUTPUT_NAME, strlen(OUTPUT_NAME), &t)) == 0) {
        fact("output_ok", "tensor", t);
    }
    check("output_unknown_name", tflite_get_output_tensor(s0, "prediction", 10, &s));
    check("output_input_name", tflite_get_output_tensor(s0, INPUT_NAME, strlen(INPUT_NAME), &s));
    check("output_unknown_session",
          tflite_get_output_tensor(UNKNOWN, OUTPUT_NAME, strlen(OUTPUT_NAME), &s));
    check("output_name_oob", tflite_get_output_tensor(s0, BAD_PTR(const char *), 8, &s));
    check("output_out_oob",
          tflite_get_output_tensor(s0, OUTPUT_NAME, strlen(OUTPUT_NAME), BAD_PTR(uint32_t *)));

    if (check("len_ok", tflite_get_tensor_len(s0, t, &len)) == 0) {
        fact("len_ok", "bytes", len);
    }
    check("len_unknown_tensor", tflite_get_tensor_len(s0, 1, &len));
    check("len_unknown_session", tflite_get_tensor_len(UNKNOWN, t, &len));
    check("len_out_oob", tflite_get_tensor_len(s0, t, BAD_PTR(uint32_t *)));

    if (check("data_ok", tflite_get_tensor_data(s0, t, out, OUTPUT_BYTES, &written)) == 0) {
        fact("data_ok", "written", written);
        int32_t index;
        float score;
        top1_u8(out, OUTPUT_BYTES, &index, &score);
        fact("data_ok", "top1", (unsigned long)index);
        fact("data_ok", "top1_raw", (unsigned long)out[index]);
    }
    written = 12345;
    check("data_small", tflite_get_tensor_data(s0, t, out, OUTPUT_BYTES - 1, &written));
    fact("data_small", "written", written);
    check("data_large", tflite_get_tensor_data(s0, t, out, OUTPUT_BYTES + 16, &written));
    check("data_unknown_tensor", tflite_get_tensor_data(s0, 1, out, OUTPUT_BYTES, &written));
    check("data_unknown_session", tflite_get_tensor_data(UNKNOWN, t, out, OUTPUT_BYTES, &written));
    check("data_buf_oob", tflite_get_tensor_data(s0, t, BAD_PTR(uint8_t *), OUTPUT_BYTES, &written));
    check("data_buf_partial_oob",
          tflite_get_tensor_data(s0, t, (uint8_t *)near_end(100), OUTPUT_BYTES, &written));
    check("data_written_oob", tflite_get_tensor_data(s0, t, out, OUTPUT_BYTES, BAD_PTR(uint32_t *)));

    check("delete_ok", tflite_delete_session(s0));
    check("delete_again", tflite_delete_session(s0));
    check("delete_unknown", tflite_delete_session(UNKNOWN));
    check("run_deleted", tflite_run_session(s0));
    check("run_other_session_ok", tflite_run_session(s1));
    if (check("create_after_delete_ok", tflite_create_session(model, model_len, &s)) == 0) {
        fact("create_after_delete_ok", "session", s); /* the freed id, as WasmEdge */
    }
    printf("done\n");
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "--checks") == 0) {
        return checks(argv[2]);
    }
    if (argc != 3 && argc != 5 && argc != 6 && argc != 7) {
        fprintf(stderr, "usage: wasmedge_tf_v03 MODEL IMAGE [INPUT OUTPUT [LAYOUT [SIZE]]]\n"
                        "       wasmedge_tf_v03 --checks MODEL\n");
        return 64;
    }
    return run(argc, argv);
}
