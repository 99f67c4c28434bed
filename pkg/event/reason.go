// Package event is the model every step on the path of one event speaks:
// the Event itself (why the kernel refused, evicted or recorded an entry,
// the flow concerned, the state of the table at that moment), its Reason,
// Detail and Confidence, the counts made of events (Counts, by reason;
// Reason.IsDrop and IsEviction say once what a drop and an eviction are),
// and the records of a stream (Record: an event, an aggregate past the
// stream limit, a loss, the summary). It knows the kernel ABI only through
// the numeric values of bpf/cttrace.h's enums; the loader in pkg/probe
// decodes the generated struct and builds an Event with the constructors
// here.
package event

import (
	"fmt"
	"strings"
)

// Reason says what happened to a conntrack entry, or to the packet that
// wanted one. The names are cttrace's vocabulary on the command line, in JSON
// and in text, so they never change within a schema version.
type Reason string

// Reasons, one per enum ct_event_type.
const (
	ReasonTableFull     Reason = "table_full"     // refused: table at max, nothing evictable
	ReasonAllocFailed   Reason = "alloc_failed"   // refused: no memory for the entry
	ReasonEarlyDrop     Reason = "early_drop"     // an entry was evicted (the flow is the victim)
	ReasonInsertFailed  Reason = "insert_failed"  // confirmation refused; Detail says why
	ReasonInsert        Reason = "insert"         // a new entry was confirmed
	ReasonDelete        Reason = "delete"         // an entry left other than by eviction
	ReasonClashResolved Reason = "clash_resolved" // a clash was resolved, nothing dropped
	// ReasonGCEvict is apart from early_drop because the kernel's early_drop
	// counter (conntrack -S) does not count the gc worker's evictions.
	ReasonGCEvict Reason = "gc_evict" // the gc worker evicted an entry under pressure
)

// kernelReasons is indexed by enum ct_event_type; 0 is not a type.
var kernelReasons = [...]Reason{
	1: ReasonTableFull,
	2: ReasonAllocFailed,
	3: ReasonEarlyDrop,
	4: ReasonInsertFailed,
	5: ReasonInsert,
	6: ReasonDelete,
	7: ReasonClashResolved,
	8: ReasonGCEvict,
}

// Reasons returns every reason in the kernel's order, which is also the
// order summaries list them in.
func Reasons() []Reason {
	return append([]Reason(nil), kernelReasons[1:]...)
}

// A drop, everywhere in cttrace (the DROPS columns, the headers, the
// kernel side's is_drop), is a packet conntrack refused: table_full,
// alloc_failed or insert_failed, what the kernel counts as `drop` and
// `insert_failed`. An eviction (early_drop, gc_evict) loses an entry, not
// a packet, and is counted apart.

// RefusalsAndEvictions returns the drops and the evictions: what `cttrace
// drops` streams unless told otherwise.
func RefusalsAndEvictions() []Reason {
	return []Reason{ReasonTableFull, ReasonAllocFailed, ReasonEarlyDrop, ReasonGCEvict, ReasonInsertFailed}
}

// ReasonFromKernel maps an enum ct_event_type value to its Reason. A value
// outside the enum gives "", which Valid reports as false: the BPF object and
// this package are built from the same header, so the caller should count
// such an event as a bug rather than print it.
func ReasonFromKernel(t uint32) Reason {
	if t == 0 || t >= uint32(len(kernelReasons)) {
		return ""
	}
	return kernelReasons[t]
}

// KernelType is r's enum ct_event_type value, 0 for a reason cttrace does
// not know: the one reverse of ReasonFromKernel, for masks and counters
// indexed by the kernel's type.
func (r Reason) KernelType() uint32 {
	for t, k := range kernelReasons {
		if k == r && r != "" {
			return uint32(t)
		}
	}
	return 0
}

// Valid reports whether r is one of the reasons cttrace knows.
func (r Reason) Valid() bool {
	for _, k := range kernelReasons[1:] {
		if r == k {
			return true
		}
	}
	return false
}

// IsDrop reports whether r means a packet was refused (see
// RefusalsAndEvictions).
func (r Reason) IsDrop() bool {
	switch r {
	case ReasonTableFull, ReasonAllocFailed, ReasonInsertFailed:
		return true
	}
	return false
}

// IsEviction reports whether r means an entry was evicted.
func (r Reason) IsEviction() bool {
	return r == ReasonEarlyDrop || r == ReasonGCEvict
}

// ParseReason reads a reason as an operator types it (for --reason). The
// error lists the valid names so the operator need not look them up.
func ParseReason(s string) (Reason, error) {
	r := Reason(strings.ToLower(strings.TrimSpace(s)))
	if r.Valid() {
		return r, nil
	}
	names := make([]string, 0, len(kernelReasons)-1)
	for _, k := range kernelReasons[1:] {
		names = append(names, string(k))
	}
	return "", fmt.Errorf("unknown reason %q (valid: %s)", s, strings.Join(names, ", "))
}

// Detail refines a Reason: which path evicted an entry, why an insert was
// refused, what deleted an entry. "" means the kernel gave no detail.
type Detail string

// Details, one per enum ct_detail.
const (
	DetailNone              Detail = ""
	DetailEvictedForNewFlow Detail = "evicted_for_new_flow" // early_drop() made room for a new flow
	DetailEvictedByGC       Detail = "evicted_by_gc"        // gc_evict: gc_worker evicted under pressure
	DetailClash             Detail = "clash"                // insert clashed with an entry, unresolvable
	DetailChainTooLong      Detail = "chain_too_long"       // hash chain over the limit (5.15+)
	DetailDying             Detail = "dying"                // the entry was already dying
	DetailExpired           Detail = "expired"              // delete: timed out
	DetailNetlink           Detail = "netlink"              // delete: by ctnetlink (conntrack -D, flush)
	DetailOther             Detail = "other"                // delete: any other path
)

// kernelDetails is indexed by enum ct_detail.
var kernelDetails = [...]Detail{
	DetailNone,
	DetailEvictedForNewFlow,
	DetailEvictedByGC,
	DetailClash,
	DetailChainTooLong,
	DetailDying,
	DetailExpired,
	DetailNetlink,
	DetailOther,
}

// detailReasons is the one reason each detail refines (the kernel side
// counts a detail only with its reason's events).
var detailReasons = map[Detail]Reason{
	DetailEvictedForNewFlow: ReasonEarlyDrop,
	DetailEvictedByGC:       ReasonGCEvict,
	DetailClash:             ReasonInsertFailed,
	DetailChainTooLong:      ReasonInsertFailed,
	DetailDying:             ReasonInsertFailed,
	DetailExpired:           ReasonDelete,
	DetailNetlink:           ReasonDelete,
	DetailOther:             ReasonDelete,
}

// Reason is the reason d refines; "" for DetailNone.
func (d Detail) Reason() Reason { return detailReasons[d] }

// Details returns every detail, "" first, in the kernel's order.
func Details() []Detail {
	return append([]Detail(nil), kernelDetails[:]...)
}

// DetailFromKernel maps an enum ct_detail value to its Detail. A value
// outside the enum gives DetailNone: claiming no detail is honest, guessing
// one is not.
func DetailFromKernel(d uint8) Detail {
	if int(d) >= len(kernelDetails) {
		return DetailNone
	}
	return kernelDetails[d]
}

// Confidence says how cttrace knows the reason.
type Confidence string

// Confidences, one per enum ct_confidence.
const (
	ConfidenceExact    Confidence = "exact"    // seen at the kernel's decision point
	ConfidenceInferred Confidence = "inferred" // deduced from how the packet was freed
)

// ConfidenceFromKernel maps an enum ct_confidence value. Anything but exact
// is reported as inferred, so cttrace never claims more than it saw.
func ConfidenceFromKernel(c uint8) Confidence {
	if c == 0 {
		return ConfidenceExact
	}
	return ConfidenceInferred
}
