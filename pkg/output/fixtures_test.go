package output

import (
	"net/netip"
	"time"

	"github.com/cttrace/cttrace/pkg/event"
)

// Compile-time checks that both writers are Writers.
var (
	_ Writer = (*JSONWriter)(nil)
	_ Writer = (*TextWriter)(nil)
)

var t0 = time.Date(2025, 3, 14, 23, 41, 7, 123456789, time.UTC)

func tuple(proto uint8, src, dst string) event.Tuple {
	s, d := netip.MustParseAddrPort(src), netip.MustParseAddrPort(dst)
	fam := event.FamilyIPv4
	if s.Addr().Is6() {
		fam = event.FamilyIPv6
	}
	return event.Tuple{Family: fam, Proto: proto, Src: s, Dst: d}
}

// ipv4TableFull is the common case: a UDP flood refused by a full table.
func ipv4TableFull() *event.Event {
	return &event.Event{
		Time: t0, Reason: event.ReasonTableFull, Confidence: event.ConfidenceExact,
		CPU: 3, Netns: 4026532500, Count: 1024, Max: 1024,
		Flow: tuple(event.ProtoUDP, "127.1.0.1:40000", "127.0.0.1:9"),
	}
}

func ipv6InsertFailed() *event.Event {
	return &event.Event{
		Time: t0.Add(1500 * time.Microsecond), Reason: event.ReasonInsertFailed,
		Detail: event.DetailChainTooLong, Confidence: event.ConfidenceExact,
		CPU: 0, Netns: 4026531840, Zone: 7, Count: 65000, Max: 65536,
		Status: 1<<1 | 1<<3, TCPState: 1, TimeoutLeft: 120 * time.Second,
		Flow: tuple(event.ProtoTCP, "[2001:db8::1]:51000", "[2001:db8:ffff::2]:443"),
	}
}

func earlyDrop() *event.Event {
	trig := tuple(event.ProtoUDP, "10.0.0.7:5353", "10.0.0.9:53")
	return &event.Event{
		Time: t0.Add(2 * time.Millisecond), Reason: event.ReasonEarlyDrop,
		Detail: event.DetailEvictedForNewFlow, Confidence: event.ConfidenceExact,
		CPU: 1, Netns: 4026531840, Count: 262144, Max: 262144,
		Status: 1 << 3, TCPState: 1, TimeoutLeft: 87*time.Second + 250*time.Millisecond,
		Flow:    tuple(event.ProtoTCP, "10.0.0.5:33000", "10.0.0.9:80"),
		Trigger: &trig,
	}
}

func inferredTableFull() *event.Event {
	return &event.Event{
		Time: t0.Add(3 * time.Millisecond), Reason: event.ReasonTableFull,
		Confidence: event.ConfidenceInferred, CPU: 2, Netns: 4026531840, Max: 65536,
		Flow: tuple(event.ProtoICMP, "192.0.2.1:0", "198.51.100.255:0"),
	}
}

func gcEviction() *event.Event {
	return &event.Event{
		Time: t0.Add(4 * time.Millisecond), Reason: event.ReasonEarlyDrop,
		Detail: event.DetailEvictedByGC, Confidence: event.ConfidenceExact,
		CPU: 5, Netns: 4026531840, Count: 262100, Max: 262144,
		Status: 1<<1 | 1<<3, TimeoutLeft: -40 * time.Millisecond,
		Flow: tuple(event.ProtoSCTP, "[::ffff:10.1.1.1]:9899", "[::ffff:10.1.1.2]:9899"),
	}
}

func summary() Summary {
	return Summary{
		Time: t0.Add(time.Minute), Backend: "fentry",
		Events: map[event.Reason]uint64{
			event.ReasonTableFull: 2, event.ReasonAllocFailed: 0,
			event.ReasonEarlyDrop: 2, event.ReasonInsertFailed: 1,
		},
		Visible: event.Reasons(),
		Lost:    17, Duration: 60*time.Second + 503*time.Millisecond + 400*time.Microsecond,
	}
}

// everyReason gives one event of each reason, with each field set, so the
// schema test sees every value the JSON writer can produce.
func everyReason() []*event.Event {
	var evs []*event.Event
	for i, r := range event.Reasons() {
		e := earlyDrop()
		e.Reason = r
		e.Detail = event.Details()[i%len(event.Details())]
		if i%2 == 1 {
			e.Confidence = event.ConfidenceInferred
			e.Trigger = nil
		}
		evs = append(evs, e)
	}
	return append(evs, ipv4TableFull(), ipv6InsertFailed(), inferredTableFull(), gcEviction(),
		&event.Event{Reason: event.ReasonAllocFailed, Confidence: event.ConfidenceInferred})
}
