/* test_config.c - config parsing: the reference shape, HF config.json, errors. */
#include <stdlib.h>
#include <string.h>

#include "engram/engram.h"
#include "test.h"

static eg_status parse(const char *json, eg_config *cfg, eg_err *err)
{
    return eg_config_parse(json, strlen(json), "t.json", cfg, err);
}

TEST(config_demo_file_matches_reference_defaults)
{
    eg_config a, b;
    eg_err err;
    REQUIRE(eg_config_load("configs/demo.json", &a, &err) == EG_OK);
    eg_config_demo(&b);
    CHECK_EQ(a.max_ngram_size, b.max_ngram_size);
    CHECK_EQ(a.n_head_per_ngram, b.n_head_per_ngram);
    CHECK_EQ(a.n_embed_per_ngram, b.n_embed_per_ngram);
    CHECK_EQ(a.n_layers, 2);
    CHECK_EQ(a.layer_ids[0], 1);
    CHECK_EQ(a.layer_ids[1], 15);
    CHECK_EQ(a.engram_vocab_size[0], 646400);
    CHECK_EQ(a.engram_vocab_size[1], 646400);
    CHECK_EQ(a.pad_id, 2);
    CHECK_EQ(a.seed, 0);
    CHECK_EQ(a.kernel_size, 4);
    CHECK(!strcmp(a.name, "demo"));
}

TEST(config_defaults_for_optional_fields)
{
    eg_config c;
    REQUIRE(parse("{\"engram_vocab_size\":[10,20],\"max_ngram_size\":3,\"n_embed_per_ngram\":8,"
                  "\"n_head_per_ngram\":2,\"layer_ids\":[0],\"pad_id\":0}",
                  &c, NULL) == EG_OK);
    CHECK_EQ(c.seed, 0);
    CHECK_EQ(c.kernel_size, 4);
    CHECK_EQ(c.hc_mult, 4);
    CHECK_EQ(c.compressed_vocab_size, 0);
}

TEST(config_errors_are_clear)
{
    static const struct {
        const char *json, *expect;
        eg_status code;
    } cases[] = {
        {"{\"max_ngram_size\":3,\"n_embed_per_ngram\":512,\"n_head_per_ngram\":8,"
         "\"layer_ids\":[1],\"pad_id\":2}",
         "missing required field 'engram_vocab_size'", EG_ECONFIG},
        {"{\"engram_vocab_size\":[10,10],\"max_ngram_size\":\"3\",\"n_embed_per_ngram\":8,"
         "\"n_head_per_ngram\":2,\"layer_ids\":[1],\"pad_id\":2}",
         "'max_ngram_size' must be an integer", EG_ECONFIG},
        {"{\"engram_vocab_size\":[10,10],\"max_ngram_size\":1,\"n_embed_per_ngram\":8,"
         "\"n_head_per_ngram\":2,\"layer_ids\":[1],\"pad_id\":2}",
         "'max_ngram_size' must be in 2..", EG_ECONFIG},
        {"{\"engram_vocab_size\":[10],\"max_ngram_size\":3,\"n_embed_per_ngram\":8,"
         "\"n_head_per_ngram\":2,\"layer_ids\":[1],\"pad_id\":2}",
         "engram_vocab_size has 1 entries but max_ngram_size 3 needs 2", EG_ECONFIG},
        {"{\"engram_vocab_size\":[10,10],\"max_ngram_size\":3,\"n_embed_per_ngram\":9,"
         "\"n_head_per_ngram\":2,\"layer_ids\":[1],\"pad_id\":2}",
         "must be a positive multiple of n_head_per_ngram", EG_ECONFIG},
        {"{\"engram_vocab_size\":[10,10],\"max_ngram_size\":3,\"n_embed_per_ngram\":8,"
         "\"n_head_per_ngram\":2,\"layer_ids\":[1,1],\"pad_id\":2}",
         "lists layer 1 twice", EG_ECONFIG},
        {"{\"engram_vocab_size\":[10,10],\"max_ngram_size\":3,\"n_embed_per_ngram\":8,"
         "\"n_head_per_ngram\":2,\"layer_ids\":[1],\"pad_id\":-1}",
         "'pad_id' must be in 0..", EG_ECONFIG},
        {"{\"engram_vocab_size\":[10,1],\"max_ngram_size\":3,\"n_embed_per_ngram\":8,"
         "\"n_head_per_ngram\":2,\"layer_ids\":[1],\"pad_id\":2}",
         "engram_vocab_size[1]' must be in 2..", EG_ECONFIG},
        {"{\"engram_vocab_size\":[10,10],\"max_ngram_size\":3,\"n_embed_per_ngram\":8,"
         "\"n_head_per_ngram\":2,\"layer_ids\":[],\"pad_id\":2}",
         "layer_ids must list 1..", EG_ECONFIG},
        {"{\"engram_vocab_size\":[10,10],\"max_ngram_size\":3,\"n_embed_per_ngram\":8,"
         "\"n_head_per_ngram\":2,\"layer_ids\":[1],\"pad_id\":2,\"max_ngram\":3}",
         "unknown field 'max_ngram'", EG_ECONFIG},
        {"{\"engram_vocab_size\":[10,10],\"max_ngram_size\":3,\"n_embed_per_ngram\":8,"
         "\"n_head_per_ngram\":2,\"layer_ids\":[1],\"pad_id\":2,\"seed\":1.5}",
         "'seed' must be an integer", EG_ECONFIG},
        {"{\"engram_vocab_size\":[10,10],", "t.json:1:", EG_EFORMAT},
        {"[1,2]", "a config must be a JSON object", EG_ECONFIG},
        {"{\"a\":1,\"a\":2}", "invalid JSON", EG_EFORMAT},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        eg_config c;
        eg_err err = {0};
        eg_status st = parse(cases[i].json, &c, &err);
        CHECK_MSG(st == cases[i].code, "case %zu: status %d, want %d (%s)", i, st,
                  cases[i].code, err.msg);
        CHECK_MSG(strstr(err.msg, cases[i].expect) != NULL, "case %zu: message '%s' lacks '%s'",
                  i, err.msg, cases[i].expect);
        CHECK_MSG(strstr(err.msg, "t.json") != NULL, "case %zu: message names no file", i);
        CHECK_MSG(strchr(err.msg, '\n') == NULL, "case %zu: message is not one line", i);
    }
    eg_err err;
    eg_config c;
    CHECK(eg_config_load("/nonexistent/x.json", &c, &err) == EG_EIO);
    CHECK(strstr(err.msg, "/nonexistent/x.json") != NULL);
}

static const char hf_v41[] =
    "{\"architectures\":[\"DeepseekV41ForCausalLM\"],\"model_type\":\"deepseek_v41\","
    "\"text_config\":{\"hidden_size\":7168,\"hc_mult\":4,\"vocab_size\":129280,"
    "\"engram_layer_ids\":[1,14],\"engram_num_embeddings\":[384006168,384016682],"
    "\"engram_max_ngram_size\":4,\"engram_vocab_size\":16000000,\"engram_n_heads\":8,"
    "\"engram_head_dim\":256,\"engram_pad_token_id\":2,\"engram_compressed_vocab_size\":%s,"
    "\"rope_theta\":10000.0}}";

TEST(config_hf_v41_read_directly)
{
    char json[1024];
    snprintf(json, sizeof json, hf_v41, "98627");
    eg_config c;
    eg_err err;
    REQUIRE(parse(json, &c, &err) == EG_OK);
    CHECK(c.from_hf);
    CHECK_EQ(c.max_ngram_size, 4);
    CHECK_EQ(c.n_head_per_ngram, 8);
    CHECK_EQ(c.n_embed_per_ngram, 2048);
    CHECK_EQ(c.engram_vocab_size[2], 16000000);
    CHECK_EQ(c.layer_ids[1], 14);
    CHECK_EQ(c.compressed_vocab_size, 98627);
    CHECK_EQ(c.hidden_size, 7168);
    eg_spec *s = NULL;
    REQUIRE(eg_spec_create(&c, 98627, 2, &s, &err) == EG_OK);
    CHECK_EQ(eg_spec_layer_rows(s, 0), 384006168);
    eg_spec_free(s);
    /* a projection with another V' is refused, clearly */
    CHECK(eg_spec_create(&c, 98626, 2, &s, &err) == EG_EMISMATCH);
    CHECK(strstr(err.msg, "compressed_vocab_size 98627") != NULL);
    CHECK(s == NULL);
    /* published rows that the schedule does not reproduce are refused */
    c.declared_rows[1] = 384016681;
    CHECK(eg_spec_create(&c, 98627, 2, &s, &err) == EG_EMISMATCH);
    CHECK(strstr(err.msg, "384016681") != NULL);
    /* at the top level too, and 0 means undeclared */
    snprintf(json, sizeof json,
             "{\"engram_layer_ids\":[3],\"engram_max_ngram_size\":2,\"engram_vocab_size\":[1000],"
             "\"engram_n_heads\":2,\"engram_head_dim\":4,\"engram_compressed_vocab_size\":0,"
             "\"anything_else\":true}");
    REQUIRE(parse(json, &c, &err) == EG_OK);
    CHECK_EQ(c.compressed_vocab_size, 0);
    CHECK_EQ(c.pad_id, 2);
    snprintf(json, sizeof json, "{\"text_config\":{\"engram_layer_ids\":[1]}}");
    CHECK(parse(json, &c, &err) == EG_ECONFIG);
    CHECK(strstr(err.msg, "missing 'engram_max_ngram_size'") != NULL);
}

TEST(config_json_round_trip)
{
    eg_config a, b;
    REQUIRE(eg_config_load("configs/v41.json", &a, NULL) == EG_OK);
    a.compressed_vocab_size = 12345;
    char buf[2048];
    REQUIRE(eg_config_to_json(&a, buf, sizeof buf, NULL) == EG_OK);
    REQUIRE(parse(buf, &b, NULL) == EG_OK);
    CHECK(memcmp(a.engram_vocab_size, b.engram_vocab_size, sizeof a.engram_vocab_size) == 0);
    CHECK(memcmp(a.layer_ids, b.layer_ids, sizeof a.layer_ids) == 0);
    CHECK_EQ(a.max_ngram_size, b.max_ngram_size);
    CHECK_EQ(a.n_embed_per_ngram, b.n_embed_per_ngram);
    CHECK_EQ(b.compressed_vocab_size, 12345);
    eg_err err;
    CHECK(eg_config_to_json(&a, buf, 10, &err) == EG_ECAPACITY);
}
