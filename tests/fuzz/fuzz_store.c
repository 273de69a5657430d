/* fuzz_store.c - fuzz targets for the store's metadata and blocks, and for
 * counts files.
 *
 * store: LMDB itself keeps no checksums on its B-tree pages and is not
 * hardened against arbitrary page bytes (that is LMDB's contract, not ours),
 * so the target fuzzes what engram parses: starting from a valid small store,
 * the input is a list of edits made through LMDB's API - replace or delete a
 * metadata value, replace a vocab value, overwrite bytes of a block or
 * truncate it, add a block under an arbitrary key - then the store is opened,
 * verified and read. Every outcome must be a clean status, never a crash.
 * Edit record: u8 op, u8 key length, key, u16 LE value length, value. */
#include <lmdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engram/engram.h"
#include "fuzz.h"

static unsigned char *base_store;
static size_t base_len;

/* A small valid store, built once per process and copied for each input. */
static int make_base(void)
{
    if (base_store)
        return 0;
    static const char cfg_json[] =
        "{\"engram_vocab_size\": [50, 60], \"max_ngram_size\": 3, \"n_embed_per_ngram\": 32,"
        " \"n_head_per_ngram\": 1, \"layer_ids\": [1, 2], \"pad_id\": 0, \"seed\": 1,"
        " \"kernel_size\": 4, \"hidden_size\": 8, \"hc_mult\": 1}";
    eg_config cfg;
    eg_spec *sp = NULL;
    if (eg_config_parse(cfg_json, sizeof cfg_json - 1, "fuzz", &cfg, NULL) ||
        eg_spec_create(&cfg, 20, 0, &sp, NULL))
        return -1;
    uint32_t proj[30];
    for (int i = 0; i < 30; i++)
        proj[i] = (uint32_t)(i % 20);
    const char *keys[20];
    char kb[20][16];
    for (int i = 0; i < 20; i++) {
        snprintf(kb[i], sizeof kb[i], "k%d", i);
        keys[i] = kb[i];
    }
    eg_store_params p = {.spec = sp, .dtype = EG_FP8_E4M3, .seed = 1, .init_std = 0.1,
                         .projection = proj, .n_projection = 30, .keys = keys, .n_threads = 1};
    const char *path = eg_fuzz_tmp_path(".base.store");
    int rc = eg_store_build(path, &p, NULL, NULL) ? -1 : 0;
    eg_spec_free(sp);
    FILE *f = rc ? NULL : fopen(path, "rb");
    if (f) {
        fseek(f, 0, SEEK_END);
        base_len = (size_t)ftell(f);
        fseek(f, 0, SEEK_SET);
        base_store = malloc(base_len);
        if (!base_store || fread(base_store, 1, base_len, f) != base_len)
            rc = -1;
        fclose(f);
    }
    unlink(path);
    return f ? rc : -1;
}

static void apply_edits(const char *path, const uint8_t *d, size_t n)
{
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi meta, vocab, rows;
    if (mdb_env_create(&env))
        return;
    mdb_env_set_maxdbs(env, 4);
    mdb_env_set_mapsize(env, 64 << 20);
    if (mdb_env_open(env, path, MDB_NOSUBDIR | MDB_NOLOCK, 0644) ||
        mdb_txn_begin(env, NULL, 0, &txn)) {
        mdb_env_close(env);
        return;
    }
    if (mdb_dbi_open(txn, "meta", 0, &meta) || mdb_dbi_open(txn, "vocab", 0, &vocab) ||
        mdb_dbi_open(txn, "rows", MDB_INTEGERKEY, &rows)) {
        mdb_txn_abort(txn);
        mdb_env_close(env);
        return;
    }
    size_t i = 0;
    long cut = -1;
    while (i + 4 <= n) {
        const uint8_t op = d[i], kl = d[i + 1];
        if (i + 2 + kl + 2 > n)
            break;
        const uint8_t *key = d + i + 2;
        const size_t vl = (size_t)d[i + 2 + kl] | (size_t)d[i + 3 + kl] << 8;
        const uint8_t *val = d + i + 4 + kl;
        const size_t avail = n - (i + 4 + kl), vn = vl < avail ? vl : avail;
        i += 4 + kl + vn;
        MDB_val k = {kl, (void *)(uintptr_t)key}, v = {vn, (void *)(uintptr_t)val};
        if (op == 0xFF && kl >= 3) { /* after the edits, cut the file at key[0..2] bytes */
            cut = (long)(key[0] | key[1] << 8 | key[2] << 16);
            continue;
        }
        switch (op % 6) {
        case 0: mdb_put(txn, meta, &k, &v, 0); break;
        case 1: mdb_del(txn, meta, &k, NULL); break;
        case 2: mdb_put(txn, vocab, &k, &v, 0); break;
        case 3:   /* overwrite bytes of block (key[0] & 1) << 40 at offset key[1..2] */
        case 4: { /* or replace the block with the value (a wrong length, a new key) */
            size_t bk = (size_t)(kl ? key[0] & 1 : 0) << 40 | (kl > 3 ? key[3] : 0);
            MDB_val kk = {sizeof bk, &bk}, cur;
            if (op % 6 == 4) {
                mdb_put(txn, rows, &kk, &v, 0);
                break;
            }
            if (mdb_get(txn, rows, &kk, &cur) || !cur.mv_size)
                break;
            unsigned char *copy = malloc(cur.mv_size);
            if (!copy)
                break;
            memcpy(copy, cur.mv_data, cur.mv_size);
            size_t off = kl > 2 ? ((size_t)key[1] | (size_t)key[2] << 8) % cur.mv_size : 0;
            for (size_t j = 0; j < vn && off + j < cur.mv_size; j++)
                copy[off + j] = val[j];
            MDB_val nv = {cur.mv_size, copy};
            mdb_put(txn, rows, &kk, &nv, 0);
            free(copy);
            break;
        }
        case 5: {
            size_t bk = (size_t)(kl ? key[0] & 1 : 0) << 40 | (kl > 3 ? key[3] : 0);
            MDB_val kk = {sizeof bk, &bk};
            mdb_del(txn, rows, &kk, NULL);
            break;
        }
        }
    }
    mdb_txn_commit(txn);
    mdb_env_close(env);
    struct stat sb;
    if (cut >= 0 && !stat(path, &sb) && cut < sb.st_size && truncate(path, cut))
        return;
}

int eg_fuzz_store(const uint8_t *data, size_t size)
{
    if (make_base())
        return 0;
    const char *path = eg_fuzz_tmp_path(".store");
    if (eg_fuzz_put(path, base_store, base_len))
        return 0;
    apply_edits(path, data, size);
    eg_store_verify_report r;
    eg_store_verify(path, &r, NULL);
    eg_store *s = NULL;
    if (eg_store_open(path, 0, &s, NULL) == EG_OK) {
        const eg_spec *sp = eg_store_spec(s);
        const uint32_t dim = eg_store_get_info(s)->dim;
        float *buf = malloc((size_t)dim * sizeof *buf);
        for (uint32_t li = 0; buf && li < eg_spec_n_layers(sp); li++) {
            const uint64_t rows = eg_spec_layer_rows(sp, li);
            for (uint64_t rr = 0; rr < rows; rr += 7)
                eg_store_read_rows(s, li, rr, 1, buf, dim, NULL);
        }
        free(buf);
        size_t np;
        eg_store_projection(s, &np);
        for (uint32_t c = 0; c < 64; c++)
            eg_store_key(s, c);
        eg_store_close(s);
    }
    unlink(path);
    return 0;
}

/* counts files: the header, every record, and the inspection over a spec */
int eg_fuzz_counts(const uint8_t *data, size_t size)
{
    const char *path = eg_fuzz_tmp_path(".counts");
    if (eg_fuzz_put(path, data, size))
        return 0;
    eg_counts *c = NULL;
    if (eg_counts_open(path, &c, NULL) == EG_OK) {
        uint32_t ids[EG_COUNT_MAX_ORDER];
        uint64_t cnt;
        for (uint32_t n = 2; n <= eg_counts_max_ngram(c); n++)
            for (uint64_t i = 0; i < eg_counts_distinct(c, n) && i < 4096; i++)
                eg_counts_get(c, n, i, ids, &cnt);
        eg_config cfg;
        eg_spec *sp = NULL;
        eg_config_demo(&cfg);
        cfg.max_ngram_size = eg_counts_max_ngram(c) < 4 ? eg_counts_max_ngram(c) : 4;
        for (uint32_t n = 0; n + 1 < cfg.max_ngram_size; n++)
            cfg.engram_vocab_size[n] = 101;
        cfg.n_head_per_ngram = 2;
        cfg.n_embed_per_ngram = 64;
        if (eg_counts_vprime(c) && eg_counts_vprime(c) < (1ull << 32) &&
            eg_spec_create(&cfg, eg_counts_vprime(c), 0, &sp, NULL) == EG_OK) {
            eg_plan_inspect *in = malloc(sizeof *in);
            for (uint32_t n = 2; in && n <= cfg.max_ngram_size; n++)
                eg_plan_inspect_order(c, sp, 0, n, 4, NULL, in, NULL);
            free(in);
            eg_spec_free(sp);
        }
        eg_counts_close(c);
    }
    unlink(path);
    return 0;
}

/* safetensors: the header, every tensor's range, the metadata */
int eg_fuzz_safetensors(const uint8_t *data, size_t size)
{
    const char *path = eg_fuzz_tmp_path(".safetensors");
    if (eg_fuzz_put(path, data, size))
        return 0;
    eg_safetensors *st = NULL;
    if (eg_safetensors_open(path, &st, NULL) == EG_OK) {
        unsigned sum = 0; /* touch each tensor's first and last byte */
        for (size_t i = 0; i < eg_safetensors_count(st); i++) {
            const eg_st_tensor *t = eg_safetensors_get(st, i);
            if (t->nbytes)
                sum += ((const unsigned char *)t->data)[0] +
                       ((const unsigned char *)t->data)[t->nbytes - 1];
            (void)eg_safetensors_find(st, t->name);
        }
        if (sum == 0xffffffffu) /* keeps the reads */
            eg_safetensors_close(NULL);
        (void)eg_safetensors_meta(st, "config");
        eg_safetensors_close(st);
    }
    unlink(path);
    return 0;
}

#ifdef EG_LIBFUZZER_SAFETENSORS
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) { return eg_fuzz_safetensors(data, size); }
#endif
#ifdef EG_LIBFUZZER_STORE
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) { return eg_fuzz_store(data, size); }
#endif
#ifdef EG_LIBFUZZER_COUNTS
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) { return eg_fuzz_counts(data, size); }
#endif
