package probe

import (
	"testing"
	"time"
	"unsafe"

	"github.com/cttrace/cttrace/pkg/event"
)

// FuzzDecodeEvent: a ring-buffer record of any content (a kernel side of
// another version, a corrupted page) decodes to an event without a panic,
// with a reason that is one of cttrace's or none (which Run counts as a
// bug rather than prints). The seeds are an early_drop with its trigger, an
// IPv6 table_full, and the zero record.
func FuzzDecodeEvent(f *testing.F) {
	size := int(unsafe.Sizeof(cttraceCtEvent{}))
	f.Add(make([]byte, size))
	for _, k := range []cttraceCtEvent{
		{TsBootNs: 1e9, Type: uint32(cttraceCtEventTypeCT_EV_EARLY_DROP), Detail: uint8(cttraceCtDetailCT_DETAIL_EVICT_ALLOC), Netns: 4026531840,
			Count: 10, Max: 10, TimeoutLeft: 300, ProtoState: 3,
			Tuple:   cttraceCtTuple{Family: 2, Proto: 6, Saddr: [16]byte{10, 0, 0, 1}, Daddr: [16]byte{10, 0, 0, 2}, Sport: 0x5000, Dport: 0x1600},
			Trigger: cttraceCtTuple{Family: 2, Proto: 17, Saddr: [16]byte{10, 0, 0, 3}, Daddr: [16]byte{10, 0, 0, 2}}},
		{Type: uint32(cttraceCtEventTypeCT_EV_TABLE_FULL), Confidence: 1,
			Tuple: cttraceCtTuple{Family: 10, Proto: 58, Saddr: [16]byte{0x20, 0x01, 0x0d, 0xb8, 15: 1}}},
	} {
		f.Add(unsafe.Slice((*byte)(unsafe.Pointer(&k)), size))
	}
	clock, err := event.NewClock()
	if err != nil {
		f.Fatal(err)
	}
	r := &Reader{clock: clock, jiffy: 4 * time.Millisecond}
	f.Fuzz(func(t *testing.T, raw []byte) {
		if len(raw) < size {
			return // Read refuses short records before decoding
		}
		var k cttraceCtEvent
		copy(unsafe.Slice((*byte)(unsafe.Pointer(&k)), size), raw)
		var ev event.Event
		r.decode(&k, &ev)
		if ev.Reason != "" && !ev.Reason.Valid() {
			t.Fatalf("type %d decoded to reason %q", k.Type, ev.Reason)
		}
		_ = ev.Flow.String()
		if ev.Trigger != nil {
			_ = ev.Trigger.String()
		}
	})
}
