// Package caps says which Linux capabilities the process lacks, so that a
// command can fail at once with a message a person can act on, rather than
// on the first EPERM deep inside.
package caps

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// Capability is one capability, with the name operators know it by.
type Capability struct {
	Bit  uint
	Name string
}

// The capabilities cttrace's commands need.
var (
	SysAdmin = Capability{unix.CAP_SYS_ADMIN, "CAP_SYS_ADMIN"}
	NetAdmin = Capability{unix.CAP_NET_ADMIN, "CAP_NET_ADMIN"}
	BPF      = Capability{unix.CAP_BPF, "CAP_BPF"}
	Perfmon  = Capability{unix.CAP_PERFMON, "CAP_PERFMON"}
)

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
