/* A small strict JSON parser (RFC 8259) for the files a converter reads: config.json,
 * tokenizer.json, model.safetensors.index.json and safetensors headers.
 *
 * The whole document becomes one tree in two allocations whose sizes are bounded by the
 * input length (every node consumes at least one input byte, every decoded string is no
 * longer than its source), so hostile input cannot make it allocate more than a few times
 * its own size. Errors name the document, the line and the column. */
#ifndef MOERUN_JSON_H
#define MOERUN_JSON_H

#include <stddef.h>
#include <stdint.h>

enum json_type {
    JSON_NULL,
    JSON_FALSE,
    JSON_TRUE,
    JSON_NUMBER,
    JSON_STRING,
    JSON_ARRAY,
    JSON_OBJECT
};

struct json {
    enum json_type type;
    int is_int;         /* JSON_NUMBER written without fraction or exponent, fits in int64 */
    int64_t i;          /* its value when is_int */
    double num;         /* JSON_NUMBER */
    const char *str;    /* JSON_STRING: decoded UTF-8, NUL-terminated (may hold \u0000) */
    size_t len;         /* JSON_STRING: bytes; JSON_ARRAY / JSON_OBJECT: children */
    const char *key;    /* for a member of an object: its key (decoded, NUL-terminated) */
    struct json *next;  /* next element or member of the parent */
    struct json *child; /* first element or member */
};

struct json_doc {
    struct json *root;
    struct json *nodes; /* arena of every node */
    char *strings;      /* arena of every decoded string */
};

/* Parses text[0..n). name is used in messages ("config.json"). Returns 0, or -1 with err_set
 * "json: NAME:LINE:COL: problem". Depth is limited to 256. */
int json_parse(struct json_doc *d, const char *name, const char *text, size_t n);
/* Reads and parses a whole file (at most max_bytes). */
int json_parse_file(struct json_doc *d, const char *path, size_t max_bytes);
void json_free(struct json_doc *d);

/* Member of an object by key (first match), NULL if absent or v is not an object. */
const struct json *json_get(const struct json *v, const char *key);
/* Element i of an array, NULL if out of range or v is not an array. */
const struct json *json_at(const struct json *v, size_t i);
/* String of a member, NULL if absent or not a string. */
const char *json_get_str(const struct json *obj, const char *key);
/* Integer member: 0 found, 1 absent or null (out untouched), -1 present but not an integer
 * in [lo, hi] (err set, naming the key). */
int json_get_int(const struct json *obj, const char *key, int64_t lo, int64_t hi, int64_t *out);
/* Number member: 0 found, 1 absent or null, -1 not a number (err set). */
int json_get_num(const struct json *obj, const char *key, double *out);
/* Boolean member: 0 found, 1 absent or null, -1 not a boolean (err set). */
int json_get_bool(const struct json *obj, const char *key, int *out);

#endif
