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

	"github.com/cttrace/cttrace/pkg/table"
)

// Stats are a namespace's conntrack statistics (see table.Stats), read from
// one of two independent sources, so that tests can check one against the
// other. A fresh Lab starts its counters at 0.
type Stats struct {
	table.Stats
	// Source says where they were read: "procfs" (/proc/net/stat/nf_conntrack
	// of the namespace, and its nf_conntrack_max sysctl) or "ctnetlink"
	// (package table).
	Source string
}

// Sub returns s - old (see table.Stats.Sub), from s's source.
func (s Stats) Sub(old Stats) Stats {
	return Stats{Stats: s.Stats.Sub(old.Stats), Source: s.Source}
}

func (s Stats) String() string { return fmt.Sprintf("%v from %s", s.Stats, s.Source) }

// procStatPath is the namespace's statistics file. /proc/net is a link to
// /proc/self/net, which shows the namespace of the thread-group leader, not
// of the calling thread: a thread that setns()ed must read /proc/thread-self.
const procStatPath = "/proc/thread-self/net/stat/nf_conntrack"

// Stats reads the Lab's statistics from procfs when the kernel has it
// (CONFIG_NF_CONNTRACK_PROCFS), else over ctnetlink. Stats.Source says which.
func (l *Lab) Stats() (Stats, error) {
	s, err := l.StatsProcfs()
	if errors.Is(err, fs.ErrNotExist) {
		return l.StatsNetlink()
	}
	return s, err
}

// StatsProcfs reads the statistics from the namespace's procfs file only,
// and the max from its nf_conntrack_max sysctl (which /proc/sys/net shows
// for the calling thread's namespace).
func (l *Lab) StatsProcfs() (Stats, error) {
	var s Stats
	err := l.Do(func() error {
		f, err := os.Open(procStatPath)
		if err != nil {
			return err
		}
		defer f.Close()
		if s, err = parseProcStats(f); err != nil {
			return err
		}
		n, err := ReadGlobal(MaxPath)
		s.Max = int64(n)
		return err
	})
	return s, err
}

// StatsNetlink reads the statistics over ctnetlink only.
func (l *Lab) StatsNetlink() (Stats, error) {
	s, err := l.Namespace().Stats()
	return Stats{Stats: s, Source: "ctnetlink"}, err
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
