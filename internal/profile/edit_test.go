package profile

import (
	"path/filepath"
	"strings"
	"testing"
)

func TestInitThenLogin(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config.json")
	if _, err := Init(path, "default", Profile{}, nil); err == nil || !strings.Contains(err.Error(), "bucket: required") {
		t.Fatalf("init without bucket: %v", err)
	}
	if _, err := Login(path, "default", Profile{AccessKeyID: "a", SecretAccessKey: "s"}, nil); err == nil || !strings.Contains(err.Error(), "unknown profile") {
		t.Fatalf("login before init: %v", err)
	}
	if _, err := Init(path, "default", Profile{Bucket: "b", Endpoint: "http://127.0.0.1:9000", PathStyle: true}, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := Login(path, "default", Profile{AccessKeyID: "a"}, nil); err == nil || !strings.Contains(err.Error(), "secret access key: required") {
		t.Fatalf("login without secret: %v", err)
	}
	// Answers come from the asker when flags are missing.
	ask := func(field string, secret bool) (string, error) {
		if secret {
			return "s3cr3t", nil
		}
		return "AKIA", nil
	}
	if _, err := Login(path, "default", Profile{}, ask); err != nil {
		t.Fatal(err)
	}
	// Re-running init keeps the credentials.
	if _, err := Init(path, "default", Profile{Prefix: "team"}, nil); err != nil {
		t.Fatal(err)
	}
	c, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	want := Profile{Endpoint: "http://127.0.0.1:9000", Region: DefaultRegion, Bucket: "b", Prefix: "team", PathStyle: true, AccessKeyID: "AKIA", SecretAccessKey: "s3cr3t"}
	if c.Profiles["default"] != want {
		t.Fatalf("stored %+v\nwant %+v", c.Profiles["default"], want)
	}
}
