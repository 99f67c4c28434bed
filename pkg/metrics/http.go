package metrics

import (
	"fmt"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Handler serves /metrics (Prometheus' text format) and /healthz, which is
// healthy while readings keep coming every interval: a stuck kernel side
// shows.
func (e *Exporter) Handler(interval time.Duration) http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(e)
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	window := healthWindow(interval)
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		if !e.Healthy(time.Now(), window) {
			http.Error(w, "no reading of the kernel side for "+window.String(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	return mux
}

// healthWindow is how long /healthz waits for the next reading: three
// intervals, and never under 10 s, because one reading after a spoofed flood
// ranks up to 65,536 sources and can take seconds on a loaded host (a 1.6 s
// window failed CI under the race detector). Kubernetes' liveness probe
// defaults (every 10 s, 3 failures) tolerate far more.
func healthWindow(interval time.Duration) time.Duration {
	return max(3*interval, 10*time.Second)
}
