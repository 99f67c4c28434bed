package table

import (
	"encoding/binary"
	"testing"
)

// Every byte cttrace reads from ctnetlink goes through parseReplies, then
// parseEntry (dumps) or the stats parsers. Whatever the kernel (or a
// corrupted buffer) sends, they return an error or a result, never panic.
// The seeds are the captured dump and stats buffers of testdata and their
// messages' bodies; `go test` runs them as regression tests, `go test
// -fuzz FuzzCtnetlinkReplies ./pkg/table` explores further.
func FuzzCtnetlinkReplies(f *testing.F) {
	for _, name := range []string{"dump.hex", "stats.hex"} {
		for _, b := range ReadCapture(f, "testdata/"+name) {
			f.Add(b, seqOf(b))
		}
	}
	f.Add([]byte{}, uint32(0))
	f.Add(make([]byte, 16), uint32(0))
	f.Fuzz(func(t *testing.T, b []byte, seq uint32) {
		var s Stats
		parseReplies(b, seq, func(_ uint16, attrs []byte) error {
			parseEntry(attrs)
			addCPUStats(&s, attrs)
			return parseGlobalStats(&s, attrs)
		})
	})
}

// FuzzCtnetlinkAttributes goes straight at the attribute parsers, which
// see most of the structure (nested tuples, lengths, addresses).
func FuzzCtnetlinkAttributes(f *testing.F) {
	for _, b := range ReadCapture(f, "testdata/dump.hex") {
		forEachBody(b, func(body []byte) { f.Add(body) })
	}
	f.Add([]byte{4, 0, 1, 0})
	f.Add([]byte{8, 0, 1, 0, 4, 0, 1, 0})
	f.Fuzz(func(t *testing.T, attrs []byte) {
		if e, err := parseEntry(attrs); err == nil {
			_ = e.Src.String() + e.Dst.String()
		}
		var s Stats
		addCPUStats(&s, attrs)
		parseGlobalStats(&s, attrs)
	})
}

// seqOf is the sequence number of the first message in b.
func seqOf(b []byte) uint32 {
	if len(b) < 12 {
		return 0
	}
	return binary.NativeEndian.Uint32(b[8:12])
}

// forEachBody calls fn with the attributes of each message in b (past the
// netlink and nfgenmsg headers).
func forEachBody(b []byte, fn func([]byte)) {
	for len(b) >= 20 {
		l := int(binary.NativeEndian.Uint32(b))
		if l < 20 || l > len(b) {
			return
		}
		fn(b[20:l])
		b = b[min(nlAlign(l), len(b)):]
	}
}
