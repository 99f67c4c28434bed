/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
#ifndef SKETCH_BPF_H
#define SKETCH_BPF_H

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "config.bpf.h"

/*
 * Heavy hitters under a flood, for refusals: what admits a refused
 * packet's source to the sources map (top-sources, serve) and to the
 * aggregated map (drops past --stream-limit).
 *
 * A spoofed flood brings a new source with nearly every refused packet.
 * Admitting each one would push a real heavy source out of the LRU map
 * before user space reads it, however often it reads; and looking each one
 * up misses in a large, cold hash table, about 300 ns of every event, the
 * most the kernel side spends on a refusal.
 *
 * So a map takes in new sources freely only while it has room user space
 * granted: after each read of the map, as many new sources as it can take
 * without pushing out any it has not read (sources_room,
 * aggregated_room; pkg/probe/sources.go, grantRoom). A host whose
 * refusals come from sources the map holds, or has room for (the thousand
 * clients of a NAT gateway), counts every refusal exactly under its
 * source. Once the room is spent, new sources are held back: their
 * refusals go through a count-min sketch with conservative update
 * (Cormode and Muthukrishnan 2005; Estan and Varghese 2002), the approach
 * of NitroSketch in eBPF (Miano et al., SIGCOMM CCR 2023): per CPU, two
 * rows of SKETCH_WIDTH counters indexed by a seeded hash of the source and
 * the type; two loads and at most two stores, no hash-map lookup.
 * Counting starts over every window of SKETCH_EPOCH refusals of the CPU
 * (each counter carries the window it was written in: nothing is cleared
 * in a loop), so a counter holds on average at most SKETCH_EPOCH /
 * SKETCH_WIDTH = 0.5 of other sources' refusals. A source enters the map
 * at its SKETCH_THRESHOLD-th refusal in a window, credited with the
 * refusals held back until then (overcounted only by collisions), and is
 * then counted exactly for the rest of the window. Simulated (15,000 to
 * 600,000 random sources around bursts of heavy ones), random sources
 * reach the threshold by collisions about once in 60,000 refusals, and
 * heavy ones come out within 1 of their count.
 *
 * While sources are held back, one with fewer refusals than the threshold
 * in every window is counted only in its namespace's totals ("other"), and
 * one the map holds loses up to SKETCH_THRESHOLD - 1 refusals a window.
 */
#define SKETCH_WIDTH 4096
#define SKETCH_EPOCH 2048
#define SKETCH_THRESHOLD 6

enum sketch_use { SKETCH_SOURCES, SKETCH_AGGREGATED };

struct sketch {
	__u32 refusals;		     /* in the window so far */
	__u32 window;		     /* its number, of which each counter keeps 16 bits */
	__u32 cell[2][SKETCH_WIDTH]; /* window << 16 | count */
};

/* One sketch per CPU and use, indexed by CPU number (plus
 * cfg.sketch_aggregated_base for the aggregated map): an array rather than
 * a per-CPU array, whose values are limited to 32 KiB (PCPU_MIN_UNIT_SIZE)
 * and whose lookups are helper calls before 6.9. User space sizes it to the
 * possible CPUs times the uses in force, or to 1 where there is none
 * (pkg/probe/config.go). Programs run with migration disabled, so no other
 * CPU writes a CPU's sketch (on a kernel that preempts kernel code, a
 * program preempted by another on its CPU may lose a count). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct sketch);
} sketches SEC(".maps");

/* What the sketch tells sources apart by. */
struct sketch_source {
	__u64 netns_id;
	const __u8 *addr; /* 16 bytes, masked as the map's key is */
	__u32 type;
	__u8 family;
};

/* The sketch's hash of a source and type. Each word goes through a
 * multiply and an xor-shift after the secret seed, so that sources chosen
 * to collide without knowing the seed spread like any others (not a
 * cryptographic hash: the seed is readable by root only). */
static __always_inline __u64 sketch_hash(const struct sketch_source *src)
{
	__u64 a, b, h = cfg.sketch_seed ^ src->netns_id;

	__builtin_memcpy(&a, src->addr, sizeof(a));
	__builtin_memcpy(&b, src->addr + 8, sizeof(b));
	h = (h ^ a) * 0x9e3779b97f4a7c15ULL;
	h ^= h >> 31;
	h = (h ^ b ^ ((__u64)src->type << 8 | src->family)) * 0xbf58476d1ce4e5b9ULL;
	h ^= h >> 29;
	h *= 0x94d049bb133111ebULL;
	return h ^ (h >> 32);
}

/* The sketch for use of cpu, the CPU the program runs on (the event's,
 * read once). */
static __always_inline struct sketch *sketch_of(__u32 use, __u32 cpu)
{
	__u32 i = cpu + (use == SKETCH_AGGREGATED ? cfg.sketch_aggregated_base : 0);

	return bpf_map_lookup_elem(&sketches, &i);
}

/* New sources each map may still take in without pushing out one user
 * space has not read: set by user space after each read of the map,
 * counted down by admissions (run-time knobs, like config.bpf.h's). */
__s64 sources_room;
__s64 aggregated_room;

/* Whether a new source may enter the map of use now, taking one of its
 * room. Two CPUs may take the last one: the room is a bound to keep
 * within, not an exact count. The add's result is not used, so it is the
 * atomic add every kernel of the tier has (BPF_XADD, not 5.12's fetch). */
static __always_inline bool sketch_take_room(__u32 use)
{
	__s64 *room = use == SKETCH_AGGREGATED ? &aggregated_room : &sources_room;

	if (*room <= 0)
		return false;
	__sync_fetch_and_add(room, -1);
	return true;
}

/* Whether new sources of the map of use are held back now. */
static __always_inline bool sketch_holding(__u32 use)
{
	return (use == SKETCH_AGGREGATED ? aggregated_room : sources_room) <= 0;
}

/* Adds a refusal to the counters of hash h, raising only those at the
 * minimum (conservative update), and returns the source's estimate with
 * it; *before is the estimate without it. */
static __always_inline __u32 sketch_add(struct sketch *sk, __u64 h, __u32 *before)
{
	__u32 i0 = h & (SKETCH_WIDTH - 1), i1 = (h >> 32) & (SKETCH_WIDTH - 1);
	__u32 tag = sk->window << 16, c0 = sk->cell[0][i0], c1 = sk->cell[1][i1];
	__u32 n0 = (c0 & 0xffff0000) == tag ? c0 & 0xffff : 0;
	__u32 n1 = (c1 & 0xffff0000) == tag ? c1 & 0xffff : 0;
	__u32 m = n0 < n1 ? n0 : n1;

	if (n0 == m)
		sk->cell[0][i0] = tag | (m + 1);
	if (n1 == m)
		sk->cell[1][i1] = tag | (m + 1);
	*before = m;
	return m + 1;
}

/* Counts a refusal of src in the sketch, and returns how many refusals to
 * count for its source: 0 while it is held back, else its estimate, at
 * most the threshold (the rest of an estimate is other sources'
 * collisions). *crossing: it passes the threshold with this refusal. */
static __always_inline __u32 sketch_count(struct sketch *sk, const struct sketch_source *src, bool *crossing)
{
	__u32 before, est;

	if (sk->refusals >= SKETCH_EPOCH) {
		sk->refusals = 0;
		sk->window++;
	}
	sk->refusals++;
	est = sketch_add(sk, sketch_hash(src), &before);
	*crossing = before < SKETCH_THRESHOLD;
	if (est < SKETCH_THRESHOLD)
		return 0;
	return *crossing ? SKETCH_THRESHOLD : 1;
}

#endif
