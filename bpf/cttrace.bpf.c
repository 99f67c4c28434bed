//go:build ignore
// SPDX-License-Identifier: GPL-2.0 OR Apache-2.0
/*
 * cttrace's kernel side. Each conntrack decision is handled by one static
 * function; the fentry, kprobe and tracepoint sections at the end are thin
 * wrappers that only fetch arguments and call it. User space loads the
 * wrappers of one backend and deletes the others from the spec before load.
 *
 * Scratch state links a function's entry to its exit (and to the functions
 * it calls). The confirmation runs under local_bh_disable(), so its entry and
 * exit happen on one CPU and per-CPU state is enough. The allocation does
 * not: on the output path it runs in process context under rcu_read_lock
 * alone, which a preemptible kernel (CONFIG_PREEMPT, PREEMPT_LAZY: Debian's
 * 7.x) can preempt and migrate, so its state is kept per task where the
 * kernel allows it (alloc_scratch).
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include "core_fixes.bpf.h"
#include "cttrace.h"

char LICENSE[] SEC("license") = "GPL";

#define MAX_ERRNO 4095
#define IS_ERR_VALUE(x) ((unsigned long)(void *)(x) >= (unsigned long)-MAX_ERRNO)

#define NF_DROP 0
#define NF_ACCEPT 1
#define NFPROTO_IPV4 2
#define NFPROTO_IPV6 10
#define IPS_CONFIRMED (1U << 3)
#define IPS_DYING (1U << 9)

/* Event types streamed through the ring buffer (bit 1 << type); the others
 * are only counted. Set by user space before load. */
volatile const __u32 stream_mask = 0xffffffff;

/* Whether events are also counted per source in the sources map (for
 * top-sources), and the prefix lengths sources are grouped by. */
volatile const __u32 aggregate_sources = 0;
volatile const __u32 group_v4_bits = 32;
volatile const __u32 group_v6_bits = 128;

/* nf_conntrack_max as user space last read it: the limit is a global that
 * has no BTF-visible symbol, and non-init namespaces only see it read-only. */
__u32 ct_max;

/* Sized by user space before load (--ring-size); a power of two pages. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 22);
} events SEC(".maps");

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
	__u32 netns;
	__u8 family;
	__u8 _pad[3];
	__u8 addr[16];
};

struct src_stats {
	__u64 events[CT_EV_MAX];
	__u64 last_drop_ns;
	__u32 last_drop_type;
	__u32 _pad;
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
	__u64 events[CT_EV_MAX];
	__u64 details[CT_DETAIL_MAX]; /* each detail belongs to one type */
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_PERCPU_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, struct netns_stats);
} netns_totals SEC(".maps");

/*
 * In front of netns_totals, for the namespaces that refuse a flood or
 * create a NAT gateway's flows: a direct-mapped per-CPU array indexed by the
 * low bits of the namespace's inode number (the kernel hands these out in
 * sequence, so a host's namespaces spread over the slots). A slot belongs
 * to the first namespace that counts in it on this CPU, for the life of the
 * probe; a namespace whose slot is taken counts in netns_totals. An array
 * slot is an address computation where the hash costs a hash, a bucket
 * walk and LRU bookkeeping: about 100 ns of every event (bench's
 * BenchmarkBPFHelper). Counters only grow and each event counts in one
 * place, so user space adds both maps without double counting.
 */
#define NETNS_SLOTS 256

struct netns_slot {
	__u32 netns;
	__u32 pad;
	__u64 events[CT_EV_MAX];
	__u64 details[CT_DETAIL_MAX];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, NETNS_SLOTS);
	__type(key, __u32);
	__type(value, struct netns_slot);
} netns_slots SEC(".maps");

/*
 * Sample and hold (Estan and Varghese, "New directions in traffic
 * measurement and accounting", SIGCOMM 2002) for the sources map. A spoofed
 * flood brings a new source with nearly every packet; admitting each one
 * into the LRU map would push a real heavy source out within a fraction of
 * a second of its last packet, before user space reads it, and each insert
 * is the most expensive thing the hot path does. So, once user space sees
 * the map churning, a source not in the map is admitted with probability
 * 2^-admit_shift; once in, every one of its events is counted exactly. A
 * source with m events is then missed with probability (1 - 2^-shift)^m,
 * and loses on average 2^shift - 1 events before it is admitted: these are
 * counted in the namespace totals, so in "other". Written by user space at
 * run time (0: admit every source, exact).
 */
__u32 admit_shift;

/* Admission counters of the sources and aggregated maps: events for a key
 * the map did not hold (missed), and keys admitted. */
enum src_stat { SRC_MISSED, SRC_ADMITTED, AGG_MISSED, AGG_ADMITTED, SRC_STAT_MAX };

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SRC_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} source_stats SEC(".maps");

/*
 * The bounded stream. A flood refuses hundreds of thousands of packets a
 * second: as lines that is useless to a person and harmful to a SIEM, and
 * each record costs the refusing CPU a ring buffer write. So each CPU
 * streams at most stream_per_cpu_per_s events one by one per second; past
 * that, events are counted per (netns, source, reason) in the aggregated
 * map, which user space turns into aggregate records every second, and in
 * aggregated_total, so that what the map could not hold is still counted:
 * every event is streamed, aggregated or counted as lost. 0: no limit.
 */
volatile const __u32 stream_per_cpu_per_s = 0;

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
	__u32 netns;
	__u8 family;
	__u8 type;
	__u8 _pad[2];
	__u8 addr[16];
};

struct agg_value {
	__u64 count;
	__u64 last_ns;
};

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

/* Sample and hold for the aggregated map, as admit_shift for sources. */
__u32 agg_admit_shift;

/* Only events of these namespaces are streamed or aggregated (--netns), so
 * that other namespaces' events neither use the budget nor cross the ring.
 * They are still counted in produced and netns_totals. */
volatile const __u32 netns_filter = 0;

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

/* The ring buffer wakes its reader only once this many bytes wait, or when
 * user space polls (every 100 ms): a wakeup per event costs the producing
 * CPU an irq_work and the reader a context switch, per refused packet. Set
 * by user space to an eighth of the ring. */
volatile const __u32 wakeup_bytes = 1 << 19;

/* The allocation in progress on this CPU, and whether early_drop() ran
 * inside it. Kernel pointers are kept as integers so that bpf2go can
 * generate the Go type of the map value. */
struct alloc_scratch {
	__u64 net;
	__u64 zone;
	__u64 orig;
	__u8 early_drop_called;
	__u8 in_early_drop;
	__u8 early_drop_evicted;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct alloc_scratch);
} alloc_state SEC(".maps");

/* The same, kept with the task (task-local storage: one per task while it
 * lives, freed with it, so bounded by the number of tasks that ever
 * allocated an entry). User space sets alloc_state_per_task when the kernel
 * lets tracing programs use it (5.12, commit a10787e6d58c, "bpf: Enable task
 * local storage for tracing programs"), and otherwise turns this map into a
 * one-slot array that is never used. */
struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct alloc_scratch);
} alloc_task_state SEC(".maps");

volatile const __u32 alloc_state_per_task = 0;

/* The confirmation in progress on this CPU. */
enum clash_outcome { CLASH_NONE, CLASH_FAILED, CLASH_RESOLVED };

struct confirm_scratch {
	__u64 skb;
	__u64 ct;
	__u8 dying_at_entry;
	__u8 clash;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct confirm_scratch);
} confirm_state SEC(".maps");

/* Tasks (kworkers) inside gc_worker: the gc may sleep between buckets and
 * move to another CPU, so it is tracked by task, not by CPU. Bounded: one
 * gc work item runs per netns at a time. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u64);
	__type(value, __u8);
} gc_tasks SEC(".maps");

/* Keep the ABI types in the object's BTF so bpf2go emits their Go types. */
const struct ct_event *unused_ct_event __attribute__((unused));
const enum ct_event_type *unused_ct_event_type __attribute__((unused));
const enum ct_detail *unused_ct_detail __attribute__((unused));
const enum ct_confidence *unused_ct_confidence __attribute__((unused));
const enum src_stat *unused_src_stat __attribute__((unused));
const struct netns_slot *unused_netns_slot __attribute__((unused));

static __always_inline void count_event(__u32 type)
{
	__u64 *n = bpf_map_lookup_elem(&produced, &type);

	if (n)
		(*n)++;
}

static __always_inline void count_lost(void)
{
	__u32 zero = 0;
	__u64 *n = bpf_map_lookup_elem(&lost, &zero);

	if (n)
		(*n)++;
}

/* Whether user space wants the type's events one by one. */
static __always_inline bool streamed(__u32 type)
{
	return stream_mask & (1U << type);
}

static __always_inline bool is_drop(__u32 type)
{
	return type == CT_EV_TABLE_FULL || type == CT_EV_ALLOC_FAILED || type == CT_EV_INSERT_FAILED;
}

/* Counts the event, and says whether anyone wants its details: user space
 * one by one (stream_mask) or per source (aggregate_sources). */
static __always_inline bool event_begin(struct ct_event *e, __u32 type, __u8 confidence)
{
	count_event(type);
	if (!streamed(type)) {
		if (!aggregate_sources)
			return false;
		/* Only counted per source: the tuple is all that is read. */
		__builtin_memset(&e->tuple, 0, sizeof(e->tuple));
		/* Its time is kept only as a source's last drop: a busy NAT
		 * gateway's inserts and deletes save the clock read (~40 ns). */
		e->ts_boot_ns = is_drop(type) ? bpf_ktime_get_boot_ns() : 0;
	} else {
		__builtin_memset(e, 0, sizeof(*e));
		e->ts_boot_ns = bpf_ktime_get_boot_ns();
	}
	e->type = type;
	e->cpu = bpf_get_smp_processor_id();
	e->confidence = confidence;
	e->max = ct_max;
	return true;
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

static __always_inline void account_netns(const struct ct_event *e)
{
	struct netns_stats *st;
	__u32 netns = e->netns, type = e->type, detail = e->detail;
	struct netns_slot *slot;
	__u32 i = netns % NETNS_SLOTS;

	if (type >= CT_EV_MAX)
		return;
	/* Refusals (table_full, the flood's path) carry no detail: one compare. */
	if (detail >= CT_DETAIL_MAX)
		detail = CT_DETAIL_NONE;
	slot = bpf_map_lookup_elem(&netns_slots, &i);
	if (slot && netns) {
		if (!slot->netns)
			slot->netns = netns; /* this CPU's copy: no other writer */
		if (slot->netns == netns) {
			slot->events[type]++;
			if (detail)
				slot->details[detail]++;
			return;
		}
	}
	st = bpf_map_lookup_elem(&netns_totals, &netns);
	if (!st) {
		struct netns_stats zero = {};

		bpf_map_update_elem(&netns_totals, &netns, &zero, BPF_NOEXIST);
		st = bpf_map_lookup_elem(&netns_totals, &netns);
		if (!st)
			return;
	}
	st->events[type]++; /* this CPU's copy: no other writer */
	if (detail)
		st->details[detail]++;
}

static __always_inline void count_source_stat(__u32 which)
{
	__u64 *n = bpf_map_lookup_elem(&source_stats, &which);

	if (n)
		(*n)++;
}

/* Whether a key a map does not hold gets an entry now (sample and hold);
 * missed is the map's SRC_MISSED or AGG_MISSED, and the admitted counter
 * follows it. */
static __always_inline bool admit(__u32 shift, __u32 missed)
{
	count_source_stat(missed);
	if (shift && (bpf_get_prandom_u32() & ((1U << (shift & 31)) - 1)))
		return false;
	count_source_stat(missed + 1);
	return true;
}

/* key's entry in an LRU map, or a new zeroed one if the key is admitted
 * now; NULL when it is not (its event then counts only in the totals). */
static __always_inline void *lookup_or_admit(void *map, const void *key, const void *zero, __u32 shift,
					     __u32 missed)
{
	void *v = bpf_map_lookup_elem(map, key);

	if (v || !admit(shift, missed))
		return v;
	bpf_map_update_elem(map, key, zero, BPF_NOEXIST);
	return bpf_map_lookup_elem(map, key);
}

static __always_inline void account_source(const struct ct_event *e)
{
	struct src_stats zero = {}, *st;
	struct src_key k = {};
	__u32 type = e->type;

	account_netns(e);
	if (!e->tuple.family || type >= CT_EV_MAX)
		return; /* no source: user space counts it as "other" */
	k.netns = e->netns;
	k.family = e->tuple.family;
	__builtin_memcpy(k.addr, e->tuple.saddr, sizeof(k.addr));
	mask_prefix(k.addr, k.family == NFPROTO_IPV4 ? group_v4_bits : group_v6_bits);
	st = lookup_or_admit(&sources, &k, &zero, admit_shift, SRC_MISSED);
	if (!st)
		return;
	__sync_fetch_and_add(&st->events[type], 1);
	if (is_drop(type)) {
		st->last_drop_ns = e->ts_boot_ns;
		st->last_drop_type = type;
	}
}

static __always_inline __u64 ringbuf_wakeup(void)
{
	if (bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) >= wakeup_bytes)
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

	if (!stream_per_cpu_per_s)
		return false;
	b = bpf_map_lookup_elem(&stream_budget, &zero);
	if (!b)
		return false;
	if (now - b->window_ns >= 1000000000ULL) {
		b->window_ns = now;
		b->used = 0;
	}
	if (b->used >= stream_per_cpu_per_s)
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

	if (!e->tuple.family)
		return;
	k.netns = e->netns;
	k.family = e->tuple.family;
	k.type = e->type;
	__builtin_memcpy(k.addr, e->tuple.saddr, sizeof(k.addr));
	v = lookup_or_admit(&aggregated, &k, &zero, agg_admit_shift, AGG_MISSED);
	if (!v)
		return;
	__sync_fetch_and_add(&v->count, 1);
	v->last_ns = e->ts_boot_ns;
}

/* Counts an event past the budget: per source first, then in the total
 * for its type. In that order, and read by user space in the other (the
 * totals, then the map), an event the totals show is always in the map
 * read after them, or never in it: none is counted both in "other" and,
 * later, in its source's aggregate. */
static __always_inline void aggregate_event(const struct ct_event *e)
{
	__u32 type = e->type;
	__u64 *n;

	aggregate_by_source(e);
	n = bpf_map_lookup_elem(&aggregated_total, &type);
	if (n)
		(*n)++;
}

/* Hands a complete event to whoever wants it. The kernel side never waits:
 * when the ring buffer is full the event is counted as lost. */
static __always_inline void event_publish(const struct ct_event *e)
{
	__u32 netns = e->netns;

	if (aggregate_sources)
		account_source(e);
	if (!streamed(e->type))
		return;
	if (netns_filter && !netns_selected(netns))
		return;
	if (over_stream_budget(e->ts_boot_ns)) {
		aggregate_event(e);
		return;
	}
	if (bpf_ringbuf_output(&events, (void *)e, sizeof(*e), ringbuf_wakeup()))
		count_lost();
}

/* direct: ct is BTF-typed (see KREAD). */
static __always_inline void tuple_from_ct(struct ct_tuple *t, const struct nf_conntrack_tuple *ct, const bool direct)
{
	if (direct) {
		__builtin_memcpy(&t->saddr, &ct->src.u3.all, sizeof(t->saddr));
		__builtin_memcpy(&t->daddr, &ct->dst.u3.all, sizeof(t->daddr));
		t->sport = ct->src.u.all;
		t->dport = ct->dst.u.all;
	} else {
		BPF_CORE_READ_INTO(&t->saddr, ct, src.u3.all);
		BPF_CORE_READ_INTO(&t->daddr, ct, dst.u3.all);
		BPF_CORE_READ_INTO(&t->sport, ct, src.u.all);
		BPF_CORE_READ_INTO(&t->dport, ct, dst.u.all);
	}
	t->family = KREAD(direct, ct, src.l3num);
	t->proto = KREAD(direct, ct, dst.protonum);
}

/* What counting per source needs of a tuple: its family and source. An
 * event only counted (top-sources: every insert and delete of a busy NAT
 * gateway) reads no more. */
static __always_inline void source_from_ct(struct ct_tuple *t, const struct nf_conntrack_tuple *ct, const bool direct)
{
	if (direct)
		__builtin_memcpy(&t->saddr, &ct->src.u3.all, sizeof(t->saddr));
	else
		BPF_CORE_READ_INTO(&t->saddr, ct, src.u3.all);
	t->family = KREAD(direct, ct, src.l3num);
}

/* The tuple an event carries: whole when it is streamed, the source only
 * when it is just counted. */
static __always_inline void event_tuple(const struct ct_event *e, struct ct_tuple *t,
					const struct nf_conntrack_tuple *ct, const bool direct)
{
	if (streamed(e->type))
		tuple_from_ct(t, ct, direct);
	else
		source_from_ct(t, ct, direct);
}

/* Fills what an event says about an existing entry: its original tuple,
 * namespace, zone, status, timeout and TCP state; only the source and
 * namespace when the event is not streamed. */
static __always_inline void describe_conn(struct ct_event *e, const struct nf_conn *ct, const bool direct)
{
	event_tuple(e, &e->tuple, &ct->tuplehash[IP_CT_DIR_ORIGINAL].tuple, direct);
	e->netns = KREAD(direct, ct, ct_net.net, ns.inum);
	if (!streamed(e->type))
		return;
	e->zone = conn_zone(ct, direct);
	e->status = KREAD(direct, ct, status);
	e->timeout_left = conn_timeout_left(ct, direct);
	if (e->tuple.proto == IPPROTO_TCP)
		e->proto_state = KREAD(direct, ct, proto.tcp.state);
}

/*
 * The allocation's state. Per task where possible: measured on Debian's
 * 7.2 (PREEMPT_LAZY), about one refusal in a hundred was preempted between
 * __nf_conntrack_alloc()'s entry and exit and finished on another CPU, where
 * per-CPU state belonged to another allocation. NULL when the kernel refuses
 * (storage busy in a nested program, or no memory for a new task's slot).
 */
static __always_inline struct alloc_scratch *alloc_scratch(bool create)
{
	__u32 zero = 0;

	if (alloc_state_per_task)
		return bpf_task_storage_get(&alloc_task_state, bpf_get_current_task_btf(), 0,
					    create ? BPF_LOCAL_STORAGE_GET_F_CREATE : 0);
	return bpf_map_lookup_elem(&alloc_state, &zero);
}

static __always_inline struct confirm_scratch *confirm_scratch(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&confirm_state, &zero);
}

/* ---- the allocation decision: __nf_conntrack_alloc() and early_drop() ---- */

static __always_inline void alloc_begin(struct net *net, const struct nf_conntrack_zone *zone,
					const struct nf_conntrack_tuple *orig)
{
	struct alloc_scratch *s = alloc_scratch(true);

	if (!s)
		return;
	s->net = (__u64)net;
	s->zone = (__u64)zone;
	s->orig = (__u64)orig;
	s->early_drop_called = 0;
	s->in_early_drop = 0;
	s->early_drop_evicted = 0;
}

static __always_inline void early_drop_begin(void)
{
	struct alloc_scratch *s = alloc_scratch(false);

	if (!s)
		return;
	s->early_drop_called = 1;
	s->in_early_drop = 1;
}

static __always_inline void early_drop_done(int evicted)
{
	struct alloc_scratch *s = alloc_scratch(false);

	if (!s)
		return;
	s->in_early_drop = 0;
	s->early_drop_evicted = evicted > 0;
}

/*
 * __nf_conntrack_alloc() returns ERR_PTR(-ENOMEM) both when the table is full
 * and when the slab allocation fails. early_drop() is called from nowhere
 * else and only when the count went past nf_conntrack_max, so "early_drop ran
 * and evicted nothing" is exactly the table-full case.
 */
static __always_inline void alloc_done(const void *ret, struct net *net,
				       const struct nf_conntrack_zone *zone,
				       const struct nf_conntrack_tuple *orig, const bool direct)
{
	struct ct_event ev, *e = &ev;
	struct alloc_scratch *s;
	bool full;

	/* Every new flow passes here: a success costs one comparison. */
	if (!IS_ERR_VALUE(ret))
		return;
	/* Without its state (alloc_scratch) the refusal is still counted: as
	 * table full, as nearly every refusal is, and marked inferred. */
	s = alloc_scratch(false);
	full = !s || (s->early_drop_called && !s->early_drop_evicted);
	if (!event_begin(e, full ? CT_EV_TABLE_FULL : CT_EV_ALLOC_FAILED,
			 s ? CT_CONF_EXACT : CT_CONF_INFERRED))
		return;
	e->netns = KREAD(direct, net, ns.inum);
	if (zone)
		e->zone = KREAD(direct, zone, id);
	event_tuple(e, &e->tuple, orig, direct);
	/* Refused only when the count would pass the max: the table is at it. */
	if (full)
		e->count = e->max;
	event_publish(e);
}

/* ---- removal: nf_ct_delete(), the one path every entry leaves by ---- */

static __always_inline void gc_begin(void)
{
	__u64 task = bpf_get_current_pid_tgid();
	__u8 one = 1;

	bpf_map_update_elem(&gc_tasks, &task, &one, BPF_ANY);
}

static __always_inline void gc_done(void)
{
	__u64 task = bpf_get_current_pid_tgid();

	bpf_map_delete_elem(&gc_tasks, &task);
}

static __always_inline bool in_gc(void)
{
	__u64 task = bpf_get_current_pid_tgid();

	return bpf_map_lookup_elem(&gc_tasks, &task) != NULL;
}

/*
 * An entry whose IPS_DYING bit is already set is on its way out by another
 * path; nf_ct_delete() returns false for it and nothing changes. Entries
 * that are not expired and are deleted from inside early_drop() are the
 * evictions the kernel counts as early_drop; expired ones reaped there are
 * not counted by the kernel and are reported as expiries. gc_worker kills
 * unexpired, unassured entries only under pressure (count >= 95% of max).
 */
static __always_inline void conn_deleting(const struct nf_conn *ct, __u32 portid, const bool direct)
{
	struct alloc_scratch *s = alloc_scratch(false);
	__u32 status = KREAD(direct, ct, status);
	bool expired = conn_timeout_left(ct, direct) <= 0;
	__u32 type = CT_EV_DELETE;
	__u8 detail = CT_DETAIL_OTHER;
	bool for_alloc = false;
	struct ct_event ev, *e = &ev;

	if (!(status & IPS_CONFIRMED) || deleted_by_another_path(status))
		return;
	if (expired) {
		detail = CT_DETAIL_EXPIRED;
	} else if (s && s->in_early_drop) {
		type = CT_EV_EARLY_DROP;
		detail = CT_DETAIL_EVICT_ALLOC;
		for_alloc = true;
	} else if (in_gc()) {
		/* Not CT_EV_EARLY_DROP: gc_worker's kills are not in the kernel's
		 * early_drop counter (net/netfilter/nf_conntrack_core.c counts
		 * early_drop only in early_drop()), and summaries must compare
		 * with conntrack -S. */
		type = CT_EV_GC_EVICT;
		detail = CT_DETAIL_EVICT_GC;
	} else if (portid) {
		detail = CT_DETAIL_NETLINK;
	}
	if (!event_begin(e, type, CT_CONF_EXACT))
		return;
	describe_conn(e, ct, direct);
	e->detail = detail;
	if (for_alloc && s) {
		const struct nf_conntrack_tuple *orig = (const struct nf_conntrack_tuple *)s->orig;

		tuple_from_ct(&e->trigger, orig, false);
		e->count = e->max;
	}
	event_publish(e);
}

/* ---- confirmation: __nf_conntrack_confirm() and nf_ct_resolve_clash() ---- */

static __always_inline void confirm_begin(const struct sk_buff *skb, const bool direct)
{
	struct confirm_scratch *s = confirm_scratch();
	struct nf_conn *ct = conn_of_nfct(skb_nfct_raw(skb, direct));

	if (!s)
		return;
	s->skb = (__u64)skb;
	s->ct = (__u64)ct;
	s->dying_at_entry = ct && (BPF_CORE_READ(ct, status) & IPS_DYING);
	s->clash = CLASH_NONE;
}

/* nf_ct_resolve_clash() returns NF_ACCEPT when the packet could be moved to
 * the entry already in the table (only UDP, UDPlite and GRE may), NF_DROP
 * when it could not. */
static __always_inline void clash_done(int verdict)
{
	struct confirm_scratch *s = confirm_scratch();
	const struct nf_conn *ct;
	struct ct_event ev, *e = &ev;

	if (!s || !s->ct)
		return;
	s->clash = verdict == NF_ACCEPT ? CLASH_RESOLVED : CLASH_FAILED;
	if (s->clash != CLASH_RESOLVED)
		return;
	if (!event_begin(e, CT_EV_CLASH_RESOLVED, CT_CONF_EXACT))
		return;
	ct = (const struct nf_conn *)s->ct;
	describe_conn(e, ct, false);
	event_publish(e);
}

static __always_inline __u8 insert_failure_detail(const struct confirm_scratch *s)
{
	if (s->dying_at_entry)
		return CT_DETAIL_DYING;
	if (s->clash == CLASH_FAILED)
		return CT_DETAIL_CLASH;
	/* What remains is the chain limit (and, rarely, an extension that a
	 * module unload invalidated, which the kernel does not tell apart). */
	return kernel_limits_chains() ? CT_DETAIL_CHAIN_TOO_LONG : CT_DETAIL_NONE;
}

static __always_inline void confirm_done(const struct sk_buff *skb, int verdict, const bool direct)
{
	struct confirm_scratch *s = confirm_scratch();
	const struct nf_conn *ct;
	struct ct_event ev, *e = &ev;
	__u32 type;

	if (!s || !s->ct)
		return;
	ct = (const struct nf_conn *)s->ct;
	if (verdict == NF_DROP) {
		type = CT_EV_INSERT_FAILED;
	} else if (conn_of_nfct(skb_nfct_raw(skb, direct)) == ct && (BPF_CORE_READ(ct, status) & IPS_CONFIRMED)) {
		type = CT_EV_INSERT;
	} else {
		/* Merged into the entry already there: counted as a resolved clash. */
		s->ct = 0;
		return;
	}
	if (event_begin(e, type, CT_CONF_EXACT)) {
		describe_conn(e, ct, false);
		if (type == CT_EV_INSERT_FAILED)
			e->detail = insert_failure_detail(s);
		event_publish(e);
	}
	s->ct = 0;
}

/* ---- the tracepoint fallback: kfree_skb with the netfilter drop reason ---- */

/* tp_btf's skb is BTF-typed: the skb's own fields are plain loads (KREAD);
 * only the packet's bytes need bpf_probe_read_kernel(). */
static __always_inline __u32 skb_netns(const struct sk_buff *skb)
{
	struct net_device *dev = skb->dev;
	struct sock *sk;

	if (dev)
		return dev->nd_net.net->ns.inum;
	sk = skb->sk; /* an RCU pointer: the verifier wants it checked */
	if (sk)
		return sk->__sk_common.skc_net.net->ns.inum;
	return 0;
}

static __always_inline int tuple_from_skb(struct ct_tuple *t, const struct sk_buff *skb, bool ports)
{
	unsigned char *head = skb->head;
	__u16 nh = skb->network_header;
	struct iphdr ip;
	__u32 l4off;

	/* The IPv4 header's size is read at once: its version says whether it
	 * is one (one helper call for IPv4), or the start of an IPv6 header. */
	if (bpf_probe_read_kernel(&ip, sizeof(ip), head + nh))
		return -1;
	if (ip.version == 4) {
		t->family = NFPROTO_IPV4;
		t->proto = ip.protocol;
		__builtin_memcpy(t->saddr, &ip.saddr, 4);
		__builtin_memcpy(t->daddr, &ip.daddr, 4);
		l4off = nh + ip.ihl * 4;
	} else if (ip.version == 6) {
		struct ipv6hdr ip6;

		if (bpf_probe_read_kernel(&ip6, sizeof(ip6), head + nh))
			return -1;
		t->family = NFPROTO_IPV6;
		/* Extension headers are not walked: the tuple then has no ports. */
		t->proto = ip6.nexthdr;
		__builtin_memcpy(t->saddr, &ip6.saddr, 16);
		__builtin_memcpy(t->daddr, &ip6.daddr, 16);
		l4off = nh + sizeof(ip6);
	} else {
		return -1;
	}
	if (!ports)
		return 0;
	if (t->proto == IPPROTO_TCP || t->proto == IPPROTO_UDP || t->proto == IPPROTO_UDPLITE ||
	    t->proto == IPPROTO_SCTP || t->proto == IPPROTO_DCCP) {
		__be16 ports[2];

		if (!bpf_probe_read_kernel(ports, sizeof(ports), head + l4off)) {
			t->sport = ports[0];
			t->dport = ports[1];
		}
	}
	return 0;
}

/*
 * Without kprobes or trampolines a drop is only visible when nf_hook_slow()
 * frees the skb with SKB_DROP_REASON_NETFILTER_DROP, and the cause must be
 * inferred from the entry the skb carries:
 * - none: conntrack refused to create one, which under load is the table
 *   being full (a slab failure, a protocol handler's drop, or a rule in a
 *   hook before conntrack, like the raw table, look the same);
 * - an unconfirmed one: confirmation refused it (a rule after conntrack that
 *   drops new flows looks the same);
 * - a confirmed one: a rule dropped a packet of a known flow; not ours.
 */
static __always_inline void skb_freed(const struct sk_buff *skb, __u32 reason)
{
	__u32 nf_drop = netfilter_drop_reason();
	struct nf_conn *ct;
	struct ct_event ev, *e = &ev;
	__u32 status;

	__u64 nfct;

	if (!nf_drop || reason != nf_drop)
		return;
	nfct = skb_nfct_raw(skb, true);
	if (nfct == IP_CT_UNTRACKED)
		return;
	ct = conn_of_nfct(nfct);
	if (!ct) {
		if (!event_begin(e, CT_EV_TABLE_FULL, CT_CONF_INFERRED))
			return;
		e->netns = skb_netns(skb);
		/* A packet that cannot be parsed still counts: published with no
		 * tuple rather than lost between the counters. Count stays 0: a
		 * rule before conntrack drops the same way in a table far from full. */
		tuple_from_skb(&e->tuple, skb, streamed(CT_EV_TABLE_FULL));
		event_publish(e);
		return;
	}
	status = BPF_CORE_READ(ct, status);
	if (status & IPS_CONFIRMED)
		return;
	if (!event_begin(e, CT_EV_INSERT_FAILED, CT_CONF_INFERRED))
		return;
	describe_conn(e, ct, false);
	e->detail = status & IPS_DYING ? CT_DETAIL_DYING
		    : kernel_limits_chains() ? CT_DETAIL_CHAIN_TOO_LONG : CT_DETAIL_NONE;
	event_publish(e);
}

/* ---- backend: fentry/fexit ---- */

SEC("fentry/__nf_conntrack_alloc")
int BPF_PROG(fentry_ct_alloc, struct net *net, const struct nf_conntrack_zone *zone,
	     const struct nf_conntrack_tuple *orig)
{
	alloc_begin(net, zone, orig);
	return 0;
}

SEC("fexit/__nf_conntrack_alloc")
int BPF_PROG(fexit_ct_alloc, struct net *net, const struct nf_conntrack_zone *zone,
	     const struct nf_conntrack_tuple *orig, const struct nf_conntrack_tuple *repl, gfp_t gfp,
	     u32 hash, struct nf_conn *ret)
{
	/* fexit has the arguments: only early_drop's outcome comes from the
	 * scratch, which an allocation nested on this CPU could overwrite. */
	alloc_done(ret, net, zone, orig, true);
	return 0;
}

SEC("fentry/early_drop")
int BPF_PROG(fentry_early_drop)
{
	early_drop_begin();
	return 0;
}

SEC("fexit/early_drop")
int BPF_PROG(fexit_early_drop, struct net *net, unsigned int hash, int ret)
{
	early_drop_done(ret);
	return 0;
}

SEC("fentry/nf_ct_delete")
int BPF_PROG(fentry_ct_delete, struct nf_conn *ct, u32 portid)
{
	conn_deleting(ct, portid, true);
	return 0;
}

SEC("fentry/gc_worker")
int BPF_PROG(fentry_gc_worker)
{
	gc_begin();
	return 0;
}

SEC("fexit/gc_worker")
int BPF_PROG(fexit_gc_worker)
{
	gc_done();
	return 0;
}

SEC("fentry/__nf_conntrack_confirm")
int BPF_PROG(fentry_ct_confirm, struct sk_buff *skb)
{
	confirm_begin(skb, true);
	return 0;
}

SEC("fexit/__nf_conntrack_confirm")
int BPF_PROG(fexit_ct_confirm, struct sk_buff *skb, int ret)
{
	confirm_done(skb, ret, true);
	return 0;
}

SEC("fexit/nf_ct_resolve_clash")
int BPF_PROG(fexit_resolve_clash, struct sk_buff *skb, struct nf_conntrack_tuple_hash *h,
	     u32 repl_idx, int ret)
{
	clash_done(ret);
	return 0;
}

/* ---- backend: kprobe/kretprobe ---- */

SEC("kprobe/__nf_conntrack_alloc")
int BPF_KPROBE(kprobe_ct_alloc, struct net *net, const struct nf_conntrack_zone *zone,
	       const struct nf_conntrack_tuple *orig)
{
	alloc_begin(net, zone, orig);
	return 0;
}

SEC("kretprobe/__nf_conntrack_alloc")
int BPF_KRETPROBE(kretprobe_ct_alloc, struct nf_conn *ret)
{
	struct alloc_scratch *s = alloc_scratch(false);

	/*
	 * kretprobes have no arguments: they come from the entry's scratch.
	 * Copied to locals first: inside BPF_CORE_READ's
	 * __builtin_preserve_access_index, s->net would itself become a CO-RE
	 * relocation against a struct the kernel has never heard of.
	 */
	if (s) {
		struct net *net = (struct net *)s->net;
		const struct nf_conntrack_zone *zone = (const struct nf_conntrack_zone *)s->zone;
		const struct nf_conntrack_tuple *orig = (const struct nf_conntrack_tuple *)s->orig;

		alloc_done(ret, net, zone, orig, false);
	} else if (IS_ERR_VALUE(ret)) {
		/* A refusal whose arguments were not kept: counted as lost, not dropped unseen. */
		count_lost();
	}
	return 0;
}

SEC("kprobe/early_drop")
int BPF_KPROBE(kprobe_early_drop)
{
	early_drop_begin();
	return 0;
}

SEC("kretprobe/early_drop")
int BPF_KRETPROBE(kretprobe_early_drop, int ret)
{
	early_drop_done(ret);
	return 0;
}

SEC("kprobe/nf_ct_delete")
int BPF_KPROBE(kprobe_ct_delete, struct nf_conn *ct, u32 portid)
{
	conn_deleting(ct, portid, false);
	return 0;
}

SEC("kprobe/gc_worker")
int BPF_KPROBE(kprobe_gc_worker)
{
	gc_begin();
	return 0;
}

SEC("kretprobe/gc_worker")
int BPF_KRETPROBE(kretprobe_gc_worker)
{
	gc_done();
	return 0;
}

SEC("kprobe/__nf_conntrack_confirm")
int BPF_KPROBE(kprobe_ct_confirm, struct sk_buff *skb)
{
	confirm_begin(skb, false);
	return 0;
}

SEC("kretprobe/__nf_conntrack_confirm")
int BPF_KRETPROBE(kretprobe_ct_confirm, int ret)
{
	struct confirm_scratch *s = confirm_scratch();

	/* kretprobes have no arguments: the skb comes from the entry's scratch. */
	if (s)
		confirm_done((const struct sk_buff *)s->skb, ret, false);
	return 0;
}

SEC("kretprobe/nf_ct_resolve_clash")
int BPF_KRETPROBE(kretprobe_resolve_clash, int ret)
{
	clash_done(ret);
	return 0;
}

/* ---- backend: tracepoint ---- */

SEC("tp_btf/kfree_skb")
int BPF_PROG(tp_btf_kfree_skb, struct sk_buff *skb, void *location, enum skb_drop_reason reason)
{
	skb_freed(skb, reason);
	return 0;
}
