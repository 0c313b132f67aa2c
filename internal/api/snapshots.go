package api

import (
	"net/http"

	"github.com/mergenhq/mergen/internal/wire"
)

// createSnapshot is POST /v1/vms/{id}/snapshots; the body is optional.
func (s *Server) createSnapshot(w http.ResponseWriter, r *http.Request) {
	id, err := pathID(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	var req wire.SnapshotRequest
	if r.ContentLength != 0 {
		if err := decode(w, r, &req); err != nil {
			s.writeError(w, r, err)
			return
		}
	}
	snap, err := s.mgr.Snapshot(r.Context(), id, req)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	w.Header().Set("Location", "/v1/snapshots/"+snap.ID)
	writeJSON(w, http.StatusCreated, snap)
}

func (s *Server) listSnapshots(w http.ResponseWriter, r *http.Request) {
	snaps, err := s.mgr.ListSnapshots()
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, wire.SnapshotList{Snapshots: snaps, Count: len(snaps)})
}

// getSnapshot takes an id or a unique prefix of at least 8 characters.
func (s *Server) getSnapshot(w http.ResponseWriter, r *http.Request) {
	snap, err := s.mgr.GetSnapshot(r.PathValue("sid"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, snap)
}

func (s *Server) deleteSnapshot(w http.ResponseWriter, r *http.Request) {
	snap, err := s.mgr.GetSnapshot(r.PathValue("sid"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if err := s.mgr.DeleteSnapshot(snap.ID); err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"id": snap.ID, "status": "deleted"})
}
