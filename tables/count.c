/* count.c - exact n-gram counting with two-word keys and the public entry
 * point (the stages: count_impl.h), and the approximate counters. */
#define KW 2
#include "count_impl.h"

#include "count_approx.h"
