package api_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/mergenhq/mergen/internal/api"
	"github.com/mergenhq/mergen/internal/wire"
)

// lockedBuffer is a log destination shared by the server's goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// door is the API behind the front door, served on a loopback port the way
// the daemon serves it, with its log captured.
type door struct {
	*host
	base string
	log  *lockedBuffer
}

func newDoor(t *testing.T, withTokens bool, origins ...string) *door {
	t.Helper()
	h := newHost(t, nil) // for its manager, store and token file
	logs := &lockedBuffer{}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	fd := api.FrontDoor{AllowedOrigins: origins, Listener: "tcp", Log: log}
	if withTokens {
		fd.Tokens = h.tokens
	}
	srv := api.NewServer(fd.Wrap(api.New(h.mgr, log, nil, nil)), log)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(api.Listen(ln, log, "tcp"))
	t.Cleanup(func() { srv.Shutdown(context.Background()) })
	return &door{host: h, base: "http://" + ln.Addr().String(), log: logs}
}

// send makes one request; header pairs are added as given (an empty value
// is still sent).
func (d *door) send(t *testing.T, method, path, body string, header ...string) (int, http.Header, string) {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, d.base+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(header); i += 2 {
		if header[i] == "" {
			continue
		}
		req.Header[http.CanonicalHeaderKey(header[i])] = append(req.Header[http.CanonicalHeaderKey(header[i])], header[i+1])
	}
	resp, err := noProxy.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, string(b)
}

var noProxy = &http.Client{Transport: &http.Transport{Proxy: nil}}

// Over TCP every request but health needs one of the file's tokens, on the
// /v1 API and the /machines surface alike: no token, a wrong one, one of
// the right length a byte off, or another scheme is 401 with a JSON error
// and a Bearer challenge, and never reaches a handler.
func TestTCPRequestsNeedABearerToken(t *testing.T) {
	d := newDoor(t, true)
	good := "Bearer " + d.token
	oneOff := d.token[:len(d.token)-1] + string(d.token[len(d.token)-1]^1)
	refused := []struct {
		name, header, value, want string
	}{
		{"no token", "", "", "no bearer token"},
		{"empty header", "Authorization", "", "no bearer token"},
		{"wrong token", "Authorization", "Bearer " + strings.Repeat("x", 43), "not valid"},
		{"one byte off", "Authorization", "Bearer " + oneOff, "not valid"},
		{"basic scheme", "Authorization", "Basic " + d.token, "Bearer scheme"},
		{"bare token", "Authorization", d.token, "Bearer scheme"},
	}
	routes := []struct{ method, path, body string }{
		{"GET", "/v1/vms", ""}, {"POST", "/v1/vms", `{}`}, {"GET", "/openapi.json", ""},
		{"POST", "/machines", `{"id":"x"}`}, {"GET", "/machines/x", ""}, {"DELETE", "/machines/x", ""},
		{"POST", "/healthz", `{}`}, {"GET", "/nowhere", ""},
	}
	for _, c := range refused {
		for _, r := range routes {
			code, hdr, body := d.send(t, r.method, r.path, r.body, c.header, c.value, "Content-Type", "application/json")
			if code != http.StatusUnauthorized || !strings.Contains(body, c.want) || !strings.HasPrefix(hdr.Get("WWW-Authenticate"), "Bearer") {
				t.Errorf("%s: %s %s → %d %s (WWW-Authenticate %q); want 401 saying %q with a Bearer challenge", c.name, r.method, r.path, code, body, hdr.Get("WWW-Authenticate"), c.want)
			}
			if ct := hdr.Get("Content-Type"); ct != "application/json" {
				t.Errorf("%s: 401 with Content-Type %q", c.name, ct)
			}
		}
	}
	if ids, _ := d.store.IDs(); len(ids) != 0 {
		t.Fatalf("refused requests created %v", ids)
	}
	for _, path := range []string{"/healthz", "/health"} {
		if code, _, body := d.send(t, "GET", path, ""); code != http.StatusOK {
			t.Errorf("GET %s without a token: %d %s; want 200", path, code, body)
		}
	}
	if code, _, body := d.send(t, "POST", "/v1/vms", `{"tags":{"name":"ok"}}`, "Authorization", good, "Content-Type", "application/json"); code != http.StatusCreated {
		t.Fatalf("create with the token: %d %s", code, body)
	}
	if code, _, body := d.send(t, "GET", "/machines/ok", "", "Authorization", good); code != http.StatusOK {
		t.Errorf("GET /machines/ok with the token: %d %s", code, body)
	}
	if code, _, _ := d.send(t, "GET", "/openapi.json", "", "Authorization", "bearer "+d.token); code != http.StatusOK {
		t.Errorf("lowercase scheme: %d, want 200", code)
	}
}

// A browser page's request carries an Origin: refused with 403 unless the
// origin is listed, whatever else it holds (a token, a JSON body). "null"
// (sandboxed frames, file:// pages) is never allowed. The "simple" request
// a page can send without a preflight — a text/plain POST — creates nothing.
func TestCrossOriginRequestsAreRefused(t *testing.T) {
	const console = "https://console.example.com"
	d := newDoor(t, true, console)
	good := "Bearer " + d.token
	for _, c := range []struct {
		name   string
		header []string
	}{
		{"simple request", []string{"Origin", "http://evil.example", "Content-Type", "text/plain"}},
		{"with the token and JSON", []string{"Origin", "http://evil.example", "Authorization", good, "Content-Type", "application/json"}},
		{"null origin", []string{"Origin", "null", "Authorization", good, "Content-Type", "application/json"}},
		{"empty origin", []string{"Origin", "", "Authorization", good, "Content-Type", "application/json"}},
		{"origin differing in case", []string{"Origin", "https://CONSOLE.example.com", "Authorization", good, "Content-Type", "application/json"}},
		{"a listed origin twice over", []string{"Origin", console, "Origin", "http://evil.example", "Authorization", good, "Content-Type", "application/json"}},
	} {
		code, _, body := d.send(t, "POST", "/v1/vms", `{"tags":{"name":"csrf"}}`, c.header...)
		if code != http.StatusForbidden || !strings.Contains(body, "MGR_API_ALLOWED_ORIGINS") {
			t.Errorf("%s: %d %s; want 403 naming MGR_API_ALLOWED_ORIGINS", c.name, code, body)
		}
	}
	if code, _, _ := d.send(t, "GET", "/healthz", "", "Origin", "http://evil.example"); code != http.StatusForbidden {
		t.Errorf("health from a foreign page: %d, want 403", code)
	}
	if ids, _ := d.store.IDs(); len(ids) != 0 {
		t.Fatalf("cross-origin requests created %v", ids)
	}

	// A listed origin passes, still with a token, and may preflight.
	code, hdr, body := d.send(t, "POST", "/v1/vms", `{}`, "Origin", console, "Authorization", good, "Content-Type", "application/json")
	if code != http.StatusCreated || hdr.Get("Access-Control-Allow-Origin") != console {
		t.Errorf("listed origin: %d %s (ACAO %q); want 201 allowed", code, body, hdr.Get("Access-Control-Allow-Origin"))
	}
	if code, _, _ := d.send(t, "POST", "/v1/vms", `{}`, "Origin", console, "Content-Type", "application/json"); code != http.StatusUnauthorized {
		t.Errorf("listed origin without a token: %d, want 401", code)
	}
	code, hdr, _ = d.send(t, "OPTIONS", "/v1/vms", "", "Origin", console, "Access-Control-Request-Method", "POST", "Access-Control-Request-Headers", "authorization,content-type")
	if code != http.StatusNoContent || !strings.Contains(hdr.Get("Access-Control-Allow-Headers"), "Authorization") {
		t.Errorf("preflight from a listed origin: %d %v; want 204 allowing Authorization", code, hdr)
	}
	if code, _, _ := d.send(t, "OPTIONS", "/v1/vms", "", "Origin", "http://evil.example", "Access-Control-Request-Method", "POST"); code != http.StatusForbidden {
		t.Errorf("preflight from a foreign page: %d, want 403", code)
	}
}

// A request with a body must declare it JSON (parameters allowed); a
// request without one needs no content type.
func TestBodiesMustBeJSON(t *testing.T) {
	d := newDoor(t, true)
	good := "Bearer " + d.token
	for _, ct := range []string{"", "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "application/jsonx", "application/json-seq", "not a media type;;"} {
		hdr := []string{"Authorization", good}
		if ct != "" {
			hdr = append(hdr, "Content-Type", ct)
		}
		code, _, body := d.send(t, "POST", "/v1/vms", `{"tags":{"name":"plain"}}`, hdr...)
		if code != http.StatusUnsupportedMediaType || !strings.Contains(body, "application/json") {
			t.Errorf("Content-Type %q: %d %s; want 415 naming application/json", ct, code, body)
		}
	}
	// A chunked body (no length) is a body too.
	req, _ := http.NewRequest("POST", d.base+"/v1/vms", io.MultiReader(strings.NewReader(`{}`)))
	req.Header.Set("Authorization", good)
	req.Header.Set("Content-Type", "text/plain")
	resp, err := noProxy.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnsupportedMediaType || len(resp.TransferEncoding) > 0 && resp.TransferEncoding[0] != "chunked" {
		t.Errorf("chunked text/plain body: %d; want 415", resp.StatusCode)
	}
	if ids, _ := d.store.IDs(); len(ids) != 0 {
		t.Fatalf("refused bodies created %v", ids)
	}
	var vm wire.VM
	code, _, body := d.send(t, "POST", "/v1/vms", `{}`, "Authorization", good, "Content-Type", "application/json; charset=utf-8")
	if code != http.StatusCreated {
		t.Fatalf("JSON with a charset: %d %s; want 201", code, body)
	}
	if err := json.Unmarshal([]byte(body), &vm); err != nil {
		t.Fatal(err)
	}
	// start has no body and needs no content type: it reaches the manager
	// (503: no service manager here).
	if code, _, body := d.send(t, "POST", "/v1/vms/"+vm.ID+"/start", "", "Authorization", good); code != http.StatusServiceUnavailable {
		t.Errorf("start without a body or a content type: %d %s; want the manager's 503", code, body)
	}
	if code, _, body := d.send(t, "DELETE", "/machines/nobody", "", "Authorization", good); code != http.StatusNotFound {
		t.Errorf("DELETE without a content type: %d %s; want 404", code, body)
	}
}

// Without tokens (the unix socket, or MGR_API_AUTH=none) no token is needed,
// but origins and content types are checked all the same.
func TestWithoutTokensOriginsAndBodiesAreStillChecked(t *testing.T) {
	d := newDoor(t, false)
	if code, _, body := d.send(t, "POST", "/v1/vms", `{}`, "Content-Type", "application/json"); code != http.StatusCreated {
		t.Errorf("create without a token: %d %s; want 201", code, body)
	}
	if code, _, _ := d.send(t, "POST", "/v1/vms", `{}`, "Content-Type", "text/plain"); code != http.StatusUnsupportedMediaType {
		t.Errorf("text/plain: %d, want 415", code)
	}
	if code, _, _ := d.send(t, "POST", "/v1/vms", `{}`, "Content-Type", "application/json", "Origin", "null"); code != http.StatusForbidden {
		t.Errorf("Origin null: %d, want 403", code)
	}
}

// A header block over the limit (here 1 MiB) is answered 431 and logged; it
// closes that connection only, and a client using the API meanwhile is
// served.
func TestAHugeHeaderIs431AndDisturbsNoOneElse(t *testing.T) {
	d := newDoor(t, true)
	good := "Bearer " + d.token
	var wg sync.WaitGroup
	stop := make(chan struct{})
	errs := make(chan string, 100)
	wg.Add(1)
	go func() { // a legitimate client, on its own connection
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if code, _, body := d.send(t, "GET", "/v1/vms", "", "Authorization", good); code != http.StatusOK {
				errs <- body
				return
			}
		}
	}()
	for range 3 {
		code, _, body := d.send(t, "GET", "/v1/vms", "", "Authorization", good, "X-Padding", strings.Repeat("a", 1<<20))
		if code != http.StatusRequestHeaderFieldsTooLarge {
			t.Errorf("1 MiB header: %d %.100s; want 431", code, body)
		}
	}
	close(stop)
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Errorf("the other client was refused: %s", e)
	}
	if n := strings.Count(d.log.String(), "status=431"); n != 3 {
		t.Errorf("%d log lines for 431, want 3:\n%s", n, d.log)
	}
}

// Each refusal is one log line with its status and reason; no log line
// holds a token or anything of the Authorization header, and nothing logs
// an accepted request's header either.
func TestRefusalsAreLoggedWithoutTheToken(t *testing.T) {
	d := newDoor(t, true)
	wrong := strings.Repeat("w", 43)
	d.send(t, "GET", "/v1/vms", "")
	d.send(t, "GET", "/v1/vms", "", "Authorization", "Bearer "+wrong)
	d.send(t, "GET", "/v1/vms", "", "Authorization", "Basic "+wrong)
	d.send(t, "GET", "/v1/vms", "", "Authorization", "Bearer "+d.token)
	d.send(t, "POST", "/v1/vms", `{}`, "Authorization", "Bearer "+d.token, "Content-Type", "text/plain")
	d.send(t, "POST", "/v1/vms", `{}`, "Authorization", "Bearer "+d.token, "Origin", "null")
	logs := d.log.String()
	for _, want := range []string{"status=401 reason=\"no bearer token\"", "status=401 reason=\"invalid bearer token\"", "status=401 reason=\"not a bearer token\"", "status=415", "status=403"} {
		if !strings.Contains(logs, want) {
			t.Errorf("no log line with %s:\n%s", want, logs)
		}
	}
	if strings.Contains(logs, d.token) || strings.Contains(logs, wrong) || strings.Contains(strings.ToLower(logs), "authorization") {
		t.Errorf("the log holds a token or the Authorization header:\n%s", logs)
	}
}

// The OpenAPI document tells what the front door does: bearer tokens
// required everywhere but health, and the front door's answers listed on
// every operation.
func TestTheDocumentDescribesTheFrontDoor(t *testing.T) {
	var doc struct {
		Security   []map[string][]string `json:"security"`
		Components struct {
			SecuritySchemes map[string]struct {
				Type, Scheme string
			} `json:"securitySchemes"`
		} `json:"components"`
		Paths map[string]map[string]json.RawMessage `json:"paths"`
	}
	if err := json.Unmarshal(api.OpenAPI(), &doc); err != nil {
		t.Fatal(err)
	}
	if s := doc.Components.SecuritySchemes["bearerAuth"]; s.Type != "http" || s.Scheme != "bearer" || len(doc.Security) != 1 || doc.Security[0]["bearerAuth"] == nil {
		t.Fatalf("security schemes %+v, global requirement %v; want bearerAuth (http bearer) required", doc.Components.SecuritySchemes, doc.Security)
	}
	for path, ops := range doc.Paths {
		for method, raw := range ops {
			if method == "parameters" {
				continue
			}
			var op struct {
				Security    *[]any                     `json:"security"`
				RequestBody json.RawMessage            `json:"requestBody"`
				Responses   map[string]json.RawMessage `json:"responses"`
			}
			if err := json.Unmarshal(raw, &op); err != nil {
				t.Fatal(err)
			}
			public := method == "get" && (path == "/healthz" || path == "/health")
			if public != (op.Security != nil && len(*op.Security) == 0) {
				t.Errorf("%s %s: security %v; want an empty requirement exactly on health", method, path, op.Security)
			}
			want := []string{"403", "431"}
			if !public {
				want = append(want, "401")
			}
			if op.RequestBody != nil {
				want = append(want, "415")
			}
			for _, code := range want {
				if op.Responses[code] == nil {
					t.Errorf("%s %s does not document %s", method, path, code)
				}
			}
		}
	}
}
