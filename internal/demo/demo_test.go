package demo

import (
	"errors"
	"strings"
	"testing"

	"github.com/cttrace/cttrace/pkg/table"
)

func namespaces(entries ...int64) []table.NamespaceStats {
	var out []table.NamespaceStats
	for i, n := range entries {
		out = append(out, table.NamespaceStats{Namespace: table.Namespace{Inode: uint32(4026531840 + i)}, Stats: table.Stats{Entries: n}})
	}
	return out
}

// The demo's table leaves every namespace room to double, is never below
// 2048 nor above the host's max, and the demo refuses past 65536.
func TestPlanFor(t *testing.T) {
	for _, tt := range []struct {
		hostMax int64
		entries []int64
		max     int64
		lowered bool
	}{
		{262144, []int64{0, 10}, 2048, true},
		{262144, []int64{5000, 100}, 11024, true},
		{1000, []int64{10}, 1000, false}, // a host max below the demo's smallest: kept
		{65536, []int64{32000}, 65024, true},
	} {
		p, err := PlanFor(tt.hostMax, namespaces(tt.entries...))
		if err != nil || p.Max != tt.max || p.Lowered() != tt.lowered || p.Held+p.Evictable != int(p.Max) {
			t.Errorf("max %d, entries %v: plan %+v, %v; want max %d", tt.hostMax, tt.entries, p, err, tt.max)
		}
	}
	_, err := PlanFor(262144, namespaces(40000, 5))
	if !errors.Is(err, ErrTooBusy) || !strings.Contains(err.Error(), "holds 40000 entries") || !strings.Contains(err.Error(), "81024 entries") {
		t.Errorf("busy host: %v", err)
	}
}
