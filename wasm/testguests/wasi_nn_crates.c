/*
 * wasi_nn_crates.c - a test guest that makes the wasi-nn calls (module
 * wasi_ephemeral_nn, witx ABI) of a Rust guest built with the wasi-nn crate
 * 0.4, 0.5 or 0.6, like WasmEdge's tflite-birds example:
 *
 *   wasi_nn_crates CRATE MODEL IMAGE [ELEMENT [PRELOADED]]
 *
 * CRATE is 0.4 | 0.5 | 0.6; the crates differ in the tensor-type code they
 * send for u8 (2 up to 0.5, 3 from 0.6; f32 is 1 in all). ELEMENT is the
 * model's input and output element type, u8 (default) or f32 (fed as [-1, 1]).
 * With PRELOADED (crate >= 0.5: GraphBuilder::build_from_cache) the graph is
 * the host's preloaded model of that name (load_by_name) and MODEL is not read.
 * The image is decoded and resized to 224x224 by the host (wasmedge_image).
 *
 * The calls: load (one builder, TensorflowLite, CPU) or load_by_name,
 * init_execution_context, set_input(0, [1,224,224,3]), compute,
 * get_output(0). Like the examples, it unwraps every result (an errno prints
 * a panic and aborts). Prints one JSON line, e.g.
 *   {"crate":"0.4","tensor_type":2,"graph":0,"context":0,"bytes":965,"index":166,"score":0.72941178}
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "replay_common.h"
#include "wasi_nn.h"
#include "wasmedge_image.h"

#define SIZE 224u
#define OUTPUT_MAX_BYTES (1u << 16)

static void unwrap(int32_t err, const char *what)
{
    if (err != 0) {
        fprintf(stderr,
                "thread 'main' panicked at %s: called `Result::unwrap()` on an `Err` value: "
                "BackendError(%d)\n",
                what, (int)err);
        abort();
    }
}

int main(int argc, char **argv)
{
    if (argc < 4 || argc > 6) {
        fprintf(stderr, "usage: wasi_nn_crates 0.4|0.5|0.6 MODEL IMAGE [u8|f32 [PRELOADED]]\n");
        return 64;
    }
    const char *crate = argv[1];
    int is_float = argc > 4 && strcmp(argv[4], "f32") == 0;
    const char *preloaded = argc > 5 ? argv[5] : NULL;
    uint32_t tensor_type;
    if (is_float) {
        tensor_type = 1; /* F32 in every numbering */
    } else if (strcmp(crate, "0.4") == 0 || strcmp(crate, "0.5") == 0) {
        tensor_type = 2; /* U8 before the renumbering */
    } else if (strcmp(crate, "0.6") == 0) {
        tensor_type = 3; /* U8 = NN_TYPE_U8 */
    } else {
        fprintf(stderr, "wasi_nn_crates: unknown crate version %s\n", crate);
        return 64;
    }
    if (preloaded != NULL && strcmp(crate, "0.4") == 0) {
        fprintf(stderr, "wasi_nn_crates: crate 0.4 has no build_from_cache\n");
        return 64;
    }

    uint32_t image_len = 0;
    uint8_t *image = read_file(argv[3], &image_len);
    if (image == NULL) {
        return 66;
    }
    uint32_t values = SIZE * SIZE * 3;
    uint32_t input_bytes = values * (is_float ? 4 : 1);
    void *pixels = calloc(input_bytes, 1);
    uint32_t pixel_type = is_float ? IMG_RGB32F : IMG_RGB8;
    if (is_png(image, image_len)) {
        unwrap(img_load_png(image, image_len, SIZE, SIZE, pixel_type, pixels, input_bytes), "load_png");
    } else {
        unwrap(img_load_jpg(image, image_len, SIZE, SIZE, pixel_type, pixels, input_bytes), "load_jpg");
    }
    if (is_float) {
        to_signed_unit(pixels, values);
    }

    nn_graph graph = 0; /* the crates zero their out-slots before each call */
    if (preloaded != NULL) {
        unwrap(nn_load_by_name(preloaded, (uint32_t)strlen(preloaded), &graph), "load_by_name");
    } else {
        uint32_t model_len = 0;
        uint8_t *model = read_file(argv[2], &model_len);
        if (model == NULL) {
            return 66;
        }
        nn_graph_builder builders[1] = {{model, model_len}};
        unwrap(nn_load(builders, 1, NN_ENCODING_TENSORFLOWLITE, NN_TARGET_CPU, &graph), "load");
    }
    nn_context context = 0;
    unwrap(nn_init_execution_context(graph, &context), "init_execution_context");
    static const uint32_t DIMS[4] = {1, SIZE, SIZE, 3};
    nn_tensor tensor = {DIMS, 4, tensor_type, pixels, input_bytes};
    unwrap(nn_set_input(context, 0, &tensor), "set_input");
    unwrap(nn_compute(context), "compute");
    uint8_t *output = calloc(OUTPUT_MAX_BYTES, 1);
    uint32_t written = 0;
    unwrap(nn_get_output(context, 0, output, OUTPUT_MAX_BYTES, &written), "get_output");

    int32_t index;
    float score;
    if (is_float) {
        top1_f32((const float *)output, written / 4, &index, &score);
    } else {
        top1_u8(output, written, &index, &score);
    }
    char text[32];
    format_f32(score, text, sizeof text);
    printf("{\"crate\":\"%s\",\"tensor_type\":%u,\"graph\":%u,\"context\":%u,\"bytes\":%u,"
           "\"index\":%d,\"score\":%s}\n",
           crate, tensor_type, graph, context, written, (int)index, text);
    return 0;
}
