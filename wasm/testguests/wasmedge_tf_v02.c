/*
 * wasmedge_tf_v02.c - a test guest that makes the host calls a Rust guest built
 * with the crate wasmedge_tensorflow_interface 0.2 makes (WasmEdge's legacy
 * ABI), in the crate's order, like the birds_v1 example:
 *
 *   wasmedge_tf_v02 MODEL IMAGE [INPUT OUTPUT [LAYOUT [SIZE]]]
 *
 * INPUT and OUTPUT are tensor names (default: the AIY birds model's), LAYOUT
 * the legacy image function's output (rgb8 | bgr8 | rgb32f | bgr32f, default
 * rgb8; the f32 ones are fed as [-1, 1], MobileNet's range), SIZE the square
 * input size (default 224). A PNG image goes through the png functions, any
 * other through the jpg ones. A model file ending in .pb is run as a
 * TensorFlow graph (the crate's ModelType::TensorFlow), so the guest imports
 * the wasmedge_tensorflow functions as crate 0.2 guests do. The output's
 * element type is the input's (u8 or f32).
 *
 * Prints what birds_v1 prints: "<top-1 index> : <score>" (score = max / 255
 * for a u8 output), "-1 : 0" for an empty output. Like the crate, it checks
 * no status.
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

typedef uint32_t (*image_loader)(const uint8_t *, uint32_t, uint32_t, uint32_t, void *);

static image_loader pick_loader(int png, const char *layout)
{
    if (strcmp(layout, "rgb8") == 0) {
        return png ? wasmedge_image_load_png_to_rgb8 : wasmedge_image_load_jpg_to_rgb8;
    }
    if (strcmp(layout, "bgr8") == 0) {
        return png ? wasmedge_image_load_png_to_bgr8 : wasmedge_image_load_jpg_to_bgr8;
    }
    if (strcmp(layout, "rgb32f") == 0) {
        return png ? wasmedge_image_load_png_to_rgb32f : wasmedge_image_load_jpg_to_rgb32f;
    }
    if (strcmp(layout, "bgr32f") == 0) {
        return png ? wasmedge_image_load_png_to_bgr32f : wasmedge_image_load_jpg_to_bgr32f;
    }
    return NULL;
}

/* Session::new(model, TensorFlowLite), add_input, run, get_output, drop. */
static uint8_t *run_tflite(const uint8_t *model, uint32_t model_len, const char *input,
                           const void *data, uint32_t data_len, const char *output,
                           uint32_t *out_len)
{
    uint8_t *model_copy = malloc(model_len); /* crate 0.2.1+ keeps its own copy */
    memcpy(model_copy, model, model_len);
    uint64_t session = wasmedge_tensorflowlite_create_session(model_copy, model_len);
    wasmedge_tensorflowlite_append_input(session, input, (uint32_t)strlen(input), data, data_len);
    wasmedge_tensorflowlite_run_session(session);
    uint64_t tensor = wasmedge_tensorflowlite_get_output_tensor(session, output, (uint32_t)strlen(output));
    uint32_t len = wasmedge_tensorflowlite_get_tensor_len(tensor);
    uint8_t *result = NULL;
    if (len > 0) {
        result = calloc(len, 1);
        wasmedge_tensorflowlite_get_tensor_data(tensor, result);
    }
    wasmedge_tensorflowlite_delete_session(session);
    free(model_copy);
    *out_len = len;
    return result;
}

/* The same through the TensorFlow functions; a name may carry ":index". */
static uint8_t *run_tf(const uint8_t *model, uint32_t model_len, const char *input, const void *data,
                       uint32_t data_len, uint32_t dtype, uint32_t size, const char *output,
                       uint32_t *out_len)
{
    const int64_t dims[4] = {1, size, size, 3};
    uint64_t session = wasmedge_tensorflow_create_session(model, model_len);
    wasmedge_tensorflow_append_input(session, input, (uint32_t)strlen(input), 0, dims, 4, dtype, data,
                                     data_len);
    wasmedge_tensorflow_append_output(session, output, (uint32_t)strlen(output), 0);
    wasmedge_tensorflow_run_session(session);
    uint64_t tensor = wasmedge_tensorflow_get_output_tensor(session, output, (uint32_t)strlen(output), 0);
    uint32_t len = wasmedge_tensorflow_get_tensor_len(tensor);
    uint8_t *result = NULL;
    if (len > 0) {
        result = calloc(len, 1);
        wasmedge_tensorflow_get_tensor_data(tensor, result);
    }
    wasmedge_tensorflow_clear_input(session);
    wasmedge_tensorflow_clear_output(session);
    wasmedge_tensorflow_delete_session(session);
    *out_len = len;
    return result;
}

int main(int argc, char **argv)
{
    if (argc != 3 && argc != 5 && argc != 6 && argc != 7) {
        fprintf(stderr, "usage: wasmedge_tf_v02 MODEL IMAGE [INPUT OUTPUT [LAYOUT [SIZE]]]\n");
        return 64;
    }
    const char *input = argc > 3 ? argv[3] : "module/hub_input/images_uint8";
    const char *output = argc > 4 ? argv[4] : "module/prediction";
    const char *layout = argc > 5 ? argv[5] : "rgb8";
    uint32_t size = argc > 6 ? (uint32_t)strtoul(argv[6], NULL, 10) : 224;
    int is_float = strstr(layout, "32f") != NULL;

    uint32_t model_len = 0, image_len = 0;
    uint8_t *model = read_file(argv[1], &model_len);
    uint8_t *image = read_file(argv[2], &image_len);
    image_loader load = pick_loader(is_png(image, image_len), layout);
    if (model == NULL || image == NULL || load == NULL || size == 0 || size > 4096) {
        fprintf(stderr, "wasmedge_tf_v02: bad arguments\n");
        return 64;
    }

    uint32_t values = size * size * 3;
    uint32_t pixel_bytes = values * (is_float ? 4 : 1);
    void *pixels = calloc(pixel_bytes, 1);
    load(image, image_len, size, size, pixels);
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
