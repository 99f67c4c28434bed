package output

import (
	"bytes"
	"fmt"
	"net/netip"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/cttrace/cttrace/pkg/top"
)

func snapshotWithRows(n int) *top.Snapshot {
	s := &top.Snapshot{Time: t0, Interval: time.Second, Tracked: n, Capacity: 65536,
		Namespaces: []top.Namespace{{Netns: 4026531840, Entries: 10, Max: 10}, {Netns: 4026532001, Entries: -1, Max: 262144}}}
	for i := range n {
		p := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}), 32)
		s.Rows = append(s.Rows, top.Row{Key: top.Key{Netns: 4026531840, Prefix: p}, Total: top.Counts{Drops: uint64(1000 - i)}})
	}
	s.Other.Total.Drops = 7
	return s
}

var escape = regexp.MustCompile("\x1b\\[[0-9;?]*[a-zA-Z]")

// The live view overwrites the previous frame instead of clearing the
// screen (no flicker), fits the terminal and keeps what makes the sums add
// up (the namespaces and "other") when rows must go.
func TestTopFrameFitsTheScreen(t *testing.T) {
	for _, scr := range []Screen{{Width: 60, Height: 14}, {Width: 200, Height: 60}, {Width: 20, Height: 3}} {
		t.Run(fmt.Sprintf("%dx%d", scr.Width, scr.Height), func(t *testing.T) {
			var b bytes.Buffer
			s := snapshotWithRows(20)
			if err := (TopView{Backend: "fentry", Sort: top.SortDrops}).WriteTopFrame(&b, s, scr); err != nil {
				t.Fatal(err)
			}
			frame := b.String()
			if !strings.HasPrefix(frame, cursorHome) || !strings.HasSuffix(frame, clearBelow) || strings.Contains(frame, "\x1b[2J") {
				t.Errorf("frame does not overwrite in place: %q", frame)
			}
			lines := strings.Split(escape.ReplaceAllString(frame, ""), "\n")
			for _, l := range lines {
				if len(l) > scr.Width {
					t.Errorf("line of %d characters on a %d-wide screen: %q", len(l), scr.Width, l)
				}
			}
			rows := strings.Count(frame, "10.0.")
			fixed := len((TopView{}).topLines(s, 0)) + 1
			switch {
			case scr.Height >= fixed+20:
				if rows != 20 || len(lines) != fixed+20 || strings.Contains(frame, "rows: a taller") {
					t.Errorf("%d rows in %d lines, want all 20 in %d:\n%s", rows, len(lines), fixed+20, frame)
				}
			case scr.Height > fixed:
				if len(lines) != scr.Height || rows != scr.Height-fixed || !strings.Contains(frame, fmt.Sprintf("(%d of 20 rows", rows)) {
					t.Errorf("%d rows in %d lines on a %d-line screen:\n%s", rows, len(lines), scr.Height, frame)
				}
			default:
				if rows != 0 {
					t.Errorf("%d rows on a screen too small for any", rows)
				}
			}
			if scr.Width >= 60 && (!strings.Contains(frame, "other") || !strings.Contains(frame, "4026532001") || !strings.Contains(frame, TopKeys)) {
				t.Errorf("frame lacks other, a namespace or the keys:\n%s", frame)
			}
		})
	}
}

// Off a terminal, snapshots follow each other with every row.
func TestTopTextHasEveryRow(t *testing.T) {
	var b bytes.Buffer
	if err := (TopView{Backend: "tracepoint", Sort: top.SortDrops}).WriteTopText(&b, snapshotWithRows(30)); err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(b.String(), "10.0."); n != 30 || strings.Contains(b.String(), "\x1b") || !strings.HasSuffix(b.String(), "\n\n") {
		t.Errorf("%d rows, escapes %v:\n%s", n, strings.Contains(b.String(), "\x1b"), b.String())
	}
}
