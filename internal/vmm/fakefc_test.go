package vmm

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// fakeFirecracker serves, on a unix socket, the part of Firecracker's API
// that the driver and its config file rely on, as documented in
// Firecracker's swagger (src/firecracker/swagger/firecracker.yaml) and
// docs/api_requests: GET / (InstanceInfo), PUT /actions, PATCH /vm (pause
// and resume, body {"state": "Paused"|"Resumed"}), and the pre-boot
// resources whose bodies make up the --config-file document. It refuses
// everything else the way Firecracker does: 400 with a fault_message. It
// exists only because no Firecracker binary can run on the machines that
// run the tests; TestRealFirecracker checks the same calls against a real
// binary where one is given.
type fakeFirecracker struct {
	mu      sync.Mutex
	state   string   // "Not started", "Running", "Paused"
	actions []string // accepted action_type values, in order
	patches []string // accepted PATCH /vm states, in order
	put     map[string]bool
}

// fcField is the JSON kind a documented field takes.
type fcField byte

const (
	fcString fcField = 's'
	fcBool   fcField = 'b'
	fcNumber fcField = 'n'
	fcObject fcField = 'o'
)

// fcResource is one pre-boot resource's body schema.
type fcResource struct {
	required map[string]fcField
	optional map[string]fcField
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

// fcConfigFileKeys are the top-level keys of a --config-file document.
var fcConfigFileKeys = []string{"boot-source", "drives", "machine-config", "network-interfaces",
	"vsock", "entropy", "logger", "metrics", "mmds-config", "balloon", "cpu-config"}

// checkFCBody validates a body against its resource's schema.
func checkFCBody(resource string, body []byte) error {
	schema, ok := fcResources[resource]
	if !ok {
		return fmt.Errorf("no such resource %q", resource)
	}
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
	var a struct {
		ActionType string `json:"action_type"`
	}
	dec := json.NewDecoder(strings.NewReader(string(body)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&a); err != nil {
		f.fault(w, "An error occurred when deserializing the json body of a request: %v", err)
		return
	}
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
	default:
		f.fault(w, "An error occurred when deserializing the json body of a request: unknown variant `%s`", a.ActionType)
		return
	}
	f.actions = append(f.actions, a.ActionType)
	w.WriteHeader(http.StatusNoContent)
}

// patchVM is PATCH /vm: the body's only field, state, is Paused or
// Resumed; both are refused before the microVM has started.
func (f *fakeFirecracker) patchVM(w http.ResponseWriter, body []byte) {
	var v struct {
		State *string `json:"state"`
	}
	dec := json.NewDecoder(strings.NewReader(string(body)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&v); err != nil || v.State == nil {
		f.fault(w, "An error occurred when deserializing the json body of a request: %v (state is required)", err)
		return
	}
	if f.state == "Not started" {
		f.fault(w, "The requested operation is not supported before starting the microVM.")
		return
	}
	switch *v.State {
	case "Paused":
		f.state = "Paused"
	case "Resumed":
		f.state = "Running"
	default:
		f.fault(w, "An error occurred when deserializing the json body of a request: unknown variant `%s`, expected `Paused` or `Resumed`", *v.State)
		return
	}
	f.patches = append(f.patches, *v.State)
	w.WriteHeader(http.StatusNoContent)
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
