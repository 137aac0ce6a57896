/*
 * gather_probe.c - a test guest for what the host does when inference itself
 * fails, and for its per-run limits on sessions, through each NN ABI:
 *
 *   gather_probe ABI MODEL INDEX SESSIONS
 *
 * ABI is nn (wasi-nn: one load, SESSIONS init_execution_context), legacy
 * (wasmedge_tensorflowlite_*, SESSIONS create_session) or plugin (the
 * unprefixed TFLite functions, SESSIONS create_session). MODEL is a GATHER of
 * constants: input "index" (int32 [1]), output "value" (float32 [1]); an INDEX
 * past the constants makes TfLiteInterpreterInvoke fail.
 *
 * Prints "open I R" for each session (R: the errno; legacy: 1 for a handle, 0
 * for none), then on the first session sets the index, runs it and prints
 * "run R" (the errno; legacy: run_session's 0 ok / 1 failed) and, when it ran,
 * "value V". Ends with "done".
 *
 * ABI tf-legacy first calls the TensorFlow module's create_session twice on
 * MODEL (printing "tf_session H" each time), then runs like legacy.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "replay_common.h"
#include "wasi_nn.h"
#include "wasmedge_tensorflow.h"
#include "wasmedge_tensorflowlite.h"

#define MAX_SESSIONS 64

static const char INPUT[] = "index";
static const char OUTPUT[] = "value";

static int run_nn(const uint8_t *model, uint32_t len, int32_t index, int sessions)
{
    nn_graph_builder builder = {model, len};
    nn_graph graph = 0;
    int32_t err = nn_load(&builder, 1, NN_ENCODING_TENSORFLOWLITE, NN_TARGET_CPU, &graph);
    printf("load %d\n", (int)err);
    nn_context contexts[MAX_SESSIONS];
    for (int i = 0; i < sessions; i++) {
        printf("open %d %d\n", i, (int)nn_init_execution_context(graph, &contexts[i]));
    }
    static const uint32_t DIMS[1] = {1};
    nn_tensor tensor = {DIMS, 1, NN_TYPE_I32, (const uint8_t *)&index, sizeof index};
    nn_set_input(contexts[0], 0, &tensor);
    err = nn_compute(contexts[0]);
    printf("run %d\n", (int)err);
    if (err == 0) {
        float value = 0;
        uint32_t written = 0;
        nn_get_output(contexts[0], 0, (uint8_t *)&value, sizeof value, &written);
        printf("value %g\n", (double)value);
    }
    return 0;
}

static int run_legacy(const uint8_t *model, uint32_t len, int32_t index, int sessions)
{
    tflite_legacy_handle handles[MAX_SESSIONS];
    for (int i = 0; i < sessions; i++) {
        handles[i] = wasmedge_tensorflowlite_create_session(model, len);
        printf("open %d %d\n", i, handles[i] != 0);
    }
    wasmedge_tensorflowlite_append_input(handles[0], INPUT, sizeof INPUT - 1, &index, sizeof index);
    uint32_t failed = wasmedge_tensorflowlite_run_session(handles[0]);
    printf("run %u\n", failed);
    if (failed == 0) {
        float value = 0;
        tflite_legacy_handle tensor =
            wasmedge_tensorflowlite_get_output_tensor(handles[0], OUTPUT, sizeof OUTPUT - 1);
        wasmedge_tensorflowlite_get_tensor_data(tensor, &value);
        printf("value %g\n", (double)value);
    }
    return 0;
}

static int run_plugin(const uint8_t *model, uint32_t len, int32_t index, int sessions)
{
    uint32_t ids[MAX_SESSIONS];
    for (int i = 0; i < sessions; i++) {
        printf("open %d %d\n", i, (int)tflite_create_session(model, len, &ids[i]));
    }
    tflite_append_input(ids[0], INPUT, sizeof INPUT - 1, &index, sizeof index);
    int32_t err = tflite_run_session(ids[0]);
    printf("run %d\n", (int)err);
    if (err == 0) {
        float value = 0;
        uint32_t tensor = 0, written = 0;
        tflite_get_output_tensor(ids[0], OUTPUT, sizeof OUTPUT - 1, &tensor);
        tflite_get_tensor_data(ids[0], tensor, &value, sizeof value, &written);
        printf("value %g\n", (double)value);
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: gather_probe nn|legacy|plugin|tf-legacy MODEL INDEX SESSIONS\n");
        return 2;
    }
    int sessions = atoi(argv[4]);
    if (sessions < 1 || sessions > MAX_SESSIONS) {
        fprintf(stderr, "SESSIONS: 1 to %d\n", MAX_SESSIONS);
        return 2;
    }
    uint32_t len = 0;
    uint8_t *model = read_file(argv[2], &len);
    if (model == NULL) {
        return 66;
    }
    int32_t index = (int32_t)atoi(argv[3]);
    int code = 2;
    if (strcmp(argv[1], "nn") == 0) {
        code = run_nn(model, len, index, sessions);
    } else if (strcmp(argv[1], "legacy") == 0) {
        code = run_legacy(model, len, index, sessions);
    } else if (strcmp(argv[1], "tf-legacy") == 0) {
        for (int i = 0; i < 2; i++) {
            printf("tf_session %llu\n", (unsigned long long)wasmedge_tensorflow_create_session(model, len));
        }
        code = run_legacy(model, len, index, sessions);
    } else if (strcmp(argv[1], "plugin") == 0) {
        code = run_plugin(model, len, index, sessions);
    } else {
        fprintf(stderr, "unknown ABI %s\n", argv[1]);
    }
    free(model);
    printf("done\n");
    return code;
}
