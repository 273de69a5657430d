/* count64.c - exact n-gram counting with one-word keys (N x bits <= 60),
 * reached through eg_count_run (the stages: count_impl.h). */
#define KW 1
#include "count_impl.h"
