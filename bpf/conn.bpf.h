/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/*
 * Reading a connection: the tuple and state of a conntrack entry, and, for
 * the tracepoint backend, of the packet a refused flow was carried by. What
 * is read depends on who wants the event: a streamed event is described
 * whole, one that is only counted gets its namespace and source alone.
 */
#ifndef CONN_BPF_H
#define CONN_BPF_H

#include "vmlinux.h"
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_helpers.h>
#include "config.bpf.h"
#include "core_fixes.bpf.h"
#include "cttrace.h"
#include "kread.bpf.h"

#define NFPROTO_IPV4 2
#define NFPROTO_IPV6 10

#define NFCT_INFOMASK 7ULL

/* The entry pointer skb->_nfct carries (core_fixes.bpf.h, skb_nfct_raw). It
 * has no BTF type any more once masked: read it with direct = false. */
static __always_inline struct nf_conn *conn_of_nfct(__u64 nfct)
{
	return (struct nf_conn *)(nfct & ~NFCT_INFOMASK);
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

/*
 * A network namespace's identity. Its inode number (ns.inum) is what
 * operators know it by, but the kernel hands a freed one to the next
 * namespace at once, so on a host where containers come and go one inode
 * names many namespaces in turn, and counts keyed by it would merge the
 * dead into the living. The netns cookie (core_fixes.bpf.h, net_cookie) is
 * never reused; user space says whether to key by it (cfg.netns_cookie: it
 * must read the same cookie of each namespace it lists, SO_NETNS_COOKIE,
 * 5.14+). Otherwise the inode number stands in, marked with the top bit
 * (NETNS_ID_INODE) so that it is never taken for a cookie.
 */
#define NETNS_ID_INODE (1ULL << 63)

static __always_inline __u64 net_id(const struct net *net, const bool direct)
{
	__u64 cookie = cfg.netns_cookie ? net_cookie(net, direct) : 0;

	if (cookie)
		return cookie;
	return NETNS_ID_INODE | KREAD(direct, net, ns.inum);
}

/* The event's namespace: its identity (net_id) and its inode number, the
 * name it is shown by. */
static __always_inline void event_netns(struct ct_event *e, const struct net *net, const bool direct)
{
	e->netns = KREAD(direct, net, ns.inum);
	e->netns_id = net_id(net, direct);
}

/* Fills what an event says about an existing entry: its original tuple,
 * namespace, zone, status, timeout and TCP state; only the source and
 * namespace when the event is not streamed. */
static __always_inline void describe_conn(struct ct_event *e, const struct nf_conn *ct, const bool direct)
{
	event_tuple(e, &e->tuple, &ct->tuplehash[IP_CT_DIR_ORIGINAL].tuple, direct);
	event_netns(e, KREAD(direct, ct, ct_net.net), direct);
	if (!streamed(e->type))
		return;
	e->zone = conn_zone(ct, direct);
	e->status = KREAD(direct, ct, status);
	e->timeout_left = conn_timeout_left(ct, direct);
	if (e->tuple.proto == IPPROTO_TCP)
		e->proto_state = KREAD(direct, ct, proto.tcp.state);
}

/* The namespace of a packet, through its device or its socket; NULL when
 * it has neither. tp_btf's skb is BTF-typed: the skb's own fields are plain
 * loads (KREAD); only the packet's bytes need bpf_probe_read_kernel(). */
static __always_inline struct net *skb_net(const struct sk_buff *skb)
{
	struct net_device *dev = skb->dev;
	struct sock *sk;

	if (dev)
		return dev->nd_net.net;
	sk = skb->sk; /* an RCU pointer: the verifier wants it checked */
	if (sk)
		return sk->__sk_common.skc_net.net;
	return NULL;
}

/* Fills t from the packet's IP header, and its ports when asked (a streamed
 * event). -1 when no header could be read: t's family is then not written,
 * and a tuple whose family is 0 has no source. */
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

#endif
