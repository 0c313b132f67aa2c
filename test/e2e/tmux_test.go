package e2e

import (
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mergenhq/mergen/internal/testenv"
)

// terminal is a command running in a detached tmux session: keys go in,
// the pane is read back. Interactive commands (exec -it, the console) get
// a real terminal of a known size this way.
type terminal struct {
	t       *testing.T
	tmux    string
	session string
}

// newTerminal starts command (a shell line) in a cols×rows tmux session
// named session, killed when the test ends.
func newTerminal(t *testing.T, session string, cols, rows int, command string) *terminal {
	t.Helper()
	term := &terminal{t: t, tmux: testenv.Tool(t, "tmux"), session: session}
	term.run("new-session", "-d", "-s", session, "-x", strconv.Itoa(cols), "-y", strconv.Itoa(rows), command)
	t.Cleanup(func() { exec.Command(term.tmux, "kill-session", "-t", session).Run() })
	return term
}

func (term *terminal) run(args ...string) string {
	term.t.Helper()
	out, err := exec.Command(term.tmux, args...).CombinedOutput()
	if err != nil {
		term.t.Fatalf("tmux %v: %v %s", args, err, out)
	}
	return string(out)
}

// keys types keys into the pane (tmux key names such as Enter or C-]).
func (term *terminal) keys(keys ...string) {
	term.t.Helper()
	term.run(append([]string{"send-keys", "-t", term.session}, keys...)...)
}

// shows reports whether the pane shows want now.
func (term *terminal) shows(want string) bool {
	term.t.Helper()
	return strings.Contains(term.run("capture-pane", "-p", "-t", term.session), want)
}

// waitFor waits until the pane shows want.
func (term *terminal) waitFor(want string) {
	term.t.Helper()
	testenv.Eventually(term.t, 30*time.Second, "the "+term.session+" pane to show "+want, func() bool { return term.shows(want) })
}

// resize gives the session's window a new size.
func (term *terminal) resize(cols, rows int) {
	term.t.Helper()
	term.run("resize-window", "-t", term.session, "-x", strconv.Itoa(cols), "-y", strconv.Itoa(rows))
}
