package main

import (
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/urfave/cli/v2"
)

// versionTag is set by release builds (-ldflags "-X main.versionTag=v1.2.3");
// otherwise the version comes from the module's build information.
var versionTag string

func version() string {
	if versionTag != "" {
		return versionTag
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		return bi.Main.Version
	}
	return "(devel)"
}

// printVersion is --version: what a bug report needs.
func printVersion(c *cli.Context) {
	w := c.App.Writer
	fmt.Fprintf(w, "cttrace %s\n", c.App.Version)
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return
	}
	settings := map[string]string{}
	for _, s := range bi.Settings {
		settings[s.Key] = s.Value
	}
	if rev := settings["vcs.revision"]; rev != "" {
		if settings["vcs.modified"] == "true" {
			rev += " (modified)"
		}
		fmt.Fprintf(w, "commit:      %s %s\n", rev, settings["vcs.time"])
	}
	fmt.Fprintf(w, "go:          %s %s/%s\n", runtime.Version(), runtime.GOOS, runtime.GOARCH)
	for _, d := range bi.Deps {
		if d.Path == "github.com/cilium/ebpf" {
			fmt.Fprintf(w, "cilium/ebpf: %s\n", d.Version)
		}
	}
}
