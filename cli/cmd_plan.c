/* cmd_plan.c - `engram plan`: table sizes from n-gram counts, expected and
 * measured collision rates. */
#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "engram/eg_count.h"

static const char plan_usage[] =
    "usage: engram plan --config CFG (--counts COUNTS | --distinct 2=M2,3=M3,...)\n"
    "                   [--target RATE] [--verify] [-o PLANNED.json] [--json]\n"
    "\n"
    "For each order n, the fraction of its distinct n-grams that share a bucket with\n"
    "another in one head is, under uniform hashing, 1 - (1 - 1/p)^(m-1) for m n-grams\n"
    "and p rows. plan reports that rate (and its token-mass weighting, and the chance\n"
    "that all K heads collide, assuming independent heads) for the config's sizes, and\n"
    "chooses the smallest sizes that keep it under --target; -o writes the config with\n"
    "those engram_vocab_size values (the reference's prime schedule then picks the\n"
    "primes). --verify hashes the counted n-grams with the real multipliers and primes\n"
    "and measures the rates, expected and measured side by side.\n"
    "\n"
    "  -c, --config CFG        the engram config (its sizes are the current plan)\n"
    "      --counts COUNTS     an engram count output (gives m, V' and the pad)\n"
    "      --distinct LIST     or the distinct counts by hand: 2=123456,3=789012\n"
    "  -r, --target RATE       acceptable per-head collision rate (default 0.05)\n"
    "      --verify            measure with the real hash (needs --counts)\n"
    "  -o, --output FILE       write the planned config (JSON)\n"
    "      --json              the report as JSON on stdout\n"
    "  -h, --help              this text\n";

static double mean(const double *v, uint32_t n)
{
    double s = 0;
    for (uint32_t i = 0; i < n; i++)
        s += v[i];
    return n ? s / n : 0;
}

int cmd_plan(int argc, char **argv)
{
    enum { O_COUNTS = 256, O_DISTINCT, O_VERIFY, O_JSON };
    static const struct option opts[] = {{"config", required_argument, 0, 'c'},
                                         {"counts", required_argument, 0, O_COUNTS},
                                         {"distinct", required_argument, 0, O_DISTINCT},
                                         {"target", required_argument, 0, 'r'},
                                         {"verify", no_argument, 0, O_VERIFY},
                                         {"output", required_argument, 0, 'o'},
                                         {"json", no_argument, 0, O_JSON},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    const char *cfg_path = NULL, *counts_path = NULL, *distinct = NULL, *out_path = NULL;
    double target = 0.05;
    int verify = 0, json = 0, c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "c:r:o:h", opts, NULL)) != -1) {
        switch (c) {
        case 'c': cfg_path = optarg; break;
        case O_COUNTS: counts_path = optarg; break;
        case O_DISTINCT: distinct = optarg; break;
        case 'r': {
            char *end;
            target = strtod(optarg, &end);
            if (*end || !(target > 0 && target < 1))
                return cli_error("--target: '%s' is not a rate in (0, 1)", optarg);
            break;
        }
        case O_VERIFY: verify = 1; break;
        case 'o': out_path = optarg; break;
        case O_JSON: json = 1; break;
        case 'h': fputs(plan_usage, stdout); return 0;
        default: fputs(plan_usage, stderr); return 2;
        }
    }
    if (optind < argc)
        return cli_error("unexpected argument '%s'", argv[optind]);
    if (!cfg_path)
        return cli_error("--config CFG is required");
    if (!counts_path == !distinct)
        return cli_error("give --counts COUNTS or --distinct LIST");
    if (verify && !counts_path)
        return cli_error("--verify needs --counts (the n-grams themselves)");
    eg_err err;
    eg_config cfg;
    if (eg_config_load(cfg_path, &cfg, &err))
        return cli_fail(&err);
    const uint32_t N = cfg.max_ngram_size, K = cfg.n_head_per_ngram;
    uint64_t m[EG_MAX_NGRAM + 1] = {0}, occ[EG_MAX_NGRAM + 1] = {0};
    eg_counts *counts = NULL;
    if (counts_path) {
        if (eg_counts_open(counts_path, &counts, &err))
            return cli_fail(&err);
        if (eg_counts_max_ngram(counts) < N) {
            eg_counts_close(counts);
            return cli_error("%s counts orders up to %u, the config needs %u", counts_path,
                             eg_counts_max_ngram(counts), N);
        }
        for (uint32_t n = 2; n <= N; n++) {
            m[n] = eg_counts_distinct(counts, n);
            occ[n] = eg_counts_total(counts, n);
        }
    } else {
        for (const char *p = distinct; *p;) {
            char *end;
            unsigned long n = strtoul(p, &end, 10);
            if (*end != '=' || n < 2 || n > N)
                return cli_error("--distinct: '%s' is not n=M with n in 2..%u", p, N);
            unsigned long long v = strtoull(end + 1, &end, 10);
            m[n] = v;
            p = *end == ',' ? end + 1 : end;
            if (*end && *end != ',')
                return cli_error("--distinct: bad list near '%s'", end);
        }
    }
    eg_config planned = cfg;
    json_t *root = json ? json_object() : NULL, *orders = json ? json_array() : NULL;
    if (!json)
        printf("plan for %s, %u heads per order, target %.4g per head\n%-6s %14s %14s %10s "
               "%10s %14s %10s %10s\n",
               cfg_path, K, target, "order", "distinct", "current rows", "per-head", "all-K",
               "planned rows", "per-head", "all-K");
    for (uint32_t n = 2; n <= N; n++) {
        const uint64_t cur = cfg.engram_vocab_size[n - 2];
        const uint64_t p = eg_plan_size_for(m[n], target);
        planned.engram_vocab_size[n - 2] = p < 2 ? 2 : p;
        const double rc = eg_plan_collision_rate(m[n], cur), rp = eg_plan_collision_rate(m[n], p);
        if (json) {
            json_t *o = json_object();
            json_object_set_new(o, "n", json_integer(n));
            json_object_set_new(o, "distinct", json_integer((json_int_t)m[n]));
            if (counts)
                json_object_set_new(o, "occurrences", json_integer((json_int_t)occ[n]));
            json_object_set_new(o, "current_rows", json_integer((json_int_t)cur));
            json_object_set_new(o, "current_expected_head", json_real(rc));
            json_object_set_new(o, "current_expected_mass", json_real(rc));
            json_object_set_new(o, "current_expected_all_heads", json_real(pow(rc, K)));
            json_object_set_new(o, "planned_rows", json_integer((json_int_t)p));
            json_object_set_new(o, "planned_expected_head", json_real(rp));
            json_object_set_new(o, "planned_expected_all_heads", json_real(pow(rp, K)));
            json_array_append_new(orders, o);
        } else {
            printf("%-6u %14llu %14llu %10.4f %10.2e %14llu %10.4f %10.2e\n", n,
                   (unsigned long long)m[n], (unsigned long long)cur, rc, pow(rc, K),
                   (unsigned long long)p, rp, pow(rp, K));
        }
    }
    if (!json)
        printf("(under uniform hashing the token-mass-weighted rate equals the per-head rate "
               "in expectation; all-K assumes independent heads)\n");
    int rc = 0;
    if (verify) {
        const uint64_t V = eg_counts_vprime(counts);
        const int64_t pad = eg_counts_pad(counts);
        eg_config *which[2] = {&cfg, &planned};
        const char *names[2] = {"current", "planned"};
        if (!json)
            printf("\nmeasured with the real hash (layer %u), mean over heads:\n%-8s %-6s %12s "
                   "%12s %12s %12s %12s\n",
                   cfg.layer_ids[0], "sizes", "order", "expected", "head", "head mass",
                   "all-K", "all-K mass");
        for (int w = 0; w < 2 && !rc; w++) {
            eg_config one = *which[w];
            one.n_layers = 1; /* the first layer's primes */
            one.compressed_vocab_size = 0;
            memset(one.declared_rows, 0, sizeof one.declared_rows);
            eg_spec *spec = NULL;
            if (eg_spec_create(&one, V, pad, &spec, &err)) {
                rc = cli_fail(&err);
                break;
            }
            for (uint32_t n = 2; n <= N && !rc; n++) {
                eg_plan_measure pm;
                if (eg_plan_measure_order(counts, spec, 0, n, &pm, &err)) {
                    rc = cli_fail(&err);
                    break;
                }
                const double e = eg_plan_collision_rate(m[n], one.engram_vocab_size[n - 2]);
                if (json) {
                    json_t *o = json_array_get(orders, n - 2);
                    char key[64];
                    snprintf(key, sizeof key, "%s_measured_head", names[w]);
                    json_object_set_new(o, key, json_real(mean(pm.head_distinct, K)));
                    snprintf(key, sizeof key, "%s_measured_mass", names[w]);
                    json_object_set_new(o, key, json_real(mean(pm.head_mass, K)));
                    snprintf(key, sizeof key, "%s_measured_all_heads", names[w]);
                    json_object_set_new(o, key, json_real(pm.all_distinct));
                    snprintf(key, sizeof key, "%s_measured_all_heads_mass", names[w]);
                    json_object_set_new(o, key, json_real(pm.all_mass));
                } else {
                    printf("%-8s %-6u %12.4f %12.4f %12.4f %12.2e %12.2e\n", names[w], n, e,
                           mean(pm.head_distinct, K), mean(pm.head_mass, K), pm.all_distinct,
                           pm.all_mass);
                }
            }
            eg_spec_free(spec);
        }
    }
    if (!rc && out_path) {
        if (counts)
            planned.compressed_vocab_size = eg_counts_vprime(counts);
        char buf[8192];
        cli_out o;
        if (eg_config_to_json(&planned, buf, sizeof buf, &err))
            rc = cli_fail(&err);
        else if (!(rc = cli_out_open(&o, out_path))) {
            rc = cli_out_write(&o, buf, strlen(buf));
            if (!rc)
                rc = cli_out_write(&o, "\n", 1);
            if (!rc)
                rc = cli_out_commit(&o);
            else
                cli_out_abort(&o);
        }
        if (!rc && !json)
            printf("\nplanned config written to %s\n", out_path);
    }
    if (json) {
        json_object_set_new(root, "config", json_string(cfg_path));
        json_object_set_new(root, "target", json_real(target));
        json_object_set_new(root, "heads", json_integer(K));
        json_object_set_new(root, "orders", orders);
        if (!rc)
            json_dumpf(root, stdout, JSON_INDENT(2) | JSON_PRESERVE_ORDER), fputc('\n', stdout);
        json_decref(root);
    }
    eg_counts_close(counts);
    return rc;
}
