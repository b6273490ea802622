/*
 * bench.h - qdup-bench's commands in other files than bench.c.
 */
#ifndef QDUP_TOOLS_BENCH_H
#define QDUP_TOOLS_BENCH_H

/* qdup-bench search (bench_search.c): argv[0] is "search". */
int bench_search_main(int argc, char **argv);

#endif
