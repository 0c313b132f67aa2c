package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/mergenhq/mergen/internal/config"
	"github.com/mergenhq/mergen/internal/envfile"
)

// decodeMeta reads a stored record of any version into the current form.
// upgraded says the stored form was older. legacyEnv gives the VM's env file
// for version 1, whose driver settings lived only there.
func decodeMeta(b []byte, legacyEnv func() ([]string, error)) (m Meta, upgraded bool, err error) {
	var head struct {
		Version int `json:"version"`
	}
	if err := json.Unmarshal(b, &head); err != nil {
		return Meta{}, false, err
	}
	switch {
	case head.Version > RecordVersion:
		return Meta{}, false, fmt.Errorf("record version %d is newer than this mergen understands (%d)", head.Version, RecordVersion)
	case head.Version == RecordVersion:
		err := json.Unmarshal(b, &m)
		return m, false, err
	}
	// Version 1: same fields, plus paths (now from the layout), minus the
	// driver settings, which the stages took from the env file that the
	// daemon wrote at create. Those are the settings the VM was created
	// with, so they become the record's.
	if err := json.Unmarshal(b, &m); err != nil {
		return Meta{}, false, err
	}
	env, err := legacyEnv()
	if err != nil {
		return Meta{}, false, fmt.Errorf("upgrade version 1 record: %w", err)
	}
	m.Driver, err = config.DriverFromEnv(func(k string) string {
		v, _ := envfile.Lookup(env, k)
		return v
	})
	if err != nil {
		return Meta{}, false, fmt.Errorf("upgrade version 1 record: driver settings in its env file: %w", err)
	}
	m.Version = RecordVersion
	return m, true, nil
}

// EnvFile renders the VM's service-manager environment file. Host settings
// reach the stages through the unit (or the detached supervisor) and the
// VM's own decisions are in its record, so what remains is the VM's
// identity and the config root the file itself lives under, with which a
// stage run by hand with this file finds the record.
//
// A restart policy other than no is in it as MGR_RESTART: the detached
// supervisor reads this file, not the record (systemd gets the policy from
// the unit's drop-in).
func (s *Store) EnvFile(m Meta) ([]byte, error) {
	env := []string{"MGN_VM_ID=" + m.ID, "MGR_CONFIG_ROOT=" + s.Layout.ConfigRoot}
	if m.Restart != "" && m.Restart != "no" {
		env = append(env, "MGR_RESTART="+m.Restart)
	}
	return envfile.Render("Environment of the lifecycle stages of VM "+m.ID+", written by mergen.", env)
}

// Migrate rewrites every record stored in an older version in the current
// form, each under its VM's lifecycle lock (waiting until ctx is done), with
// its env file. A VM busy past ctx is left for the next run; it is still
// read correctly meanwhile. It returns the ids it rewrote.
func (s *Store) Migrate(ctx context.Context) ([]string, error) {
	ids, err := s.IDs()
	if err != nil {
		return nil, err
	}
	var done []string
	var errs []error
	for _, id := range ids {
		ok, err := s.migrate(ctx, id)
		if err != nil {
			errs = append(errs, err)
		}
		if ok {
			done = append(done, id)
		}
	}
	return done, errors.Join(errs...)
}

func (s *Store) migrate(ctx context.Context, id string) (bool, error) {
	if err := s.privatize(id); err != nil {
		return false, fmt.Errorf("migrate vm %s: %w", id, err)
	}
	if old, err := s.storedVersionOld(id); err != nil || !old {
		return false, err
	}
	unlock, err := s.Lock(ctx, id)
	if err != nil {
		return false, fmt.Errorf("migrate vm %s: %w", id, err)
	}
	defer unlock()
	// Read again under the lock: another process may have migrated it.
	b, err := s.ReadFile(id, FileMeta)
	if err != nil {
		return false, fmt.Errorf("migrate vm %s: %w", id, err)
	}
	m, upgraded, err := decodeMeta(b, func() ([]string, error) { return envfile.Read(s.Layout.VM(id).Env) })
	if err != nil || !upgraded {
		if err != nil {
			err = fmt.Errorf("migrate vm %s: %w", id, err)
		}
		return false, err
	}
	metaJSON, err := MarshalMeta(m)
	if err != nil {
		return false, err
	}
	env, err := s.EnvFile(m)
	if err != nil {
		return false, fmt.Errorf("migrate vm %s: %w", id, err)
	}
	// The record first: it holds the driver settings taken from the old env
	// file. A crash in between leaves a current record beside the old env
	// file, whose settings only repeat what the host gave at create.
	if err := s.WriteFile(id, FileMeta, metaJSON); err != nil {
		return false, fmt.Errorf("migrate vm %s: %w", id, err)
	}
	if err := s.WriteFile(id, FileEnv, env); err != nil {
		return false, fmt.Errorf("migrate vm %s: %w", id, err)
	}
	return true, nil
}

func (s *Store) storedVersionOld(id string) (bool, error) {
	b, err := s.ReadFile(id, FileMeta)
	if err != nil {
		return false, err
	}
	var head struct {
		Version int `json:"version"`
	}
	if err := json.Unmarshal(b, &head); err != nil {
		return false, fmt.Errorf("migrate vm %s: %w", id, err)
	}
	return head.Version < RecordVersion, nil
}

// privatize takes group and other permissions away from the VM's stored
// files: earlier versions wrote meta.json (which holds extraEnv) 0644.
func (s *Store) privatize(id string) error {
	dir := s.Layout.ConfigDir(id)
	for _, name := range []string{FileMeta, FileVMConfig, FileHooks, FileLifecycleHooks, FileEnv} {
		p := filepath.Join(dir, name)
		st, err := os.Lstat(p)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return err
		}
		if st.Mode().IsRegular() && st.Mode().Perm()&0o077 != 0 {
			if err := os.Chmod(p, st.Mode().Perm()&0o700); err != nil {
				return err
			}
		}
	}
	return nil
}
