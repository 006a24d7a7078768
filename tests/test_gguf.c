/* GGUF reader and writer: every fixture opens, fixtures round-trip through the writer,
 * every value type writes and reads back, and malformed files fail with a precise message. */
#include "gguf.h"
#include "quant.h"
#include "test.h"
#include "util.h"

#include <dirent.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char tmpdir[64]; /* mkdtemp directory for every file this test writes */

/* ---- small helpers ---- */

static int write_file(const char *path, const void *p, size_t n) {
    FILE *fp = fopen(path, "wb");
    if (!fp) return -1;
    int ok = fwrite(p, 1, n, fp) == n;
    return (fclose(fp) == 0 && ok) ? 0 : -1;
}

static int exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

/* Number of entries in tmpdir (temporary files left behind show up here). */
static int count_tmp_entries(void) {
    DIR *d = opendir(tmpdir);
    int n = 0;
    for (struct dirent *e; d && (e = readdir(d));) n += e->d_name[0] != '.';
    if (d) closedir(d);
    return n;
}

static void remove_tmpdir(void) {
    DIR *d = opendir(tmpdir);
    char p[512];
    for (struct dirent *e; d && (e = readdir(d));) {
        if (e->d_name[0] == '.') continue;
        snprintf(p, sizeof p, "%s/%s", tmpdir, e->d_name);
        unlink(p);
    }
    if (d) closedir(d);
    rmdir(tmpdir);
}

/* A growing list of fixture paths. */
struct paths {
    char **p;
    int n, cap;
};

static void find_gguf(struct paths *ps, const char *dir) {
    DIR *d = opendir(dir);
    for (struct dirent *e; d && (e = readdir(d));) {
        if (e->d_name[0] == '.') continue;
        char p[1024];
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        struct stat st;
        if (stat(p, &st) != 0) continue;
        size_t len = strlen(p);
        if (S_ISDIR(st.st_mode)) {
            find_gguf(ps, p);
        } else if (len > 5 && strcmp(p + len - 5, ".gguf") == 0) {
            if (ps->n == ps->cap)
                ps->p = xrealloc(ps->p, (ps->cap = 2 * ps->cap + 16) * sizeof(char *));
            ps->p[ps->n++] = xstrdup(p);
        }
    }
    if (d) closedir(d);
}

static int cmp_cstr(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* ---- 1. every fixture opens and is self-consistent ---- */

static const char *check_consistent(const struct gguf_file *f) {
    static char why[256];
    struct gguf_str arch;
    if (f->version != 3 && f->version != 2) return "version";
    if (f->alignment == 0 || (f->alignment & (f->alignment - 1))) return "alignment";
    if (f->data_offset % f->alignment) return "data offset not aligned";
    if (gguf_get_str(f, "general.architecture", &arch) != 0) return "no general.architecture";
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        const struct gguf_tensor *t = &f->tensors[i];
        const struct qtype_traits *tr = qtype_traits(t->type);
        int64_t n = t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3];
        if (!tr || (uint64_t)(n / tr->blck_size) * tr->type_size != t->nbytes ||
            (const uint8_t *)t->data + t->nbytes > f->map + f->size ||
            (const uint8_t *)t->data != f->map + f->data_offset + t->offset) {
            snprintf(why, sizeof why, "tensor %" PRIu64 " inconsistent", i);
            return why;
        }
        char name[256];
        snprintf(name, sizeof name, "%.*s", (int)t->name.len, t->name.data);
        if (gguf_find_tensor(f, name) != t) return "gguf_find_tensor misses a tensor";
    }
    return NULL;
}

static void test_stories_facts(const char *root) {
    char path[1024];
    struct gguf_file f;
    snprintf(path, sizeof path, "%s/llama2c-stories/stories260K.gguf", root);
    if (!exists(path)) return test_skip("gguf_stories_facts", "%s missing", path);
    if (gguf_open(&f, path)) {
        test_report("gguf_stories_facts", 0, "%s", err_get());
        return;
    }
    struct gguf_str arch = {0, ""};
    uint32_t blocks = 0, bad_u32 = 7;
    uint64_t n_tok = 0;
    const uint8_t *tok = NULL;
    const struct gguf_tensor *emb = gguf_find_tensor(&f, "token_embd.weight");
    int ok = gguf_get_str(&f, "general.architecture", &arch) == 0 && gguf_str_eq(arch, "llama") &&
             gguf_get_u32(&f, "llama.block_count", &blocks) == 0 && blocks == 5 &&
             f.n_tensors == 48 && f.n_kv == 19 && f.alignment == 32 && emb &&
             gguf_find_tensor(&f, "blk.4.attn_q.weight") &&
             !gguf_find_tensor(&f, "blk.5.attn_q.weight") &&
             gguf_get_arr(&f, "tokenizer.ggml.tokens", GGUF_TYPE_STRING, &n_tok, &tok) == 0 &&
             n_tok == 512 && (uint64_t)emb->ne[1] == n_tok &&
             gguf_get_u32(&f, "no.such.key", &bad_u32) == 1 && bad_u32 == 7;
    test_report("gguf_stories_facts", ok,
                "arch %.*s, block_count %u, %" PRIu64 " tensors, %" PRIu64 " kv, %" PRIu64
                " tokens, alignment %u",
                (int)arch.len, arch.data, blocks, f.n_tensors, f.n_kv, n_tok, f.alignment);
    gguf_close(&f);
}

static void test_fixtures_open(const char *root) {
    struct paths ps = {0};
    find_gguf(&ps, root);
    if (ps.n == 0) return test_skip("gguf_fixtures_open", "no .gguf files under %s", root);
    qsort(ps.p, ps.n, sizeof *ps.p, cmp_cstr);
    int n_ok = 0;
    for (int i = 0; i < ps.n; i++) {
        struct gguf_file f;
        const char *why = gguf_open(&f, ps.p[i]) ? err_get() : check_consistent(&f);
        if (why)
            printf("  %s: %s\n", ps.p[i], why);
        else
            n_ok++;
        if (f.map) gguf_close(&f);
        free(ps.p[i]);
    }
    free(ps.p);
    test_report("gguf_fixtures_open", n_ok == ps.n, "%d of %d fixture files open and check out",
                n_ok, ps.n);
    test_stories_facts(root);
}

/* ---- 2. round trip through the writer ---- */

struct chunked {
    const uint8_t *p;
    uint64_t n;
};

/* Producer: hands the bytes over in 1000-byte pieces. */
static int produce_chunked(void *ctx, struct gguf_stream *s) {
    const struct chunked *c = ctx;
    for (uint64_t i = 0; i < c->n; i += 1000)
        if (gguf_stream_write(s, c->p + i, c->n - i < 1000 ? c->n - i : 1000)) return -1;
    return 0;
}

static int kv_same(const struct gguf_kv *a, const struct gguf_kv *b) {
    return a->key.len == b->key.len && memcmp(a->key.data, b->key.data, a->key.len) == 0 &&
           a->type == b->type && a->arr_type == b->arr_type && a->arr_n == b->arr_n &&
           a->value_size == b->value_size && memcmp(a->value, b->value, a->value_size) == 0;
}

static int tensor_same(const struct gguf_tensor *a, const struct gguf_tensor *b) {
    return a->name.len == b->name.len && memcmp(a->name.data, b->name.data, a->name.len) == 0 &&
           a->type == b->type && a->n_dims == b->n_dims &&
           memcmp(a->ne, b->ne, sizeof a->ne) == 0 && a->nbytes == b->nbytes &&
           a->offset == b->offset && memcmp(a->data, b->data, a->nbytes) == 0;
}

/* Compares every key and tensor; returns NULL or what differs. */
static const char *compare_files(const struct gguf_file *a, const struct gguf_file *b) {
    if (a->n_kv != b->n_kv || a->n_tensors != b->n_tensors) return "counts differ";
    for (uint64_t i = 0; i < a->n_kv; i++)
        if (!kv_same(&a->kv[i], &b->kv[i])) return "a key/value differs";
    for (uint64_t i = 0; i < a->n_tensors; i++)
        if (!tensor_same(&a->tensors[i], &b->tensors[i])) return "a tensor differs";
    if (a->data_offset != b->data_offset) return "data offset differs";
    return NULL;
}

/* 0 identical, 1 identical except zero bytes appended to b, 2 different. */
static int bytes_same(const struct gguf_file *a, const struct gguf_file *b) {
    if (a->size > b->size || memcmp(a->map, b->map, a->size) != 0) return 2;
    for (uint64_t i = a->size; i < b->size; i++)
        if (b->map[i]) return 2;
    return a->size == b->size ? 0 : 1;
}

static void copy_into(struct gguf_writer *w, const struct gguf_file *f, int stream,
                      struct chunked *chunks) {
    for (uint64_t i = 0; i < f->n_kv; i++) gguf_set_kv(w, &f->kv[i]);
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        const struct gguf_tensor *t = &f->tensors[i];
        char name[256];
        snprintf(name, sizeof name, "%.*s", (int)t->name.len, t->name.data);
        chunks[i] = (struct chunked){t->data, t->nbytes};
        if (stream && i % 2)
            gguf_add_tensor_stream(w, name, t->type, t->n_dims, t->ne, t->nbytes, produce_chunked,
                                   &chunks[i]);
        else
            gguf_add_tensor(w, name, t->type, t->n_dims, t->ne, t->data, t->nbytes);
    }
}

static void test_round_trip(const char *root, const char *rel, int stream, int want_identical) {
    char src[1024], dst[256], name[300];
    snprintf(src, sizeof src, "%s/%s", root, rel);
    snprintf(dst, sizeof dst, "%s/roundtrip.gguf", tmpdir);
    snprintf(name, sizeof name, "gguf_round_trip %s%s", rel, stream ? " (streamed)" : "");
    if (!exists(src)) return test_skip(name, "%s missing", src);
    struct gguf_file a, b;
    if (gguf_open(&a, src)) return (void)test_report(name, 0, "%s", err_get());
    struct gguf_writer *w = gguf_writer_new();
    struct chunked *chunks = xcalloc(a.n_tensors, sizeof *chunks);
    copy_into(w, &a, stream, chunks);
    int rc = gguf_writer_write(w, dst);
    gguf_writer_free(w);
    free(chunks);
    if (rc || gguf_open(&b, dst)) {
        test_report(name, 0, "%s", err_get());
        gguf_close(&a);
        return;
    }
    const char *why = compare_files(&a, &b);
    int same = bytes_same(&a, &b);
    static const char *const words[] = {
        "byte-identical", "identical but for zero padding added at the end", "not byte-identical"};
    test_report(
        name, !why && same <= want_identical,
        "%s; %" PRIu64 " keys, %" PRIu64 " tensors; file %s (%" PRIu64 " -> %" PRIu64 " bytes)",
        why ? why : "all keys and tensors equal", a.n_kv, a.n_tensors, words[same], a.size, b.size);
    gguf_close(&a);
    gguf_close(&b);
    unlink(dst);
}

/* ---- 3. the writer with every value type ---- */

static const char *const words3[] = {"alpha", "", "gamma with spaces", "\xce\xb4"};

/* A key of any scalar type through gguf_set_kv (the writer has setters only for the common
 * ones). */
static void set_scalar(struct gguf_writer *w, const char *key, enum gguf_type t, const void *v,
                       uint64_t size) {
    struct gguf_kv kv = {{strlen(key), key}, t, 0, 0, v, size};
    gguf_set_kv(w, &kv);
}

static void fill_all_types(struct gguf_writer *w) {
    uint8_t u8 = 200, b = 1;
    int8_t i8 = -100;
    uint16_t u16 = 60000;
    int16_t i16 = -30000;
    int64_t i64 = -5000000000LL;
    double f64 = 0.1;
    set_scalar(w, "t.u8", GGUF_TYPE_UINT8, &u8, 1);
    set_scalar(w, "t.i8", GGUF_TYPE_INT8, &i8, 1);
    set_scalar(w, "t.u16", GGUF_TYPE_UINT16, &u16, 2);
    set_scalar(w, "t.i16", GGUF_TYPE_INT16, &i16, 2);
    set_scalar(w, "t.bool_raw", GGUF_TYPE_BOOL, &b, 1);
    set_scalar(w, "t.i64", GGUF_TYPE_INT64, &i64, 8);
    set_scalar(w, "t.f64", GGUF_TYPE_FLOAT64, &f64, 8);
    gguf_set_u32(w, "t.u32", 4000000000u);
    gguf_set_i32(w, "t.i32", -7);
    gguf_set_u64(w, "t.u64", 1ULL << 40);
    gguf_set_f32(w, "t.f32", 1.5f);
    gguf_set_bool(w, "t.bool", 0);
    gguf_set_str(w, "t.str", "first value, replaced below");
    gguf_set_str(w, "t.str", "hello");
    gguf_set_arr_str(w, "t.arr.str", words3, 4);
    gguf_set_arr_str(w, "t.arr.str0", words3, 0);
    static const uint8_t raw[64] = {1, 0, 1, 1, 0, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};
    for (int t = 0; t < GGUF_TYPE_COUNT; t++) {
        if (t == GGUF_TYPE_STRING || t == GGUF_TYPE_ARRAY) continue;
        char key[64];
        snprintf(key, sizeof key, "t.arr.%s", gguf_type_name((enum gguf_type)t));
        gguf_set_arr(w, key, (enum gguf_type)t, raw, t == GGUF_TYPE_BOOL ? 5 : 4);
    }
    gguf_set_u32(w, "general.alignment", 64);
}

static int produce_ramp(void *ctx, struct gguf_stream *s) {
    (void)ctx;
    for (int i = 0; i < 40; i++) {
        float v = (float)i;
        if (gguf_stream_write(s, &v, sizeof v)) return -1;
    }
    return 0;
}

static int produce_fail(void *ctx, struct gguf_stream *s) {
    (void)ctx;
    float v = 0;
    gguf_stream_write(s, &v, sizeof v);
    err_set("producer test failure");
    return -1;
}

static int produce_short(void *ctx, struct gguf_stream *s) {
    (void)ctx;
    float v = 0;
    return gguf_stream_write(s, &v, sizeof v);
}

static const float small_data[8] = {1, 2, 3, 4, 5, 6, 7, 8};

static struct gguf_writer *small_writer(void) {
    struct gguf_writer *w = gguf_writer_new();
    int64_t ne[2] = {8, 1}, ne2[2] = {8, 5};
    fill_all_types(w);
    gguf_add_tensor(w, "mem", QT_F32, 1, ne, small_data, sizeof small_data);
    gguf_add_tensor_stream(w, "ramp", QT_F32, 2, ne2, 160, produce_ramp, NULL);
    return w;
}

/* Each getter: 0 with the right value, 1 when absent, -1 on a type or range mismatch. */
static int check_getters(const struct gguf_file *f) {
    uint32_t u32 = 0, untouched = 99;
    int32_t i32 = 0;
    uint64_t u64 = 0, n = 0;
    float f32 = 0;
    int bl = -1;
    struct gguf_str s;
    const uint8_t *d;
    int ok = gguf_get_u32(f, "t.u8", &u32) == 0 && u32 == 200;
    ok &= gguf_get_u32(f, "t.u32", &u32) == 0 && u32 == 4000000000u;
    ok &= gguf_get_i32(f, "t.i8", &i32) == 0 && i32 == -100;
    ok &= gguf_get_i32(f, "t.i16", &i32) == 0 && i32 == -30000;
    ok &= gguf_get_i32(f, "t.u16", &i32) == 0 && i32 == 60000;
    ok &= gguf_get_u64(f, "t.u64", &u64) == 0 && u64 == 1ULL << 40;
    ok &= gguf_get_u32(f, "t.i32", &u32) == -1 && strstr(err_get(), "does not fit in u32");
    ok &= gguf_get_i32(f, "t.u32", &i32) == -1 && strstr(err_get(), "t.u32");
    ok &= gguf_get_i32(f, "t.i64", &i32) == -1;
    ok &= gguf_get_u64(f, "t.i64", &u64) == -1 && strstr(err_get(), "-5000000000");
    ok &= gguf_get_i32(f, "t.i32", &i32) == 0 && i32 == -7;
    ok &= gguf_get_u32(f, "t.str", &u32) == -1 && strstr(err_get(), "has type string");
    ok &= gguf_get_u32(f, "t.missing", &untouched) == 1 && untouched == 99;
    ok &= gguf_get_f32(f, "t.f32", &f32) == 0 && f32 == 1.5f;
    ok &= gguf_get_f32(f, "t.f64", &f32) == 0 && f32 == 0.1f;
    ok &= gguf_get_f32(f, "t.u32", &f32) == -1;
    ok &= gguf_get_bool(f, "t.bool", &bl) == 0 && bl == 0;
    ok &= gguf_get_bool(f, "t.bool_raw", &bl) == 0 && bl == 1;
    ok &= gguf_get_str(f, "t.str", &s) == 0 && gguf_str_eq(s, "hello");
    ok &= gguf_get_arr(f, "t.arr.i16", GGUF_TYPE_INT16, &n, &d) == 0 && n == 4 && d[6] == 3;
    ok &= gguf_get_arr(f, "t.arr.i16", GGUF_TYPE_UINT16, &n, &d) == -1 &&
          strstr(err_get(), "expected array of u16");
    ok &= gguf_get_arr(f, "t.arr.bool", GGUF_TYPE_BOOL, &n, &d) == 0 && n == 5;
    return ok;
}

static int check_strings(const struct gguf_file *f) {
    struct gguf_str out[4];
    const struct gguf_kv *kv = gguf_find_kv(f, "t.arr.str");
    if (!kv || gguf_arr_strings(kv, out, 4)) return 0;
    for (int i = 0; i < 4; i++)
        if (!gguf_str_eq(out[i], words3[i])) return 0;
    kv = gguf_find_kv(f, "t.arr.str0");
    return kv && kv->arr_n == 0 && gguf_arr_strings(kv, out, 0) == 0 &&
           gguf_arr_strings(kv, out, 1) == -1;
}

static int check_small_tensors(const struct gguf_file *f) {
    const struct gguf_tensor *m = gguf_find_tensor(f, "mem"), *r = gguf_find_tensor(f, "ramp");
    if (!m || !r || m->n_dims != 1 || r->n_dims != 2 || r->ne[1] != 5 || r->nbytes != 160) return 0;
    if (memcmp(m->data, small_data, sizeof small_data) != 0) return 0;
    if (f->alignment != 64 || r->offset % 64 || f->data_offset % 64 || f->size % 64) return 0;
    for (int i = 0; i < 40; i++) {
        float v;
        memcpy(&v, (const uint8_t *)r->data + 4 * i, 4);
        if (v != (float)i) return 0;
    }
    return 1;
}

/* KiB of the mapping that holds `addr` in this process's page tables (smaps' Rss), or -1. */
static long mapped_rss_kib(const void *addr) {
    FILE *fp = fopen("/proc/self/smaps", "r");
    if (!fp) return -1;
    char line[512];
    int in = 0;
    long rss = -1;
    while (rss < 0 && fgets(line, sizeof line, fp)) {
        unsigned long lo, hi;
        if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2)
            in = (uintptr_t)addr >= lo && (uintptr_t)addr < hi;
        else if (in && sscanf(line, "Rss: %ld kB", &rss) == 1)
            break;
    }
    fclose(fp);
    return rss;
}

/* GGUF_POPULATE fills the page tables at open: an 8 MiB tensor nobody has read is resident in
 * the mapping; without it only the pages parsing touched are, and --no-mmap drops the flag. */
static void test_populate(void) {
    char path[256];
    snprintf(path, sizeof path, "%s/populate.gguf", tmpdir);
    enum { N = 2 << 20 };
    float *big = xcalloc(N, sizeof *big);
    int64_t ne[1] = {N};
    struct gguf_writer *w = gguf_writer_new();
    gguf_add_tensor(w, "big", QT_F32, 1, ne, big, (uint64_t)N * sizeof *big);
    int rc = gguf_writer_write(w, path);
    gguf_writer_free(w);
    free(big);
    struct gguf_file lazy, full, read;
    if (rc || gguf_open_hold(&lazy, path, GGUF_MAP))
        return (void)test_report("gguf_populate", 0, "%s", err_get());
    if (gguf_open_hold(&full, path, GGUF_POPULATE)) {
        gguf_close(&lazy);
        return (void)test_report("gguf_populate", 0, "%s", err_get());
    }
    if (gguf_open_hold(&read, path, GGUF_READ | GGUF_POPULATE)) {
        gguf_close(&lazy), gguf_close(&full);
        return (void)test_report("gguf_populate", 0, "%s", err_get());
    }
    long lazy_kib = mapped_rss_kib(lazy.map), full_kib = mapped_rss_kib(full.map);
    test_report("gguf_populate",
                lazy_kib >= 0 && lazy_kib < 1024 && full_kib >= 8192 &&
                    (full.hold & GGUF_POPULATE) && !(lazy.hold & GGUF_POPULATE) &&
                    !(read.hold & GGUF_POPULATE) && (read.hold & GGUF_READ),
                "8 MiB tensor: %ld KiB resident mapped lazily, %ld KiB populated; hold flags "
                "%d, %d, --no-mmap %d",
                lazy_kib, full_kib, lazy.hold, full.hold, read.hold);
    gguf_close(&lazy), gguf_close(&full), gguf_close(&read);
    unlink(path);
}

static void test_writer_types(void) {
    char path[256];
    snprintf(path, sizeof path, "%s/types.gguf", tmpdir);
    struct gguf_writer *w = small_writer();
    int rc = gguf_writer_write(w, path);
    gguf_writer_free(w);
    struct gguf_file f;
    if (rc || gguf_open(&f, path))
        return (void)test_report("gguf_writer_types", 0, "%s", err_get());
    int n_arr = 0;
    for (uint64_t i = 0; i < f.n_kv; i++) n_arr += f.kv[i].type == GGUF_TYPE_ARRAY;
    test_report("gguf_writer_types", f.n_kv == 27 && n_arr == 13,
                "%" PRIu64 " keys (%d arrays) read back", f.n_kv, n_arr);
    test_report("gguf_writer_getters", check_getters(&f), "typed getters on every type");
    test_report("gguf_writer_strings", check_strings(&f), "string arrays, empty ones included");
    test_report("gguf_writer_tensors", check_small_tensors(&f), "memory and streamed tensors");
    gguf_close(&f);
    unlink(path);
}

/* A writer whose write must fail, leaving neither the file nor a temporary one. */
static void expect_write_fails(const char *name, struct gguf_writer *w, const char *msg) {
    char path[256];
    snprintf(path, sizeof path, "%s/fail.gguf", tmpdir);
    int before = count_tmp_entries();
    int rc = gguf_writer_write(w, path);
    gguf_writer_free(w);
    const char *e = err_get();
    test_report(name, rc == -1 && !exists(path) && count_tmp_entries() == before && strstr(e, msg),
                "rc %d, leftover files %d, message: %s", rc, count_tmp_entries() - before, e);
}

static void test_writer_failures(void) {
    int64_t ne[1] = {8}, ne_q[1] = {40};
    struct gguf_writer *w = small_writer();
    gguf_add_tensor_stream(w, "bad", QT_F32, 1, ne, 32, produce_fail, NULL);
    expect_write_fails("gguf_writer_producer_fails", w, "producer test failure");
    w = small_writer();
    gguf_add_tensor_stream(w, "short", QT_F32, 1, ne, 32, produce_short, NULL);
    expect_write_fails("gguf_writer_producer_short", w, "wrote 4 bytes, expected 32");
    w = small_writer();
    gguf_add_tensor_stream(w, "long", QT_F32, 1, ne, 32, produce_ramp, NULL);
    expect_write_fails("gguf_writer_producer_long", w, "wrote more than its 32 bytes");
    w = small_writer();
    gguf_add_tensor(w, "size", QT_F32, 1, ne, small_data, 16);
    expect_write_fails("gguf_writer_bad_nbytes", w, "has 16 bytes, expected 32");
    w = small_writer();
    gguf_add_tensor(w, "q", QT_Q8_0, 1, ne_q, small_data, 34);
    expect_write_fails("gguf_writer_bad_block", w,
                       "ne [40, 1, 1, 1]): row length is not a multiple");
    w = small_writer();
    gguf_add_tensor(w, "mem", QT_F32, 1, ne, small_data, 32);
    expect_write_fails("gguf_writer_dup_tensor", w, "added twice");
    w = small_writer();
    gguf_add_tensor(w, "a_tensor_name_that_goes_on_and_on_well_past_what_ggml_accepts_here", QT_F32,
                    1, ne, small_data, 32);
    expect_write_fails("gguf_writer_long_name", w, "longer than 63 bytes");
    w = small_writer();
    gguf_set_u32(w, "general.alignment", 48);
    expect_write_fails("gguf_writer_bad_alignment", w, "power of two");
    w = small_writer();
    gguf_set_arr(w, "x", GGUF_TYPE_STRING, small_data, 1);
    expect_write_fails("gguf_writer_bad_arr_type", w, "fixed-size element type");
    w = gguf_writer_new();
    char path[300];
    snprintf(path, sizeof path, "%s/no/such/dir/x.gguf", tmpdir);
    test_report("gguf_writer_bad_dir",
                gguf_writer_write(w, path) == -1 && strstr(err_get(), "cannot create"), "%s",
                err_get());
    gguf_writer_free(w);
}

/* ---- 4. malformed files ---- */

struct buf {
    uint8_t p[4096];
    size_t n;
};

static void put(struct buf *b, const void *p, size_t n) {
    if (b->n + n <= sizeof b->p) memcpy(b->p + b->n, p, n);
    b->n += n;
}
static void put_u32(struct buf *b, uint32_t v) { put(b, &v, 4); }
static void put_u64(struct buf *b, uint64_t v) { put(b, &v, 8); }
static void put_str(struct buf *b, const char *s) {
    put_u64(b, strlen(s));
    put(b, s, strlen(s));
}
static void header(struct buf *b, uint32_t version, uint64_t n_tensors, uint64_t n_kv) {
    put(b, "GGUF", 4);
    put_u32(b, version);
    put_u64(b, n_tensors);
    put_u64(b, n_kv);
}
static void kv_u32(struct buf *b, const char *key, uint32_t v) {
    put_str(b, key);
    put_u32(b, GGUF_TYPE_UINT32);
    put_u32(b, v);
}
static void kv_head(struct buf *b, const char *key, uint32_t type) {
    put_str(b, key);
    put_u32(b, type);
}
static void tinfo(struct buf *b, const char *name, uint32_t n_dims, const int64_t *ne,
                  uint32_t type, uint64_t offset) {
    put_str(b, name);
    put_u32(b, n_dims);
    put(b, ne, 8 * (size_t)n_dims);
    put_u32(b, type);
    put_u64(b, offset);
}
/* Pads to 32 and appends n zero bytes of tensor data. */
static void data(struct buf *b, size_t n) {
    static const uint8_t z[1024];
    put(b, z, (32 - b->n % 32) % 32);
    put(b, z, n);
}

static const int64_t ne8[1] = {8};

/* The valid base: one key, two f32 tensors of 8 values. Cases vary one thing. */
static void base(struct buf *b, uint32_t version) {
    header(b, version, 2, 1);
    kv_u32(b, "general.alignment", 32);
    tinfo(b, "a", 1, ne8, QT_F32, 0);
    tinfo(b, "b", 1, ne8, QT_F32, 32);
    data(b, 64);
}

static void c_valid(struct buf *b) { base(b, 3); }
static void c_valid_v2(struct buf *b) { base(b, 2); }
static void c_empty(struct buf *b) { (void)b; }
static void c_short_magic(struct buf *b) { put(b, "GG", 2); }
static void c_short_header(struct buf *b) { put(b, "GGUF\3\0\0\0\0\0", 10); }
static void c_magic(struct buf *b) {
    base(b, 3);
    memcpy(b->p, "GGML", 4);
}
static void c_v1(struct buf *b) { base(b, 1); }
static void c_v4(struct buf *b) { base(b, 4); }
static void c_swapped(struct buf *b) { base(b, 0x03000000); }
static void c_n_kv_huge(struct buf *b) {
    base(b, 3);
    memcpy(b->p + 16, &(uint64_t){1ULL << 40}, 8);
}
static void c_n_tensors_huge(struct buf *b) {
    base(b, 3);
    memcpy(b->p + 8, &(uint64_t){UINT64_MAX}, 8);
}
static void c_n_tensors_after_kv(struct buf *b) {
    header(b, 3, 4, 1);
    kv_head(b, "k", GGUF_TYPE_ARRAY);
    put_u32(b, GGUF_TYPE_UINT8);
    put_u64(b, 100);
    data(b, 100);
}
static void c_str_past_end(struct buf *b) {
    header(b, 3, 0, 1);
    put_u64(b, 1000);
    put(b, "key", 3);
    data(b, 100);
}
static void c_kv_type(struct buf *b) {
    header(b, 3, 0, 1);
    kv_head(b, "k", 13);
    put_u32(b, 0);
}
static void c_nested(struct buf *b) {
    header(b, 3, 0, 1);
    kv_head(b, "k", GGUF_TYPE_ARRAY);
    put_u32(b, GGUF_TYPE_ARRAY);
    put_u64(b, 0);
}
static void c_arr_overflow(struct buf *b) {
    header(b, 3, 0, 1);
    kv_head(b, "k", GGUF_TYPE_ARRAY);
    put_u32(b, GGUF_TYPE_UINT64);
    put_u64(b, 1ULL << 61);
    data(b, 64);
}
static void c_arr_past_end(struct buf *b) {
    header(b, 3, 0, 1);
    kv_head(b, "k", GGUF_TYPE_ARRAY);
    put_u32(b, GGUF_TYPE_UINT32);
    put_u64(b, 1000);
    data(b, 64);
}
static void c_str_arr_huge(struct buf *b) {
    header(b, 3, 0, 1);
    kv_head(b, "k", GGUF_TYPE_ARRAY);
    put_u32(b, GGUF_TYPE_STRING);
    put_u64(b, 1ULL << 50);
    data(b, 64);
}
static void c_bool(struct buf *b) {
    header(b, 3, 0, 1);
    kv_head(b, "k", GGUF_TYPE_BOOL);
    put(b, "\2", 1);
}
static void c_bool_arr(struct buf *b) {
    header(b, 3, 0, 1);
    kv_head(b, "k", GGUF_TYPE_ARRAY);
    put_u32(b, GGUF_TYPE_BOOL);
    put_u64(b, 3);
    put(b, "\1\0\7", 3);
}
static void c_empty_key(struct buf *b) {
    header(b, 3, 0, 1);
    kv_u32(b, "", 1);
}
static void c_dup_key(struct buf *b) {
    header(b, 3, 0, 3);
    kv_u32(b, "x.a", 1);
    kv_u32(b, "x.b", 1);
    kv_u32(b, "x.a", 2);
}
static void align_case(struct buf *b, uint32_t type, uint64_t v) {
    header(b, 3, 1, 1);
    kv_head(b, "general.alignment", type);
    put(b, &v, type == GGUF_TYPE_UINT64 ? 8 : 4);
    tinfo(b, "a", 1, ne8, QT_F32, 0);
    data(b, 32);
}
static void c_align0(struct buf *b) { align_case(b, GGUF_TYPE_UINT32, 0); }
static void c_align3(struct buf *b) { align_case(b, GGUF_TYPE_UINT32, 3); }
static void c_align_u64(struct buf *b) { align_case(b, GGUF_TYPE_UINT64, 32); }
/* One tensor 'w' with the given shape, type and offset, then 64 bytes of data. */
static void one_tensor(struct buf *b, uint32_t n_dims, const int64_t *ne, uint32_t type,
                       uint64_t offset) {
    header(b, 3, 1, 0);
    tinfo(b, "w", n_dims, ne, type, offset);
    data(b, 64);
}
static const int64_t ne5[5] = {1, 1, 1, 1, 1};
static void c_dims5(struct buf *b) { one_tensor(b, 5, ne5, QT_F32, 0); }
static void c_dims0(struct buf *b) { one_tensor(b, 0, ne5, QT_F32, 0); }
static void c_dim_zero(struct buf *b) { one_tensor(b, 2, (int64_t[]){8, 0}, QT_F32, 0); }
static void c_dim_neg(struct buf *b) { one_tensor(b, 2, (int64_t[]){8, -5}, QT_F32, 0); }
static void c_elems(struct buf *b) {
    one_tensor(b, 3, (int64_t[]){1LL << 32, 1LL << 32, 1LL << 32}, QT_F32, 0);
}
static void c_bytes_big(struct buf *b) {
    one_tensor(b, 2, (int64_t[]){1LL << 40, 1LL << 20}, QT_F32, 0);
}
static void c_ttype(struct buf *b) { one_tensor(b, 1, ne8, 99, 0); }
static void c_block(struct buf *b) { one_tensor(b, 1, (int64_t[]){40}, QT_Q8_0, 0); }
static void c_unaligned(struct buf *b) { one_tensor(b, 1, ne8, QT_F32, 4); }
static void c_past_end(struct buf *b) { one_tensor(b, 1, ne8, QT_F32, 64); }
static void c_overlap(struct buf *b) {
    header(b, 3, 2, 0);
    tinfo(b, "a", 1, (int64_t[]){16}, QT_F32, 0);
    tinfo(b, "b", 1, ne8, QT_F32, 32);
    data(b, 96);
}
static void c_dup_tensor(struct buf *b) {
    header(b, 3, 2, 0);
    tinfo(b, "a", 1, ne8, QT_F32, 0);
    tinfo(b, "a", 1, ne8, QT_F32, 32);
    data(b, 64);
}
static void c_valid_one(struct buf *b) { one_tensor(b, 1, ne8, QT_F32, 0); }
static void c_empty_name2(struct buf *b) {
    header(b, 3, 1, 0);
    tinfo(b, "", 1, ne8, QT_F32, 0);
    data(b, 32);
}
static void c_trunc_info(struct buf *b) {
    header(b, 3, 1, 0);
    put_str(b, "w");
    put_u32(b, 4);
    put(b, ne5, 20); /* two and a half of the four dimensions */
}

struct mcase {
    const char *name;
    void (*build)(struct buf *b);
    const char *expect; /* substring of the error; NULL: must open */
};

static const struct mcase cases[] = {
    {"valid", c_valid, NULL},
    {"valid_v2", c_valid_v2, NULL},
    {"empty", c_empty, "file is empty (0 bytes)"},
    {"short_magic", c_short_magic, "too short for GGUF (2 bytes)"},
    {"short_header", c_short_header, "header n_tensors at offset 8 needs 8 bytes, only 2 left"},
    {"bad_magic", c_magic, "bad magic 47 47 4d 4c"},
    {"version_1", c_v1, "unsupported GGUF version 1 (expected 2 or 3)"},
    {"version_4", c_v4, "unsupported GGUF version 4"},
    {"version_swapped", c_swapped, "0x03000000 looks byte-swapped"},
    {"n_kv_huge", c_n_kv_huge, "n_kv 1099511627776 is more than the file can hold"},
    {"n_tensors_huge", c_n_tensors_huge, "n_tensors 18446744073709551615 is more than"},
    {"n_tensors_after_kv", c_n_tensors_after_kv, "n_tensors 4 is more than the file can hold"},
    {"string_past_end", c_str_past_end, "string length 1000 at offset 24 runs past the end"},
    {"kv_type_unknown", c_kv_type, "key 'k' has unknown value type 13"},
    {"kv_nested_array", c_nested, "key 'k' is a nested array"},
    {"kv_array_overflow", c_arr_overflow, "array count 2305843009213693952 of u64 overflows"},
    {"kv_array_past_end", c_arr_past_end, "1000 values of type u32 (4000 bytes)"},
    {"kv_str_array_huge", c_str_arr_huge, "1125899906842624 strings cannot fit"},
    {"kv_bool", c_bool, "key 'k' has bool value 2"},
    {"kv_bool_array", c_bool_arr, "key 'k' has bool value 7"},
    {"kv_empty_key", c_empty_key, "key #0 at offset 24 is empty"},
    {"kv_duplicate", c_dup_key, "key 'x.a' appears more than once"},
    {"alignment_0", c_align0, "general.alignment is 0 (expected a non-zero power of two)"},
    {"alignment_3", c_align3, "general.alignment is 3"},
    {"alignment_u64", c_align_u64, "general.alignment has type u64 (expected u32)"},
    {"n_dims_5", c_dims5, "tensor 'w' has n_dims 5 (expected 1..4)"},
    {"n_dims_0", c_dims0, "tensor 'w' has n_dims 0"},
    {"dim_zero", c_dim_zero, "tensor 'w': dimension 1 is 0 (expected > 0)"},
    {"dim_negative", c_dim_neg, "dimension 1 is -5"},
    {"element_overflow", c_elems, "tensor 'w': element count overflows"},
    {"bytes_past_end_huge", c_bytes_big, "runs past the end of the file"},
    {"tensor_type_unknown", c_ttype, "tensor 'w' has unknown type 99"},
    {"row_not_block_multiple", c_block, "row length 40 is not a multiple of the block size 32"},
    {"offset_unaligned", c_unaligned, "data offset 4 is not a multiple of the alignment 32"},
    {"data_past_end", c_past_end,
     "tensor 'w' data [offset 128, 32 bytes] runs past the end of "
     "the file (128 bytes)"},
    {"tensors_overlap", c_overlap, "tensors 'a' [offset 0, 64 bytes] and 'b' [offset 32] overlap"},
    {"tensor_duplicate", c_dup_tensor, "tensor name 'a' appears more than once"},
    {"tensor_empty_name", c_empty_name2, "tensor #0 at offset 24 has an empty name"},
    {"tensor_info_truncated", c_trunc_info, "tensor 'w' at offset 53 needs 8 bytes, only 4 left"},
    {"valid_one_tensor", c_valid_one, NULL},
};

static void test_malformed(void) {
    char path[256];
    snprintf(path, sizeof path, "%s/bad.gguf", tmpdir);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const struct mcase *c = &cases[i];
        struct buf b = {.n = 0};
        char name[128];
        snprintf(name, sizeof name, "gguf_malformed_%s", c->name);
        c->build(&b);
        struct gguf_file f;
        err_set("%s", "");
        int rc = write_file(path, b.p, b.n) ? -2 : gguf_open(&f, path);
        if (rc == 0) gguf_close(&f);
        const char *e = rc ? err_get() : "opened";
        int ok = c->expect ? rc == -1 && strstr(e, c->expect) && strstr(e, path) : rc == 0;
        test_report(name, ok && b.n <= sizeof b.p, "%s", e);
    }
    unlink(path);
}

/* Every prefix of a valid file (only those holding all tensor data may open) and many
 * single-byte corruptions of its metadata: no crash (run under ASan), always a message. */
static void test_fuzz_small(void) {
    char src[256], path[256];
    snprintf(src, sizeof src, "%s/fuzzsrc.gguf", tmpdir);
    snprintf(path, sizeof path, "%s/fuzz.gguf", tmpdir);
    struct gguf_writer *w = small_writer();
    int rc = gguf_writer_write(w, src);
    gguf_writer_free(w);
    struct gguf_file f;
    if (rc || gguf_open(&f, src)) return (void)test_report("gguf_fuzz_small", 0, "%s", err_get());
    size_t n = f.size, meta = f.data_offset, need = 0;
    for (uint64_t i = 0; i < f.n_tensors; i++) {
        size_t end = f.data_offset + f.tensors[i].offset + f.tensors[i].nbytes;
        need = end > need ? end : need;
    }
    uint8_t *bytes = xmalloc(n);
    memcpy(bytes, f.map, n);
    gguf_close(&f);
    int n_open = 0, wrong_prefix = 0, silent = 0;
    srand(1234);
    for (size_t i = 0; i < n + 3000; i++) {
        size_t len = i < n ? i : n, at = (size_t)rand() % meta;
        uint8_t saved = bytes[at];
        if (i >= n) bytes[at] = (uint8_t)(i % 7 == 0 ? 0xff : rand());
        err_set("%s", "");
        if (write_file(path, bytes, len)) break;
        int opened = gguf_open(&f, path) == 0;
        if (opened)
            n_open++, gguf_close(&f);
        else
            silent += strncmp(err_get(), "gguf: ", 6) != 0;
        if (i < n) wrong_prefix += opened != (len >= need);
        bytes[at] = saved;
    }
    free(bytes);
    unlink(src);
    unlink(path);
    test_report("gguf_fuzz_small", wrong_prefix == 0 && silent == 0,
                "%zu prefixes and 3000 corruptions: %d opened, %d prefixes judged wrongly, "
                "%d errors without a message",
                n, n_open, wrong_prefix, silent);
}

int main(void) {
    const char *root = test_fixtures();
    snprintf(tmpdir, sizeof tmpdir, "/tmp/test_gguf.XXXXXX");
    if (!mkdtemp(tmpdir)) {
        test_report("gguf_tmpdir", 0, "mkdtemp failed");
        TEST_EXIT();
    }
    test_fixtures_open(root);
    test_round_trip(root, "llama2c-stories/stories260K.gguf", 0, 0);
    test_round_trip(root, "compat/llama/llama-Q4_K_M.gguf", 1, 0);
    test_round_trip(root, "compat/deepseek2-v3/deepseek2-v3-Q4_K_M.gguf", 1, 0);
    test_round_trip(root, "vocab/ggml-vocab-llama-bpe.gguf", 0, 1);
    test_writer_types();
    test_populate();
    test_writer_failures();
    test_malformed();
    test_fuzz_small();
    remove_tmpdir();
    TEST_EXIT();
}
