/*
 * describe.c - a sentence about the picture, for any classifier (a WASI
 * command with the default guest interface, classify_interface.h).
 *
 * The answer of WasmEdge's and YoMo's food and MobileNet functions, with their
 * thresholds on the top class's dequantised score: above 0.75 "It is very
 * likely a LABEL in the picture", above 0.5 "It is likely a ...", above 0.2
 * "It could be a ...", else "No object detected in the picture". The sentence
 * goes beside the top-1 index (`result`) and the predictions:
 *
 *   {"result":653,"sentence":"It is very likely a military uniform in the picture",
 *    "predictions":[...]}
 */
#define GUEST_NAME "describe"
#include "classify_guest.h"

static const double VERY_LIKELY = 0.75, LIKELY = 0.5, COULD_BE = 0.2;

static void print_sentence(double score, size_t index, const label_list *labels)
{
    fputs("\"sentence\":\"", stdout);
    if (!(score > COULD_BE)) {
        fputs("No object detected in the picture\"", stdout);
        return;
    }
    fputs(score > VERY_LIKELY ? "It is very likely a " : score > LIKELY ? "It is likely a "
                                                                        : "It could be a ",
          stdout);
    if (labels != NULL && index < labels->count)
        print_json_text(&labels->items[index]);
    else
        printf("class %zu", index);
    fputs(" in the picture\"", stdout);
}

int main(int argc, char **argv)
{
    request r;
    start_request(argc, argv, &r);
    size_t n, k;
    double *scores = infer(&r, &n);
    size_t *best = best_classes(&r, scores, n, &k);

    printf("{\"result\":%zu,", best[0]);
    print_sentence(scores[best[0]], best[0], r.labels_or_null);
    putchar(',');
    print_predictions(scores, best, k, r.labels_or_null);
    fputs("}\n", stdout);
    finish_output();
    return 0;
}
