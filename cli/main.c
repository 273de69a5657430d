/* main.c - the engram command: one binary, subcommands. */
#include <stdio.h>
#include <string.h>

#include "cli.h"

static const char main_usage[] =
    "usage: engram <command> [options]   (engram <command> --help for details)\n"
    "\n"
    "Engram conditional-memory tables, bit-exact with the reference.\n"
    "\n"
    "commands:\n"
    "  vocab    the vocabulary projection V -> V' of a tokenizer\n"
    "  prep     tokenize raw corpora into token shards\n"
    "  count    n-gram counts of token shards (exact, or --approx)\n"
    "  merge    sum counts files of disjoint shard subsets into one\n"
    "  plan     table sizes for a collision target, expected and measured rates\n"
    "  spec     multipliers, primes, row offsets and table sizes of a config\n"
    "  hash     hash token ids into per-head indices or table rows\n"
    "  build    write a table store (LMDB) for a config and tokenizer\n"
    "  inspect  a store's spec, occupancy, collisions and plots\n"
    "  export   a store's tables as safetensors\n"
    "  import   safetensors tables into a new store\n"
    "  verify   check every block and the metadata of a store\n"
    "  version  print the version\n";

int main(int argc, char **argv)
{
    if (argc < 2) {
        fputs(main_usage, stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "-h") || !strcmp(cmd, "--help") || !strcmp(cmd, "help")) {
        fputs(main_usage, stdout);
        return 0;
    }
    if (!strcmp(cmd, "version") || !strcmp(cmd, "--version")) {
        printf("engram %s\n", eg_version());
        return 0;
    }
    static const struct {
        const char *name;
        int (*fn)(int, char **);
    } cmds[] = {{"vocab", cmd_vocab}, {"prep", cmd_prep}, {"count", cmd_count}, {"merge", cmd_merge},
                  {"plan", cmd_plan},
                  {"spec", cmd_spec}, {"hash", cmd_hash},
                  {"build", cmd_build}, {"inspect", cmd_inspect}, {"export", cmd_export},
                  {"import", cmd_import}, {"verify", cmd_verify}};
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++)
        if (!strcmp(cmd, cmds[i].name)) {
            cli_cmd = cmds[i].name;
            return cmds[i].fn(argc - 1, argv + 1);
        }
    fprintf(stderr, "engram: unknown command '%s'\n\n", cmd);
    fputs(main_usage, stderr);
    return 2;
}
