//go:build privileged

package main

import (
	"encoding/json"
	"errors"
	"io/fs"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cttrace/cttrace/internal/ctlab"
	"github.com/cttrace/cttrace/internal/testbed"
	"github.com/cttrace/cttrace/pkg/table"
)

// statusRecord is the part of `cttrace status -o json` the tests read.
type statusRecord struct {
	Schema     int   `json:"schema"`
	Max        int64 `json:"max"`
	Buckets    int64 `json:"buckets"`
	Namespaces []struct {
		Netns    uint32           `json:"netns"`
		Entries  int64            `json:"entries"`
		Max      int64            `json:"max"`
		Counters map[string]int64 `json:"counters"`
		Error    string           `json:"error"`
	} `json:"namespaces"`
	Memory struct {
		EntryBytes  int64 `json:"entry_bytes"`
		BucketBytes int64 `json:"bucket_bytes"`
		Entries     int64 `json:"entries"`
		SlabObjects int64 `json:"slab_objects"`
		WhatIf      *struct {
			Max, Buckets, Bytes int64
		} `json:"what_if"`
	} `json:"memory"`
	Advice []struct {
		Kind  string `json:"kind"`
		Netns uint32 `json:"netns"`
		Basis string `json:"basis"`
		Rule  string `json:"rule"`
	} `json:"advice"`
}

func statusOf(t *testing.T, args ...string) statusRecord {
	t.Helper()
	testbed.RequireRoot(t)
	out, err := cttrace(append([]string{"status", "-o", "json"}, args...)...).Output()
	if err != nil {
		t.Fatalf("cttrace status: %v", err)
	}
	var rec statusRecord
	if err := json.Unmarshal(out, &rec); err != nil || rec.Schema != 1 {
		t.Fatalf("not a status record: %v\n%s", err, out)
	}
	return rec
}

// counterValues names table.Stats' counters as the JSON does.
func counterValues(s table.Stats) map[string]int64 {
	return map[string]int64{"found": s.Found, "invalid": s.Invalid, "insert": s.Insert, "insert_failed": s.InsertFailed,
		"drop": s.Drop, "early_drop": s.EarlyDrop, "error": s.Error, "search_restart": s.SearchRestart,
		"clash_resolve": s.ClashResolve, "chaintoolong": s.ChainTooLong}
}

// status's figures, for several namespaces at once, are the kernel's: the
// entries, max and counters of each, as procfs shows them inside the
// namespace (and ctnetlink, read independently by the test, where procfs is
// missing), and advice that names the full one.
func TestStatusMatchesTheKernel(t *testing.T) {
	full := fullTable(t, 48)
	refuse(t, full, "127.60.0.1", 17)
	quiet := ctlab.New(t)
	if err := quiet.HoldEstablished(5); err != nil {
		t.Fatal(err)
	}
	rec := statusOf(t)
	for _, lab := range []*ctlab.Lab{full, quiet} {
		// Both of the kernel's views where it has both: procfs inside the
		// namespace, and a ctnetlink read of the test's own.
		netlink, err := lab.StatsNetlink()
		if err != nil {
			t.Fatal(err)
		}
		views := []ctlab.Stats{netlink}
		if procfs, err := lab.StatsProcfs(); err == nil {
			views = append(views, procfs)
		} else if !errors.Is(err, fs.ErrNotExist) {
			t.Fatal(err)
		}
		for _, want := range views {
			checkStatusNamespace(t, rec, lab, want)
		}
	}
	var fill, refusals bool
	for _, a := range rec.Advice {
		fill = fill || a.Kind == "fill" && a.Netns == full.Inode() && strings.Contains(a.Basis, "entries 48 of max 48")
		refusals = refusals || a.Kind == "refusals" && a.Netns == full.Inode() && strings.Contains(a.Basis, "drop 17")
	}
	if !fill || !refusals {
		t.Errorf("no fill or refusal advice for the full namespace: %+v", rec.Advice)
	}
}

// checkStatusNamespace compares lab's line of the report with want.
func checkStatusNamespace(t *testing.T, rec statusRecord, lab *ctlab.Lab, want ctlab.Stats) {
	t.Helper()
	for _, ns := range rec.Namespaces {
		if ns.Netns != lab.Inode() {
			continue
		}
		if ns.Error != "" || ns.Entries != want.Entries || ns.Max != want.Max {
			t.Errorf("%s: entries %d, max %d (%s); the kernel (%s): %d, %d", lab.Name(), ns.Entries, ns.Max, ns.Error, want.Source, want.Entries, want.Max)
		}
		for name, v := range counterValues(want.Stats) {
			if ns.Counters[name] != v {
				t.Errorf("%s: %s %d, the kernel (%s) %d", lab.Name(), name, ns.Counters[name], want.Source, v)
			}
		}
		return
	}
	t.Errorf("%s (%d) is not in the report", lab.Name(), lab.Inode())
}

// The memory figure is the slab's own accounting, within 10 %, with
// 20,000 entries in a table; and --what-if-max is the formula with the
// entry size read from the kernel.
func TestStatusMemoryMatchesTheSlab(t *testing.T) {
	const entries = 20_000
	if testbed.Tier() == testbed.VM {
		t.Log("under emulation: 20,000 flows take a few seconds")
	}
	ctlab.SetMax(t, 2*entries)
	lab := ctlab.New(t)
	res, err := lab.Flood(ctlab.FloodSpec{Random: true, Packets: entries, Seed: 5})
	if err != nil || res.Refused != 0 {
		t.Fatalf("flood: %+v, %v", res, err)
	}
	rec := statusOf(t, "--what-if-max", "1000000", "--what-if-buckets", "131072")
	slabSize, err := os.ReadFile("/sys/kernel/slab/nf_conntrack/slab_size")
	if err != nil {
		t.Skipf("no SLUB sysfs to check against: %v", err)
	}
	size, _ := strconv.ParseInt(strings.TrimSpace(string(slabSize)), 10, 64)
	m := rec.Memory
	t.Logf("entries %d, slab objects %d, %d bytes each", m.Entries, m.SlabObjects, m.EntryBytes)
	if m.EntryBytes != size || m.Entries < entries || m.SlabObjects <= 0 {
		t.Fatalf("entry %d bytes (slab_size %d), entries %d, slab objects %d", m.EntryBytes, size, m.Entries, m.SlabObjects)
	}
	if d := float64(m.Entries-m.SlabObjects) / float64(m.SlabObjects); d > 0.1 || d < -0.1 {
		t.Errorf("entries %d vs the slab's %d objects: %.1f%% apart", m.Entries, m.SlabObjects, 100*d)
	}
	if w := m.WhatIf; w == nil || w.Max != 1000000 || w.Buckets != 131072 || w.Bytes != 1000000*size+131072*m.BucketBytes {
		t.Errorf("what if: %+v, want %d", w, 1000000*size+131072*m.BucketBytes)
	}
	if m.BucketBytes != 8 {
		t.Errorf("a bucket is %d bytes, want a pointer's 8", m.BucketBytes)
	}
}

// A table filled by one prefix: the advice names it, and its rules, applied
// in the namespace, stop the refusals (the kernel's drop counter).
func TestStatusPrefixAdviceStopsTheRefusals(t *testing.T) {
	ctlab.SetMax(t, 256)
	lab := ctlab.New(t)
	prefix := ctlab.FloodSpec{Sources: 200, SourceBase: netip.MustParseAddr("127.66.0.1"), Packets: 400}
	if res, err := lab.Flood(prefix); err != nil || res.Refused == 0 {
		t.Fatalf("flood: %+v, %v: want the table full and flows refused", res, err)
	}
	rec := statusOf(t)
	rule := ""
	for _, a := range rec.Advice {
		if a.Kind == "prefix" && a.Netns == lab.Inode() {
			if !strings.Contains(a.Basis, "from 127.66.0.0/24") {
				t.Errorf("prefix advice rests on %q, want 127.66.0.0/24", a.Basis)
			}
			rule = a.Rule
		}
	}
	if rule == "" {
		t.Fatalf("no prefix advice for %s: %+v", lab.Name(), rec.Advice)
	}
	t.Logf("suggested:\n%s", rule)
	nft := exec.Command("ip", "netns", "exec", lab.Name(), "nft", "-f", "-")
	nft.Stdin = strings.NewReader(rule)
	if out, err := nft.CombinedOutput(); err != nil {
		t.Fatalf("the suggested rules do not apply: %v: %s", err, out)
	}
	if err := lab.Flush(time.Minute); err != nil {
		t.Fatal(err)
	}
	before, err := lab.Stats()
	if err != nil {
		t.Fatal(err)
	}
	prefix.Seed++
	if _, err := lab.Flood(prefix); err != nil {
		t.Fatal(err)
	}
	sent, refused, err := lab.SendNewFlows(netip.MustParseAddr("127.70.0.1"), ctlab.FloodDst4, 20)
	if err != nil {
		t.Fatal(err)
	}
	after, err := lab.Stats()
	if err != nil {
		t.Fatal(err)
	}
	d := after.Sub(before)
	t.Logf("with the rules: the prefix's 400 new flows and 20 from elsewhere: drop +%d, entries %d; elsewhere %d sent, %d refused", d.Drop, after.Entries, sent, refused)
	if d.Drop != 0 || sent != 20 || refused != 0 || after.Entries > 256/10+20+5 {
		t.Errorf("the refusals went on: drop +%d, entries %d, others refused %d", d.Drop, after.Entries, refused)
	}
}

// A table filled by unreplied flows to one service: the advice stops
// tracking it, and its rules, applied, stop the refusals and the entries.
func TestStatusServiceAdviceStopsTheRefusals(t *testing.T) {
	ctlab.SetMax(t, 256)
	lab := ctlab.New(t)
	dns := ctlab.FloodSpec{Random: true, Seed: 3, Packets: 400, Dst: netip.MustParseAddrPort("127.0.0.1:53")}
	if res, err := lab.Flood(dns); err != nil || res.Refused == 0 {
		t.Fatalf("flood: %+v, %v: want the table full and flows refused", res, err)
	}
	rule := ""
	for _, a := range statusOf(t).Advice {
		if a.Kind == "service" && a.Netns == lab.Inode() {
			if !strings.Contains(a.Basis, "udp to port 53 without a reply") {
				t.Errorf("service advice rests on %q, want udp to port 53", a.Basis)
			}
			rule = a.Rule
		}
	}
	if rule == "" {
		t.Fatal("no service advice for a table of unreplied DNS flows")
	}
	nft := exec.Command("ip", "netns", "exec", lab.Name(), "nft", "-f", "-")
	nft.Stdin = strings.NewReader(rule)
	if out, err := nft.CombinedOutput(); err != nil {
		t.Fatalf("the suggested rules do not apply: %v: %s\n%s", err, out, rule)
	}
	if err := lab.Flush(time.Minute); err != nil {
		t.Fatal(err)
	}
	before, err := lab.Stats()
	if err != nil {
		t.Fatal(err)
	}
	dns.Seed++
	if res, err := lab.Flood(dns); err != nil || res.Refused != 0 {
		t.Fatalf("flood with the rules: %+v, %v", res, err)
	}
	after, err := lab.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if d := after.Sub(before); d.Drop != 0 || after.Entries != 0 {
		t.Errorf("with the rules: drop +%d, entries %d; want 0 and 0", d.Drop, after.Entries)
	}
}

// status --watch: the reading, then top-sources' live view from the same
// machinery: a namespace's drops in it are the kernel's.
func TestStatusWatch(t *testing.T) {
	lab := fullTable(t, 32)
	r := launch(t, cttrace("status", "--watch", "-o", "json", "--interval", "500ms"), nil)
	r.waitOutput(t, "the status record and a first snapshot", func(lines []string) bool {
		return len(lines) >= 2 && strings.Contains(lines[0], `"type":"status"`) && strings.Contains(lines[len(lines)-1], `"type":"top"`)
	})
	before, err := lab.Stats()
	if err != nil {
		t.Fatal(err)
	}
	refuse(t, lab, "127.61.0.1", 12)
	after, err := lab.Stats()
	if err != nil {
		t.Fatal(err)
	}
	want := uint64(after.Sub(before).Drop)
	r.waitOutput(t, "a snapshot with the refusals", func(lines []string) bool {
		var rec struct {
			Type       string `json:"type"`
			Namespaces []struct {
				Netns uint32 `json:"netns"`
				Drops uint64 `json:"drops"`
			} `json:"namespaces"`
		}
		if json.Unmarshal([]byte(lines[len(lines)-1]), &rec) != nil || rec.Type != "top" {
			return false
		}
		for _, ns := range rec.Namespaces {
			if ns.Netns == lab.Inode() && ns.Drops == want {
				return true
			}
		}
		return false
	})
	if code := r.stop(t, syscall.SIGINT); code != 0 {
		t.Fatalf("exit status %d\n%s", code, r.stderr)
	}
}
