package output

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// writeInPieces writes lines to w in random chunks that split lines, as a
// bufio.Writer filling up would.
func writeInPieces(t *testing.T, w *RotatingFile, lines []string, seed uint64) {
	t.Helper()
	all := strings.Join(lines, "")
	rng := rand.New(rand.NewPCG(seed, 1))
	for len(all) > 0 {
		n := min(len(all), 1+rng.IntN(90))
		if _, err := w.Write([]byte(all[:n])); err != nil {
			t.Fatal(err)
		}
		all = all[n:]
	}
}

func testLines(n int) []string {
	var out []string
	for i := range n {
		out = append(out, fmt.Sprintf(`{"schema":1,"type":"event","n":%d,"pad":"%s"}`+"\n", i, strings.Repeat("x", i%37)))
	}
	return out
}

// readAll returns the lines of path.keep ... path.1, path, oldest first,
// failing on a file that does not hold whole lines.
func readAll(t *testing.T, path string, keep int) []string {
	t.Helper()
	var out []string
	for i := keep; i >= 0; i-- {
		p := path
		if i > 0 {
			p = fmt.Sprintf("%s.%d", path, i)
		}
		b, err := os.ReadFile(p)
		if os.IsNotExist(err) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		if len(b) > 0 && b[len(b)-1] != '\n' {
			t.Fatalf("%s ends in the middle of a line", p)
		}
		for _, l := range strings.SplitAfter(string(b), "\n") {
			if l != "" {
				if !strings.HasPrefix(l, `{"schema":1`) {
					t.Fatalf("%s holds a split line: %q", p, l)
				}
				out = append(out, l)
			}
		}
	}
	return out
}

// With a tiny size limit, rotation splits no line and, with room to keep
// them, loses none: the files hold every line, in order.
func TestRotationSplitsNoLine(t *testing.T) {
	path := filepath.Join(t.TempDir(), "events.ndjson")
	w, err := OpenRotating(path, 300, 1000)
	if err != nil {
		t.Fatal(err)
	}
	lines := testLines(500)
	writeInPieces(t, w, lines, 1)
	w.Close()
	got := readAll(t, path, 1000)
	if strings.Join(got, "") != strings.Join(lines, "") {
		t.Fatalf("%d lines read back of %d written", len(got), len(lines))
	}
	if w.Rotated < 50 {
		t.Errorf("%d rotations: the limit did not bite", w.Rotated)
	}
}

// keep bounds the files: the oldest go, the newest are whole.
func TestRotationKeeps(t *testing.T) {
	path := filepath.Join(t.TempDir(), "events.ndjson")
	w, err := OpenRotating(path, 300, 3)
	if err != nil {
		t.Fatal(err)
	}
	lines := testLines(200)
	writeInPieces(t, w, lines, 2)
	w.Close()
	if _, err := os.Stat(path + ".4"); !os.IsNotExist(err) {
		t.Errorf("%s.4 exists: more than 3 kept", path)
	}
	got := readAll(t, path, 3)
	want := strings.Join(lines[len(lines)-len(got):], "")
	if len(got) == 0 || strings.Join(got, "") != want {
		t.Errorf("the files do not hold the newest lines, whole and in order")
	}
}

// logrotate moves the file and signals: Reopen sends the next lines to a
// new file at the path, and the moved one keeps whole lines.
func TestReopenAfterMove(t *testing.T) {
	path := filepath.Join(t.TempDir(), "events.ndjson")
	w, err := OpenRotating(path, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	lines := testLines(40)
	writeInPieces(t, w, lines[:20], 3)
	if err := os.Rename(path, path+".moved"); err != nil {
		t.Fatal(err)
	}
	w.Reopen()
	writeInPieces(t, w, lines[20:], 4)
	w.Close()
	moved, err := os.ReadFile(path + ".moved")
	if err != nil {
		t.Fatal(err)
	}
	now, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if string(moved)+string(now) != strings.Join(lines, "") || len(now) == 0 {
		t.Errorf("moved %d bytes, new %d: lines lost or split", len(moved), len(now))
	}
}
