/*
 * classify_interface.h - the interface of the default business-logic guest
 * (wasm/src/classify.c), guest side. The host side is service/default_guest.py;
 * change the two together.
 *
 * The guest is a WASI command: the encoded image on stdin, one JSON line on
 * stdout,
 *
 *   {"predictions":[{"index":98,"label":"drake","score":0.960784},...]}
 *
 * and every option below on its command line, each with one value. The host
 * passes every conversion parameter: the guest has no normalisation constants
 * of its own.
 *
 *   --model NAME            the model, opened with wasi-nn load_by_name
 *   --input-type T          u8 | i8 | f32: the model input's element type
 *   --input-shape DIMS      1xHxWxC (C 1 or 3), 1xHxW or HxW
 *   --input-mean M          each pixel value x (0..255) goes in as
 *   --input-std S             (x - M) / S, rounded and clamped for u8/i8
 *   --output-type T         u8 | i8 | f32: output 0's element type
 *   --output-scale S        u8/i8 outputs: score = (q - Z) * S
 *   --output-zero-point Z
 *   --top-k K               how many classes to print, K >= 1
 *   --labels PATH           optional: one label per line, in the guest's view
 */
#ifndef CLASSIFY_INTERFACE_H
#define CLASSIFY_INTERFACE_H

/* Exit codes (sysexits.h values) and what the host makes of them. */
enum {
    CLASSIFY_EXIT_USAGE = 64,     /* EX_USAGE: bad command line (a host bug)    */
    CLASSIFY_EXIT_DATA = 65,      /* EX_DATAERR: no or bad image: the caller's  */
    CLASSIFY_EXIT_NO_MODEL = 66,  /* EX_NOINPUT: model not found                */
    CLASSIFY_EXIT_NN = 70,        /* EX_SOFTWARE: wasi-nn / internal            */
    CLASSIFY_EXIT_IO = 74,        /* EX_IOERR: labels, stdin, stdout            */
};

#endif
