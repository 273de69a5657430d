/* count32.c - exact n-gram counting with one-word keys (N x bits <= 60) and
 * 32-bit counts (inputs of fewer than 2^32 tokens: 12-byte table entries),
 * reached through eg_count_run (the stages: count_impl.h). */
#define KW 1
#define CNT32 1
#include "count_impl.h"
