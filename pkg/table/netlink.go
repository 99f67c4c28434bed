package table

import (
	"encoding/binary"
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// A minimal ctnetlink client on raw netlink sockets: enough to read the
// statistics and to stream a table dump one buffer at a time.
// github.com/ti-mo/conntrack returns whole dumps as slices (a million entries
// would be held at once), and its per-CPU statistics lack clash_resolve and
// chaintoolong.

// ctnetlink message types (include/uapi/linux/netfilter/nfnetlink_conntrack.h).
const (
	ipctnlMsgCtGet         = 1
	ipctnlMsgCtGetStatsCPU = 4
	ipctnlMsgCtGetStats    = 5
)

// Attributes (enum ctattr_type, ctattr_tuple, ctattr_ip, ctattr_l4proto,
// ctattr_stats_cpu, ctattr_stats_global).
const (
	ctaTupleOrig = 1
	ctaStatus    = 3

	ctaTupleIP    = 1
	ctaTupleProto = 2

	ctaIPv4Src = 1
	ctaIPv4Dst = 2
	ctaIPv6Src = 3
	ctaIPv6Dst = 4

	ctaProtoNum     = 1
	ctaProtoSrcPort = 2
	ctaProtoDstPort = 3

	ctaStatsFound         = 2
	ctaStatsInvalid       = 4
	ctaStatsInsert        = 8
	ctaStatsInsertFailed  = 9
	ctaStatsDrop          = 10
	ctaStatsEarlyDrop     = 11
	ctaStatsError         = 12
	ctaStatsSearchRestart = 13
	ctaStatsClashResolve  = 14
	ctaStatsChainTooLong  = 15

	ctaStatsGlobalEntries    = 1
	ctaStatsGlobalMaxEntries = 2

	nlaTypeMask = 0x3fff // without NLA_F_NESTED and NLA_F_NET_BYTEORDER
)

// recvBufSize is the receive buffer. netlink_recvmsg() caps the size of the
// next dump skb at SKB_WITH_OVERHEAD(32768) whatever buffer the reader
// offers, so 32 KiB never truncates a dump buffer and is the largest batch
// the kernel will fill per read.
const recvBufSize = 32 << 10

// ErrDumpInterrupted is returned (wrapped) by a dump during which the kernel
// flagged a message NLM_F_DUMP_INTR: the data changed under the dump, some
// entries may be missing or repeated. The dump is not restarted: fn has
// already seen every entry the kernel sent, and under a flood a restart of a
// table that never stops changing would never end. The caller decides.
//
// ctnetlink's conntrack dump (ctnetlink_dump_table, 6.1 to 6.18) never sets
// the flag: it resumes each buffer at (hash bucket, id of the last entry
// sent) and repeats the bucket from its start when that entry was freed
// meanwhile, and a hash resize renumbers the buckets. A dump of a changing
// table is therefore approximate whether or not this error is returned.
var ErrDumpInterrupted = errors.New("ctnetlink dump interrupted by changes (NLM_F_DUMP_INTR)")

// errAbandoned makes a Conn unusable after a request that stopped before
// the kernel's last reply: the rest of a dump stays queued for the socket
// and the kernel refuses a new dump on it (EBUSY) until it is read out.
var errAbandoned = errors.New("ctnetlink: connection unusable after an abandoned request; dial again")

// Conn is a ctnetlink socket of one network namespace (see Namespace.Dial).
// It is not safe for concurrent use.
//
// The socket holds a reference on its namespace: the kernel keeps a
// namespace alive, even after `ip netns delete`, while a Conn is open.
type Conn struct {
	ns     Namespace
	fd     int
	seq    uint32
	buf    []byte
	broken error
}

// newSocket opens a NETLINK_NETFILTER socket in the calling thread's
// namespace.
func newSocket() (int, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
	if err != nil {
		return -1, fmt.Errorf("ctnetlink socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("ctnetlink bind: %w", err)
	}
	return fd, nil
}

// Close closes the socket.
func (c *Conn) Close() error { return unix.Close(c.fd) }

// Cookie is the netns cookie of the namespace the connection was made in
// (SO_NETNS_COOKIE, 5.14+), or 0 where the kernel cannot tell.
func (c *Conn) Cookie() uint64 {
	v, err := unix.GetsockoptUint64(c.fd, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
	if err != nil {
		return 0
	}
	return v
}

// request sends a ctnetlink request for all address families and calls fn
// with the nfgenmsg res_id and the attributes of each reply until the
// kernel is done. dump selects NLM_F_DUMP; otherwise an ACK ends the
// exchange.
func (c *Conn) request(msgType uint16, dump bool, fn func(resID uint16, attrs []byte) error) error {
	if c.broken != nil {
		return c.broken
	}
	c.seq++
	if err := c.send(msgType, dump); err != nil {
		return err
	}
	return c.await(fn)
}

// await reads the replies to request c.seq, one receive buffer at a time.
func (c *Conn) await(fn func(resID uint16, attrs []byte) error) error {
	intr := false
	for {
		b, err := c.receive()
		if err != nil {
			c.broken = errAbandoned
			return err
		}
		done, in, err := parseReplies(b, c.seq, fn)
		intr = intr || in
		switch {
		case done && err == nil && intr:
			return ErrDumpInterrupted
		case done:
			return err // nil, or the kernel's error reply, which ends the exchange
		case err != nil:
			c.broken = errAbandoned // the rest of the replies stay queued
			return err
		}
	}
}

func (c *Conn) send(msgType uint16, dump bool) error {
	flags := uint16(unix.NLM_F_REQUEST)
	if dump {
		flags |= unix.NLM_F_DUMP
	} else {
		flags |= unix.NLM_F_ACK
	}
	req := make([]byte, unix.NLMSG_HDRLEN+4)
	binary.NativeEndian.PutUint32(req[0:4], uint32(len(req)))
	binary.NativeEndian.PutUint16(req[4:6], unix.NFNL_SUBSYS_CTNETLINK<<8|msgType)
	binary.NativeEndian.PutUint16(req[6:8], flags)
	binary.NativeEndian.PutUint32(req[8:12], c.seq)
	req[16] = unix.AF_UNSPEC // nfgenmsg: every family (IPv4 and IPv6)
	req[17] = unix.NFNETLINK_V0
	// An unconnected netlink socket writes to the kernel (port 0).
	if _, err := unix.Write(c.fd, req); err != nil {
		return fmt.Errorf("ctnetlink send: %w", err)
	}
	return nil
}

// receive reads one buffer of replies into c.buf, which the next call
// overwrites: memory stays at one buffer however long the dump. read(2)
// rather than recvmsg(2), which would allocate the sender's address on every
// call; a reply larger than the buffer (which the kernel's 32 KiB cap rules
// out) would show as a message running past the end, an error in
// parseReplies.
func (c *Conn) receive() ([]byte, error) {
	for {
		n, err := unix.Read(c.fd, c.buf)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("ctnetlink receive: %w", err)
		}
		return c.buf[:n], nil
	}
}

// parseReplies calls fn for each reply to request seq in one receive
// buffer. done reports the end of the exchange (NLMSG_DONE, or an ACK or
// error reply), intr whether a message carried NLM_F_DUMP_INTR.
func parseReplies(b []byte, seq uint32, fn func(resID uint16, attrs []byte) error) (done, intr bool, err error) {
	for len(b) >= unix.NLMSG_HDRLEN {
		l := int(binary.NativeEndian.Uint32(b[0:4]))
		typ := binary.NativeEndian.Uint16(b[4:6])
		flags := binary.NativeEndian.Uint16(b[6:8])
		msgSeq := binary.NativeEndian.Uint32(b[8:12])
		if l < unix.NLMSG_HDRLEN || l > len(b) {
			return false, intr, fmt.Errorf("ctnetlink: bad message length %d", l)
		}
		msg := b[unix.NLMSG_HDRLEN:l]
		b = b[min(nlAlign(l), len(b)):]
		if msgSeq != seq {
			continue // not ours: a reply to an earlier request
		}
		intr = intr || flags&unix.NLM_F_DUMP_INTR != 0
		switch typ {
		case unix.NLMSG_DONE:
			if len(msg) < 4 {
				return true, intr, nil // tolerated, though the kernel always appends an int
			}
			return true, intr, parseError(msg) // netlink_dump() appends the dump callback's error, 0 if none
		case unix.NLMSG_ERROR:
			return true, intr, parseError(msg)
		}
		if len(msg) < 4 {
			return false, intr, errors.New("ctnetlink: short message")
		}
		if err := fn(binary.BigEndian.Uint16(msg[2:4]), msg[4:]); err != nil {
			return false, intr, err
		}
	}
	return false, intr, nil
}

// ErrNoCtnetlink says that the kernel has no ctnetlink: nfnetlink answers
// EINVAL for a subsystem nobody registered, after trying to load its module
// (net/netfilter/nfnetlink.c, nfnetlink_rcv_msg), which fails where module
// loading is off or modprobe is missing.
var ErrNoCtnetlink = errors.New("ctnetlink is not available: load the nf_conntrack_netlink module (modprobe nf_conntrack_netlink)")

// parseError reads an NLMSG_ERROR body: a negative errno, or 0 for an ACK.
func parseError(msg []byte) error {
	if len(msg) < 4 {
		return errors.New("ctnetlink: short error message")
	}
	errno := unix.Errno(-int32(binary.NativeEndian.Uint32(msg[0:4])))
	switch errno {
	case 0:
		return nil
	case unix.EINVAL:
		// Every request cttrace sends is well formed: EINVAL is the
		// missing subsystem.
		return fmt.Errorf("%w (the kernel said: %w)", ErrNoCtnetlink, errno)
	}
	return fmt.Errorf("ctnetlink: %w", errno)
}

func nlAlign(n int) int { return (n + 3) &^ 3 }

// forEachAttr calls fn for each netlink attribute in b.
func forEachAttr(b []byte, fn func(typ uint16, val []byte) error) error {
	for len(b) >= 4 {
		l := int(binary.NativeEndian.Uint16(b[0:2]))
		typ := binary.NativeEndian.Uint16(b[2:4]) & nlaTypeMask
		if l < 4 || l > len(b) {
			return fmt.Errorf("netlink attribute: bad length %d", l)
		}
		if err := fn(typ, b[4:l]); err != nil {
			return err
		}
		b = b[min(nlAlign(l), len(b)):]
	}
	return nil
}

// be32 reads a 32-bit attribute, which ctnetlink sends in network order.
func be32(v []byte) (int64, error) {
	if len(v) != 4 {
		return 0, fmt.Errorf("netlink attribute: %d bytes, want 4", len(v))
	}
	return int64(binary.BigEndian.Uint32(v)), nil
}
