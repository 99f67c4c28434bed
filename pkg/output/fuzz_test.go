package output

import (
	"bytes"
	"encoding/json"
	"testing"
	"time"

	"github.com/cttrace/cttrace/pkg/event"
)

// FuzzWriteEvent: any event the decoder can produce (reasons and details
// by kernel number, in range or not; any tuple; any namespace; any counts
// and times) is written as one line of valid JSON, in cttrace's schema and
// in ECS, and as text, never a panic.
func FuzzWriteEvent(f *testing.F) {
	f.Add(uint32(3), uint8(1), uint8(0), uint8(2), uint8(6), []byte("\x0a\x00\x00\x01"), []byte("\x0a\x00\x00\x02"), uint16(80), uint16(443), uint32(0x1a), int64(-40e6), uint8(3), true, uint64(1), uint32(4026531840))
	f.Add(uint32(1), uint8(0), uint8(1), uint8(10), uint8(58), bytes.Repeat([]byte{0xfe}, 16), []byte{}, uint16(0), uint16(0), uint32(0), int64(0), uint8(0), false, event.InodeID(4026532500), uint32(4026532500))
	f.Add(uint32(99), uint8(200), uint8(7), uint8(0), uint8(0), []byte{}, []byte{}, uint16(0), uint16(0), ^uint32(0), int64(1)<<62, uint8(255), true, ^uint64(0), ^uint32(0))
	f.Fuzz(func(t *testing.T, typ uint32, detail, conf, family, proto uint8, src, dst []byte, sport, dport uint16,
		status uint32, timeout int64, tcpState uint8, trigger bool, netnsID uint64, inode uint32) {
		var s, d [16]byte
		copy(s[:], src)
		copy(d[:], dst)
		e := &event.Event{
			Time: time.Unix(1700000000, 123), Reason: event.ReasonFromKernel(typ), Detail: event.DetailFromKernel(detail),
			Confidence: event.ConfidenceFromKernel(conf), CPU: 1, Netns: event.Netns{ID: netnsID, Inode: inode}, Count: 5, Max: 10,
			Status: status, TimeoutLeft: time.Duration(timeout), TCPState: tcpState,
		}
		if e.Reason == "" {
			return // Run counts these as bugs and never hands them to a writer
		}
		e.Flow, _ = event.TupleFromKernel(family, proto, s, d, sport, dport)
		if trigger {
			tr, _ := event.TupleFromKernel(family, proto, d, s, dport, sport)
			e.Trigger = &tr
		}
		var jb, eb, tb bytes.Buffer
		writeRecords(t, NewStream(&jb, JSON, StreamOptions{}), evRec(e))
		if line := bytes.TrimSuffix(jb.Bytes(), []byte("\n")); !json.Valid(line) || bytes.Contains(line, []byte("\n")) {
			t.Fatalf("not one line of JSON: %q", jb.Bytes())
		}
		writeRecords(t, NewStream(&eb, JSON, StreamOptions{ECS: true}), evRec(e))
		if line := bytes.TrimSuffix(eb.Bytes(), []byte("\n")); !json.Valid(line) || bytes.Contains(line, []byte("\n")) {
			t.Fatalf("not one line of ECS JSON: %q", eb.Bytes())
		}
		writeRecords(t, NewStream(&tb, Text, StreamOptions{}), evRec(e))
	})
}
