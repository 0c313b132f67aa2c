package imagemeta

import (
	"os"
	"path/filepath"
	"testing"
)

func TestCompleteNeedsMetadataAndPayloadDisk(t *testing.T) {
	cases := []struct {
		name  string
		files map[string]string // name → content; "/" suffix makes a directory
		want  bool
	}{
		{"empty", nil, false},
		{"disk without metadata (interrupted run)", map[string]string{PayloadExt4: "disk", RuntimeFile: "{}"}, false},
		{"metadata without disk", map[string]string{ImageMetaFile: `{"image":"a:1"}`}, false},
		{"torn metadata", map[string]string{ImageMetaFile: `{"image":`, PayloadExt4: "disk"}, false},
		{"disk is a directory", map[string]string{ImageMetaFile: `{"image":"a:1"}`, PayloadExt4 + "/": ""}, false},
		{"finished", map[string]string{ImageMetaFile: `{"image":"a:1","digest":"sha256:ab"}`, PayloadExt4: "disk"}, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			for n, body := range tc.files {
				p := filepath.Join(dir, n)
				if n[len(n)-1] == '/' {
					if err := os.Mkdir(p, 0o755); err != nil {
						t.Fatal(err)
					}
					continue
				}
				if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			m, ok := Complete(dir)
			if ok != tc.want {
				t.Fatalf("Complete = %v, want %v", ok, tc.want)
			}
			if ok && (m.Image != "a:1" || m.Digest != "sha256:ab") {
				t.Fatalf("metadata %+v", m)
			}
		})
	}
	if _, ok := Complete(filepath.Join(t.TempDir(), "missing")); ok {
		t.Fatal("a missing directory is complete")
	}
}
