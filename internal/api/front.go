package api

import (
	"errors"
	"log/slog"
	"mime"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/mergenhq/mergen/internal/auth"
)

// MaxHeaderBytes bounds a request's header block. The server answers a
// larger one with 431 before any handler runs, and closes that connection
// only.
const MaxHeaderBytes = 64 << 10

// FrontDoor is what every request must show before the API sees it. It
// wraps the whole API, the earlier generation's /machines surface included.
//
//   - A request carrying an Origin header (a browser's) is refused with 403
//     unless the origin is listed in AllowedOrigins, exactly; "null" never is.
//   - With Tokens set, every request but GET /healthz and GET /health needs
//     Authorization: Bearer <one of the tokens>, else 401 with
//     WWW-Authenticate: Bearer.
//   - A request with a body must say Content-Type: application/json (a
//     file upload, PUT /v1/vms/{id}/files, also application/x-tar or
//     application/octet-stream), else 415: a browser's "simple" requests
//     (text/plain, form posts) never reach a handler.
//
// Each refusal is logged (status, reason, method, path, peer), never with a
// header's value.
type FrontDoor struct {
	// Tokens, when set, are required on every request but health. Nil on the
	// unix socket (its file permissions are the boundary) and with
	// MGR_API_AUTH=none.
	Tokens *auth.Tokens
	// AllowedOrigins are the browser origins allowed to call the API.
	AllowedOrigins []string
	// Listener names the listener in log lines ("tcp", "unix").
	Listener string
	Log      *slog.Logger
}

// Wrap puts the door in front of next.
func (d FrontDoor) Wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if origin, ok := r.Header["Origin"]; ok {
			if len(origin) != 1 || origin[0] == "null" || !slices.Contains(d.AllowedOrigins, origin[0]) {
				d.refuse(w, r, http.StatusForbidden, "cross-origin request", "requests from a browser page are refused unless its origin is listed in MGR_API_ALLOWED_ORIGINS")
				return
			}
			h := w.Header()
			h.Set("Access-Control-Allow-Origin", origin[0])
			h.Add("Vary", "Origin")
			if r.Method == http.MethodOptions && r.Header.Get("Access-Control-Request-Method") != "" {
				h.Set("Access-Control-Allow-Methods", "GET, POST, DELETE")
				h.Set("Access-Control-Allow-Headers", "Authorization, Content-Type")
				h.Set("Access-Control-Max-Age", "600")
				w.WriteHeader(http.StatusNoContent)
				return
			}
		}
		if d.Tokens != nil && !open(r) {
			if err := d.Tokens.Check(r.Header.Get("Authorization")); err != nil {
				if errors.Is(err, auth.ErrUnusable) {
					// The operator's problem, told to the operator.
					d.Log.Error("API token file unusable: every request over TCP is refused until it is fixed", "err", err)
					d.refuse(w, r, http.StatusServiceUnavailable, "token file unusable", "the daemon cannot check tokens: its token file is not usable (see the daemon's log)")
					return
				}
				challenge := `Bearer realm="mergen"`
				if errors.Is(err, auth.ErrInvalid) {
					challenge += `, error="invalid_token"`
				}
				w.Header().Set("WWW-Authenticate", challenge)
				d.refuse(w, r, http.StatusUnauthorized, reason(err), err.Error())
				return
			}
		}
		if hasBody(r) {
			ct := r.Header.Get("Content-Type")
			if mt, _, err := mime.ParseMediaType(ct); err != nil || (mt != "application/json" && !fileUpload(r, mt)) {
				d.refuse(w, r, http.StatusUnsupportedMediaType, "request body is not JSON", "a request body must be sent with Content-Type: application/json")
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

// fileUpload reports a file upload (PUT /v1/vms/{id}/files) in one of its
// two content types. Neither is a browser's "simple" type, and a PUT is
// never simple: a cross-site page cannot send one without a preflight,
// which this API never grants.
func fileUpload(r *http.Request, mt string) bool {
	return r.Method == http.MethodPut && strings.HasSuffix(r.URL.Path, "/files") &&
		(mt == "application/x-tar" || mt == "application/octet-stream")
}

// open are the requests that need no token: health, for load balancers and
// service managers.
func open(r *http.Request) bool {
	return r.Method == http.MethodGet && (r.URL.Path == "/healthz" || r.URL.Path == "/health")
}

// hasBody tells whether a request carries a body: a length, or chunks.
func hasBody(r *http.Request) bool {
	return r.ContentLength > 0 || r.ContentLength < 0 || len(r.TransferEncoding) > 0
}

func reason(err error) string {
	switch {
	case errors.Is(err, auth.ErrNoToken):
		return "no bearer token"
	case errors.Is(err, auth.ErrScheme):
		return "not a bearer token"
	}
	return "invalid bearer token"
}

func (d FrontDoor) refuse(w http.ResponseWriter, r *http.Request, status int, why, msg string) {
	d.Log.Warn("API request refused", "status", status, "reason", why, "method", r.Method, "path", r.URL.Path,
		"peer", r.RemoteAddr, "listener", d.Listener)
	if r.Body != nil && hasBody(r) {
		// Do not read what a refused stranger sends: close after answering.
		w.Header().Set("Connection", "close")
	}
	writeJSON(w, status, errorBody{Error: msg})
}

// NewServer is the HTTP server of one listener: header size and read time
// bounded, its own errors (a client gone mid-request) logged at debug
// level. Serve it on a listener from Listen.
func NewServer(h http.Handler, log *slog.Logger) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    MaxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
}

// Listen wraps a listener so that the server's own 431 answers (headers over
// MaxHeaderBytes) are logged like the front door's refusals.
func Listen(ln net.Listener, log *slog.Logger, listener string) net.Listener {
	return &watchedListener{Listener: ln, log: log, name: listener}
}

type watchedListener struct {
	net.Listener
	log  *slog.Logger
	name string
}

func (l *watchedListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &watchedConn{Conn: c, l: l}, nil
}

type watchedConn struct {
	net.Conn
	l *watchedListener
}

// tooLarge is what net/http writes, in one piece, for a header block over
// the limit.
const tooLarge = "HTTP/1.1 431 Request Header Fields Too Large\r\n"

func (c *watchedConn) Write(p []byte) (int, error) {
	if len(p) >= len(tooLarge) && string(p[:len(tooLarge)]) == tooLarge && len(p) < 256 {
		c.l.log.Warn("API request refused", "status", http.StatusRequestHeaderFieldsTooLarge,
			"reason", "request headers larger than "+strconv.Itoa(MaxHeaderBytes)+" bytes",
			"peer", c.RemoteAddr().String(), "listener", c.l.name)
	}
	return c.Conn.Write(p)
}
