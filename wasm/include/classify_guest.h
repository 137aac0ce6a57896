/*
 * classify_guest.h - the parts every shipped guest shares (wasm/src/classify.c,
 * mnist.c, describe.c): the default guest interface's command line (see
 * classify_interface.h), reading stdin and labels, decoding through
 * wasmedge_image, converting pixels, running the model through wasi-nn,
 * scores and top-k, JSON output.
 *
 * Header-only, for guests that are one C file each: define GUEST_NAME (the
 * prefix of error lines and the usage) before including it. A guest's main is
 * start_request(), its own pre-processing of the decoded pixels, infer(), and
 * its own answer from the scores. Each guest calls a different subset of the
 * functions here, so unused-function warnings are off for them.
 *
 * Every error is one "NAME: ..." line on stderr, nothing on stdout, and one of
 * the exit codes in classify_interface.h.
 */
#ifndef CLASSIFY_GUEST_H
#define CLASSIFY_GUEST_H

#ifndef GUEST_NAME
#error "define GUEST_NAME before including classify_guest.h"
#endif

#pragma clang diagnostic ignored "-Wunused-function"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "classify_interface.h"
#include "wasi_nn.h"
#include "wasmedge_image.h"

enum {
    EXIT_USAGE = CLASSIFY_EXIT_USAGE,
    EXIT_DATA = CLASSIFY_EXIT_DATA,
    EXIT_NO_MODEL = CLASSIFY_EXIT_NO_MODEL,
    EXIT_NN = CLASSIFY_EXIT_NN,
    EXIT_IO = CLASSIFY_EXIT_IO,
};

static const char USAGE[] =
    "usage: " GUEST_NAME " --model NAME --input-type u8|i8|f32 --input-shape DIMS "
    "--input-mean M --input-std S --output-type u8|i8|f32 "
    "[--output-scale S --output-zero-point Z] --top-k K [--labels PATH]";

/* Each dimension and the pixel count are bounded so that every byte size
 * below fits comfortably in a u32 (the f32 tensor is H*W*3*4 bytes). */
static const unsigned long MAX_DIM = 1000000UL;
static const uint64_t MAX_PIXELS = (uint64_t)1 << 26;

/* Most images fit the first buffer; untouched pages of it cost nothing. */
static const size_t READ_FIRST = 1024 * 1024;
static const size_t READ_CHUNK = 64 * 1024;
static const uint32_t OUTPUT_FIRST_ELEMS = 4096;
static const uint32_t OUTPUT_RETRY_BYTES = 1024 * 1024;

/* Keeps NaN/inf out of the score arithmetic; well inside double range so
 * that differences of two scores cannot overflow either. */
static const double SCORE_LIMIT = 1e300;

/* nn_errno names, indexed by code (witx). */
static const char *const NN_ERRNO_NAMES[] = {
    "success", "invalid_argument", "invalid_encoding", "missing_memory", "busy",
    "runtime_error", "unsupported_operation", "too_large", "not_found",
};

typedef enum { DTYPE_U8, DTYPE_I8, DTYPE_F32 } dtype;

typedef struct {
    const char *model;
    long top_k;
    dtype input_type;
    uint32_t dims[4];
    uint32_t rank;
    float input_mean;
    float input_std;
    dtype output_type;
    double output_scale;
    long output_zero_point;
    const char *labels_path; /* NULL = no labels */
} options;

typedef struct {
    const char *text; /* not NUL-terminated; may contain NUL bytes */
    size_t len;
} label;

typedef struct {
    label *items;
    size_t count;
} label_list;

/* ------------------------------------------------------------------------ */
/* Errors                                                                    */

__attribute__((noreturn, format(printf, 2, 3)))
static void die(int code, const char *fmt, ...)
{
    va_list ap;
    fputs(GUEST_NAME ": ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(code);
}

/* A copy of untrusted text that is safe to put in a one-line message:
 * control characters become '?', long text is cut short. */
static const char *printable(const char *s, char *buf, size_t cap)
{
    size_t i = 0;
    for (; s[i] != '\0' && i + 1 < cap; i++)
        buf[i] = ((unsigned char)s[i] < 0x20 || s[i] == 0x7f) ? '?' : s[i];
    buf[i] = '\0';
    return buf;
}

static void *xmalloc(size_t size)
{
    void *p = malloc(size ? size : 1);
    if (p == NULL)
        die(EXIT_NN, "out of memory (%zu bytes)", size);
    return p;
}

static const char *nn_errno_name(int32_t err)
{
    if (err >= 0 && (size_t)err < sizeof NN_ERRNO_NAMES / sizeof NN_ERRNO_NAMES[0])
        return NN_ERRNO_NAMES[err];
    return "unknown";
}

/* Any non-zero wasi-nn errno is fatal. */
static void check_nn(int32_t err, const char *function)
{
    if (err != NN_SUCCESS)
        die(EXIT_NN, "%s failed: errno %d (%s)", function, (int)err, nn_errno_name(err));
}

/* ------------------------------------------------------------------------ */
/* Command line                                                              */

__attribute__((noreturn))
static void usage_error(const char *what, const char *arg)
{
    char buf[80];
    die(EXIT_USAGE, "%s %s; %s", what, printable(arg, buf, sizeof buf), USAGE);
}

static long parse_long(const char *option, const char *value)
{
    char *end;
    errno = 0;
    long n = strtol(value, &end, 10);
    /* strtol skips leading blanks; a number here must be exactly a number. */
    if (value[0] == '\0' || value[0] == ' ' || value[0] == '\t' || *end != '\0' || errno != 0)
        usage_error("bad number for", option);
    return n;
}

/* A finite number; `positive` also rules out zero and negatives. */
static double parse_real(const char *option, const char *value, int positive)
{
    char *end;
    errno = 0;
    double s = strtod(value, &end);
    if (value[0] == '\0' || value[0] == ' ' || value[0] == '\t' || *end != '\0' || errno != 0
        || !isfinite(s) || (positive && !(s > 0)))
        usage_error("bad number for", option);
    return s;
}

static dtype parse_dtype(const char *option, const char *value)
{
    if (strcmp(value, "u8") == 0)
        return DTYPE_U8;
    if (strcmp(value, "i8") == 0)
        return DTYPE_I8;
    if (strcmp(value, "f32") == 0)
        return DTYPE_F32;
    usage_error("bad type (expected u8, i8 or f32) for", option);
}

/* "1x224x224x3" -> dims; accepts the three layouts listed in the usage. */
static void parse_shape(const char *value, options *o)
{
    const char *p = value;
    o->rank = 0;
    for (;;) {
        if (*p < '0' || *p > '9')
            usage_error("bad --input-shape", value);
        char *end;
        errno = 0;
        unsigned long d = strtoul(p, &end, 10);
        if (errno != 0 || d == 0 || d > MAX_DIM || o->rank == 4)
            usage_error("bad --input-shape", value);
        o->dims[o->rank++] = (uint32_t)d;
        if (*end == '\0')
            break;
        if (*end != 'x')
            usage_error("bad --input-shape", value);
        p = end + 1;
    }
    int ok = (o->rank == 4 && o->dims[0] == 1 && (o->dims[3] == 1 || o->dims[3] == 3))
          || (o->rank == 3 && o->dims[0] == 1)
          || o->rank == 2;
    if (!ok)
        usage_error("unsupported --input-shape (use 1xHxWxC with C 1 or 3, 1xHxW or HxW)", value);
}

static void parse_args(int argc, char **argv, options *o)
{
    int have_input_type = 0, have_output_type = 0, have_mean = 0, have_std = 0;
    int have_scale = 0, have_zero_point = 0;

    *o = (options){ .top_k = 0 };
    for (int i = 1; i < argc; i += 2) {
        const char *name = argv[i];
        int known = strcmp(name, "--model") == 0 || strcmp(name, "--top-k") == 0
                 || strcmp(name, "--input-type") == 0 || strcmp(name, "--input-shape") == 0
                 || strcmp(name, "--output-type") == 0 || strcmp(name, "--output-scale") == 0
                 || strcmp(name, "--output-zero-point") == 0 || strcmp(name, "--labels") == 0
                 || strcmp(name, "--input-mean") == 0 || strcmp(name, "--input-std") == 0;
        if (!known)
            usage_error("unknown option", name);
        if (i + 1 >= argc)
            usage_error("missing value for", name);
        const char *value = argv[i + 1];

        if (strcmp(name, "--model") == 0) {
            o->model = value;
        } else if (strcmp(name, "--top-k") == 0) {
            o->top_k = parse_long(name, value);
            if (o->top_k < 1)
                usage_error("--top-k must be at least 1, got", value);
        } else if (strcmp(name, "--input-type") == 0) {
            o->input_type = parse_dtype(name, value);
            have_input_type = 1;
        } else if (strcmp(name, "--input-shape") == 0) {
            parse_shape(value, o);
        } else if (strcmp(name, "--output-type") == 0) {
            o->output_type = parse_dtype(name, value);
            have_output_type = 1;
        } else if (strcmp(name, "--input-mean") == 0) {
            o->input_mean = (float)parse_real(name, value, 0);
            have_mean = 1;
        } else if (strcmp(name, "--input-std") == 0) {
            o->input_std = (float)parse_real(name, value, 1);
            have_std = 1;
        } else if (strcmp(name, "--output-scale") == 0) {
            o->output_scale = parse_real(name, value, 1);
            have_scale = 1;
        } else if (strcmp(name, "--output-zero-point") == 0) {
            o->output_zero_point = parse_long(name, value);
            have_zero_point = 1;
        } else {
            o->labels_path = value;
        }
    }
    if (o->model == NULL)
        usage_error("missing option", "--model");
    if (!have_input_type)
        usage_error("missing option", "--input-type");
    if (o->rank == 0)
        usage_error("missing option", "--input-shape");
    if (!have_mean)
        usage_error("missing option", "--input-mean");
    if (!have_std)
        usage_error("missing option", "--input-std");
    if (!have_output_type)
        usage_error("missing option", "--output-type");
    if (o->output_type != DTYPE_F32 && !have_scale)
        usage_error("missing option", "--output-scale");
    if (o->output_type != DTYPE_F32 && !have_zero_point)
        usage_error("missing option", "--output-zero-point");
    if (o->top_k == 0)
        usage_error("missing option", "--top-k");
}

/* ------------------------------------------------------------------------ */
/* Input: stdin, labels, image                                               */

/* Reads a whole stream into a malloc'd buffer; returns 0 on a read error.
 * The buffer grows by malloc + memcpy + free, not realloc: this libc's
 * realloc of a large block costs ~2.5 us per KiB it moves, malloc + memcpy
 * (memory.copy) a tenth of that (python -m bench.profile). */
static int read_all(FILE *f, uint8_t **data_out, size_t *len_out)
{
    size_t cap = READ_FIRST, len = 0;
    uint8_t *data = xmalloc(cap);
    for (;;) {
        if (cap - len < READ_CHUNK) {
            if (cap > SIZE_MAX / 2)
                die(EXIT_NN, "out of memory (input too large)");
            uint8_t *bigger = xmalloc(cap * 2);
            memcpy(bigger, data, len);
            free(data);
            data = bigger;
            cap *= 2;
        }
        size_t n = fread(data + len, 1, cap - len, f);
        len += n;
        if (n == 0)
            break;
    }
    if (ferror(f)) {
        free(data);
        return 0;
    }
    *data_out = data;
    *len_out = len;
    return 1;
}

/* One label per line; line i names class i. A final newline does not start
 * another (empty) label. Trailing '\r' is dropped (CRLF files). */
static label_list load_labels(const char *path)
{
    char buf[200];
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        die(EXIT_IO, "cannot open labels %s: %s", printable(path, buf, sizeof buf),
            strerror(errno));
    uint8_t *text;
    size_t len;
    int ok = read_all(f, &text, &len);
    fclose(f);
    if (!ok)
        die(EXIT_IO, "cannot read labels %s", printable(path, buf, sizeof buf));

    size_t lines = 0;
    for (size_t i = 0; i < len; i++)
        lines += text[i] == '\n';
    if (len > 0 && text[len - 1] != '\n')
        lines++;

    label_list list = { xmalloc(lines * sizeof(label)), 0 };
    size_t start = 0;
    for (size_t i = 0; i <= len && list.count < lines; i++) {
        if (i < len && text[i] != '\n')
            continue;
        size_t end = i;
        if (end > start && text[end - 1] == '\r')
            end--;
        list.items[list.count++] = (label){ (const char *)text + start, end - start };
        start = i + 1;
    }
    return list;
}

/* Image height, width and channel count implied by the input shape. */
static void image_geometry(const options *o, uint32_t *h, uint32_t *w, uint32_t *c)
{
    if (o->rank == 2) {
        *h = o->dims[0];
        *w = o->dims[1];
        *c = 1;
    } else {
        *h = o->dims[1];
        *w = o->dims[2];
        *c = o->rank == 4 ? o->dims[3] : 1;
    }
}

/* Host decodes any supported format, converts to RGB and resizes to w x h. */
static uint8_t *decode_image(const uint8_t *data, size_t len, uint32_t w, uint32_t h)
{
    uint32_t rgb_len = w * h * 3; /* bounded by MAX_PIXELS */
    uint8_t *rgb = xmalloc(rgb_len);
    if (img_load_image(data, (uint32_t)len, w, h, IMG_RGB8, rgb, rgb_len) != IMG_SUCCESS)
        die(EXIT_DATA, "image could not be decoded");
    return rgb;
}

/* ------------------------------------------------------------------------ */
/* Model input / output                                                      */

static uint32_t dtype_size(dtype t)
{
    return t == DTYPE_F32 ? 4 : 1;
}

/* ITU-R 601 luma in Pillow's own 16-bit fixed point, so the result is
 * exactly convert("L") (the decimal form (299R + 587G + 114B + 500) / 1000
 * is off by one for 9040 of the 2^24 colours). Grey (v,v,v) gives v. */
static uint8_t luma(const uint8_t *px)
{
    return (uint8_t)((px[0] * 19595u + px[1] * 38470u + px[2] * 7471u + 0x8000u) >> 16);
}

/* An integer input value: (x - mean) / std, rounded, clamped to [lo, hi]. */
static int integer_input(uint8_t x, float mean, float std, int lo, int hi)
{
    float v = roundf(((float)x - mean) / std);
    return v < (float)lo ? lo : v > (float)hi ? hi : (int)v;
}

/* Pixel values (HWC, `channels` per pixel) in the model's input dtype, as
 * (x - mean) / std. RGB uint8 models with mean 0 and std 1 take the decoded
 * pixels as they are: no copy. */
static uint8_t *convert_pixels(uint8_t *rgb, uint32_t pixels, uint32_t channels,
                               const options *o, uint32_t *bytes_out)
{
    uint32_t count = pixels * channels;
    dtype type = o->input_type;
    float mean = o->input_mean, std = o->input_std;
    if (channels == 3 && type == DTYPE_U8 && mean == 0.0f && std == 1.0f) {
        *bytes_out = count;
        return rgb;
    }
    uint32_t bytes = count * dtype_size(type);
    uint8_t *out = xmalloc(bytes);
    for (uint32_t i = 0; i < count; i++) {
        uint8_t x = channels == 1 ? luma(rgb + 3 * i) : rgb[i];
        if (type == DTYPE_U8) {
            out[i] = (uint8_t)integer_input(x, mean, std, 0, 255);
        } else if (type == DTYPE_I8) {
            out[i] = (uint8_t)(int8_t)integer_input(x, mean, std, -128, 127);
        } else {
            float f = ((float)x - mean) / std;
            memcpy(out + 4 * (size_t)i, &f, sizeof f);
        }
    }
    *bytes_out = bytes;
    return out;
}

/* Runs the model; returns the raw bytes of output 0 and their size. */
static uint8_t *run_model(const options *o, const uint8_t *input, uint32_t input_len,
                          uint32_t *out_len)
{
    nn_graph graph = 0;
    nn_context ctx = 0;

    int32_t err = nn_load_by_name(o->model, (uint32_t)strlen(o->model), &graph);
    if (err == NN_NOT_FOUND) {
        char buf[120];
        die(EXIT_NO_MODEL, "model %s not found", printable(o->model, buf, sizeof buf));
    }
    check_nn(err, "load_by_name");
    check_nn(nn_init_execution_context(graph, &ctx), "init_execution_context");

    /* The host needs the exact type: there is no i8 code in witx, so int8
     * inputs go as U8 and the host takes the bytes raw. */
    nn_tensor tensor = {
        .dims = o->dims,
        .dims_len = o->rank,
        .type = o->input_type == DTYPE_F32 ? NN_TYPE_F32 : NN_TYPE_U8,
        .data = input,
        .data_len = input_len,
    };
    check_nn(nn_set_input(ctx, 0, &tensor), "set_input");
    check_nn(nn_compute(ctx), "compute");

    /* Released WasmEdge answers a too-small buffer with invalid_argument,
     * newer hosts with too_large: either way retry once, much larger. */
    uint32_t cap = OUTPUT_FIRST_ELEMS * dtype_size(o->output_type);
    uint8_t *out = xmalloc(cap);
    uint32_t written = 0;
    err = nn_get_output(ctx, 0, out, cap, &written);
    if (err == NN_INVALID_ARGUMENT || err == NN_TOO_LARGE) {
        free(out);
        cap = OUTPUT_RETRY_BYTES;
        out = xmalloc(cap);
        written = 0;
        err = nn_get_output(ctx, 0, out, cap, &written);
    }
    check_nn(err, "get_output");
    if (written > cap)
        die(EXIT_NN, "get_output reported %u bytes for a %u-byte buffer",
            (unsigned)written, (unsigned)cap);

    (void)nn_finalize_execution_context(ctx); /* result irrelevant: we exit */
    *out_len = written;
    return out;
}

/* ------------------------------------------------------------------------ */
/* Scores                                                                    */

static double finite_score(double s)
{
    if (isnan(s))
        return -SCORE_LIMIT; /* rank garbage last */
    if (s > SCORE_LIMIT)
        return SCORE_LIMIT;
    if (s < -SCORE_LIMIT)
        return -SCORE_LIMIT;
    return s;
}

/* Raw output bytes -> one finite score per class. */
static double *dequantize(const options *o, const uint8_t *raw, size_t n)
{
    double *scores = xmalloc(n * sizeof(double));
    double scale = o->output_scale, zero = (double)o->output_zero_point;
    for (size_t i = 0; i < n; i++) {
        double s;
        if (o->output_type == DTYPE_F32) {
            float f;
            memcpy(&f, raw + 4 * i, sizeof f);
            s = f;
        } else {
            double q = o->output_type == DTYPE_U8 ? (double)raw[i] : (double)(int8_t)raw[i];
            s = (q - zero) * scale;
        }
        scores[i] = finite_score(s);
    }
    return scores;
}

/* Subtracting the maximum keeps exp() from overflowing; scores are finite,
 * so the maximum contributes exp(0) = 1 and the sum is at least 1. */
static void softmax(double *scores, size_t n)
{
    double max = scores[0], sum = 0;
    for (size_t i = 1; i < n; i++)
        if (scores[i] > max)
            max = scores[i];
    for (size_t i = 0; i < n; i++) {
        scores[i] = exp(scores[i] - max);
        sum += scores[i];
    }
    for (size_t i = 0; i < n; i++)
        scores[i] /= sum;
}

/* Anything outside [0, 1] means logits, not probabilities. */
static void normalize_scores(double *scores, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (scores[i] < 0 || scores[i] > 1) {
            softmax(scores, n);
            break;
        }
    }
    for (size_t i = 0; i < n; i++)
        scores[i] = scores[i] < 0 ? 0 : scores[i] > 1 ? 1 : scores[i];
}

/* Indices of the k best scores, best first; on a tie the lower index wins
 * because a later index must be strictly better to move ahead. O(n*k). */
static size_t *top_k(const double *scores, size_t n, size_t k)
{
    size_t *best = xmalloc(k * sizeof(size_t));
    size_t count = 0;
    for (size_t i = 0; i < n; i++) {
        if (count == k && !(scores[i] > scores[best[k - 1]]))
            continue;
        size_t pos = count < k ? count : k - 1;
        while (pos > 0 && scores[i] > scores[best[pos - 1]]) {
            best[pos] = best[pos - 1];
            pos--;
        }
        best[pos] = i;
        if (count < k)
            count++;
    }
    return best;
}

/* ------------------------------------------------------------------------ */
/* Output                                                                    */

/* Text as the content of a JSON string (without its quotes). */
static void print_json_text(const label *l)
{
    for (size_t i = 0; i < l->len; i++) {
        unsigned char c = (unsigned char)l->text[i];
        if (c == '"' || c == '\\')
            printf("\\%c", c);
        else if (c < 0x20)
            printf("\\u%04x", c);
        else
            putchar(c); /* bytes >= 0x80 pass through as UTF-8 */
    }
}

static void print_json_string(const label *l)
{
    putchar('"');
    print_json_text(l);
    putchar('"');
}

/* `"predictions":[...]`, the k best classes, best first: a field of the
 * object each guest prints. */
static void print_predictions(const double *scores, const size_t *best, size_t k,
                              const label_list *labels)
{
    fputs("\"predictions\":[", stdout);
    for (size_t i = 0; i < k; i++) {
        size_t idx = best[i];
        printf("%s{\"index\":%zu,\"label\":", i ? "," : "", idx);
        if (labels != NULL && idx < labels->count)
            print_json_string(&labels->items[idx]);
        else
            fputs("null", stdout);
        printf(",\"score\":%.6g}", scores[idx]);
    }
    putchar(']');
}

/* The result leaves in one write (stdout is fully buffered by each guest). */
static void finish_output(void)
{
    if (fflush(stdout) != 0 || ferror(stdout))
        die(EXIT_IO, "writing the result to stdout failed");
}

/* ------------------------------------------------------------------------ */
/* The steps of a request                                                    */

typedef struct {
    options opt;
    label_list labels;
    const label_list *labels_or_null; /* &labels, or NULL without --labels */
    uint32_t h, w, c;                 /* the model's input image */
    uint8_t *rgb;                     /* the request's image, decoded to w x h RGB8 */
} request;

/* Command line, labels, stdin, the image decoded to the model's input size. */
static void start_request(int argc, char **argv, request *r)
{
    parse_args(argc, argv, &r->opt);
    /* One write of the whole result: each WASI write is a host call. */
    static char stdout_buffer[64 * 1024];
    setvbuf(stdout, stdout_buffer, _IOFBF, sizeof stdout_buffer);

    image_geometry(&r->opt, &r->h, &r->w, &r->c);
    if ((uint64_t)r->h * r->w > MAX_PIXELS)
        die(EXIT_USAGE, "--input-shape has more than %llu pixels; %s",
            (unsigned long long)MAX_PIXELS, USAGE);

    /* Labels first: a bad path should fail before any inference work. */
    r->labels = (label_list){ NULL, 0 };
    r->labels_or_null = NULL;
    if (r->opt.labels_path != NULL) {
        r->labels = load_labels(r->opt.labels_path);
        r->labels_or_null = &r->labels;
    }

    uint8_t *encoded;
    size_t encoded_len;
    if (!read_all(stdin, &encoded, &encoded_len))
        die(EXIT_IO, "reading stdin failed");
    if (encoded_len == 0)
        die(EXIT_DATA, "no image data on stdin");
    if (encoded_len > UINT32_MAX)
        die(EXIT_DATA, "image data too large");
    r->rgb = decode_image(encoded, encoded_len, r->w, r->h);
    free(encoded);
}

/* The model on the request's pixels: one score in [0, 1] per class. */
static double *infer(const request *r, size_t *classes_out)
{
    uint32_t input_len;
    uint8_t *input = convert_pixels(r->rgb, r->h * r->w, r->c, &r->opt, &input_len);

    uint32_t raw_len;
    uint8_t *raw = run_model(&r->opt, input, input_len, &raw_len);
    size_t n = raw_len / dtype_size(r->opt.output_type);
    if (n == 0)
        die(EXIT_NN, "get_output returned an empty tensor");

    double *scores = dequantize(&r->opt, raw, n);
    normalize_scores(scores, n);
    *classes_out = n;
    return scores;
}

/* The best min(--top-k, n) classes, best first. */
static size_t *best_classes(const request *r, const double *scores, size_t n, size_t *k_out)
{
    size_t k = (unsigned long)r->opt.top_k < n ? (size_t)r->opt.top_k : n;
    *k_out = k;
    return top_k(scores, n, k);
}

#endif
