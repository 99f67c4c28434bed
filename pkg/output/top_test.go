package output

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/netip"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/cttrace/cttrace/pkg/event"
	"github.com/cttrace/cttrace/pkg/top"
)

// dropCounts is a top.Counts of n drops (table_full) holding held entries.
func dropCounts(n uint64, held int64) top.Counts {
	return top.Counts{Events: counts(map[event.Reason]uint64{event.ReasonTableFull: n}), Held: held}
}

func snapshotWithRows(n int) *top.Snapshot {
	s := &top.Snapshot{Backend: "fentry", Sort: top.SortDrops, Time: t0, Interval: time.Second, Tracked: n, Capacity: 65536,
		Namespaces: []top.Namespace{{Netns: hostNetns, Entries: 10, Max: 10}, {Netns: event.Netns{ID: 8193, Inode: 4026532001}, Entries: -1, Max: 262144}}}
	for i := range n {
		p := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}), 32)
		s.Rows = append(s.Rows, top.Row{Key: top.Key{Netns: hostNetns, Prefix: p}, Total: dropCounts(uint64(1000-i), int64(i))})
	}
	s.Other.Total = dropCounts(7, 0)
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
			if err := WriteTopFrame(&b, s, scr); err != nil {
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
			fixed := len(topLines(s, 0)) + 1
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

// NewTopFrame asks the screen's size at every frame.
func TestTopFrameFollowsTheScreen(t *testing.T) {
	sizes := []Screen{{Width: 200, Height: 60}, {Width: 200, Height: 14}}
	asked := 0
	var b bytes.Buffer
	w := NewTopFrame(&b, func() Screen { asked++; return sizes[asked-1] })
	s := snapshotWithRows(20)
	var frames []string
	for range sizes {
		if err := w.Write(s); err != nil {
			t.Fatal(err)
		}
		if err := w.Flush(); err != nil {
			t.Fatal(err)
		}
		frames = append(frames, b.String())
		b.Reset()
	}
	for i, f := range frames {
		var want bytes.Buffer
		WriteTopFrame(&want, s, sizes[i])
		if f != want.String() {
			t.Errorf("frame %d is not WriteTopFrame's for %+v:\n%q\nwant\n%q", i, sizes[i], f, want.String())
		}
	}
	if asked != 2 || frames[0] == frames[1] {
		t.Errorf("screen asked %d times for 2 frames", asked)
	}
}

// Off a terminal, snapshots follow each other with every row, under a
// header naming the backend and the sort.
func TestTopTextHasEveryRow(t *testing.T) {
	var b bytes.Buffer
	s := snapshotWithRows(30)
	s.Backend = "tracepoint"
	w := NewTop(&b, Text)
	for range 2 {
		if err := w.Write(s); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	if n := strings.Count(out, "10.0."); n != 60 || strings.Contains(out, "\x1b") || !strings.HasSuffix(out, "\n\n") {
		t.Errorf("%d rows, escapes %v:\n%s", n, strings.Contains(out, "\x1b"), out)
	}
	if n := strings.Count(out, "backend tracepoint  sorted by drops"); n != 2 {
		t.Errorf("header with the backend and the sort %d times, want 2:\n%s", n, out)
	}
	// The row of 10.0.0.3: 997 drops, 3 entries held.
	if !regexp.MustCompile(`(?m)^ *4026531840 +10\.0\.0\.3/32 +0 +997 +0 +0 +3 `).MatchString(out) {
		t.Errorf("no row for 10.0.0.3 with 997 drops and 3 held:\n%s", out)
	}
}

// As JSON, a snapshot is one line: its backend, its sort, its rows with
// their held entries, and "other".
func TestTopJSON(t *testing.T) {
	var b bytes.Buffer
	w := NewTop(&b, JSON)
	s := snapshotWithRows(3)
	if err := w.Write(s); err != nil {
		t.Fatal(err)
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	if strings.Count(b.String(), "\n") != 1 || !strings.HasSuffix(b.String(), "\n") {
		t.Fatalf("not one line: %q", b.String())
	}
	var rec topJSON
	if err := json.Unmarshal(b.Bytes(), &rec); err != nil {
		t.Fatal(err)
	}
	if rec.Schema != SchemaVersion || rec.Type != "top" || rec.Backend != "fentry" || rec.Sort != "drops" || len(rec.Rows) != 3 ||
		rec.Rows[2].Source != "10.0.0.2/32" || rec.Rows[2].Drops != 998 || rec.Rows[2].Held != 2 ||
		rec.Other.Source != "other" || rec.Other.Drops != 7 || len(rec.Netns) != 2 || rec.Time != "2025-03-14T23:41:07.123456789Z" {
		t.Errorf("snapshot as JSON: %s", b.String())
	}
}

// Namespaces and rows carry netns_id, the namespace's identity, right
// after netns, its inode number; "other" names no namespace (0 and 0).
func TestTopJSONNetnsID(t *testing.T) {
	var b bytes.Buffer
	s := snapshotWithRows(2)
	s.Namespaces = append(s.Namespaces, top.Namespace{Netns: inodeNetns, Entries: 1, Max: 1})
	s.Rows = append(s.Rows, top.Row{Key: top.Key{Netns: inodeNetns, Prefix: netip.MustParsePrefix("10.9.0.1/32")}, Total: dropCounts(5, 0)})
	writeTop := NewTop(&b, JSON)
	if err := writeTop.Write(s); err != nil {
		t.Fatal(err)
	}
	if err := writeTop.Flush(); err != nil {
		t.Fatal(err)
	}
	line := b.String()
	for _, want := range []string{
		`"namespaces":[{"netns":4026531840,"netns_id":1,"entries":10,`,
		`{"netns":4026532001,"netns_id":8193,"entries":-1,`,
		`{"netns":4026532500,"netns_id":9223372040881308308,"entries":1,`,
		`"rows":[{"netns":4026531840,"netns_id":1,"source":"10.0.0.0/32",`,
		`{"netns":4026532500,"netns_id":9223372040881308308,"source":"10.9.0.1/32",`,
		`"other":{"netns":0,"netns_id":0,"source":"other",`,
	} {
		if !strings.Contains(line, want) {
			t.Errorf("no %s in\n%s", want, line)
		}
	}
	var rec topJSON
	if err := json.Unmarshal(b.Bytes(), &rec); err != nil {
		t.Fatal(err)
	}
	if len(rec.Netns) != 3 || rec.Netns[2].NetnsID != event.InodeID(4026532500) || len(rec.Rows) != 3 || rec.Rows[1].NetnsID != 1 ||
		rec.Rows[2].NetnsID != event.InodeID(4026532500) || rec.Rows[2].Netns != 4026532500 {
		t.Errorf("netns_id read back: namespaces %+v, rows %+v", rec.Netns, rec.Rows)
	}
}
