/*
 * wasmedge_tensorflowlite.h - WasmEdge's TensorFlow-Lite host functions, module
 * `wasmedge_tensorflowlite`, both ABIs this host implements.
 *
 * Legacy ABI (the WasmEdge-tensorflow extension; Rust crate
 * wasmedge_tensorflow_interface 0.2): prefixed names, i64 handles, 0 = failure.
 * Tensors are found by exact name; name_len excludes any NUL. append_input does
 * nothing for an unknown name or a data_len that is not the tensor's byte size.
 * A handle the run did not get (or deleted), or a pointer range outside guest
 * memory, traps the guest. get_tensor_data writes get_tensor_len bytes: the
 * buffer must hold them.
 *
 * Plugin ABI (WasmEdge >= 0.13; crate 0.3): unprefixed names, u32 ids, every
 * function returns an errno (below) and writes its result through a pointer.
 * get_tensor_data wants buf_len equal to the tensor's byte size.
 */
#ifndef CLASSIFIER_WASMEDGE_TENSORFLOWLITE_H
#define CLASSIFIER_WASMEDGE_TENSORFLOWLITE_H

#include <stdint.h>

#define WASMEDGE_TFLITE_IMPORT(name) \
    __attribute__((import_module("wasmedge_tensorflowlite"), import_name(name)))

/* --- legacy ABI ---------------------------------------------------------- */

typedef uint64_t tflite_legacy_handle; /* 0 = failure / not found */

WASMEDGE_TFLITE_IMPORT("wasmedge_tensorflowlite_create_session")
tflite_legacy_handle wasmedge_tensorflowlite_create_session(const uint8_t *model, uint32_t model_len);

WASMEDGE_TFLITE_IMPORT("wasmedge_tensorflowlite_append_input")
void wasmedge_tensorflowlite_append_input(tflite_legacy_handle session, const char *name,
                                          uint32_t name_len, const void *data, uint32_t data_len);

/* 0 = ok, 1 = failed */
WASMEDGE_TFLITE_IMPORT("wasmedge_tensorflowlite_run_session")
uint32_t wasmedge_tensorflowlite_run_session(tflite_legacy_handle session);

WASMEDGE_TFLITE_IMPORT("wasmedge_tensorflowlite_get_output_tensor")
tflite_legacy_handle wasmedge_tensorflowlite_get_output_tensor(tflite_legacy_handle session,
                                                               const char *name, uint32_t name_len);

WASMEDGE_TFLITE_IMPORT("wasmedge_tensorflowlite_get_tensor_len")
uint32_t wasmedge_tensorflowlite_get_tensor_len(tflite_legacy_handle tensor);

WASMEDGE_TFLITE_IMPORT("wasmedge_tensorflowlite_get_tensor_data")
void wasmedge_tensorflowlite_get_tensor_data(tflite_legacy_handle tensor, void *buf);

WASMEDGE_TFLITE_IMPORT("wasmedge_tensorflowlite_delete_session")
void wasmedge_tensorflowlite_delete_session(tflite_legacy_handle session);

/* --- plugin ABI ---------------------------------------------------------- */

enum {
    TFLITE_SUCCESS = 0,
    TFLITE_INVALID_ARGUMENT = 1, /* unknown session or name, wrong byte size */
    TFLITE_INVALID_ENCODING = 2,
    TFLITE_MISSING_MEMORY = 3, /* a pointer range outside guest memory */
    TFLITE_BUSY = 4,           /* the interpreter failed */
    TFLITE_RUNTIME_ERROR = 5,
};

WASMEDGE_TFLITE_IMPORT("create_session")
int32_t tflite_create_session(const uint8_t *model, uint32_t model_len, uint32_t *session_out);

WASMEDGE_TFLITE_IMPORT("delete_session")
int32_t tflite_delete_session(uint32_t session);

WASMEDGE_TFLITE_IMPORT("run_session")
int32_t tflite_run_session(uint32_t session);

WASMEDGE_TFLITE_IMPORT("append_input")
int32_t tflite_append_input(uint32_t session, const char *name, uint32_t name_len, const void *data,
                            uint32_t data_len);

WASMEDGE_TFLITE_IMPORT("get_output_tensor")
int32_t tflite_get_output_tensor(uint32_t session, const char *name, uint32_t name_len,
                                 uint32_t *tensor_out);

WASMEDGE_TFLITE_IMPORT("get_tensor_len")
int32_t tflite_get_tensor_len(uint32_t session, uint32_t tensor, uint32_t *len_out);

WASMEDGE_TFLITE_IMPORT("get_tensor_data")
int32_t tflite_get_tensor_data(uint32_t session, uint32_t tensor, void *buf, uint32_t buf_len,
                               uint32_t *written_out);

#endif
