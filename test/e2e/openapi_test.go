package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers/legacy"

	"github.com/mergenhq/mergen/internal/api"
	"github.com/mergenhq/mergen/internal/store"
	"github.com/mergenhq/mergen/internal/wire"
)

// TestResponsesMatchTheOpenAPIDocument sends real requests to a real daemon
// and validates every request and response against /openapi.json.
func TestResponsesMatchTheOpenAPIDocument(t *testing.T) {
	ctx := context.Background()
	doc, err := openapi3.NewLoader().LoadFromData(api.OpenAPI())
	if err != nil {
		t.Fatalf("load openapi.json: %v", err)
	}
	if err := doc.Validate(ctx); err != nil {
		t.Fatalf("openapi.json is not a valid OpenAPI 3 document: %v", err)
	}
	// An event stream is text, as far as a schema goes.
	openapi3filter.RegisterBodyDecoder("text/event-stream", openapi3filter.PlainBodyDecoder)
	h := newHost(t, noServiceManager)
	base := h.serve(t)
	doc.Servers = openapi3.Servers{{URL: base}}
	router, err := legacy.NewRouter(doc)
	if err != nil {
		t.Fatal(err)
	}

	// The document's security requirement is met by a bearer header (the
	// daemon checks the token itself).
	bearer := func(_ context.Context, in *openapi3filter.AuthenticationInput) error {
		if s := in.SecurityScheme; s.Type != "http" || s.Scheme != "bearer" {
			return fmt.Errorf("unexpected security scheme %s %s", s.Type, s.Scheme)
		}
		if !strings.HasPrefix(in.RequestValidationInput.Request.Header.Get("Authorization"), "Bearer ") {
			return errors.New("no bearer token")
		}
		return nil
	}
	token := h.token(t)

	covered := map[string]bool{}
	// checkWith sends a request with the given headers; check sends the
	// token, and a JSON content type with a body.
	var checkWith func(method, path, body string, header http.Header, wantStatus int) []byte
	check := func(method, path, body string, wantStatus int) []byte {
		t.Helper()
		header := http.Header{"Authorization": {"Bearer " + token}}
		if body != "" {
			header.Set("Content-Type", "application/json")
		}
		return checkWith(method, path, body, header, wantStatus)
	}
	checkWith = func(method, path, body string, header http.Header, wantStatus int) []byte {
		t.Helper()
		var rd io.Reader
		if body != "" {
			rd = strings.NewReader(body)
		}
		req, _ := http.NewRequest(method, base+path, rd)
		req.Header = header
		route, params, err := router.FindRoute(req)
		if err != nil {
			t.Fatalf("%s %s is not in the OpenAPI document: %v", method, path, err)
		}
		in := &openapi3filter.RequestValidationInput{Request: req, PathParams: params, Route: route,
			Options: &openapi3filter.Options{ExcludeRequestBody: wantStatus >= 400, AuthenticationFunc: bearer}}
		if wantStatus < 400 {
			if err := openapi3filter.ValidateRequest(ctx, in); err != nil {
				t.Fatalf("%s %s: request does not match the document: %v", method, path, err)
			}
			if body != "" {
				req.Body = io.NopCloser(strings.NewReader(body))
			}
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		data, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != wantStatus {
			t.Fatalf("%s %s: status %d, want %d: %s", method, path, resp.StatusCode, wantStatus, data)
		}
		out := &openapi3filter.ResponseValidationInput{RequestValidationInput: in, Status: resp.StatusCode, Header: resp.Header,
			Options: &openapi3filter.Options{IncludeResponseStatus: true}}
		out.SetBodyBytes(data)
		if err := openapi3filter.ValidateResponse(ctx, out); err != nil {
			t.Fatalf("%s %s → %d: response does not match the document: %v\n%s", method, path, resp.StatusCode, err, data)
		}
		covered[route.Method+" "+route.Path] = true
		return data
	}

	check("GET", "/healthz", "", 200)
	check("GET", "/health", "", 200)
	check("GET", "/openapi.json", "", 200)
	created := check("POST", "/v1/vms", `{"vcpu":1,"memMiB":256,"ports":[{"guest":80,"host":0}],"httpPort":80,"tags":{"name":"doc","app":"x"},"metadata":{"a":[1,2]},"extraEnv":{"A":"b"}}`, 201)
	var vm wire.VM
	if err := json.Unmarshal(created, &vm); err != nil {
		t.Fatal(err)
	}
	check("GET", "/v1/vms", "", 200)
	check("GET", "/v1/vms/"+vm.ID, "", 200)
	check("GET", "/v1/vms/"+vm.ID+"/meta.json", "", 200)
	check("GET", "/v1/vms/"+vm.ID+"/vm.json", "", 200)
	check("GET", "/v1/vms/"+vm.ID+"/hooks.json", "", 200)
	check("GET", "/v1/vms/"+vm.ID+"/console?tail=100", "", 200)
	check("GET", "/v1/vms/"+vm.ID+"/logs?tail=5&source=payload&follow=0", "", 200)
	check("GET", "/v1/vms/"+vm.ID+"/logs?tail=-1", "", 400)
	check("POST", "/v1/vms/"+vm.ID+"/start", "", 503)
	check("POST", "/v1/vms/"+vm.ID+"/stop", "", 503)
	// A VM that is not running cannot be paused or resumed.
	check("POST", "/v1/vms/"+vm.ID+"/pause", "", 409)
	check("POST", "/v1/vms/"+vm.ID+"/resume", "", 409)
	check("POST", "/v1/vms/"+store.NewID()+"/pause", "", 404)
	check("GET", "/v1/images", "", 200)
	check("GET", "/metrics", "", 200)
	// follow=0 ends the stream at the journal's end.
	check("GET", "/v1/events?since=0&follow=0", "", 200)
	check("GET", "/v1/events?type=exploded", "", 400)
	check("GET", "/v1/events?since=yesterday", "", 400)
	check("GET", "/v1/vms/"+vm.ID+"/stats", "", 200)
	check("GET", "/v1/vms/"+store.NewID()+"/stats", "", 404)
	// Snapshots: a stopped VM cannot be snapshotted; none exist yet.
	check("POST", "/v1/vms/"+vm.ID+"/snapshots", `{"stop":false}`, 409)
	check("POST", "/v1/vms/"+store.NewID()+"/snapshots", "", 404)
	check("GET", "/v1/snapshots", "", 200)
	check("GET", "/v1/snapshots/"+store.NewID(), "", 404)
	check("DELETE", "/v1/snapshots/"+store.NewID(), "", 404)
	check("POST", "/v1/vms", `{"snapshot":"`+store.NewID()+`"}`, 400)
	// Exec and files need a running guest.
	check("GET", "/v1/vms/"+vm.ID+"/exec", "", 409)
	check("POST", "/v1/vms/"+vm.ID+"/exec", "", 409)
	check("GET", "/v1/vms/"+vm.ID+"/console/attach", "", 409)
	check("GET", "/v1/vms/"+vm.ID+"/files?path=/etc/hostname", "", 409)
	check("GET", "/v1/vms/"+store.NewID()+"/files?path=/etc/hostname", "", 404)
	checkWith("PUT", "/v1/vms/"+vm.ID+"/files?path=/tmp", "x", http.Header{"Authorization": {"Bearer " + token}, "Content-Type": {"application/x-tar"}}, 409)
	check("POST", "/v1/vms", `{"vcpu":99}`, 400)
	check("POST", "/v1/vms", `{"tags":{"name":"doc"}}`, 409)
	check("GET", "/v1/vms/"+store.NewID(), "", 404)
	check("GET", "/machines/doc", "", 200)
	check("POST", "/machines", `{"id":"legacy1","mem_size_mb":256}`, 503)
	check("DELETE", "/machines/doc", "", 200)
	check("DELETE", "/machines/doc", "", 404)
	created = check("POST", "/v1/vms", `{}`, 201)
	if err := json.Unmarshal(created, &vm); err != nil {
		t.Fatal(err)
	}
	check("DELETE", "/v1/vms/"+vm.ID, "", 200)

	// The front door's answers match the document too.
	checkWith("GET", "/v1/vms", "", http.Header{}, 401)
	checkWith("GET", "/machines/doc", "", http.Header{"Authorization": {"Basic " + token}}, 401)
	checkWith("POST", "/v1/vms", `{}`, http.Header{"Authorization": {"Bearer " + token}, "Content-Type": {"text/plain"}}, 415)
	checkWith("POST", "/v1/vms", `{}`, http.Header{"Authorization": {"Bearer " + token}, "Content-Type": {"application/json"}, "Origin": {"http://evil.example"}}, 403)
	checkWith("GET", "/healthz", "", http.Header{"Origin": {"null"}}, 403)
	checkWith("GET", "/health", "", http.Header{"X-Padding": {strings.Repeat("a", 1<<20)}}, 431)

	// Every operation in the document was exercised.
	for path, item := range doc.Paths.Map() {
		for method := range item.Operations() {
			if !covered[method+" "+path] {
				t.Errorf("%s %s is documented but not exercised by this test", method, path)
			}
		}
	}
}
