/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/*
 * How the hooks read kernel memory: the one choice each read makes between
 * a plain load and a probe read, depending on what the backend's program
 * type was handed.
 */
#ifndef KREAD_BPF_H
#define KREAD_BPF_H

#include "vmlinux.h"
#include <bpf/bpf_core_read.h>

/*
 * One read of a kernel field, the cheapest way the program allows. Through
 * a BTF-typed pointer (an fentry/fexit or tp_btf argument, and what is
 * reached from one by loads), a plain load: the verifier turns it into a
 * fault-safe PROBE_MEM load, with no helper call. Through anything else (a
 * kprobe argument, a pointer kept in a map or masked), a CO-RE
 * bpf_probe_read_kernel(). Both are relocated by CO-RE (vmlinux.h's types
 * carry preserve_access_index). `direct` is a constant at every call, so
 * each program keeps only one branch: the hot paths of the fentry and
 * tracepoint backends run with a handful of helper calls fewer per event.
 */
#define KREAD(direct, src, ...) ((direct) ? ___arrow(src, __VA_ARGS__) : BPF_CORE_READ(src, __VA_ARGS__))

#endif
