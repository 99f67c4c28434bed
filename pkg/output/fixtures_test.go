package output

import (
	"net/netip"
	"time"

	"github.com/cttrace/cttrace/pkg/event"
	"github.com/cttrace/cttrace/pkg/probe"
	"github.com/cttrace/cttrace/pkg/status"
	"github.com/cttrace/cttrace/pkg/top"
)

// Compile-time checks that every view's writer is a Writer of its values.
var (
	_ Writer[*event.Record]  = (*jsonWriter)(nil)
	_ Writer[*event.Record]  = (*textWriter)(nil)
	_ Writer[*event.Record]  = (*ecsWriter)(nil)
	_ Writer[*event.Record]  = (*Tee)(nil)
	_ Writer[*event.Record]  = Discard
	_ Writer[*top.Snapshot]  = NewTop(nil, Text)
	_ Writer[*status.Report] = NewStatus(nil, JSON)
	_ Writer[*probe.Report]  = NewFeatures(nil, JSON)
)

var t0 = time.Date(2025, 3, 14, 23, 41, 7, 123456789, time.UTC)

// The namespaces of the fixtures, as a kernel with netns cookies (5.14+)
// names them: the initial namespace, whose cookie is the first the kernel
// gives, and a pod's; and the pod's as a kernel without cookies names it,
// by its inode number (netns_id 2^63 + 4026532500).
var (
	hostNetns  = event.Netns{ID: 1, Inode: 4026531840}
	podNetns   = event.Netns{ID: 4097, Inode: 4026532500}
	inodeNetns = event.NetnsOf(4026532500)
)

// testHost is the host the tests' JSON records name (Record.Host), in
// place of the machine's.
const testHost = "cttrace-test"

func tuple(proto uint8, src, dst string) event.Tuple {
	s, d := netip.MustParseAddrPort(src), netip.MustParseAddrPort(dst)
	fam := event.FamilyIPv4
	if s.Addr().Is6() {
		fam = event.FamilyIPv6
	}
	return event.Tuple{Family: fam, Proto: proto, Src: s, Dst: d}
}

// The records of each kind, for the writers' Write.

func evRec(e *event.Event) *event.Record      { return &event.Record{Event: e} }
func aggRec(a *event.Aggregate) *event.Record { return &event.Record{Aggregate: a} }
func sumRec(s *event.Summary) *event.Record   { return &event.Record{Summary: s} }
func lostRec(n, total uint64, at time.Time) *event.Record {
	return &event.Record{Lost: &event.Lost{Time: at, Lost: n, Total: total}}
}

// evRecs wraps events as records.
func evRecs(evs []*event.Event) []*event.Record {
	var out []*event.Record
	for _, e := range evs {
		out = append(out, evRec(e))
	}
	return out
}

// counts builds event.Counts from a map, for readable fixtures.
func counts(m map[event.Reason]uint64) event.Counts {
	var c event.Counts
	for r, n := range m {
		c.Add(r, n)
	}
	return c
}

// ipv4TableFull is the common case: a UDP flood refused by a full table.
func ipv4TableFull() *event.Event {
	return &event.Event{
		Time: t0, Reason: event.ReasonTableFull, Confidence: event.ConfidenceExact,
		CPU: 3, Netns: podNetns, Count: 1024, Max: 1024,
		Flow: tuple(event.ProtoUDP, "127.1.0.1:40000", "127.0.0.1:9"),
	}
}

func ipv6InsertFailed() *event.Event {
	return &event.Event{
		Time: t0.Add(1500 * time.Microsecond), Reason: event.ReasonInsertFailed,
		Detail: event.DetailChainTooLong, Confidence: event.ConfidenceExact,
		CPU: 0, Netns: hostNetns, Zone: 7, Count: 65000, Max: 65536,
		Status: 1<<1 | 1<<3, TCPState: 1, TimeoutLeft: 120 * time.Second,
		Flow: tuple(event.ProtoTCP, "[2001:db8::1]:51000", "[2001:db8:ffff::2]:443"),
	}
}

func earlyDrop() *event.Event {
	trig := tuple(event.ProtoUDP, "10.0.0.7:5353", "10.0.0.9:53")
	return &event.Event{
		Time: t0.Add(2 * time.Millisecond), Reason: event.ReasonEarlyDrop,
		Detail: event.DetailEvictedForNewFlow, Confidence: event.ConfidenceExact,
		CPU: 1, Netns: hostNetns, Count: 262144, Max: 262144,
		Status: 1 << 3, TCPState: 1, TimeoutLeft: 87*time.Second + 250*time.Millisecond,
		Flow:    tuple(event.ProtoTCP, "10.0.0.5:33000", "10.0.0.9:80"),
		Trigger: &trig,
	}
}

func inferredTableFull() *event.Event {
	return &event.Event{
		Time: t0.Add(3 * time.Millisecond), Reason: event.ReasonTableFull,
		Confidence: event.ConfidenceInferred, CPU: 2, Netns: hostNetns, Max: 65536,
		Flow: tuple(event.ProtoICMP, "192.0.2.1:0", "198.51.100.255:0"),
	}
}

func gcEviction() *event.Event {
	return &event.Event{
		Time: t0.Add(4 * time.Millisecond), Reason: event.ReasonEarlyDrop,
		Detail: event.DetailEvictedByGC, Confidence: event.ConfidenceExact,
		CPU: 5, Netns: hostNetns, Count: 262100, Max: 262144,
		Status: 1<<1 | 1<<3, TimeoutLeft: -40 * time.Millisecond,
		Flow: tuple(event.ProtoSCTP, "[::ffff:10.1.1.1]:9899", "[::ffff:10.1.1.2]:9899"),
	}
}

// summary is a fentry run's: every reason visible, only drops and
// early_drop counted.
func summary() *event.Summary {
	return &event.Summary{
		Time: t0.Add(time.Minute), Backend: "fentry",
		Events: counts(map[event.Reason]uint64{
			event.ReasonTableFull: 2, event.ReasonAllocFailed: 0,
			event.ReasonEarlyDrop: 2, event.ReasonInsertFailed: 1,
		}),
		Visible: event.Reasons(),
		Lost:    17, Duration: 60*time.Second + 503*time.Millisecond + 400*time.Microsecond,
	}
}

func aggregate() *event.Aggregate {
	return &event.Aggregate{Time: t0, Interval: time.Second, Reason: event.ReasonTableFull, Netns: hostNetns,
		Source: netip.MustParseAddr("203.0.113.7"), Count: 4021, Last: t0.Add(-time.Millisecond), Sampling: 1}
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
	noCookie := ipv4TableFull()
	noCookie.Netns = inodeNetns
	return append(evs, ipv4TableFull(), ipv6InsertFailed(), inferredTableFull(), gcEviction(), noCookie,
		&event.Event{Reason: event.ReasonAllocFailed, Confidence: event.ConfidenceInferred})
}

// everyRecord is a stream with every kind of record the writers take:
// events of every reason (with and without flow and trigger, IPv4 and
// IPv6, namespaces named by cookie and by inode number), aggregates named
// (IPv4, IPv4-mapped, IPv6, by cookie and by inode number) and "other",
// losses, and summaries, an empty one among them.
func everyRecord() []*event.Record {
	recs := evRecs(everyReason())
	v6 := aggregate()
	v6.Source, v6.Sampling = netip.MustParseAddr("2001:db8::1"), 1024
	mapped := aggregate()
	mapped.Source, mapped.Interval = netip.MustParseAddr("::ffff:198.51.100.9"), 1500*time.Millisecond
	noCookie := aggregate()
	noCookie.Netns = inodeNetns
	other := &event.Aggregate{Time: t0, Interval: time.Second, Reason: event.ReasonTableFull, Count: 250000, Sampling: 64}
	tracepoint := summary()
	tracepoint.Backend, tracepoint.Visible = "tracepoint", []event.Reason{event.ReasonTableFull, event.ReasonInsertFailed}
	tracepoint.Aggregated = 250000
	recs = append(recs,
		aggRec(aggregate()), aggRec(v6), aggRec(mapped), aggRec(noCookie), aggRec(other),
		aggRec(&event.Aggregate{Time: t0, Reason: event.ReasonInsertFailed, Count: 1, Sampling: 1}),
		lostRec(0, 0, time.Time{}), lostRec(5, 12, t0), lostRec(3, 1<<40, t0),
		sumRec(&event.Summary{}), sumRec(summary()), sumRec(tracepoint))
	return recs
}
