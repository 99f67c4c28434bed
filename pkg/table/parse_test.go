package table

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func captured(t *testing.T, name string) [][]byte {
	return ReadCapture(t, filepath.Join("testdata", name))
}

// TestReplayCapturedDump: the captured dump, spread over several receive
// buffers, parses to exactly the flows that made it.
func TestReplayCapturedDump(t *testing.T) {
	bufs := captured(t, "dump.hex")
	if len(bufs) < 2 {
		t.Fatalf("capture of %d buffers: want a dump spread over several", len(bufs))
	}
	CheckDump(t, Replay(t, bufs))
}

func TestReplayCapturedStats(t *testing.T) {
	s := CheckStats(t, Replay(t, captured(t, "stats.hex")), true)
	if s.Max != 262144 || s.CPUs != 2 {
		t.Errorf("max %d over %d CPUs, want the capturing machine's 262144 over 2", s.Max, s.CPUs)
	}
}

// forEachMsg calls fn with the header of each netlink message in buf.
func forEachMsg(buf []byte, fn func(hdr []byte)) {
	for len(buf) >= unix.NLMSG_HDRLEN {
		l := int(binary.NativeEndian.Uint32(buf))
		fn(buf[:unix.NLMSG_HDRLEN])
		buf = buf[min(nlAlign(l), len(buf)):]
	}
}

// withSeq returns copies of bufs whose messages carry sequence number seq.
func withSeq(bufs [][]byte, seq uint32) [][]byte {
	out := make([][]byte, len(bufs))
	for i, b := range bufs {
		out[i] = bytes.Clone(b)
		forEachMsg(out[i], func(hdr []byte) { binary.NativeEndian.PutUint32(hdr[8:], seq) })
	}
	return out
}

func nlmsg(typ uint16, seq uint32, body []byte) []byte {
	b := make([]byte, unix.NLMSG_HDRLEN, unix.NLMSG_HDRLEN+len(body))
	binary.NativeEndian.PutUint32(b[0:], uint32(unix.NLMSG_HDRLEN+len(body)))
	binary.NativeEndian.PutUint16(b[4:], typ)
	binary.NativeEndian.PutUint32(b[8:], seq)
	return append(b, body...)
}

func errnoBody(errno unix.Errno) []byte {
	return binary.NativeEndian.AppendUint32(nil, uint32(-int32(errno)))
}

// TestDumpInterruptedIsReported: a message flagged NLM_F_DUMP_INTR makes
// the dump end with ErrDumpInterrupted, after every entry was delivered.
func TestDumpInterruptedIsReported(t *testing.T) {
	bufs := withSeq(captured(t, "dump.hex"), 1)
	forEachMsg(bufs[1], func(hdr []byte) {
		f := binary.NativeEndian.Uint16(hdr[6:])
		binary.NativeEndian.PutUint16(hdr[6:], f|unix.NLM_F_DUMP_INTR)
	})
	n := 0
	err := Replay(t, bufs).Dump(func(Entry) error { n++; return nil })
	if !errors.Is(err, ErrDumpInterrupted) || n != CaptureEntries() {
		t.Fatalf("%d entries, error %v; want all %d and ErrDumpInterrupted", n, err, CaptureEntries())
	}
}

// TestKernelErrorKeepsConn: an error reply ends its request only; replies
// to an earlier request are skipped; the next request works.
func TestKernelErrorKeepsConn(t *testing.T) {
	stale := withSeq(captured(t, "dump.hex"), 0)
	bufs := append([][]byte{nlmsg(unix.NLMSG_ERROR, 1, errnoBody(unix.EBUSY))}, stale...)
	bufs = append(bufs, withSeq(captured(t, "dump.hex"), 2)...)
	c := Replay(t, bufs)
	err := c.Dump(func(Entry) error { return nil })
	if !errors.Is(err, unix.EBUSY) || !strings.Contains(err.Error(), "replay") {
		t.Fatalf("error reply gave %v", err)
	}
	CheckDump(t, c)
}

// TestAbandonedDumpBreaksConn: an error from the callback is returned as
// is, and the connection refuses the next request.
func TestAbandonedDumpBreaksConn(t *testing.T) {
	c := Replay(t, captured(t, "dump.hex"))
	stop := errors.New("stop")
	if err := c.Dump(func(Entry) error { return stop }); !errors.Is(err, stop) {
		t.Fatalf("dump returned %v", err)
	}
	if _, err := c.Stats(); !errors.Is(err, errAbandoned) {
		t.Fatalf("next request: %v", err)
	}
}

// TestDoneCarriesDumpError: netlink_dump() puts the dump's error in
// NLMSG_DONE.
func TestDoneCarriesDumpError(t *testing.T) {
	c := Replay(t, [][]byte{nlmsg(unix.NLMSG_DONE, 1, errnoBody(unix.ENOMEM))})
	if err := c.Dump(func(Entry) error { return nil }); !errors.Is(err, unix.ENOMEM) {
		t.Fatalf("dump returned %v", err)
	}
}

func TestMalformedReplies(t *testing.T) {
	entry := captured(t, "dump.hex")[0]
	l := binary.NativeEndian.Uint32(entry)
	for name, buf := range map[string][]byte{
		"message past the buffer": entry[:l-4],
		"message shorter than its header": func() []byte {
			b := bytes.Clone(entry)
			binary.NativeEndian.PutUint32(b, 8)
			return b
		}(),
		"attribute past the message": func() []byte {
			b := bytes.Clone(entry[:l])
			binary.NativeEndian.PutUint16(b[unix.NLMSG_HDRLEN+4:], 0xfff)
			return b
		}(),
		"error reply without errno": nlmsg(unix.NLMSG_ERROR, 1, nil),
	} {
		if err := Replay(t, [][]byte{buf}).Dump(func(Entry) error { return nil }); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

func nla(typ uint16, val ...byte) []byte {
	b := binary.NativeEndian.AppendUint16(nil, uint16(4+len(val)))
	b = binary.NativeEndian.AppendUint16(b, typ)
	b = append(b, val...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

func TestParseTupleErrors(t *testing.T) {
	const nested = unix.NLA_F_NESTED
	for name, attrs := range map[string][]byte{
		"address of 5 bytes": nla(ctaTupleOrig|nested, nla(ctaTupleIP|nested, nla(ctaIPv4Src, 1, 2, 3, 4, 5)...)...),
		"port of 1 byte":     nla(ctaTupleOrig|nested, nla(ctaTupleProto|nested, nla(ctaProtoSrcPort, 1)...)...),
		"empty protocol":     nla(ctaTupleOrig|nested, nla(ctaTupleProto|nested, nla(ctaProtoNum)...)...),
		"status of 2 bytes":  nla(ctaStatus, 0, 1),
	} {
		if _, err := parseEntry(attrs); err == nil {
			t.Errorf("%s: parsed", name)
		}
	}
	// ICMP has no ports: the entry has port 0.
	icmp := nla(ctaTupleOrig|nested, append(
		nla(ctaTupleIP|nested, append(nla(ctaIPv4Src, 10, 0, 0, 1), nla(ctaIPv4Dst, 10, 0, 0, 2)...)...),
		nla(ctaTupleProto|nested, nla(ctaProtoNum, unix.IPPROTO_ICMP)...)...)...)
	e, err := parseEntry(icmp)
	if err != nil || e.Src != netip.MustParseAddrPort("10.0.0.1:0") || e.Proto != unix.IPPROTO_ICMP {
		t.Fatalf("ICMP entry %+v, %v", e, err)
	}
}

// TestParseAllocatesNothing: parsing a dump allocates nothing per entry,
// so memory is bounded by the receive buffer whatever the table's size.
func TestParseAllocatesNothing(t *testing.T) {
	bufs := captured(t, "dump.hex")
	seq := binary.NativeEndian.Uint32(bufs[0][8:])
	n := 0
	h := entryHandler(func(e Entry) error {
		if e.Src.Addr().IsValid() {
			n++
		}
		return nil
	})
	allocs := testing.AllocsPerRun(100, func() {
		for _, b := range bufs {
			if _, _, err := parseReplies(b, seq, h); err != nil {
				t.Fatal(err)
			}
		}
	})
	if allocs != 0 || n == 0 {
		t.Fatalf("%v allocations per dump of %d entries", allocs, CaptureEntries())
	}
}

func TestStatsSubAndInUse(t *testing.T) {
	a := Stats{Entries: 5, Max: 9, Drop: 10, EarlyDrop: 3, ChainTooLong: 7, Found: 1}
	b := Stats{Entries: 8, Max: 9, Drop: 4, EarlyDrop: 3, ChainTooLong: 1, Found: 1}
	if d := a.Sub(b); d != (Stats{Entries: -3, Max: 9, Drop: 6, ChainTooLong: 6}) {
		t.Fatalf("%+v", d)
	}
	if (Stats{Max: 9, CPUs: 2}).inUse() || !(Stats{Invalid: 1}).inUse() || !(Stats{Entries: 1}).inUse() {
		t.Fatal("inUse")
	}
}

// fakeHost builds a /proc and a /run/netns whose namespace files are links
// to this process's namespace, the one namespace a test without privileges
// can reach.
func fakeHost(t *testing.T, pids map[string]string, named map[string]string) (proc, run string) {
	t.Helper()
	dir := t.TempDir()
	proc, run = filepath.Join(dir, "proc"), filepath.Join(dir, "netns")
	for pid, target := range pids {
		os.MkdirAll(filepath.Join(proc, pid, "ns"), 0o755)
		if err := os.Symlink(target, filepath.Join(proc, pid, "ns", "net")); err != nil {
			t.Fatal(err)
		}
	}
	os.MkdirAll(run, 0o755)
	for name, target := range named {
		var err error
		if target == "" {
			err = os.WriteFile(filepath.Join(run, name), nil, 0o644)
		} else {
			err = os.Symlink(target, filepath.Join(run, name))
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	return proc, run
}

func TestDiscover(t *testing.T) {
	const self = "/proc/self/ns/net"
	var st unix.Stat_t
	if err := unix.Stat(self, &st); err != nil {
		t.Fatal(err)
	}
	own := uint32(st.Ino)

	// PID 1 exited, 2 names the initial namespace; 17 shares it, 99 vanished;
	// "plain" is what a failed `ip netns add` leaves.
	proc, run := fakeHost(t, map[string]string{"2": self, "17": self, "99": "/nonexistent", "self": self},
		map[string]string{"edge": self, "plain": ""})
	all, initIno, err := discover(proc, run)
	want := []Namespace{{Inode: own, Path: filepath.Join(run, "edge"), Name: "edge"}}
	if err != nil || initIno != own || len(all) != 1 || all[0] != want[0] {
		t.Fatalf("discover = %+v, %d, %v; want %+v, %d", all, initIno, err, want, own)
	}

	// Unnamed: the lowest PID's path.
	proc, _ = fakeHost(t, map[string]string{"10": self, "9": self, "2": self}, nil)
	all, _, err = discover(proc, "/nonexistent")
	if err != nil || len(all) != 1 || all[0].Path != filepath.Join(proc, "2", "ns", "net") || all[0].Name != "" {
		t.Fatalf("discover = %+v, %v", all, err)
	}

	proc, _ = fakeHost(t, map[string]string{"3": self}, nil)
	if _, _, err := discover(proc, run); err == nil {
		t.Fatal("no PID 1 or 2: no error")
	}
}

// TestNamespaceGone: a path that no longer leads to the namespace is
// refused before anything is entered.
func TestNamespaceGone(t *testing.T) {
	var st unix.Stat_t
	if err := unix.Stat("/proc/self/ns/net", &st); err != nil {
		t.Fatal(err)
	}
	for _, ns := range []Namespace{
		{Inode: uint32(st.Ino) + 1, Path: "/proc/self/ns/net"},
		{Inode: uint32(st.Ino), Path: "/proc/999999999/ns/net"},
	} {
		if _, err := ns.Dial(); !errors.Is(err, ErrNamespaceGone) {
			t.Errorf("%+v: %v", ns, err)
		}
	}
}

// A shared scan is read once for the readers within its age, and afresh
// after it or when asked (Fresh); each reader gets its own copy to change.
func TestSharedScanIsReadOncePerAge(t *testing.T) {
	reads := 0
	s := NewSharedScan(time.Hour)
	s.read = func() ([]NamespaceStats, error) {
		reads++
		return []NamespaceStats{{Namespace: Namespace{Inode: 7}, InUse: true}}, nil
	}
	a, _ := s.Scan()
	a[0].Inode = 8
	b, err := s.Scan()
	if err != nil || reads != 1 || len(b) != 1 || b[0].Inode != 7 {
		t.Fatalf("second reader: %+v, %v after %d reads: want the first reading, unchanged, from one read", b, err, reads)
	}
	s.maxAge = 0
	if _, err := s.Scan(); err != nil || reads != 2 {
		t.Fatalf("past its age: %d reads, %v: want a second read", reads, err)
	}
	// Fresh reads whatever the age, and leaves its reading to Scan.
	s.maxAge = time.Hour
	if _, err := s.Fresh(); err != nil || reads != 3 {
		t.Fatalf("fresh: %d reads, %v: want a third read", reads, err)
	}
	if _, err := s.Scan(); err != nil || reads != 3 {
		t.Fatalf("after a fresh one: %d reads, %v: want its reading", reads, err)
	}
}
