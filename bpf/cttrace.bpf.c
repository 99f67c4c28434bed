//go:build ignore
// SPDX-License-Identifier: GPL-2.0 OR Apache-2.0
/*
 * cttrace's kernel side. Each conntrack decision is handled by one static
 * function below; the fentry, kprobe and tracepoint sections at the end are
 * thin wrappers that only fetch arguments and call it. User space loads the
 * wrappers of one backend and deletes the others from the spec before load.
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

#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define NFPROTO_IPV4 2
#define NFPROTO_IPV6 10

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

/*
 * The state of the allocation in progress on this CPU. Conntrack runs in
 * netfilter hooks under rcu_read_lock with bottom halves off on the receive
 * path, so entry, the nested early_drop() and exit happen on one CPU.
 */
struct alloc_scratch {
	/* Kernel pointers kept as integers so bpf2go can generate the type. */
	__u64 net;
	__u64 zone;
	__u64 orig;
	__u8 early_drop_called;
	__u8 early_drop_evicted;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct alloc_scratch);
} alloc_state SEC(".maps");


/* Keeps struct ct_event in the object's BTF so bpf2go can emit its Go type. */
const struct ct_event *unused_ct_event __attribute__((unused));

static __always_inline void count_lost(void)
{
	__u32 zero = 0;
	__u64 *n = bpf_map_lookup_elem(&lost, &zero);

	if (n)
		(*n)++;
}

static __always_inline struct ct_event *event_reserve(__u32 type, __u8 confidence)
{
	struct ct_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);

	if (!e) {
		count_lost();
		return NULL;
	}
	__builtin_memset(e, 0, sizeof(*e));
	e->ts_boot_ns = bpf_ktime_get_boot_ns();
	e->type = type;
	e->cpu = bpf_get_smp_processor_id();
	e->confidence = confidence;
	return e;
}

static __always_inline void tuple_from_ct(struct ct_tuple *t, const struct nf_conntrack_tuple *ct)
{
	BPF_CORE_READ_INTO(&t->saddr, ct, src.u3.all);
	BPF_CORE_READ_INTO(&t->daddr, ct, dst.u3.all);
	BPF_CORE_READ_INTO(&t->sport, ct, src.u.all);
	BPF_CORE_READ_INTO(&t->dport, ct, dst.u.all);
	t->family = BPF_CORE_READ(ct, src.l3num);
	t->proto = BPF_CORE_READ(ct, dst.protonum);
}

/* ---- the allocation decision: __nf_conntrack_alloc() and early_drop() ---- */

static __always_inline void alloc_begin(struct net *net, const struct nf_conntrack_zone *zone,
					const struct nf_conntrack_tuple *orig)
{
	__u32 zero = 0;
	struct alloc_scratch *s = bpf_map_lookup_elem(&alloc_state, &zero);

	if (!s)
		return;
	s->net = (__u64)net;
	s->zone = (__u64)zone;
	s->orig = (__u64)orig;
	s->early_drop_called = 0;
	s->early_drop_evicted = 0;
}

static __always_inline void early_drop_done(int evicted)
{
	__u32 zero = 0;
	struct alloc_scratch *s = bpf_map_lookup_elem(&alloc_state, &zero);

	if (!s)
		return;
	s->early_drop_called = 1;
	s->early_drop_evicted = evicted > 0;
}

/*
 * __nf_conntrack_alloc() returns ERR_PTR(-ENOMEM) both when the table is full
 * and when the slab allocation fails. early_drop() is called from nowhere
 * else and only when the count went past nf_conntrack_max, so "early_drop ran
 * and evicted nothing" is exactly the table-full case.
 */
static __always_inline void alloc_done(const void *ret)
{
	__u32 zero = 0;
	struct alloc_scratch *s = bpf_map_lookup_elem(&alloc_state, &zero);
	const struct nf_conntrack_tuple *orig;
	const struct nf_conntrack_zone *zone;
	struct ct_event *e;
	struct net *net;
	__u32 type;

	if (!s || !IS_ERR_VALUE(ret))
		return;
	type = s->early_drop_called && !s->early_drop_evicted ? CT_EV_TABLE_FULL : CT_EV_ALLOC_FAILED;
	e = event_reserve(type, CT_CONF_EXACT);
	if (!e)
		return;
	/*
	 * Copy the pointers out of the scratch before BPF_CORE_READ: inside its
	 * __builtin_preserve_access_index the s->net access would itself become
	 * a CO-RE relocation against a struct the kernel has never heard of.
	 */
	net = (struct net *)s->net;
	zone = (const struct nf_conntrack_zone *)s->zone;
	orig = (const struct nf_conntrack_tuple *)s->orig;
	e->netns = BPF_CORE_READ(net, ns.inum);
	if (zone)
		e->zone = BPF_CORE_READ(zone, id);
	tuple_from_ct(&e->tuple, orig);
	bpf_ringbuf_submit(e, 0);
}

/* ---- the tracepoint fallback: kfree_skb with the netfilter drop reason ---- */

static __always_inline __u32 skb_netns(const struct sk_buff *skb)
{
	struct net_device *dev = BPF_CORE_READ(skb, dev);

	if (dev)
		return BPF_CORE_READ(dev, nd_net.net, ns.inum);
	return BPF_CORE_READ(skb, sk, __sk_common.skc_net.net, ns.inum);
}

static __always_inline int tuple_from_skb(struct ct_tuple *t, const struct sk_buff *skb)
{
	unsigned char *head = BPF_CORE_READ(skb, head);
	__u16 nh = BPF_CORE_READ(skb, network_header);
	__u16 proto = bpf_ntohs(BPF_CORE_READ(skb, protocol));
	__u32 l4off;
	__u8 ver;

	if (bpf_probe_read_kernel(&ver, 1, head + nh))
		return -1;
	ver >>= 4;
	if (ver == 4 || (proto == ETH_P_IP && ver == 4)) {
		struct iphdr ip;

		if (bpf_probe_read_kernel(&ip, sizeof(ip), head + nh))
			return -1;
		t->family = NFPROTO_IPV4;
		t->proto = ip.protocol;
		__builtin_memcpy(t->saddr, &ip.saddr, 4);
		__builtin_memcpy(t->daddr, &ip.daddr, 4);
		l4off = nh + ip.ihl * 4;
	} else if (ver == 6) {
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
 * Without kprobes or trampolines the drop is only visible when nf_hook_slow()
 * frees the skb with SKB_DROP_REASON_NETFILTER_DROP. A packet that conntrack
 * itself refused carries no entry; one dropped by a rule after conntrack
 * does. A rule in a hook before conntrack (raw table, priority -300) looks
 * the same as conntrack's own drop, hence "inferred".
 */
static __always_inline void skb_freed(const struct sk_buff *skb, __u32 reason)
{
	__u32 nf_drop = netfilter_drop_reason();
	struct ct_event *e;

	if (!nf_drop || reason != nf_drop || skb_nfct(skb))
		return;
	e = event_reserve(CT_EV_CONNTRACK_DROP, CT_CONF_INFERRED);
	if (!e)
		return;
	e->netns = skb_netns(skb);
	if (tuple_from_skb(&e->tuple, skb)) {
		bpf_ringbuf_discard(e, 0);
		return;
	}
	bpf_ringbuf_submit(e, 0);
}

/* ---- backend: fentry/fexit ---- */

SEC("fentry/__nf_conntrack_alloc")
int BPF_PROG(fentry_ct_alloc, struct net *net, const struct nf_conntrack_zone *zone,
	     const struct nf_conntrack_tuple *orig, const struct nf_conntrack_tuple *repl, gfp_t gfp,
	     u32 hash)
{
	alloc_begin(net, zone, orig);
	return 0;
}

SEC("fexit/early_drop")
int BPF_PROG(fexit_early_drop, struct net *net, unsigned int hash, int ret)
{
	early_drop_done(ret);
	return 0;
}

SEC("fexit/__nf_conntrack_alloc")
int BPF_PROG(fexit_ct_alloc, struct net *net, const struct nf_conntrack_zone *zone,
	     const struct nf_conntrack_tuple *orig, const struct nf_conntrack_tuple *repl, gfp_t gfp,
	     u32 hash, struct nf_conn *ret)
{
	alloc_done(ret);
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

SEC("kretprobe/early_drop")
int BPF_KRETPROBE(kretprobe_early_drop, int ret)
{
	early_drop_done(ret);
	return 0;
}

SEC("kretprobe/__nf_conntrack_alloc")
int BPF_KRETPROBE(kretprobe_ct_alloc, struct nf_conn *ret)
{
	alloc_done(ret);
	return 0;
}

/* ---- backend: tracepoint ---- */

SEC("tp_btf/kfree_skb")
int BPF_PROG(tp_btf_kfree_skb, struct sk_buff *skb, void *location, enum skb_drop_reason reason)
{
	skb_freed(skb, reason);
	return 0;
}
