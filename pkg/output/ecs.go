package output

import (
	"bufio"
	"cmp"
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"os"
	"time"

	"github.com/cttrace/cttrace/pkg/event"
)

// ECSVersion is the Elastic Common Schema the ECS records follow.
const ECSVersion = "9.4.0"

// ecsWriter writes the records as Elastic Common Schema documents, one a
// line (docs/ecs.md has the mapping), for SIEMs that index ECS as is.
// cttrace's own fields go under cttrace.*. Records are built with
// encoding/json: the stream is bounded (--stream-limit), unlike the
// kernel side.
type ecsWriter struct {
	host string // this machine's: used unless the record names another
	w    *bufio.Writer
}

func newECS(w io.Writer) *ecsWriter {
	host, _ := os.Hostname()
	return &ecsWriter{host: host, w: bufio.NewWriterSize(w, 64<<10)}
}

type doc map[string]any

// Write writes one record as an ECS document.
func (e *ecsWriter) Write(r *event.Record) error {
	host := cmp.Or(r.Host, e.host)
	switch {
	case r.Event != nil:
		return e.event(host, r.Event)
	case r.Aggregate != nil:
		return e.aggregate(host, r.Aggregate)
	case r.Lost != nil:
		return e.lost(host, r.Lost)
	case r.Summary != nil:
		return e.summary(host, r.Summary)
	}
	return nil
}

func base(host string, t time.Time, kind, action string, category, typ []string, outcome string) doc {
	return doc{
		"@timestamp": t.UTC().Format(time.RFC3339Nano),
		"ecs":        doc{"version": ECSVersion},
		"event": doc{"kind": kind, "category": category, "type": typ, "action": action, "outcome": outcome,
			"module": "cttrace", "dataset": "cttrace.drops"},
		"observer": doc{"hostname": host, "type": "host", "product": "cttrace", "vendor": "cttrace"},
		"host":     doc{"name": host},
	}
}

// eventShape is what each reason means in ECS's categorisation.
var eventShape = map[event.Reason]struct {
	types   []string
	outcome string
	why     string
}{
	event.ReasonTableFull:     {[]string{"connection", "denied"}, "failure", "conntrack table full"},
	event.ReasonAllocFailed:   {[]string{"connection", "denied"}, "failure", "no memory for a conntrack entry"},
	event.ReasonInsertFailed:  {[]string{"connection", "denied"}, "failure", "conntrack entry could not be confirmed"},
	event.ReasonEarlyDrop:     {[]string{"connection", "end"}, "success", "conntrack entry evicted for a new flow"},
	event.ReasonGCEvict:       {[]string{"connection", "end"}, "success", "conntrack entry evicted by the garbage collector under pressure"},
	event.ReasonInsert:        {[]string{"connection", "start"}, "success", "conntrack entry confirmed"},
	event.ReasonDelete:        {[]string{"connection", "end"}, "success", "conntrack entry removed"},
	event.ReasonClashResolved: {[]string{"connection", "info"}, "success", "conntrack insert clash resolved"},
}

// networkEvent is the document of a reason's events, categorised as
// eventShape says.
func networkEvent(host string, at time.Time, r event.Reason) (doc, error) {
	shape, ok := eventShape[r]
	if !ok {
		return nil, fmt.Errorf("unknown reason %q", r)
	}
	d := base(host, at, "event", string(r), []string{"network"}, shape.types, shape.outcome)
	d["event"].(doc)["reason"] = shape.why
	return d, nil
}

// event writes one event. For an eviction the flow it made room for (the
// trigger) is the event's source and destination; the evicted entry is
// cttrace.victim.
func (e *ecsWriter) event(host string, ev *event.Event) error {
	d, err := networkEvent(host, ev.Time, ev.Reason)
	if err != nil {
		return fmt.Errorf("write ecs event: %w", err)
	}
	ct := doc{"schema": SchemaVersion, "reason": ev.Reason, "detail": ev.Detail, "confidence": ev.Confidence, "cpu": ev.CPU,
		"netns": ev.Netns.Inode, "zone": ev.Zone, "count": ev.Count, "max": ev.Max, "status": statusNames(ev.Status)}
	addNetnsID(ct, ev.Netns)
	flow := &ev.Flow
	if ev.Reason.IsEviction() {
		ct["victim"] = flowFields(&ev.Flow)
		flow = ev.Trigger // nil for the gc's evictions: no flow caused them
	}
	var related []string
	if flow != nil && flow.Valid() {
		for k, v := range networkFields(flow) {
			d[k] = v
		}
		related = append(related, flow.Src.Addr().String(), flow.Dst.Addr().String())
	}
	if ev.Reason.IsEviction() && ev.Flow.Valid() {
		related = append(related, ev.Flow.Src.Addr().String(), ev.Flow.Dst.Addr().String())
	}
	if len(related) > 0 {
		d["related"] = doc{"ip": unique(related)}
	}
	d["cttrace"] = ct
	return e.write(d)
}

// aggregate writes a count of events past the stream limit.
func (e *ecsWriter) aggregate(host string, a *event.Aggregate) error {
	d, err := networkEvent(host, a.Last, a.Reason)
	if err != nil {
		return fmt.Errorf("write ecs aggregate: %w", err)
	}
	ct := doc{"schema": SchemaVersion, "reason": a.Reason, "aggregate": doc{"count": a.Count, "interval_s": a.Interval.Seconds(),
		"sampling": a.Sampling}, "netns": a.Netns.Inode}
	addNetnsID(ct, a.Netns)
	if a.Source.IsValid() {
		d["source"] = doc{"ip": a.Source.String()}
		d["related"] = doc{"ip": []string{a.Source.String()}}
	}
	d["cttrace"] = ct
	return e.write(d)
}

// lost writes a loss report.
func (e *ecsWriter) lost(host string, l *event.Lost) error {
	d := base(host, l.Time, "event", "lost", []string{"host"}, []string{"error"}, "failure")
	d["event"].(doc)["reason"] = "the kernel side's ring buffer was full, or the kernel skipped a run of its programs"
	d["cttrace"] = doc{"schema": SchemaVersion, "lost": l.Lost, "lost_total": l.Total}
	return e.write(d)
}

// summary writes the run's totals.
func (e *ecsWriter) summary(host string, s *event.Summary) error {
	d := base(host, s.Time, "metric", "summary", []string{"network"}, []string{"info"}, "success")
	events := doc{}
	for _, r := range event.Reasons() {
		events[string(r)] = s.Events.Of(r)
	}
	d["cttrace"] = doc{"schema": SchemaVersion, "backend": s.Backend, "events": events, "visible": s.Visible, "lost": s.Lost,
		"aggregated": s.Aggregated, "duration_s": s.Duration.Seconds()}
	return e.write(d)
}

// Flush writes out the buffered records.
func (e *ecsWriter) Flush() error { return e.w.Flush() }

func (e *ecsWriter) write(d doc) error {
	b, err := json.Marshal(d)
	if err != nil {
		return fmt.Errorf("encode ecs: %w", err)
	}
	_, err = e.w.Write(append(b, '\n'))
	return err
}

// networkFields are source.*, destination.* and network.* for a flow.
func networkFields(t *event.Tuple) doc {
	src, dst := doc{"ip": t.Src.Addr().String()}, doc{"ip": t.Dst.Addr().String()}
	if t.HasPorts() {
		src["port"], dst["port"] = t.Src.Port(), t.Dst.Port()
	}
	nw := doc{"transport": t.ProtoName(), "iana_number": fmt.Sprint(t.Proto), "type": t.Family}
	if id, ok := CommunityID(t); ok {
		nw["community_id"] = id
	}
	return doc{"source": src, "destination": dst, "network": nw}
}

// flowFields is a flow under cttrace's own names (the victim's).
func flowFields(t *event.Tuple) doc {
	if !t.Valid() {
		return nil
	}
	d := doc{"family": t.Family, "proto": t.ProtoName(), "src": t.Src.Addr().String(), "dst": t.Dst.Addr().String()}
	if t.HasPorts() {
		d["sport"], d["dport"] = t.Src.Port(), t.Dst.Port()
	}
	return d
}

func statusNames(bits uint32) []string {
	out := []string{}
	for bit := 0; bits != 0; bit, bits = bit+1, bits>>1 {
		if bits&1 != 0 {
			out = append(out, event.StatusBitName(bit))
		}
	}
	return out
}

func unique(ss []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, s := range ss {
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}

// CommunityID is the flow's Community ID (v1, seed 0: github.com/corelight/
// community-id-spec), which SIEMs use to join one flow's records across
// tools: "1:" and the base64 SHA-1 of the seed, the endpoints in order
// (the lower address and port first), the protocol, a zero byte and the
// ports. Only for protocols with ports (ICMP's type and code are not in
// conntrack's tuple as such). Written here: it is twenty lines, and no Go
// implementation is widely kept.
func CommunityID(t *event.Tuple) (string, bool) {
	if !t.Valid() || !t.HasPorts() {
		return "", false
	}
	a, b := t.Src.Addr(), t.Dst.Addr()
	pa, pb := t.Src.Port(), t.Dst.Port()
	if c := a.Compare(b); c > 0 || c == 0 && pa > pb {
		a, b, pa, pb = b, a, pb, pa
	}
	h := sha1.New()
	var buf [2]byte
	h.Write(buf[:]) // seed 0
	h.Write(addrBytes(a))
	h.Write(addrBytes(b))
	h.Write([]byte{t.Proto, 0})
	binary.BigEndian.PutUint16(buf[:], pa)
	h.Write(buf[:])
	binary.BigEndian.PutUint16(buf[:], pb)
	h.Write(buf[:])
	return "1:" + base64.StdEncoding.EncodeToString(h.Sum(nil)), true
}

func addrBytes(a netip.Addr) []byte {
	if a.Is4() {
		b := a.As4()
		return b[:]
	}
	b := a.As16()
	return b[:]
}

// addNetnsID adds the namespace's netns cookie as cttrace.netns_id, where
// the kernel gave one: the identity that stands in for it elsewhere
// (2^63 + the inode number) does not fit Elasticsearch's long.
func addNetnsID(ct doc, n event.Netns) {
	if c := n.Cookie(); c != 0 {
		ct["netns_id"] = c
	}
}
