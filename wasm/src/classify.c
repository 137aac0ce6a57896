/*
 * classify.c - the default business-logic guest (a WASI command).
 *
 * Reads an encoded image on stdin, has the host decode and resize it
 * (wasmedge_image), runs the preloaded model through wasi-nn, and prints the
 * top-k classes as one JSON line. Its options, output and exit codes are in
 * classify_interface.h; what it shares with the other shipped guests is in
 * classify_guest.h.
 *
 * Every error is one "classify: ..." line on stderr, nothing on stdout, and
 * one of the exit codes there.
 */
#define GUEST_NAME "classify"
#include "classify_guest.h"

int main(int argc, char **argv)
{
    request r;
    start_request(argc, argv, &r);
    size_t n, k;
    double *scores = infer(&r, &n);
    size_t *best = best_classes(&r, scores, n, &k);

    putchar('{');
    print_predictions(scores, best, k, r.labels_or_null);
    fputs("}\n", stdout);
    finish_output();
    return 0;
}
