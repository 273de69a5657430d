/* hf.c - HuggingFace tokenizer.json: vocabulary, added tokens, decoder. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../base/eg_internal.h"
#include "tok_internal.h"

static eg_status parse_decoder(eg_tokenizer *tok, json_t *d, const char *path, char *names,
                               size_t names_cap, eg_err *err)
{
    if (!d || json_is_null(d))
        return EG_OK;
    const char *type = json_string_value(json_object_get(d, "type"));
    if (!json_is_object(d) || !type)
        return eg_fail(err, EG_EFORMAT, "%s: decoder has no type", path);
    if (!strcmp(type, "Sequence")) {
        json_t *list = json_object_get(d, "decoders");
        if (!json_is_array(list))
            return eg_fail(err, EG_EFORMAT, "%s: Sequence decoder has no 'decoders' list", path);
        for (size_t i = 0; i < json_array_size(list); i++) {
            eg_status st = parse_decoder(tok, json_array_get(list, i), path, names, names_cap, err);
            if (st)
                return st;
        }
        return EG_OK;
    }
    if (tok->n_steps == EG_MAX_DEC_STEPS)
        return eg_fail(err, EG_EUNSUPPORTED, "%s: more than %d decoder steps", path,
                       EG_MAX_DEC_STEPS);
    dec_step *s = &tok->steps[tok->n_steps];
    memset(s, 0, sizeof *s);
    if (!strcmp(type, "ByteLevel")) {
        s->kind = DEC_BYTELEVEL;
    } else if (!strcmp(type, "ByteFallback")) {
        s->kind = DEC_BYTEFALLBACK;
    } else if (!strcmp(type, "Fuse")) {
        s->kind = DEC_FUSE;
    } else if (!strcmp(type, "Replace")) {
        json_t *pat = json_object_get(d, "pattern");
        const char *ps = json_string_value(json_object_get(pat, "String"));
        const char *content = json_string_value(json_object_get(d, "content"));
        if (json_object_get(pat, "Regex"))
            return eg_fail(err, EG_EUNSUPPORTED,
                           "%s: Replace decoders with a Regex pattern are not supported", path);
        if (!ps || !content)
            return eg_fail(err, EG_EFORMAT, "%s: Replace decoder needs pattern.String and content",
                           path);
        s->kind = DEC_REPLACE;
        s->pattern_len = json_string_length(json_object_get(pat, "String"));
        s->content_len = json_string_length(json_object_get(d, "content"));
        s->pattern = malloc(s->pattern_len + 1);
        s->content = malloc(s->content_len + 1);
        if (!s->pattern || !s->content) {
            free(s->pattern);
            free(s->content);
            return eg_fail(err, EG_ENOMEM, "out of memory");
        }
        memcpy(s->pattern, ps, s->pattern_len + 1);
        memcpy(s->content, content, s->content_len + 1);
    } else if (!strcmp(type, "Strip")) {
        const char *c = json_string_value(json_object_get(d, "content"));
        json_t *a = json_object_get(d, "start"), *z = json_object_get(d, "stop");
        if (!c || !json_is_integer(a) || !json_is_integer(z) || json_integer_value(a) < 0 ||
            json_integer_value(z) < 0)
            return eg_fail(err, EG_EFORMAT, "%s: Strip decoder needs content, start and stop",
                           path);
        s->kind = DEC_STRIP;
        size_t i = 0;
        /* content is one char */
        const unsigned char *u = (const unsigned char *)c;
        uint32_t cp = u[0];
        if (cp >= 0xC0) {
            int k = cp < 0xE0 ? 2 : cp < 0xF0 ? 3 : 4;
            cp &= (k == 2) ? 0x1F : (k == 3) ? 0x0F : 0x07;
            for (i = 1; i < (size_t)k && u[i]; i++)
                cp = cp << 6 | (u[i] & 0x3F);
        }
        s->strip_char = cp;
        s->strip_start = (uint32_t)json_integer_value(a);
        s->strip_stop = (uint32_t)json_integer_value(z);
    } else if (!strcmp(type, "Metaspace")) {
        const char *r = json_string_value(json_object_get(d, "replacement"));
        s->kind = DEC_METASPACE;
        s->replacement = 0x2581;
        if (r && !strcmp(r, " "))
            s->replacement = ' ';
        const char *scheme = json_string_value(json_object_get(d, "prepend_scheme"));
        json_t *aps = json_object_get(d, "add_prefix_space");
        s->prepend = scheme ? strcmp(scheme, "never") != 0 : (aps ? json_is_true(aps) : 1);
    } else {
        return eg_fail(err, EG_EUNSUPPORTED,
                       "%s: decoder type '%s' is not supported (ByteLevel, Metaspace, Replace, "
                       "ByteFallback, Fuse, Strip, Sequence)",
                       path, type);
    }
    size_t used = strlen(names);
    snprintf(names + used, names_cap - used, "%s%s", used ? "+" : "", type);
    tok->n_steps++;
    return EG_OK;
}

eg_status eg_tok_load_hf(eg_tokenizer *tok, const char *data, size_t len, const char *path,
                         eg_err *err)
{
    json_error_t je;
    json_t *root = json_loadb(data, len, 0, &je);
    if (!root)
        return eg_fail(err, EG_EFORMAT, "%s:%d:%d: not a valid tokenizer.json: %s", path,
                       je.line, je.column, je.text);
    eg_status st = EG_OK;
    eg_buf arena = {0};
    json_t *model = json_object_get(root, "model");
    json_t *vocab = json_object_get(model, "vocab");
    json_t *added = json_object_get(root, "added_tokens");
    const char *mtype = json_string_value(json_object_get(model, "type"));
    if (!json_is_object(model)) {
        st = eg_fail(err, EG_EFORMAT, "%s: no 'model' object: not a tokenizer.json", path);
        goto done;
    }
    if (mtype ? strcmp(mtype, "BPE") != 0 : !json_object_get(model, "merges")) {
        st = eg_fail(err, EG_EUNSUPPORTED, "%s: model type '%s' is not supported (BPE only)",
                     path, mtype ? mtype : "?");
        goto done;
    }
    if (!json_is_object(vocab)) {
        st = eg_fail(err, EG_EFORMAT, "%s: model.vocab is not an object", path);
        goto done;
    }
    if (added && !json_is_array(added)) {
        st = eg_fail(err, EG_EFORMAT, "%s: added_tokens is not a list", path);
        goto done;
    }
    /* ids: the largest of the vocabulary and the added tokens, plus one */
    int64_t max_id = -1;
    const char *key;
    json_t *v;
    json_object_foreach(vocab, key, v)
    {
        if (!json_is_integer(v) || json_integer_value(v) < 0 ||
            json_integer_value(v) > (int64_t)UINT32_MAX - 1) {
            st = eg_fail(err, EG_EFORMAT, "%s: model.vocab['%s'] is not a valid id", path, key);
            goto done;
        }
        if (json_integer_value(v) > max_id)
            max_id = json_integer_value(v);
    }
    for (size_t i = 0; i < json_array_size(added); i++) {
        json_t *a = json_array_get(added, i);
        json_t *id = json_object_get(a, "id");
        if (!json_is_integer(id) || json_integer_value(id) < 0 ||
            json_integer_value(id) > (int64_t)UINT32_MAX - 1 ||
            !json_is_string(json_object_get(a, "content"))) {
            st = eg_fail(err, EG_EFORMAT, "%s: added_tokens[%zu] needs an id and a content", path,
                         i);
            goto done;
        }
        if (json_integer_value(id) > max_id)
            max_id = json_integer_value(id);
    }
    if (max_id < 0) {
        st = eg_fail(err, EG_EFORMAT, "%s: empty vocabulary", path);
        goto done;
    }
    /* ids index dense tables: a file naming id 4e9 among a handful of
     * entries would make us allocate and walk gigabytes */
    const size_t entries = json_object_size(vocab) + json_array_size(added);
    if ((uint64_t)max_id >= (uint64_t)entries * 4 + 65536) {
        st = eg_fail(err, EG_EFORMAT,
                     "%s: id %lld is far beyond the %zu vocabulary entries (ids must be dense)",
                     path, (long long)max_id, entries);
        goto done;
    }
    if ((st = eg_tok_alloc(tok, (size_t)max_id + 1, err)))
        goto done;
    for (size_t i = 0; i < tok->n; i++)
        tok->flags[i] = EG_PIECE_MISSING;
    const char *unk = json_string_value(json_object_get(model, "unk_token"));
    int byte_fallback = json_is_true(json_object_get(model, "byte_fallback"));
    if (eg_buf_put(&arena, "", 0)) {
        st = eg_fail(err, EG_ENOMEM, "out of memory");
        goto done;
    }
    json_object_foreach(vocab, key, v)
    {
        size_t id = (size_t)json_integer_value(v), klen = strlen(key);
        tok->off[id] = arena.len;
        tok->len[id] = (uint32_t)klen;
        tok->flags[id] = 0;
        if (unk && !strcmp(key, unk))
            tok->flags[id] |= EG_PIECE_UNKNOWN;
        if (byte_fallback && klen == 6 && !memcmp(key, "<0x", 3) && key[5] == '>')
            tok->flags[id] |= EG_PIECE_BYTE;
        if (eg_buf_put(&arena, key, klen)) {
            st = eg_fail(err, EG_ENOMEM, "out of memory");
            goto done;
        }
    }
    /* Added tokens win over the model's vocabulary, as in HF's id_to_token. */
    for (size_t i = 0; i < json_array_size(added); i++) {
        json_t *a = json_array_get(added, i);
        size_t id = (size_t)json_integer_value(json_object_get(a, "id"));
        json_t *c = json_object_get(a, "content");
        tok->off[id] = arena.len;
        tok->len[id] = (uint32_t)json_string_length(c);
        tok->flags[id] = (tok->flags[id] & ~(uint32_t)EG_PIECE_MISSING) | EG_PIECE_ADDED |
                         (json_is_true(json_object_get(a, "special")) ? EG_PIECE_SPECIAL : 0u);
        if (eg_buf_put(&arena, json_string_value(c), json_string_length(c))) {
            st = eg_fail(err, EG_ENOMEM, "out of memory");
            goto done;
        }
    }
    char names[96] = "";
    if ((st = parse_decoder(tok, json_object_get(root, "decoder"), path, names, sizeof names,
                            err)))
        goto done;
    tok->arena = arena.p; /* the encoder's maps point into it */
    arena.p = NULL;
    if ((st = eg_hfenc_build(tok, root, path, err)))
        goto done;
    tok->kind = EG_TOKENIZER_HF_JSON;
    snprintf(tok->describe, sizeof tok->describe, "tokenizer.json, BPE, %zu ids (%zu added), %s",
             tok->n, json_array_size(added),
             names[0] ? names : "no decoder");
done:
    eg_buf_free(&arena);
    json_decref(root);
    return st;
}
