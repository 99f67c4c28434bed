// Package metrics is where the path of one event ends for `cttrace serve`:
// the Prometheus view of what the session counted (per namespace, by
// reason and detail), of top-sources' ranking and of the tables. Follow
// reads them every interval (follow.go), Handler serves them (http.go);
// the exporter keeps the latest reading (Update, from one goroutine) and
// turns it into metrics when scraped (Collect), so every scrape shows
// exactly the current set of series: a source that left the top is gone at
// the next scrape, never left stale.
//
// Names follow Prometheus' conventions (base units, _total for counters)
// and sit beside node_exporter's node_nf_conntrack_*: the table figures are
// cttrace_nf_conntrack_entries and cttrace_nf_conntrack_entries_limit, per
// namespace (node_exporter sees only its own).
package metrics

import (
	"cmp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/cttrace/cttrace/pkg/event"
	"github.com/cttrace/cttrace/pkg/session"
	"github.com/cttrace/cttrace/pkg/table"
	"github.com/cttrace/cttrace/pkg/top"
)

// Reading is one refresh of what the exporter shows.
type Reading struct {
	Time time.Time
	// Namespaces are the kernel's counts since attach, per namespace, by
	// reason and detail (exact: the per-namespace totals of the BPF side).
	Namespaces map[event.Netns]event.NamespaceCounts
	// Snapshot ranks the sources (top-sources' ranking).
	Snapshot *top.Snapshot
	Tables   []table.NamespaceStats
	Buckets  int64
	Lost     uint64
	// Mode is what the kernel side runs (session.Mode: healthy, or
	// pressure with the per-flow hooks) and ModeSwitches how often it
	// switched; "" when it cannot say.
	Mode         session.Mode
	ModeSwitches uint64
}

// Exporter is a prometheus.Collector of the latest Reading.
type Exporter struct {
	backend string
	netns   map[uint32]bool // the namespaces shown (nil: all)
	topN    int

	// fileFailures reads the events file's failed writes; nil without one.
	fileFailures func() uint64

	mu      sync.Mutex
	reading *Reading
	updated time.Time         // when reading was handed over: the reading loop's pulse
	errors  map[string]uint64 // failed reads of the kernel side, by what was read
}

// New returns an exporter for a session on backend, showing at most topN
// sources per namespace (0: no per-source series), of the namespaces of those inode numbers (nil:
// every namespace).
func New(backend string, topN int, netns map[uint32]bool) *Exporter {
	return &Exporter{backend: backend, topN: topN, netns: netns, errors: map[string]uint64{}}
}

// Update replaces the reading shown.
func (e *Exporter) Update(r *Reading) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.reading, e.updated = r, time.Now()
}

// WatchEventsFile exports, as a counter, the failed writes to serve's
// --events-file that failures reads: a full disk shows on a dashboard, not
// only in a log. Call it before the exporter is registered.
func (e *Exporter) WatchEventsFile(failures func() uint64) { e.fileFailures = failures }

// Failed counts a failed read of the kernel side (what names it: "sources",
// "tables"...), so that it shows in the metrics, not only in a log.
func (e *Exporter) Failed(what string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.errors[what]++
}

// Healthy says whether a reading was handed over within maxAge of now. It
// measures the reading loop, not the reading's own timestamp: a reading that
// started on a late tick of a loaded host is still a sign of life.
func (e *Exporter) Healthy(now time.Time, maxAge time.Duration) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.reading != nil && now.Sub(e.updated) <= maxAge
}

var (
	ns = []string{"netns"}

	eventsDesc = prometheus.NewDesc("cttrace_events_total",
		"Conntrack events seen by cttrace's probes since they were attached, by namespace, reason and detail (docs/drops.md; detail=\"\" where the kernel gives none) and confidence (inferred: the tracepoint backend's deductions).",
		[]string{"netns", "reason", "detail", "confidence"}, nil)
	lostDesc = prometheus.NewDesc("cttrace_lost_events_total",
		"Events the kernel side could not deliver to cttrace (its ring buffer was full, or the kernel skipped a run of its programs); counted, never silently lost.", nil, nil)
	backendDesc = prometheus.NewDesc("cttrace_backend_info",
		"The probe backend in use (fentry, kprobe or tracepoint), as a label.", []string{"backend"}, nil)
	errorsDesc = prometheus.NewDesc("cttrace_read_errors_total",
		"Failed reads of the kernel side (what: sources, tables...), also logged on stderr.", []string{"what"}, nil)
	fileErrorsDesc = prometheus.NewDesc("cttrace_events_file_write_errors_total",
		"Records that could not be written to --events-file (full disk, removed directory...); they never stop the probes.", nil, nil)
	readingDesc = prometheus.NewDesc("cttrace_last_reading_timestamp_seconds",
		"When the figures shown were read.", nil, nil)
	entriesDesc = prometheus.NewDesc("cttrace_nf_conntrack_entries",
		"Entries in the namespace's conntrack table (as node_nf_conntrack_entries, per namespace).", ns, nil)
	limitDesc = prometheus.NewDesc("cttrace_nf_conntrack_entries_limit",
		"nf_conntrack_max, the limit each namespace's entries are compared with (as node_nf_conntrack_entries_limit).", ns, nil)
	bucketsDesc = prometheus.NewDesc("cttrace_nf_conntrack_buckets",
		"nf_conntrack_buckets: the size of the host's one conntrack hash table.", nil, nil)
	modeDesc = prometheus.NewDesc("cttrace_hooks_mode",
		"What the kernel side runs: healthy (only the hooks a table at its max calls; refusals without sources) or pressure (every hook, refusals under their sources); 1 for the current mode.", []string{"mode"}, nil)
	modeSwitchesDesc = prometheus.NewDesc("cttrace_hooks_mode_switches_total",
		"Switches between the healthy and pressure modes (serve --hooks on-pressure).", nil, nil)
	sourceDropsDesc = prometheus.NewDesc("cttrace_source_drops_total",
		"Packets refused (table_full, alloc_failed, insert_failed) per source, for the namespace's top sources by drops; source=\"other\" holds the rest, so the series of a namespace add up to its drops.",
		[]string{"netns", "source"}, nil)
	sourceEntriesDesc = prometheus.NewDesc("cttrace_source_entries",
		"Entries the source holds in the table now, for the same top sources.", []string{"netns", "source"}, nil)
)

// kernelCounters are the kernel's own per-namespace counters (conntrack -S),
// named as node_exporter's node_nf_conntrack_stat_*.
var kernelCounters = []struct {
	name, help string
	value      func(*table.Stats) int64
}{
	{"found", "Searches that found an entry.", func(s *table.Stats) int64 { return s.Found }},
	{"invalid", "Packets conntrack could not track.", func(s *table.Stats) int64 { return s.Invalid }},
	{"insert", "Entries inserted (on recent kernels, only by ctnetlink).", func(s *table.Stats) int64 { return s.Insert }},
	{"insert_failed", "Entries that could not be inserted; their packets were dropped.", func(s *table.Stats) int64 { return s.InsertFailed }},
	{"drop", "Packets dropped because a new entry could not be allocated (table full).", func(s *table.Stats) int64 { return s.Drop }},
	{"early_drop", "Entries evicted to make room for new ones.", func(s *table.Stats) int64 { return s.EarlyDrop }},
	{"icmp_error", "Packets with ICMP errors conntrack could not match.", func(s *table.Stats) int64 { return s.Error }},
	{"search_restart", "Table searches restarted after a concurrent resize.", func(s *table.Stats) int64 { return s.SearchRestart }},
	{"clash_resolve", "Insert clashes resolved without a drop.", func(s *table.Stats) int64 { return s.ClashResolve }},
	{"chaintoolong", "Inserts refused because a hash chain was too long.", func(s *table.Stats) int64 { return s.ChainTooLong }},
}

var kernelCounterDescs = func() []*prometheus.Desc {
	var out []*prometheus.Desc
	for _, c := range kernelCounters {
		out = append(out, prometheus.NewDesc("cttrace_nf_conntrack_stat_"+c.name+"_total",
			"The kernel's per-namespace conntrack counter "+c.name+" (conntrack -S): "+c.help, ns, nil))
	}
	return out
}()

// Describe sends every metric's description.
func (e *Exporter) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{eventsDesc, lostDesc, backendDesc, errorsDesc, fileErrorsDesc, readingDesc, entriesDesc,
		limitDesc, bucketsDesc, sourceDropsDesc, sourceEntriesDesc, modeDesc, modeSwitchesDesc} {
		ch <- d
	}
	for _, d := range kernelCounterDescs {
		ch <- d
	}
}

// Collect sends the latest reading's metrics.
func (e *Exporter) Collect(ch chan<- prometheus.Metric) {
	e.mu.Lock()
	r := e.reading
	errs := make(map[string]uint64, len(e.errors))
	for k, v := range e.errors {
		errs[k] = v
	}
	e.mu.Unlock()

	ch <- prometheus.MustNewConstMetric(backendDesc, prometheus.GaugeValue, 1, e.backend)
	for what, n := range errs {
		ch <- prometheus.MustNewConstMetric(errorsDesc, prometheus.CounterValue, float64(n), what)
	}
	if e.fileFailures != nil {
		ch <- prometheus.MustNewConstMetric(fileErrorsDesc, prometheus.CounterValue, float64(e.fileFailures()))
	}
	if r == nil {
		return
	}
	ch <- prometheus.MustNewConstMetric(readingDesc, prometheus.GaugeValue, float64(r.Time.UnixNano())/1e9)
	ch <- prometheus.MustNewConstMetric(lostDesc, prometheus.CounterValue, float64(r.Lost))
	ch <- prometheus.MustNewConstMetric(bucketsDesc, prometheus.GaugeValue, float64(r.Buckets))
	if r.Mode != "" {
		for _, m := range []session.Mode{session.ModeHealthy, session.ModePressure} {
			ch <- prometheus.MustNewConstMetric(modeDesc, prometheus.GaugeValue, boolValue(m == r.Mode), string(m))
		}
		ch <- prometheus.MustNewConstMetric(modeSwitchesDesc, prometheus.CounterValue, float64(r.ModeSwitches))
	}
	for netns, c := range r.Namespaces {
		e.collectEvents(ch, netns.Inode, &c)
	}
	for i := range r.Tables {
		t := &r.Tables[i]
		if t.Err != nil {
			continue
		}
		n := label(t.Inode)
		ch <- prometheus.MustNewConstMetric(entriesDesc, prometheus.GaugeValue, float64(t.Stats.Entries), n)
		ch <- prometheus.MustNewConstMetric(limitDesc, prometheus.GaugeValue, float64(t.Stats.Max), n)
		for j, c := range kernelCounters {
			ch <- prometheus.MustNewConstMetric(kernelCounterDescs[j], prometheus.CounterValue, float64(c.value(&t.Stats)), n)
		}
	}
	if r.Snapshot != nil {
		e.collectSources(ch, r.Snapshot)
	}
}

// collectEvents sends a namespace's events: one series per reason and
// detail seen, and the reason's events without a detail (its total less
// its details) under detail="". Each is a counter: an event counts in its
// reason's total and in at most one detail of that reason.
func (e *Exporter) collectEvents(ch chan<- prometheus.Metric, netns uint32, c *event.NamespaceCounts) {
	n := label(netns)
	without := c.Events
	for _, d := range event.Details()[1:] {
		count := c.Details.Of(d)
		if count == 0 {
			continue
		}
		r := d.Reason()
		ch <- prometheus.MustNewConstMetric(eventsDesc, prometheus.CounterValue, float64(count), n, string(r), string(d), e.confidence(r))
		var of event.Counts
		of.Add(r, count)
		without = without.Minus(of)
	}
	for _, r := range event.Reasons() { // even at 0: a series that stays
		ch <- prometheus.MustNewConstMetric(eventsDesc, prometheus.CounterValue, float64(without.Of(r)), n, string(r), "", e.confidence(r))
	}
}

// collectSources sends each namespace's top sources by drops, at most topN,
// and its "other": the namespace's drops that no series shown holds. The
// series are at most (topN + 1) × namespaces, whatever the sources.
func (e *Exporter) collectSources(ch chan<- prometheus.Metric, s *top.Snapshot) {
	if e.topN == 0 {
		return // no per-source series (serve --metrics-top 0)
	}
	shown := map[event.Netns]int{}
	inRows := map[event.Netns]uint64{}
	rows := slices.Clone(s.Rows)
	slices.SortStableFunc(rows, func(a, b top.Row) int { return cmp.Compare(b.Total.Drops(), a.Total.Drops()) })
	for _, r := range rows {
		if !r.Prefix.IsValid() || shown[r.Netns] >= e.topN || r.Total.Drops() == 0 {
			continue
		}
		shown[r.Netns]++
		inRows[r.Netns] += r.Total.Drops()
		n, src := label(r.Netns.Inode), r.Prefix.String()
		ch <- prometheus.MustNewConstMetric(sourceDropsDesc, prometheus.CounterValue, float64(r.Total.Drops()), n, src)
		ch <- prometheus.MustNewConstMetric(sourceEntriesDesc, prometheus.GaugeValue, float64(max(r.Total.Held, 0)), n, src)
	}
	for _, nsp := range s.Namespaces {
		drops := nsp.Total.Drops()
		other := drops - min(drops, inRows[nsp.Netns])
		ch <- prometheus.MustNewConstMetric(sourceDropsDesc, prometheus.CounterValue, float64(other), label(nsp.Netns.Inode), "other")
	}
}

// confidence is how the backend knows an event's reason.
func (e *Exporter) confidence(r event.Reason) string {
	if e.backend == "tracepoint" {
		return string(event.ConfidenceInferred)
	}
	return string(event.ConfidenceExact)
}

func boolValue(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

func label(netns uint32) string { return strconv.FormatUint(uint64(netns), 10) }

// Names lists every metric the exporter can export, for the checks of the
// dashboard and alert rules that use them.
func Names() []string {
	ch := make(chan *prometheus.Desc, 32)
	go func() {
		(&Exporter{}).Describe(ch)
		close(ch)
	}()
	var out []string
	for d := range ch {
		out = append(out, descName(d))
	}
	return out
}

// descName reads a Desc's fully-qualified name (its String form is
// `Desc{fqName: "name", ...}`: client_golang exports no accessor).
func descName(d *prometheus.Desc) string {
	s := d.String()
	const key = `fqName: "`
	i := strings.Index(s, key)
	if i < 0 {
		return ""
	}
	s = s[i+len(key):]
	return s[:strings.IndexByte(s, '"')]
}
