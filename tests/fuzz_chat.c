/* libFuzzer target: chat templates as data. The whole input is a template for chat_detect
 * (which only looks for markers); it is also cut at 0xff bytes into fields: the first picks the
 * family, the options and the roles, the next give the BOS/EOS texts and family name, the rest
 * are message contents, rendered with chat_render. Nothing may crash, leak or die().
 *
 *   make fuzz && build-fuzz/fuzz_chat tests/fuzz/corpus/chat */
#include "chat.h"
#include "util.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MAX_FIELDS 12

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size > 65536) return 0;
    (void)chat_detect((const char *)data, size);
    (void)chat_detect(NULL, 0);

    /* A NUL-terminated copy cut into fields at 0xff. */
    char *buf = malloc(size + 1);
    memcpy(buf, data, size);
    buf[size] = 0;
    char *field[MAX_FIELDS];
    int n_field = 0;
    field[n_field++] = buf;
    for (size_t i = 0; i < size && n_field < MAX_FIELDS; i++) {
        if ((uint8_t)buf[i] == 0xff) {
            buf[i] = 0;
            field[n_field++] = buf + i + 1;
        }
    }
    enum chat_family fam = chat_detect(buf, strlen(buf));
    const uint8_t *ctl = (const uint8_t *)field[0];
    size_t ctl_len = strlen(field[0]);
    uint8_t c0 = ctl_len > 0 ? ctl[0] : 0, c1 = ctl_len > 1 ? ctl[1] : 0;
    if (c0 & 0x80) fam = (enum chat_family)((c0 & 0x7f) % CHAT_N_FAMILY);
    (void)chat_family_name(fam);

    enum chat_family named;
    if (n_field > 1) (void)chat_family_from_name(field[1], &named);

    struct chat_opts opts = {
        .add_generation_prompt = c1 & 1,
        .thinking = (c1 >> 1) & 1,
        .bos_text = n_field > 1 ? field[1] : "<s>",
        .eos_text = n_field > 2 ? field[2] : "</s>",
    };
    static const char *const roles[] = {"system", "user", "assistant", "tool"};
    struct chat_msg msgs[MAX_FIELDS];
    int n_msg = 0;
    for (int i = 3; i < n_field; i++, n_msg++) {
        uint8_t r = ctl_len > (size_t)i ? ctl[i] : (uint8_t)i;
        msgs[n_msg].role = roles[r % 4];
        msgs[n_msg].content = (r & 4) ? NULL : field[i];
    }
    if (n_msg == 0) {
        msgs[0].role = "user";
        msgs[0].content = buf;
        n_msg = 1;
    }
    char *out = NULL;
    size_t out_len = 0;
    if (chat_render(fam, msgs, n_msg, &opts, &out, &out_len) == 0) {
        if (!out || strlen(out) != out_len) abort();
    }
    free(out);
    free(buf);
    return 0;
}
