/*
 * wasi_nn.h - the witx ("preview1") wasi-nn ABI, module `wasi_ephemeral_nn`,
 * as this service's host implements it (backend: TensorFlow Lite via LiteRT).
 *
 * Layouts and codes follow the witx spec and the wasi-nn Rust crate 0.6, which
 * is what WasmEdge >= 0.15 expects. The host also accepts the older tensor-type
 * numbering (crate <= 0.5: U8 = 2, I32 = 3) by resolving the code against the
 * model's input dtype, so guests built either way run unmodified.
 */
#ifndef CLASSIFIER_WASI_NN_H
#define CLASSIFIER_WASI_NN_H

#include <stdint.h>

#define WASI_NN_IMPORT(name) \
    __attribute__((import_module("wasi_ephemeral_nn"), import_name(name)))

typedef uint32_t nn_graph;   /* handles start at 0, per request */
typedef uint32_t nn_context; /* separate counter, also from 0   */

/* nn_errno: every function returns one (0 = success). */
enum {
    NN_SUCCESS = 0,
    NN_INVALID_ARGUMENT = 1,
    NN_INVALID_ENCODING = 2,
    NN_MISSING_MEMORY = 3,
    NN_BUSY = 4,
    NN_RUNTIME_ERROR = 5,
    NN_UNSUPPORTED_OPERATION = 6,
    NN_TOO_LARGE = 7,
    NN_NOT_FOUND = 8,
};

/* graph_encoding */
enum {
    NN_ENCODING_OPENVINO = 0,
    NN_ENCODING_ONNX = 1,
    NN_ENCODING_TENSORFLOW = 2,
    NN_ENCODING_PYTORCH = 3,
    NN_ENCODING_TENSORFLOWLITE = 4,
    NN_ENCODING_AUTODETECT = 5,
};

/* execution_target */
enum { NN_TARGET_CPU = 0, NN_TARGET_GPU = 1, NN_TARGET_TPU = 2 };

/* tensor_type, witx >= 2023-08 / crate 0.6 numbering. An int8 model input
 * takes NN_TYPE_U8 (raw bytes; there is no i8 code in witx). */
enum {
    NN_TYPE_F16 = 0,
    NN_TYPE_F32 = 1,
    NN_TYPE_F64 = 2,
    NN_TYPE_U8 = 3,
    NN_TYPE_I32 = 4,
    NN_TYPE_I64 = 5,
};

/* A (ptr, len) byte buffer: one entry of a graph_builder_array. 8 bytes. */
typedef struct {
    const uint8_t *data;
    uint32_t len;
} nn_graph_builder;

/* The witx tensor record: 20 bytes, align 4. `type` is read as its low byte. */
typedef struct {
    const uint32_t *dims; /* dims_len u32 dimensions */
    uint32_t dims_len;
    uint32_t type;        /* tensor_type */
    const uint8_t *data;
    uint32_t data_len;    /* bytes */
} nn_tensor;

_Static_assert(sizeof(nn_tensor) == 20, "wasi-nn tensor is 20 bytes");
_Static_assert(sizeof(nn_graph_builder) == 8, "graph builder entry is 8 bytes");

WASI_NN_IMPORT("load")
int32_t nn_load(const nn_graph_builder *builders, uint32_t builders_len, uint32_t encoding,
                uint32_t target, nn_graph *graph_out);

/* A model the host preloaded (the service's model store, or --nn-preload). */
WASI_NN_IMPORT("load_by_name")
int32_t nn_load_by_name(const char *name, uint32_t name_len, nn_graph *graph_out);

WASI_NN_IMPORT("load_by_name_with_config")
int32_t nn_load_by_name_with_config(const char *name, uint32_t name_len, const char *config,
                                    uint32_t config_len, nn_graph *graph_out);

WASI_NN_IMPORT("init_execution_context")
int32_t nn_init_execution_context(nn_graph graph, nn_context *context_out);

/* index: positional input index. The tensor must match the model input's type,
 * rank, dimensions and byte size exactly (no conversion is done). */
WASI_NN_IMPORT("set_input")
int32_t nn_set_input(nn_context context, uint32_t index, const nn_tensor *tensor);

WASI_NN_IMPORT("compute")
int32_t nn_compute(nn_context context);

/* Copies the raw bytes of output `index`. A buffer smaller than the tensor
 * gives NN_INVALID_ARGUMENT and leaves *bytes_written untouched (as WasmEdge). */
WASI_NN_IMPORT("get_output")
int32_t nn_get_output(nn_context context, uint32_t index, uint8_t *out, uint32_t out_max,
                      uint32_t *bytes_written);

/* WasmEdge extensions. */
WASI_NN_IMPORT("unload")
int32_t nn_unload(nn_graph graph);

WASI_NN_IMPORT("finalize_execution_context")
int32_t nn_finalize_execution_context(nn_context context);

#endif
