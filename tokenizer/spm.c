/* spm.c - SentencePiece .model files through the C++ shim. The decode follows
 * HF's converted tokenizer (Replace "▁" -> " ", ByteFallback, Fuse, Strip one
 * leading space), so a .model and its tokenizer.json project identically. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../base/eg_internal.h"
#include "spm.h"
#include "tok_internal.h"

eg_status eg_tok_load_spm(eg_tokenizer *tok, const char *data, size_t len, const char *path,
                          eg_err *err)
{
    char msg[256] = "";
    eg_spm *m = eg_spm_load(data, len, msg, sizeof msg);
    if (!m)
        return eg_fail(err, EG_EFORMAT,
                       "%s: neither a tokenizer.json nor a SentencePiece model (%s)", path,
                       msg[0] ? msg : "libsentencepiece refused it");
    tok->spm = m;
    int n = eg_spm_size(m);
    if (n <= 0)
        return eg_fail(err, EG_EFORMAT, "%s: SentencePiece model with no pieces", path);
    eg_status st = eg_tok_alloc(tok, (size_t)n, err);
    if (st)
        return st;
    eg_buf arena = {0};
    size_t n_ctrl = 0, n_byte = 0;
    for (int id = 0; id < n; id++) {
        size_t plen;
        const char *p = eg_spm_piece(m, id, &plen);
        tok->off[id] = arena.len;
        tok->len[id] = (uint32_t)plen;
        uint32_t f = 0;
        if (eg_spm_is_control(m, id))
            f |= EG_PIECE_CONTROL, n_ctrl++;
        if (eg_spm_is_unknown(m, id))
            f |= EG_PIECE_UNKNOWN;
        if (eg_spm_is_byte(m, id))
            f |= EG_PIECE_BYTE, n_byte++;
        if (eg_spm_is_unused(m, id))
            f |= EG_PIECE_UNUSED;
        tok->flags[id] = f;
        if (eg_buf_put(&arena, p, plen)) {
            eg_buf_free(&arena);
            return eg_fail(err, EG_ENOMEM, "out of memory");
        }
    }
    tok->arena = arena.p ? arena.p : calloc(1, 1);
    /* The decoder of HF's converted tokenizer. */
    dec_step *s = &tok->steps[0];
    memset(tok->steps, 0, 4 * sizeof *s);
    s[0].kind = DEC_REPLACE;
    s[0].pattern = strdup("\xE2\x96\x81");
    s[0].pattern_len = 3;
    s[0].content = strdup(" ");
    s[0].content_len = 1;
    s[1].kind = DEC_BYTEFALLBACK;
    s[2].kind = DEC_FUSE;
    s[3].kind = DEC_STRIP;
    s[3].strip_char = ' ';
    s[3].strip_start = 1;
    tok->n_steps = 4;
    if (!s[0].pattern || !s[0].content)
        return eg_fail(err, EG_ENOMEM, "out of memory");
    tok->kind = EG_TOKENIZER_SPM;
    snprintf(tok->describe, sizeof tok->describe,
             "SentencePiece model, %d pieces (%zu control, %zu byte)", n, n_ctrl, n_byte);
    return EG_OK;
}
