package hooks

import (
	"strings"
	"testing"

	"github.com/mergenhq/mergen/internal/errdefs"
)

// Command hooks in an API request run as the daemon's user: refused, naming
// the field and the way to allow them, unless the operator allows them.
func TestAPIRequestsCarryCommandHooksOnlyWhenAllowed(t *testing.T) {
	doc := []byte(`{"onCreate":[{"url":"http://127.0.0.1:1/x"}],"onDelete":[{"url":"http://127.0.0.1:1/y"},{"command":["/bin/sh","-c","id"],"strict":true}]}`)
	_, err := ParseRequest(doc, ParseOptions{})
	want := "hooks.onDelete[1].command: command hooks in API requests are disabled; an operator can allow them with MGR_ALLOW_VM_COMMAND_HOOKS=1 or use a global hook file in MGR_GLOBAL_HOOKS_DIR"
	if !errdefs.IsInvalid(err) || err.Error() != want {
		t.Fatalf("ParseRequest without AllowCommands = %v; want invalid %q", err, want)
	}
	// Refused whatever else is wrong with it: a caller learns nothing more
	// about command hooks than that they are off.
	if _, err := ParseRequest([]byte(`{"onStart":[{"command":["sh"]}]}`), ParseOptions{}); !errdefs.IsInvalid(err) || !strings.Contains(err.Error(), "hooks.onStart[0].command: command hooks in API requests are disabled") {
		t.Fatalf("a relative command hook without AllowCommands = %v", err)
	}

	set, err := ParseRequest(doc, ParseOptions{AllowCommands: true})
	if err != nil || len(set.OnDelete) != 2 || set.OnDelete[1].Command[0] != "/bin/sh" {
		t.Fatalf("ParseRequest with AllowCommands = %+v, %v; want the command hook", set.OnDelete, err)
	}
	if _, err := ParseRequest([]byte(`{"onStart":[{"command":["sh"]}]}`), ParseOptions{AllowCommands: true}); !errdefs.IsInvalid(err) || !strings.Contains(err.Error(), `hooks.onStart[0].command: "sh" must be an absolute path`) {
		t.Fatalf("a relative command hook with AllowCommands = %v; want invalid, naming the field", err)
	}
	// HTTP hooks need no permission; other mistakes are invalid as well.
	if _, err := ParseRequest([]byte(`{"onCreate":[{"url":"https://hooks.example/x"}]}`), ParseOptions{}); err != nil {
		t.Fatalf("an HTTP hook without AllowCommands = %v", err)
	}
	if _, err := ParseRequest([]byte(`{"onCreate":[{"url":"file:///etc/passwd"}]}`), ParseOptions{}); !errdefs.IsInvalid(err) || !strings.Contains(err.Error(), "hooks.onCreate[0].url:") {
		t.Fatalf("a bad URL = %v; want invalid naming the field", err)
	}

	// What was accepted once is stored, and read back with Parse at every
	// later event: it keeps its command hooks.
	if set, err := Parse(doc); err != nil || len(set.OnDelete) != 2 {
		t.Fatalf("Parse of a stored hooks.json with a command hook = %+v, %v", set, err)
	}
}
