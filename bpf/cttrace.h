/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/*
 * The event record shared by the kernel side and user space. This C
 * definition is the single source of truth: bpf2go generates the Go types
 * from it (-type ct_event ...), so field order and padding are explicit.
 */
#ifndef CTTRACE_H
#define CTTRACE_H

enum ct_event_type {
	CT_EV_TABLE_FULL = 1,	  /* allocation refused: table at max, nothing evictable */
	CT_EV_ALLOC_FAILED = 2,	  /* allocation failed for lack of memory */
	CT_EV_EARLY_DROP = 3,	  /* an entry was evicted (tuple = victim) */
	CT_EV_INSERT_FAILED = 4,  /* confirmation refused (detail says why) */
	CT_EV_INSERT = 5,	  /* a new entry was confirmed into the table */
	CT_EV_DELETE = 6,	  /* an entry left the table other than by eviction */
	CT_EV_CLASH_RESOLVED = 7, /* a confirmation clash was resolved, nothing dropped */
	CT_EV_GC_EVICT = 8,	  /* gc_worker evicted an entry under pressure (not counted as early_drop) */
	CT_EV_MAX = 9,
};

enum ct_detail {
	CT_DETAIL_NONE = 0,
	CT_DETAIL_EVICT_ALLOC = 1,    /* early_drop: evicted by early_drop() for a new flow */
	CT_DETAIL_EVICT_GC = 2,	      /* gc_evict: evicted by gc_worker under pressure */
	CT_DETAIL_CLASH = 3,	      /* insert_failed: clash with an entry, not resolvable */
	CT_DETAIL_CHAIN_TOO_LONG = 4, /* insert_failed: hash chain over the limit (5.15+) */
	CT_DETAIL_DYING = 5,	      /* insert_failed: the entry was already dying */
	CT_DETAIL_EXPIRED = 6,	      /* delete: timed out */
	CT_DETAIL_NETLINK = 7,	      /* delete: by ctnetlink (conntrack -D, flush) */
	CT_DETAIL_OTHER = 8,	      /* delete: any other path (TCP RST, module unload...) */
	CT_DETAIL_MAX = 9,
};

enum ct_confidence {
	CT_CONF_EXACT = 0,    /* seen at the decision point */
	CT_CONF_INFERRED = 1, /* deduced from where and how the skb was freed */
};

struct ct_tuple {
	__u8 saddr[16];
	__u8 daddr[16];
	__u16 sport; /* network byte order, as the kernel keeps it */
	__u16 dport;
	__u8 family; /* NFPROTO_IPV4 (2) or NFPROTO_IPV6 (10); 0 = no tuple */
	__u8 proto;
	__u8 _pad[2];
};

struct ct_event {
	__u64 ts_boot_ns;   /* bpf_ktime_get_boot_ns() */
	__u64 netns_id;	    /* the namespace's identity, never reused (core_fixes.bpf.h, net_id) */
	__u32 type;	    /* enum ct_event_type */
	__u32 cpu;	    /* the CPU it happened on */
	__u32 netns;	    /* network namespace inode number: its name, which the kernel reuses */
	__u32 count;	    /* entries in the netns's table, when known (else 0) */
	__u32 max;	    /* nf_conntrack_max, as last told by user space */
	__u32 status;	    /* the entry's IPS_* bits (the victim's for early_drop) */
	__s32 timeout_left; /* jiffies until the entry would have expired */
	__u16 zone;	    /* conntrack zone id (0 without CONFIG_NF_CONNTRACK_ZONES) */
	__u8 confidence;    /* enum ct_confidence */
	__u8 detail;	    /* enum ct_detail */
	__u8 proto_state;   /* enum tcp_conntrack for TCP entries */
	__u8 _pad[7];
	struct ct_tuple tuple;	 /* the flow refused, or the entry concerned */
	struct ct_tuple trigger; /* early_drop by early_drop(): the new flow it made room for */
};

#endif
