/* libFuzzer target: any bytes as a GGUF file. The bytes go to a memfd (read back by path
 * through /proc/self/fd, so the real open + mmap path runs); gguf_open validates it, the
 * typed getters and tokenizer_load read it, a loaded tokenizer encodes and decodes a few
 * texts, and model_load binds the whole model. Nothing may crash, leak, hang or die().
 *
 *   make fuzz && build-fuzz/fuzz_gguf tests/fuzz/corpus/gguf */
#include "gguf.h"
#include "model.h"
#include "tokenizer.h"
#include "util.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static int memfd = -1;
static char path[64];

static void exercise_tokenizer(const struct tokenizer *t, const uint8_t *data, size_t size) {
    static const char *const texts[] = {"Hello world", " a  b\n\tc", "\xe2\x96\x81<s>\xff\xc3",
                                        "<|im_start|>user<|im_end|>"};
    int32_t n_vocab = tokenizer_n_vocab(t);
    int cap = tokenizer_max_piece(t);
    char *piece = malloc((size_t)(cap > 0 ? cap : 1));
    for (int32_t id = -1; id <= n_vocab && id < 600; id++) {
        tokenizer_piece(t, id, id & 1, piece, (size_t)(cap > 0 ? cap : 1));
        (void)tokenizer_token_type(t, id);
        (void)tokenizer_is_eog(t, id);
    }
    free(piece);
    (void)tokenizer_find(t, "<s>", 3);
    /* The last 64 bytes of the input as one more text. */
    size_t tail = size < 64 ? size : 64;
    for (int i = 0; i < 5; i++) {
        const char *s = i < 4 ? texts[i] : (const char *)data + size - tail;
        size_t len = i < 4 ? strlen(s) : tail;
        int32_t *ids = NULL;
        int64_t n = tokenizer_encode(t, s, len, i & 1, i & 2, &ids);
        if (n > 0) {
            int64_t need = tokenizer_decode(t, ids, (size_t)n, i & 1, NULL, 0);
            if (need >= 0) {
                char *out = malloc((size_t)need + 1);
                tokenizer_decode(t, ids, (size_t)n, i & 1, out, (size_t)need);
                free(out);
            }
        }
        free(ids);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (memfd < 0) {
        memfd = memfd_create("fuzz_gguf", 0);
        if (memfd < 0) abort();
        snprintf(path, sizeof path, "/proc/self/fd/%d", memfd);
    }
    if (ftruncate(memfd, 0) != 0 || pwrite(memfd, data, size, 0) != (ssize_t)size) abort();

    struct gguf_file f;
    if (gguf_open(&f, path) == 0) {
        uint32_t u32;
        uint64_t u64;
        float f32;
        int b;
        struct gguf_str s;
        for (uint64_t i = 0; i < f.n_kv && i < 64; i++) {
            char key[80];
            uint64_t kl = f.kv[i].key.len < 79 ? f.kv[i].key.len : 79;
            memcpy(key, f.kv[i].key.data, kl);
            key[kl] = 0;
            gguf_get_u32(&f, key, &u32);
            gguf_get_u64(&f, key, &u64);
            gguf_get_f32(&f, key, &f32);
            gguf_get_bool(&f, key, &b);
            gguf_get_str(&f, key, &s);
            if (f.kv[i].type == GGUF_TYPE_ARRAY && f.kv[i].arr_type == GGUF_TYPE_STRING &&
                f.kv[i].arr_n <= 4096) {
                struct gguf_str *v = malloc((f.kv[i].arr_n + 1) * sizeof *v);
                gguf_arr_strings(&f.kv[i], v, f.kv[i].arr_n);
                free(v);
            }
        }
        /* Every tensor's bytes are inside the map: touch the first and last. */
        volatile uint8_t sink = 0;
        for (uint64_t i = 0; i < f.n_tensors; i++) {
            const struct gguf_tensor *t = &f.tensors[i];
            if (t->nbytes) sink ^= ((const uint8_t *)t->data)[0] ^
                                   ((const uint8_t *)t->data)[t->nbytes - 1];
        }
        (void)sink;
        struct tokenizer *tok = tokenizer_load(&f);
        if (tok) {
            exercise_tokenizer(tok, data, size);
            tokenizer_free(tok);
        }
        gguf_close(&f);
    }

    struct model m;
    memset(&m, 0, sizeof m);
    if (model_load(&m, path) == 0) model_free(&m);
    return 0;
}
