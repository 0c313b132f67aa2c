// Package api is the daemon's HTTP surface: the /v1 REST API, the earlier
// generation's /machines endpoints, health and the OpenAPI document. Handlers
// only decode, call the manager and encode; errors are mapped to status codes
// in one place (writeError) from their class (internal/errdefs).
package api

import (
	"bufio"
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/mergenhq/mergen/internal/errdefs"
	"github.com/mergenhq/mergen/internal/hooks"
	"github.com/mergenhq/mergen/internal/jsondoc"
	"github.com/mergenhq/mergen/internal/manager"
	"github.com/mergenhq/mergen/internal/store"
	"github.com/mergenhq/mergen/internal/version"
	"github.com/mergenhq/mergen/internal/wire"
)

// MaxBodyBytes bounds request bodies.
const MaxBodyBytes = 1 << 20

//go:embed openapi.json
var openAPI []byte

// OpenAPI returns the OpenAPI 3 document the server serves at /openapi.json.
func OpenAPI() []byte { return openAPI }

// ImageLister lists local base assets and converted images for GET /v1/images.
type ImageLister func() (any, error)

// Server holds the handlers' collaborators.
type Server struct {
	mgr    *manager.Manager
	log    *slog.Logger
	images ImageLister
	health func() map[string]any
}

// New returns the HTTP handler of the daemon. health, when set, adds
// dependency details to /healthz.
func New(mgr *manager.Manager, log *slog.Logger, images ImageLister, health func() map[string]any) http.Handler {
	s := &Server{mgr: mgr, log: log, images: images, health: health}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", s.healthz)
	mux.HandleFunc("GET /openapi.json", s.openapi)
	mux.HandleFunc("POST /v1/vms", s.createVM)
	mux.HandleFunc("GET /v1/vms", s.listVMs)
	mux.HandleFunc("GET /v1/vms/{id}", s.getVM)
	mux.HandleFunc("DELETE /v1/vms/{id}", s.deleteVM)
	mux.HandleFunc("POST /v1/vms/{id}/start", s.startVM)
	mux.HandleFunc("POST /v1/vms/{id}/stop", s.stopVM)
	mux.HandleFunc("POST /v1/vms/{id}/pause", s.pauseVM)
	mux.HandleFunc("POST /v1/vms/{id}/resume", s.resumeVM)
	mux.HandleFunc("GET /v1/vms/{id}/console", s.console)
	mux.HandleFunc("GET /v1/vms/{id}/logs", s.logs)
	mux.HandleFunc("POST /v1/vms/{id}/snapshots", s.createSnapshot)
	mux.HandleFunc("GET /v1/vms/{id}/exec", s.exec)
	mux.HandleFunc("POST /v1/vms/{id}/exec", s.exec)
	mux.HandleFunc("GET /v1/vms/{id}/console/attach", s.attachConsole)
	mux.HandleFunc("GET /v1/vms/{id}/stats", s.stats)
	mux.HandleFunc("GET /v1/vms/{id}/files", s.getFiles)
	mux.HandleFunc("PUT /v1/vms/{id}/files", s.putFiles)
	mux.HandleFunc("GET /v1/vms/{id}/{file}", s.vmFile)
	mux.HandleFunc("GET /v1/snapshots", s.listSnapshots)
	mux.HandleFunc("GET /v1/snapshots/{sid}", s.getSnapshot)
	mux.HandleFunc("DELETE /v1/snapshots/{sid}", s.deleteSnapshot)
	mux.HandleFunc("GET /v1/images", s.listImages)
	mux.HandleFunc("GET /v1/events", s.events)
	// Behind the API's authentication like every other operation: the
	// figures name VMs' states and the host's pool.
	mux.Handle("GET /metrics", mgr.MetricsHandler())

	// The earlier generation's surface.
	mux.HandleFunc("GET /health", s.legacyHealth)
	mux.HandleFunc("POST /machines", s.legacyCreate)
	mux.HandleFunc("GET /machines/{id}", s.legacyGet)
	mux.HandleFunc("DELETE /machines/{id}", s.legacyDelete)

	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusNotFound, errorBody{Error: fmt.Sprintf("no route for %s %s", r.Method, r.URL.Path)})
	})
	return s.logged(mux)
}

type errorBody struct {
	Error string `json:"error"`
}

// statusRecorder captures the status for the access log.
type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (r *statusRecorder) WriteHeader(code int) {
	r.status = code
	r.ResponseWriter.WriteHeader(code)
}

// Unwrap lets http.ResponseController reach the connection's writer (to
// flush a followed console).
func (r *statusRecorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

func (s *Server) logged(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
		next.ServeHTTP(rec, r)
		s.log.Debug("http request", "method", r.Method, "path", r.URL.Path, "status", rec.status, "duration", time.Since(start))
	})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	buf := jsondoc.Get()
	defer buf.Put()
	b, err := buf.Compact(v)
	if err != nil {
		http.Error(w, "encode answer: "+err.Error(), http.StatusInternalServerError)
		return
	}
	if len(b)-1 <= indentMax { // without its newline
		if ind, err := buf.Indent(b); err == nil {
			b = ind
		}
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

// indentMax is the largest answer writeJSON indents for people reading it
// raw; larger ones (a list of many VMs) go compact: indenting a list of
// 1,000 VMs cost a quarter of answering it. Clients parse either.
const indentMax = 16 << 10

// writeError maps an error's class to its status code.
func (s *Server) writeError(w http.ResponseWriter, r *http.Request, err error) {
	status := http.StatusInternalServerError
	var maxErr *http.MaxBytesError
	switch {
	case errors.As(err, &maxErr):
		status = http.StatusRequestEntityTooLarge
		err = fmt.Errorf("request body larger than %d bytes", maxErr.Limit)
	case errdefs.IsInvalid(err):
		status = http.StatusBadRequest
	case errdefs.IsNotFound(err):
		status = http.StatusNotFound
	case errdefs.IsConflict(err):
		status = http.StatusConflict
	case errdefs.IsUnavailable(err):
		status = http.StatusServiceUnavailable
	case errdefs.IsNoSpace(err):
		status = http.StatusInsufficientStorage
	case errors.Is(err, errdefs.ErrGone):
		status = http.StatusGone
	}
	if status == http.StatusInternalServerError {
		s.log.Error("request failed", "method", r.Method, "path", r.URL.Path, "err", err)
	}
	writeJSON(w, status, errorBody{Error: err.Error()})
}

// decode reads one JSON object, rejecting unknown fields, trailing data and
// oversized bodies.
func decode(w http.ResponseWriter, r *http.Request, v any) error {
	r.Body = http.MaxBytesReader(w, r.Body, MaxBodyBytes)
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var maxErr *http.MaxBytesError
		var syntax *json.SyntaxError
		var typeErr *json.UnmarshalTypeError
		switch {
		case errors.As(err, &maxErr):
			return err
		case errors.Is(err, io.EOF):
			return errdefs.Invalid("request body is empty (want a JSON object)")
		case errors.Is(err, io.ErrUnexpectedEOF):
			return errdefs.Invalid("request body is not valid JSON: it ends in the middle of a value")
		case errors.As(err, &syntax):
			return errdefs.Invalid("request body is not valid JSON at byte %d: %w", syntax.Offset, err)
		case errors.As(err, &typeErr):
			return errdefs.Invalid("%s: want %s, got JSON %s", typeErr.Field, typeErr.Type, typeErr.Value)
		case strings.HasPrefix(err.Error(), "json: unknown field "):
			return errdefs.Invalid("unknown field %s", strings.TrimPrefix(err.Error(), "json: unknown field "))
		}
		return errdefs.Invalid("request body: %w", err)
	}
	if dec.More() {
		return errdefs.Invalid("request body has data after the JSON object")
	}
	if _, err := io.Copy(io.Discard, r.Body); err != nil {
		return err
	}
	return nil
}

func pathID(r *http.Request) (string, error) {
	id := r.PathValue("id")
	if err := store.ValidateID(id); err != nil {
		return "", err
	}
	return id, nil
}

func (s *Server) healthz(w http.ResponseWriter, r *http.Request) {
	body := map[string]any{"status": "ok", "version": version.Version}
	if s.health != nil {
		for k, v := range s.health() {
			body[k] = v
		}
	}
	writeJSON(w, http.StatusOK, body)
}

func (s *Server) openapi(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(openAPI)
}

func (s *Server) createVM(w http.ResponseWriter, r *http.Request) {
	var req wire.CreateRequest
	if err := decode(w, r, &req); err != nil {
		s.writeError(w, r, err)
		return
	}
	vm, err := s.mgr.Create(r.Context(), req)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	w.Header().Set("Location", "/v1/vms/"+vm.ID)
	writeJSON(w, http.StatusCreated, vm)
}

func (s *Server) listVMs(w http.ResponseWriter, r *http.Request) {
	vms, err := s.mgr.ListEncoded(r.Context())
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeList(w, vms)
}

// encodedList are a list's documents, already encoded (manager.EncodedVMs).
type encodedList interface {
	Len() int
	Size(i int) int
	AppendDoc(dst []byte, i int) []byte
}

// writeList answers wire.VMList of the documents vms, already encoded, as
// writeJSON would encode it: indented when small; else written as it is,
// straight into 64 KiB writes, so that a list of many VMs is neither
// encoded nor gathered into one answer (the manager keeps its documents
// encoded).
func writeList(w http.ResponseWriter, vms encodedList) {
	n := vms.Len()
	count := strconv.Itoa(n)
	size := len(`{"vms":[],"count":}`) + len(count) + 1
	for i := 0; i < n; i++ {
		if i > 0 {
			size++
		}
		size += vms.Size(i)
	}
	if size <= indentMax {
		docs := make([]json.RawMessage, n)
		for i := range docs {
			docs[i] = vms.AppendDoc(nil, i)
		}
		writeJSON(w, http.StatusOK, struct {
			VMs   []json.RawMessage `json:"vms"`
			Count int               `json:"count"`
		}{docs, n})
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(size))
	w.WriteHeader(http.StatusOK)
	bw := listWriters.Get().(*bufio.Writer)
	defer listWriters.Put(bw)
	bw.Reset(w)
	bw.WriteString(`{"vms":[`)
	for i := 0; i < n; i++ {
		if i > 0 {
			bw.WriteByte(',')
		}
		if bw.Available() < vms.Size(i) {
			bw.Flush()
		}
		// Into the writer's buffer when it fits (nearly always).
		bw.Write(vms.AppendDoc(bw.AvailableBuffer(), i))
	}
	bw.WriteString(`],"count":`)
	bw.WriteString(count)
	bw.WriteString("}\n")
	_ = bw.Flush()
	bw.Reset(nil) // let the answer's writer go
}

// listWriters gather a list's documents into writes of 64 KiB: written
// one by one, the answer's own 4 KiB buffer makes a system call for every
// two documents.
var listWriters = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 64<<10) }}

// getVM is GET /v1/vms/{id}: a transition that changes nothing.
func (s *Server) getVM(w http.ResponseWriter, r *http.Request) {
	s.transition(w, r, func(context.Context, string) error { return nil })
}

func (s *Server) deleteVM(w http.ResponseWriter, r *http.Request) {
	id, err := pathID(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if err := s.mgr.Delete(r.Context(), id); err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"id": id, "status": "deleted"})
}

func (s *Server) startVM(w http.ResponseWriter, r *http.Request) { s.transition(w, r, s.mgr.Start) }
func (s *Server) stopVM(w http.ResponseWriter, r *http.Request)  { s.transition(w, r, s.mgr.Stop) }
func (s *Server) pauseVM(w http.ResponseWriter, r *http.Request) { s.transition(w, r, s.mgr.Pause) }
func (s *Server) resumeVM(w http.ResponseWriter, r *http.Request) {
	s.transition(w, r, s.mgr.Resume)
}

// transition runs op on the VM named in the path and answers with the VM's
// document afterwards.
func (s *Server) transition(w http.ResponseWriter, r *http.Request, op func(ctx context.Context, id string) error) {
	id, err := pathID(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if err := op(r.Context(), id); err != nil {
		s.writeError(w, r, err)
		return
	}
	vm, err := s.mgr.Get(r.Context(), id)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, vm)
}

// vmFile serves the stored meta.json and vm.json as they are, and hooks.json
// with its header values redacted.
func (s *Server) vmFile(w http.ResponseWriter, r *http.Request) {
	id, err := pathID(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	name := r.PathValue("file")
	switch name {
	case store.FileMeta, store.FileVMConfig, store.FileHooks:
	default:
		s.writeError(w, r, errdefs.NotFound("vm %s has no file %q (want meta.json, vm.json or hooks.json)", id, name))
		return
	}
	b, err := s.mgr.Store().ReadFile(id, name)
	if err == nil && name == store.FileHooks {
		b, err = hooks.Redact(b) // header values are secrets: names only
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(b)
}

func (s *Server) listImages(w http.ResponseWriter, r *http.Request) {
	if s.images == nil {
		s.writeError(w, r, errdefs.Unavailable("image listing is not configured"))
		return
	}
	v, err := s.images()
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, v)
}

// stats is GET /v1/vms/{id}/stats.
func (s *Server) stats(w http.ResponseWriter, r *http.Request) {
	id, err := pathID(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	st, err := s.mgr.Stats(r.Context(), id)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, st)
}
