/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/*
 * Every kernel-version difference the probes depend on lives here, resolved
 * with CO-RE at load time rather than with version checks.
 */
#ifndef CORE_FIXES_BPF_H
#define CORE_FIXES_BPF_H

#include "vmlinux.h"
#include <bpf/bpf_core_read.h>

/*
 * skb->_nfct holds the conntrack entry pointer with the ctinfo in its low
 * three bits (NFCT_INFOMASK). A packet refused by conntrack itself never had
 * an entry attached; one dropped by a rule after conntrack has one.
 */
static __always_inline __u64 skb_nfct(const struct sk_buff *skb)
{
	if (!bpf_core_field_exists(skb->_nfct))
		return 0;
	return BPF_CORE_READ(skb, _nfct) & ~7ULL;
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

#endif
