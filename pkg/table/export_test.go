package table

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// The captured replies in testdata/ are a kernel's answers about a ctlab
// Lab into which TestCapturedRepliesMatchKernel (table_privileged_test.go)
// sent these flows; both it and the unit tests check them with CheckDump
// and CheckStats.

// CaptureUDP are the UDP flows: N each, from source ports 1 to N.
var CaptureUDP = []struct {
	Src netip.Addr
	Dst netip.AddrPort
	N   int
}{
	{netip.MustParseAddr("127.60.0.1"), netip.MustParseAddrPort("127.0.0.1:9"), 30},
	{netip.MustParseAddr("127.60.0.2"), netip.MustParseAddrPort("127.0.0.1:9"), 5},
	{netip.IPv6Loopback(), netip.MustParseAddrPort("[::1]:9"), 4},
}

// CaptureHeld TCP connections are held open from CaptureHeldSrc
// (ctlab.HoldSourceBase, which this package's tests cannot import) to a
// listener on 127.0.0.1.
const CaptureHeld = 3

var CaptureHeldSrc = netip.MustParseAddr("127.253.0.1")

// CaptureEntries is the number of entries the flows make.
func CaptureEntries() int {
	n := CaptureHeld
	for _, f := range CaptureUDP {
		n += f.N
	}
	return n
}

// CaptureReplies sends in ns the requests of Conn.Stats (stats) or of
// Conn.Dump and returns every buffer the kernel sent, as received.
func CaptureReplies(ns Namespace, stats bool) ([][]byte, error) {
	c, err := ns.Dial()
	if err != nil {
		return nil, err
	}
	defer c.Close()
	reqs := []uint16{ipctnlMsgCtGet}
	if stats {
		reqs = []uint16{ipctnlMsgCtGetStatsCPU, ipctnlMsgCtGetStats}
	}
	var bufs [][]byte
	for _, typ := range reqs {
		c.seq++
		if err := c.send(typ, typ != ipctnlMsgCtGetStats); err != nil {
			return nil, err
		}
		for done := false; !done; {
			b, err := c.receive()
			if err != nil {
				return nil, err
			}
			bufs = append(bufs, bytes.Clone(b))
			if done, _, err = parseReplies(b, c.seq, func(uint16, []byte) error { return nil }); err != nil {
				return nil, err
			}
		}
	}
	return bufs, nil
}

// Replay returns a Conn that receives bufs, in order, instead of the
// kernel's replies: its socket is one end of a datagram socketpair whose
// other end has them queued (and swallows the requests).
func Replay(t testing.TB, bufs [][]byte) *Conn {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fds[1]) })
	for _, b := range bufs {
		if _, err := unix.Write(fds[1], b); err != nil {
			t.Fatalf("queue a reply: %v", err)
		}
	}
	return &Conn{ns: Namespace{Name: "replay"}, fd: fds[0], buf: make([]byte, recvBufSize)}
}

// CheckDump checks that c.Dump reports exactly the entries of the captured
// flows.
func CheckDump(t testing.TB, c *Conn) {
	t.Helper()
	type key struct {
		src   netip.Addr
		proto uint8
	}
	got := map[key]int{}
	ports := map[netip.Addr]uint64{} // sum of UDP source ports
	err := c.Dump(func(e Entry) error {
		got[key{e.Src.Addr(), e.Proto}]++
		if e.Status&StatusConfirmed == 0 {
			t.Errorf("%v -> %v: not confirmed (status %#x)", e.Src, e.Dst, e.Status)
		}
		switch e.Proto {
		case unix.IPPROTO_UDP:
			ports[e.Src.Addr()] += uint64(e.Src.Port())
			if e.Status&StatusSeenReply != 0 || e.Dst.Port() != 9 {
				t.Errorf("UDP %v -> %v: status %#x, want unreplied to port 9", e.Src, e.Dst, e.Status)
			}
		case unix.IPPROTO_TCP:
			if !e.Assured() || e.Dst.Addr() != netip.MustParseAddr("127.0.0.1") {
				t.Errorf("TCP %v -> %v: status %#x, want assured to 127.0.0.1", e.Src, e.Dst, e.Status)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("dump: %v", err)
	}
	want := map[key]int{{CaptureHeldSrc, unix.IPPROTO_TCP}: CaptureHeld}
	for _, f := range CaptureUDP {
		want[key{f.Src, unix.IPPROTO_UDP}] = f.N
		if s := uint64(f.N * (f.N + 1) / 2); ports[f.Src] != s {
			t.Errorf("UDP source ports of %v sum to %d, want %d (1 to %d)", f.Src, ports[f.Src], s, f.N)
		}
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("entries by source and protocol:\ngot  %v\nwant %v", got, want)
	}
}

// CheckStats checks what c.Stats reports for the Lab of the captured
// flows: their entries, and not a drop; and, from a kernel that has them
// (newCounters: 5.15 and later, as the captured testdata), the
// clash_resolve and chaintoolong counters. 5.10 reports clash_resolve but
// not chaintoolong, which came with the chain limit in 5.15.
func CheckStats(t testing.TB, c *Conn, newCounters bool) Stats {
	t.Helper()
	s, err := c.Stats()
	if err != nil {
		t.Fatalf("stats: %v", err)
	}
	if s.Entries != int64(CaptureEntries()) || s.Max <= s.Entries || s.CPUs < 1 ||
		s.Drop != 0 || s.EarlyDrop != 0 || s.InsertFailed != 0 || s.HasChainTooLong != newCounters || (newCounters && !s.HasClashResolve) {
		t.Errorf("stats %v (clash_resolve reported %v, chaintoolong %v): want %d entries, a max above, no drop, and both counters reported: %v",
			s, s.HasClashResolve, s.HasChainTooLong, CaptureEntries(), newCounters)
	}
	return s
}

// WriteCapture writes bufs to path, one hex line per receive buffer, after
// a comment line.
func WriteCapture(path, comment string, bufs [][]byte) error {
	var b strings.Builder
	fmt.Fprintf(&b, "# %s\n", comment)
	for _, buf := range bufs {
		b.WriteString(hex.EncodeToString(buf))
		b.WriteByte('\n')
	}
	return os.WriteFile(path, []byte(b.String()), 0o644)
}

// ReadCapture reads what WriteCapture wrote. Netlink headers are in host
// byte order: the captures are little-endian.
func ReadCapture(t testing.TB, path string) [][]byte {
	t.Helper()
	if binary.NativeEndian.Uint16([]byte{1, 0}) != 1 {
		t.Skip("captured netlink bytes are little-endian, this machine is not")
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var bufs [][]byte
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		if line := sc.Text(); line != "" && !strings.HasPrefix(line, "#") {
			b, err := hex.DecodeString(line)
			if err != nil {
				t.Fatalf("%s: %v", path, err)
			}
			bufs = append(bufs, b)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return bufs
}
