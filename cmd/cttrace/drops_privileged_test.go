//go:build privileged

package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/cttrace/cttrace/internal/ctlab"
	"github.com/cttrace/cttrace/internal/testbed"
	"github.com/cttrace/cttrace/pkg/event"
	"github.com/cttrace/cttrace/pkg/probe"
	"github.com/cttrace/cttrace/pkg/session"
)

// process is a cttrace run under test.
type process struct {
	cmd    *exec.Cmd
	stdout *lockedBuffer
	stderr *lockedBuffer
	// exited is closed once Wait has returned; only then may err and
	// cmd.ProcessState be read (the race detector holds the tests to it).
	exited chan struct{}
	err    error
	ready  string // the --ready-file, which names the backend once attached
}

// backend is the backend cttrace attached with, from its ready file.
func (r *process) backend(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(r.ready)
	if err != nil {
		t.Fatalf("read the ready file: %v", err)
	}
	return strings.TrimSpace(string(b))
}

// startCttrace starts `cttrace args... --ready-file F` and waits until its
// probes are attached. stdout is captured unless the caller gives one.
func startCttrace(t *testing.T, stdout io.Writer, args ...string) *process {
	t.Helper()
	return startBinary(t, cttrace, stdout, args...)
}

// startBinary is startCttrace with the command that runs cttrace.
func startBinary(t *testing.T, command func(...string) *exec.Cmd, stdout io.Writer, args ...string) *process {
	t.Helper()
	testbed.RequireRoot(t)
	ready := filepath.Join(t.TempDir(), "ready")
	r := launch(t, command(append(args, "--ready-file", ready)...), stdout)
	deadline := time.Now().Add(60 * time.Second)
	for {
		if _, err := os.Stat(ready); err == nil {
			r.ready = ready
			return r
		}
		select {
		case <-r.exited:
			t.Fatalf("cttrace %s exited before attaching: %v\n%s", args[0], r.err, r.stderr)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("cttrace %s did not attach within a minute\n%s", args[0], r.stderr)
		}
	}
}

// launch starts cmd, capturing its stderr, and its stdout unless the caller
// gives one; the test's cleanup kills it if it still runs.
func launch(t *testing.T, cmd *exec.Cmd, stdout io.Writer) *process {
	t.Helper()
	r := &process{cmd: cmd, stderr: &lockedBuffer{}, exited: make(chan struct{})}
	if stdout == nil {
		r.stdout = &lockedBuffer{}
		stdout = r.stdout
	}
	r.cmd.Stdout, r.cmd.Stderr = stdout, r.stderr
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		r.err = r.cmd.Wait()
		close(r.exited)
	}()
	t.Cleanup(func() {
		r.cmd.Process.Kill()
		<-r.exited
	})
	return r
}

// wait waits for the process to end by itself and returns its exit status.
func (r *process) wait(t *testing.T, limit time.Duration) int {
	t.Helper()
	select {
	case <-r.exited:
	case <-time.After(limit):
		t.Fatalf("cttrace still running after %s\n%s", limit, r.stderr)
	}
	return r.cmd.ProcessState.ExitCode()
}

// lockedBuffer is a process's output, safe to read while the process
// writes it, so a test can poll for a complete record instead of sleeping.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// Bytes is a copy of what was written so far.
func (b *lockedBuffer) Bytes() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	return bytes.Clone(b.buf.Bytes())
}

func (b *lockedBuffer) String() string { return string(b.Bytes()) }

// completeLines is what was written up to the last newline: whole records
// only, never the first half of one still being written.
func (b *lockedBuffer) completeLines() []string {
	out := b.Bytes()
	end := bytes.LastIndexByte(out, '\n')
	if end < 0 {
		return nil
	}
	return strings.Split(string(out[:end]), "\n")
}

// waitOutput polls the process's stdout until done accepts its complete
// lines, or fails the test after a minute (or when the process ends first).
func (r *process) waitOutput(t *testing.T, what string, done func(lines []string) bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !done(r.stdout.completeLines()) {
		select {
		case <-r.exited:
			t.Fatalf("cttrace exited while waiting for %s: %v\n%s", what, r.err, r.stderr)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %s within a minute; stdout:\n%s\nstderr:\n%s", what, r.stdout, r.stderr)
		}
	}
}

// startDrops starts `cttrace drops args...` and waits until its probes are
// attached. stdout is captured unless the caller gives one.
func startDrops(t *testing.T, stdout io.Writer, args ...string) *process {
	t.Helper()
	return startCttrace(t, stdout, append([]string{"drops"}, args...)...)
}

// stop sends sig and returns the exit status.
func (r *process) stop(t *testing.T, sig syscall.Signal) int {
	t.Helper()
	r.cmd.Process.Signal(sig)
	return r.wait(t, time.Minute)
}

// fullTable returns a Lab whose table holds max ASSURED entries, so every
// new flow is refused.
func fullTable(t *testing.T, max int) *ctlab.Lab {
	lab := ctlab.New(t)
	ctlab.SetMax(t, max)
	if err := lab.HoldEstablished(max); err != nil {
		t.Fatalf("fill the table: %v", err)
	}
	return lab
}

// refuse sends n new flows from src into a full table and checks all were refused.
func refuse(t *testing.T, lab *ctlab.Lab, src string, n int) {
	t.Helper()
	sent, refused, err := lab.SendNewFlows(netip.MustParseAddr(src), netip.MustParseAddrPort("127.0.0.1:9"), n)
	if err != nil || sent != 0 || refused != n {
		t.Fatalf("send from %s: %d through, %d refused, err %v; want %d refused", src, sent, refused, err, n)
	}
}

func compileSchema(t *testing.T) *jsonschema.Schema {
	t.Helper()
	s, err := jsonschema.NewCompiler().Compile("../../docs/drops-schema-v1.json")
	if err != nil {
		t.Fatalf("compile schema: %v", err)
	}
	return s
}

// records parses NDJSON output, validating every line against the schema.
func records(t *testing.T, out []byte) []map[string]any {
	t.Helper()
	schema := compileSchema(t)
	var recs []map[string]any
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		v, err := jsonschema.UnmarshalJSON(bytes.NewReader(sc.Bytes()))
		if err != nil {
			t.Fatalf("not JSON: %q: %v", sc.Text(), err)
		}
		if err := schema.Validate(v); err != nil {
			t.Fatalf("line does not match docs/drops-schema-v1.json: %s\n%v", sc.Text(), err)
		}
		var m map[string]any
		json.Unmarshal(sc.Bytes(), &m)
		recs = append(recs, m)
	}
	return recs
}

// The NDJSON stream of a real run: every line valid against the schema,
// the namespace filter applied, one table_full event per refused packet as
// the kernel counted them, a summary last, and a summary on stderr.
func TestDropsStreamsEveryRefusalAsSchemaValidJSON(t *testing.T) {
	lab := fullTable(t, 32)
	r := startDrops(t, nil, "-o", "json", "--netns", "/run/netns/"+lab.Name())
	before, _ := lab.Stats()
	refuse(t, lab, "127.40.0.1", 30)
	refuse(t, lab, "127.40.0.2", 10)
	after, _ := lab.Stats()
	// No wait: on Ctrl-C cttrace detaches, then delivers all the kernel wrote.
	if code := r.stop(t, syscall.SIGINT); code != 0 {
		t.Fatalf("exit status %d after Ctrl-C\n%s", code, r.stderr)
	}
	recs := records(t, r.stdout.Bytes())
	perSrc := map[string]int{}
	for _, m := range recs[:len(recs)-1] {
		if m["type"] != "event" {
			t.Fatalf("unexpected record %v", m)
		}
		if uint32(m["netns"].(float64)) != lab.Inode() {
			t.Fatalf("--netns let through an event of netns %v", m["netns"])
		}
		perSrc[m["src"].(string)]++
	}
	if drop := after.Sub(before).Drop; len(recs)-1 != int(drop) {
		t.Errorf("%d events, kernel drop delta %d", len(recs)-1, drop)
	}
	if perSrc["127.40.0.1"] != 30 || perSrc["127.40.0.2"] != 10 {
		t.Errorf("events per source %v, want 30 and 10", perSrc)
	}
	last := recs[len(recs)-1]
	if last["type"] != "summary" || last["events"].(map[string]any)["table_full"].(float64) < 40 {
		t.Errorf("last record is not a summary counting the drops: %v", last)
	}
	if !strings.Contains(r.stderr.String(), "table_full=") {
		t.Errorf("no summary on stderr:\n%s", r.stderr)
	}
}

// With a ring buffer of one page and the reader stopped, the kernel must
// count what it could not deliver: delivered + lost = the kernel's drops,
// and the loss is reported in the stream.
func TestDropsReportsEveryLostEvent(t *testing.T) {
	lab := fullTable(t, 32)
	r := startDrops(t, nil, "-o", "json", "--ring-size", "4K")
	before, _ := lab.Stats()
	r.cmd.Process.Signal(syscall.SIGSTOP)
	refuse(t, lab, "127.41.0.1", 300)
	r.cmd.Process.Signal(syscall.SIGCONT)
	refuse(t, lab, "127.41.0.2", 20)
	delta, _ := lab.Stats()
	delta = delta.Sub(before)
	r.waitOutput(t, "live report of the loss", func(lines []string) bool {
		return slices.ContainsFunc(lines, func(l string) bool { return strings.Contains(l, `"type":"lost"`) })
	})
	if code := r.stop(t, syscall.SIGTERM); code != 0 {
		t.Fatalf("exit status %d after SIGTERM\n%s", code, r.stderr)
	}
	checkLossAccounted(t, r, delta.Drop)
}

// `cttrace drops | head -1`: the reader goes away, cttrace ends quietly
// with status 0 and leaves nothing loaded.
func TestDropsEndsQuietlyOnClosedPipe(t *testing.T) {
	lab := fullTable(t, 32)
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	r := startDrops(t, pw, "-o", "json")
	pw.Close()
	refuse(t, lab, "127.42.0.1", 5)
	line, err := bufio.NewReader(pr).ReadString('\n')
	if err != nil || !strings.Contains(line, `"table_full"`) {
		t.Fatalf("first line %q, %v", line, err)
	}
	pr.Close()
	refuse(t, lab, "127.42.0.2", 5) // the next write meets the closed pipe
	if code := r.wait(t, 30*time.Second); code != 0 || strings.Contains(r.stderr.String(), "broken pipe") {
		t.Fatalf("exit status %d, stderr:\n%s", code, r.stderr)
	}
	assertNothingLoaded(t)
}

// Ctrl-C, SIGTERM and SIGKILL all leave no program or link behind.
func TestDropsLeavesNothingLoaded(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM, syscall.SIGKILL} {
		t.Run(sig.String(), func(t *testing.T) {
			r := startDrops(t, nil)
			// Before 5.15 a kprobe is attached through its perf event, not a
			// BPF link (BPF_LINK_TYPE_PERF_EVENT came with 5.15): there is
			// no link to see, and none to leave behind.
			wantLinks := testbed.KernelAtLeast(5, 15) || r.backend(t) != "kprobe"
			if loaded := testbed.LoadedNow(objectNames(t)); len(loaded.Programs) == 0 || len(loaded.Maps) == 0 || (wantLinks && len(loaded.Links) == 0) {
				t.Fatalf("cttrace's programs, maps and links are not all seen while it runs (%s): the check would prove nothing", loaded)
			}
			code := r.stop(t, sig)
			if sig != syscall.SIGKILL && code != 0 {
				t.Fatalf("exit status %d\n%s", code, r.stderr)
			}
			assertNothingLoaded(t)
		})
	}
}

// assertNothingLoaded fails if any of cttrace's programs, maps or links
// outlives it.
func assertNothingLoaded(t *testing.T) {
	t.Helper()
	testbed.AssertUnloaded(t, objectNames(t))
}

func objectNames(t *testing.T) testbed.Names {
	t.Helper()
	progs, maps, err := probe.ObjectNames()
	if err != nil {
		t.Fatal(err)
	}
	return testbed.Names{Programs: progs, Maps: maps}
}

// Without the capabilities, cttrace says which are missing and exits 1.
func TestDropsWithoutPrivilegesSaysWhatIsMissing(t *testing.T) {
	testbed.RequireRoot(t)
	dir, err := os.MkdirTemp("", "cttrace-nobody-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	os.Chmod(dir, 0o755)
	bin := filepath.Join(dir, "cttrace")
	data, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, data, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "drops")
	cmd.Env = append(os.Environ(), "CTTRACE_TEST_AS_MAIN=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	if code := cmd.ProcessState.ExitCode(); code != exitRuntime || !strings.Contains(string(out), "CAP_BPF") {
		t.Fatalf("as nobody: exit %d (%v), output:\n%s", code, err, out)
	}
}

// The bounded stream under a spoofed flood: at most --stream-limit events
// a second are streamed one by one, the rest arrive as aggregate records,
// and streamed + aggregated + lost is exactly the kernel's drop count;
// per source too for three heavy sources in a burst between two floods,
// within ±10 % (the kernel's sketch, docs/drops.md).
func TestDropsStreamIsBoundedAndExact(t *testing.T) {
	if testbed.Tier() == testbed.VM {
		t.Skip("a 300,000-flow flood is sized for the host: under emulation it would take minutes")
	}
	const limit, perHeavy, heavyN = 1000, 3000, 3
	lab := fullTable(t, 32)
	r := startDrops(t, nil, "-o", "json", "--netns", "/run/netns/"+lab.Name(), "--stream-limit", strconv.Itoa(limit))
	before, err := lab.Stats()
	if err != nil {
		t.Fatal(err)
	}
	heavyBase := netip.MustParseAddr("127.81.0.1")
	for _, spec := range []ctlab.FloodSpec{
		{Random: true, Packets: 150_000, Seed: 3},
		{Sources: heavyN, SourceBase: heavyBase, Packets: heavyN * perHeavy},
		{Random: true, Packets: 150_000, Seed: 4},
	} {
		if res, err := lab.Flood(spec); err != nil || res.Refused != spec.Packets {
			t.Fatalf("flood %+v: %+v, %v", spec, res, err)
		}
	}
	after, err := lab.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if code := r.stop(t, syscall.SIGINT); code != 0 {
		t.Fatalf("exit status %d\n%s", code, r.stderr)
	}
	drop := after.Sub(before).Drop
	var streamed, aggregated, lost, aggRecords int
	var sampling float64 = 1
	var summary map[string]any
	perSrc := map[string]int{}
	for _, m := range records(t, r.stdout.Bytes()) {
		switch m["type"] {
		case "event":
			streamed++
			perSrc[m["src"].(string)]++
		case "aggregate":
			aggRecords++
			n := int(m["count"].(float64))
			aggregated += n
			perSrc[m["src"].(string)] += n
			sampling = max(sampling, m["sampling"].(float64))
		case "lost":
			lost += int(m["lost"].(float64))
		case "summary":
			summary = m
		}
	}
	secs := summary["duration_s"].(float64)
	t.Logf("kernel drops %d in %.1fs: streamed %d, aggregated %d in %d records (sampling up to 1 in %.0f), lost %d; heavy %d %d %d",
		drop, secs, streamed, aggregated, aggRecords, sampling, lost, perSrc["127.81.0.1"], perSrc["127.81.0.2"], perSrc["127.81.0.3"])
	if streamed+aggregated+lost != int(drop) {
		t.Errorf("streamed %d + aggregated %d + lost %d != kernel drops %d", streamed, aggregated, lost, drop)
	}
	if int(summary["aggregated"].(float64)) != aggregated {
		t.Errorf("summary says %v aggregated, the records %d", summary["aggregated"], aggregated)
	}
	// Each CPU streams its share per second of its own: the bound is one
	// share per CPU for every second begun.
	cpus := runtime.NumCPU()
	share := (limit + cpus - 1) / cpus
	if maxStreamed := (int(secs) + 2) * cpus * share; streamed > maxStreamed || streamed == 0 {
		t.Errorf("streamed %d events in %.1fs, want 1 to %d (--stream-limit %d)", streamed, secs, maxStreamed, limit)
	}
	if maxRecords := (int(secs) + 2) * (session.AggregatesShown + len(event.Reasons())); aggRecords > maxRecords {
		t.Errorf("%d aggregate records in %.1fs, over the bound %d", aggRecords, secs, maxRecords)
	}
	for i := 0; i < heavyN; i++ {
		src := netip.AddrFrom4([4]byte{127, 81, 0, byte(1 + i)}).String()
		if n := perSrc[src]; 10*n < 9*perHeavy || 10*n > 11*perHeavy {
			t.Errorf("%s: %d streamed or aggregated of %d refused: outside ±10 %%", src, n, perHeavy)
		}
	}
}

// --duration is traced time: it counts from the moment the probes are
// attached, not from the start of a load that takes seconds under
// emulation. The summary's duration_s is measured from the attach.
func TestDropsDurationCountsFromAttach(t *testing.T) {
	r := startDrops(t, nil, "-o", "json", "--duration", "1s")
	if code := r.wait(t, time.Minute); code != 0 {
		t.Fatalf("exit status %d\n%s", code, r.stderr)
	}
	recs := records(t, r.stdout.Bytes())
	if len(recs) == 0 || recs[len(recs)-1]["type"] != "summary" {
		t.Fatalf("no summary at the end:\n%s", r.stdout)
	}
	if d := recs[len(recs)-1]["duration_s"].(float64); d < 1.0 || d > 30 {
		t.Fatalf("traced for %.3f s with --duration 1s", d)
	}
}

// checkLossAccounted checks a drops -o json run that lost events: the
// events it streamed plus the losses its `lost` records report are the
// kernel's drops, and its summary's lost is the same total.
func checkLossAccounted(t *testing.T, r *process, drops int64) {
	t.Helper()
	var delivered, lost int64
	summaryLost := -1.0
	for _, m := range records(t, r.stdout.Bytes()) {
		switch m["type"] {
		case "event":
			delivered++
		case "lost":
			lost += int64(m["lost"].(float64))
		case "summary":
			summaryLost = m["lost"].(float64)
		}
	}
	t.Logf("kernel drops %d: delivered %d, lost %d (summary says %.0f)", drops, delivered, lost, summaryLost)
	if lost == 0 {
		t.Fatal("nothing was lost: the ring buffer did not fill, the test proves nothing")
	}
	if delivered+lost != drops || float64(lost) != summaryLost {
		t.Errorf("delivered %d + lost %d != kernel drops %d (summary lost %.0f)", delivered, lost, drops, summaryLost)
	}
}

// --events-file with a tiny --rotate-size and a SIGHUP after logrotate's
// move: the files hold every event exactly once, each line whole, and the
// summary; stdout keeps its own format.
func TestDropsEventsFileRotates(t *testing.T) {
	lab := fullTable(t, 32)
	dir := t.TempDir()
	path := filepath.Join(dir, "events.ndjson")
	r := startDrops(t, nil, "--stream-limit", "0", "--events-file", path, "--rotate-size", "4K", "--rotate-keep", "1000")
	before, err := lab.Stats()
	if err != nil {
		t.Fatal(err)
	}
	refuse(t, lab, "127.43.0.1", 150)
	r.waitOutput(t, "the first events on stdout", func(lines []string) bool { return len(lines) > 100 })
	if err := os.Rename(path, path+".moved"); err != nil {
		t.Fatal(err)
	}
	r.cmd.Process.Signal(syscall.SIGHUP)
	refuse(t, lab, "127.43.0.2", 150)
	after, err := lab.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if code := r.stop(t, syscall.SIGINT); code != 0 {
		t.Fatalf("exit status %d\n%s", code, r.stderr)
	}
	files, _ := filepath.Glob(path + "*")
	var events, summaries int
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if len(b) > 0 && b[len(b)-1] != '\n' {
			t.Errorf("%s ends in the middle of a line", f)
		}
		for _, m := range records(t, b) {
			if m["host"] == nil || m["host"] == "" {
				t.Errorf("%s: a record without host: %v", f, m)
			}
			switch m["type"] {
			case "event":
				events++
			case "summary":
				summaries++
			}
		}
	}
	t.Logf("%d files, %d events, kernel drops %d", len(files), events, after.Sub(before).Drop)
	if events != int(after.Sub(before).Drop) || summaries != 1 || len(files) < 5 {
		t.Errorf("%d events in %d files (want %d), %d summaries", events, len(files), after.Sub(before).Drop, summaries)
	}
	if strings.HasPrefix(r.stdout.String(), "{") {
		t.Error("stdout turned to JSON: it is text unless -o json")
	}
}

// drops -o json --format ecs: each refusal is an ECS document whose source
// is the refused flow's.
func TestDropsECS(t *testing.T) {
	lab := fullTable(t, 32)
	r := startDrops(t, nil, "-o", "json", "--format", "ecs")
	refuse(t, lab, "127.44.0.1", 5)
	r.waitOutput(t, "five ECS documents", func(lines []string) bool { return len(lines) >= 5 })
	if code := r.stop(t, syscall.SIGINT); code != 0 {
		t.Fatalf("exit status %d\n%s", code, r.stderr)
	}
	var docs []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(r.stdout.String()), "\n") {
		var d map[string]any
		if err := json.Unmarshal([]byte(line), &d); err != nil {
			t.Fatalf("not JSON: %q", line)
		}
		docs = append(docs, d)
	}
	refusals := 0
	for _, d := range docs {
		ev, _ := d["event"].(map[string]any)
		if ev["action"] == "table_full" {
			refusals++
			if src, _ := d["source"].(map[string]any); src["ip"] != "127.44.0.1" || d["@timestamp"] == nil {
				t.Errorf("not the refused flow's document: %v", d)
			}
		}
	}
	if refusals != 5 || docs[len(docs)-1]["event"].(map[string]any)["action"] != "summary" {
		t.Errorf("%d refusals in %d documents (want 5 and a summary last)", refusals, len(docs))
	}
}
