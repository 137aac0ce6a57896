/*
 * legacy_probe.c - a test guest for the success and error paths of WasmEdge's
 * legacy ABI: the wasmedge_tensorflowlite_* functions (i64 handles) and the
 * legacy wasmedge_image_load_* functions. Several paths trap, so each run
 * takes one mode:
 *
 *   legacy_probe paths MODEL          the paths that do not trap, one line each
 *   legacy_probe trap CASE MODEL      one call that must trap (prints "before")
 *   legacy_probe hold MODEL DIR       open a session, print its handle, wait for
 *                                     DIR/release, then run it
 *   legacy_probe use HANDLE           run_session(HANDLE) on a handle this run
 *                                     never got
 *   legacy_probe image FUNC W H [tail-out|bad-out|bad-in]
 *                                     FUNC (e.g. jpg_to_rgb8) on stdin; prints
 *                                     "status N" and "fnv1a H" of the output
 *
 * MODEL is the AIY birds model (input "module/hub_input/images_uint8",
 * 150528 bytes; output "module/prediction", 965 bytes).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "replay_common.h"
#include "wasmedge_image.h"
#include "wasmedge_tensorflowlite.h"

#define INPUT_NAME "module/hub_input/images_uint8"
#define OUTPUT_NAME "module/prediction"
#define INPUT_BYTES (224u * 224u * 3u)
#define OUTPUT_BYTES 965u
#define BAD_ADDR 0xFFFFFFF0u
#define BAD_PTR(type) ((type)(uintptr_t)BAD_ADDR)
#define UNKNOWN_HANDLE 999u

static uint8_t grey[INPUT_BYTES];
static uint8_t out[OUTPUT_BYTES];

static uint32_t fnv1a(const uint8_t *data, uint32_t len)
{
    uint32_t hash = 2166136261u;
    for (uint32_t i = 0; i < len; i++) {
        hash = (hash ^ data[i]) * 16777619u;
    }
    return hash;
}

static uintptr_t near_end(uint32_t back)
{
    return (uintptr_t)__builtin_wasm_memory_size(0) * 65536u - back;
}

static uint64_t session_for(const char *model_path)
{
    uint32_t len = 0;
    uint8_t *model = read_file(model_path, &len);
    if (model == NULL) {
        exit(66);
    }
    uint64_t session = wasmedge_tensorflowlite_create_session(model, len);
    free(model);
    return session;
}

static void append(uint64_t session, const char *name, const void *data, uint32_t len)
{
    wasmedge_tensorflowlite_append_input(session, name, (uint32_t)strlen(name), data, len);
}

static uint64_t output_of(uint64_t session, const char *name)
{
    return wasmedge_tensorflowlite_get_output_tensor(session, name, (uint32_t)strlen(name));
}

/* Run and hash the output. */
static uint32_t run_hash(uint64_t session)
{
    wasmedge_tensorflowlite_run_session(session);
    memset(out, 0, sizeof out);
    wasmedge_tensorflowlite_get_tensor_data(output_of(session, OUTPUT_NAME), out);
    return fnv1a(out, OUTPUT_BYTES);
}

static int paths(const char *model_path)
{
    static const char GARBAGE[] = "not a model";
    printf("create_garbage %llu\n", (unsigned long long)wasmedge_tensorflowlite_create_session(
                                        (const uint8_t *)GARBAGE, sizeof GARBAGE));
    printf("create_model_oob %llu\n", (unsigned long long)wasmedge_tensorflowlite_create_session(
                                          BAD_PTR(const uint8_t *), 64));

    uint64_t session = session_for(model_path);
    printf("create_ok %d\n", session != 0);
    printf("run_ok %u\n", wasmedge_tensorflowlite_run_session(session));
    uint32_t no_input = run_hash(session);

    append(session, "images", grey, INPUT_BYTES);
    printf("unknown_input_ignored %d\n", run_hash(session) == no_input);
    append(session, INPUT_NAME, grey, INPUT_BYTES - 1);
    printf("short_input_ignored %d\n", run_hash(session) == no_input);
    append(session, INPUT_NAME, grey, INPUT_BYTES + 1);
    printf("long_input_ignored %d\n", run_hash(session) == no_input);
    append(session, INPUT_NAME, grey, INPUT_BYTES);
    uint32_t with_input = run_hash(session);
    printf("input_taken %d\n", with_input != no_input);
    int32_t index;
    float score;
    top1_u8(out, OUTPUT_BYTES, &index, &score);
    printf("grey_top1 %d\n", (int)index);
    printf("grey_top1_raw %u\n", out[index]);

    uint64_t tensor = output_of(session, OUTPUT_NAME);
    printf("tensor_ok %d\n", tensor != 0 && tensor != session);
    printf("tensor_same_handle %d\n", output_of(session, OUTPUT_NAME) == tensor);
    printf("tensor_unknown_name %llu\n", (unsigned long long)output_of(session, "prediction"));
    printf("tensor_input_name %llu\n", (unsigned long long)output_of(session, INPUT_NAME));
    printf("len_ok %u\n", wasmedge_tensorflowlite_get_tensor_len(tensor));
    printf("len_of_0 %u\n", wasmedge_tensorflowlite_get_tensor_len(0));
    memset(out, 0xAA, sizeof out);
    wasmedge_tensorflowlite_get_tensor_data(0, out);
    int untouched = 1;
    for (uint32_t i = 0; i < OUTPUT_BYTES; i++) {
        untouched &= out[i] == 0xAA;
    }
    printf("data_of_0_untouched %d\n", untouched);
    wasmedge_tensorflowlite_delete_session(0);
    printf("delete_0_ok 1\n");

    uint64_t other = session_for(model_path);
    printf("second_session_distinct %d\n", other != 0 && other != session && other != tensor);
    append(other, INPUT_NAME, grey, INPUT_BYTES);
    printf("second_session_same_output %d\n", run_hash(other) == with_input);
    wasmedge_tensorflowlite_delete_session(other);
    printf("first_session_after_delete_of_second %d\n", run_hash(session) == with_input);
    wasmedge_tensorflowlite_delete_session(session);
    printf("done\n");
    return 0;
}

static int trap(const char *which, const char *model_path)
{
    uint64_t session = session_for(model_path);
    append(session, INPUT_NAME, grey, INPUT_BYTES);
    wasmedge_tensorflowlite_run_session(session);
    uint64_t tensor = output_of(session, OUTPUT_NAME);
    printf("before\n");
    fflush(stdout);
    if (strcmp(which, "run-unknown") == 0) {
        wasmedge_tensorflowlite_run_session(UNKNOWN_HANDLE);
    } else if (strcmp(which, "run-minus-1") == 0) {
        wasmedge_tensorflowlite_run_session((uint64_t)-1);
    } else if (strcmp(which, "append-unknown") == 0) {
        append(UNKNOWN_HANDLE, INPUT_NAME, grey, INPUT_BYTES);
    } else if (strcmp(which, "output-unknown") == 0) {
        output_of(UNKNOWN_HANDLE, OUTPUT_NAME);
    } else if (strcmp(which, "len-unknown") == 0) {
        wasmedge_tensorflowlite_get_tensor_len(UNKNOWN_HANDLE);
    } else if (strcmp(which, "data-unknown") == 0) {
        wasmedge_tensorflowlite_get_tensor_data(UNKNOWN_HANDLE, out);
    } else if (strcmp(which, "delete-unknown") == 0) {
        wasmedge_tensorflowlite_delete_session(UNKNOWN_HANDLE);
    } else if (strcmp(which, "session-as-tensor") == 0) {
        wasmedge_tensorflowlite_get_tensor_len(session);
    } else if (strcmp(which, "tensor-as-session") == 0) {
        wasmedge_tensorflowlite_run_session(tensor);
    } else if (strcmp(which, "run-after-delete") == 0) {
        wasmedge_tensorflowlite_delete_session(session);
        wasmedge_tensorflowlite_run_session(session);
    } else if (strcmp(which, "tensor-after-delete") == 0) {
        wasmedge_tensorflowlite_delete_session(session);
        wasmedge_tensorflowlite_get_tensor_data(tensor, out);
    } else if (strcmp(which, "delete-twice") == 0) {
        wasmedge_tensorflowlite_delete_session(session);
        wasmedge_tensorflowlite_delete_session(session);
    } else if (strcmp(which, "data-oob") == 0) {
        wasmedge_tensorflowlite_get_tensor_data(tensor, BAD_PTR(void *));
    } else if (strcmp(which, "data-partial-oob") == 0) {
        wasmedge_tensorflowlite_get_tensor_data(tensor, (void *)near_end(OUTPUT_BYTES - 1));
    } else if (strcmp(which, "input-name-oob") == 0) {
        wasmedge_tensorflowlite_append_input(session, BAD_PTR(const char *), 8, grey, INPUT_BYTES);
    } else if (strcmp(which, "input-data-oob") == 0) {
        wasmedge_tensorflowlite_append_input(session, INPUT_NAME, strlen(INPUT_NAME),
                                             (const void *)near_end(1000), INPUT_BYTES);
    } else if (strcmp(which, "output-name-oob") == 0) {
        wasmedge_tensorflowlite_get_output_tensor(session, BAD_PTR(const char *), 8);
    } else {
        fprintf(stderr, "legacy_probe: unknown trap case %s\n", which);
        return 64;
    }
    printf("after\n"); /* not reached when the call traps */
    return 0;
}

/* Holds a session until DIR/release exists, so that another run can try its
 * handle meanwhile. */
static int hold(const char *model_path, const char *dir)
{
    uint64_t session = session_for(model_path);
    append(session, INPUT_NAME, grey, INPUT_BYTES);
    printf("session %llu\n", (unsigned long long)session);
    fflush(stdout);
    char release[512];
    snprintf(release, sizeof release, "%s/release", dir);
    FILE *f;
    while ((f = fopen(release, "rb")) == NULL) {
        usleep(2000);
    }
    fclose(f);
    printf("run %u\n", wasmedge_tensorflowlite_run_session(session));
    return 0;
}

static int use(const char *handle)
{
    printf("run %u\n", wasmedge_tensorflowlite_run_session(strtoull(handle, NULL, 10)));
    return 0;
}

typedef uint32_t (*image_loader)(const uint8_t *, uint32_t, uint32_t, uint32_t, void *);

static const struct {
    const char *name;
    image_loader load;
    uint32_t value_bytes;
} LOADERS[] = {
    {"jpg_to_rgb8", wasmedge_image_load_jpg_to_rgb8, 1},
    {"jpg_to_bgr8", wasmedge_image_load_jpg_to_bgr8, 1},
    {"jpg_to_rgb32f", wasmedge_image_load_jpg_to_rgb32f, 4},
    {"jpg_to_bgr32f", wasmedge_image_load_jpg_to_bgr32f, 4},
    {"png_to_rgb8", wasmedge_image_load_png_to_rgb8, 1},
    {"png_to_bgr8", wasmedge_image_load_png_to_bgr8, 1},
    {"png_to_rgb32f", wasmedge_image_load_png_to_rgb32f, 4},
    {"png_to_bgr32f", wasmedge_image_load_png_to_bgr32f, 4},
};

static uint8_t *read_stdin(uint32_t *len)
{
    uint32_t cap = 1 << 16, n = 0;
    uint8_t *buf = malloc(cap);
    size_t got;
    while (buf != NULL && (got = fread(buf + n, 1, cap - n, stdin)) > 0) {
        n += (uint32_t)got;
        if (n == cap) {
            cap *= 2;
            buf = realloc(buf, cap);
        }
    }
    *len = n;
    return buf;
}

static int image(int argc, char **argv)
{
    image_loader load = NULL;
    uint32_t value_bytes = 1;
    for (size_t i = 0; i < sizeof LOADERS / sizeof LOADERS[0]; i++) {
        if (strcmp(argv[2], LOADERS[i].name) == 0) {
            load = LOADERS[i].load;
            value_bytes = LOADERS[i].value_bytes;
        }
    }
    uint32_t width = (uint32_t)strtoul(argv[3], NULL, 10), height = (uint32_t)strtoul(argv[4], NULL, 10);
    const char *variant = argc > 5 ? argv[5] : "";
    if (load == NULL) {
        fprintf(stderr, "legacy_probe: unknown image function %s\n", argv[2]);
        return 64;
    }
    uint32_t in_len = 0;
    uint8_t *in = read_stdin(&in_len);
    uint32_t need = width * height * 3 * value_bytes;
    uint8_t *buffer = calloc(need ? need : 1, 1);

    if (strcmp(variant, "tail-out") == 0) {
        /* The output starts 1000 bytes before the end of a fresh page at the end of
         * memory and runs off it: none of those 1000 bytes may change. */
        if (__builtin_wasm_memory_grow(0, 1) == (size_t)-1) {
            return 70;
        }
        uint8_t *tail = (uint8_t *)near_end(1000);
        memset(tail, 0xAA, 1000);
        printf("status %u\n", load(in, in_len, width, height, tail));
        int untouched = 1;
        for (uint32_t i = 0; i < 1000; i++) {
            untouched &= tail[i] == 0xAA;
        }
        printf("untouched %d\n", untouched);
        return 0;
    }
    const uint8_t *in_ptr = strcmp(variant, "bad-in") == 0 ? BAD_PTR(const uint8_t *) : in;
    void *out_ptr = strcmp(variant, "bad-out") == 0 ? BAD_PTR(void *) : buffer;
    printf("status %u\n", load(in_ptr, in_len, width, height, out_ptr));
    printf("fnv1a %u\n", fnv1a(buffer, need));
    return 0;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    memset(grey, 128, sizeof grey);
    if (argc == 3 && strcmp(argv[1], "paths") == 0) {
        return paths(argv[2]);
    }
    if (argc == 4 && strcmp(argv[1], "trap") == 0) {
        return trap(argv[2], argv[3]);
    }
    if (argc == 4 && strcmp(argv[1], "hold") == 0) {
        return hold(argv[2], argv[3]);
    }
    if (argc == 3 && strcmp(argv[1], "use") == 0) {
        return use(argv[2]);
    }
    if ((argc == 5 || argc == 6) && strcmp(argv[1], "image") == 0) {
        return image(argc, argv);
    }
    fprintf(stderr, "usage: see legacy_probe.c\n");
    return 64;
}
