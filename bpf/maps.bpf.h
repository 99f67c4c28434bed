/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/*
 * Map helpers every part of the kernel side uses, after libbpf-tools'
 * maps.bpf.h: the shapes that recur (a counter to add one to, an entry to
 * create when missing, an index into a map value's array) written once.
 */
#ifndef MAPS_BPF_H
#define MAPS_BPF_H

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

/* Adds one to the u64 counter at key. Meant for per-CPU arrays: each CPU
 * adds to its own copy, so there is no other writer and no atomic. */
static __always_inline void counter_inc(void *map, __u32 key)
{
	__u64 *n = bpf_map_lookup_elem(map, &key);

	if (n)
		(*n)++;
}

/* Adds n to the u64 counter at key, as counter_inc. */
static __always_inline void counter_add(void *map, __u32 key, __u64 n)
{
	__u64 *c = bpf_map_lookup_elem(map, &key);

	if (c)
		*c += n;
}

/* Creates key's entry as init unless it exists, and returns it: when another
 * CPU creates it first, BPF_NOEXIST fails and the lookup finds theirs. NULL
 * when the map refuses (a full map that is not LRU). The lookup that found
 * nothing is the caller's, so that init is built only when it is needed (a
 * zeroed value is a run of stores). */
static __always_inline void *map_try_init(void *map, const void *key, const void *init)
{
	bpf_map_update_elem(map, key, init, BPF_NOEXIST);
	return bpf_map_lookup_elem(map, key);
}

/*
 * To be placed right after the check that bounds an array index (no call in
 * between). The compiler, which knows the bound from the check, may keep the
 * value it checked on the stack from before the check and index with that
 * copy; a verifier that does not carry the check over to the copy (6.1's)
 * then sees an unbounded index and refuses the program ("unbounded memory
 * access"). Past the barrier the compiler must use what the checked
 * register holds, and a copy it keeps from there on carries the bound.
 */
#define bounded_index(i) barrier_var(i)

#endif
