package probe

import (
	"testing"

	"github.com/cttrace/cttrace/pkg/event"
)

// The Go enums of pkg/event are written by hand; these tests hold them to
// bpf/cttrace.h through the constants bpf2go generates from it, so a type
// added, renumbered or removed in the header fails here.
func TestReasonsFollowTheHeader(t *testing.T) {
	want := map[cttraceCtEventType]event.Reason{
		cttraceCtEventTypeCT_EV_TABLE_FULL:     event.ReasonTableFull,
		cttraceCtEventTypeCT_EV_ALLOC_FAILED:   event.ReasonAllocFailed,
		cttraceCtEventTypeCT_EV_EARLY_DROP:     event.ReasonEarlyDrop,
		cttraceCtEventTypeCT_EV_INSERT_FAILED:  event.ReasonInsertFailed,
		cttraceCtEventTypeCT_EV_INSERT:         event.ReasonInsert,
		cttraceCtEventTypeCT_EV_DELETE:         event.ReasonDelete,
		cttraceCtEventTypeCT_EV_CLASH_RESOLVED: event.ReasonClashResolved,
		cttraceCtEventTypeCT_EV_GC_EVICT:       event.ReasonGCEvict,
	}
	for typ, r := range want {
		if got := event.ReasonFromKernel(uint32(typ)); got != r {
			t.Errorf("type %d: reason %q, want %q", typ, got, r)
		}
		if got := r.KernelType(); got != uint32(typ) {
			t.Errorf("%s: kernel type %d, want %d", r, got, typ)
		}
	}
	if n := len(event.Reasons()); n != int(cttraceCtEventTypeCT_EV_MAX)-1 || n != len(want) {
		t.Errorf("%d reasons, the header has %d types, this test knows %d", n, cttraceCtEventTypeCT_EV_MAX-1, len(want))
	}
}

func TestDetailsFollowTheHeader(t *testing.T) {
	want := map[cttraceCtDetail]event.Detail{
		cttraceCtDetailCT_DETAIL_NONE:           event.DetailNone,
		cttraceCtDetailCT_DETAIL_EVICT_ALLOC:    event.DetailEvictedForNewFlow,
		cttraceCtDetailCT_DETAIL_EVICT_GC:       event.DetailEvictedByGC,
		cttraceCtDetailCT_DETAIL_CLASH:          event.DetailClash,
		cttraceCtDetailCT_DETAIL_CHAIN_TOO_LONG: event.DetailChainTooLong,
		cttraceCtDetailCT_DETAIL_DYING:          event.DetailDying,
		cttraceCtDetailCT_DETAIL_EXPIRED:        event.DetailExpired,
		cttraceCtDetailCT_DETAIL_NETLINK:        event.DetailNetlink,
		cttraceCtDetailCT_DETAIL_OTHER:          event.DetailOther,
	}
	for d, detail := range want {
		if got := event.DetailFromKernel(uint8(d)); got != detail {
			t.Errorf("detail %d: %q, want %q", d, got, detail)
		}
	}
	if n := len(event.Details()); n != len(want) || n != int(cttraceCtDetailCT_DETAIL_MAX) {
		t.Errorf("%d details, the header has %d, this test knows %d", n, cttraceCtDetailCT_DETAIL_MAX, len(want))
	}
	for _, d := range event.Details()[1:] {
		if !d.Reason().Valid() {
			t.Errorf("detail %q belongs to no reason", d)
		}
	}
	for c, conf := range map[cttraceCtConfidence]event.Confidence{
		cttraceCtConfidenceCT_CONF_EXACT:    event.ConfidenceExact,
		cttraceCtConfidenceCT_CONF_INFERRED: event.ConfidenceInferred,
	} {
		if got := event.ConfidenceFromKernel(uint8(c)); got != conf {
			t.Errorf("confidence %d: %q, want %q", c, got, conf)
		}
	}
}
