package ctlab

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"golang.org/x/sys/unix"
)

// Addresses the Lab's own traffic uses (all on the namespace's loopback).
var (
	// HoldListener is where HoldEstablished's connections go (port chosen
	// by the kernel); they come from HoldSourceBase, HoldSourceBase+1, ...
	// (holdPerSource connections each).
	HoldListener   = netip.MustParseAddr("127.0.0.1")
	HoldSourceBase = netip.MustParseAddr("127.253.0.1")
	// FillDst receives FillUnassured's flows, which come from
	// FillSourceBase, FillSourceBase+1, ... (up to 65535 flows each).
	FillDst        = netip.MustParseAddrPort("127.0.0.1:7")
	FillSourceBase = netip.MustParseAddr("127.254.0.1")
)

const (
	holdPerSource  = 20000 // below the 28232 ephemeral ports of the default range
	connectTimeout = 20 * time.Second
	sinkRcvBuf     = 4096
)

// HoldEstablished opens n TCP connections over the Lab's loopback and keeps
// them open until the Lab's cleanup. Each is one conntrack entry (the
// listener makes none), ASSURED once the handshake's last ACK has passed, so
// early_drop cannot evict it. The server side stays in the listener's accept
// queue, so a connection costs one file descriptor (RLIMIT_NOFILE bounds n).
// It returns once the server has every connection queued.
func (l *Lab) HoldEstablished(n int) error {
	if n <= 0 {
		return nil
	}
	return l.Do(func() error {
		ln, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("HoldEstablished: listener socket: %w", err)
		}
		if err := l.hold(ln); err != nil {
			return err
		}
		if err := unix.Bind(ln, &unix.SockaddrInet4{Addr: HoldListener.As4()}); err != nil {
			return fmt.Errorf("HoldEstablished: bind listener: %w", err)
		}
		if err := unix.Listen(ln, n); err != nil {
			return fmt.Errorf("HoldEstablished: listen: %w", err)
		}
		sa, err := unix.Getsockname(ln)
		if err != nil {
			return fmt.Errorf("HoldEstablished: listener address: %w", err)
		}
		to := &unix.SockaddrInet4{Addr: HoldListener.As4(), Port: sa.(*unix.SockaddrInet4).Port}

		src := HoldSourceBase
		for i := range n {
			if i > 0 && i%holdPerSource == 0 {
				src = src.Next()
			}
			if err := connectHeld(l, src, to); err != nil {
				return fmt.Errorf("HoldEstablished: connection %d of %d (from %v to 127.0.0.1:%d): %w", i+1, n, src, to.Port, err)
			}
		}
		// The client's connect() returns once it sent the last ACK (which
		// makes the entry ASSURED); wait for the server to queue them all.
		deadline := time.Now().Add(connectTimeout)
		for {
			info, err := unix.GetsockoptTCPInfo(ln, unix.IPPROTO_TCP, unix.TCP_INFO)
			if err != nil {
				return fmt.Errorf("HoldEstablished: listener TCP_INFO: %w", err)
			}
			if int(info.Unacked) >= n { // a listener reports its accept queue length there
				return nil
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("HoldEstablished: listener queued %d of %d connections after %v", info.Unacked, n, connectTimeout)
			}
			time.Sleep(time.Millisecond)
		}
	})
}

func connectHeld(l *Lab, src netip.Addr, to *unix.SockaddrInet4) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	if err := l.hold(fd); err != nil {
		return err
	}
	// Let connect() pick the port per destination, not bind() per address.
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1); err != nil {
		return err
	}
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: src.As4()}); err != nil {
		return err
	}
	if err := unix.Connect(fd, to); err != nil && err != unix.EINPROGRESS {
		return err
	}
	if err := pollOut(fd, connectTimeout); err != nil {
		return err
	}
	if soerr, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR); err != nil {
		return err
	} else if soerr != 0 {
		return unix.Errno(soerr)
	}
	return nil
}

func pollOut(fd int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return fmt.Errorf("not connected after %v (SYN dropped: table full?)", timeout)
		}
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
		n, err := unix.Poll(pfd, int(left/time.Millisecond)+1)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		if n > 0 {
			return nil
		}
	}
}

// FillUnassured creates n one-way UDP flows (from FillSourceBase onwards to
// FillDst): unreplied, so evictable, entries. It fails if any is refused.
func (l *Lab) FillUnassured(n int) error {
	plan, err := l.reservePool(FillSourceBase, FillDst, n)
	if err != nil {
		return fmt.Errorf("FillUnassured: %w", err)
	}
	sent, refused, err := l.flood(plan, FillDst, true)
	if err != nil {
		return fmt.Errorf("FillUnassured: after %d sent and %d refused: %w", sent, refused, err)
	}
	if refused != 0 {
		return fmt.Errorf("FillUnassured: %d of %d flows refused (table already full?)", refused, n)
	}
	return nil
}

// SendNewFlows sends flows UDP datagrams from src to dst over the Lab's
// loopback, each from its own UDP socket bound to a source port that no
// earlier flow of this Lab from src to dst used, so that each is a new
// conntrack entry. src is a 127.x.y.z address (lo owns 127/8) or ::1, dst a
// loopback address of the same family. A UDP socket bound to dst (never read)
// absorbs the datagrams, so no ICMP error comes back.
//
// sent counts the datagrams netfilter let through, refused those whose send
// failed with EPERM (netfilter dropped them: table full, insert failure, ...).
// Any other error stops the call; the counts then cover what went before.
// One source and destination allow 65535 flows over a Lab's life.
func (l *Lab) SendNewFlows(src netip.Addr, dst netip.AddrPort, flows int) (sent, refused int, err error) {
	if err := checkFlow(src, dst); err != nil {
		return 0, 0, err
	}
	first, err := l.reserve(src, dst, flows)
	if err != nil {
		return 0, 0, err
	}
	return l.flood([]segment{{src: src, port: first, left: flows}}, dst, false)
}

// Refuse fills the table with held established flows (HoldEstablished:
// give the table's max, so that nothing can be evicted) and sends n new
// flows from src to 127.0.0.1:9, every one of which must be refused.
func (l *Lab) Refuse(held int, src netip.Addr, n int) error {
	if err := l.HoldEstablished(held); err != nil {
		return fmt.Errorf("Refuse: fill the table: %w", err)
	}
	sent, refused, err := l.SendNewFlows(src, netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), 9), n)
	if err != nil {
		return fmt.Errorf("Refuse: send from %s: %w", src, err)
	}
	if refused != n {
		return fmt.Errorf("Refuse: from %s, %d of %d flows refused, %d let through", src, refused, n, sent)
	}
	return nil
}

// RawFlood sends n new UDP flows to dst from srcs in turn (round robin),
// through a raw socket writing whole packets (IP_HDRINCL), from one thread:
// on the 6.18 development machine about 200k admitted or 330k refused flows
// a second. Flows never repeat within a Lab
// (source ports are shared with SendNewFlows). Counts as in SendNewFlows.
// IPv6 works with the single source ::1.
func (l *Lab) RawFlood(srcs []netip.Addr, dst netip.AddrPort, n int) (sent, refused int, err error) {
	if len(srcs) == 0 {
		return 0, 0, errors.New("RawFlood: no source address")
	}
	plan := make([]segment, 0, len(srcs))
	for i, src := range srcs {
		if err := checkFlow(src, dst); err != nil {
			return 0, 0, err
		}
		k := n / len(srcs)
		if i < n%len(srcs) {
			k++
		}
		if k == 0 {
			continue
		}
		first, err := l.reserve(src, dst, k)
		if err != nil {
			return 0, 0, err
		}
		plan = append(plan, segment{src: src, port: first, left: k})
	}
	return l.flood(plan, dst, true)
}

func checkFlow(src netip.Addr, dst netip.AddrPort) error {
	if !dst.IsValid() || dst.Port() == 0 {
		return fmt.Errorf("ctlab: destination %v needs an address and a port", dst)
	}
	ok := func(a netip.Addr) bool {
		return (a.Is4() && a.As4()[0] == 127) || a == netip.IPv6Loopback()
	}
	if !ok(src) || !ok(dst.Addr()) {
		return fmt.Errorf("ctlab: flow %v -> %v: both ends must be loopback (127.0.0.0/8 or ::1)", src, dst)
	}
	if src.Is4() != dst.Addr().Is4() {
		return fmt.Errorf("ctlab: flow %v -> %v mixes address families", src, dst)
	}
	return nil
}

// segment is a run of flows from one source: ports port, port+1, ...
type segment struct {
	src  netip.Addr
	port int
	left int
}

// reserve takes n unused source ports for flows src -> dst.
func (l *Lab) reserve(src netip.Addr, dst netip.AddrPort, n int) (int, error) {
	if n < 0 {
		return 0, fmt.Errorf("ctlab: negative flow count %d", n)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	k := flowKey{src, dst}
	next := max(l.ports[k], 1)
	if left := 65536 - next; n > left {
		return 0, fmt.Errorf("ctlab: %d new flows from %v to %v requested, %d source ports left: use more source addresses", n, src, dst, left)
	}
	l.ports[k] = next + n
	return next, nil
}

// reservePool takes n flows from base, base+1, ... to dst.
func (l *Lab) reservePool(base netip.Addr, dst netip.AddrPort, n int) ([]segment, error) {
	var plan []segment
	l.mu.Lock()
	defer l.mu.Unlock()
	for src := base; n > 0; src = src.Next() {
		if src.As4()[0] != 127 {
			return nil, errors.New("ctlab: source pool exhausted")
		}
		k := flowKey{src, dst}
		next := max(l.ports[k], 1)
		take := min(n, 65536-next)
		if take == 0 {
			continue
		}
		l.ports[k] = next + take
		plan = append(plan, segment{src: src, port: next, left: take})
		n -= take
	}
	return plan, nil
}

// sink makes sure a UDP socket is bound to dst (inside the namespace).
func (l *Lab) sink(dst netip.AddrPort) error {
	l.mu.Lock()
	have := l.sinks[dst]
	l.mu.Unlock()
	if have {
		return nil
	}
	fd, err := unix.Socket(family(dst.Addr()), unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("sink socket: %w", err)
	}
	if err := l.hold(fd); err != nil {
		return err
	}
	unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
	unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, sinkRcvBuf)
	if err := unix.Bind(fd, sockaddr(dst.Addr(), int(dst.Port()))); err != nil {
		return fmt.Errorf("sink bind %v: %w", dst, err)
	}
	l.mu.Lock()
	l.sinks[dst] = true
	l.mu.Unlock()
	return nil
}

// flood sends the plan's flows to dst round robin, through a raw socket or
// one UDP socket per flow.
func (l *Lab) flood(plan []segment, dst netip.AddrPort, raw bool) (sent, refused int, err error) {
	err = l.Do(func() error {
		if err := l.sink(dst); err != nil {
			return err
		}
		var send func(s *segment) error
		if raw {
			r, err := newRawSender(dst)
			if err != nil {
				return err
			}
			defer r.close()
			send = r.send
		} else {
			u := newUDPSender(dst)
			send = u.send
		}
		for active := true; active; {
			active = false
			for i := range plan {
				s := &plan[i]
				if s.left == 0 {
					continue
				}
				active = true
				switch err := send(s); err {
				case nil:
					sent++
				case unix.EPERM:
					refused++
				default:
					return fmt.Errorf("flow %v:%d -> %v: %w", s.src, s.port, dst, err)
				}
				s.port++
				s.left--
			}
		}
		return nil
	})
	return sent, refused, err
}

// sendError marks errors that happened before the packet was handed to the
// stack (the flow was not attempted).
type sendError struct{ err error }

func (e sendError) Error() string { return "before sending: " + e.err.Error() }
func (e sendError) Unwrap() error { return e.err }

type udpSender struct {
	dst     unix.Sockaddr
	fam     int
	payload []byte
}

func newUDPSender(dst netip.AddrPort) *udpSender {
	return &udpSender{dst: sockaddr(dst.Addr(), int(dst.Port())), fam: family(dst.Addr()), payload: []byte{0}}
}

func (u *udpSender) send(s *segment) error {
	fd, err := unix.Socket(u.fam, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return sendError{err}
	}
	defer unix.Close(fd)
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
		return sendError{err}
	}
	if err := unix.Bind(fd, sockaddr(s.src, s.port)); err != nil {
		return sendError{err}
	}
	for {
		err := unix.Sendto(fd, u.payload, 0, u.dst)
		if err != unix.EINTR {
			return err
		}
	}
}

// rawSender writes UDP packets with their IP header through a raw socket.
type rawSender struct {
	fd  int
	dst unix.Sockaddr
	pkt []byte
	v6  bool
	dp  uint16
	da  netip.Addr
}

func newRawSender(dst netip.AddrPort) (*rawSender, error) {
	r := &rawSender{dst: sockaddr(dst.Addr(), 0), v6: dst.Addr().Is6(), dp: dst.Port(), da: dst.Addr()}
	var err error
	if r.v6 {
		r.fd, err = unix.Socket(unix.AF_INET6, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
		if err == nil {
			err = unix.SetsockoptInt(r.fd, unix.IPPROTO_IPV6, unix.IPV6_HDRINCL, 1)
		}
		r.pkt = make([]byte, 40+8)
	} else {
		// IPPROTO_RAW implies IP_HDRINCL.
		r.fd, err = unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
		r.pkt = make([]byte, 20+8)
	}
	if err != nil {
		if r.fd > 0 {
			unix.Close(r.fd)
		}
		return nil, fmt.Errorf("raw socket: %w", err)
	}
	return r, nil
}

func (r *rawSender) close() { unix.Close(r.fd) }

func (r *rawSender) send(s *segment) error {
	if r.v6 {
		buildUDP6(r.pkt, s.src, r.da, uint16(s.port), r.dp)
	} else {
		buildUDP4(r.pkt, s.src, r.da, uint16(s.port), r.dp)
	}
	for {
		err := unix.Sendto(r.fd, r.pkt, 0, r.dst)
		if err != unix.EINTR {
			return err
		}
	}
}

// buildUDP4 writes an IPv4 header and an empty UDP datagram into p (28
// bytes). The kernel fills in the IP checksum and ID (IP_HDRINCL); a UDP
// checksum of 0 means none.
func buildUDP4(p []byte, src, dst netip.Addr, sport, dport uint16) {
	p[0] = 0x45
	p[1] = 0
	binary.BigEndian.PutUint16(p[2:], uint16(len(p)))
	binary.BigEndian.PutUint32(p[4:], 0) // ID, flags, fragment offset
	p[8] = 64
	p[9] = unix.IPPROTO_UDP
	binary.BigEndian.PutUint16(p[10:], 0)
	s, d := src.As4(), dst.As4()
	copy(p[12:16], s[:])
	copy(p[16:20], d[:])
	u := p[20:]
	binary.BigEndian.PutUint16(u[0:], sport)
	binary.BigEndian.PutUint16(u[2:], dport)
	binary.BigEndian.PutUint16(u[4:], uint16(len(u)))
	binary.BigEndian.PutUint16(u[6:], 0)
}

// buildUDP6 writes an IPv6 header and an empty UDP datagram into p (48
// bytes), with the UDP checksum IPv6 requires.
func buildUDP6(p []byte, src, dst netip.Addr, sport, dport uint16) {
	u := p[40:]
	binary.BigEndian.PutUint32(p[0:], 6<<28)
	binary.BigEndian.PutUint16(p[4:], uint16(len(u)))
	p[6] = unix.IPPROTO_UDP
	p[7] = 64
	s, d := src.As16(), dst.As16()
	copy(p[8:24], s[:])
	copy(p[24:40], d[:])
	binary.BigEndian.PutUint16(u[0:], sport)
	binary.BigEndian.PutUint16(u[2:], dport)
	binary.BigEndian.PutUint16(u[4:], uint16(len(u)))
	binary.BigEndian.PutUint16(u[6:], 0)
	// Pseudo-header: addresses, upper-layer length, next header.
	sum := uint32(0)
	for i := 8; i < 40; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(p[i:]))
	}
	sum += uint32(len(u)) + unix.IPPROTO_UDP
	for i := 0; i+1 < len(u); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(u[i:]))
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	c := ^uint16(sum)
	if c == 0 {
		c = 0xffff
	}
	binary.BigEndian.PutUint16(u[6:], c)
}

func family(a netip.Addr) int {
	if a.Is4() {
		return unix.AF_INET
	}
	return unix.AF_INET6
}

func sockaddr(a netip.Addr, port int) unix.Sockaddr {
	if a.Is4() {
		return &unix.SockaddrInet4{Addr: a.As4(), Port: port}
	}
	return &unix.SockaddrInet6{Addr: a.As16(), Port: port}
}
