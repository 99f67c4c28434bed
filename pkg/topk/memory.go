package topk

import "unsafe"

// pageSize is the Go runtime's page: a large allocation (rows, heap, index
// slots) takes whole pages, so each may cost up to one more.
const pageSize = 8192

// MemoryBound is the most heap a tracker of this capacity uses, in bytes,
// whatever the events: its rows, heap and index are allocated whole by
// NewTracker. Not counted: the rows Snapshot returns (the caller's).
func MemoryBound(capacity int) int {
	return int(unsafe.Sizeof(Tracker{})) +
		inPages(capacity*int(unsafe.Sizeof(row{}))) +
		inPages(capacity*int(unsafe.Sizeof(int32(0)))) + // heap
		inPages(slotsFor(capacity)*int(unsafe.Sizeof(slot{})))
}

func inPages(n int) int {
	return (n + pageSize - 1) / pageSize * pageSize
}
