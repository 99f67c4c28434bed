/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/*
 * Every kernel-version difference the probes depend on lives here, resolved
 * with CO-RE at load time rather than with version checks.
 */
#ifndef CORE_FIXES_BPF_H
#define CORE_FIXES_BPF_H

#include "vmlinux.h"
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_helpers.h>
#include "config.bpf.h"
#include "kread.bpf.h"

/*
 * skb->_nfct holds the conntrack entry pointer with the ctinfo in its low
 * three bits (conn.bpf.h, conn_of_nfct). A packet refused by conntrack itself
 * never had an entry attached; one dropped by a rule after conntrack has
 * one. Untracked packets (notrack) carry IP_CT_UNTRACKED and no pointer.
 * The field exists only in kernels built with conntrack (CONFIG_NF_CONNTRACK,
 * built in or a module).
 */
static __always_inline __u64 skb_nfct_raw(const struct sk_buff *skb, const bool direct)
{
	if (!bpf_core_field_exists(skb->_nfct))
		return 0;
	return KREAD(direct, skb, _nfct);
}

/*
 * SKB_DROP_REASON_NETFILTER_DROP exists since 5.17 (commit 2df3041ba3be,
 * "net: netfilter: use kfree_drop_reason() for NF_DROP"), and its value moves
 * as reasons are added (7 on Debian 6.1, 12 on 6.18). Returns 0 when the
 * enum value is unknown to this kernel.
 */
static __always_inline __u32 netfilter_drop_reason(void)
{
	if (!bpf_core_enum_value_exists(enum skb_drop_reason, SKB_DROP_REASON_NETFILTER_DROP))
		return 0;
	return bpf_core_enum_value(enum skb_drop_reason, SKB_DROP_REASON_NETFILTER_DROP);
}

/*
 * nf_conn.timeout became a u32 expiry in jiffies in 4.10 ("netfilter:
 * conntrack: get rid of conntrack timer"); before, it was a timer_list,
 * whose expiry is not worth chasing for an age.
 */
static __always_inline __s32 conn_timeout_left(const struct nf_conn *ct, const bool direct)
{
	if (bpf_core_field_size(ct->timeout) != sizeof(__u32))
		return 0;
	return (__s32)(KREAD(direct, ct, timeout) - (__u32)bpf_jiffies64());
}

/*
 * net->net_cookie names one network namespace for good: a u64 from a global
 * counter, set at setup since 5.12 (commit 3d368ab87cf6, "net: initialize
 * net->net_cookie at netns setup"). Before, it was an atomic64_t made only
 * when someone asked for it (5.7, commit f318903c0bf4), 0 until then, and
 * CO-RE finds no u64 field by that name there: 0.
 */
static __always_inline __u64 net_cookie(const struct net *net, const bool direct)
{
	if (!bpf_core_field_exists(net->net_cookie))
		return 0;
	return KREAD(direct, net, net_cookie);
}

/* ct->zone exists only with CONFIG_NF_CONNTRACK_ZONES. */
static __always_inline __u16 conn_zone(const struct nf_conn *ct, const bool direct)
{
	if (!bpf_core_field_exists(ct->zone))
		return 0;
	return KREAD(direct, ct, zone.id);
}

/*
 * The chaintoolong statistic and the drop it counts arrived in 5.15 (commit
 * d7e7747ac5c2, "netfilter: refuse insertion if chain has grown too large").
 * Before it, a confirmation that failed for no other reason has no name.
 */
static __always_inline bool kernel_limits_chains(void)
{
	return bpf_core_field_exists(struct ip_conntrack_stat, chaintoolong);
}

/*
 * delete_clone: Debian 11's 5.10 (gcc 10) splits nf_ct_delete() in two. Its
 * head, `if (test_and_set_bit(IPS_DYING_BIT, &ct->status)) return false;`,
 * is inlined into the callers in nf_conntrack_core.c (early_drop(),
 * gc_worker(), the flush iterator), which then call the rest,
 * nf_ct_delete.part.0(ct, portid, report), directly: a kprobe on
 * nf_ct_delete sees only the calls from other modules. User space attaches
 * the kprobe to the clone when kallsyms lists one (probe.deleteHookSymbol)
 * and sets cfg.delete_hook_is_clone; the arguments are the same (the
 * test bed's netlink deletes check portid). Kernels with module BTF (6.1
 * and later in the test bed) keep nf_ct_delete whole, and fentry needs no
 * clone.
 *
 * The clone is entered only once the caller has won the IPS_DYING race, so
 * there that bit no longer marks a repeat; on nf_ct_delete() itself it does
 * (the entry is already on its way out by another path, and nf_ct_delete()
 * returns false for it).
 */
static __always_inline bool deleted_by_another_path(__u32 status)
{
	return (status & IPS_DYING) && !cfg.delete_hook_is_clone;
}

#endif
