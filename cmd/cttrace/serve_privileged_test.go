//go:build privileged

package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/cttrace/cttrace/internal/ctlab"
	"github.com/cttrace/cttrace/internal/testbed"
	"github.com/cttrace/cttrace/pkg/event"
	"github.com/cttrace/cttrace/pkg/output"
	"github.com/cttrace/cttrace/pkg/probe"
)

// scrape reads /metrics and parses it.
func scrape(t *testing.T, addr string) (string, map[string]*dto.MetricFamily) {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("scrape: %d, %v", resp.StatusCode, err)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(strings.NewReader(string(b)))
	if err != nil {
		t.Fatalf("parse the scrape: %v", err)
	}
	return string(b), families
}

// labelled returns family's series whose labels include want, by the
// value of label key.
func labelled(f *dto.MetricFamily, want map[string]string, key string) map[string]float64 {
	out := map[string]float64{}
	if f == nil {
		return out
	}
	for _, m := range f.Metric {
		labels := map[string]string{}
		for _, l := range m.Label {
			labels[l.GetName()] = l.GetValue()
		}
		match := true
		for k, v := range want {
			match = match && labels[k] == v
		}
		if match {
			out[labels[key]] = m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	return out
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// waitScrape scrapes until done accepts the metrics.
func waitScrape(t *testing.T, addr, what string, done func(map[string]*dto.MetricFamily) bool) (string, map[string]*dto.MetricFamily) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		text, fams := scrape(t, addr)
		if done(fams) {
			return text, fams
		}
		if time.Now().After(deadline) {
			t.Fatalf("no scrape with %s within a minute:\n%s", what, text)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// `cttrace serve` during floods in a test namespace: its counters are the
// kernel's, the per-source series stay within --metrics-top + 1 a
// namespace under 100,000 spoofed sources, a source that leaves the top
// leaves the metrics, the output passes Prometheus' linter (promtool check
// metrics), and SIGTERM ends it cleanly.
func TestServe(t *testing.T) {
	lab := fullTable(t, 32)
	addr := freeAddr(t)
	r := startCttrace(t, nil, "serve", "--listen", addr, "--metrics-top", "3", "--interval", "200ms")
	netns := strconv.FormatUint(uint64(lab.Inode()), 10)
	before, err := lab.Stats()
	if err != nil {
		t.Fatal(err)
	}
	sources := func(f map[string]*dto.MetricFamily) map[string]float64 {
		return labelled(f["cttrace_source_drops_total"], map[string]string{"netns": netns}, "source")
	}
	// agree waits until the namespace's table_full counter is the kernel's
	// drop delta, its source series add up to it, and they are as want
	// says. A reading taken while refusals land can show the newest in
	// other (the totals are read after the per-source map): the next one
	// has them under their source.
	agree := func(what string, want func(map[string]float64) bool) map[string]*dto.MetricFamily {
		t.Helper()
		after, err := lab.Stats()
		if err != nil {
			t.Fatal(err)
		}
		drops := float64(after.Sub(before).Drop)
		_, fams := waitScrape(t, addr, what, func(f map[string]*dto.MetricFamily) bool {
			events := labelled(f["cttrace_events_total"], map[string]string{"netns": netns}, "reason")
			var sum float64
			got := sources(f)
			for _, v := range got {
				sum += v
			}
			return events["table_full"] == drops && sum == drops && want(got)
		})
		return fams
	}

	for i, n := range []int{40, 30, 20, 10} {
		refuse(t, lab, fmt.Sprintf("127.81.0.%d", i+1), n)
	}
	agree("the top 3 of four sources, and other", func(got map[string]float64) bool {
		return len(got) == 4 && got["127.81.0.1/32"] == 40 && got["127.81.0.3/32"] == 20 && got["other"] == 10
	})
	for i := range 3 {
		refuse(t, lab, fmt.Sprintf("127.82.0.%d", i+1), 100)
	}
	agree("three heavier sources, the four lighter ones in other", func(got map[string]float64) bool {
		_, stale := got["127.81.0.1/32"]
		return !stale && got["127.82.0.1/32"] == 100 && got["127.82.0.3/32"] == 100 && got["other"] == 100
	})

	res, err := lab.Flood(ctlab.FloodSpec{Random: true, Packets: 100_000, Seed: 4})
	if err != nil || res.Refused != 100_000 {
		t.Fatalf("flood: %+v, %v", res, err)
	}
	fams := agree("100,000 spoofed sources", func(map[string]float64) bool { return true })
	if got := sources(fams); len(got) > 4 {
		t.Errorf("%d source series for one namespace, over --metrics-top 3 + other: %v", len(got), got)
	}
	// docs/serve.md's bound: (2N + 29) series a namespace, N = --metrics-top.
	series := 0
	for _, f := range fams {
		for _, m := range f.Metric {
			for _, l := range m.Label {
				if l.GetName() == "netns" && l.GetValue() == netns {
					series++
				}
			}
		}
	}
	t.Logf("%d series for the namespace after the flood", series)
	if series > 2*3+29 {
		t.Errorf("%d series for the namespace, over the documented 2N + 29 = 35", series)
	}
	text, _ := scrape(t, addr)
	problems, err := promlint.New(strings.NewReader(text)).Lint()
	if err != nil || len(problems) > 0 {
		t.Errorf("promlint: %v %v", err, problems)
	}
	t.Run("promtool check metrics", func(t *testing.T) {
		cmd := exec.Command(testbed.Tool(t, "promtool", "prometheus"), "check", "metrics")
		cmd.Stdin = strings.NewReader(text)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("promtool check metrics: %v\n%s", err, out)
		}
	})
	if resp, err := http.Get("http://" + addr + "/healthz"); err != nil || resp.StatusCode != 200 {
		t.Errorf("healthz: %v %v", resp, err)
	}
	if code := r.stop(t, syscall.SIGTERM); code != 0 {
		t.Fatalf("exit status %d after SIGTERM\n%s", code, r.stderr)
	}
	if _, err := http.Get("http://" + addr + "/metrics"); err == nil {
		t.Error("still serving after SIGTERM")
	}
}

// serve --events-file: beside the metrics, every refusal is in the file,
// one by one up to --stream-limit a second and aggregated past it, so that
// the file's events, aggregates and losses add up to the kernel's drop
// delta, as the metric does; the file ends with the summary, and its write
// errors are a metric.
func TestServeEventsFile(t *testing.T) {
	lab := fullTable(t, 32)
	addr := freeAddr(t)
	path := filepath.Join(t.TempDir(), "events.json")
	before := kernelDrops(t, lab)
	r := startCttrace(t, nil, "serve", "--listen", addr, "--interval", "200ms", "--events-file", path, "--stream-limit", "100")
	netns := strconv.FormatUint(uint64(lab.Inode()), 10)
	refuse(t, lab, "127.84.0.1", 150)
	res, err := lab.Flood(ctlab.FloodSpec{Random: true, Packets: 20_000, Seed: 5})
	if err != nil || res.Refused != 20_000 {
		t.Fatalf("flood: %+v, %v", res, err)
	}
	want := kernelDrops(t, lab) - before
	waitScrape(t, addr, "the namespace's drops", func(f map[string]*dto.MetricFamily) bool {
		return labelled(f["cttrace_events_total"], map[string]string{"netns": netns}, "reason")["table_full"] == want
	})
	_, fams := scrape(t, addr)
	if got := labelled(fams["cttrace_events_file_write_errors_total"], nil, "")[""]; fams["cttrace_events_file_write_errors_total"] == nil || got != 0 {
		t.Errorf("cttrace_events_file_write_errors_total: %v (want a series at 0)", got)
	}
	if code := r.stop(t, syscall.SIGTERM); code != 0 {
		t.Fatalf("exit status %d after SIGTERM\n%s", code, r.stderr)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var streamed, aggregated, lost, summaries, records int
	last := ""
	for rec, err := range output.ReadRecords(f, func(le output.LineError) { t.Errorf("events file: %v", le) }) {
		if err != nil {
			t.Fatal(err)
		}
		records++
		last = "other"
		switch {
		case rec.Event != nil && rec.Event.Netns.Inode == lab.Inode() && rec.Event.Reason == event.ReasonTableFull:
			streamed++
		case rec.Aggregate != nil && rec.Aggregate.Reason == event.ReasonTableFull:
			aggregated += int(rec.Aggregate.Count)
		case rec.Lost != nil:
			lost += int(rec.Lost.Lost)
		case rec.Summary != nil:
			summaries++
			last = "summary"
		}
	}
	t.Logf("kernel drops %.0f: the file has %d streamed, %d aggregated, %d lost, in %d records", want, streamed, aggregated, lost, records)
	if float64(streamed+aggregated+lost) != want || aggregated == 0 {
		t.Errorf("streamed %d + aggregated %d + lost %d != kernel drops %.0f (and the flood must pass --stream-limit)", streamed, aggregated, lost, want)
	}
	if summaries != 1 || last != "summary" {
		t.Errorf("%d summaries, the last record a %q: want one summary, last", summaries, last)
	}
}

// cttrace_events_total splits each reason by the kernel's detail: flushing
// a table over ctnetlink (conntrack -F) deletes every entry with detail
// netlink, and the series says how many, as the table said before.
func TestServeCountsDetails(t *testing.T) {
	eachBackend(t, func(t *testing.T, backend string) {
		if !slices.Contains(probe.Backend(backend).Sees(), event.ReasonDelete) {
			t.Skipf("the %s backend does not see deletes", backend)
		}
		lab := ctlab.New(t)
		if err := lab.FillUnassured(20); err != nil {
			t.Fatal(err)
		}
		held, err := lab.Stats()
		if err != nil {
			t.Fatal(err)
		}
		addr := freeAddr(t)
		r := startCttrace(t, nil, "serve", "--listen", addr, "--interval", "200ms", "--backend", backend, "--hooks", "always")
		if err := lab.Flush(time.Minute); err != nil {
			t.Fatal(err)
		}
		netns := strconv.FormatUint(uint64(lab.Inode()), 10)
		waitScrape(t, addr, fmt.Sprintf("%d deletes by netlink", held.Entries), func(f map[string]*dto.MetricFamily) bool {
			deletes := labelled(f["cttrace_events_total"], map[string]string{"netns": netns, "reason": "delete"}, "detail")
			return deletes["netlink"] == float64(held.Entries) && deletes[""] == 0 && deletes["expired"] == 0
		})
		t.Logf("%d entries flushed: %d deletes with detail netlink", held.Entries, held.Entries)
		if code := r.stop(t, syscall.SIGTERM); code != 0 {
			t.Fatalf("exit status %d\n%s", code, r.stderr)
		}
	})
}

// serve --netns follows the chosen namespaces only: refusals in another
// namespace leave no series of it, while the chosen one's counters are the
// kernel's.
func TestServeWatchesChosenNamespaces(t *testing.T) {
	chosen := fullTable(t, 32)
	other := ctlab.New(t)
	if err := other.HoldEstablished(32); err != nil {
		t.Fatalf("fill the other table: %v", err)
	}
	addr := freeAddr(t)
	startCttrace(t, nil, "serve", "--listen", addr, "--interval", "200ms", "--netns", "/run/netns/"+chosen.Name())
	before, err := chosen.Stats()
	if err != nil {
		t.Fatal(err)
	}
	refuse(t, chosen, "127.84.0.1", 30)
	refuse(t, other, "127.84.0.2", 20)
	after, err := chosen.Stats()
	if err != nil {
		t.Fatal(err)
	}
	want := float64(after.Sub(before).Drop)
	netns, otherNetns := strconv.FormatUint(uint64(chosen.Inode()), 10), strconv.FormatUint(uint64(other.Inode()), 10)
	_, fams := waitScrape(t, addr, "the chosen namespace's refusals", func(f map[string]*dto.MetricFamily) bool {
		return labelled(f["cttrace_events_total"], map[string]string{"netns": netns}, "reason")["table_full"] == want &&
			labelled(f["cttrace_source_drops_total"], map[string]string{"netns": netns}, "source")["127.84.0.1/32"] == 30
	})
	for name, f := range fams {
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "netns" && l.GetValue() != netns {
					t.Errorf("%s has a series of namespace %s (the other one is %s)", name, l.GetValue(), otherNetns)
				}
			}
		}
	}
	if got := labelled(fams["cttrace_nf_conntrack_entries"], nil, "netns"); len(got) != 1 || got[netns] < 32 {
		t.Errorf("entries: %v, want the chosen namespace's only, at least 32", got)
	}
}

// serve --metrics-top 0 exports no source series: the namespace's counters
// are still the kernel's, counted without any per-source work.
func TestServeWithoutSourceSeries(t *testing.T) {
	lab := fullTable(t, 32)
	addr := freeAddr(t)
	startCttrace(t, nil, "serve", "--listen", addr, "--interval", "200ms", "--metrics-top", "0")
	before, err := lab.Stats()
	if err != nil {
		t.Fatal(err)
	}
	refuse(t, lab, "127.85.0.1", 30)
	after, err := lab.Stats()
	if err != nil {
		t.Fatal(err)
	}
	want := float64(after.Sub(before).Drop)
	netns := strconv.FormatUint(uint64(lab.Inode()), 10)
	_, fams := waitScrape(t, addr, "the namespace's refusals", func(f map[string]*dto.MetricFamily) bool {
		return labelled(f["cttrace_events_total"], map[string]string{"netns": netns}, "reason")["table_full"] == want
	})
	for _, name := range []string{"cttrace_source_drops_total", "cttrace_source_entries"} {
		if f := fams[name]; f != nil && len(f.GetMetric()) > 0 {
			t.Errorf("%s has %d series with --metrics-top 0", name, len(f.GetMetric()))
		}
	}
}

// serve --hooks on-pressure: healthy until the first refusal, whose count
// is exact; then under pressure (the mode metric and its switch counter
// say so), where refusals are counted under their source. The tracepoint
// backend, with no per-flow hooks, stays healthy and never switches.
//
// On the backend an automatic choice takes: pkg/session's TestHooksOnPressure
// holds every backend to the kernel's counts.
func TestServeHooksOnPressure(t *testing.T) {
	testbed.RequireRoot(t)
	f, err := probe.DetectBackends()
	if err != nil {
		t.Fatal(err)
	}
	backend, _, err := f.ChooseBackend(probe.BackendAuto)
	if err != nil {
		t.Fatal(err)
	}
	lab := fullTable(t, 32)
	addr := freeAddr(t)
	startCttrace(t, nil, "serve", "--listen", addr, "--interval", "200ms", "--pressure-fill", "200")
	perFlow := backend != probe.BackendTracepoint
	mode := func(f map[string]*dto.MetricFamily) (string, float64) {
		m := labelled(f["cttrace_hooks_mode"], nil, "mode")
		var switches float64
		if s := f["cttrace_hooks_mode_switches_total"]; s != nil && len(s.GetMetric()) == 1 {
			switches = s.GetMetric()[0].GetCounter().GetValue()
		}
		if m["pressure"] == 1 {
			return "pressure", switches
		}
		if m["healthy"] == 1 {
			return "healthy", switches
		}
		return "", switches
	}
	waitScrape(t, addr, "healthy mode", func(f map[string]*dto.MetricFamily) bool {
		m, n := mode(f)
		return m == "healthy" && n == 0
	})
	before, err := lab.Stats()
	if err != nil {
		t.Fatal(err)
	}
	refuse(t, lab, "127.86.0.1", 30)
	after, err := lab.Stats()
	if err != nil {
		t.Fatal(err)
	}
	want := float64(after.Sub(before).Drop)
	netns := strconv.FormatUint(uint64(lab.Inode()), 10)
	wantMode, wantSwitches := "healthy", 0.0
	if perFlow {
		wantMode, wantSwitches = "pressure", 1
	}
	waitScrape(t, addr, "every refusal, and the mode after them", func(f map[string]*dto.MetricFamily) bool {
		m, n := mode(f)
		return m == wantMode && n == wantSwitches &&
			labelled(f["cttrace_events_total"], map[string]string{"netns": netns}, "reason")["table_full"] == want
	})
	refuse(t, lab, "127.86.0.2", 20)
	waitScrape(t, addr, "the refusals under their source", func(f map[string]*dto.MetricFamily) bool {
		return labelled(f["cttrace_source_drops_total"], map[string]string{"netns": netns}, "source")["127.86.0.2/32"] == 20
	})
}

// serveMemoryBound is what serve may hold, resident, through a spoofed
// flood: it runs on every node, beside node_exporter (18 MiB here with its
// default collectors).
const serveMemoryBound = 32 << 20

// serve through a million refused flows from random spoofed sources, with
// five real offenders refused 600 times each in a burst in the middle:
// its peak resident memory stays within serveMemoryBound, the five are
// its source series at 600 each, and the namespace's table_full counter is
// the kernel's drop counter.
func TestServeMemoryThroughASpoofedFlood(t *testing.T) {
	if testbed.Tier() == testbed.VM {
		t.Skip("a million-flow flood is sized for the host: under emulation it would take many minutes")
	}
	lab := fullTable(t, 32)
	addr := freeAddr(t)
	r := startMeasured(t, "serve", "--listen", addr, "--metrics-top", "5", "--netns", "/run/netns/"+lab.Name())
	drops := float64(floodWithHeavyBurst(t, lab))
	netns := strconv.FormatUint(uint64(lab.Inode()), 10)
	heavy := map[string]float64{}
	for i := range burstSources {
		a := burstBase.As4()
		a[3] += byte(i)
		heavy[netip.AddrFrom4(a).String()+"/32"] = burstPerSource
	}
	_, fams := waitScrape(t, addr, "every refusal, the five heavy sources first", func(f map[string]*dto.MetricFamily) bool {
		events := labelled(f["cttrace_events_total"], map[string]string{"netns": netns}, "reason")
		got := labelled(f["cttrace_source_drops_total"], map[string]string{"netns": netns}, "source")
		for src, n := range heavy {
			if got[src] != n {
				return false
			}
		}
		return events["table_full"] == drops
	})
	peak := peakResidentBytes(t, r.cmd.Process.Pid)
	t.Logf("kernel drops %.0f; serve's peak RSS %.1f MiB; source series %v", drops, float64(peak)/(1<<20),
		labelled(fams["cttrace_source_drops_total"], map[string]string{"netns": netns}, "source"))
	if peak > serveMemoryBound {
		t.Errorf("serve's peak resident memory %.1f MiB, over %d MiB", float64(peak)/(1<<20), serveMemoryBound>>20)
	}
}
