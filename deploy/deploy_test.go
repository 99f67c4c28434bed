// The deployment files, checked: each against the tool that reads it.
package deploy

import (
	"bytes"
	"debug/elf"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v2"
	corev1 "k8s.io/api/core/v1"

	"github.com/cttrace/cttrace/internal/testbed"
	"github.com/cttrace/cttrace/pkg/metrics"
)

// The systemd unit passes systemd-analyze verify, with ExecStart pointed
// at a binary that exists (verify checks that the command is executable).
func TestSystemdUnitVerifies(t *testing.T) {
	analyze := testbed.Tool(t, "systemd-analyze", "systemd")
	unit, err := os.ReadFile("cttrace.service")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "cttrace")
	if err := os.WriteFile(bin, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(unit), "\nExecStart=/usr/local/bin/cttrace serve") {
		t.Fatal("the unit's ExecStart is not /usr/local/bin/cttrace serve")
	}
	text := strings.ReplaceAll(string(unit), "/usr/local/bin/cttrace", bin)
	path := filepath.Join(dir, "cttrace.service")
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(analyze, "verify", path).CombinedOutput()
	if err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
}

// The container image (Dockerfile) is FROM scratch: cttrace must build as a
// static binary, with no dynamic loader and no library to load.
func TestStaticBinary(t *testing.T) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no Go toolchain here to build with")
	}
	bin := filepath.Join(t.TempDir(), "cttrace")
	build := exec.Command(goBin, "build", "-trimpath", "-o", bin, "../cmd/cttrace")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("CGO_ENABLED=0 go build: %v\n%s", err, out)
	}
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Error("the binary asks for a dynamic loader: it would not run FROM scratch")
		}
	}
	if libs, _ := f.ImportedLibraries(); len(libs) > 0 {
		t.Errorf("the binary needs %v", libs)
	}
}

// metricNames are the metric names a PromQL expression uses (cttrace's).
var metricName = regexp.MustCompile(`\bcttrace_[a-z0-9_]+\b`)

func checkExported(t *testing.T, where, expr string) {
	t.Helper()
	exported := metrics.Names()
	names := metricName.FindAllString(expr, -1)
	if len(names) == 0 {
		t.Errorf("%s: %q uses no cttrace metric", where, expr)
	}
	for _, n := range names {
		if !slices.Contains(exported, n) {
			t.Errorf("%s: %q uses %s, which cttrace serve does not export", where, expr, n)
		}
	}
}

// Every dashboard query names metrics cttrace serve exports.
func TestDashboardQueriesExportedMetrics(t *testing.T) {
	b, err := os.ReadFile("grafana-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&d); err != nil || len(d.Panels) == 0 {
		t.Fatalf("dashboard: %v, %d panels", err, len(d.Panels))
	}
	for _, p := range d.Panels {
		for _, q := range p.Targets {
			checkExported(t, "panel "+p.Title, q.Expr)
		}
	}
}

// The alert rules: the three conditions the issue names, each on exported
// metrics; and promtool check rules passes where promtool is installed.
func TestAlertRules(t *testing.T) {
	b, err := os.ReadFile("alerts.yml")
	if err != nil {
		t.Fatal(err)
	}
	var rules struct {
		Groups []struct {
			Name  string `yaml:"name"`
			Rules []struct {
				Alert       string            `yaml:"alert"`
				Expr        string            `yaml:"expr"`
				For         string            `yaml:"for"`
				Labels      map[string]string `yaml:"labels"`
				Annotations map[string]string `yaml:"annotations"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	if err := yaml.UnmarshalStrict(b, &rules); err != nil {
		t.Fatal(err)
	}
	var alerts []string
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			alerts = append(alerts, r.Alert)
			checkExported(t, "alert "+r.Alert, r.Expr)
			if r.Labels["severity"] == "" || r.Annotations["summary"] == "" {
				t.Errorf("alert %s: no severity label or summary", r.Alert)
			}
		}
	}
	for _, want := range []string{"ConntrackTableNearlyFull", "ConntrackTableFullDrops", "CttraceLostEvents"} {
		if !slices.Contains(alerts, want) {
			t.Errorf("no %s alert (have %v)", want, alerts)
		}
	}
	promtool := testbed.Tool(t, "promtool", "prometheus")
	if out, err := exec.Command(promtool, "check", "rules", "alerts.yml").CombinedOutput(); err != nil {
		t.Errorf("promtool check rules: %v\n%s", err, out)
	}
}

// The DaemonSet decodes strictly into the Kubernetes API types and keeps the
// promises its comments make: host network and PID, no privileged mode, a
// read-only root, capabilities dropped to a short list (which
// cmd/cttrace's TestDaemonSetPrivileges measures), memory bounded, and
// serve off the node's public interfaces.
func TestDaemonSetManifest(t *testing.T) {
	if _, err := decodeDaemonSet(bytes.Replace(daemonSetYAML, []byte("hostPID:"), []byte("hostPid:"), 1)); err == nil {
		t.Fatal("a misspelt field decoded: the decoding is not strict")
	}
	ds, err := DaemonSet()
	if err != nil {
		t.Fatal(err)
	}
	if ds.APIVersion != "apps/v1" || ds.Kind != "DaemonSet" {
		t.Errorf("%s %s, want apps/v1 DaemonSet", ds.APIVersion, ds.Kind)
	}
	pod := ds.Spec.Template.Spec
	if !pod.HostNetwork || !pod.HostPID {
		t.Errorf("hostNetwork %v, hostPID %v: cttrace needs both", pod.HostNetwork, pod.HostPID)
	}
	for k, v := range ds.Spec.Selector.MatchLabels {
		if ds.Spec.Template.Labels[k] != v {
			t.Errorf("selector %s=%s does not match the pod's labels", k, v)
		}
	}
	if len(pod.Containers) != 1 {
		t.Fatalf("%d containers, want 1", len(pod.Containers))
	}
	c := pod.Containers[0]
	sc := c.SecurityContext
	if sc == nil || sc.Capabilities == nil {
		t.Fatal("no securityContext with capabilities")
	}
	if sc.Privileged != nil && *sc.Privileged {
		t.Error("privileged: the capabilities listed are enough")
	}
	if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Error("root file system not read-only")
	}
	if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Error("allowPrivilegeEscalation not false")
	}
	if !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
		t.Errorf("drops %v, want ALL", sc.Capabilities.Drop)
	}
	if len(sc.Capabilities.Add) == 0 || len(sc.Capabilities.Add) > 5 {
		t.Errorf("adds %v", sc.Capabilities.Add)
	}
	for _, r := range []corev1.ResourceName{corev1.ResourceMemory} {
		if c.Resources.Requests.Name(r, "").IsZero() || c.Resources.Limits.Name(r, "").IsZero() {
			t.Errorf("no %s request and limit", r)
		}
	}
	if c.Resources.Requests.Cpu().IsZero() {
		t.Error("no CPU request")
	}
	listen := ""
	if i := slices.Index(c.Args, "--listen"); i >= 0 && i+1 < len(c.Args) {
		listen = c.Args[i+1]
	}
	host, port, err := net.SplitHostPort(listen)
	if c.Args[0] != "serve" || err != nil || host == "" || host == "0.0.0.0" || host == "::" {
		t.Errorf("args %v: want serve --listen on one address, not every interface of the host network", c.Args)
	}
	if len(c.Ports) != 1 || fmt.Sprint(c.Ports[0].ContainerPort) != port {
		t.Errorf("ports %v do not match --listen %s", c.Ports, listen)
	}
	for name, p := range map[string]*corev1.Probe{"liveness": c.LivenessProbe, "readiness": c.ReadinessProbe} {
		if p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/healthz" || p.HTTPGet.Port.String() != port {
			t.Errorf("%s probe: want GET /healthz on %s", name, port)
		}
	}
}
