package table

import (
	"encoding/binary"
	"fmt"
	"net/netip"
)

// Conntrack status bits (enum ip_conntrack_status).
const (
	StatusSeenReply = 1 << 1
	StatusAssured   = 1 << 2
	StatusConfirmed = 1 << 3
	StatusDying     = 1 << 9
)

// Entry is one conntrack entry as a dump reports it: the original-direction
// tuple (the flow's initiator as it arrived, before any NAT) and the status
// bits.
type Entry struct {
	Proto  uint8 // IPPROTO_TCP, IPPROTO_UDP, ...
	Src    netip.AddrPort
	Dst    netip.AddrPort
	Status uint32
}

// Assured tells whether early_drop may not evict the entry.
func (e Entry) Assured() bool { return e.Status&StatusAssured != 0 }

// Dump streams a dump of the namespace's table (IPv4 and IPv6) over a
// connection of its own; see Conn.Dump.
func (ns Namespace) Dump(fn func(Entry) error) error {
	c, err := ns.Dial()
	if err != nil {
		return err
	}
	defer c.Close()
	return c.Dump(fn)
}

// DumpBySource is Dump reduced to each entry's original source address and
// status, what counting the table per source needs.
func (ns Namespace) DumpBySource(fn func(src netip.Addr, status uint32) error) error {
	return ns.Dump(func(e Entry) error { return fn(e.Src.Addr(), e.Status) })
}

// Dump streams a dump of the table (IPv4 and IPv6) to fn, one entry at a
// time: the kernel fills one buffer of at most 32 KiB per read, which is
// parsed and handed over before the next read, so memory stays at one
// buffer however large the table. Parsing allocates nothing per entry.
//
// The kernel walks the global hash table (every namespace's entries, only
// this one's reported) under a per-bucket lock, and resumes each buffer
// where the last one stopped: entries added or removed during the dump may
// be missing or, rarely, repeated (see ErrDumpInterrupted, returned when
// the kernel flags this). The walk also frees expired entries it meets, as
// the garbage collector would. Stats.Entries also counts entries a dump does
// not show: those not yet confirmed, and those being freed.
//
// An error from fn stops the dump and is returned; the connection is then
// unusable (the rest of the dump is still queued for it).
func (c *Conn) Dump(fn func(Entry) error) error {
	if err := c.request(ipctnlMsgCtGet, true, entryHandler(fn)); err != nil {
		return fmt.Errorf("%s: ctnetlink dump: %w", c.ns, err)
	}
	return nil
}

// entryHandler parses each dump reply for fn.
func entryHandler(fn func(Entry) error) func(resID uint16, attrs []byte) error {
	return func(_ uint16, attrs []byte) error {
		e, err := parseEntry(attrs)
		if err != nil {
			return err
		}
		return fn(e)
	}
}

// parseEntry reads the original tuple and the status of one entry.
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

// parseTuple reads CTA_TUPLE_ORIG: addresses (CTA_TUPLE_IP) and protocol
// and ports (CTA_TUPLE_PROTO). Protocols without ports (ICMP) leave them 0.
func parseTuple(b []byte, e *Entry) error {
	var src, dst netip.Addr
	var sport, dport uint16
	err := forEachAttr(b, func(typ uint16, val []byte) error {
		switch typ {
		case ctaTupleIP:
			return parseTupleIP(val, &src, &dst)
		case ctaTupleProto:
			return parseTupleProto(val, &e.Proto, &sport, &dport)
		}
		return nil
	})
	e.Src = netip.AddrPortFrom(src, sport)
	e.Dst = netip.AddrPortFrom(dst, dport)
	return err
}

func parseTupleIP(b []byte, src, dst *netip.Addr) error {
	return forEachAttr(b, func(typ uint16, val []byte) error {
		var to *netip.Addr
		switch typ {
		case ctaIPv4Src, ctaIPv6Src:
			to = src
		case ctaIPv4Dst, ctaIPv6Dst:
			to = dst
		default:
			return nil
		}
		a, ok := netip.AddrFromSlice(val)
		if !ok {
			return fmt.Errorf("ctnetlink tuple: address of %d bytes", len(val))
		}
		*to = a
		return nil
	})
}

func parseTupleProto(b []byte, proto *uint8, sport, dport *uint16) error {
	return forEachAttr(b, func(typ uint16, val []byte) error {
		switch typ {
		case ctaProtoNum:
			if len(val) < 1 {
				return fmt.Errorf("ctnetlink tuple: empty protocol")
			}
			*proto = val[0]
		case ctaProtoSrcPort, ctaProtoDstPort:
			if len(val) != 2 {
				return fmt.Errorf("ctnetlink tuple: port of %d bytes", len(val))
			}
			p := binary.BigEndian.Uint16(val)
			if typ == ctaProtoSrcPort {
				*sport = p
			} else {
				*dport = p
			}
		}
		return nil
	})
}
