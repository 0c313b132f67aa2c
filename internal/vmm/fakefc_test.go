package vmm

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
)

// fakeFirecracker serves, on a unix socket, the part of Firecracker's API
// that the driver and its config file rely on, as documented in
// Firecracker's swagger (src/firecracker/swagger/firecracker.yaml; v1.0.0's
// is src/api_server/swagger/firecracker.yaml), docs/api_requests and
// docs/snapshotting/snapshot-support.md: GET / (InstanceInfo), PUT
// /actions, PATCH /vm (pause and resume, body {"state":
// "Paused"|"Resumed"}), PUT /snapshot/create (post-boot, on a paused VM)
// and /snapshot/load (only before any other resource is configured), and
// the pre-boot resources whose bodies make up the --config-file document.
// It refuses everything else the way Firecracker does: 400 with a
// fault_message. It exists only because no Firecracker binary can run on
// the machines that run the tests; TestRealFirecracker* check the same
// calls against a real binary where one is given.
type fakeFirecracker struct {
	mu      sync.Mutex
	state   string   // "Not started", "Running", "Paused"
	actions []string // accepted action_type values, in order
	patches []string // accepted PATCH /vm states, in order
	put     map[string]bool
	// creates and loads are the accepted bodies of PUT /snapshot/create
	// and /snapshot/load, as sent.
	creates, loads []string

	// What a jailed Firecracker would see and do: root is its chroot, in
	// which the paths of snapshot requests lie (empty: the host's root);
	// the snapshot files it writes are owned by uid/gid (when not 0) and
	// the memory file is memMiB MiB long.
	root     string
	uid, gid int
	memMiB   int
	// snapshotHook, when set, runs after the fake has written a
	// snapshot's files (as host paths): a test plays a hostile VMM.
	snapshotHook func(state, mem string)
}

// fakeVMState is what the fake writes as a snapshot's vmstate and wants to
// find when it loads one.
const fakeVMState = "fake firecracker vmstate\n"

// jailed makes the fake behave as a Firecracker chrooted in root, running
// as uid/gid with a guest of memMiB MiB.
func (f *fakeFirecracker) jailed(root string, uid, gid, memMiB int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.root, f.uid, f.gid, f.memMiB = root, uid, gid, memMiB
}

// fcField is the JSON kind a documented field takes.
type fcField byte

const (
	fcString fcField = 's'
	fcBool   fcField = 'b'
	fcNumber fcField = 'n'
	fcObject fcField = 'o'
)

// fcResource is one request's body schema: its fields, and the values the
// enumerated ones take.
type fcResource struct {
	required map[string]fcField
	optional map[string]fcField
	enums    map[string][]string
}

// fcResources are the documented bodies of the pre-boot PUT requests.
var fcResources = map[string]fcResource{
	"boot-source": {
		required: map[string]fcField{"kernel_image_path": fcString},
		optional: map[string]fcField{"boot_args": fcString, "initrd_path": fcString},
	},
	"machine-config": {
		required: map[string]fcField{"vcpu_count": fcNumber, "mem_size_mib": fcNumber},
		optional: map[string]fcField{"smt": fcBool, "track_dirty_pages": fcBool, "cpu_template": fcString, "huge_pages": fcString},
	},
	"drives": {
		required: map[string]fcField{"drive_id": fcString, "is_root_device": fcBool},
		optional: map[string]fcField{"path_on_host": fcString, "is_read_only": fcBool, "partuuid": fcString,
			"cache_type": fcString, "io_engine": fcString, "rate_limiter": fcObject, "socket": fcString},
	},
	"network-interfaces": {
		required: map[string]fcField{"iface_id": fcString, "host_dev_name": fcString},
		optional: map[string]fcField{"guest_mac": fcString, "rx_rate_limiter": fcObject, "tx_rate_limiter": fcObject},
	},
	"vsock": {
		required: map[string]fcField{"guest_cid": fcNumber, "uds_path": fcString},
		optional: map[string]fcField{"vsock_id": fcString},
	},
	"entropy": {
		optional: map[string]fcField{"rate_limiter": fcObject},
	},
}

// fcRequests are the documented bodies of the requests other than the
// pre-boot resources (API v1.0: SnapshotCreateParams, SnapshotLoadParams,
// Vm, InstanceActionInfo).
var fcRequests = map[string]fcResource{
	"PUT /snapshot/create": {
		required: map[string]fcField{"snapshot_path": fcString, "mem_file_path": fcString},
		optional: map[string]fcField{"snapshot_type": fcString, "version": fcString},
		enums:    map[string][]string{"snapshot_type": {"Full", "Diff"}},
	},
	"PUT /snapshot/load": {
		required: map[string]fcField{"snapshot_path": fcString, "mem_file_path": fcString},
		optional: map[string]fcField{"enable_diff_snapshots": fcBool, "resume_vm": fcBool},
	},
	"PATCH /vm": {
		required: map[string]fcField{"state": fcString},
		enums:    map[string][]string{"state": {"Paused", "Resumed"}},
	},
	"PUT /actions": {
		required: map[string]fcField{"action_type": fcString},
		enums:    map[string][]string{"action_type": {"InstanceStart", "SendCtrlAltDel", "FlushMetrics"}},
	},
}

// fcConfigFileKeys are the top-level keys of a --config-file document.
var fcConfigFileKeys = []string{"boot-source", "drives", "machine-config", "network-interfaces",
	"vsock", "entropy", "logger", "metrics", "mmds-config", "balloon", "cpu-config"}

// checkFCBody validates a body against its resource's schema.
func checkFCBody(resource string, body []byte) error {
	schema, ok := fcResources[resource]
	if !ok {
		return fmt.Errorf("no such resource %q", resource)
	}
	return checkBody(resource, schema, body)
}

// checkFCRequest validates the body of a request listed in fcRequests.
func checkFCRequest(request string, body []byte) error {
	schema, ok := fcRequests[request]
	if !ok {
		return fmt.Errorf("no such request %q", request)
	}
	return checkBody(request, schema, body)
}

func checkBody(resource string, schema fcResource, body []byte) error {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(body, &fields); err != nil {
		return fmt.Errorf("%s: body is not a JSON object: %v", resource, err)
	}
	for name := range schema.required {
		if _, ok := fields[name]; !ok {
			return fmt.Errorf("%s: missing field %q", resource, name)
		}
	}
	for name, raw := range fields {
		kind, ok := schema.required[name]
		if !ok {
			kind, ok = schema.optional[name]
		}
		if !ok {
			return fmt.Errorf("%s: unknown field %q", resource, name)
		}
		var v any
		if err := json.Unmarshal(raw, &v); err != nil {
			return err
		}
		var got fcField
		switch v.(type) {
		case string:
			got = fcString
		case bool:
			got = fcBool
		case float64:
			got = fcNumber
		case map[string]any:
			got = fcObject
		}
		if got != kind {
			return fmt.Errorf("%s: field %q has the wrong type (%s)", resource, name, raw)
		}
		if values, ok := schema.enums[name]; ok && !slices.Contains(values, v.(string)) {
			return fmt.Errorf("%s: field %q: unknown variant `%s`, expected one of %q", resource, name, v, values)
		}
	}
	return nil
}

// startFakeFirecracker serves the fake on a fresh socket and returns it.
func startFakeFirecracker(t *testing.T) (*fakeFirecracker, string) {
	t.Helper()
	socket := filepath.Join(t.TempDir(), "fc.sock")
	l, err := net.Listen("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeFirecracker{state: "Not started", put: map[string]bool{}}
	srv := &http.Server{Handler: f}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return f, socket
}

func (f *fakeFirecracker) fault(w http.ResponseWriter, format string, a ...any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusBadRequest)
	json.NewEncoder(w).Encode(map[string]string{"fault_message": fmt.Sprintf(format, a...)})
}

func (f *fakeFirecracker) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	body, err := io.ReadAll(r.Body)
	if err != nil {
		f.fault(w, "read body: %v", err)
		return
	}
	if (r.Method == http.MethodPut || r.Method == http.MethodPatch) && r.ContentLength < 0 {
		f.fault(w, "chunked bodies are not supported")
		return
	}
	switch {
	case r.Method == http.MethodGet && r.URL.Path == "/":
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]string{
			"id": "anonymous-instance", "state": f.state, "vmm_version": "1.0.0", "app_name": "Firecracker",
		})
	case r.Method == http.MethodPut && r.URL.Path == "/actions":
		f.doAction(w, body)
	case r.Method == http.MethodPatch && r.URL.Path == "/vm":
		f.patchVM(w, body)
	case r.Method == http.MethodPut && r.URL.Path == "/snapshot/create":
		f.createSnapshot(w, body)
	case r.Method == http.MethodPut && r.URL.Path == "/snapshot/load":
		f.loadSnapshot(w, body)
	case r.Method == http.MethodPut:
		resource, id, _ := strings.Cut(strings.TrimPrefix(r.URL.Path, "/"), "/")
		if _, ok := fcResources[resource]; !ok {
			f.fault(w, "Invalid request method and/or path: %s %s.", r.Method, strings.TrimPrefix(r.URL.Path, "/"))
			return
		}
		if f.state != "Not started" {
			f.fault(w, "The requested operation is not supported after starting the microVM.")
			return
		}
		if err := checkFCBody(resource, body); err != nil {
			f.fault(w, "An error occurred when deserializing the json body of a request: %v", err)
			return
		}
		// Resources with an id in the path must repeat it in the body.
		idField := map[string]string{"drives": "drive_id", "network-interfaces": "iface_id"}[resource]
		if (idField != "") != (id != "") {
			f.fault(w, "Invalid request method and/or path: %s %s.", r.Method, strings.TrimPrefix(r.URL.Path, "/"))
			return
		}
		if idField != "" {
			var fields map[string]any
			json.Unmarshal(body, &fields)
			if fields[idField] != id {
				f.fault(w, "The id from the path [%s] does not match the id from the body [%v]!", id, fields[idField])
				return
			}
		}
		f.put[resource] = true
		w.WriteHeader(http.StatusNoContent)
	default:
		f.fault(w, "Invalid request method and/or path: %s %s.", r.Method, strings.TrimPrefix(r.URL.Path, "/"))
	}
}

func (f *fakeFirecracker) doAction(w http.ResponseWriter, body []byte) {
	if err := checkFCRequest("PUT /actions", body); err != nil {
		f.fault(w, "An error occurred when deserializing the json body of a request: %v", err)
		return
	}
	var a struct {
		ActionType string `json:"action_type"`
	}
	json.Unmarshal(body, &a)
	switch a.ActionType {
	case "InstanceStart":
		if f.state != "Not started" {
			f.fault(w, "The requested operation is not supported after starting the microVM.")
			return
		}
		if !f.put["boot-source"] {
			f.fault(w, "Cannot start microvm without kernel configuration.")
			return
		}
		f.state = "Running"
	case "SendCtrlAltDel":
		if f.state != "Running" {
			f.fault(w, "The requested operation is not supported before starting the microVM.")
			return
		}
	case "FlushMetrics":
	}
	f.actions = append(f.actions, a.ActionType)
	w.WriteHeader(http.StatusNoContent)
}

// patchVM is PATCH /vm: the body's only field, state, is Paused or
// Resumed; both are refused before the microVM has started.
func (f *fakeFirecracker) patchVM(w http.ResponseWriter, body []byte) {
	if err := checkFCRequest("PATCH /vm", body); err != nil {
		f.fault(w, "An error occurred when deserializing the json body of a request: %v", err)
		return
	}
	var v struct {
		State string `json:"state"`
	}
	json.Unmarshal(body, &v)
	if f.state == "Not started" {
		f.fault(w, "The requested operation is not supported before starting the microVM.")
		return
	}
	if v.State == "Paused" {
		f.state = "Paused"
	} else {
		f.state = "Running"
	}
	f.patches = append(f.patches, v.State)
	w.WriteHeader(http.StatusNoContent)
}

// hostPath is where a path the VMM was given lies on the host.
func (f *fakeFirecracker) hostPath(p string) string {
	if f.root == "" {
		return p
	}
	return filepath.Join(f.root, p)
}

// createSnapshot is PUT /snapshot/create: post-boot, on a paused VM (the
// documented prerequisite); a Diff snapshot needs dirty page tracking,
// which the driver never turns on. Firecracker creates both files (mode
// 0666 less its umask) and writes them; the memory file is as long as the
// guest's memory.
func (f *fakeFirecracker) createSnapshot(w http.ResponseWriter, body []byte) {
	if err := checkFCRequest("PUT /snapshot/create", body); err != nil {
		f.fault(w, "An error occurred when deserializing the json body of a request: %v", err)
		return
	}
	var p struct {
		SnapshotType string `json:"snapshot_type"`
		SnapshotPath string `json:"snapshot_path"`
		MemFilePath  string `json:"mem_file_path"`
	}
	json.Unmarshal(body, &p)
	switch {
	case f.state == "Not started":
		f.fault(w, "The requested operation is not supported before starting the microVM.")
		return
	case f.state != "Paused":
		f.fault(w, "Cannot save the microVM state: the microVM is not paused.")
		return
	case p.SnapshotType == "Diff":
		f.fault(w, "Diff snapshots are not allowed on uVMs with dirty page tracking disabled.")
		return
	}
	state, mem := f.hostPath(p.SnapshotPath), f.hostPath(p.MemFilePath)
	write := func(path string, data []byte, size int64) error {
		out, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
		if err != nil {
			return err
		}
		defer out.Close()
		if _, err := out.Write(data); err != nil {
			return err
		}
		if err := out.Truncate(max(size, int64(len(data)))); err != nil {
			return err
		}
		if f.uid != 0 && os.Geteuid() == 0 {
			return out.Chown(f.uid, f.gid)
		}
		return nil
	}
	if err := write(state, []byte(fakeVMState), 0); err != nil {
		f.fault(w, "Cannot perform open on the snapshot backing file: %v", err)
		return
	}
	if err := write(mem, nil, int64(f.memMiB)<<20); err != nil {
		f.fault(w, "Cannot perform open on the memory backing file: %v", err)
		return
	}
	if f.snapshotHook != nil {
		f.snapshotHook(state, mem)
	}
	f.creates = append(f.creates, string(body))
	w.WriteHeader(http.StatusNoContent)
}

// loadSnapshot is PUT /snapshot/load: only on a fresh Firecracker, before
// any resource is configured; the VM is Paused after the load, or Running
// with resume_vm.
func (f *fakeFirecracker) loadSnapshot(w http.ResponseWriter, body []byte) {
	if err := checkFCRequest("PUT /snapshot/load", body); err != nil {
		f.fault(w, "An error occurred when deserializing the json body of a request: %v", err)
		return
	}
	var p struct {
		SnapshotPath string `json:"snapshot_path"`
		MemFilePath  string `json:"mem_file_path"`
		ResumeVM     bool   `json:"resume_vm"`
	}
	json.Unmarshal(body, &p)
	if f.state != "Not started" || len(f.put) > 0 {
		f.fault(w, "Loading a microVM snapshot not allowed after configuring boot-specific resources.")
		return
	}
	if b, err := os.ReadFile(f.hostPath(p.SnapshotPath)); err != nil || string(b) != fakeVMState {
		f.fault(w, "Cannot deserialize the microVM state: %v", err)
		return
	}
	if _, err := os.Stat(f.hostPath(p.MemFilePath)); err != nil {
		f.fault(w, "Cannot open the memory file: %v", err)
		return
	}
	f.state = "Paused"
	if p.ResumeVM {
		f.state = "Running"
	}
	f.loads = append(f.loads, string(body))
	w.WriteHeader(http.StatusNoContent)
}

// Snapshots are the accepted create and load bodies.
func (f *fakeFirecracker) Snapshots() (creates, loads []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.creates), slices.Clone(f.loads)
}

func (f *fakeFirecracker) Patches() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.patches...)
}

func (f *fakeFirecracker) Actions() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.actions...)
}
