package event

import (
	"fmt"
	"time"

	"golang.org/x/sys/unix"
)

// clockTries is how many back-to-back readings NewClock takes; the one with
// the smallest gap wins, so a preemption between two reads costs nothing.
const clockTries = 5

// Clock turns the kernel's CLOCK_BOOTTIME timestamps (bpf_ktime_get_boot_ns)
// into wall time. The boot-time clock keeps counting through suspend, as the
// wall clock does, so their difference holds across a suspend; it does not
// follow a wall-clock step (settimeofday, an NTP jump) made after NewClock.
type Clock struct {
	offset int64 // CLOCK_REALTIME - CLOCK_BOOTTIME, in nanoseconds
}

// NewClock measures the offset between the wall clock and the boot-time
// clock, once: each try reads boot time, wall time, boot time, and the try
// whose two boot readings are closest gives the most precise offset.
func NewClock() (*Clock, error) {
	var best Clock
	bestGap := int64(-1)
	for range clockTries {
		b1, err := clockNs(unix.CLOCK_BOOTTIME)
		if err != nil {
			return nil, fmt.Errorf("read boot-time clock: %w", err)
		}
		wall, err := clockNs(unix.CLOCK_REALTIME)
		if err != nil {
			return nil, fmt.Errorf("read wall clock: %w", err)
		}
		b2, err := clockNs(unix.CLOCK_BOOTTIME)
		if err != nil {
			return nil, fmt.Errorf("read boot-time clock: %w", err)
		}
		if gap := b2 - b1; bestGap < 0 || gap < bestGap {
			bestGap = gap
			best.offset = wall - (b1 + gap/2)
		}
	}
	return &best, nil
}

// Wall converts a CLOCK_BOOTTIME reading in nanoseconds to wall time.
func (c *Clock) Wall(bootNs uint64) time.Time {
	return time.Unix(0, c.offset+int64(bootNs))
}

func clockNs(id int32) (int64, error) {
	var ts unix.Timespec
	if err := unix.ClockGettime(id, &ts); err != nil {
		return 0, err
	}
	return ts.Nano(), nil
}

// JiffyDuration returns the length of one kernel tick (1/CONFIG_HZ). The
// kernel exports HZ nowhere, but its coarse clocks advance once per tick, so
// their resolution is exactly one jiffy.
func JiffyDuration() (time.Duration, error) {
	var ts unix.Timespec
	if err := unix.ClockGetres(unix.CLOCK_MONOTONIC_COARSE, &ts); err != nil {
		return 0, fmt.Errorf("read kernel tick from coarse clock resolution: %w", err)
	}
	return time.Duration(ts.Nano()), nil
}

// TimeoutFromJiffies converts struct ct_event's timeout_left (jiffies,
// negative once the entry has expired) to a Duration, given the tick length
// JiffyDuration returns.
func TimeoutFromJiffies(jiffies int32, jiffy time.Duration) time.Duration {
	return time.Duration(jiffies) * jiffy
}
