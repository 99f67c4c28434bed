package probe

import (
	"errors"
	"fmt"
	"os"
	"time"
	"unsafe"

	"github.com/cilium/ebpf/ringbuf"

	"github.com/cttrace/cttrace/pkg/event"
)

// Reader turns ring buffer records into events.
type Reader struct {
	rb      *ringbuf.Reader
	rec     ringbuf.Record
	trigger event.Tuple // the last event's Trigger points here: no allocation per event
	clock   *event.Clock
	jiffy   time.Duration
}

// ErrClosed is returned by Read after Close.
var ErrClosed = os.ErrClosed

// NewReader opens the probe's ring buffer.
func (p *Probe) NewReader() (*Reader, error) {
	rb, err := ringbuf.NewReader(p.objs.Events)
	if err != nil {
		return nil, fmt.Errorf("open ring buffer: %w", err)
	}
	clock, err := event.NewClock()
	if err != nil {
		rb.Close()
		return nil, err
	}
	jiffy, err := event.JiffyDuration()
	if err != nil {
		rb.Close()
		return nil, err
	}
	return &Reader{rb: rb, clock: clock, jiffy: jiffy}, nil
}

// SetDeadline makes Read return os.ErrDeadlineExceeded once t has passed
// with nothing to read, so the caller can do periodic work.
func (r *Reader) SetDeadline(t time.Time) { r.rb.SetDeadline(t) }

// Read blocks for the next event and decodes it into ev. ev.Trigger, when
// set, points into the reader and is valid until the next Read.
func (r *Reader) Read(ev *event.Event) error {
	if err := r.rb.ReadInto(&r.rec); err != nil {
		if errors.Is(err, ringbuf.ErrClosed) {
			return ErrClosed
		}
		return err
	}
	raw := r.rec.RawSample
	if len(raw) < int(unsafe.Sizeof(cttraceCtEvent{})) {
		return fmt.Errorf("short event record: %d bytes", len(raw))
	}
	// The record is the C struct laid out by the kernel on this machine;
	// bpf2go generated the Go type from the same BTF, so the layouts agree.
	r.decode((*cttraceCtEvent)(unsafe.Pointer(&raw[0])), ev)
	return nil
}

func (r *Reader) decode(k *cttraceCtEvent, ev *event.Event) {
	*ev = event.Event{
		Time:        r.clock.Wall(k.TsBootNs),
		Reason:      event.ReasonFromKernel(k.Type),
		Detail:      event.DetailFromKernel(k.Detail),
		Confidence:  event.ConfidenceFromKernel(k.Confidence),
		CPU:         k.Cpu,
		Netns:       event.Netns{ID: k.NetnsId, Inode: k.Netns},
		Zone:        k.Zone,
		Count:       k.Count,
		Max:         k.Max,
		Status:      k.Status,
		TimeoutLeft: event.TimeoutFromJiffies(k.TimeoutLeft, r.jiffy),
		TCPState:    k.ProtoState,
	}
	ev.Flow, _ = tupleFromKernel(&k.Tuple)
	if t, ok := tupleFromKernel(&k.Trigger); ok {
		r.trigger = t
		ev.Trigger = &r.trigger
	}
}

func tupleFromKernel(t *cttraceCtTuple) (event.Tuple, bool) {
	return event.TupleFromKernel(t.Family, t.Proto, t.Saddr, t.Daddr, t.Sport, t.Dport)
}

// Clock converts the kernel's timestamps to wall time for this reader's
// events, and for anything else the probe reports.
func (r *Reader) Clock() *event.Clock { return r.clock }

// Drained reports whether every record written so far has been read.
func (r *Reader) Drained() bool { return r.rb.AvailableBytes() == 0 }

// Close stops the reader; a blocked Read returns ErrClosed.
func (r *Reader) Close() error { return r.rb.Close() }
