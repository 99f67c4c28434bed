package event

import (
	"strconv"
	"time"
)

// Event is one thing the kernel hooks saw happen to the conntrack table.
type Event struct {
	Time       time.Time // wall time, from the kernel's boot-time clock (see Clock)
	Reason     Reason
	Detail     Detail
	Confidence Confidence
	CPU        uint32
	Netns      Netns  // the network namespace
	Zone       uint16 // conntrack zone
	Count      uint32 // entries in the netns's table at the time; 0 = unknown
	Max        uint32 // nf_conntrack_max; 0 = unknown
	// Status is the entry's IPS_* bits (the victim's for early_drop).
	Status uint32
	// TimeoutLeft is how long the entry had before it would have expired.
	// Negative means it had expired but not yet been reaped; zero also
	// stands for "no entry" (a refused flow never had a timeout).
	TimeoutLeft time.Duration
	TCPState    uint8 // enum tcp_conntrack, meaningful for TCP flows only
	// Flow is the flow refused, or the entry concerned (the victim for
	// early_drop).
	Flow Tuple
	// Trigger is the new flow an early_drop made room for; nil otherwise.
	Trigger *Tuple
}

// statusBitNames are the IPS_* bit names without the prefix, as
// conntrack-tools prints them (ASSURED, SEEN_REPLY...). Bit 12 was
// IPS_UNTRACKED before 4.19 repurposed it; the current name is kept.
var statusBitNames = [...]string{
	"EXPECTED",
	"SEEN_REPLY",
	"ASSURED",
	"CONFIRMED",
	"SRC_NAT",
	"DST_NAT",
	"SEQ_ADJUST",
	"SRC_NAT_DONE",
	"DST_NAT_DONE",
	"DYING",
	"FIXED_TIMEOUT",
	"TEMPLATE",
	"NAT_CLASH",
	"HELPER",
	"OFFLOAD",
	"HW_OFFLOAD",
}

// StatusBitName names IPS_* bit number bit (0 = EXPECTED). Bits a future
// kernel may add are named "BIT16" and so on, so no bit is silently lost.
func StatusBitName(bit int) string {
	if bit >= 0 && bit < len(statusBitNames) {
		return statusBitNames[bit]
	}
	return "BIT" + strconv.Itoa(bit)
}

// StatusNames names the bits set in status, lowest bit first.
func StatusNames(status uint32) []string {
	names := []string{}
	for bit := 0; status != 0; bit++ {
		if status&1 != 0 {
			names = append(names, StatusBitName(bit))
		}
		status >>= 1
	}
	return names
}

// StatusNames names the bits set in the entry's status.
func (e *Event) StatusNames() []string { return StatusNames(e.Status) }

// tcpStateNames are enum tcp_conntrack's names as conntrack -L and
// /proc/net/nf_conntrack print them.
var tcpStateNames = [...]string{
	"NONE",
	"SYN_SENT",
	"SYN_RECV",
	"ESTABLISHED",
	"FIN_WAIT",
	"CLOSE_WAIT",
	"LAST_ACK",
	"TIME_WAIT",
	"CLOSE",
	"SYN_SENT2",
}

// TCPStateName names an enum tcp_conntrack value; values past the enum are
// shown by number.
func TCPStateName(s uint8) string {
	if int(s) < len(tcpStateNames) {
		return tcpStateNames[s]
	}
	return strconv.Itoa(int(s))
}

// TCPStateName names the entry's TCP state, or "" when the flow is not TCP
// (the kernel's field means nothing then).
func (e *Event) TCPStateName() string {
	if e.Flow.Proto != ProtoTCP {
		return ""
	}
	return TCPStateName(e.TCPState)
}

// ParseTCPState reads a name TCPStateName gives (or a number) back.
func ParseTCPState(name string) (uint8, bool) {
	for i, n := range tcpStateNames {
		if n == name {
			return uint8(i), true
		}
	}
	n, err := strconv.ParseUint(name, 10, 8)
	return uint8(n), err == nil
}

// Netns is a network namespace: its identity, which the kernel never
// gives to another, and its inode number, the name operators know it by
// (ip netns identify, /proc/PID/ns/net, --netns), which the kernel hands
// to the next namespace as soon as one dies. Counts are kept by identity,
// so that a dead namespace's never pass to the one that got its inode.
type Netns struct {
	// ID is the kernel's netns cookie where user space can read it too
	// (SO_NETNS_COOKIE, 5.14+), or InodeID(Inode) elsewhere
	// (bpf/conn.bpf.h, net_id). 0: no namespace.
	ID    uint64
	Inode uint32
}

// inodeIDBit marks an identity that is an inode number standing in for a
// cookie (NETNS_ID_INODE in bpf/core_fixes.bpf.h).
const inodeIDBit = 1 << 63

// InodeID is the identity of a namespace known only by its inode number:
// on a kernel without netns cookies, and in recordings made before records
// carried netns_id.
func InodeID(inode uint32) uint64 { return inodeIDBit | uint64(inode) }

// NetnsOf names a namespace known only by its inode number (InodeID).
func NetnsOf(inode uint32) Netns { return Netns{ID: InodeID(inode), Inode: inode} }

// Cookie is the kernel's netns cookie of n, or 0 where the kernel had none.
func (n Netns) Cookie() uint64 {
	if n.ID&inodeIDBit != 0 {
		return 0
	}
	return n.ID
}
