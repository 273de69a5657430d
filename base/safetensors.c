/* safetensors.c - the safetensors reader (eg_safetensors.h). */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "eg_internal.h"
#include "engram/eg_safetensors.h"

struct eg_safetensors {
    void *map;
    size_t len;
    json_t *hdr;
    eg_st_tensor *t;
    size_t n;
};

size_t eg_safetensors_dtype_size(const char *d)
{
    static const struct {
        const char *name;
        size_t size;
    } k[] = {{"F64", 8}, {"F32", 4}, {"F16", 2}, {"BF16", 2}, {"F8_E4M3", 1}, {"F8_E5M2", 1},
             {"F8_E8M0", 1}, {"I64", 8}, {"I32", 4}, {"I16", 2}, {"I8", 1}, {"U64", 8},
             {"U32", 4}, {"U16", 2}, {"U8", 1}, {"BOOL", 1}};
    for (size_t i = 0; d && i < sizeof k / sizeof k[0]; i++)
        if (!strcmp(d, k[i].name))
            return k[i].size;
    return 0;
}

static int by_begin(const void *a, const void *b)
{
    const eg_st_tensor *x = a, *y = b;
    const uintptr_t p = (uintptr_t)x->data, q = (uintptr_t)y->data;
    return p < q ? -1 : p > q;
}

eg_status eg_safetensors_open(const char *path, eg_safetensors **out, eg_err *err)
{
    if (!path || !out)
        return eg_fail(err, EG_EINVAL, "eg_safetensors_open: NULL argument");
    *out = NULL;
    eg_safetensors *s = calloc(1, sizeof *s);
    if (!s)
        return eg_fail(err, EG_ENOMEM, "out of memory");
    eg_status st = eg_map_file(path, &s->map, &s->len, err);
    if (st) {
        free(s);
        return st;
    }
    const unsigned char *b = s->map;
    const uint64_t hl = s->len >= 8 ? eg_get_le64(b) : 0;
    if (s->len < 8 || hl < 2 || hl > s->len - 8) {
        st = eg_fail(err, EG_EFORMAT, "%s: not a safetensors file (header length %llu, file %zu "
                                      "bytes)",
                     path, (unsigned long long)hl, s->len);
        goto fail;
    }
    json_error_t je;
    s->hdr = json_loadb((const char *)b + 8, (size_t)hl, 0, &je);
    if (!json_is_object(s->hdr)) {
        st = eg_fail(err, EG_EFORMAT, "%s: the header is not a JSON object (%s at byte %d)", path,
                     je.text, je.position + 8);
        goto fail;
    }
    const unsigned char *data = b + 8 + hl;
    const uint64_t data_len = s->len - 8 - hl;
    s->t = calloc(json_object_size(s->hdr) + 1, sizeof *s->t);
    if (!s->t) {
        st = eg_fail(err, EG_ENOMEM, "out of memory");
        goto fail;
    }
    const char *name;
    json_t *v;
    json_object_foreach(s->hdr, name, v)
    {
        if (!strcmp(name, "__metadata__")) {
            const char *mk;
            json_t *mv;
            if (!json_is_object(v)) {
                st = eg_fail(err, EG_EFORMAT, "%s: __metadata__ is not an object", path);
                goto fail;
            }
            json_object_foreach(v, mk, mv) if (!json_is_string(mv))
            {
                st = eg_fail(err, EG_EFORMAT, "%s: metadata '%s' is not a string", path, mk);
                goto fail;
            }
            continue;
        }
        json_t *d = json_object_get(v, "dtype"), *sh = json_object_get(v, "shape"),
               *o = json_object_get(v, "data_offsets");
        eg_st_tensor *t = &s->t[s->n];
        t->name = name;
        if (!json_is_string(d) || !json_is_array(sh) || !json_is_array(o) || json_array_size(o) != 2 ||
            json_array_size(sh) > EG_ST_MAX_DIMS) {
            st = eg_fail(err, EG_EFORMAT, "%s: tensor '%s' has a malformed entry", path, name);
            goto fail;
        }
        t->dtype = json_string_value(d);
        const size_t es = eg_safetensors_dtype_size(t->dtype);
        if (!es) {
            st = eg_fail(err, EG_EUNSUPPORTED, "%s: tensor '%s' has unknown dtype %s", path, name,
                         t->dtype);
            goto fail;
        }
        uint64_t count = 1;
        t->ndim = (uint32_t)json_array_size(sh);
        for (uint32_t k = 0; k < t->ndim; k++) {
            json_t *x = json_array_get(sh, k);
            if (!json_is_integer(x) || json_integer_value(x) < 0 ||
                !eg_mul_ok(count, (uint64_t)json_integer_value(x), &count)) {
                st = eg_fail(err, EG_EFORMAT, "%s: tensor '%s' has a bad shape", path, name);
                goto fail;
            }
            t->shape[k] = (uint64_t)json_integer_value(x);
        }
        json_t *b0 = json_array_get(o, 0), *b1 = json_array_get(o, 1);
        uint64_t bytes;
        if (!json_is_integer(b0) || !json_is_integer(b1) || json_integer_value(b0) < 0 ||
            json_integer_value(b1) < json_integer_value(b0) ||
            (uint64_t)json_integer_value(b1) > data_len || !eg_mul_ok(count, es, &bytes) ||
            bytes != (uint64_t)(json_integer_value(b1) - json_integer_value(b0))) {
            st = eg_fail(err, EG_EFORMAT,
                         "%s: tensor '%s' has data offsets outside the file or not matching its "
                         "shape and dtype",
                         path, name);
            goto fail;
        }
        t->nbytes = bytes;
        t->data = data + json_integer_value(b0);
        s->n++;
    }
    /* no two tensors share bytes */
    eg_st_tensor *sorted = malloc((s->n + 1) * sizeof *sorted);
    if (!sorted) {
        st = eg_fail(err, EG_ENOMEM, "out of memory");
        goto fail;
    }
    memcpy(sorted, s->t, s->n * sizeof *sorted);
    qsort(sorted, s->n, sizeof *sorted, by_begin);
    for (size_t i = 1; i < s->n; i++)
        if ((const unsigned char *)sorted[i - 1].data + sorted[i - 1].nbytes >
            (const unsigned char *)sorted[i].data) {
            st = eg_fail(err, EG_EFORMAT, "%s: tensors '%s' and '%s' overlap", path, sorted[i - 1].name,
                         sorted[i].name);
            free(sorted);
            goto fail;
        }
    free(sorted);
    *out = s;
    return EG_OK;
fail:
    eg_safetensors_close(s);
    return st;
}

void eg_safetensors_close(eg_safetensors *s)
{
    if (!s)
        return;
    json_decref(s->hdr);
    free(s->t);
    if (s->map)
        munmap(s->map, s->len);
    free(s);
}

size_t eg_safetensors_count(const eg_safetensors *s) { return s ? s->n : 0; }

const eg_st_tensor *eg_safetensors_get(const eg_safetensors *s, size_t i)
{
    return s && i < s->n ? &s->t[i] : NULL;
}

const eg_st_tensor *eg_safetensors_find(const eg_safetensors *s, const char *name)
{
    for (size_t i = 0; s && name && i < s->n; i++)
        if (!strcmp(s->t[i].name, name))
            return &s->t[i];
    return NULL;
}

const char *eg_safetensors_meta(const eg_safetensors *s, const char *key)
{
    if (!s || !key)
        return NULL;
    return json_string_value(json_object_get(json_object_get(s->hdr, "__metadata__"), key));
}
