// Package host is what cttrace reads of the machine it runs on, outside BPF
// and ctnetlink: the kernel's release, conntrack's global sysctls, and
// whether this process holds the privileges a job needs. Every path and
// capability check of cttrace is here, once.
package host

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Release is the running kernel's release, as uname -r prints it.
func Release() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return "unknown"
	}
	return unix.ByteSliceToString(u.Release[:])
}

// Conntrack's global sysctls. The limit is one global, compared with each
// network namespace's own count; other namespaces see both read-only.
const (
	MaxPath     = "/proc/sys/net/netfilter/nf_conntrack_max"
	BucketsPath = "/proc/sys/net/netfilter/nf_conntrack_buckets"
)

// ErrNoConntrack says that nf_conntrack is not loaded: no connection
// tracking is in use on this host, so there is nothing to trace.
var ErrNoConntrack = errors.New("nf_conntrack is not loaded, so no connection tracking is in use on this host " +
	"(check with `lsmod | grep nf_conntrack` or `ls /proc/sys/net/netfilter/nf_conntrack_max`; " +
	"any stateful firewall rule, NAT or Kubernetes loads it)")

// RequireConntrack returns ErrNoConntrack when nf_conntrack is not loaded.
func RequireConntrack() error {
	if _, err := os.Stat(MaxPath); errors.Is(err, os.ErrNotExist) {
		return ErrNoConntrack
	}
	return nil
}

// ConntrackMax reads nf_conntrack_max; ErrNoConntrack when the module is
// not loaded (or was unloaded since).
func ConntrackMax() (int64, error) { return conntrackSysctl(MaxPath) }

// ConntrackBuckets reads nf_conntrack_buckets, the size of the host's one
// conntrack hash table.
func ConntrackBuckets() (int64, error) { return conntrackSysctl(BucketsPath) }

func conntrackSysctl(path string) (int64, error) {
	n, err := ReadInt(path)
	if errors.Is(err, os.ErrNotExist) {
		return 0, ErrNoConntrack
	}
	return n, err
}

// ReadInt reads a file that holds one number: a sysctl, a sysfs attribute.
func ReadInt(path string) (int64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("read %s: %w", path, err)
	}
	n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("parse %s: %w", path, err)
	}
	return n, nil
}
