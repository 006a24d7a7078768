/* Chat templates: family detection on the models' real templates, and renderings equal byte
 * for byte to what those templates render (tests/data/chat_expected.txt, written by
 * tests/ref/render_templates.mjs with @huggingface/jinja). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat.h"
#include "tests/test.h"
#include "util.h"

#define EXPECTED "tests/data/chat_expected.txt"
#define MAX_MSGS 16
#define MAX_TEMPLATES 32

/* A cursor over the record file; lines and blobs are NUL-terminated in place (each blob is
 * followed by a newline, which becomes its terminator). */
struct cursor {
    char *p, *end;
};

static char *next_line(struct cursor *c) {
    while (c->p < c->end && *c->p == '#') {
        char *nl = memchr(c->p, '\n', (size_t)(c->end - c->p));
        c->p = nl ? nl + 1 : c->end;
    }
    if (c->p >= c->end) return NULL;
    char *line = c->p, *nl = memchr(c->p, '\n', (size_t)(c->end - c->p));
    if (!nl) return NULL;
    *nl = 0;
    c->p = nl + 1;
    return line;
}

/* A line "TAG... N" followed by N bytes and a newline: returns the bytes, and cuts the line
 * to "TAG..." (so "msg user 5" leaves "msg user"). NULL if malformed or the tag differs. */
static char *next_blob(struct cursor *c, char *line, const char *tag, size_t *len) {
    char *sp = line ? strrchr(line, ' ') : NULL, *endp;
    if (!sp) return NULL;
    unsigned long n = strtoul(sp + 1, &endp, 10);
    if (*endp || sp[1] == 0 || n >= (unsigned long)(c->end - c->p) || c->p[n] != '\n') return NULL;
    *sp = 0;
    if (strncmp(line, tag, strlen(tag)) != 0) return NULL;
    char *blob = c->p;
    blob[n] = 0;
    c->p += n + 1;
    if (len) *len = n;
    return blob;
}

struct tmpl {
    char id[64], family[64], source[256];
};

struct ref_case {
    char id[64], name[64];
    int gen, think;
    char *bos, *eos;
    struct chat_msg msgs[MAX_MSGS];
    int n_msgs;
    char *expect; /* NULL: the template raises */
    size_t expect_len;
    const char *error;
};

static int read_case(struct cursor *c, char *line, struct ref_case *k) {
    memset(k, 0, sizeof *k);
    if (sscanf(line, "case %63s %63s gen=%d think=%d", k->id, k->name, &k->gen, &k->think) != 4)
        return -1;
    k->bos = next_blob(c, next_line(c), "bos", NULL);
    k->eos = next_blob(c, next_line(c), "eos", NULL);
    if (!k->bos || !k->eos) return -1;
    for (;;) {
        char *l = next_line(c);
        if (!l) return -1;
        if (strncmp(l, "expect error ", 13) == 0) {
            k->error = l + 13;
            return 0;
        }
        if (strncmp(l, "expect ", 7) == 0) {
            k->expect = next_blob(c, l, "expect", &k->expect_len);
            return k->expect ? 0 : -1;
        }
        if (k->n_msgs == MAX_MSGS) return -1;
        k->msgs[k->n_msgs].content = next_blob(c, l, "msg ", NULL);
        if (!k->msgs[k->n_msgs].content) return -1;
        k->msgs[k->n_msgs++].role = l + 4;
    }
}

static const struct tmpl *find_tmpl(const struct tmpl *t, int n, const char *id) {
    for (int i = 0; i < n; i++)
        if (strcmp(t[i].id, id) == 0) return &t[i];
    return NULL;
}

static void check_detect(const struct tmpl *t) {
    char name[128], path[512];
    snprintf(name, sizeof name, "chat_detect_%s", t->id);
    if (strncmp(t->source, "fixtures:", 9) == 0)
        snprintf(path, sizeof path, "%s/%s", test_fixtures(), t->source + 9);
    else
        snprintf(path, sizeof path, "%s", t->source);
    size_t len;
    char *text = test_read_file(path, &len);
    if (!text) {
        test_skip(name, "%s not found", path);
        return;
    }
    const char *got = chat_family_name(chat_detect(text, len));
    test_report(name, strcmp(got, t->family) == 0, "%s: expected %s, detected %s", path, t->family,
                got);
    free(text);
}

/* Up to 40 bytes of s with newlines shown as \n, so a report stays on one line. */
static const char *shown(const char *s, size_t n) {
    static char buf[2][96];
    static int which;
    char *b = buf[which ^= 1];
    size_t k = 0;
    for (size_t i = 0; i < n && i < 40 && k + 3 < sizeof buf[0]; i++) {
        if (s[i] == '\n')
            b[k++] = '\\', b[k++] = 'n';
        else
            b[k++] = s[i];
    }
    b[k] = 0;
    return b;
}

/* First differing byte, for a readable failure. */
static void report_diff(const char *name, const char *want, size_t wn, const char *got, size_t gn) {
    size_t i = 0;
    while (i < wn && i < gn && want[i] == got[i]) i++;
    test_report(name, 0, "differs at byte %zu of %zu/%zu: want \"%s\" got \"%s\"", i, wn, gn,
                shown(want + i, wn - i), shown(got + i, gn - i));
}

static void check_case(const struct ref_case *k, const struct tmpl *t) {
    char name[160];
    snprintf(name, sizeof name, "chat_render_%s_%s", k->id, k->name);
    enum chat_family f;
    if (!t || chat_family_from_name(t->family, &f) != 0) {
        test_report(name, 0, "no family for template %s", k->id);
        return;
    }
    struct chat_opts o = {k->gen, k->think, k->bos, k->eos};
    char *out = NULL;
    size_t n = 0;
    int rc = chat_render(f, k->msgs, k->n_msgs, &o, &out, &n);
    if (k->error) {
        test_report(name, rc != 0, "the template raises (%s); chat_render returned %d", k->error,
                    rc);
    } else if (rc != 0) {
        test_report(name, 0, "chat_render failed: %s", err_get());
    } else if (n != k->expect_len || memcmp(out, k->expect, n) != 0) {
        report_diff(name, k->expect, k->expect_len, out, n);
    } else {
        test_report(name, 1, NULL);
    }
    free(out);
}

static void test_references(void) {
    size_t len;
    char *buf = test_read_file(EXPECTED, &len);
    if (!test_report("chat_expected_readable", buf != NULL, "%s", EXPECTED)) return;
    struct cursor c = {buf, buf + len};
    struct tmpl t[MAX_TEMPLATES];
    int nt = 0, n_cases = 0, bad = 0;
    char *line;
    struct ref_case k;
    while ((line = next_line(&c))) {
        if (strncmp(line, "template ", 9) == 0 && nt < MAX_TEMPLATES) {
            if (sscanf(line, "template %63s %63s %255s", t[nt].id, t[nt].family, t[nt].source) == 3)
                check_detect(&t[nt++]);
            else
                bad = 1;
        } else if (read_case(&c, line, &k) == 0) {
            check_case(&k, find_tmpl(t, nt, k.id));
            n_cases++;
        } else {
            bad = 1;
            break;
        }
    }
    test_report("chat_expected_parsed", !bad && nt >= 14 && n_cases >= 100,
                "%d templates, %d cases, %s", nt, n_cases, bad ? "parse error" : "ok");
    free(buf);
}

static void test_names(void) {
    int ok = 1;
    for (int f = 0; f < CHAT_N_FAMILY; f++) {
        enum chat_family back;
        const char *name = chat_family_name((enum chat_family)f);
        ok &= chat_family_from_name(name, &back) == 0 && back == (enum chat_family)f &&
              strstr(chat_family_names(), name) != NULL;
    }
    test_report("chat_family_names_roundtrip", ok, NULL);
    enum chat_family f;
    int rc = chat_family_from_name("vicuna", &f);
    test_report("chat_family_unknown_name",
                rc == -1 && strstr(err_get(), "vicuna") && strstr(err_get(), "deepseek3"),
                "rc %d, error \"%s\"", rc, err_get());
}

static void test_errors(void) {
    struct chat_msg msgs[] = {{"user", "hi"}, {"tool", "42"}};
    struct chat_opts o = {1, 1, "<s>", "</s>"};
    char *out = NULL;
    int rc = chat_render(CHAT_CHATML, msgs, 2, &o, &out, NULL);
    test_report("chat_unknown_role", rc == -1 && !out && strstr(err_get(), "\"tool\""),
                "rc %d, error \"%s\"", rc, err_get());
    rc = chat_render(CHAT_CHATML, msgs, 0, &o, &out, NULL);
    test_report("chat_no_messages", rc == -1 && !out, "rc %d", rc);
}

static void test_plain(void) {
    const char *odd = "{% for m in messages %}<<{{ m.content }}>>{% endfor %}";
    test_report("chat_detect_unknown_is_plain",
                chat_detect(odd, strlen(odd)) == CHAT_PLAIN && chat_detect(NULL, 0) == CHAT_PLAIN &&
                    chat_detect("", 0) == CHAT_PLAIN,
                NULL);
    struct chat_msg msgs[] = {{"system", "S"}, {"user", "Once upon a time"}, {"assistant", NULL}};
    struct chat_opts o = {1, 1, "<s>", "</s>"};
    char *out = NULL;
    size_t n = 0;
    int rc = chat_render(CHAT_PLAIN, msgs + 1, 1, &o, &out, &n);
    test_report("chat_plain_single",
                rc == 0 && strcmp(out, "<s>Once upon a time") == 0 && n == strlen(out), "\"%s\"",
                out ? shown(out, n) : "(null)");
    free(out);
    rc = chat_render(CHAT_PLAIN, msgs, 3, &o, &out, &n);
    test_report("chat_plain_joined", rc == 0 && strcmp(out, "<s>S\nOnce upon a time\n") == 0,
                "\"%s\"", out ? shown(out, n) : "(null)");
    free(out);
}

/* Where node and the reference package are installed, the committed expectations must equal a
 * fresh rendering; the C checks above need neither. */
static void test_rerender(void) {
    const char *name = "chat_reference_rerender";
    char probe[512];
    snprintf(probe, sizeof probe, "%s/templates/deepseek-ai-DeepSeek-V3.jinja", test_fixtures());
    if (!test_file_exists("tests/ref/node_modules/@huggingface/jinja/package.json")) {
        test_skip(name, "tests/ref/node_modules absent (cd tests/ref && npm install)");
    } else if (!test_file_exists(probe)) {
        test_skip(name, "%s/templates absent", test_fixtures());
    } else if (system("node --version >/dev/null 2>&1") != 0) {
        test_skip(name, "node not found");
    } else {
        int rc = system("node tests/ref/render_templates.mjs --check >/dev/null");
        test_report(name, rc == 0, "tests/ref/render_templates.mjs --check exited %d", rc);
    }
}

int main(void) {
    test_references();
    test_names();
    test_errors();
    test_plain();
    test_rerender();
    TEST_EXIT();
}
