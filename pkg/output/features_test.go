package output

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/cttrace/cttrace/pkg/probe"
)

func featureReport() *probe.Report {
	return &probe.Report{
		Features: &probe.Features{Kernel: "6.12.0-31-amd64", ConntrackModule: true,
			Preemption: "full", PreemptionSource: "/sys/kernel/debug/sched/preempt",
			List: []probe.Feature{
				{Name: "fentry", Usable: true, Detail: "nf_conntrack_alloc"},
				{Name: "netfilter_link", Detail: "LOCAL_OUT", Error: "operation not supported (<nil>)"},
			}},
		Backend: "kprobe", BackendReason: "the kernel is preemptible & fentry programs may be skipped",
	}
}

func writeFeatures(t *testing.T, f Format, r *probe.Report) string {
	t.Helper()
	var b bytes.Buffer
	w := NewFeatures(&b, f)
	if err := w.Write(r); err != nil {
		t.Fatal(err)
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

func TestFeaturesText(t *testing.T) {
	want := `kernel: 6.12.0-31-amd64
preemption: full (/sys/kernel/debug/sched/preempt)

FEATURE         USABLE  TARGET              KERNEL SAID
fentry          yes     nf_conntrack_alloc  -
netfilter_link  no      LOCAL_OUT           operation not supported (<nil>)

backend (auto): kprobe
  why: the kernel is preemptible & fentry programs may be skipped
`
	if got := writeFeatures(t, Text, featureReport()); got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
	// Without a known preemption model, no line for it.
	r := featureReport()
	r.Preemption, r.PreemptionSource = "", ""
	if got := writeFeatures(t, Text, r); got != strings.Replace(want, "preemption: full (/sys/kernel/debug/sched/preempt)\n", "", 1) {
		t.Errorf("without preemption: got\n%s", got)
	}
}

// One indented JSON document, the features' fields and the backend's
// side by side, HTML-escaped as encoding/json does by default (as `cttrace
// features -o json` always wrote it).
func TestFeaturesJSON(t *testing.T) {
	want := `{
  "kernel": "6.12.0-31-amd64",
  "features": [
    {
      "name": "fentry",
      "usable": true,
      "detail": "nf_conntrack_alloc",
      "error": ""
    },
    {
      "name": "netfilter_link",
      "usable": false,
      "detail": "LOCAL_OUT",
      "error": "operation not supported (\u003cnil\u003e)"
    }
  ],
  "conntrack_module": true,
  "preemption": "full",
  "preemption_source": "/sys/kernel/debug/sched/preempt",
  "backend": "kprobe",
  "backend_reason": "the kernel is preemptible \u0026 fentry programs may be skipped"
}
`
	got := writeFeatures(t, JSON, featureReport())
	if got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
	var back probe.Report
	if err := json.Unmarshal([]byte(got), &back); err != nil || back.Backend != "kprobe" || back.Features == nil || len(back.List) != 2 {
		t.Errorf("read back as %+v: %v", back, err)
	}
	// Without a known preemption model, its fields are left out.
	r := featureReport()
	r.Preemption, r.PreemptionSource = "", ""
	if got := writeFeatures(t, JSON, r); strings.Contains(got, "preemption") || !strings.Contains(got, `"backend_reason"`) {
		t.Errorf("without preemption:\n%s", got)
	}
}
