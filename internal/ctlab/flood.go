package ctlab

import (
	"encoding/binary"
	"fmt"
	"math/bits"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Flood's default addresses. IPv4 sources are spoofed 127.x.y.z addresses
// (lo owns 127.0.0.0/8); IPv6 sources come from FloodPrefix6, which Flood
// makes local on the Lab's lo (a `local` route, like 127/8), so that
// replies to admitted flows stay on the loopback.
var (
	FloodSourceBase4 = netip.MustParseAddr("127.100.0.1")
	FloodPrefix6     = netip.MustParsePrefix("fd00:c7::/64")
	FloodSourceBase6 = netip.MustParseAddr("fd00:c7::1")
	FloodDst4        = netip.MustParseAddrPort("127.0.0.1:9")
	FloodDst6        = netip.MustParseAddrPort("[::1]:9")
)

// FloodSpec describes a flood of new flows for Lab.Flood.
type FloodSpec struct {
	Proto string // "udp" (default) or "tcp-syn"
	// IPv6: sources (in FloodPrefix6) and destination are IPv6.
	IPv6 bool
	// Sources is the number of distinct source addresses, used in turn. 0
	// means 1, or with Random a fresh random source for every packet.
	Sources int
	// Random picks the source addresses at random (a seeded permutation,
	// so no address repeats among the first 16.5 million packets in IPv4,
	// 2^64 in IPv6): IPv4 in 127.0.0.0/8 except 127.0/16, 127.253/16 and
	// 127.254/16 (which the Lab uses), IPv6 in FloodPrefix6.
	Random bool
	// SourceBase is the first address of the distinct pool (without
	// Random): SourceBase, SourceBase+1, ... Default FloodSourceBase4 or
	// FloodSourceBase6.
	SourceBase netip.Addr
	// Packets is how many packets (each a new flow) to send.
	Packets int
	// Rate is the target in packets per second (0: as fast as possible).
	// Packets go out in batches of about a millisecond's worth, each
	// batch waiting for its slot, so that Elapsed is Packets/Rate when
	// the sender keeps up.
	Rate int
	// Dst is the destination, a loopback address of the sources' family
	// (127.0.0.0/8 or ::1). Default FloodDst4 or FloodDst6.
	Dst netip.AddrPort
	// Seed makes Random reproducible: the same seed gives the same sources
	// in a fresh Lab.
	Seed uint64
}

// FloodResult counts a flood's packets as RawFlood does: Sent were let
// through by netfilter, Refused failed with EPERM (netfilter dropped them).
// Elapsed is the time from the first packet to the end of the last one's
// slot (Packets/Rate when paced).
type FloodResult struct {
	Sent, Refused int
	Elapsed       time.Duration
}

// Flood sends spec.Packets new flows through one raw socket (IP_HDRINCL)
// from one thread of the Lab's namespace, each with a tuple no earlier flood
// of this Lab used (the source port, then the destination port, advance per
// round over the sources; random sources differ by address), so each one is
// a new conntrack entry or a refusal. It keeps no state per source: a
// million random sources cost what one does. Its tuples are not coordinated
// with RawFlood's and SendNewFlows's: use other source addresses for those.
// Any error other than EPERM stops it; the result then counts what went
// before.
func (l *Lab) Flood(spec FloodSpec) (FloodResult, error) {
	g, err := newFloodGen(spec)
	if err != nil {
		return FloodResult{}, fmt.Errorf("Flood: %w", err)
	}
	st := floodStateOf(l)
	st.mu.Lock()
	if g.fresh {
		g.base = st.fresh
		st.fresh += uint64(g.n)
	} else {
		g.base = st.rounds
		st.rounds += uint64((g.n + g.sources - 1) / g.sources)
	}
	needRoute := g.v6 && !st.route6
	st.mu.Unlock()

	if needRoute {
		out, err := run(nil, "ip", "-n", l.name, "-6", "route", "replace", "local", FloodPrefix6.String(), "dev", "lo")
		if err != nil {
			return FloodResult{}, fmt.Errorf("Flood: make %v local on lo: %v: %s", FloodPrefix6, err, out)
		}
		st.mu.Lock()
		st.route6 = true
		st.mu.Unlock()
	}

	var res FloodResult
	err = l.Do(func() error {
		if err := l.sink(g.dst); err != nil {
			return err
		}
		fd, err := openRawHdrincl(g.v6)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		res, err = g.run(fd)
		return err
	})
	if err != nil {
		err = fmt.Errorf("Flood: after %d sent and %d refused: %w", res.Sent, res.Refused, err)
	}
	return res, err
}

// floodState is what Flood remembers per Lab: how many rounds of pool
// tuples and how many fresh random indices earlier floods used.
type floodState struct {
	mu     sync.Mutex
	rounds uint64
	fresh  uint64
	route6 bool
}

var floodLabs = struct {
	sync.Mutex
	m map[string]*floodState // by Lab name (a few bytes per Lab ever made)
}{m: map[string]*floodState{}}

func floodStateOf(l *Lab) *floodState {
	floodLabs.Lock()
	defer floodLabs.Unlock()
	st := floodLabs.m[l.name]
	if st == nil {
		st = &floodState{}
		floodLabs.m[l.name] = st
	}
	return st
}

// floodGen makes packet i of a flood.
type floodGen struct {
	v6, tcp, random, fresh bool
	n, sources, rate       int
	dst                    netip.AddrPort
	base                   uint64 // first round (pool) or index (fresh) of this flood
	base4                  uint32 // distinct pool start (IPv4)
	base6hi, base6lo       uint64 // distinct pool start (IPv6)
	prefixHi               uint64 // FloodPrefix6's upper half
	keys                   [4]uint64
	pkt                    []byte
	to                     unix.Sockaddr
}

// v4Random is the number of IPv4 addresses random sources come from:
// 127.x.0.0/16 for x in 1..252 and 255.
const v4Random = 253 << 16

func newFloodGen(spec FloodSpec) (*floodGen, error) {
	g := &floodGen{v6: spec.IPv6, random: spec.Random, n: spec.Packets, sources: spec.Sources, rate: spec.Rate, dst: spec.Dst}
	switch spec.Proto {
	case "", "udp":
	case "tcp-syn":
		g.tcp = true
	default:
		return nil, fmt.Errorf("protocol %q: want udp or tcp-syn", spec.Proto)
	}
	if g.n < 0 || g.sources < 0 || g.rate < 0 {
		return nil, fmt.Errorf("negative Packets (%d), Sources (%d) or Rate (%d)", g.n, g.sources, g.rate)
	}
	if g.sources == 0 {
		if g.random {
			g.fresh = true
		} else {
			g.sources = 1
		}
	}
	if !g.dst.IsValid() {
		g.dst = FloodDst4
		if g.v6 {
			g.dst = FloodDst6
		}
	}
	da := g.dst.Addr()
	if g.dst.Port() == 0 {
		return nil, fmt.Errorf("destination %v needs a port", g.dst)
	}
	if g.v6 {
		if da != netip.IPv6Loopback() {
			return nil, fmt.Errorf("IPv6 destination %v: want ::1", da)
		}
	} else if !da.Is4() || da.As4()[0] != 127 {
		return nil, fmt.Errorf("IPv4 destination %v: want 127.0.0.0/8", da)
	}

	if !g.random {
		b := spec.SourceBase
		if !b.IsValid() {
			b = FloodSourceBase4
			if g.v6 {
				b = FloodSourceBase6
			}
		}
		if b.Is4() == g.v6 || b.Is4In6() {
			return nil, fmt.Errorf("source base %v is not of the destination's family", b)
		}
		if g.v6 {
			a := b.As16()
			g.base6hi, g.base6lo = binary.BigEndian.Uint64(a[:8]), binary.BigEndian.Uint64(a[8:])
			if _, carry := bits.Add64(g.base6lo, uint64(g.sources-1), 0); carry != 0 {
				return nil, fmt.Errorf("%d sources from %v overflow the /64", g.sources, b)
			}
		} else {
			a := b.As4()
			g.base4 = binary.BigEndian.Uint32(a[:])
			if a[0] != 127 || uint64(g.base4)+uint64(g.sources-1) > 0x7fffffff {
				return nil, fmt.Errorf("%d sources from %v do not fit in 127.0.0.0/8", g.sources, b)
			}
		}
	} else if !g.v6 && !g.fresh && g.sources > v4Random {
		return nil, fmt.Errorf("%d random IPv4 sources: at most %d", g.sources, v4Random)
	}

	s := spec.Seed
	for i := range g.keys {
		g.keys[i] = splitmix64(&s)
	}
	switch {
	case g.v6 && g.tcp:
		g.pkt = make([]byte, 40+20)
	case g.v6:
		g.pkt = make([]byte, 40+8)
	case g.tcp:
		g.pkt = make([]byte, 20+20)
	default:
		g.pkt = make([]byte, 20+8)
	}
	g.to = sockaddr(da, 0)
	g.prefixHi = floodPrefixHi()
	return g, nil
}

// run sends the flood through fd, paced when g.rate > 0.
func (g *floodGen) run(fd int) (FloodResult, error) {
	var res FloodResult
	batch := g.n
	if g.rate > 0 {
		batch = max(1, g.rate/1000) // about a millisecond of packets
	}
	start := time.Now()
	for i := 0; i < g.n; {
		end := min(g.n, i+batch)
		for ; i < end; i++ {
			g.build(i)
			err := unix.Sendto(fd, g.pkt, 0, g.to)
			for err == unix.EINTR {
				err = unix.Sendto(fd, g.pkt, 0, g.to)
			}
			switch err {
			case nil:
				res.Sent++
			case unix.EPERM:
				res.Refused++
			default:
				res.Elapsed = time.Since(start)
				return res, fmt.Errorf("packet %d to %v: %w", i, g.dst, err)
			}
		}
		if g.rate > 0 {
			due := start.Add(time.Duration(float64(i) * 1e9 / float64(g.rate)))
			if d := time.Until(due); d > 0 {
				time.Sleep(d)
			}
		}
	}
	res.Elapsed = time.Since(start)
	return res, nil
}

// build writes packet i into g.pkt.
func (g *floodGen) build(i int) {
	var sport, dport uint16
	var src4 uint32
	var src6hi, src6lo uint64
	dport = g.dst.Port()
	if g.fresh {
		// Index x of the Lab's fresh random sources: a distinct address
		// for each x (within a period of 2^24 or 2^64), the port as a
		// tie-breaker when the IPv4 period wraps.
		x := g.base + uint64(i)
		if g.v6 {
			src6hi = g.prefixHi
			src6lo = mix64(x + g.keys[0])
			sport = uint16(1 + mix64(src6lo^g.keys[1])%65535)
		} else {
			j, epoch := x%v4Random, x/v4Random
			src4 = addr4Random(perm4(uint32(j), &g.keys))
			sport = uint16(1 + (mix64(j^g.keys[1])+epoch)%65535)
		}
	} else {
		// Pool: source s in round r; the port advances with the round
		// (the destination port too, every 65535 rounds).
		s, r := uint64(i%g.sources), g.base+uint64(i/g.sources)
		sport = uint16(1 + r%65535)
		if hop := uint16(r / 65535); hop != 0 {
			dport += hop
			if dport < hop { // wrapped past 65535: skip port 0
				dport++
			}
		}
		switch {
		case g.random && g.v6:
			src6hi, src6lo = g.prefixHi, mix64(s+g.keys[0])
		case g.random:
			src4 = addr4Random(perm4(uint32(s), &g.keys))
		case g.v6:
			var c uint64
			src6lo, c = bits.Add64(g.base6lo, s, 0)
			src6hi = g.base6hi + c
		default:
			src4 = g.base4 + uint32(s)
		}
	}

	p := g.pkt
	var l4 []byte
	var sum uint32
	proto := byte(unix.IPPROTO_UDP)
	if g.tcp {
		proto = unix.IPPROTO_TCP
	}
	if g.v6 {
		l4 = p[40:]
		binary.BigEndian.PutUint32(p[0:], 6<<28)
		binary.BigEndian.PutUint16(p[4:], uint16(len(l4)))
		p[6] = proto
		p[7] = 64
		binary.BigEndian.PutUint64(p[8:], src6hi)
		binary.BigEndian.PutUint64(p[16:], src6lo)
		d := g.dst.Addr().As16()
		copy(p[24:40], d[:])
		sum = sum16(p[8:40], 0)
	} else {
		l4 = p[20:]
		p[0] = 0x45
		p[1] = 0
		binary.BigEndian.PutUint16(p[2:], uint16(len(p)))
		binary.BigEndian.PutUint32(p[4:], 0) // the kernel picks the ID
		p[8] = 64
		p[9] = proto
		binary.BigEndian.PutUint16(p[10:], 0) // and the header checksum
		binary.BigEndian.PutUint32(p[12:], src4)
		d := g.dst.Addr().As4()
		copy(p[16:20], d[:])
		sum = sum16(p[12:20], 0)
	}
	sum += uint32(proto) + uint32(len(l4))
	binary.BigEndian.PutUint16(l4[0:], sport)
	binary.BigEndian.PutUint16(l4[2:], dport)
	if g.tcp {
		binary.BigEndian.PutUint32(l4[4:], uint32(mix64(uint64(i)^g.keys[2]))) // sequence number
		binary.BigEndian.PutUint32(l4[8:], 0)                                  // acknowledgment
		l4[12] = 5 << 4                                                        // data offset: 20 bytes
		l4[13] = 0x02                                                          // SYN
		binary.BigEndian.PutUint16(l4[14:], 64240)                             // window
		binary.BigEndian.PutUint16(l4[16:], 0)
		binary.BigEndian.PutUint16(l4[18:], 0)
		binary.BigEndian.PutUint16(l4[16:], checksum(sum16(l4, sum)))
	} else {
		binary.BigEndian.PutUint16(l4[4:], uint16(len(l4)))
		binary.BigEndian.PutUint16(l4[6:], 0)
		if g.v6 { // mandatory in IPv6; 0 (none) is allowed in IPv4
			c := checksum(sum16(l4, sum))
			if c == 0 {
				c = 0xffff
			}
			binary.BigEndian.PutUint16(l4[6:], c)
		}
	}
}

// floodPrefixHi is the upper 64 bits of FloodPrefix6.
func floodPrefixHi() uint64 {
	a := FloodPrefix6.Addr().As16()
	return binary.BigEndian.Uint64(a[:8])
}

func openRawHdrincl(v6 bool) (int, error) {
	if v6 {
		fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
		if err != nil {
			return -1, fmt.Errorf("raw socket: %w", err)
		}
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_HDRINCL, 1); err != nil {
			unix.Close(fd)
			return -1, fmt.Errorf("raw socket: IPV6_HDRINCL: %w", err)
		}
		return fd, nil
	}
	// IPPROTO_RAW implies IP_HDRINCL, for any protocol in the header.
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
	if err != nil {
		return -1, fmt.Errorf("raw socket: %w", err)
	}
	return fd, nil
}

// sum16 adds b's 16-bit big-endian words to sum (one's complement, folded
// at the end by checksum).
func sum16(b []byte, sum uint32) uint32 {
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	return sum
}

func checksum(sum uint32) uint16 {
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

// addr4Random maps y in [0, v4Random) to 127.x.y.z, x in 1..252 or 255.
func addr4Random(y uint32) uint32 {
	x := y>>16 + 1
	if x > 252 {
		x = 255
	}
	return 127<<24 | x<<16 | y&0xffff
}

// perm4 is a keyed permutation of [0, v4Random): a bijection of 24-bit
// values (add a key, multiply by an odd number, xorshift, all modulo 2^24),
// cycle-walked back into the range.
func perm4(j uint32, k *[4]uint64) uint32 {
	const mask = 1<<24 - 1
	y := j
	for {
		for r := range 3 {
			y = (y + uint32(k[r])) & mask
			y = (y * (uint32(k[r]>>32) | 1)) & mask
			y ^= y >> 12
		}
		if y < v4Random {
			return y
		}
	}
}

// mix64 is splitmix64's finalizer, a bijection of uint64.
func mix64(z uint64) uint64 {
	z = (z ^ z>>30) * 0xbf58476d1ce4e5b9
	z = (z ^ z>>27) * 0x94d049bb133111eb
	return z ^ z>>31
}

func splitmix64(s *uint64) uint64 {
	*s += 0x9e3779b97f4a7c15
	return mix64(*s)
}
