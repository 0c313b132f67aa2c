package supervisor

import (
	"bytes"
	"context"
	"embed"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"text/template"

	"github.com/mergenhq/mergen/internal/atomicfile"
)

//go:embed units/*.tmpl
var unitTemplates embed.FS

var (
	serviceTmpl = template.Must(template.ParseFS(unitTemplates, "units/service.tmpl"))
	failureTmpl = template.Must(template.ParseFS(unitTemplates, "units/failure.tmpl"))
)

// Unit is one rendered unit file.
type Unit struct {
	Name    string // file name, e.g. mergen@.service
	Content []byte
}

// RenderUnits renders the VM unit template and its failure handler for o.
// The files in deploy/systemd/ are these units rendered with the defaults.
func RenderUnits(o Options) ([]Unit, error) {
	o, err := o.withDefaults()
	if err != nil {
		return nil, err
	}
	env := []string{
		"MGR_CONFIG_ROOT=" + o.ConfigRoot,
		"MGR_RUN_ROOT=" + o.RunRoot,
		"MGR_UNIT_PREFIX=" + o.UnitPrefix,
	}
	env = append(env, o.Env...)
	quoted := make([]string, len(env))
	for i, kv := range env {
		quoted[i] = quoteEnvironment(kv)
	}
	data := struct {
		Prefix, Bin, EnvFile string
		Env                  []string
		StopTimeoutSec       int64
	}{
		o.UnitPrefix, o.LifecycleBin,
		o.layout().VM("%i").Env, // the layout's path with systemd's instance specifier as the id
		quoted, int64((o.StopTimeout + 999_999_999) / 1_000_000_000),
	}

	var units []Unit
	for _, u := range []struct {
		name string
		tmpl *template.Template
	}{
		{o.UnitPrefix + "@.service", serviceTmpl},
		{o.UnitPrefix + "-failure@.service", failureTmpl},
	} {
		var b bytes.Buffer
		if err := u.tmpl.Execute(&b, data); err != nil {
			return nil, fmt.Errorf("render unit %s: %w", u.name, err)
		}
		units = append(units, Unit{Name: u.name, Content: b.Bytes()})
	}
	return units, nil
}

// quoteEnvironment quotes one KEY=VALUE for an Environment= line: the whole
// assignment in double quotes, with backslash, quote and '%' (specifier)
// escaped.
func quoteEnvironment(kv string) string {
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`, `%`, `%%`)
	return `"` + r.Replace(kv) + `"`
}

// InstallUnits writes the two unit templates rendered for o into unitDir
// (DefaultUnitDir when empty) and makes systemd reload them. The lifecycle
// binary must exist: a unit pointing at nothing would only fail later, at a
// VM's start. Both files are replaced atomically; nothing is written when
// systemd does not answer.
func InstallUnits(ctx context.Context, o Options, unitDir string) error {
	if unitDir == "" {
		unitDir = DefaultUnitDir
	}
	units, err := RenderUnits(o)
	if err != nil {
		return fmt.Errorf("install units: %w", err)
	}
	o, _ = o.withDefaults()
	if err := checkExecutable(o.LifecycleBin); err != nil {
		return fmt.Errorf("install units: lifecycle binary: %w", err)
	}
	conn, err := dialSystemd(ctx)
	if err != nil {
		return fmt.Errorf("install units: %w", err)
	}
	defer conn.Close()
	if err := os.MkdirAll(unitDir, 0o755); err != nil {
		return fmt.Errorf("install units: %w", err)
	}
	for _, u := range units {
		if err := atomicfile.WriteFile(filepath.Join(unitDir, u.Name), u.Content, 0o644); err != nil {
			return fmt.Errorf("install units: %w", err)
		}
	}
	if err := conn.ReloadContext(ctx); err != nil {
		return fmt.Errorf("install units: daemon-reload: %w", err)
	}
	return nil
}

// checkExecutable says why path cannot be run.
func checkExecutable(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	if !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0 {
		return fmt.Errorf("%w: %s is not an executable file", ErrUnavailable, path)
	}
	return nil
}
