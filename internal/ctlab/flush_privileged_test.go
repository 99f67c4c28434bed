//go:build privileged

package ctlab

import (
	"testing"
	"time"

	"github.com/cttrace/cttrace/internal/testbed"
)

// TestFlush: a flood's entries are gone after Flush, and new flows are
// admitted again afterwards.
func TestFlush(t *testing.T) {
	testbed.RequireRoot(t)
	const flows = 2000
	l := New(t)
	if max, err := ReadGlobal(MaxPath); err != nil {
		t.Fatal(err)
	} else if max < 4*flows {
		SetMax(t, 4*flows)
	}
	for round := range 2 {
		res, err := l.Flood(FloodSpec{Packets: flows, Sources: 10})
		if err != nil {
			t.Fatal(err)
		}
		if res.Sent != flows {
			t.Fatalf("round %d: %+v, want all %d sent", round, res, flows)
		}
		if s := settle(t, l); s.Entries != flows {
			t.Fatalf("round %d: %d entries after %d flows", round, s.Entries, flows)
		}
		if err := l.Flush(30 * time.Second); err != nil {
			t.Fatal(err)
		}
		if s := settle(t, l); s.Entries != 0 {
			t.Fatalf("round %d: %d entries after Flush", round, s.Entries)
		}
	}
}
