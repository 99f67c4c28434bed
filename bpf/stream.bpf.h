/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/*
 * An event's way out. event_begin() counts it and readies what its readers
 * will read; event_publish() hands the complete event to them: the
 * accounting (accounting.bpf.h), and, for the types user space streams, the
 * ring buffer, within a per-CPU budget past which events are aggregated per
 * source, and only for the namespaces selected.
 */
#ifndef STREAM_BPF_H
#define STREAM_BPF_H

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "accounting.bpf.h"
#include "config.bpf.h"
#include "cttrace.h"
#include "maps.bpf.h"

/* Sized by user space before load (--ring-size); a power of two pages. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 22);
} events SEC(".maps");

/*
 * The bounded stream. A flood refuses hundreds of thousands of packets a
 * second: as lines that is useless to a person and harmful to a SIEM, and
 * each record costs the refusing CPU a ring buffer write. So each CPU
 * streams at most cfg.stream_per_cpu_per_s events one by one per second;
 * past that, events are counted per (netns, source, reason) in the
 * aggregated map, which user space turns into aggregate records every
 * second, and in aggregated_total, so that what the map could not hold is
 * still counted: every event is streamed, aggregated or counted as lost.
 */
struct stream_budget {
	__u64 window_ns;
	__u32 used;
	__u32 _pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct stream_budget);
} stream_budget SEC(".maps");

struct agg_key {
	__u64 netns_id; /* the namespace's identity (net_id) */
	__u8 family;
	__u8 type;
	__u8 _pad[6];
	__u8 addr[16];
};

struct agg_value {
	__u64 count;
	__u64 last_ns;
	__u32 inum; /* the namespace's inode number, the name it is shown by */
	__u32 _pad;
};

/* Admitted like the sources map (accounting.bpf.h): refusals through the
 * sketch (sketch.bpf.h), other events by sample and hold with
 * agg_admit_shift. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct agg_key);
	__type(value, struct agg_value);
} aggregated SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, CT_EV_MAX);
	__type(key, __u32);
	__type(value, __u64);
} aggregated_total SEC(".maps");

/* Only events of these namespaces are streamed or aggregated (--netns,
 * cfg.netns_filter), so that other namespaces' events neither use the
 * budget nor cross the ring. They are still counted in produced and
 * netns_totals. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, __u8);
} stream_netns SEC(".maps");

/* The last namespace each CPU checked against the filter, and the answer:
 * a flood refuses packets of one namespace, so the hash lookup is paid once
 * per change of namespace, not per event. The filter does not change after
 * attach, so a cached answer stays right. */
struct netns_verdict {
	__u32 netns;
	__u32 selected; /* 0: not checked yet, 1: selected, 2: not */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct netns_verdict);
} netns_verdict SEC(".maps");

/*
 * Readies an event, and says whether anyone wants its details: user space
 * one by one (cfg.stream_mask) or per namespace and source
 * (cfg.count_namespaces, cfg.count_sources).
 *
 * A streamed event is zeroed whole. One only counted is not (the flood's
 * path runs hundreds of thousands of times a second): what the accounting
 * reads (type, detail, namespace, the tuple's family and source, the time
 * of a drop) is written here, and the caller then writes the namespace and
 * the source, and the detail where one applies; nothing else of it is read.
 * The detail, which the accounting counts events under, was once left to
 * whatever the stack held: table_full floods counted per source then showed
 * evictions, by the gc and for new flows, that the kernel never made.
 */
static __always_inline bool event_prepare(struct ct_event *e, __u32 type, __u8 confidence)
{
	if (streamed(type)) {
		__builtin_memset(e, 0, sizeof(*e));
		/* Precise only for the events written one by one (event_deliver):
		 * the others, past the budget, are counted per source a second. */
		e->ts_boot_ns = tick_time();
	} else if (cfg.count_namespaces) {
		/* Counted per source: the tuple's family and source address. */
		__builtin_memset(&e->tuple, 0, sizeof(e->tuple));
		e->netns = 0;
		e->netns_id = 0;
		/* Its time is kept only as a source's last drop, read once the
		 * source is counted (account_source): a busy NAT gateway's
		 * inserts and deletes, and a flood's held-back sources, save
		 * the clock read (~40 ns). */
		e->ts_boot_ns = 0;
	} else {
		return false;
	}
	e->type = type;
	e->detail = CT_DETAIL_NONE;
	e->cpu = bpf_get_smp_processor_id();
	e->confidence = confidence;
	e->max = ct_max;
	return true;
}

/* An event counted in the totals, then readied for its readers
 * (event_prepare). */
static __always_inline bool event_begin(struct ct_event *e, __u32 type, __u8 confidence)
{
	count_event(type);
	return event_prepare(e, type, confidence);
}

static __always_inline __u64 ringbuf_wakeup(void)
{
	if (bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) >= cfg.wakeup_bytes)
		return BPF_RB_FORCE_WAKEUP;
	return BPF_RB_NO_WAKEUP;
}

static __always_inline bool netns_selected(__u32 netns)
{
	struct netns_verdict *v;
	__u32 zero = 0;

	v = bpf_map_lookup_elem(&netns_verdict, &zero);
	if (!v)
		return bpf_map_lookup_elem(&stream_netns, &netns) != NULL;
	if (v->selected == 0 || v->netns != netns) {
		v->netns = netns;
		v->selected = bpf_map_lookup_elem(&stream_netns, &netns) ? 1 : 2;
	}
	return v->selected == 1;
}

/* Whether this CPU has streamed its share of events this second. */
static __always_inline bool over_stream_budget(__u64 now)
{
	struct stream_budget *b;
	__u32 zero = 0;

	if (!cfg.stream_per_cpu_per_s)
		return false;
	b = bpf_map_lookup_elem(&stream_budget, &zero);
	if (!b)
		return false;
	if (now - b->window_ns >= 1000000000ULL) {
		b->window_ns = now;
		b->used = 0;
	}
	if (b->used >= cfg.stream_per_cpu_per_s)
		return true;
	b->used++;
	return false;
}

/* Counts an event past the budget per source, when the map holds, or
 * admits, its source. */
static __always_inline void aggregate_by_source(const struct ct_event *e)
{
	struct agg_value zero = {}, *v;
	struct agg_key k = {};
	__u32 n = 1;

	if (!e->tuple.family)
		return;
	k.netns_id = e->netns_id;
	k.family = e->tuple.family;
	k.type = e->type;
	__builtin_memcpy(k.addr, e->tuple.saddr, sizeof(k.addr));
	if (is_drop(k.type)) {
		struct sketch_source src = {.netns_id = k.netns_id, .addr = k.addr, .type = k.type, .family = k.family};

		v = lookup_or_sketch(&aggregated, &k, &zero, SKETCH_AGGREGATED, &src, e->cpu, AGG_HELD_BACK, &n);
	} else {
		v = lookup_or_admit(&aggregated, &k, &zero, agg_admit_shift, AGG_MISSED);
	}
	if (!v)
		return;
	__sync_fetch_and_add(&v->count, n);
	v->last_ns = e->ts_boot_ns;
	v->inum = e->netns;
}

/* Counts an event past the budget: per source first, then in the total
 * for its type. In that order, and read by user space in the other (the
 * totals, then the map), an event the totals show is always in the map
 * read after them, or never in it: none is counted both in "other" and,
 * later, in its source's aggregate. */
static __always_inline void aggregate_event(const struct ct_event *e)
{
	aggregate_by_source(e);
	counter_inc(&aggregated_total, e->type);
}

/* Hands a complete event to its readers, its namespace's totals aside:
 * its source's count, and the stream. The kernel side never waits: when
 * the ring buffer is full the event is counted as lost. */
static __always_inline void event_deliver(struct ct_event *e)
{
	__u32 netns = e->netns;

	if (cfg.count_namespaces && cfg.count_sources)
		account_source(e);
	if (!streamed(e->type))
		return;
	if (cfg.netns_filter && !netns_selected(netns))
		return;
	if (over_stream_budget(e->ts_boot_ns)) {
		aggregate_event(e);
		return;
	}
	e->ts_boot_ns = bpf_ktime_get_boot_ns();
	if (bpf_ringbuf_output(&events, (void *)e, sizeof(*e), ringbuf_wakeup()))
		count_lost();
}

/* Counts a complete event in its namespace and hands it to its readers. */
static __always_inline void event_publish(struct ct_event *e)
{
	if (cfg.count_namespaces)
		account_netns(e);
	event_deliver(e);
}

#endif
