/* libFuzzer target: any bytes as a SentencePiece tokenizer.model through spm_parse, the
 * protobuf reader moerun convert runs on a user's file. It must return 0 with pieces that are
 * non-empty UTF-8 without NUL and types 1..6, or -1 with a message; never crash, leak or hang.
 *
 *   make fuzz && build-fuzz/fuzz_spm tests/fuzz/corpus/spm */
#include "tools/convert.h"
#include "util.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    struct spm_model m;
    if (spm_parse(&m, "fuzz", data, size) != 0) {
        if (m.n != 0 || m.pieces || !strstr(err_get(), "fuzz: ")) abort();
        return 0;
    }
    if (m.n < 1) abort();
    for (int64_t i = 0; i < m.n; i++)
        if (!m.pieces[i].text[0] || m.pieces[i].type < SPM_NORMAL || m.pieces[i].type > SPM_BYTE)
            abort();
    spm_free(&m);
    return 0;
}
