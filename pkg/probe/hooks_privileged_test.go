//go:build privileged

package probe

import (
	"net/netip"
	"testing"

	"github.com/cttrace/cttrace/internal/ctlab"
	"github.com/cttrace/cttrace/internal/testbed"
	"github.com/cttrace/cttrace/pkg/event"
)

// Switching the per-flow hooks on and off, as fast as user space can,
// while a flood is being refused counts every refusal once: each is
// counted by early_drop's exit or by the allocation's, never by both and
// never by neither (bpf/cttrace.bpf.c, per_flow_hooks, and the marks
// early_drop_begin clears), against the kernel's own drop counter.
func TestSwitchingWhileRefusing(t *testing.T) {
	testbed.RequireRoot(t)
	f, err := DetectFeatures()
	if err != nil {
		t.Fatal(err)
	}
	tried := 0
	for _, b := range []Backend{BackendFentry, BackendKprobe} {
		if ok, why := f.BackendUsable(b); !ok {
			t.Logf("%s: not usable here: %s", b, why)
			continue
		}
		tried++
		t.Run(string(b), func(t *testing.T) { switchWhileRefusing(t, f, b) })
	}
	if tried == 0 {
		t.Skip("neither fentry nor kprobe can attach here: only they have per-flow hooks to switch (the tracepoint backend runs on dropped packets only)")
	}
}

func switchWhileRefusing(t *testing.T, f *Features, b Backend) {
	const max = 64
	ctlab.SetMax(t, max)
	lab := ctlab.New(t)
	if err := lab.HoldEstablished(max); err != nil {
		t.Fatal(err)
	}
	p, err := Attach(f, b, Options{Sources: SourceOptions{Enabled: true}, PerFlowOnPressure: true})
	if err != nil {
		t.Fatalf("attach: %v", err)
	}
	defer p.Close()
	if err := p.RefreshMax(); err != nil {
		t.Fatal(err)
	}
	before, err := lab.Stats()
	if err != nil {
		t.Fatal(err)
	}
	// A switch waits for the kernel to let go of the programs detached
	// (seconds for a trampoline under emulation): the flood runs in rounds
	// until the switches are done, so that each falls inside it.
	const switches = 8
	var srcs []netip.Addr
	for i := range 64 {
		srcs = append(srcs, netip.AddrFrom4([4]byte{127, 47, 0, byte(1 + i)}))
	}
	type result struct {
		flows, refused int
		err            error
	}
	stop, done, flooding := make(chan struct{}), make(chan result, 1), make(chan struct{})
	go func() {
		var r result
		defer func() { done <- r }()
		for round := 0; ; round++ {
			if round == 1 {
				close(flooding)
			}
			select {
			case <-stop:
				return
			default:
			}
			sent, refused, err := lab.RawFlood(srcs, netip.MustParseAddrPort("127.0.0.1:9"), 512)
			r.flows += sent + refused
			r.refused += refused
			if r.err = err; err != nil {
				return
			}
		}
	}()
	select {
	case <-flooding:
	case r := <-done:
		t.Fatalf("flood: %d refused of %d, %v", r.refused, r.flows, r.err)
	}
	for range switches {
		if err := p.SetPerFlow(!p.PerFlow()); err != nil {
			close(stop)
			<-done
			t.Fatal(err)
		}
	}
	close(stop)
	r := <-done
	if r.err != nil || r.refused != r.flows {
		t.Fatalf("flood: %d refused of %d, %v", r.refused, r.flows, r.err)
	}
	after, err := lab.Stats()
	if err != nil {
		t.Fatal(err)
	}
	drops := uint64(after.Sub(before).Drop)
	if drops != uint64(r.flows) {
		t.Fatalf("the kernel dropped %d, the test refused %d: the test bed is off", drops, r.flows)
	}
	got := refusalsIn(t, p, lab.Inode())
	t.Logf("%s: %d switches during a flood of %d refusals; %d counted", b, switches, r.flows, got)
	if got != drops {
		t.Errorf("table_full counted %d across %d switches, the kernel's drop counter %d", got, switches, drops)
	}
}

// refusalsIn is what the probe counted as table_full in the namespace of
// inode. The programs count a refusal on the sending task, before its send
// fails: once the flood returned, every refusal is in the counters.
func refusalsIn(t *testing.T, p *Probe, inode uint32) uint64 {
	t.Helper()
	counts, err := p.NamespaceCounts()
	if err != nil {
		t.Fatal(err)
	}
	var n uint64
	for ns, c := range counts {
		if ns.Inode == inode {
			n += c.Events.Of(event.ReasonTableFull)
		}
	}
	return n
}
