// Package demo is `cttrace demo`: a small, real attack on a throwaway
// network namespace, watched with cttrace's own commands, and everything
// undone afterwards.
//
// The one thing it changes outside its namespace is nf_conntrack_max,
// which is global: every namespace's count is compared with it. The demo
// lowers it only as far as leaves every namespace of the host room to
// double its current count, refuses when that would still need a large
// table, and restores it on every exit it can see (end, Ctrl-C, SIGTERM,
// a failure). Only SIGKILL of the demo itself skips that, so the restoring
// command is printed first.
package demo

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/cttrace/cttrace/internal/ctlab"
	"github.com/cttrace/cttrace/pkg/host"
	"github.com/cttrace/cttrace/pkg/table"
)

// Plan is what the demo will do to the host, decided before it does
// anything.
type Plan struct {
	HostMax int64 // nf_conntrack_max now
	Max     int64 // during the demo (HostMax when it is not lowered)
	// Busiest is the namespace with the most entries, and Peak its count.
	Busiest table.Namespace
	Peak    int64
	// Held are assured entries (TCP connections: never evicted), Evictable
	// one-way UDP flows; together they fill the demo's table.
	Held, Evictable int
}

// Limits of the plan.
const (
	smallestTable = 2048
	// largestTable bounds the entries the demo makes: 65536 entries are
	// about 16 MiB of kernel memory and a few seconds of set-up.
	largestTable = 65536
	// headroom: every namespace keeps room to double, and this more.
	headroom = 1024
)

// ErrTooBusy says that a demo table safe for the host would be too big.
var ErrTooBusy = errors.New("the host is too busy for the demo")

// PlanFor decides the demo's table for a host whose nf_conntrack_max is
// hostMax and whose namespaces are inUse.
func PlanFor(hostMax int64, inUse []table.NamespaceStats) (Plan, error) {
	p := Plan{HostMax: hostMax}
	for _, ns := range inUse {
		if ns.Err == nil && ns.Stats.Entries >= p.Peak {
			p.Busiest, p.Peak = ns.Namespace, ns.Stats.Entries
		}
	}
	safe := max(2*p.Peak+headroom, smallestTable)
	if safe > largestTable {
		return p, fmt.Errorf("%w: %s holds %d entries, and nf_conntrack_max applies to every namespace: a demo table that leaves it room to double would have %d entries; run the demo on a quieter machine or in a VM",
			ErrTooBusy, p.Busiest, p.Peak, safe)
	}
	p.Max = min(safe, hostMax)
	p.Held = int(p.Max / 2)
	p.Evictable = int(p.Max) - p.Held
	return p, nil
}

// Lowered says whether the demo changes nf_conntrack_max.
func (p Plan) Lowered() bool { return p.Max < p.HostMax }

// Options are the demo's settings.
type Options struct {
	// Cttrace is the binary the demo runs its commands with (itself).
	Cttrace string
	// Attack is how long the attack lasts.
	Attack time.Duration
	Out    io.Writer
	// Terminal is Out's file when it is a terminal: top-sources then runs
	// live on it during the attack, and drops' sample is shown after.
	Terminal *os.File
}

// Attackers: the heavy sources, and the rate of each kind of traffic.
var (
	heavyBase  = netip.MustParseAddr("127.66.0.1")
	heavyCount = 3
)

const (
	heavyRate = 600 // new flows a second from the heavy sources together
	lightRate = 400 // from random spoofed sources
)

// Run runs the demo until it ends or ctx is done, and undoes everything.
// Its namespace comes first: its nftables rule loads nf_conntrack where no
// rule had yet (the module then stays loaded, as after any stateful rule).
func Run(ctx context.Context, o Options) (err error) {
	out := o.Out
	lab, err := ctlab.Open("cttrace-demo")
	if err != nil {
		return err
	}
	defer func() {
		if cerr := lab.Close(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("clean up the demo's namespace %s: %w", lab.Name(), cerr))
		}
	}()
	p, err := plan()
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "cttrace demo: namespace %s (%d), with a stateful nftables rule (ct state new accept)\n", lab.Name(), lab.Inode())
	if p.Lowered() {
		fmt.Fprintf(out, "nf_conntrack_max is lowered from %d to %d for the demo (the busiest namespace, %s, holds %d entries: it keeps room to double); it is restored on exit (if this process is killed with SIGKILL: sysctl -w net.netfilter.nf_conntrack_max=%d)\n",
			p.HostMax, p.Max, p.Busiest, p.Peak, p.HostMax)
		if err := writeMax(p.Max); err != nil {
			return err
		}
		defer func() {
			if rerr := writeMax(p.HostMax); rerr != nil {
				err = errors.Join(err, fmt.Errorf("restore nf_conntrack_max to %d (do it by hand: sysctl -w net.netfilter.nf_conntrack_max=%d): %w", p.HostMax, p.HostMax, rerr))
			}
		}()
	}
	fmt.Fprintf(out, "filling its table (max %d): %d TCP connections (assured: never evicted) and %d one-way UDP flows (evictable)\n", p.Max, p.Held, p.Evictable)
	if err := lab.HoldEstablished(p.Held); err != nil {
		return fmt.Errorf("fill the table: %w", err)
	}
	if err := lab.FillUnassured(p.Evictable); err != nil {
		return fmt.Errorf("fill the table: %w", err)
	}
	if ctx.Err() != nil {
		return nil
	}
	return attack(ctx, lab, o)
}

// plan reads the host and decides.
func plan() (Plan, error) {
	hostMax, err := host.ConntrackMax()
	if err != nil {
		return Plan{}, err
	}
	inUse, err := table.InUse()
	if err != nil {
		return Plan{}, fmt.Errorf("list network namespaces: %w", err)
	}
	return PlanFor(hostMax, inUse)
}

// attack runs the traffic while cttrace watches it, then explains.
func attack(ctx context.Context, lab *ctlab.Lab, o Options) error {
	out := o.Out
	before, err := lab.Stats()
	if err != nil {
		return err
	}
	netns := "/run/netns/" + lab.Name()
	secs := strconv.Itoa(int(o.Attack.Seconds()) + 1)
	var topOut strings.Builder
	top := exec.CommandContext(ctx, o.Cttrace, "top-sources", "--netns", netns, "--interval", secs+"s", "--once", "--limit", "8")
	top.Stdout, top.Stderr = &topOut, io.Discard
	drops := exec.CommandContext(ctx, o.Cttrace, "drops", "--netns", netns, "--stream-limit", "4", "--duration", secs+"s")
	var held bytes.Buffer
	sample := &firstLines{w: out, n: sampleLines}
	cmds := []*exec.Cmd{top, drops}
	if o.Terminal != nil {
		// The live view has the screen during the attack; drops' sample
		// waits for it to end.
		sample.w = &held
		live := exec.CommandContext(ctx, o.Cttrace, "top-sources", "--netns", netns, "--interval", "1s", "--duration", secs+"s")
		live.Stdout, live.Stderr = o.Terminal, io.Discard
		cmds = append(cmds, live)
	}
	drops.Stdout, drops.Stderr = sample, io.Discard
	for _, c := range cmds {
		// Ctrl-C reaches the whole process group: they stop as this does.
		c.Cancel = func() error { return c.Process.Signal(os.Interrupt) }
		c.WaitDelay = 10 * time.Second
		// No Pdeathsig: it fires when the forking thread ends, and Lab.Do
		// ends threads. Both commands end by themselves (--duration,
		// --once) if this process is killed.
	}
	if err := startWatching(ctx, cmds...); err != nil {
		if ctx.Err() != nil {
			return nil // Ctrl-C while they attached
		}
		return err
	}
	fmt.Fprintf(out, "attack for %s: %d heavy sources (%s and up, %d new flows a second together) and random spoofed ones (%d a second), all new UDP flows into the full table\n\n",
		o.Attack, heavyCount, heavyBase, heavyRate, lightRate)
	fmt.Fprintf(out, "--- cttrace drops --netns %s --stream-limit 4: its first %d lines (at most 4 events a second one by one, the rest counted in aggregate lines) ---\n", netns, sampleLines)
	// A command that ends early (killed, failed) stops the attack: the
	// demo would show nothing more.
	attackCtx, stopAttack := context.WithCancel(ctx)
	defer stopAttack()
	results := make(chan error, len(cmds))
	for _, c := range cmds {
		go func() {
			err := c.Wait()
			if err != nil && ctx.Err() == nil {
				err = fmt.Errorf("cttrace %s ended during the demo: %w", c.Args[1], err)
				stopAttack()
			}
			results <- err
		}()
	}
	floodErr := flood(attackCtx, lab, o.Attack)
	var werr error
	for range cmds {
		werr = errors.Join(werr, <-results)
	}
	out.Write(held.Bytes())
	if ctx.Err() != nil {
		return nil
	}
	if floodErr != nil || werr != nil {
		return errors.Join(floodErr, werr)
	}
	after, err := lab.Stats()
	if err != nil {
		return err
	}
	d := after.Sub(before)
	if sample.skipped > 0 {
		fmt.Fprintf(out, "... and %d more lines\n", sample.skipped)
	}
	fmt.Fprintf(out, "\n--- cttrace top-sources --netns %s, over the attack ---\n%s", netns, topOut.String())
	evictions := "the early_drop lines above, each with the flow it made room for"
	if !sample.sawEviction {
		evictions = "not shown one by one: this kernel's backend, tracepoint, sees only dropped packets; fentry and kprobe do"
	}
	fmt.Fprintf(out, "--- what happened ---\n"+
		"The table was full. Each new flow needed an entry, so the kernel either\n"+
		"  - evicted one, where early_drop found an unreplied UDP entry in the few buckets it scans:\n"+
		"    its early_drop counter rose by %d (%s), or\n"+
		"  - refused the packet: its drop counter rose by %d (the table_full lines above; the kernel log says\n"+
		"    \"nf_conntrack: table full, dropping packet\" only a few times).\n"+
		"top-sources ranks who was refused: the %d heavy sources first; the spoofed ones, one or two drops each, mostly in \"other\".\n"+
		"On a real host: `cttrace status` (which tables are full, what a bigger one costs), then `cttrace top-sources` (who)\n"+
		"and `cttrace drops` (when and why).\n",
		d.EarlyDrop, evictions, d.Drop, heavyCount)
	return nil
}

// sampleLines is how much of drops' output the demo shows.
const sampleLines = 16

// firstLines passes the first n lines to w and counts the rest: a sample of
// a stream that would scroll the explanation away.
type firstLines struct {
	w                 io.Writer
	n, shown, skipped int
	pending           []byte // a line not yet ended
	sawEviction       bool
}

func (f *firstLines) Write(p []byte) (int, error) {
	f.pending = append(f.pending, p...)
	for {
		i := bytes.IndexByte(f.pending, '\n')
		if i < 0 {
			break
		}
		line := f.pending[:i+1]
		f.sawEviction = f.sawEviction || bytes.Contains(line, []byte("early_drop"))
		if f.shown < f.n {
			if _, err := f.w.Write(line); err != nil {
				return 0, err
			}
			f.shown++
		} else {
			f.skipped++
		}
		f.pending = f.pending[i+1:]
	}
	f.pending = append([]byte(nil), f.pending...)
	return len(p), nil
}

// startWatching starts the cttrace commands and waits until both have
// attached (the first refused flow is then seen by both).
func startWatching(ctx context.Context, cmds ...*exec.Cmd) error {
	dir, err := os.MkdirTemp("", "cttrace-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	var files []string
	var started []*exec.Cmd
	// On failure, what started goes: nothing of the demo outlives it.
	fail := func(err error) error {
		for _, c := range started {
			c.Process.Kill()
			c.Wait()
		}
		return err
	}
	for i, c := range cmds {
		f := fmt.Sprintf("%s/ready%d", dir, i)
		files = append(files, f)
		c.Args = append(c.Args, "--ready-file", f)
		if err := c.Start(); err != nil {
			return fail(fmt.Errorf("start %s: %w", strings.Join(c.Args[:2], " "), err))
		}
		started = append(started, c)
	}
	deadline := time.Now().Add(time.Minute)
	for _, f := range files {
		for {
			if _, err := os.Stat(f); err == nil {
				break
			}
			if ctx.Err() != nil {
				return fail(ctx.Err())
			}
			if time.Now().After(deadline) {
				return fail(errors.New("cttrace's probes did not attach within a minute"))
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return nil
}

// flood sends the heavy and the light traffic for d, paced, until ctx ends.
func flood(ctx context.Context, lab *ctlab.Lab, d time.Duration) error {
	var wg sync.WaitGroup
	errs := make([]error, 2)
	step := 200 * time.Millisecond
	for i, spec := range []ctlab.FloodSpec{
		{Sources: heavyCount, SourceBase: heavyBase, Rate: heavyRate},
		{Random: true, Seed: uint64(time.Now().UnixNano()), Rate: lightRate},
	} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// In slices of step, so that Ctrl-C stops it within one.
			spec.Packets = int(float64(spec.Rate) * step.Seconds())
			for end := time.Now().Add(d); time.Now().Before(end) && ctx.Err() == nil; {
				if _, err := lab.Flood(spec); err != nil {
					errs[i] = err
					return
				}
				spec.Seed++
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

func writeMax(n int64) error {
	if err := os.WriteFile(host.MaxPath, []byte(strconv.FormatInt(n, 10)), 0); err != nil {
		return fmt.Errorf("set nf_conntrack_max to %d: %w", n, err)
	}
	return nil
}
