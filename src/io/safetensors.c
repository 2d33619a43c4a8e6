/* safetensors: 8-byte little-endian header length N, N bytes of JSON
 * {name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {k: v}},
 * then the data section; offsets are relative to its start. Read through mmap. */
#include <cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include "data/jsonl.h"
#include "fdpo/io.h"

/* Every dtype the format defines; the ones fdpo cannot compute with map to OTHER but are
 * still validated (their element size is known). */
static const struct { const char *name; fdpo_dtype dtype; size_t size; } DTYPES[] = {
    {"F32", FDPO_F32, 4},  {"F16", FDPO_F16, 2},   {"BF16", FDPO_BF16, 2}, {"I32", FDPO_I32, 4},
    {"I64", FDPO_I64, 8},  {"U8", FDPO_U8, 1},     {"F64", FDPO_F64, 8},   {"BOOL", FDPO_DTYPE_OTHER, 1},
    {"I8", FDPO_DTYPE_OTHER, 1}, {"I16", FDPO_DTYPE_OTHER, 2}, {"U16", FDPO_DTYPE_OTHER, 2},
    {"U32", FDPO_DTYPE_OTHER, 4}, {"U64", FDPO_DTYPE_OTHER, 8}, {"F8_E4M3", FDPO_DTYPE_OTHER, 1},
    {"F8_E5M2", FDPO_DTYPE_OTHER, 1},
};
#define N_DTYPES (sizeof DTYPES / sizeof DTYPES[0])

static size_t dtype_size(fdpo_dtype d) {
    for (size_t i = 0; i < N_DTYPES; i++) if (DTYPES[i].dtype == d) return DTYPES[i].size;
    return 0;
}
static const char *dtype_name(fdpo_dtype d) {
    for (size_t i = 0; i < N_DTYPES; i++) if (DTYPES[i].dtype == d) return DTYPES[i].name;
    return "?";
}

/* by data_offsets, begin then end (the order the format's reader checks them in) */
static int cmp_offsets(const void *a, const void *b) {
    const fdpo_st_tensor *x = *(const fdpo_st_tensor *const *)a, *y = *(const fdpo_st_tensor *const *)b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    return x->end < y->end ? -1 : x->end > y->end;
}

/* The index (in the header's order, cJSON's) of the first header member whose shape or
 * data_offsets holds a number not written as a plain integer (8.0, 8e0, -0), or -1. The
 * format reads both as unsigned integers (the safetensors crate deserializes them as usize,
 * which refuses 8.0); cJSON keeps only the double, so the text is looked at. The header is
 * valid JSON here, root its parse. Keys are named by root's decoded strings, walked in step
 * with the text: "sh\u0061pe" is shape to serde_json too. */
static long first_non_integer_size(const char *s, size_t n, const cJSON *root) {
    long member = -1;
    int depth = 0, in_sizes = 0;   /* in_sizes: inside a member's "shape" / "data_offsets" array */
    const cJSON *member_item = NULL, *key_item = NULL;   /* root's current member, and its key last read */
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c == '"') {
            ++i;
            for (; i < n && s[i] != '"'; i++) if (s[i] == '\\') i++;
            size_t j = i + 1;
            while (j < n && (s[j] == ' ' || s[j] == '\t' || s[j] == '\r' || s[j] == '\n')) j++;
            if (j < n && s[j] == ':') {
                if (depth == 1) {
                    member++;
                    member_item = member_item ? member_item->next : root->child;
                    key_item = NULL;
                } else if (depth == 2 && member_item) {
                    key_item = key_item ? key_item->next : member_item->child;
                }
            }
        } else if (c == '{' || c == '[') {
            depth++;
            if (c == '[' && depth == 3)
                in_sizes = key_item && key_item->string &&
                           (!strcmp(key_item->string, "shape") || !strcmp(key_item->string, "data_offsets"));
        } else if (c == '}' || c == ']') {
            if (depth-- == 3) in_sizes = 0;
        } else if (in_sizes && (c == '-' || (c >= '0' && c <= '9'))) {
            size_t len = 0;
            size_t at = fdpo_json_next_number(s, n, i, &len);
            for (size_t k = at; k < at + len; k++) if (s[k] < '0' || s[k] > '9') return member;
            i = at + len - 1;
        }
    }
    return -1;
}

/* Parse and validate the JSON header into st (data/data_len already set). */
static int parse_header(fdpo_safetensors *st, const char *json, size_t len) {
    size_t esc = fdpo_json_bad_u_escape(json, len);   /* cJSON would cut a tensor's name there */
    if (esc < len)
        return fdpo_error("%s: malformed header JSON: the \\u escape at byte %zu of the header needs four hex digits",
                          st->path, esc);
    /* cJSON skips every byte up to 32 between tokens (a form feed, a vertical tab: the
     * integer-size scan below, which knows JSON's four, then missed the key before it) and
     * takes raw control bytes inside strings; JSON (RFC 8259), Python's json and the
     * safetensors crate's serde_json allow only space, tab, LF and CR there, and refuse the
     * header. A raw NUL inside a string is named below, with its member. */
    int in_string = 0;
    size_t ctl = fdpo_json_raw_control(json, len, &in_string);
    if (ctl < len)
        return fdpo_error("%s: malformed header JSON: a raw control character (0x%02X) %s at byte %zu of the header "
                          "(JSON allows only space, tab, LF and CR between tokens%s; the safetensors library refuses it)",
                          st->path, (unsigned)(unsigned char)json[ctl], in_string ? "inside a string" : "between tokens",
                          ctl, in_string ? ", and none raw inside a string" : "");
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(json, len, &end, 0);
    if (!root) return fdpo_error("%s: malformed header JSON near byte %zu of the header", st->path,
                                 end && end >= json ? (size_t)(end - json) : (size_t)0);
    /* the header is one object, padded with spaces (the format's rule): text after it (a
     * stray '}' that closed it early, junk) was ignored, and tensors after it went missing */
    size_t used = end && end >= json ? (size_t)(end - json) : len;
    while (used < len && (json[used] == ' ' || json[used] == '\t' || json[used] == '\r' || json[used] == '\n')) used++;
    if (used < len) {
        cJSON_Delete(root);
        return fdpo_error("%s: malformed header: text after its JSON object at byte %zu of the header", st->path, used);
    }
    if (!cJSON_IsObject(root)) { cJSON_Delete(root); return fdpo_error("%s: header JSON is not an object", st->path); }
    /* A NUL in a string (a \u0000 escape or a raw 0 byte): cJSON's decoded string ends there, so
     * "x.bias\u0000junk" was read as tensor x.bias and a key "shape\u0000x" as shape, where the
     * safetensors library and Python's json keep the whole string (another tensor, an unknown
     * key). Refused, naming the member by its text as the header writes it. */
    size_t nul = fdpo_json_find_nul(json, len);
    if (nul < len) {
        size_t count = 0, k = 0, *at = fdpo_json_member_offsets(json, len, &count);
        while (k < count && at[k] < nul) k++;   /* the member whose key or entry holds it: k - 1 */
        size_t from = k ? at[k - 1] + 1 : 0, to = from;
        for (; k && to < len && json[to] != '"'; to++) if (json[to] == '\\') to++;
        free(at);
        int meta = to - from == 12 && !memcmp(json + from, "__metadata__", 12);
        int rc = fdpo_error("%s: %s%.*s%s: a NUL character (\\u0000) in a string of the header at byte %zu (fdpo would "
                            "read the text before it only, where the safetensors library and Python's json keep it all)",
                            st->path, meta ? "" : "tensor '", (int)(to - from > 200 ? 200 : to - from), json + from,
                            meta ? "" : "'", nul);
        cJSON_Delete(root);
        return rc;
    }
    long bad_size = first_non_integer_size(json, len, root);
    if (bad_size >= 0) {
        const cJSON *e = cJSON_GetArrayItem(root, (int)bad_size);
        int rc = fdpo_error("%s: tensor '%s': shape and data_offsets must be written as integers (a number like 8.0 "
                            "or 8e0 is not one; the safetensors format reads them as unsigned integers)", st->path,
                            e && e->string ? e->string : "?");
        cJSON_Delete(root);
        return rc;
    }
    size_t n = 0;
    for (cJSON *e = root->child; e; e = e->next) n++;
    st->tensors = fdpo_calloc(n ? n : 1, sizeof(fdpo_st_tensor));
    int rc = 0, seen_meta = 0;
    for (cJSON *e = root->child; e && !rc; e = e->next) {
        if (!strcmp(e->string, "__metadata__")) {
            if (!cJSON_IsObject(e)) { rc = fdpo_error("%s: __metadata__ is not an object", st->path); break; }
            /* readers differ on which copy counts (Python's json takes the last, fdpo took the first) */
            const char *twice = seen_meta++ ? "__metadata__" : fdpo_json_duplicate_key(e);
            if (twice) {
                rc = fdpo_error("%s: %s%s%s appears twice in the header", st->path, seen_meta > 1 ? "" : "__metadata__ key '",
                                twice, seen_meta > 1 ? "" : "'");
                break;
            }
            for (cJSON *kv = e->child; kv; kv = kv->next) {
                if (!cJSON_IsString(kv)) { rc = fdpo_error("%s: __metadata__ '%s' is not a string", st->path, kv->string); break; }
                st->meta_keys = fdpo_realloc(st->meta_keys, (st->n_meta + 1) * sizeof(char *));
                st->meta_values = fdpo_realloc(st->meta_values, (st->n_meta + 1) * sizeof(char *));
                st->meta_keys[st->n_meta] = fdpo_strdup(kv->string);
                st->meta_values[st->n_meta] = fdpo_strdup(kv->valuestring);
                st->n_meta++;
            }
            continue;
        }
        for (size_t k = 0; k < st->n_tensors; k++)
            if (!strcmp(st->tensors[k].name, e->string)) rc = fdpo_error("%s: tensor '%s' appears twice in the header", st->path, e->string);
        if (rc) break;
        fdpo_st_tensor *t = &st->tensors[st->n_tensors];
        t->name = fdpo_strdup(e->string);
        st->n_tensors++;
        /* a field written twice: the safetensors library (serde's derive) refuses the file, Python's
         * json takes the last copy, cJSON's look-up the first */
        static const char *const FIELDS[] = {"dtype", "shape", "data_offsets"};
        int seen[3] = {0, 0, 0};
        for (const cJSON *kv = cJSON_IsObject(e) ? e->child : NULL; kv && !rc; kv = kv->next)
            for (int f = 0; f < 3 && !rc; f++)
                if (!strcmp(kv->string, FIELDS[f]) && seen[f]++)
                    rc = fdpo_error("%s: tensor '%s': its header entry writes \"%s\" twice (the safetensors library refuses "
                                    "a duplicate field)", st->path, t->name, FIELDS[f]);
        if (rc) break;
        const cJSON *dt = cJSON_GetObjectItemCaseSensitive(e, "dtype");
        const cJSON *shape = cJSON_GetObjectItemCaseSensitive(e, "shape");
        const cJSON *offs = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
        if (!cJSON_IsObject(e) || !cJSON_IsString(dt) || !cJSON_IsArray(shape) || !cJSON_IsArray(offs)) {
            rc = fdpo_error("%s: tensor '%s': header entry needs dtype (string), shape and data_offsets (arrays)", st->path, t->name);
            break;
        }
        size_t esize = 0;
        t->dtype = FDPO_DTYPE_OTHER;
        for (size_t i = 0; i < N_DTYPES; i++)
            if (!strcmp(dt->valuestring, DTYPES[i].name)) { t->dtype = DTYPES[i].dtype; esize = DTYPES[i].size; }
        if (!esize) { rc = fdpo_error("%s: tensor '%s': unknown dtype '%.32s'", st->path, t->name, dt->valuestring); break; }
        snprintf(t->dtype_name, sizeof t->dtype_name, "%s", dt->valuestring);
        int nd = cJSON_GetArraySize(shape);
        if (nd > 8) { rc = fdpo_error("%s: tensor '%s': %d dimensions (at most 8)", st->path, t->name, nd); break; }
        t->ndim = nd;
        size_t numel = 1;
        int i = 0;
        for (const cJSON *d = shape->child; d; d = d->next, i++) {
            if (fdpo_json_size(d, &t->shape[i]) || t->shape[i] > ((size_t)1 << 40)) {
                rc = fdpo_error("%s: tensor '%s': shape[%d] is not a non-negative integer", st->path, t->name, i);
                break;
            }
            /* checked before multiplying: [2^40, 2^40] must not wrap around to 0 elements */
            if (t->shape[i] && numel > ((size_t)1 << 42) / t->shape[i]) { rc = fdpo_error("%s: tensor '%s': shape too large", st->path, t->name); break; }
            numel *= t->shape[i];
        }
        if (rc) break;
        if (cJSON_GetArraySize(offs) != 2 || fdpo_json_size(offs->child, &t->begin) || fdpo_json_size(offs->child->next, &t->end)) {
            rc = fdpo_error("%s: tensor '%s': data_offsets must be two non-negative integers", st->path, t->name);
            break;
        }
        if (t->begin > t->end || t->end > st->data_len) {
            rc = fdpo_error("%s: tensor '%s': data_offsets [%zu, %zu] outside the data section (%zu bytes)",
                            st->path, t->name, t->begin, t->end, st->data_len);
            break;
        }
        if (t->end - t->begin != numel * esize) {
            rc = fdpo_error("%s: tensor '%s': data_offsets span %zu bytes but shape x %s needs %zu",
                            st->path, t->name, t->end - t->begin, t->dtype_name, numel * esize);
            break;
        }
    }
    cJSON_Delete(root);
    if (rc) return rc;
    /* The format's rule: sorted by offsets, the tensors tile the data section, each beginning
     * where the one before ended, from 0 to the end of the file: no overlap, no hole before or
     * between them, no bytes after (the safetensors crate refuses such a file, and no
     * polyglot file hides in the gaps). */
    fdpo_st_tensor **order = fdpo_malloc((st->n_tensors ? st->n_tensors : 1) * sizeof *order);
    for (size_t i = 0; i < st->n_tensors; i++) order[i] = &st->tensors[i];
    qsort(order, st->n_tensors, sizeof *order, cmp_offsets);
    size_t covered = 0;   /* the data section's bytes [0, covered) belong to the tensors so far */
    for (size_t i = 0; i < st->n_tensors && !rc; i++) {
        if (order[i]->begin < covered)
            rc = fdpo_error("%s: tensor '%s' overlaps tensor '%s' in the data section", st->path, order[i]->name,
                            order[i - 1]->name);
        else if (order[i]->begin > covered)
            rc = fdpo_error("%s: tensor '%s': data_offsets [%zu, %zu] leave bytes [%zu, %zu) of the data section to no "
                            "tensor (the format wants each tensor to begin where the one before it ends, the first at 0)",
                            st->path, order[i]->name, order[i]->begin, order[i]->end, covered, order[i]->begin);
        covered = order[i]->end;
    }
    if (!rc && covered != st->data_len)
        rc = fdpo_error("%s: %zu bytes after the last tensor%s%s%s (the data section is %zu bytes; the format wants the "
                        "tensors to cover it to the end of the file)", st->path, st->data_len - covered,
                        st->n_tensors ? " '" : "", st->n_tensors ? order[st->n_tensors - 1]->name : "",
                        st->n_tensors ? "'" : "", st->data_len);
    free(order);
    return rc;
}

/* Header length, then the header; st->path is set. bytes[0..size) stays owned by the caller. */
static int st_parse(fdpo_safetensors *st, const unsigned char *bytes, size_t size) {
    if (size < 8)
        return fdpo_error("%s: file is %zu bytes, too short for the 8-byte header length (truncated?)", st->path, size);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | bytes[i];
    if (hlen > size - 8)
        return fdpo_error("%s: header length %llu runs past the end of the file (%zu bytes; truncated?)", st->path,
                          (unsigned long long)hlen, size);
    st->data = (unsigned char *)bytes + 8 + hlen;
    st->data_len = size - 8 - (size_t)hlen;
    return parse_header(st, (const char *)bytes + 8, (size_t)hlen);
}

int fdpo_st_open(fdpo_safetensors *st, const char *path) {
    memset(st, 0, sizeof *st);
    st->path = fdpo_strdup(path);
    /* O_NONBLOCK: a FIFO must be refused below, not block the open */
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) { fdpo_error("%s: %s", path, strerror(errno)); fdpo_st_close(st); return -1; }
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        fdpo_error("%s: not a regular file", path);
        fdpo_st_close(st);
        return -1;
    }
    size_t size = (size_t)sb.st_size;
    if (size < 8) {
        close(fd);
        fdpo_error("%s: file is %zu bytes, too short for the 8-byte header length (truncated?)", path, size);
        fdpo_st_close(st);
        return -1;
    }
    void *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED) { fdpo_error("%s: mmap: %s", path, strerror(errno)); fdpo_st_close(st); return -1; }
    st->map = map;
    st->map_len = size;
    if (st_parse(st, map, size)) { fdpo_st_close(st); return -1; }
    return 0;
}

int fdpo_st_open_buffer(fdpo_safetensors *st, const char *name, const void *bytes, size_t len) {
    memset(st, 0, sizeof *st);
    st->path = fdpo_strdup(name);
    if (st_parse(st, bytes, len)) { fdpo_st_close(st); return -1; }
    return 0;
}

void fdpo_st_close(fdpo_safetensors *st) {
    if (st->map) munmap(st->map, st->map_len);
    for (size_t i = 0; i < st->n_tensors; i++) free(st->tensors[i].name);
    free(st->tensors);
    for (size_t i = 0; i < st->n_meta; i++) { free(st->meta_keys[i]); free(st->meta_values[i]); }
    free(st->meta_keys);
    free(st->meta_values);
    free(st->path);
    memset(st, 0, sizeof *st);
}

const fdpo_st_tensor *fdpo_st_find(const fdpo_safetensors *st, const char *name) {
    for (size_t i = 0; i < st->n_tensors; i++) if (!strcmp(st->tensors[i].name, name)) return &st->tensors[i];
    return NULL;
}

const char *fdpo_st_meta(const fdpo_safetensors *st, const char *key) {
    for (size_t i = 0; i < st->n_meta; i++) if (!strcmp(st->meta_keys[i], key)) return st->meta_values[i];
    return NULL;
}

/* IEEE half -> float, subnormals and inf/nan included */
static float f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    if (exp == 0x1f) bits = sign | 0x7f800000u | (man << 13);
    else if (exp != 0) bits = sign | ((exp + 112) << 23) | (man << 13);
    else if (man == 0) bits = sign;
    else {
        float f = (float)man * (1.0f / 16777216.0f); /* man * 2^-24 */
        return sign ? -f : f;
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static int check_float_tensor(const fdpo_safetensors *st, const fdpo_st_tensor *t, size_t n) {
    size_t es = dtype_size(t->dtype);
    size_t numel = es ? (t->end - t->begin) / es : 0;
    if (t->dtype != FDPO_F32 && t->dtype != FDPO_F16 && t->dtype != FDPO_BF16 && t->dtype != FDPO_F64)
        return fdpo_error("%s: tensor '%s': dtype %s is not a floating-point type (want F32, F16, BF16 or F64)",
                          st->path, t->name, t->dtype_name);
    if (numel != n) return fdpo_error("%s: tensor '%s': %zu elements, expected %zu", st->path, t->name, numel, n);
    return 0;
}

/* element i of t as "[3,5]" (its index in the tensor's shape) */
static void element_index(const fdpo_st_tensor *t, size_t i, char *buf, size_t size) {
    size_t idx[8] = {0}, k = 0;
    for (int d = t->ndim - 1; d >= 0; d--) { idx[d] = t->shape[d] ? i % t->shape[d] : 0; i = t->shape[d] ? i / t->shape[d] : 0; }
    k += (size_t)snprintf(buf, size, "[");
    for (int d = 0; d < t->ndim && k < size; d++) k += (size_t)snprintf(buf + k, size - k, "%s%zu", d ? "," : "", idx[d]);
    if (k < size) snprintf(buf + k, size - k, "]");
}

int fdpo_st_read_f32(const fdpo_safetensors *st, const fdpo_st_tensor *t, float *out, size_t n) {
    if (check_float_tensor(st, t, n)) return -1;
    const unsigned char *src = st->data + t->begin;
    for (size_t i = 0; i < n; i++) {
        switch (t->dtype) {
        case FDPO_F32: memcpy(&out[i], src + 4 * i, 4); break;
        case FDPO_F64: {
            double d;
            memcpy(&d, src + 8 * i, 8);
            out[i] = (float)d;   /* the one dtype float cannot hold exactly: rounded to nearest */
            if (isfinite(d) && !isfinite(out[i])) {   /* not a NaN or Inf of the file: out of float's range */
                char at[128];
                element_index(t, i, at, sizeof at);
                return fdpo_error("%s: tensor '%s': element %s = %g (F64) is beyond float32's range (+-%g)", st->path,
                                  t->name, at, d, (double)FLT_MAX);
            }
            break;
        }
        case FDPO_F16: { uint16_t h; memcpy(&h, src + 2 * i, 2); out[i] = f16_to_f32(h); break; }
        default: { uint16_t h; memcpy(&h, src + 2 * i, 2); uint32_t b = (uint32_t)h << 16; memcpy(&out[i], &b, 4); break; }
        }
    }
    return 0;
}

int fdpo_st_read_f64(const fdpo_safetensors *st, const fdpo_st_tensor *t, double *out, size_t n) {
    if (t->dtype != FDPO_F64) {   /* the others convert to float exactly: read them so, once */
        float *f = fdpo_malloc((n ? n : 1) * sizeof *f);
        int rc = fdpo_st_read_f32(st, t, f, n);
        for (size_t i = 0; !rc && i < n; i++) out[i] = f[i];
        free(f);
        return rc;
    }
    if (check_float_tensor(st, t, n)) return -1;
    memcpy(out, st->data + t->begin, n * sizeof *out);
    return 0;
}

/* ---- writer ---- */
typedef struct { char *name; fdpo_dtype dtype; size_t shape[8]; int ndim; const void *data; } writer_entry;
struct fdpo_st_writer {
    writer_entry *e; size_t n;
    char **mk, **mv; size_t n_meta;
};

fdpo_st_writer *fdpo_st_writer_new(void) { return fdpo_calloc(1, sizeof(fdpo_st_writer)); }

void fdpo_st_writer_add(fdpo_st_writer *w, const char *name, fdpo_dtype dtype,
                        const size_t *shape, int ndim, const void *data) {
    w->e = fdpo_realloc(w->e, (w->n + 1) * sizeof *w->e);
    writer_entry *e = &w->e[w->n++];
    memset(e, 0, sizeof *e);
    e->name = fdpo_strdup(name);
    e->dtype = dtype;
    e->ndim = ndim;   /* kept as given: fdpo_st_writer_write refuses one outside [0, 8] (it was cut to 8) */
    for (int i = 0; i < ndim && i < 8; i++) e->shape[i] = shape[i];
    e->data = data;
}

void fdpo_st_writer_meta(fdpo_st_writer *w, const char *key, const char *value) {
    w->mk = fdpo_realloc(w->mk, (w->n_meta + 1) * sizeof(char *));
    w->mv = fdpo_realloc(w->mv, (w->n_meta + 1) * sizeof(char *));
    w->mk[w->n_meta] = fdpo_strdup(key);
    w->mv[w->n_meta] = fdpo_strdup(value);
    w->n_meta++;
}

static size_t entry_bytes(const writer_entry *e) {
    size_t n = dtype_size(e->dtype);
    for (int i = 0; i < e->ndim; i++) n *= e->shape[i];
    return n;
}

/* tensor data from which a file is written past the page cache: a model checkpoint (124M:
 * 500 MB, ~1 s of a core buffered), not the small test models and adapters */
#define ST_DIRECT_MIN_BYTES ((size_t)16 << 20)

int fdpo_st_writer_write(fdpo_st_writer *w, const char *path) {
    cJSON *root = cJSON_CreateObject();
    if (w->n_meta) {
        cJSON *meta = cJSON_AddObjectToObject(root, "__metadata__");
        for (size_t i = 0; i < w->n_meta; i++) cJSON_AddStringToObject(meta, w->mk[i], w->mv[i]);
    }
    size_t off = 0;
    for (size_t i = 0; i < w->n; i++) {
        const writer_entry *e = &w->e[i];
        if (e->dtype == FDPO_DTYPE_OTHER) { cJSON_Delete(root); return fdpo_error("%s: tensor '%s': cannot write dtype OTHER", path, e->name); }
        /* what fdpo_st_open refuses is not written: a second tensor of one name, the header's
         * own __metadata__ key, more dimensions than a header may give */
        int rc = 0;
        if (e->ndim < 0 || e->ndim > 8) rc = fdpo_error("%s: tensor '%s': %d dimensions (0 to 8)", path, e->name, e->ndim);
        else if (!strcmp(e->name, "__metadata__")) rc = fdpo_error("%s: tensor '%s': the header's metadata key", path, e->name);
        else if (cJSON_GetObjectItemCaseSensitive(root, e->name)) rc = fdpo_error("%s: tensor '%s' is added twice", path, e->name);
        if (rc) { cJSON_Delete(root); return rc; }
        cJSON *t = cJSON_AddObjectToObject(root, e->name);
        cJSON_AddStringToObject(t, "dtype", dtype_name(e->dtype));
        cJSON *shape = cJSON_AddArrayToObject(t, "shape");
        for (int d = 0; d < e->ndim; d++) cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)e->shape[d]));
        cJSON *offs = cJSON_AddArrayToObject(t, "data_offsets");
        size_t nb = entry_bytes(e);
        cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)off));
        cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)(off + nb)));
        off += nb;
    }
    char *json = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    size_t hlen = strlen(json);
    size_t padded = (hlen + 7) / 8 * 8; /* keeps the data section 8-byte aligned */
    unsigned char len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (unsigned char)((uint64_t)padded >> (8 * i));
    if (off >= ST_DIRECT_MIN_BYTES) {   /* a model: past the page cache (fdpo_direct_file) */
        fdpo_direct_file df;
        if (fdpo_direct_open(&df, path)) { free(json); return -1; }
        static const char spaces[8] = "        ";
        int rc = fdpo_direct_write(&df, len8, 8);
        if (!rc) rc = fdpo_direct_write(&df, json, hlen);
        if (!rc) rc = fdpo_direct_write(&df, spaces, padded - hlen);
        free(json);
        for (size_t i = 0; i < w->n && !rc; i++) rc = fdpo_direct_write(&df, w->e[i].data, entry_bytes(&w->e[i]));
        if (rc) { fdpo_direct_abort(&df); return -1; }
        return fdpo_direct_commit(&df);
    }
    fdpo_atomic_file af;
    if (fdpo_atomic_open(&af, path)) { free(json); return -1; }
    int ok = fwrite(len8, 1, 8, af.f) == 8 && fwrite(json, 1, hlen, af.f) == hlen;
    for (size_t i = hlen; i < padded && ok; i++) ok = fputc(' ', af.f) != EOF;
    free(json);
    for (size_t i = 0; i < w->n && ok; i++) {
        size_t nb = entry_bytes(&w->e[i]);
        ok = nb == 0 || fwrite(w->e[i].data, 1, nb, af.f) == nb;
    }
    if (!ok) { fdpo_atomic_abort(&af); return fdpo_error("%s: write failed: %s", path, strerror(errno)); }
    return fdpo_atomic_commit(&af);
}

void fdpo_st_writer_free(fdpo_st_writer *w) {
    if (!w) return;
    for (size_t i = 0; i < w->n; i++) free(w->e[i].name);
    free(w->e);
    for (size_t i = 0; i < w->n_meta; i++) { free(w->mk[i]); free(w->mv[i]); }
    free(w->mk);
    free(w->mv);
    free(w);
}
