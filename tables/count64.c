/* count64.c - exact n-gram counting with one-word keys (N x bits <= 60),
 * reached through eg_count_run (the code: count_core.h). */
#define KW 1
#include "count_core.h"
