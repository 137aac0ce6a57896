/*
 * wasmedge_image.h - WasmEdge's image plugin ABI, module `wasmedge_image`.
 *
 * The host decodes the image (JPEG, PNG, BMP, GIF, WebP, ...), applies EXIF
 * orientation, converts it to RGB, resizes it to out_w x out_h (bilinear) and
 * writes it interleaved (HWC, row-major) at out_ptr.
 *   RGB8 / BGR8:     out_w * out_h * 3 bytes
 *   RGB32F / BGR32F: out_w * out_h * 3 little-endian floats, value / 255.0
 * Returns 0 on success, 1 on any failure (undecodable image, over the host's
 * pixel limit, output buffer too small, bad pointer); the host logs why.
 */
#ifndef CLASSIFIER_WASMEDGE_IMAGE_H
#define CLASSIFIER_WASMEDGE_IMAGE_H

#include <stdint.h>

#define WASMEDGE_IMAGE_IMPORT(name) \
    __attribute__((import_module("wasmedge_image"), import_name(name)))

enum { IMG_SUCCESS = 0, IMG_FAIL = 1 };

/* out_type */
enum { IMG_RGB8 = 0, IMG_BGR8 = 1, IMG_RGB32F = 2, IMG_BGR32F = 3 };

/* Any format the host can decode. */
WASMEDGE_IMAGE_IMPORT("load_image")
int32_t img_load_image(const uint8_t *in, uint32_t in_len, uint32_t out_w, uint32_t out_h,
                       uint32_t out_type, void *out, uint32_t out_len);

/* WasmEdge's format-specific entry points: they refuse other formats. */
WASMEDGE_IMAGE_IMPORT("load_jpg")
int32_t img_load_jpg(const uint8_t *in, uint32_t in_len, uint32_t out_w, uint32_t out_h,
                     uint32_t out_type, void *out, uint32_t out_len);

WASMEDGE_IMAGE_IMPORT("load_png")
int32_t img_load_png(const uint8_t *in, uint32_t in_len, uint32_t out_w, uint32_t out_h,
                     uint32_t out_type, void *out, uint32_t out_len);

/*
 * WasmEdge's legacy image functions (crate wasmedge_tensorflow_interface 0.2),
 * same module: no output length. They write w*h*3 bytes (rgb8, bgr8) or w*h*3
 * floats (rgb32f, bgr32f: byte / 255) at out, resized as WasmEdge did (Boost.GIL
 * align-corners bilinear, truncated). Returns 0 on success, 1 on any failure,
 * including an output range that does not fit in guest memory (nothing is
 * written then).
 */
WASMEDGE_IMAGE_IMPORT("wasmedge_image_load_jpg_to_rgb8")
uint32_t wasmedge_image_load_jpg_to_rgb8(const uint8_t *in, uint32_t in_len, uint32_t width,
                                         uint32_t height, void *out);

WASMEDGE_IMAGE_IMPORT("wasmedge_image_load_jpg_to_bgr8")
uint32_t wasmedge_image_load_jpg_to_bgr8(const uint8_t *in, uint32_t in_len, uint32_t width,
                                         uint32_t height, void *out);

WASMEDGE_IMAGE_IMPORT("wasmedge_image_load_jpg_to_rgb32f")
uint32_t wasmedge_image_load_jpg_to_rgb32f(const uint8_t *in, uint32_t in_len, uint32_t width,
                                           uint32_t height, void *out);

WASMEDGE_IMAGE_IMPORT("wasmedge_image_load_jpg_to_bgr32f")
uint32_t wasmedge_image_load_jpg_to_bgr32f(const uint8_t *in, uint32_t in_len, uint32_t width,
                                           uint32_t height, void *out);

WASMEDGE_IMAGE_IMPORT("wasmedge_image_load_png_to_rgb8")
uint32_t wasmedge_image_load_png_to_rgb8(const uint8_t *in, uint32_t in_len, uint32_t width,
                                         uint32_t height, void *out);

WASMEDGE_IMAGE_IMPORT("wasmedge_image_load_png_to_bgr8")
uint32_t wasmedge_image_load_png_to_bgr8(const uint8_t *in, uint32_t in_len, uint32_t width,
                                         uint32_t height, void *out);

WASMEDGE_IMAGE_IMPORT("wasmedge_image_load_png_to_rgb32f")
uint32_t wasmedge_image_load_png_to_rgb32f(const uint8_t *in, uint32_t in_len, uint32_t width,
                                           uint32_t height, void *out);

WASMEDGE_IMAGE_IMPORT("wasmedge_image_load_png_to_bgr32f")
uint32_t wasmedge_image_load_png_to_bgr32f(const uint8_t *in, uint32_t in_len, uint32_t width,
                                           uint32_t height, void *out);

#endif
