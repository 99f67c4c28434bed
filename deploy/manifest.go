// Package deploy holds cttrace's deployment files (container build, systemd
// unit, Kubernetes DaemonSet, Grafana dashboard, alert rules) and reads the
// DaemonSet for the tests that check it, so that what the tests measure is
// what an operator applies.
package deploy

import (
	_ "embed"
	"errors"
	"fmt"

	appsv1 "k8s.io/api/apps/v1"
	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"
)

//go:embed daemonset.yaml
var daemonSetYAML []byte

// DaemonSet decodes daemonset.yaml strictly into the Kubernetes API types, as
// the API server's strict field validation does (sigs.k8s.io/json: case
// sensitive, no unknown or duplicate field): a misspelt or misplaced field is
// an error here, where kubectl would drop it with only a warning.
func DaemonSet() (*appsv1.DaemonSet, error) { return decodeDaemonSet(daemonSetYAML) }

func decodeDaemonSet(b []byte) (*appsv1.DaemonSet, error) {
	j, err := yaml.YAMLToJSONStrict(b)
	if err != nil {
		return nil, fmt.Errorf("deploy/daemonset.yaml: %w", err)
	}
	var ds appsv1.DaemonSet
	strict, err := kjson.UnmarshalStrict(j, &ds)
	if err = errors.Join(append(strict, err)...); err != nil {
		return nil, fmt.Errorf("deploy/daemonset.yaml: %w", err)
	}
	return &ds, nil
}
