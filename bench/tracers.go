package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Kind is one of the tracers the bench compares.
type Kind string

const (
	Untraced          Kind = "untraced"
	FloorProg         Kind = "floor"
	BPFTraceCount     Kind = "bpftrace-count"
	BPFTracePerSource Kind = "bpftrace-per-source"
	TopSources        Kind = "top-sources"
	// TopSourcesOnPressure is top-sources --hooks on-pressure: no
	// per-flow hook until a table is nearly full or refuses (not in the
	// default set).
	TopSourcesOnPressure Kind = "top-sources-on-pressure"
	DropsFile            Kind = "drops-file"
	DropsNull            Kind = "drops-null"
	// DropsFileAll is drops to a file with --stream-limit 0: every event
	// streamed one by one (not in the default set).
	DropsFileAll Kind = "drops-file-all"
	// FlowFloor is the per-flow floor of the fentry and kprobe backends
	// (HookFloor), given one with BENCH_BACKENDS (not in the default
	// set: this machine's kernel has neither).
	FlowFloor Kind = "hook-floor"
)

// AllKinds in the order the tables list them.
var AllKinds = []Kind{Untraced, FloorProg, BPFTraceCount, BPFTracePerSource, TopSources, DropsFile, DropsNull}

// KnownKinds are AllKinds and those BENCH_TRACERS may add.
var KnownKinds = append(AllKinds[:len(AllKinds):len(AllKinds)], DropsFileAll, FlowFloor, TopSourcesOnPressure)

// Base is the tracer without a backend suffix ("top-sources:fentry" is
// top-sources with --backend fentry).
func (k Kind) Base() Kind {
	b, _, _ := strings.Cut(string(k), ":")
	return Kind(b)
}

// Backend is the backend a cttrace tracer is forced to ("" for auto).
func (k Kind) Backend() string {
	_, b, _ := strings.Cut(string(k), ":")
	return b
}

// WithBackend is k forced to backend (k itself for tracers that have no
// backends, or an empty backend).
func (k Kind) WithBackend(backend string) Kind {
	if backend == "" || !k.TakesBackend() {
		return k
	}
	return Kind(string(k.Base()) + ":" + backend)
}

// TakesBackend says whether k runs once per backend of BENCH_BACKENDS.
func (k Kind) TakesBackend() bool {
	return k.IsCttrace() || k.Base() == FlowFloor
}

// IsCttrace says whether k runs cttrace.
func (k Kind) IsCttrace() bool {
	switch k.Base() {
	case TopSources, TopSourcesOnPressure, DropsFile, DropsNull, DropsFileAll:
		return true
	}
	return false
}

// IsTop says whether k runs top-sources, whatever its hooks.
func (k Kind) IsTop() bool {
	return k.Base() == TopSources || k.Base() == TopSourcesOnPressure
}

// Describe is the tracer's row label.
func (k Kind) Describe() string {
	d := k.Base().describe()
	if b := k.Backend(); b != "" {
		d += " --backend " + b
	}
	return d
}

func (k Kind) describe() string {
	switch k {
	case Untraced:
		return "nothing attached"
	case FloorProg:
		return "floor: count-only tp_btf/kfree_skb"
	case FlowFloor:
		return "floor: empty per-flow hooks"
	case BPFTraceCount:
		return "bpftrace count.bt"
	case BPFTracePerSource:
		return "bpftrace per-source.bt"
	case TopSources:
		return "cttrace top-sources -o json"
	case TopSourcesOnPressure:
		return "cttrace top-sources -o json --hooks on-pressure"
	case DropsFile:
		return "cttrace drops -o json > file"
	case DropsNull:
		return "cttrace drops -o json > /dev/null"
	case DropsFileAll:
		return "cttrace drops -o json --stream-limit 0 > file"
	}
	return string(k)
}

// Env is what starting a tracer needs.
type Env struct {
	Cttrace    string // cttrace binary
	Floor      string // ctfloor binary
	BPFTrace   string // bpftrace binary
	ScriptDir  string // bench/bpftrace
	Reason     uint32 // NETFILTER_DROP as skb:kfree_skb's format gives it
	Netns      string // /run/netns/<lab>
	NetnsInode uint32
	Dir        string // scratch directory for outputs
	// StreamLimit: cttrace drops has --stream-limit (cttrace before the
	// bounded stream streams every event and has no such flag).
	StreamLimit bool
}

// Tracer is a running tracer process.
type Tracer struct {
	Kind    Kind
	Backend string   // what cttrace's ready file says
	Progs   []uint32 // its BPF programs
	cmd     *exec.Cmd
	done    chan struct{}
	waitErr error
	out     string // stdout file ("" for /dev/null)
	errPath string
	ready   string

	// drops-file: incremental count of the output (events streamed one by
	// one, counted in aggregate records, lost).
	off              int64
	partial          []byte
	events, lostSeen int64
	aggregated       int64 // drop events counted in aggregate records
}

// Outcome is what a tracer reported.
type Outcome struct {
	Reported int64 // drops it reported (capture's numerator)
	Lost     int64 // events it says it lost
	Header   int64 // top-sources: the namespace line's drops (-1 otherwise)
	Streamed int64 // drops: of Reported, those streamed one by one (-1 when unknown)
	Inserts  int64 // top-sources: inserts of its last snapshot's rows and other (-1 otherwise)
}

// Start starts a tracer and returns once it is attached (cttrace's
// --ready-file, bpftrace's BEGIN line, ctfloor's ready file). Untraced
// returns nil.
func Start(ctx context.Context, k Kind, env Env, tag string) (*Tracer, error) {
	if k == Untraced {
		return nil, nil
	}
	t := &Tracer{Kind: k, done: make(chan struct{})}
	base := filepath.Join(env.Dir, tag)
	t.out, t.errPath, t.ready = base+".out", base+".err", base+".ready"
	os.Remove(t.ready)
	var args []string
	switch k.Base() {
	case FloorProg:
		args = []string{env.Floor, "-ready-file", t.ready}
	case FlowFloor:
		if k.Backend() != "fentry" && k.Backend() != "kprobe" {
			return nil, fmt.Errorf("%s needs BENCH_BACKENDS fentry or kprobe", k)
		}
		args = []string{env.Floor, "-ready-file", t.ready, "-hooks", k.Backend()}
	case BPFTraceCount:
		args = []string{env.BPFTrace, "-f", "json", filepath.Join(env.ScriptDir, "count.bt"), strconv.Itoa(int(env.Reason))}
	case BPFTracePerSource:
		args = []string{env.BPFTrace, "-f", "json", filepath.Join(env.ScriptDir, "per-source.bt"), strconv.Itoa(int(env.Reason))}
	case TopSources, TopSourcesOnPressure:
		args = []string{env.Cttrace, "top-sources", "-o", "json", "--netns", env.Netns, "--ready-file", t.ready}
		if k.Base() == TopSourcesOnPressure {
			args = append(args, "--hooks", "on-pressure")
		}
	case DropsFile, DropsNull, DropsFileAll:
		args = []string{env.Cttrace, "drops", "-o", "json", "--netns", env.Netns, "--ready-file", t.ready}
		if k.Base() == DropsNull {
			t.out = ""
		}
		if k.Base() == DropsFileAll && env.StreamLimit {
			args = append(args, "--stream-limit", "0")
		}
	default:
		return nil, fmt.Errorf("unknown tracer %q", k)
	}
	if b := k.Backend(); b != "" && k.IsCttrace() {
		args = append(args, "--backend", b)
	}
	t.cmd = exec.Command(args[0], args[1:]...)
	// Its own process group: a Ctrl-C at the terminal reaches the harness,
	// which stops the tracer itself; and it dies with the harness.
	t.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	stdout, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if t.out != "" {
		stdout, err = os.Create(t.out)
	}
	if err != nil {
		return nil, err
	}
	defer stdout.Close()
	stderr, err := os.Create(t.errPath)
	if err != nil {
		return nil, err
	}
	defer stderr.Close()
	t.cmd.Stdout, t.cmd.Stderr = stdout, stderr
	if err := spawn(t.cmd); err != nil {
		return nil, fmt.Errorf("start %s: %w", k, err)
	}
	defer os.Remove(t.ready)
	go func() {
		t.waitErr = t.cmd.Wait()
		close(t.done)
	}()

	isReady := func() bool {
		if k.Base() == BPFTraceCount || k.Base() == BPFTracePerSource {
			b, _ := os.ReadFile(t.out)
			return bytes.Contains(b, []byte(`"data": "ready\n"`)) || bytes.Contains(b, []byte(`"data":"ready\n"`))
		}
		b, err := os.ReadFile(t.ready)
		if err == nil {
			t.Backend = strings.TrimSpace(string(b))
		}
		return err == nil
	}
	deadline := time.Now().Add(60 * time.Second)
	for !isReady() {
		select {
		case <-t.done:
			return nil, fmt.Errorf("%s exited before it was attached: %v: %s", k, t.waitErr, tail(t.errPath))
		case <-ctx.Done():
			t.Kill()
			return nil, ctx.Err()
		default:
		}
		if time.Now().After(deadline) {
			t.Kill()
			return nil, fmt.Errorf("%s not attached after 60 s: %s", k, tail(t.errPath))
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Progs, err = ProgramIDs(t.cmd.Process.Pid)
	if err != nil {
		t.Kill()
		return nil, fmt.Errorf("%s: its BPF programs: %w", k, err)
	}
	return t, nil
}

// spawn starts cmd from one OS thread that lives as long as this process.
// Pdeathsig fires when the thread that forked the child ends, and Go ends
// the threads of goroutines that exit while locked to them (ctlab's Lab.Do
// does that): a tracer forked from such a thread would be killed at once.
func spawn(cmd *exec.Cmd) error {
	spawnOnce.Do(func() {
		spawnReq = make(chan spawnRequest)
		go func() {
			runtime.LockOSThread() // never unlocked: the thread stays
			for r := range spawnReq {
				r.done <- r.cmd.Start()
			}
		}()
	})
	done := make(chan error, 1)
	spawnReq <- spawnRequest{cmd, done}
	return <-done
}

type spawnRequest struct {
	cmd  *exec.Cmd
	done chan error
}

var (
	spawnOnce sync.Once
	spawnReq  chan spawnRequest
)

// PID is the tracer's process ID.
func (t *Tracer) PID() int { return t.cmd.Process.Pid }

// Drain waits until the tracer has dealt with the drops the kernel made so
// far (expected since it started; floodEnd is when the last was made):
//   - drops to a file: until its events plus its lost count reach expected;
//   - drops to /dev/null: until it has neither written nor used CPU for
//     200 ms (nothing else shows its progress);
//   - top-sources: until it wrote a snapshot taken after floodEnd;
//   - the others count in the kernel: nothing to wait for.
//
// It gives up after timeout and says so.
func (t *Tracer) Drain(ctx context.Context, expected int64, floodEnd time.Time, timeout time.Duration) error {
	if t == nil {
		return nil
	}
	deadline := time.Now().Add(timeout)
	var lastW int64 = -1
	var lastC time.Duration = -1
	still := 0
	for {
		select {
		case <-t.done:
			return fmt.Errorf("%s exited: %v: %s", t.Kind, t.waitErr, tail(t.errPath))
		case <-ctx.Done():
			return ctx.Err()
		default:
		}
		switch t.Kind.Base() {
		case DropsFile, DropsFileAll:
			if err := t.scanDrops(); err != nil {
				return err
			}
			if t.events+t.aggregated+t.lostSeen >= expected {
				return nil
			}
		case DropsNull:
			w, err1 := WriteChars(t.PID())
			c, err2 := ProcCPU(t.PID())
			if err1 != nil || err2 != nil {
				return errors.Join(err1, err2)
			}
			if w == lastW && c == lastC {
				still++
				if still >= 4 {
					return nil
				}
			} else {
				still = 0
			}
			lastW, lastC = w, c
		case TopSources, TopSourcesOnPressure:
			snap, err := lastSnapshot(t.out)
			if err != nil {
				return err
			}
			if snap != nil && snap.Time.After(floodEnd) {
				return nil
			}
		default:
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: not drained after %v", t.Kind, timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// scanDrops counts the drop events and the lost count in the new part of
// drops' NDJSON output.
func (t *Tracer) scanDrops() error {
	f, err := os.Open(t.out)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := f.Seek(t.off, io.SeekStart); err != nil {
		return err
	}
	b, err := io.ReadAll(f)
	if err != nil {
		return err
	}
	t.off += int64(len(b))
	b = append(t.partial, b...)
	i := bytes.LastIndexByte(b, '\n')
	if i < 0 {
		t.partial = b
		return nil
	}
	t.partial = append([]byte(nil), b[i+1:]...)
	for _, line := range bytes.Split(b[:i], []byte{'\n'}) {
		switch {
		case bytes.Contains(line, []byte(`"type":"event"`)):
			if isDropReason(line) {
				t.events++
			}
		case bytes.Contains(line, []byte(`"type":"aggregate"`)):
			if !isDropReason(line) {
				continue
			}
			var rec struct {
				Count int64 `json:"count"`
			}
			if err := json.Unmarshal(line, &rec); err != nil {
				return fmt.Errorf("drops output: %w: %s", err, line)
			}
			t.aggregated += rec.Count
		case bytes.Contains(line, []byte(`"type":"lost"`)), bytes.Contains(line, []byte(`"type":"summary"`)):
			var rec struct {
				Type      string `json:"type"`
				Lost      int64  `json:"lost"`
				LostTotal int64  `json:"lost_total"`
			}
			if err := json.Unmarshal(line, &rec); err != nil {
				return fmt.Errorf("drops output: %w: %s", err, line)
			}
			if rec.Type == "lost" {
				t.lostSeen = max(t.lostSeen, rec.LostTotal)
			} else {
				t.lostSeen = max(t.lostSeen, rec.Lost)
			}
		}
	}
	return nil
}

func isDropReason(line []byte) bool {
	for _, r := range []string{"table_full", "alloc_failed", "insert_failed"} {
		if bytes.Contains(line, []byte(`"reason":"`+r+`"`)) {
			return true
		}
	}
	return false
}

// topSnapshot is the part of a top-sources JSON record the bench reads.
type topSnapshot struct {
	Time       time.Time `json:"time"`
	Lost       int64     `json:"lost"`
	Namespaces []struct {
		Netns uint32 `json:"netns"`
		Drops int64  `json:"drops"`
	} `json:"namespaces"`
	Rows []struct {
		Drops   int64 `json:"drops"`
		Inserts int64 `json:"inserts"`
	} `json:"rows"`
	Other struct {
		Drops   int64 `json:"drops"`
		Inserts int64 `json:"inserts"`
	} `json:"other"`
}

// lastSnapshot parses the last complete line of top-sources' output (nil
// when there is none yet).
func lastSnapshot(path string) (*topSnapshot, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	i := bytes.LastIndexByte(b, '\n')
	if i < 0 {
		return nil, nil
	}
	b = b[:i]
	line := b[bytes.LastIndexByte(b, '\n')+1:]
	var s topSnapshot
	if err := json.Unmarshal(line, &s); err != nil {
		return nil, fmt.Errorf("top-sources output: %w", err)
	}
	return &s, nil
}

// Stop interrupts the tracer (SIGINT, as Ctrl-C would), waits for it
// (SIGKILL after 30 s) and reads what it reported.
func (t *Tracer) Stop() (Outcome, error) {
	o := Outcome{Header: -1, Streamed: -1, Inserts: -1}
	if t == nil {
		return o, nil
	}
	t.cmd.Process.Signal(os.Interrupt)
	select {
	case <-t.done:
	case <-time.After(StopTimeout):
		// Seen once with bpftrace 0.17, in the middle of printing its map:
		// keep where it was for a look, then go on without its count.
		where := threadStacks(t.PID())
		t.Kill()
		o.Reported = -1
		return o, fmt.Errorf("%w (%s): %s", ErrStopTimeout, t.Kind, where)
	}
	if t.waitErr != nil {
		return o, fmt.Errorf("%s: %v: %s", t.Kind, t.waitErr, tail(t.errPath))
	}
	switch t.Kind.Base() {
	case FloorProg, FlowFloor:
		var r struct{ Drops int64 }
		b, err := os.ReadFile(t.out)
		if err == nil {
			err = json.Unmarshal(b, &r)
		}
		if err != nil {
			return o, fmt.Errorf("floor output: %w", err)
		}
		o.Reported = r.Drops
	case BPFTraceCount, BPFTracePerSource:
		n, err := bpftraceSum(t.out)
		if err != nil {
			return o, err
		}
		o.Reported = n
	case TopSources, TopSourcesOnPressure:
		s, err := lastSnapshot(t.out)
		if err != nil {
			return o, err
		}
		if s == nil {
			return o, errors.New("top-sources wrote no snapshot")
		}
		o.Reported, o.Inserts = s.Other.Drops, s.Other.Inserts
		for _, r := range s.Rows {
			o.Reported += r.Drops
			o.Inserts += r.Inserts
		}
		o.Lost = s.Lost
		o.Header = 0
		for _, ns := range s.Namespaces {
			o.Header += ns.Drops
		}
	case DropsFile, DropsFileAll:
		if err := t.scanDrops(); err != nil {
			return o, err
		}
		o.Reported, o.Lost, o.Streamed = t.events+t.aggregated, t.lostSeen, t.events
		os.Remove(t.out) // tens of MB per flood: counted, not kept
	case DropsNull:
		// The JSON went to /dev/null; the summary on stderr counts what
		// the kernel produced and what was lost: delivered = produced - lost.
		produced, lost, aggregated, err := dropsSummary(t.errPath)
		if err != nil {
			return o, err
		}
		o.Reported, o.Lost, o.Streamed = produced-lost, lost, produced-lost-aggregated
	}
	return o, nil
}

// StopTimeout is how long Stop waits after SIGINT.
var StopTimeout = 20 * time.Second

// ErrStopTimeout: the tracer did not exit after SIGINT and was killed; what
// it counted is unknown.
var ErrStopTimeout = errors.New("still running after SIGINT: killed, its count unknown")

// threadStacks is where a process's threads are in the kernel.
func threadStacks(pid int) string {
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*", pid))
	var b strings.Builder
	for _, task := range tasks {
		wchan, _ := os.ReadFile(task + "/wchan")
		stat, _ := os.ReadFile(task + "/stat")
		state := ""
		if i := bytes.LastIndexByte(stat, ')'); i >= 0 && i+3 < len(stat) {
			state = string(stat[i+2 : i+3])
		}
		fmt.Fprintf(&b, "[%s %s %s] ", filepath.Base(task), state, wchan)
	}
	return b.String()
}

// Kill ends the tracer at once (cleanup).
func (t *Tracer) Kill() {
	if t == nil || t.cmd.Process == nil {
		return
	}
	select {
	case <-t.done:
		return
	default:
	}
	t.cmd.Process.Kill()
	<-t.done
}

// bpftraceSum adds every value of the maps bpftrace printed at exit.
func bpftraceSum(path string) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	var n int64
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	for sc.Scan() {
		var rec struct {
			Type string                     `json:"type"`
			Data map[string]json.RawMessage `json:"data"`
		}
		if json.Unmarshal(sc.Bytes(), &rec) != nil || rec.Type != "map" {
			continue
		}
		for _, v := range rec.Data {
			var one int64
			if json.Unmarshal(v, &one) == nil {
				n += one
				continue
			}
			var keyed map[string]int64
			if err := json.Unmarshal(v, &keyed); err != nil {
				return 0, fmt.Errorf("bpftrace map: %w", err)
			}
			for _, c := range keyed {
				n += c
			}
		}
	}
	return n, sc.Err()
}

// dropsSummary reads `cttrace drops`'s summary on stderr: the drop events
// the kernel produced (table_full, alloc_failed, insert_failed), lost, and
// counted in aggregate records rather than streamed.
func dropsSummary(path string) (produced, lost, aggregated int64, err error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, 0, 0, err
	}
	found := false
	for _, line := range strings.Split(string(b), "\n") {
		fields := strings.Fields(line)
		if len(fields) == 0 || fields[0] != "events:" {
			continue
		}
		found = true
		produced, lost, aggregated = 0, 0, 0
		for _, f := range fields[1:] {
			k, v, ok := strings.Cut(f, "=")
			if !ok {
				continue
			}
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				continue
			}
			switch k {
			case "table_full", "alloc_failed", "insert_failed":
				produced += n
			case "lost":
				lost = n
			case "aggregated":
				aggregated = n
			}
		}
	}
	if !found {
		return 0, 0, 0, fmt.Errorf("no summary (\"events: ...\") in drops' stderr: %s", tail(path))
	}
	return produced, lost, aggregated, nil
}

// tail is the end of a log file, for error messages.
func tail(path string) string {
	b, _ := os.ReadFile(path)
	b = bytes.TrimSpace(b)
	if len(b) > 600 {
		b = b[len(b)-600:]
	}
	return string(b)
}
