package table

import (
	"errors"
	"fmt"
)

// Stats are a namespace's conntrack figures as ctnetlink reports them.
//
// The counters are the kernel's per-CPU counters (struct ip_conntrack_stat)
// summed over every possible CPU. Each is 32-bit per CPU and wraps, so a
// difference (Sub) is only meaningful over a short interval.
type Stats struct {
	Entries int64 // entries of this namespace now (its nf_conntrack_count)
	// Max is the limit the kernel compares Entries with before it refuses or
	// evicts (nf_conntrack_max), as it reports it inside the namespace: one
	// global value, compared with each namespace's own count.
	Max  int64
	CPUs int // per-CPU rows summed

	Found         int64
	Invalid       int64
	Insert        int64 // only ctnetlink/BPF insertions on recent kernels
	InsertFailed  int64
	Drop          int64 // new flows refused because the table was full
	EarlyDrop     int64 // entries evicted by early_drop (not allocations that evicted)
	Error         int64 // "icmp_error" in procfs
	SearchRestart int64
	ClashResolve  int64 // "clashres" in procfs
	ChainTooLong  int64 // "chainlength" in procfs; 5.15+

	// Whether the kernel reported these counters at all.
	HasClashResolve bool
	HasChainTooLong bool
}

// Sub returns s - old for every counter and the entry count (so the result
// holds deltas; Entries may be negative). Max, CPUs and the Has flags are
// s's.
func (s Stats) Sub(old Stats) Stats {
	d := s
	d.Entries -= old.Entries
	o := old.counters()
	for i, p := range d.counters() {
		*p -= *o[i]
	}
	return d
}

// counters are pointers to the per-CPU counters, in a fixed order.
func (s *Stats) counters() [10]*int64 {
	return [...]*int64{&s.Found, &s.Invalid, &s.Insert, &s.InsertFailed, &s.Drop,
		&s.EarlyDrop, &s.Error, &s.SearchRestart, &s.ClashResolve, &s.ChainTooLong}
}

func (s Stats) String() string {
	return fmt.Sprintf("entries=%d max=%d found=%d invalid=%d insert=%d insert_failed=%d drop=%d early_drop=%d error=%d search_restart=%d clash_resolve=%d chaintoolong=%d (%d CPUs)",
		s.Entries, s.Max, s.Found, s.Invalid, s.Insert, s.InsertFailed, s.Drop, s.EarlyDrop, s.Error, s.SearchRestart, s.ClashResolve, s.ChainTooLong, s.CPUs)
}

// inUse tells whether conntrack ever tracked in this namespace: only its
// hooks (and ctnetlink) create entries or move the counters.
func (s Stats) inUse() bool {
	if s.Entries != 0 {
		return true
	}
	for _, p := range s.counters() {
		if *p != 0 {
			return true
		}
	}
	return false
}

// Stats reads the namespace's statistics over a connection of its own.
func (ns Namespace) Stats() (Stats, error) {
	s, _, err := ns.read()
	return s, err
}

// read reads the namespace's statistics and its cookie over a connection
// of its own.
func (ns Namespace) read() (Stats, uint64, error) {
	c, err := ns.Dial()
	if err != nil {
		return Stats{}, 0, err
	}
	defer c.Close()
	s, err := c.Stats()
	return s, c.Cookie(), err
}

// Stats reads the statistics: the per-CPU counters
// (IPCTNL_MSG_CT_GET_STATS_CPU, a dump of one message per possible CPU)
// then the count and the max (IPCTNL_MSG_CT_GET_STATS). The two are not
// one snapshot: the count is read last.
func (c *Conn) Stats() (Stats, error) {
	var s Stats
	err := c.request(ipctnlMsgCtGetStatsCPU, true, func(_ uint16, attrs []byte) error {
		s.CPUs++
		return addCPUStats(&s, attrs)
	})
	if err != nil {
		return s, fmt.Errorf("%s: ctnetlink per-CPU stats: %w", c.ns, err)
	}
	if s.CPUs == 0 {
		return s, fmt.Errorf("%s: ctnetlink per-CPU stats: no CPUs reported", c.ns)
	}
	err = c.request(ipctnlMsgCtGetStats, false, func(_ uint16, attrs []byte) error {
		return parseGlobalStats(&s, attrs)
	})
	if err != nil {
		return s, fmt.Errorf("%s: ctnetlink global stats: %w", c.ns, err)
	}
	return s, nil
}

// addCPUStats adds one CPU's counters to s.
func addCPUStats(s *Stats, attrs []byte) error {
	return forEachAttr(attrs, func(typ uint16, val []byte) error {
		var dst *int64
		switch typ {
		case ctaStatsFound:
			dst = &s.Found
		case ctaStatsInvalid:
			dst = &s.Invalid
		case ctaStatsInsert:
			dst = &s.Insert
		case ctaStatsInsertFailed:
			dst = &s.InsertFailed
		case ctaStatsDrop:
			dst = &s.Drop
		case ctaStatsEarlyDrop:
			dst = &s.EarlyDrop
		case ctaStatsError:
			dst = &s.Error
		case ctaStatsSearchRestart:
			dst = &s.SearchRestart
		case ctaStatsClashResolve:
			dst, s.HasClashResolve = &s.ClashResolve, true
		case ctaStatsChainTooLong:
			dst, s.HasChainTooLong = &s.ChainTooLong, true
		default:
			return nil // obsolete (searched, new, delete, ...) or newer
		}
		n, err := be32(val)
		*dst += n
		return err
	})
}

// parseGlobalStats reads the count and the max into s.
func parseGlobalStats(s *Stats, attrs []byte) error {
	var hasEntries, hasMax bool
	err := forEachAttr(attrs, func(typ uint16, val []byte) (err error) {
		switch typ {
		case ctaStatsGlobalEntries:
			s.Entries, err = be32(val)
			hasEntries = true
		case ctaStatsGlobalMaxEntries:
			s.Max, err = be32(val)
			hasMax = true
		}
		return err
	})
	if err == nil && (!hasEntries || !hasMax) {
		err = errors.New("count or max missing")
	}
	return err
}
