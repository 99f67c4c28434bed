package main

import (
	"os"
	"os/signal"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/cttrace/cttrace/pkg/output"
)

// liveTerminal is top-sources' screen while it runs on a terminal, set up
// as top(1) sets its own: the alternate screen (the shell's comes back on
// exit), no cursor, keys read one at a time without echo. Written with
// x/sys/unix rather than golang.org/x/term, whose raw mode also turns off
// the output's newline translation, which the frames rely on; here only
// line buffering and echo go (ISIG stays, so Ctrl-C still stops).
type liveTerminal struct {
	out     *os.File
	in      *os.File
	saved   *unix.Termios // nil when stdin is not a terminal: no keys then
	winch   chan os.Signal
	resized chan struct{} // the view is to be drawn again
	done    chan struct{}
}

const (
	altScreenOn  = "\x1b[?1049h\x1b[?25l"
	altScreenOff = "\x1b[?25h\x1b[?1049l"
)

// openLive sets the terminal up for the live view; quit is called when the
// operator presses q.
func openLive(in, out *os.File, quit func()) *liveTerminal {
	t := &liveTerminal{in: in, out: out, winch: make(chan os.Signal, 1), resized: make(chan struct{}, 1), done: make(chan struct{})}
	signal.Notify(t.winch, syscall.SIGWINCH)
	go t.followSize()
	out.WriteString(altScreenOn)
	if saved, err := unix.IoctlGetTermios(int(in.Fd()), unix.TCGETS); err == nil {
		cbreak := *saved
		cbreak.Lflag &^= unix.ICANON | unix.ECHO
		cbreak.Cc[unix.VMIN], cbreak.Cc[unix.VTIME] = 1, 0
		if unix.IoctlSetTermios(int(in.Fd()), unix.TCSETS, &cbreak) == nil {
			t.saved = saved
			go t.readKeys(quit)
		}
	}
	return t
}

// followSize asks for a redraw at each SIGWINCH until close.
func (t *liveTerminal) followSize() {
	for {
		select {
		case <-t.winch:
			select {
			case t.resized <- struct{}{}:
			default: // a redraw is already asked for
			}
		case <-t.done:
			return
		}
	}
}

// readKeys reads the keys pressed until stdin ends, and quits on q.
func (t *liveTerminal) readKeys(quit func()) {
	var b [1]byte
	for {
		if n, err := t.in.Read(b[:]); err != nil || n == 0 {
			return
		}
		if quits(b[0]) {
			quit()
		}
	}
}

// size is the terminal's size now (80×24 if it cannot say).
func (t *liveTerminal) size() output.Screen {
	ws, err := unix.IoctlGetWinsize(int(t.out.Fd()), unix.TIOCGWINSZ)
	if err != nil || ws.Col == 0 || ws.Row == 0 {
		return output.Screen{Width: 80, Height: 24}
	}
	return output.Screen{Width: int(ws.Col), Height: int(ws.Row)}
}

// close gives the terminal back as it was.
func (t *liveTerminal) close() {
	signal.Stop(t.winch)
	close(t.done)
	if t.saved != nil {
		unix.IoctlSetTermios(int(t.in.Fd()), unix.TCSETS, t.saved)
	}
	t.out.WriteString(altScreenOff)
}

// quits says whether key ends the live view.
func quits(key byte) bool { return key == 'q' || key == 'Q' }

// isTerminal reports whether f is a terminal, where the view refreshes in
// place instead of appending snapshots.
func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}
