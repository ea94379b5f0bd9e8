/* classify.c: a C program that runs a compiled model.bin through the sparsec C API (sparsec.h).
 *
 *   classify MODEL.bin INPUT.f32 [EXPECTED.f32]
 *
 * INPUT.f32 holds N images as raw little-endian float32 NCHW (N = file size / image size).
 * Prints the top-5 classes of each image. With EXPECTED.f32 (raw float32 [N, classes]) it
 * prints the relative error ||out - expected|| / ||expected|| and exits 1 unless it is below
 * 2e-4. Every failing call prints sparsec_last_error() and exits 2. Loads the model from bytes
 * once and from the path once, to use both entry points; frees everything it makes. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "sparsec.h"

#define CHECK(call)                                                                        \
    do {                                                                                   \
        SparsecStatus status_ = (call);                                                    \
        if (status_ != SPARSEC_STATUS_OK) {                                                \
            fprintf(stderr, "%s failed (status %d): %s\n", #call, (int)status_,            \
                    sparsec_last_error());                                                 \
            goto fail;                                                                     \
        }                                                                                  \
    } while (0)

/* Reads a whole file; *len receives its size in bytes. NULL on failure. */
static unsigned char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        perror(path);
        return NULL;
    }
    unsigned char *data = NULL;
    long size;
    if (fseek(f, 0, SEEK_END) != 0 || (size = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0) {
        perror(path);
        goto done;
    }
    data = malloc(size > 0 ? (size_t)size : 1);
    if (!data || fread(data, 1, (size_t)size, f) != (size_t)size) {
        perror(path);
        free(data);
        data = NULL;
        goto done;
    }
    *len = (size_t)size;
done:
    fclose(f);
    return data;
}

int main(int argc, char **argv) {
    if (argc != 3 && argc != 4) {
        fprintf(stderr, "usage: %s MODEL.bin INPUT.f32 [EXPECTED.f32]\n", argv[0]);
        return 2;
    }
    int code = 2;
    SparsecModel *model = NULL, *again = NULL;
    SparsecSession *session = NULL;
    unsigned char *bytes = NULL, *input = NULL, *expected = NULL;
    float *output = NULL;
    size_t bytes_len = 0, input_len = 0, expected_len = 0;

    if (!(bytes = read_file(argv[1], &bytes_len))) goto fail;
    CHECK(sparsec_model_from_bytes(bytes, bytes_len, &model));
    CHECK(sparsec_model_load(argv[1], &again)); /* the same file through the path entry point */

    size_t shape[3], classes, max_batch;
    CHECK(sparsec_model_input_shape(model, shape));
    CHECK(sparsec_model_num_classes(model, &classes));
    CHECK(sparsec_model_max_batch(model, &max_batch));
    size_t image = shape[0] * shape[1] * shape[2];

    if (!(input = read_file(argv[2], &input_len))) goto fail;
    if (input_len == 0 || input_len % (image * sizeof(float)) != 0) {
        fprintf(stderr, "%s: %zu bytes is not a whole number of [%zu, %zu, %zu] float32 images\n",
                argv[2], input_len, shape[0], shape[1], shape[2]);
        goto fail;
    }
    size_t batch = input_len / (image * sizeof(float));
    printf("model: input [%zu, %zu, %zu], %zu classes, max batch %zu; %zu image(s)\n", shape[0],
           shape[1], shape[2], classes, max_batch, batch);

    /* Sessions hold their own share of the model: freeing `again` first is allowed. */
    CHECK(sparsec_session_new(again, 0, &session));
    sparsec_model_free(again);
    again = NULL;

    if (!(output = malloc(batch * classes * sizeof(float)))) goto fail;
    CHECK(sparsec_session_run(session, (const float *)input, input_len / sizeof(float), batch,
                              output, batch * classes));

    for (size_t row = 0; row < batch; row++) {
        const float *o = output + row * classes;
        int taken[5] = {-1, -1, -1, -1, -1};
        printf("row %zu:", row);
        for (int k = 0; k < 5 && (size_t)k < classes; k++) {
            int best = -1;
            for (size_t c = 0; c < classes; c++) {
                int used = 0;
                for (int j = 0; j < k; j++) used |= taken[j] == (int)c;
                if (!used && (best < 0 || o[c] > o[best])) best = (int)c;
            }
            taken[k] = best;
            printf(" %d (%.4f)", best, o[best]);
        }
        printf("\n");
    }

    code = 0;
    if (argc == 4) {
        if (!(expected = read_file(argv[3], &expected_len))) {
            code = 2;
            goto fail;
        }
        if (expected_len != batch * classes * sizeof(float)) {
            fprintf(stderr, "%s: %zu bytes, expected %zu\n", argv[3], expected_len,
                    batch * classes * sizeof(float));
            code = 2;
            goto fail;
        }
        const float *e = (const float *)expected;
        double diff = 0.0, ref = 0.0;
        for (size_t i = 0; i < batch * classes; i++) {
            diff += ((double)output[i] - e[i]) * ((double)output[i] - e[i]);
            ref += (double)e[i] * e[i];
        }
        double rel = sqrt(diff) / sqrt(ref);
        printf("relative error %.3e against %s\n", rel, argv[3]);
        code = rel < 2e-4 ? 0 : 1;
    }

fail:
    sparsec_session_free(session);
    sparsec_model_free(again);
    sparsec_model_free(model);
    free(output);
    free(expected);
    free(input);
    free(bytes);
    return code;
}
