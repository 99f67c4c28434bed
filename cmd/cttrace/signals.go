package main

import (
	"context"
	"errors"
	"os"
	"os/signal"
	"syscall"
)

// signalContext is done on Ctrl-C or SIGTERM; the deferred detach then runs,
// so no program or link is left in the kernel.
func signalContext(parent context.Context) (context.Context, context.CancelFunc) {
	return signal.NotifyContext(parent, os.Interrupt, syscall.SIGTERM)
}

// ignoreSIGPIPE makes a write to a closed stdout fail with EPIPE instead of
// killing the process, which would skip detaching the probes (they would go
// with the process's file descriptors anyway) and exit with a signal status.
func ignoreSIGPIPE() {
	signal.Notify(make(chan os.Signal, 1), syscall.SIGPIPE)
}

// closedPipe reports whether err is a write to a reader that went away, as
// in `cttrace drops | head`: the end of the run, not a failure.
func closedPipe(err error) bool {
	return errors.Is(err, syscall.EPIPE)
}
