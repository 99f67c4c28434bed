/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/*
 * Accounting: what the kernel side counts, whoever reads the events. Every
 * event produced, by type; every event lost; per network namespace, by type
 * and by detail; and, with per-source counting on (top-sources, serve), per
 * source, admitted by sample and hold. Counters only grow: user space reads
 * differences and never resets them.
 */
#ifndef ACCOUNTING_BPF_H
#define ACCOUNTING_BPF_H

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "config.bpf.h"
#include "conn.bpf.h"
#include "cttrace.h"
#include "maps.bpf.h"
#include "sketch.bpf.h"

/* Events the ring buffer had no room for: the kernel side never waits. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} lost SEC(".maps");

/* Every event produced, streamed or not, by type: the exact totals. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, CT_EV_MAX);
	__type(key, __u32);
	__type(value, __u64);
} produced SEC(".maps");

/* Per-source totals, by event type. LRU and sized by user space
 * (--max-sources), so a flood from spoofed sources cannot grow it: the
 * least recently active sources are dropped, and user space accounts what
 * they had as "other" (kernel totals minus the rows). Not per-CPU: with
 * per-CPU values the map would cost max_entries * nr_cpus values. */
struct src_key {
	__u64 netns_id; /* the namespace's identity (net_id) */
	__u8 family;
	__u8 _pad[7];
	__u8 addr[16];
};

struct src_stats {
	__u64 events[CT_EV_MAX];
	__u64 last_drop_ns;
	__u32 last_drop_type;
	__u32 inum; /* the namespace's inode number, the name it is shown by */
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct src_key);
	__type(value, struct src_stats);
} sources SEC(".maps");

/* Totals by event type per network namespace: the header's drops and
 * rates, and what makes a view filtered to some namespaces add up. Per-CPU,
 * so that every CPU refusing a flood's packets into one namespace adds to
 * its own cache line instead of contending for one; bounded like every map
 * here (a Kubernetes node runs a few hundred pod namespaces). */
struct netns_stats {
	__u32 inum; /* the namespace's inode number, the name it is shown by */
	__u32 _pad;
	__u64 events[CT_EV_MAX];
	__u64 details[CT_DETAIL_MAX]; /* each detail belongs to one type */
};

/* Keyed by the namespace's identity (net_id), not its inode number: the
 * kernel gives a dead namespace's inode to the next one at once. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_PERCPU_HASH);
	__uint(max_entries, 1024);
	__type(key, __u64);
	__type(value, struct netns_stats);
} netns_totals SEC(".maps");

/*
 * In front of netns_totals, for the namespaces that refuse a flood or
 * create a NAT gateway's flows: a direct-mapped per-CPU array indexed by the
 * low bits of the namespace's identity (cookies, and inode numbers where
 * they stand in, are handed out in sequence, so a host's namespaces spread
 * over the slots). A slot belongs to the first namespace that counts in it
 * on this CPU, until user space says that namespace died (dead_netns): the
 * next namespace to count there takes it over. A namespace whose slot is
 * held by another counts in netns_totals. An array slot is an address
 * computation where the hash costs a hash, a bucket walk and LRU
 * bookkeeping: about 100 ns of every event (bench's BenchmarkBPFHelper).
 * Counters only grow and each event counts in one place, so user space adds
 * both maps without double counting.
 */
#define NETNS_SLOTS 256

struct netns_slot {
	__u64 netns_id; /* 0: not claimed on this CPU */
	__u32 inum;
	__u32 _pad;
	__u64 events[CT_EV_MAX];
	__u64 details[CT_DETAIL_MAX];
};

/* Namespaces user space saw die, by cookie: their slots go to the next
 * namespace that counts there. User space forgets the dead namespaces' counts
 * when it writes them here; an LRU bounds what is kept of the dead. An
 * identity that is an inode number is never written here: the next
 * namespace of that inode has it, and keeps the slot (pkg/probe/netns.go). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 1024);
	__type(key, __u64);
	__type(value, __u8);
} dead_netns SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, NETNS_SLOTS);
	__type(key, __u32);
	__type(value, struct netns_slot);
} netns_slots SEC(".maps");

/* The clock as last read on this CPU, and the tick it was read in. */
struct tick_clock {
	__u64 jiffies;
	__u64 boot_ns;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct tick_clock);
} tick_clock SEC(".maps");

/*
 * The time to a tick (1 to 10 ms), for what is shown to the second and
 * read on every refusal: a source's last drop, an aggregate's, the stream
 * budget's window. Measured with perf on the 6.18 development machine (a
 * KVM guest, kvm-clock) during a flood from 1,000 sources, reading the
 * clock (read_tsc through pvclock) was a fifth of top-sources' BPF time per
 * refusal; jiffies are a load. Where bpf_jiffies64() cannot be called from
 * tracing programs, every call reads the clock.
 */
static __always_inline __u64 tick_time(void)
{
	struct tick_clock *t;
	__u32 zero = 0;
	__u64 now;

	if (!cfg.tick_clock)
		return bpf_ktime_get_boot_ns();
	t = bpf_map_lookup_elem(&tick_clock, &zero);
	if (!t)
		return bpf_ktime_get_boot_ns();
	now = bpf_jiffies64();
	if (t->jiffies != now) {
		/* A program nested on this CPU (an interrupt's packet) may see
		 * the new tick with the old time: a tick off, once. */
		t->jiffies = now;
		t->boot_ns = bpf_ktime_get_boot_ns();
	}
	return t->boot_ns;
}

/* Admission counters of the sources and aggregated maps: events for a key
 * the map did not hold (missed), and keys admitted; and, for the refusals
 * the sketch admits (sketch.bpf.h), refusals it held back and the held-back
 * refusals it credited once their source passed the threshold (beyond the
 * refusal at hand). */
enum src_stat {
	SRC_MISSED,
	SRC_ADMITTED,
	AGG_MISSED,
	AGG_ADMITTED,
	SRC_HELD_BACK,
	SRC_CREDITED,
	AGG_HELD_BACK,
	AGG_CREDITED,
	SRC_STAT_MAX
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SRC_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} source_stats SEC(".maps");

/*
 * A drop, here as in user space (event.Reason.IsDrop, which a test holds
 * this to), is a packet conntrack refused: what the kernel counts as `drop`
 * and `insert_failed`. An eviction loses an entry, not a packet.
 */
static __always_inline bool is_drop(__u32 type)
{
	return type == CT_EV_TABLE_FULL || type == CT_EV_ALLOC_FAILED || type == CT_EV_INSERT_FAILED;
}

static __always_inline void count_event(__u32 type)
{
	counter_inc(&produced, type);
}

static __always_inline void count_lost(void)
{
	counter_inc(&lost, 0);
}

/* Keeps the first bits of addr (network order), zeroes the rest. */
static __always_inline void mask_prefix(__u8 *addr, __u32 bits)
{
#pragma unroll
	for (int i = 0; i < 16; i++) {
		if (bits >= 8) {
			bits -= 8;
		} else {
			addr[i] &= (__u8)(0xff00 >> bits);
			bits = 0;
		}
	}
}

/* Whether this CPU's slot may go to namespace id: it is free, or held by a
 * namespace user space saw die. Taken over, it starts from zero (the dead
 * namespace's counts are forgotten by then). Only a slot held by another
 * namespace asks the dead map: rare, where the slot is the namespace's own
 * on nearly every event. */
static __always_inline bool claim_slot(struct netns_slot *slot, __u64 id, __u32 inum)
{
	if (slot->netns_id && !bpf_map_lookup_elem(&dead_netns, &slot->netns_id))
		return false;
	__builtin_memset(slot->events, 0, sizeof(slot->events));
	__builtin_memset(slot->details, 0, sizeof(slot->details));
	slot->inum = inum;
	slot->netns_id = id; /* this CPU's copy: no other writer */
	return true;
}

/* Counts the event in its namespace, by type and by detail. Reads the
 * event's netns, type and detail, which every event has written
 * (stream.bpf.h, event_begin). */
static __always_inline void account_netns(const struct ct_event *e)
{
	__u32 type = e->type, detail = e->detail, inum = e->netns;
	__u64 id = e->netns_id;
	struct netns_stats *st;
	struct netns_slot *slot;
	__u32 i = id % NETNS_SLOTS;

	if (type >= CT_EV_MAX)
		return;
	/* Refusals (table_full, the flood's path) carry no detail: one compare. */
	if (detail >= CT_DETAIL_MAX)
		detail = CT_DETAIL_NONE;
	bounded_index(type);
	bounded_index(detail);
	slot = bpf_map_lookup_elem(&netns_slots, &i);
	if (slot && id && (slot->netns_id == id || claim_slot(slot, id, inum))) {
		slot->events[type]++;
		if (detail)
			slot->details[detail]++;
		return;
	}
	st = bpf_map_lookup_elem(&netns_totals, &id);
	if (!st) {
		/* Zeroed only here: 144 bytes of stores the slots' path skips. */
		struct netns_stats zero = {.inum = inum};

		st = map_try_init(&netns_totals, &id, &zero);
		if (!st)
			return;
	}
	/* This CPU's copy: no other writer. A copy another CPU made the entry
	 * for starts zeroed, so each names its namespace itself. */
	st->inum = inum;
	st->events[type]++;
	if (detail)
		st->details[detail]++;
}

/*
 * Sample and hold (Estan and Varghese, "New directions in traffic
 * measurement and accounting", SIGCOMM 2002) for the sources map. A spoofed
 * flood brings a new source with nearly every packet; admitting each one
 * into the LRU map would push a real heavy source out within a fraction of
 * a second of its last packet, before user space reads it, and each insert
 * is the most expensive thing the hot path does. So, once user space sees
 * the map churning, a source not in the map is admitted with probability
 * 2^-admit_shift (config.bpf.h, a run-time knob); once in, every one of its
 * events is counted exactly. A source with m events is then missed with
 * probability (1 - 2^-shift)^m, and loses on average 2^shift - 1 events
 * before it is admitted: these are counted in the namespace totals, so in
 * "other". The aggregated map (stream.bpf.h) is sampled the same way.
 */

/* Whether a key a map does not hold gets an entry now; missed is the map's
 * SRC_MISSED or AGG_MISSED, and the admitted counter follows it. */
static __always_inline bool admit(__u32 shift, __u32 missed)
{
	counter_inc(&source_stats, missed);
	if (shift && (bpf_get_prandom_u32() & ((1U << (shift & 31)) - 1)))
		return false;
	counter_inc(&source_stats, missed + 1);
	return true;
}

/* key's entry in an LRU map, or a new zeroed one if the key is admitted
 * now; NULL when it is not (its event then counts only in the totals). */
static __always_inline void *lookup_or_admit(void *map, const void *key, const void *zero, __u32 shift, __u32 missed)
{
	void *v = bpf_map_lookup_elem(map, key);

	if (v || !admit(shift, missed))
		return v;
	return map_try_init(map, key, zero);
}

/* key's entry in an LRU map for a refusal of its source, admitted as
 * sketch.bpf.h says: NULL while the source is held back (a flood's random
 * sources stop there, with no hash-map lookup). *n is how many refusals to
 * count in it: those held back with this one when the source passes the
 * threshold now, else 1. held is the map's SRC_HELD_BACK or AGG_HELD_BACK,
 * and the credited counter follows it. */
static __always_inline void *lookup_or_sketch(void *map, const void *key, const void *zero, __u32 use,
					      const struct sketch_source *src, __u32 cpu, __u32 held, __u32 *n)
{
	struct sketch *sk;
	bool crossing;
	void *v;

	*n = 1;
	if (!sketch_holding(use)) {
		v = bpf_map_lookup_elem(map, key);
		if (v)
			return v;
		if (sketch_take_room(use))
			return map_try_init(map, key, zero);
	}
	sk = sketch_of(use, cpu);
	if (!sk)
		return NULL;
	*n = sketch_count(sk, src, &crossing);
	if (!*n) {
		counter_inc(&source_stats, held);
		return NULL;
	}
	v = bpf_map_lookup_elem(map, key);
	if (v && !crossing) {
		*n = 1; /* held, past the threshold: counted exactly */
		return v;
	}
	if (!v)
		v = map_try_init(map, key, zero);
	if (v && *n > 1)
		counter_add(&source_stats, held + 1, *n - 1);
	return v;
}

/* Counts the event under its source (account_netns counts it in its
 * namespace first). Reads, besides what account_netns reads, the tuple's
 * family and source address (zeroed or written for every event), its CPU
 * and, for a streamed drop, its time. Refusals reach the sources map
 * through the sketch; the other events, one per admitted flow rather than
 * per packet of a flood, are admitted by sampling. */
static __always_inline void account_source(const struct ct_event *e)
{
	struct src_stats zero = {}, *st;
	struct src_key k = {};
	__u32 type = e->type, n = 1, bits;

	if (!e->tuple.family || type >= CT_EV_MAX)
		return; /* no source: user space counts it as "other" */
	bounded_index(type);
	k.netns_id = e->netns_id;
	k.family = e->tuple.family;
	__builtin_memcpy(k.addr, e->tuple.saddr, sizeof(k.addr));
	bits = k.family == NFPROTO_IPV4 ? cfg.group_v4_bits : cfg.group_v6_bits;
	/* Whole addresses (the default) need no mask: a flood's every event. */
	if (bits < (k.family == NFPROTO_IPV4 ? 32 : 128))
		mask_prefix(k.addr, bits);
	if (is_drop(type)) {
		struct sketch_source src = {.netns_id = k.netns_id, .addr = k.addr, .type = type, .family = k.family};

		st = lookup_or_sketch(&sources, &k, &zero, SKETCH_SOURCES, &src, e->cpu, SRC_HELD_BACK, &n);
	} else {
		st = lookup_or_admit(&sources, &k, &zero, admit_shift, SRC_MISSED);
	}
	if (!st)
		return;
	__sync_fetch_and_add(&st->events[type], n);
	st->inum = e->netns;
	if (is_drop(type)) {
		st->last_drop_ns = e->ts_boot_ns ?: tick_time();
		st->last_drop_type = type;
	}
}

#endif
