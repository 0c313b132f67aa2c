package api

import (
	"encoding/json"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
)

// Small answers are indented for people; large ones go compact. Both are
// the same JSON with the right length.
func TestWriteJSONIndentsOnlySmallAnswers(t *testing.T) {
	for _, n := range []int{1, 2 * indentMax} {
		v := map[string]string{"a": strings.Repeat("x", n)}
		rec := httptest.NewRecorder()
		writeJSON(rec, 200, v)
		body := rec.Body.String()
		if indented := strings.Contains(body, "\n  "); indented != (n < indentMax) {
			t.Errorf("answer of %d bytes indented: %v", n, indented)
		}
		if rec.Header().Get("Content-Length") != strconv.Itoa(len(body)) {
			t.Errorf("Content-Length %s, body %d bytes", rec.Header().Get("Content-Length"), len(body))
		}
		var back map[string]string
		if err := json.Unmarshal([]byte(body), &back); err != nil || back["a"] != v["a"] {
			t.Errorf("answer of %d bytes does not decode back: %v", n, err)
		}
	}
}
