package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cttrace/cttrace/pkg/probe"
)

// The test binary doubles as cttrace: with CTTRACE_TEST_AS_MAIN=1 it runs
// main() instead of the tests. Tests then exercise the real command, exit
// statuses included, without a Go toolchain (the VM tier has none it could
// afford to run under emulation).
func TestMain(m *testing.M) {
	if os.Getenv("CTTRACE_TEST_AS_MAIN") == "1" {
		main()
		return
	}
	os.Exit(m.Run())
}

// cttrace returns a command running cttrace with args.
func cttrace(args ...string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), "CTTRACE_TEST_AS_MAIN=1")
	return cmd
}

func TestUsageErrorsExitWithStatus2(t *testing.T) {
	for _, args := range [][]string{
		{"no-such-command"},
		{"features", "--no-such-flag"},
		{"features", "--output", "yaml"},
		{"drops", "--src", "300.1.1.1"},
		{"drops", "--dst", "10.0.0.0/33"},
		{"drops", "--reason", "table_ful"},
		{"drops", "--proto", "tcpp"},
		{"drops", "--ring-size", "5000"},
		{"drops", "--backend", "ebpf"},
		{"drops", "--netns", "/nonexistent"},
		{"drops", "extra-argument"},
		{"top-sources", "--sort", "bytes"},
		{"top-sources", "--group-v4", "/33"},
		{"top-sources", "--group-v4", "/24x"},
		{"top-sources", "--group-v6", "64"},
		{"top-sources", "--limit", "0"},
		{"top-sources", "--max-sources", "0"},
		{"top-sources", "--interval", "1ms"},
		{"top-sources", "--netns", "/nonexistent"},
	} {
		cmd := cttrace(args...)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		// Run as root, a command line that is wrongly accepted would trace
		// until stopped: bound it.
		cmd.WaitDelay = time.Second
		timer := time.AfterFunc(20*time.Second, func() { cmd.Process.Kill() })
		err := cmd.Run()
		timer.Stop()
		ee, ok := err.(*exec.ExitError)
		if !ok || ee.ExitCode() != exitUsage {
			t.Errorf("cttrace %v: %v, want exit status %d; stderr: %s", args, err, exitUsage, stderr.String())
		}
		if !strings.Contains(stderr.String(), "cttrace:") {
			t.Errorf("cttrace %v: stderr does not say what is wrong: %q", args, stderr.String())
		}
	}
}

func TestHelpExitsZero(t *testing.T) {
	out, err := cttrace("--help").CombinedOutput()
	if err != nil {
		t.Fatalf("--help: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "features") {
		t.Fatalf("--help does not list the features command:\n%s", out)
	}
}

func TestFeaturesTextReport(t *testing.T) {
	f := &probe.Features{Kernel: "6.18.0-test", List: []probe.Feature{
		{Name: probe.FeatKernelBTF, Usable: true, Detail: "/sys/kernel/btf/vmlinux"},
		{Name: probe.FeatConntrackBTF, Usable: true, Detail: "built in (vmlinux)"},
		{Name: probe.FeatFentry, Detail: "__nf_conntrack_alloc", Error: "load: refused by the kernel: operation not permitted"},
		{Name: probe.FeatTpBTF, Usable: true, Detail: "kfree_skb"},
	}}
	var buf bytes.Buffer
	if err := newFeatureReport(f).writeText(&buf); err != nil {
		t.Fatal(err)
	}
	golden := filepath.Join("testdata", "features.txt")
	if os.Getenv("UPDATE_GOLDEN") != "" {
		if err := os.WriteFile(golden, buf.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if buf.String() != string(want) {
		t.Fatalf("features report differs from %s:\n--- got\n%s\n--- want\n%s", golden, buf.String(), want)
	}
}
