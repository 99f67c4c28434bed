package ctlab

import (
	"fmt"
	"time"
)

// Flush deletes every entry of the Lab's table (`conntrack -F` inside the
// namespace) and waits, at most timeout, until the namespace's count reads
// 0. Meant for a Lab that holds nothing (no HoldEstablished): a held
// connection's entry is deleted too, and comes back only with its next
// packet.
func (l *Lab) Flush(timeout time.Duration) error {
	if out, err := run(nil, "ip", "netns", "exec", l.name, "conntrack", "-F"); err != nil {
		return fmt.Errorf("ctlab: flush the table of %s: %v: %s", l.name, err, out)
	}
	deadline := time.Now().Add(timeout)
	for {
		s, err := l.Stats()
		if err != nil {
			return err
		}
		if s.Entries == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("ctlab: %s still holds %d entries %v after a flush", l.name, s.Entries, timeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
