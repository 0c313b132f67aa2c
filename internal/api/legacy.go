package api

import (
	"encoding/json"
	"net/http"
	"time"

	"github.com/mergenhq/mergen/internal/errdefs"
	"github.com/mergenhq/mergen/internal/store"
	"github.com/mergenhq/mergen/internal/wire"
)

// The earlier generation's API: POST /machines creates and starts a VM
// named by a caller-chosen id; GET and DELETE address it by that id. The id
// becomes the VM's name tag (the VM's own id stays a UUID), so the VM is
// visible and manageable through /v1 too.

type legacyCreateRequest struct {
	ID                string `json:"id"`
	KernelImagePath   string `json:"kernel_image_path"`
	RootDrivePath     string `json:"root_drive_path"`
	CPUCount          int    `json:"cpu_count"`
	MemSizeMB         int    `json:"mem_size_mb"`
	BootArgs          string `json:"boot_args"`
	ContainerImageURL string `json:"container_image_url"`
}

type legacyStatus struct {
	ID                string    `json:"id"`
	Status            string    `json:"status"`
	PID               int       `json:"pid"`
	SocketPath        string    `json:"socket_path"`
	LogPath           string    `json:"log_path"`
	CreatedAt         time.Time `json:"created_at"`
	ContainerImageURL string    `json:"container_image_url,omitempty"`
}

const legacyImageKey = "container_image_url"

func (s *Server) legacyHealth(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

func (s *Server) legacyCreate(w http.ResponseWriter, r *http.Request) {
	var req legacyCreateRequest
	if err := decode(w, r, &req); err != nil {
		s.writeError(w, r, err)
		return
	}
	if req.ID == "" {
		s.writeError(w, r, errdefs.Invalid("id: required"))
		return
	}
	create := wire.CreateRequest{
		Kernel:    req.KernelImagePath,
		Rootfs:    req.RootDrivePath,
		VCPU:      req.CPUCount,
		MemMiB:    req.MemSizeMB,
		BootArgs:  req.BootArgs,
		Tags:      map[string]string{wire.NameTag: req.ID},
		AutoStart: true,
	}
	if req.ContainerImageURL != "" {
		create.Metadata, _ = json.Marshal(map[string]string{legacyImageKey: req.ContainerImageURL})
	}
	vm, err := s.mgr.Create(r.Context(), create)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusCreated, legacyView(req.ID, vm))
}

func (s *Server) legacyLookup(r *http.Request) (wire.VM, string, error) {
	name := r.PathValue("id")
	if store.ValidateID(name) == nil {
		vm, err := s.mgr.Get(r.Context(), name)
		return vm, name, err
	}
	vm, err := s.mgr.FindByName(r.Context(), name)
	return vm, name, err
}

func (s *Server) legacyGet(w http.ResponseWriter, r *http.Request) {
	vm, name, err := s.legacyLookup(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, legacyView(name, vm))
}

func (s *Server) legacyDelete(w http.ResponseWriter, r *http.Request) {
	vm, name, err := s.legacyLookup(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if err := s.mgr.Delete(r.Context(), vm.ID); err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"id": name, "status": "deleted"})
}

func legacyView(name string, vm wire.VM) legacyStatus {
	st := legacyStatus{
		ID:         name,
		Status:     legacyState(vm),
		PID:        vm.Service.MainPID,
		SocketPath: vm.VMMState.SocketPath,
		LogPath:    vm.Paths.ConsoleLog,
		CreatedAt:  vm.CreatedAt,
	}
	var md map[string]any
	if json.Unmarshal(vm.Metadata, &md) == nil {
		if u, ok := md[legacyImageKey].(string); ok {
			st.ContainerImageURL = u
		}
	}
	return st
}

func legacyState(vm wire.VM) string {
	switch {
	case !vm.Service.Available:
		return "unknown"
	case vm.Service.ActiveState == "failed":
		return "failed"
	case vm.Service.Active:
		return "running"
	case vm.Service.ActiveState == "activating":
		return "starting"
	}
	return "stopped"
}
