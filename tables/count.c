/* count.c - exact n-gram counting with two-word keys, the public entry
 * points and the approximate counters (the code: count_core.h). */
#define KW 2
#include "count_core.h"
