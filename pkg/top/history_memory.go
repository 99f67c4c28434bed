package top

import "unsafe"

// pageSize is the Go runtime's page: a large allocation (rows, heap, index
// slots) takes whole pages, so each may cost up to one more.
const pageSize = 8192

// MemoryBound is the most heap a history of this capacity uses, in bytes,
// whatever the events: its rows, heap and index are allocated whole by
// NewHistory. Not counted: the rows Read returns (the caller's).
func MemoryBound(capacity int) int {
	return int(unsafe.Sizeof(History{})) +
		inPages(capacity*int(unsafe.Sizeof(tracked{}))) +
		2*inPages(capacity*int(unsafe.Sizeof(int32(0)))) + // heap, rows freed by Forget
		inPages(slotsFor(capacity)*int(unsafe.Sizeof(slot{})))
}

func inPages(n int) int {
	return (n + pageSize - 1) / pageSize * pageSize
}
