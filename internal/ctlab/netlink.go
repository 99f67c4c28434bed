package ctlab

import (
	"encoding/binary"
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// A minimal ctnetlink client: enough to read the statistics and to stream a
// table dump without holding it in memory (github.com/ti-mo/conntrack returns
// whole dumps as slices, and its per-CPU statistics lack clash_resolve and
// chaintoolong).

// ctnetlink message types (include/uapi/linux/netfilter/nfnetlink_conntrack.h).
const (
	ipctnlMsgCtGet         = 1
	ipctnlMsgCtGetStatsCPU = 4
	ipctnlMsgCtGetStats    = 5
)

// Attributes.
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

	ctaStatsGlobalEntries = 1

	nlaTypeMask = 0x3fff // without NLA_F_NESTED and NLA_F_NET_BYTEORDER
)

type nlConn struct {
	fd  int
	seq uint32
	buf []byte
}

// dialCtnetlink opens a NETLINK_NETFILTER socket. The socket belongs to the
// namespace of the calling thread: call it inside Lab.Do.
func dialCtnetlink() (*nlConn, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
	if err != nil {
		return nil, fmt.Errorf("ctnetlink socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("ctnetlink bind: %w", err)
	}
	return &nlConn{fd: fd, buf: make([]byte, 64<<10)}, nil
}

func (c *nlConn) Close() error { return unix.Close(c.fd) }

// request sends a ctnetlink request and calls fn for each reply message
// (nfgenmsg res_id and the attributes after it) until the kernel is done.
// dump selects NLM_F_DUMP; otherwise an ACK ends the exchange.
func (c *nlConn) request(msgType uint16, family uint8, dump bool, fn func(resID uint16, attrs []byte) error) error {
	c.seq++
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
	req[16] = family
	req[17] = unix.NFNETLINK_V0
	if err := unix.Sendto(c.fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("ctnetlink send: %w", err)
	}
	for {
		n, _, rflags, _, err := unix.Recvmsg(c.fd, c.buf, nil, 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("ctnetlink receive: %w", err)
		}
		if rflags&unix.MSG_TRUNC != 0 {
			return errors.New("ctnetlink receive: message truncated")
		}
		done, err := c.parse(c.buf[:n], fn)
		if err != nil || done {
			return err
		}
	}
}

func (c *nlConn) parse(b []byte, fn func(uint16, []byte) error) (done bool, err error) {
	for len(b) >= unix.NLMSG_HDRLEN {
		l := int(binary.NativeEndian.Uint32(b[0:4]))
		typ := binary.NativeEndian.Uint16(b[4:6])
		seq := binary.NativeEndian.Uint32(b[8:12])
		if l < unix.NLMSG_HDRLEN || l > len(b) {
			return false, fmt.Errorf("ctnetlink: bad message length %d", l)
		}
		msg := b[unix.NLMSG_HDRLEN:l]
		b = b[min(nlAlign(l), len(b)):]
		if seq != c.seq {
			continue // stale reply of an earlier, abandoned request
		}
		switch typ {
		case unix.NLMSG_DONE:
			return true, nil
		case unix.NLMSG_ERROR:
			if len(msg) < 4 {
				return false, errors.New("ctnetlink: short error message")
			}
			if errno := int32(binary.NativeEndian.Uint32(msg[0:4])); errno != 0 {
				return false, fmt.Errorf("ctnetlink: %w", unix.Errno(-errno))
			}
			return true, nil // ACK
		}
		if len(msg) < 4 {
			return false, errors.New("ctnetlink: short message")
		}
		if err := fn(binary.BigEndian.Uint16(msg[2:4]), msg[4:]); err != nil {
			return false, err
		}
	}
	return false, nil
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

func be32(v []byte) (int64, error) {
	if len(v) != 4 {
		return 0, fmt.Errorf("netlink attribute: %d bytes, want 4", len(v))
	}
	return int64(binary.BigEndian.Uint32(v)), nil
}
