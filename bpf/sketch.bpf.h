/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
#ifndef SKETCH_BPF_H
#define SKETCH_BPF_H

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "config.bpf.h"

/*
 * Heavy hitters under a flood, for refusals: what admits a refused
 * packet's source to the sources map (top-sources, serve) and to the
 * aggregated map (drops past --stream-limit). A spoofed flood brings a new
 * source with nearly every refused packet: looking each one up in the
 * map misses in a large, cold hash table (about 300 ns of every
 * event), and admitting each one would push a real heavy source out
 * before user space reads it, however often it reads. So refusals go
 * first through a count-min sketch with conservative update (Cormode and
 * Muthukrishnan 2005; Estan and Varghese 2002), the approach of
 * NitroSketch in eBPF (Miano et al., SIGCOMM CCR 2023): per CPU, two rows
 * of SKETCH_WIDTH counters indexed by a seeded hash of the source and the
 * type; two loads and at most two stores, no hash-map lookup.
 *
 * Counting starts over every window of SKETCH_EPOCH refusals on the CPU
 * (each counter carries the window it was written in: nothing is cleared
 * in a loop), so a counter holds on average at most SKETCH_EPOCH /
 * SKETCH_WIDTH = 0.5 of other sources' refusals. A source enters the map
 * at its SKETCH_THRESHOLD-th refusal in a window, credited with its
 * estimate (the refusals held back until then, overcounted only by
 * collisions), and is then counted exactly for the rest of the window.
 * Simulated (15,000 to 600,000 random sources around bursts of heavy
 * ones), random sources reach the threshold by collisions about once in
 * 60,000 refusals, and heavy ones come out within 1 of their count.
 * A source with fewer refusals than the threshold in every window is
 * counted only in its namespace's totals ("other").
 *
 * The threshold applies only while the CPU is under a flood, refusing
 * faster than SKETCH_EPOCH in cfg.sketch_calm_ns (sketch_flooded); slower,
 * the threshold is 1, and every source is counted exactly from its first
 * refusal, as before a flood. User space sets sketch_calm_ns so that
 * admissions at the calm rate cannot churn the map (pkg/probe/sources.go,
 * calmWindow).
 */
#define SKETCH_WIDTH 4096
#define SKETCH_EPOCH 2048
#define SKETCH_THRESHOLD 6
#define SKETCH_EARLY 64

enum sketch_use { SKETCH_SOURCES, SKETCH_AGGREGATED };

struct sketch {
	__u64 start_ns;	 /* the window's first refusal */
	__u32 refusals;	 /* in the window so far */
	__u32 window;	 /* its number, of which each counter keeps 16 bits */
	__u32 threshold; /* estimate a source needs in this window (0: 1) */
	__u32 _pad;
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

/* Whether a window's refusals so far came faster than SKETCH_EPOCH in
 * cfg.sketch_calm_ns: a flood. Judged from SKETCH_EARLY refusals on, so
 * that a CPU a flood starts on admits at most that many of its sources
 * before the threshold applies; a few refusals at once are not a flood. */
static __always_inline bool sketch_flooded(const struct sketch *sk, __u64 took)
{
	/* took < sketch_calm_ns keeps the products within 64 bits. */
	return took < cfg.sketch_calm_ns && sk->refusals >= SKETCH_EARLY &&
	       (__u64)sk->refusals * cfg.sketch_calm_ns > (__u64)SKETCH_EPOCH * took;
}

/* This CPU's sketch, its window moved on for a refusal at now: a new
 * window every SKETCH_EPOCH refusals or sketch_calm_ns, and at once when a
 * flood starts on a calm CPU. A window's threshold is the flood's while
 * the refusals before it came at a flood's rate, else 1. */
static __always_inline struct sketch *sketch_window(__u32 use, __u64 now)
{
	__u32 i = bpf_get_smp_processor_id() + (use == SKETCH_AGGREGATED ? cfg.sketch_aggregated_base : 0);
	struct sketch *sk = bpf_map_lookup_elem(&sketches, &i);
	__u64 took;
	bool flooded;

	if (!sk)
		return NULL;
	if (!sk->start_ns)
		sk->start_ns = now;
	took = now - sk->start_ns;
	flooded = sketch_flooded(sk, took);
	if (sk->refusals >= SKETCH_EPOCH || took >= cfg.sketch_calm_ns || (sk->threshold <= 1 && flooded)) {
		sk->threshold = flooded ? SKETCH_THRESHOLD : 1;
		sk->start_ns = now;
		sk->refusals = 0;
		sk->window++;
	}
	sk->refusals++;
	return sk;
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

/* Counts a refusal of src in this CPU's sketch for use, and says whether
 * its source passed the threshold (returns how many refusals to count for
 * it: the estimate, at most the threshold) or is held back (0). *crossing:
 * it passes the threshold with this refusal. */
static __always_inline __u32 sketch_admit(__u32 use, const struct sketch_source *src, __u64 now, bool *crossing)
{
	struct sketch *sk = sketch_window(use, now);
	__u32 before, est, threshold;

	*crossing = true;
	if (!sk)
		return 1;
	threshold = sk->threshold ?: 1;
	est = sketch_add(sk, sketch_hash(src), &before);
	if (est < threshold)
		return 0;
	*crossing = before < threshold;
	return est < threshold ? est : threshold;
}

#endif
