package host

import (
	"errors"
	"fmt"
	"strings"

	"golang.org/x/sys/unix"
)

// Capability is one Linux capability, with the name operators know it by.
type Capability struct {
	Bit  uint
	Name string
}

// The capabilities cttrace's jobs need.
var (
	CapSysAdmin = Capability{unix.CAP_SYS_ADMIN, "CAP_SYS_ADMIN"}
	CapNetAdmin = Capability{unix.CAP_NET_ADMIN, "CAP_NET_ADMIN"}
	CapBPF      = Capability{unix.CAP_BPF, "CAP_BPF"}
	CapPerfmon  = Capability{unix.CAP_PERFMON, "CAP_PERFMON"}
)

// ErrPrivileges is what every privilege failure wraps (errors.Is): the
// process lacks a capability a job needs. The error names the job, what it
// needs, and what is missing.
var ErrPrivileges = errors.New("not enough privileges")

// PrivilegeError says which capabilities a job lacks.
type PrivilegeError struct {
	Job     string // "loading BPF programs"
	Needs   string // "root, or CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN"
	Missing []string
}

func (e *PrivilegeError) Error() string {
	return fmt.Sprintf("%s needs %s (missing %s)", e.Job, e.Needs, strings.Join(e.Missing, ", "))
}

func (e *PrivilegeError) Is(target error) bool { return target == ErrPrivileges }

// Require fails, naming what is missing, unless the process holds every
// capability of need in its effective set (root does). job says what they
// are for, in words for the operator.
func Require(job string, need ...Capability) error {
	missing, err := Missing(need...)
	if err != nil || len(missing) == 0 {
		return err
	}
	names := make([]string, len(need))
	for i, c := range need {
		names[i] = c.Name
	}
	return &PrivilegeError{Job: job, Needs: "root, or " + joinAnd(names), Missing: missing}
}

// Missing returns the names of the capabilities of want that the process
// does not have in its effective set.
func Missing(want ...Capability) ([]string, error) {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return nil, fmt.Errorf("read capabilities: %w", err)
	}
	var missing []string
	for _, c := range want {
		if data[c.Bit/32].Effective&(1<<(c.Bit%32)) == 0 {
			missing = append(missing, c.Name)
		}
	}
	return missing, nil
}

// joinAnd writes "A, B and C".
func joinAnd(s []string) string {
	if len(s) < 2 {
		return strings.Join(s, "")
	}
	return strings.Join(s[:len(s)-1], ", ") + " and " + s[len(s)-1]
}
