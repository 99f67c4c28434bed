//go:build privileged

package main

import (
	"encoding/json"
	"fmt"
	"strconv"
	"syscall"
	"testing"

	dto "github.com/prometheus/client_model/go"

	"github.com/cttrace/cttrace/internal/ctlab"
	"github.com/cttrace/cttrace/internal/testbed"
	"github.com/cttrace/cttrace/pkg/probe"
)

// Namespaces that come and go, as on a node whose pods churn: the kernel
// gives a dead namespace's inode number to the next one at once, and
// counts keyed by it used to pass from the dead to the living (a namespace
// that refused 70 flows was shown with 1,068). Rounds of short-lived
// namespaces each refuse flows, then die; the last namespace refuses 70.
// serve and top-sources, running throughout, show it with the kernel's 70,
// and show no namespace that died.
func TestNamespacesThatComeAndGo(t *testing.T) {
	testbed.RequireRoot(t)
	f, err := probe.DetectFeatures()
	if err != nil {
		t.Fatal(err)
	}
	if x, _ := f.Get(probe.FeatNetnsCookie); !x.Usable {
		t.Skipf("this kernel gives user space no netns cookie (%s): namespaces are known by inode number, which it reuses, so a dead namespace's counts cannot be told from the next one's (docs/backends.md)", x.Error)
	}
	eachBackend(t, func(t *testing.T, backend string) {
		const max, perLab = 8, 10
		ctlab.SetMax(t, max)
		addr := freeAddr(t)
		serve := startCttrace(t, nil, "serve", "--listen", addr, "--interval", "200ms", "--backend", backend)
		top := startTop(t, "-o", "json", "--interval", "300ms", "--backend", backend)

		rounds, perRound := 4, 3
		if testbed.Tier() == testbed.VM {
			rounds, perRound = 3, 2
		}
		used := map[uint32]int{}
		dead := map[uint32]bool{}
		for r := range rounds {
			var labs []*ctlab.Lab
			for range perRound {
				lab := churnLab(t, max)
				refuse(t, lab, fmt.Sprintf("127.90.%d.%d", r, len(labs)+1), perLab)
				used[lab.Inode()]++
				labs = append(labs, lab)
			}
			// Seen by both before the namespaces die: counted, then to go.
			for _, lab := range labs {
				waitNamespaceDrops(t, serve, addr, top, lab.Inode(), perLab)
			}
			for _, lab := range labs {
				dead[lab.Inode()] = true
				if err := lab.Close(); err != nil {
					t.Fatal(err)
				}
			}
		}
		last := churnLab(t, max)
		reused := used[last.Inode()]
		delete(dead, last.Inode())
		refuse(t, last, "127.91.0.1", 70)
		after, err := last.Stats()
		if err != nil {
			t.Fatal(err)
		}
		if after.Drop != 70 {
			t.Fatalf("the last namespace's kernel drop counter is %d, 70 refused: the test bed is off", after.Drop)
		}
		t.Logf("%s: %d namespaces in %d rounds used %d inodes; the last namespace's inode %d was used %d times before",
			backend, rounds*perRound, rounds, len(used), last.Inode(), reused)

		inode := strconv.FormatUint(uint64(last.Inode()), 10)
		waitScrape(t, addr, fmt.Sprintf("netns %s at the kernel's 70 refusals, and no dead namespace", inode), func(fams map[string]*dto.MetricFamily) bool {
			byNetns := labelled(fams["cttrace_events_total"], map[string]string{"reason": "table_full", "detail": ""}, "netns")
			for ns := range byNetns {
				if n, _ := strconv.ParseUint(ns, 10, 32); dead[uint32(n)] {
					return false
				}
			}
			return byNetns[inode] == 70
		})
		rec := waitSnapshot(t, top, "the last namespace at 70 drops, and no dead namespace", func(r topRecord) bool {
			var lines topNamespaces
			if json.Unmarshal(r.raw, &lines) != nil {
				return false
			}
			drops := uint64(0)
			for _, ns := range lines.Namespaces {
				if dead[ns.Netns] {
					return false
				}
				if ns.Netns == last.Inode() {
					drops += ns.Drops
				}
			}
			for _, row := range r.Rows {
				if dead[row.Netns] || row.Netns == 0 {
					return false // a source of a dead namespace, or of none
				}
			}
			return drops == 70
		})
		t.Logf("%s: serve and top-sources show netns %s at 70 drops and none of the %d dead; rows %+v", backend, inode, len(dead), rec.Rows)
		for _, p := range []*process{serve, top} {
			if code := p.stop(t, syscall.SIGTERM); code != 0 {
				t.Fatalf("exit status %d\n%s", code, p.stderr)
			}
		}
	})
}

// topNamespaces is the namespace lines of a top-sources JSON snapshot.
type topNamespaces struct {
	Namespaces []struct {
		Netns uint32 `json:"netns"`
		Drops uint64 `json:"drops"`
	} `json:"namespaces"`
}

// churnLab is a namespace whose table is full (max assured entries), so
// that every new flow is refused; it is deleted at the end of the test if
// the test has not deleted it before.
func churnLab(t *testing.T, max int) *ctlab.Lab {
	t.Helper()
	lab, err := ctlab.Open("cttrace-churn")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lab.Close() })
	if err := lab.HoldEstablished(max); err != nil {
		t.Fatalf("fill the table: %v", err)
	}
	return lab
}

// waitNamespaceDrops waits until serve and top-sources both count n drops
// for the namespace of that inode number.
func waitNamespaceDrops(t *testing.T, serve *process, addr string, top *process, inode uint32, n int) {
	t.Helper()
	label := strconv.FormatUint(uint64(inode), 10)
	waitScrape(t, addr, fmt.Sprintf("netns %s at %d refusals", label, n), func(fams map[string]*dto.MetricFamily) bool {
		return labelled(fams["cttrace_events_total"], map[string]string{"reason": "table_full", "detail": ""}, "netns")[label] == float64(n)
	})
	waitSnapshot(t, top, fmt.Sprintf("netns %s at %d drops", label, n), func(r topRecord) bool {
		var lines topNamespaces
		if json.Unmarshal(r.raw, &lines) != nil {
			return false
		}
		for _, ns := range lines.Namespaces {
			if ns.Netns == inode {
				return ns.Drops == uint64(n)
			}
		}
		return false
	})
}
