package host

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestPrivilegeErrorNamesWhatIsMissing(t *testing.T) {
	err := error(&PrivilegeError{Job: "loading BPF programs", Needs: "root, or " + joinAnd([]string{"CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN"}),
		Missing: []string{"CAP_BPF", "CAP_PERFMON"}})
	want := "loading BPF programs needs root, or CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN (missing CAP_BPF, CAP_PERFMON)"
	if err.Error() != want {
		t.Errorf("got %q\nwant %q", err, want)
	}
	if !errors.Is(err, ErrPrivileges) || !errors.Is(errors.Join(errors.New("x"), err), ErrPrivileges) {
		t.Error("a PrivilegeError is not ErrPrivileges")
	}
	if joinAnd([]string{"A"}) != "A" || joinAnd([]string{"A", "B"}) != "A and B" {
		t.Error("joinAnd")
	}
}

// Root (the tests' user in every tier that runs this) holds every
// capability: nothing is missing, and Require passes.
func TestRequireAsRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: checks that root lacks nothing")
	}
	if err := Require("a job", CapSysAdmin, CapNetAdmin, CapBPF, CapPerfmon); err != nil {
		t.Fatal(err)
	}
}

func TestReadInt(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "n")
	os.WriteFile(p, []byte("262144\n"), 0o644)
	if n, err := ReadInt(p); err != nil || n != 262144 {
		t.Errorf("ReadInt = %d, %v", n, err)
	}
	os.WriteFile(p, []byte("lots\n"), 0o644)
	if _, err := ReadInt(p); err == nil || !strings.Contains(err.Error(), "parse "+p) {
		t.Errorf("a file that is not a number: %v", err)
	}
	if _, err := conntrackSysctl(filepath.Join(dir, "none")); !errors.Is(err, ErrNoConntrack) {
		t.Errorf("a missing conntrack sysctl: %v, want ErrNoConntrack", err)
	}
}

func TestRelease(t *testing.T) {
	b, err := os.ReadFile("/proc/sys/kernel/osrelease")
	if err != nil {
		t.Skip("no /proc/sys/kernel/osrelease to compare with")
	}
	if got, want := Release(), strings.TrimSpace(string(b)); got != want {
		t.Errorf("Release() = %q, /proc says %q", got, want)
	}
}
