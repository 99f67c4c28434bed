package ctlab

import (
	"net/netip"

	"github.com/cttrace/cttrace/pkg/table"
)

// Entry is one conntrack entry as a ctnetlink dump reports it.
type Entry = table.Entry

// Conntrack status bits (enum ip_conntrack_status).
const (
	StatusSeenReply = table.StatusSeenReply
	StatusAssured   = table.StatusAssured
	StatusConfirmed = table.StatusConfirmed
	StatusDying     = table.StatusDying
)

// Dump streams a ctnetlink dump of the Lab's table (IPv4 and IPv6) to fn, one
// entry at a time; nothing accumulates in memory (see table.Conn.Dump). A
// table that changes during the dump may show an entry twice or not at all
// (the kernel walks live hash buckets).
func (l *Lab) Dump(fn func(Entry) error) error {
	return l.Namespace().Dump(fn)
}

// DumpBySource returns the Lab's entries counted by original source address.
func (l *Lab) DumpBySource() (map[netip.Addr]int, error) {
	m := map[netip.Addr]int{}
	err := l.Namespace().DumpBySource(func(src netip.Addr, _ uint32) error {
		m[src]++
		return nil
	})
	return m, err
}
