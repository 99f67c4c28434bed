package ctlab

import (
	"encoding/binary"
	"fmt"
	"net/netip"

	"golang.org/x/sys/unix"
)

// Conntrack status bits (enum ip_conntrack_status).
const (
	StatusSeenReply = 1 << 1
	StatusAssured   = 1 << 2
	StatusConfirmed = 1 << 3
	StatusDying     = 1 << 9
)

// Entry is one conntrack entry as a ctnetlink dump reports it: the
// original-direction tuple and the status bits.
type Entry struct {
	Proto  uint8 // IPPROTO_TCP, IPPROTO_UDP, ...
	Src    netip.AddrPort
	Dst    netip.AddrPort
	Status uint32
}

// Assured tells whether early_drop may not evict the entry.
func (e Entry) Assured() bool { return e.Status&StatusAssured != 0 }

// Dump streams a ctnetlink dump of the Lab's table (IPv4 and IPv6) to fn, one
// entry at a time; nothing accumulates in memory. fn runs on the Lab's
// namespace thread. A table that changes during the dump may show an entry
// twice or not at all (the kernel walks live hash buckets).
func (l *Lab) Dump(fn func(Entry) error) error {
	return l.Do(func() error {
		c, err := dialCtnetlink()
		if err != nil {
			return err
		}
		defer c.Close()
		err = c.request(ipctnlMsgCtGet, unix.AF_UNSPEC, true, func(_ uint16, attrs []byte) error {
			e, err := parseEntry(attrs)
			if err != nil {
				return err
			}
			return fn(e)
		})
		if err != nil {
			return fmt.Errorf("ctnetlink dump of %s: %w", l.name, err)
		}
		return nil
	})
}

// DumpBySource returns the Lab's entries counted by original source address.
func (l *Lab) DumpBySource() (map[netip.Addr]int, error) {
	m := map[netip.Addr]int{}
	err := l.Dump(func(e Entry) error {
		m[e.Src.Addr()]++
		return nil
	})
	return m, err
}

func parseEntry(attrs []byte) (Entry, error) {
	var e Entry
	err := forEachAttr(attrs, func(typ uint16, val []byte) error {
		switch typ {
		case ctaTupleOrig:
			return parseTuple(val, &e)
		case ctaStatus:
			s, err := be32(val)
			e.Status = uint32(s)
			return err
		}
		return nil
	})
	return e, err
}

func parseTuple(b []byte, e *Entry) error {
	var src, dst netip.Addr
	var sport, dport uint16
	err := forEachAttr(b, func(typ uint16, val []byte) error {
		switch typ {
		case ctaTupleIP:
			return forEachAttr(val, func(typ uint16, val []byte) error {
				a, ok := netip.AddrFromSlice(val)
				if !ok {
					return fmt.Errorf("ctnetlink tuple: address of %d bytes", len(val))
				}
				switch typ {
				case ctaIPv4Src, ctaIPv6Src:
					src = a
				case ctaIPv4Dst, ctaIPv6Dst:
					dst = a
				}
				return nil
			})
		case ctaTupleProto:
			return forEachAttr(val, func(typ uint16, val []byte) error {
				switch typ {
				case ctaProtoNum:
					if len(val) < 1 {
						return fmt.Errorf("ctnetlink tuple: empty protocol")
					}
					e.Proto = val[0]
				case ctaProtoSrcPort, ctaProtoDstPort:
					if len(val) != 2 {
						return fmt.Errorf("ctnetlink tuple: port of %d bytes", len(val))
					}
					if typ == ctaProtoSrcPort {
						sport = binary.BigEndian.Uint16(val)
					} else {
						dport = binary.BigEndian.Uint16(val)
					}
				}
				return nil
			})
		}
		return nil
	})
	e.Src = netip.AddrPortFrom(src, sport)
	e.Dst = netip.AddrPortFrom(dst, dport)
	return err
}
