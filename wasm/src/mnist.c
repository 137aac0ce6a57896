/*
 * mnist.c - business logic for handwritten-digit models (a WASI command with
 * the default guest interface, classify_interface.h).
 *
 * Tencent SCF's MNIST function, whose callers send photos and scans of digits:
 * the image is made grey and resized to the model's input (the host decodes
 * and resizes), each pixel becomes black or white at a threshold of 100, and
 * the picture is inverted when white pixels outnumber black ones, so that a
 * dark digit on light paper reaches the model as MNIST's light digit on a dark
 * ground. It answers the digit as `result` beside the predictions:
 *
 *   {"result":7,"predictions":[{"index":7,"label":"7","score":0.996094},...]}
 */
#define GUEST_NAME "mnist"
#include "classify_guest.h"

enum { THRESHOLD = 100 }; /* grey levels below it are ink-free background (black) */

/* In place: each RGB pixel becomes grey 0 or 255 (all three channels, so that
 * luma() reads it back unchanged), inverted if white is the majority. */
static void binarize(uint8_t *rgb, uint32_t pixels)
{
    uint32_t white = 0;
    for (uint32_t i = 0; i < pixels; i++) {
        uint8_t v = luma(rgb + 3 * i) < THRESHOLD ? 0 : 255;
        white += v == 255;
        rgb[3 * i] = rgb[3 * i + 1] = rgb[3 * i + 2] = v;
    }
    if (white > pixels - white)
        for (uint32_t i = 0; i < 3 * pixels; i++)
            rgb[i] = (uint8_t)(255 - rgb[i]);
}

int main(int argc, char **argv)
{
    request r;
    start_request(argc, argv, &r);
    binarize(r.rgb, r.h * r.w);
    size_t n, k;
    double *scores = infer(&r, &n);
    size_t *best = best_classes(&r, scores, n, &k);

    printf("{\"result\":%zu,", best[0]);
    print_predictions(scores, best, k, r.labels_or_null);
    fputs("}\n", stdout);
    finish_output();
    return 0;
}
