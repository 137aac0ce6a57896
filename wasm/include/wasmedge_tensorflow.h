/*
 * wasmedge_tensorflow.h - WasmEdge's TensorFlow host functions, module
 * `wasmedge_tensorflow`, both ABIs, with their exact wasm types.
 *
 * This host runs TensorFlow Lite models only: the functions exist so that
 * guests importing them link, and every call fails the way its ABI reports
 * failure (legacy: handle 0, run_session 1, length 0; plugin: errno 1, except
 * delete_session 0), with one line on the guest's stderr saying why.
 *
 * Legacy dims are i64; dtype is a TF_DataType code (f32 = 1, u8 = 4, ...).
 */
#ifndef CLASSIFIER_WASMEDGE_TENSORFLOW_H
#define CLASSIFIER_WASMEDGE_TENSORFLOW_H

#include <stdint.h>

#define WASMEDGE_TF_IMPORT(name) \
    __attribute__((import_module("wasmedge_tensorflow"), import_name(name)))

/* --- legacy ABI ---------------------------------------------------------- */

WASMEDGE_TF_IMPORT("wasmedge_tensorflow_create_session")
uint64_t wasmedge_tensorflow_create_session(const uint8_t *graph, uint32_t graph_len);

WASMEDGE_TF_IMPORT("wasmedge_tensorflow_delete_session")
void wasmedge_tensorflow_delete_session(uint64_t session);

WASMEDGE_TF_IMPORT("wasmedge_tensorflow_run_session")
uint32_t wasmedge_tensorflow_run_session(uint64_t session);

WASMEDGE_TF_IMPORT("wasmedge_tensorflow_get_output_tensor")
uint64_t wasmedge_tensorflow_get_output_tensor(uint64_t session, const char *name, uint32_t name_len,
                                               uint32_t index);

WASMEDGE_TF_IMPORT("wasmedge_tensorflow_get_tensor_len")
uint32_t wasmedge_tensorflow_get_tensor_len(uint64_t tensor);

WASMEDGE_TF_IMPORT("wasmedge_tensorflow_get_tensor_data")
void wasmedge_tensorflow_get_tensor_data(uint64_t tensor, void *buf);

WASMEDGE_TF_IMPORT("wasmedge_tensorflow_append_input")
void wasmedge_tensorflow_append_input(uint64_t session, const char *name, uint32_t name_len,
                                      uint32_t index, const int64_t *dims, uint32_t dims_len,
                                      uint32_t dtype, const void *data, uint32_t data_len);

WASMEDGE_TF_IMPORT("wasmedge_tensorflow_append_output")
void wasmedge_tensorflow_append_output(uint64_t session, const char *name, uint32_t name_len,
                                       uint32_t index);

WASMEDGE_TF_IMPORT("wasmedge_tensorflow_clear_input")
void wasmedge_tensorflow_clear_input(uint64_t session);

WASMEDGE_TF_IMPORT("wasmedge_tensorflow_clear_output")
void wasmedge_tensorflow_clear_output(uint64_t session);

/* --- plugin ABI (errno results) ------------------------------------------ */

WASMEDGE_TF_IMPORT("create_session")
int32_t tf_create_session(const uint8_t *graph, uint32_t graph_len, uint32_t *session_out);

WASMEDGE_TF_IMPORT("create_session_saved_model")
int32_t tf_create_session_saved_model(const char *path, uint32_t path_len, const void *tags,
                                      uint32_t tags_len, uint32_t *session_out);

WASMEDGE_TF_IMPORT("delete_session")
int32_t tf_delete_session(uint32_t session);

WASMEDGE_TF_IMPORT("run_session")
int32_t tf_run_session(uint32_t session);

WASMEDGE_TF_IMPORT("get_output_tensor")
int32_t tf_get_output_tensor(uint32_t session, const char *name, uint32_t name_len,
                             uint32_t *tensor_out);

WASMEDGE_TF_IMPORT("get_tensor_len")
int32_t tf_get_tensor_len(uint32_t session, uint32_t tensor, uint32_t *len_out);

WASMEDGE_TF_IMPORT("get_tensor_data")
int32_t tf_get_tensor_data(uint32_t session, uint32_t tensor, void *buf, uint32_t buf_len,
                           uint32_t *written_out);

WASMEDGE_TF_IMPORT("append_input")
int32_t tf_append_input(uint32_t session, const char *name, uint32_t name_len, const int64_t *dims,
                        uint32_t dims_len, uint32_t dtype, const void *data, uint32_t data_len);

WASMEDGE_TF_IMPORT("append_output")
int32_t tf_append_output(uint32_t session, const char *name, uint32_t name_len);

WASMEDGE_TF_IMPORT("clear_input")
int32_t tf_clear_input(uint32_t session);

WASMEDGE_TF_IMPORT("clear_output")
int32_t tf_clear_output(uint32_t session);

#endif
