package ctlab

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Stats are a namespace's conntrack statistics: the per-CPU counters summed
// over every CPU the kernel reports, and the namespace's current entry count.
// Counters are 32-bit per CPU in the kernel; a fresh Lab starts them at 0.
type Stats struct {
	// Source says where they were read: "procfs" (/proc/net/stat/nf_conntrack
	// of the namespace) or "ctnetlink" (IPCTNL_MSG_CT_GET_STATS_CPU and
	// IPCTNL_MSG_CT_GET_STATS).
	Source string
	CPUs   int // per-CPU rows summed (the kernel's possible CPUs)

	Entries int64 // entries of this namespace now (nf_conntrack_count)

	Found         int64
	Invalid       int64
	Insert        int64 // only ctnetlink/BPF insertions on recent kernels
	InsertFailed  int64
	Drop          int64
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
// holds deltas; Entries may be negative). Source, CPUs and the Has flags are
// s's.
func (s Stats) Sub(old Stats) Stats {
	d := s
	d.Entries -= old.Entries
	d.Found -= old.Found
	d.Invalid -= old.Invalid
	d.Insert -= old.Insert
	d.InsertFailed -= old.InsertFailed
	d.Drop -= old.Drop
	d.EarlyDrop -= old.EarlyDrop
	d.Error -= old.Error
	d.SearchRestart -= old.SearchRestart
	d.ClashResolve -= old.ClashResolve
	d.ChainTooLong -= old.ChainTooLong
	return d
}

func (s Stats) String() string {
	return fmt.Sprintf("entries=%d found=%d invalid=%d insert=%d insert_failed=%d drop=%d early_drop=%d error=%d search_restart=%d clash_resolve=%d chaintoolong=%d (%s, %d CPUs)",
		s.Entries, s.Found, s.Invalid, s.Insert, s.InsertFailed, s.Drop, s.EarlyDrop, s.Error, s.SearchRestart, s.ClashResolve, s.ChainTooLong, s.Source, s.CPUs)
}

// procStatPath is the namespace's statistics file. /proc/net is a link to
// /proc/self/net, which shows the namespace of the thread-group leader, not
// of the calling thread: a thread that setns()ed must read /proc/thread-self.
const procStatPath = "/proc/thread-self/net/stat/nf_conntrack"

// Stats reads the Lab's statistics from procfs when the kernel has it
// (CONFIG_NF_CONNTRACK_PROCFS), else over ctnetlink. Stats.Source says which.
func (l *Lab) Stats() (Stats, error) {
	var s Stats
	err := l.Do(func() error {
		f, err := os.Open(procStatPath)
		if errors.Is(err, fs.ErrNotExist) {
			s, err = statsNetlink()
			return err
		}
		if err != nil {
			return err
		}
		defer f.Close()
		s, err = parseProcStats(f)
		return err
	})
	return s, err
}

// StatsProcfs reads the statistics from the namespace's procfs file only.
func (l *Lab) StatsProcfs() (Stats, error) {
	var s Stats
	err := l.Do(func() error {
		f, err := os.Open(procStatPath)
		if err != nil {
			return err
		}
		defer f.Close()
		s, err = parseProcStats(f)
		return err
	})
	return s, err
}

// StatsNetlink reads the statistics over ctnetlink only.
func (l *Lab) StatsNetlink() (Stats, error) {
	var s Stats
	err := l.Do(func() (err error) {
		s, err = statsNetlink()
		return err
	})
	return s, err
}

// parseProcStats parses /proc/net/stat/nf_conntrack: a header of column
// names, then one row of hexadecimal numbers per possible CPU. Columns are
// found by name, so the older layouts (searched, new, delete, ...) parse too.
func parseProcStats(r io.Reader) (Stats, error) {
	s := Stats{Source: "procfs"}
	sc := bufio.NewScanner(r)
	if !sc.Scan() {
		if err := sc.Err(); err != nil {
			return s, err
		}
		return s, errors.New("procfs conntrack stats: empty")
	}
	header := strings.Fields(sc.Text())
	fields := make([]*int64, len(header))
	for i, name := range header {
		switch name {
		case "entries":
			fields[i] = &s.Entries
		case "found":
			fields[i] = &s.Found
		case "invalid":
			fields[i] = &s.Invalid
		case "insert":
			fields[i] = &s.Insert
		case "insert_failed":
			fields[i] = &s.InsertFailed
		case "drop":
			fields[i] = &s.Drop
		case "early_drop":
			fields[i] = &s.EarlyDrop
		case "icmp_error":
			fields[i] = &s.Error
		case "search_restart":
			fields[i] = &s.SearchRestart
		case "clashres":
			fields[i] = &s.ClashResolve
			s.HasClashResolve = true
		case "chainlength":
			fields[i] = &s.ChainTooLong
			s.HasChainTooLong = true
		}
	}
	if len(header) == 0 || header[0] != "entries" {
		return s, fmt.Errorf("procfs conntrack stats: unexpected header %q", sc.Text())
	}
	for sc.Scan() {
		row := strings.Fields(sc.Text())
		if len(row) == 0 {
			continue
		}
		if len(row) != len(header) {
			return s, fmt.Errorf("procfs conntrack stats: row %q has %d columns, header %d", sc.Text(), len(row), len(header))
		}
		for i, v := range row {
			n, err := strconv.ParseUint(v, 16, 32)
			if err != nil {
				return s, fmt.Errorf("procfs conntrack stats: %q: %w", v, err)
			}
			switch {
			case fields[i] == &s.Entries:
				s.Entries = int64(n) // the namespace's count, repeated on every row
			case fields[i] != nil:
				*fields[i] += int64(n)
			}
		}
		s.CPUs++
	}
	if err := sc.Err(); err != nil {
		return s, err
	}
	if s.CPUs == 0 {
		return s, errors.New("procfs conntrack stats: no CPU rows")
	}
	return s, nil
}

// statsNetlink reads the calling thread's namespace's statistics over
// ctnetlink.
func statsNetlink() (Stats, error) {
	s := Stats{Source: "ctnetlink"}
	c, err := dialCtnetlink()
	if err != nil {
		return s, err
	}
	defer c.Close()
	err = c.request(ipctnlMsgCtGetStatsCPU, unix.AF_UNSPEC, true, func(_ uint16, attrs []byte) error {
		s.CPUs++
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
				return nil
			}
			n, err := be32(val)
			*dst += n
			return err
		})
	})
	if err != nil {
		return s, fmt.Errorf("ctnetlink per-CPU stats: %w", err)
	}
	if s.CPUs == 0 {
		return s, errors.New("ctnetlink per-CPU stats: no CPUs reported")
	}
	err = c.request(ipctnlMsgCtGetStats, unix.AF_UNSPEC, false, func(_ uint16, attrs []byte) error {
		return forEachAttr(attrs, func(typ uint16, val []byte) (err error) {
			if typ == ctaStatsGlobalEntries {
				s.Entries, err = be32(val)
			}
			return err
		})
	})
	if err != nil {
		return s, fmt.Errorf("ctnetlink global stats: %w", err)
	}
	return s, nil
}
