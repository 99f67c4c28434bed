/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/*
 * The event record shared by the kernel side and user space. This C
 * definition is the single source of truth: bpf2go generates the Go type
 * from it (-type ct_event), so field order and padding are explicit here.
 */
#ifndef CTTRACE_H
#define CTTRACE_H

enum ct_event_type {
	CT_EV_TABLE_FULL = 1,	/* allocation refused: table at max, nothing evictable */
	CT_EV_ALLOC_FAILED = 2,	/* allocation failed for lack of memory */
	CT_EV_CONNTRACK_DROP = 3, /* tracepoint backend: dropped by conntrack, cause inferred */
};

enum ct_confidence {
	CT_CONF_EXACT = 0,	/* seen at the decision point */
	CT_CONF_INFERRED = 1,	/* deduced from where and how the skb was freed */
};

struct ct_tuple {
	__u8 saddr[16];
	__u8 daddr[16];
	__u16 sport;		/* network byte order, as the kernel keeps it */
	__u16 dport;
	__u8 family;		/* NFPROTO_IPV4 (2) or NFPROTO_IPV6 (10) */
	__u8 proto;
	__u8 _pad[2];
};

struct ct_event {
	__u64 ts_boot_ns;	/* bpf_ktime_get_boot_ns(): comparable across suspend */
	__u32 type;		/* enum ct_event_type */
	__u32 cpu;
	__u32 netns;		/* network namespace inode number */
	__u16 zone;
	__u8 confidence;	/* enum ct_confidence */
	__u8 _pad;
	struct ct_tuple tuple;
};

#endif
