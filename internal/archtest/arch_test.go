// Package archtest holds the tests that keep the module's shape: who may
// read the environment, and which way imports flow. They need no root and
// run in seconds.
package archtest

import (
	"encoding/json"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

const module = "github.com/mergenhq/mergen"

func repoRoot(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}").Output()
	if err != nil {
		t.Fatalf("go list -m: %v", err)
	}
	return strings.TrimSpace(string(out))
}

// Only internal/config reads the environment; programs (cmd/ and other main
// packages) may too. The guest's init runs inside the VM, where its
// environment is the kernel's, and is exempt; so is internal/testenv, which
// only tests link (TestTestSupportIsLinkedOnlyIntoTests).
func TestOnlyConfigReadsTheEnvironment(t *testing.T) {
	root := repoRoot(t)
	readers := map[string]bool{"Getenv": true, "LookupEnv": true}
	var found []string
	err := filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		if d.IsDir() {
			switch {
			case strings.HasPrefix(d.Name(), "."), rel == "cmd", rel == "internal/config", rel == "internal/guest", rel == "internal/testenv":
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(token.NewFileSet(), path, nil, 0)
		if err != nil {
			return err
		}
		if f.Name.Name == "main" {
			return nil // a program: reading its environment is its job
		}
		fset := token.NewFileSet()
		f, _ = parser.ParseFile(fset, path, nil, 0)
		ast.Inspect(f, func(n ast.Node) bool {
			sel, ok := n.(*ast.SelectorExpr)
			if !ok {
				return true
			}
			if pkg, ok := sel.X.(*ast.Ident); ok && (pkg.Name == "os" || pkg.Name == "syscall") && readers[sel.Sel.Name] {
				found = append(found, fset.Position(sel.Pos()).String()[len(root)+1:]+": "+pkg.Name+"."+sel.Sel.Name)
			}
			return true
		})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(found) > 0 {
		t.Errorf("the environment is read outside internal/config and cmd/ (add the variable to config.Vars and pass the value in):\n  %s", strings.Join(found, "\n  "))
	}
}

type pkg struct {
	ImportPath string
	Imports    []string
	Deps       []string
}

func listPackages(t *testing.T, patterns ...string) map[string]pkg {
	t.Helper()
	cmd := exec.Command("go", append([]string{"list", "-e", "-json=ImportPath,Imports,Deps"}, patterns...)...)
	cmd.Dir = repoRoot(t)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	pkgs := map[string]pkg{}
	dec := json.NewDecoder(strings.NewReader(string(out)))
	for dec.More() {
		var p pkg
		if err := dec.Decode(&p); err != nil {
			t.Fatal(err)
		}
		pkgs[strings.TrimPrefix(p.ImportPath, module+"/")] = p
	}
	return pkgs
}

func internalImports(p pkg) []string {
	var out []string
	for _, imp := range p.Imports {
		if strings.HasPrefix(imp, module+"/") {
			out = append(out, strings.TrimPrefix(imp, module+"/"))
		}
	}
	return out
}

// The packages every other package stands on import nothing internal above
// them: only what is listed here.
var leaves = map[string][]string{
	"internal/errdefs":     nil,
	"internal/layout":      nil,
	"internal/envfile":     nil,
	"internal/lock":        nil,
	"internal/wire":        nil,
	"internal/agentproto":  nil,
	"internal/regfile":     nil,
	"internal/jsondoc":     nil,
	"internal/atomicfile":  {"internal/regfile"},
	"internal/version":     nil,
	"internal/logging":     nil,
	"internal/beneath":     nil,
	"internal/filecache":   {"internal/regfile"},
	"internal/consoletail": nil,
	"internal/exepages":    nil,
	"internal/proc":        {"internal/atomicfile"},
	"internal/certs":       {"internal/atomicfile"},
	// auth is read by the daemon and by the CLI (the first token).
	"internal/auth": {"internal/atomicfile"},
	// config names the forwarder's default certificate files the way
	// `mergen certs` writes them.
	"internal/config": {"internal/layout", "internal/logging", "internal/certs"},
}

// Who may import the top of the daemon.
var top = map[string][]string{
	// managertest builds managers for the benchmarks of the manager and the API.
	"internal/manager": {"internal/api", "internal/daemon", "internal/manager/managertest", "cmd/", "test/"},
	"internal/api":     {"internal/daemon", "cmd/", "test/"},
	"internal/daemon":  {"cmd/", "test/"},
}

func TestImportsFlowOneWay(t *testing.T) {
	pkgs := listPackages(t, "./...")
	for name, allowed := range leaves {
		p, ok := pkgs[name]
		if !ok {
			t.Errorf("%s: not found", name)
			continue
		}
		for _, imp := range internalImports(p) {
			if !contains(allowed, imp) {
				t.Errorf("%s imports %s: a leaf package may import only %v", name, imp, allowed)
			}
		}
	}
	for name, p := range pkgs {
		for _, imp := range internalImports(p) {
			allowed, guarded := top[imp]
			if !guarded || name == imp {
				continue
			}
			ok := false
			for _, prefix := range allowed {
				if name == prefix || strings.HasPrefix(name, prefix) {
					ok = true
				}
			}
			if !ok {
				t.Errorf("%s imports %s: only %v may", name, imp, allowed)
			}
		}
	}
}

// The wire types are the API's contract, and agentproto and execproto the
// contracts between the host and the guest (execproto's frames also travel
// to API clients): standard library only, so that whatever speaks either
// links nothing of the daemon (or of the guest's init).
func TestWireTypesUseTheStandardLibraryOnly(t *testing.T) {
	pkgs := listPackages(t, "./internal/wire", "./internal/agentproto", "./internal/execproto")
	for _, name := range []string{"internal/wire", "internal/agentproto", "internal/execproto"} {
		p, ok := pkgs[name]
		if !ok {
			t.Errorf("%s: not found", name)
			continue
		}
		for _, imp := range p.Imports {
			if strings.Contains(strings.Split(imp, "/")[0], ".") {
				t.Errorf("%s imports %s", name, imp)
			}
		}
	}
}

func TestClientLinksNoHostMachinery(t *testing.T) {
	deps := listPackages(t, "./internal/client")["internal/client"].Deps
	for _, d := range deps {
		for _, banned := range []string{"github.com/vishvananda/netlink", "github.com/google/nftables", "github.com/coreos/go-systemd", module + "/internal/manager", module + "/internal/store"} {
			if strings.HasPrefix(d, banned) {
				t.Errorf("internal/client links %s", d)
			}
		}
	}
}

// The exec agent's two sides share execproto and nothing else: the daemon
// links no guest code, the guest's init no host code.
func TestExecSidesLinkOnlyTheProtocol(t *testing.T) {
	pkgs := listPackages(t, "./internal/execclient", "./cmd/mergen-init")
	for _, n := range []string{"internal/execclient", "cmd/mergen-init"} {
		if !contains(pkgs[n].Deps, module+"/internal/execproto") {
			t.Fatalf("%s: does not link execproto (or was not listed)", n)
		}
	}
	for _, d := range pkgs["internal/execclient"].Deps {
		if d == module+"/internal/guest" {
			t.Errorf("internal/execclient links %s", d)
		}
	}
	for _, d := range pkgs["cmd/mergen-init"].Deps {
		if d == module+"/internal/execclient" || d == module+"/internal/vmnet" {
			t.Errorf("cmd/mergen-init links %s", d)
		}
	}
}

func TestLifecycleProgramLinksNoHTTPAPI(t *testing.T) {
	deps := listPackages(t, "./cmd/mergen-lifecycle")["cmd/mergen-lifecycle"].Deps
	for _, d := range deps {
		if d == module+"/internal/api" || d == module+"/internal/daemon" {
			t.Errorf("cmd/mergen-lifecycle links %s", d)
		}
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// Test support: internal/testenv and packages named *test (imagetest).
func testSupport(name string) bool {
	return strings.HasPrefix(name, "internal/testenv") || strings.HasSuffix(name, "test")
}

func TestTestSupportIsLinkedOnlyIntoTests(t *testing.T) {
	for name, p := range listPackages(t, "./...") {
		for _, imp := range internalImports(p) {
			if testSupport(imp) && !testSupport(name) {
				t.Errorf("%s imports test support %s outside its tests", name, imp)
			}
		}
	}
}
