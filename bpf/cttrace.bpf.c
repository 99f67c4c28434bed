//go:build ignore
// SPDX-License-Identifier: GPL-2.0 OR Apache-2.0
/*
 * cttrace's kernel side. Each conntrack decision is handled by one static
 * function; the fentry, kprobe and tracepoint sections at the end are thin
 * wrappers that only fetch arguments and call it. User space loads the
 * wrappers of one backend and deletes the others from the spec before load.
 *
 * One translation unit, this file: the scratch state, the decisions and the
 * wrappers are here, and the headers hold what the decisions share, one
 * concern each (bpf/README.md lists them): the configuration (config.bpf.h),
 * map helpers (maps.bpf.h), how kernel memory is read (kread.bpf.h),
 * kernel-version drift (core_fixes.bpf.h), reading connections and packets
 * (conn.bpf.h), the accounting (accounting.bpf.h) and the stream
 * (stream.bpf.h).
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
#include "cttrace.h"
#include "config.bpf.h"
#include "maps.bpf.h"
#include "core_fixes.bpf.h"
#include "conn.bpf.h"
#include "accounting.bpf.h"
#include "stream.bpf.h"

char LICENSE[] SEC("license") = "GPL";

#define MAX_ERRNO 4095
#define IS_ERR_VALUE(x) ((unsigned long)(void *)(x) >= (unsigned long)-MAX_ERRNO)

#define NF_DROP 0
#define NF_ACCEPT 1
#define IPS_CONFIRMED (1U << 3)
#define IPS_DYING (1U << 9)

/* The allocation in progress on this CPU, and whether early_drop() ran
 * inside it. Kernel pointers are kept as integers so that bpf2go can
 * generate the Go type of the map value. */
struct alloc_scratch {
	__u64 net;
	__u64 zone;
	__u64 orig;
	__u64 early_drop_net; /* for early_drop's kretprobe, which has no arguments */
	__u8 early_drop_called;
	__u8 in_early_drop;
	__u8 early_drop_evicted;
	__u8 refusal_counted; /* by early_drop's exit: enum refusal_mark */
	__u8 source_pending;  /* its source, for the packet's kfree_skb */
	__u32 pending_inum;
	__u64 pending_netns_id;
};

/* What early_drop's exit did with a refusal (alloc_scratch.refusal_counted):
 * counted and published whole, without its flow (no per-flow hook runs);
 * or counted, its flow to be published by the allocation's exit. */
enum refusal_mark { REFUSAL_NOT_COUNTED, REFUSAL_PUBLISHED, REFUSAL_COUNTED };

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct alloc_scratch);
} alloc_state SEC(".maps");

/* The same, kept with the task (task-local storage: one per task while it
 * lives, freed with it, so bounded by the number of tasks that ever
 * allocated an entry). User space sets cfg.alloc_state_per_task when the
 * kernel lets tracing programs use it (5.12, commit a10787e6d58c, "bpf:
 * Enable task local storage for tracing programs"), and otherwise turns this
 * map into a one-slot array that is never used. */
struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct alloc_scratch);
} alloc_task_state SEC(".maps");

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

	if (cfg.alloc_state_per_task)
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

/* Whether the per-flow hooks (the allocation's entry and exit, the
 * confirmation's, nf_ct_delete) are attached: user space sets it after
 * attaching them and clears it before detaching them (pkg/probe/hooks.go).
 * Without them only early_drop() is hooked, which the kernel calls only
 * when a namespace's count passed nf_conntrack_max: a healthy table runs
 * no program at all, and early_drop's exit counts each refusal itself,
 * exact but without its source. With them too, early_drop's exit counts
 * the refusal, and marks it so that the allocation's exit only adds its
 * flow (early_drop_done says why). */
__u32 per_flow_hooks;

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
	s->refusal_counted = REFUSAL_NOT_COUNTED;
	s->source_pending = 0;
}

/* The scratch is created here too: without the per-flow hooks nothing else
 * creates it, and early_drop's kretprobe needs the namespace kept. */
static __always_inline void early_drop_begin(struct net *net)
{
	struct alloc_scratch *s = alloc_scratch(true);

	if (!s)
		return;
	s->early_drop_net = (__u64)net;
	s->early_drop_called = 1;
	s->in_early_drop = 1;
	/* Marks of an earlier refusal are stale now: an allocation that began
	 * just before its hooks attached (so alloc_begin did not clear them)
	 * would otherwise take this refusal for one counted here and skip it. */
	s->refusal_counted = REFUSAL_NOT_COUNTED;
	s->source_pending = 0;
}

/* A refusal counted where early_drop() returns: exact, in its namespace,
 * without its source (no per-flow hook kept the tuple). Where the kernel
 * frees the refused packet with a drop reason (5.17+), the source comes
 * from it (refused_packet_freed). */
static __always_inline void refused_without_source(struct alloc_scratch *s, struct net *net, const bool direct)
{
	struct ct_event ev, *e = &ev;

	if (!event_begin(e, CT_EV_TABLE_FULL, CT_CONF_EXACT))
		return;
	event_netns(e, net, direct);
	e->count = e->max;
	event_publish(e);
	if (s && cfg.count_sources) {
		s->source_pending = 1;
		s->pending_inum = e->netns;
		s->pending_netns_id = e->netns_id;
	}
}

/*
 * The refused packet, freed: after early_drop() returned 0 the error goes
 * back through nf_conntrack_in(), and nf_hook_slow() frees the packet with
 * SKB_DROP_REASON_NETFILTER_DROP, on the same task and CPU, carrying no
 * entry. Its source is credited to the refusal early_drop's exit counted
 * (and only to it: the mark is taken once), in the per-source map only:
 * the refusal is in its namespace's totals already. Every other freed
 * packet costs this two comparisons.
 */
static __always_inline void refused_packet_freed(const struct sk_buff *skb, __u32 reason)
{
	struct ct_event ev = {}, *e = &ev;
	struct alloc_scratch *s;
	__u32 nf_drop;

	/* Not per_flow_hooks: a refusal counted just before the flag was set
	 * still waits for its source here, and only such a refusal leaves a
	 * mark (refused_without_source). */
	nf_drop = netfilter_drop_reason();
	if (!nf_drop || reason != nf_drop)
		return;
	s = alloc_scratch(false);
	if (!s || !s->source_pending || conn_of_nfct(skb_nfct_raw(skb, true)))
		return;
	s->source_pending = 0;
	e->type = CT_EV_TABLE_FULL;
	e->netns = s->pending_inum;
	e->netns_id = s->pending_netns_id;
	e->cpu = bpf_get_smp_processor_id();
	tuple_from_skb(&e->tuple, skb, false);
	account_source(e);
}

/* A refusal counted where the kernel decides it, in the totals and its
 * namespace's, for the allocation's exit to publish with its flow. */
static __always_inline void refusal_counted_here(struct net *net, const bool direct)
{
	struct ct_event ev, *e = &ev;

	count_event(CT_EV_TABLE_FULL);
	if (!cfg.count_namespaces)
		return;
	e->type = CT_EV_TABLE_FULL;
	e->detail = CT_DETAIL_NONE;
	event_netns(e, net, direct);
	account_netns(e);
}

/* early_drop() returns whether it evicted anything (1 or 0, however many
 * it evicted): 0 refuses the allocation, and the count goes back down (the
 * table is full). */
static __always_inline void early_drop_done(struct net *net, int evicted, const bool direct)
{
	struct alloc_scratch *s = alloc_scratch(false);

	if (s) {
		s->in_early_drop = 0;
		s->early_drop_evicted = evicted > 0;
	}
	if (evicted > 0)
		return;
	if (!per_flow_hooks) {
		if (s)
			s->refusal_counted = REFUSAL_PUBLISHED;
		refused_without_source(s, net, direct);
		return;
	}
	/*
	 * With the per-flow hooks, the refusal is still counted here, and the
	 * allocation's exit only adds its flow: an allocation that entered
	 * before a kretprobe was registered never runs it (kretprobes are
	 * armed at the function's entry), and one in flight when it is
	 * unregistered skips it. Counted at the exit, TestSwitchingWhileRefusing
	 * lost one refusal in 50,000 to 140,000 across 8 switches (Debian's 7.2
	 * and arm64 6.12, kprobe backend). Without its state the allocation's
	 * exit counts it, inferred, as it does every refusal then.
	 */
	if (!s)
		return;
	s->refusal_counted = REFUSAL_COUNTED;
	refusal_counted_here(net, direct);
}

/*
 * __nf_conntrack_alloc() returns ERR_PTR(-ENOMEM) both when the table is full
 * and when the slab allocation fails. early_drop() is called from nowhere
 * else and only when the count went past nf_conntrack_max, so "early_drop ran
 * and evicted nothing" is exactly the table-full case.
 */
static __always_inline void alloc_done(const void *ret, struct net *net, const struct nf_conntrack_zone *zone,
				       const struct nf_conntrack_tuple *orig, const bool direct)
{
	struct ct_event ev, *e = &ev;
	struct alloc_scratch *s;
	__u8 counted = REFUSAL_NOT_COUNTED;
	__u32 type;
	bool full;

	/* Every new flow passes here: a success costs one comparison. */
	if (!IS_ERR_VALUE(ret))
		return;
	/* Without its state (alloc_scratch) the refusal is still counted: as
	 * table full, as nearly every refusal is, and marked inferred. */
	s = alloc_scratch(false);
	if (s) {
		counted = s->refusal_counted;
		s->refusal_counted = REFUSAL_NOT_COUNTED;
	}
	if (counted == REFUSAL_PUBLISHED)
		return; /* by early_drop's exit, around a switch of the hooks */
	full = counted == REFUSAL_COUNTED || !s || (s->early_drop_called && !s->early_drop_evicted);
	type = full ? CT_EV_TABLE_FULL : CT_EV_ALLOC_FAILED;
	if (counted != REFUSAL_COUNTED)
		count_event(type);
	if (!event_prepare(e, type, s ? CT_CONF_EXACT : CT_CONF_INFERRED))
		return;
	event_netns(e, net, direct);
	if (zone)
		e->zone = KREAD(direct, zone, id);
	event_tuple(e, &e->tuple, orig, direct);
	/* Refused only when the count would pass the max: the table is at it. */
	if (full)
		e->count = e->max;
	if (counted == REFUSAL_COUNTED)
		event_deliver(e); /* in its namespace's totals already */
	else
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
	/* The new flow the eviction made room for: only a streamed event
	 * carries it. */
	if (for_alloc && s && streamed(type)) {
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
	ct = (const struct nf_conn *)s->ct;
	if (s->clash == CLASH_RESOLVED) {
		if (!event_begin(e, CT_EV_CLASH_RESOLVED, CT_CONF_EXACT))
			return;
		describe_conn(e, ct, false);
		event_publish(e);
		return;
	}
	/* Without the confirmation's hooks, the failed clash is the insert
	 * failure they would have reported. */
	if (per_flow_hooks)
		return;
	s->ct = 0;
	if (!event_begin(e, CT_EV_INSERT_FAILED, CT_CONF_EXACT))
		return;
	describe_conn(e, ct, false);
	e->detail = CT_DETAIL_CLASH;
	event_publish(e);
}

/* The clash path kept without the confirmation's hooks: the entry the
 * packet brought, which clash_done reports on. */
static __always_inline void clash_begin(const struct sk_buff *skb, const bool direct)
{
	if (!per_flow_hooks)
		confirm_begin(skb, direct);
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
		/* Set after the reads: computed first, its branches would double
		 * the paths the verifier walks through them. */
		if (type == CT_EV_INSERT_FAILED)
			e->detail = insert_failure_detail(s);
		event_publish(e);
	}
	s->ct = 0;
}

/* ---- the tracepoint fallback: kfree_skb with the netfilter drop reason ---- */

/* Why an unconfirmed entry's packet was dropped, as far as the entry tells. */
static __always_inline __u8 inferred_insert_failure_detail(__u32 status)
{
	if (status & IPS_DYING)
		return CT_DETAIL_DYING;
	return kernel_limits_chains() ? CT_DETAIL_CHAIN_TOO_LONG : CT_DETAIL_NONE;
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
	struct net *net;
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
		net = skb_net(skb);
		if (net)
			event_netns(e, net, true);
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
	e->detail = inferred_insert_failure_detail(status);
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
	     const struct nf_conntrack_tuple *orig, const struct nf_conntrack_tuple *repl, gfp_t gfp, u32 hash,
	     struct nf_conn *ret)
{
	/* fexit has the arguments: only early_drop's outcome comes from the
	 * scratch, which an allocation nested on this CPU could overwrite. */
	alloc_done(ret, net, zone, orig, true);
	return 0;
}

SEC("fentry/early_drop")
int BPF_PROG(fentry_early_drop, struct net *net)
{
	early_drop_begin(net);
	return 0;
}

SEC("fexit/early_drop")
int BPF_PROG(fexit_early_drop, struct net *net, unsigned int hash, int ret)
{
	early_drop_done(net, ret, true);
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

SEC("fentry/nf_ct_resolve_clash")
int BPF_PROG(fentry_resolve_clash, struct sk_buff *skb)
{
	clash_begin(skb, true);
	return 0;
}

SEC("fexit/nf_ct_resolve_clash")
int BPF_PROG(fexit_resolve_clash, struct sk_buff *skb, struct nf_conntrack_tuple_hash *h, u32 repl_idx, int ret)
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
int BPF_KPROBE(kprobe_early_drop, struct net *net)
{
	early_drop_begin(net);
	return 0;
}

SEC("kretprobe/early_drop")
int BPF_KRETPROBE(kretprobe_early_drop, int ret)
{
	struct alloc_scratch *s = alloc_scratch(false);

	/* kretprobes have no arguments: the namespace comes from the entry. */
	if (s)
		early_drop_done((struct net *)s->early_drop_net, ret, false);
	else if (ret == 0 && !per_flow_hooks)
		count_lost(); /* a refusal that could not be placed */
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

SEC("kprobe/nf_ct_resolve_clash")
int BPF_KPROBE(kprobe_resolve_clash, struct sk_buff *skb)
{
	clash_begin(skb, false);
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

/* Not the tracepoint backend's: the fentry and kprobe backends' source of
 * the refusals counted without the per-flow hooks, where the kernel has
 * drop reasons. pkg/probe keeps it by name, and attaches it only while the
 * per-flow hooks are detached: a flood's refused packets do not run it. */
SEC("tp_btf/kfree_skb")
int BPF_PROG(tp_btf_kfree_skb_source, struct sk_buff *skb, void *location, enum skb_drop_reason reason)
{
	refused_packet_freed(skb, reason);
	return 0;
}
