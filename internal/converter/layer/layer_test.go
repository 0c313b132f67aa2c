package layer

import (
	"archive/tar"
	"bytes"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// entry is one tar entry of a test layer.
type entry struct {
	name, body, link string
	typ              byte
	mode             int64
	uid, gid         int
	xattrs           map[string]string
}

func mkLayer(t *testing.T, es ...entry) *bytes.Buffer {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range es {
		h := &tar.Header{Name: e.name, Typeflag: e.typ, Mode: e.mode, Linkname: e.link, Uid: e.uid, Gid: e.gid, Size: int64(len(e.body))}
		if h.Typeflag == 0 {
			h.Typeflag = tar.TypeReg
		}
		if h.Mode == 0 {
			h.Mode = 0o644
			if h.Typeflag == tar.TypeDir {
				h.Mode = 0o755
			}
		}
		if h.Typeflag != tar.TypeReg {
			h.Size = 0
		}
		for k, v := range e.xattrs {
			if h.PAXRecords == nil {
				h.PAXRecords = map[string]string{}
			}
			h.PAXRecords["SCHILY.xattr."+k] = v
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Size > 0 {
			tw.Write([]byte(e.body))
		}
	}
	tw.Close()
	return &buf
}

// tree lists root as "path type" lines, sorted, for comparison.
func tree(t *testing.T, root string) []string {
	t.Helper()
	var out []string
	filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			t.Fatal(err)
		}
		rel, _ := filepath.Rel(root, p)
		if rel == "." {
			return nil
		}
		kind := "f"
		switch {
		case fi.IsDir():
			kind = "d"
		case fi.Mode()&os.ModeSymlink != 0:
			l, _ := os.Readlink(p)
			kind = "l:" + l
		}
		out = append(out, rel+" "+kind)
		return nil
	})
	sort.Strings(out)
	return out
}

func TestApplyLayersGiveTheOCIUnion(t *testing.T) {
	cases := []struct {
		name   string
		layers [][]entry
		want   []string
	}{
		{
			name: "upper file replaces lower, directories merge",
			layers: [][]entry{
				{{name: "etc/", typ: tar.TypeDir}, {name: "etc/a", body: "1"}, {name: "etc/b", body: "1"}},
				{{name: "etc/", typ: tar.TypeDir}, {name: "etc/a", body: "2"}, {name: "etc/c", body: "2"}},
			},
			want: []string{"etc d", "etc/a f", "etc/b f", "etc/c f"},
		},
		{
			name: "whiteout removes a file and a whole directory",
			layers: [][]entry{
				{{name: "a", body: "x"}, {name: "d/", typ: tar.TypeDir}, {name: "d/x", body: "x"}, {name: "keep", body: "k"}},
				{{name: ".wh.a"}, {name: ".wh.d"}},
			},
			want: []string{"keep f"},
		},
		{
			name: "opaque directory hides lower content but keeps the same layer's",
			layers: [][]entry{
				{{name: "d/", typ: tar.TypeDir}, {name: "d/old", body: "o"}, {name: "d/sub/", typ: tar.TypeDir}},
				{{name: "d/", typ: tar.TypeDir}, {name: "d/new", body: "n"}, {name: "d/.wh..wh..opq"}},
			},
			want: []string{"d d", "d/new f"},
		},
		{
			name: "a file replaces a lower directory and a directory a lower file",
			layers: [][]entry{
				{{name: "x/", typ: tar.TypeDir}, {name: "x/in", body: "i"}, {name: "y", body: "y"}},
				{{name: "x", body: "now a file"}, {name: "y/", typ: tar.TypeDir}},
			},
			want: []string{"x f", "y d"},
		},
		{
			name: "writes through an in-root absolute symlink land inside the root",
			layers: [][]entry{
				{{name: "usr/lib/", typ: tar.TypeDir}, {name: "lib", typ: tar.TypeSymlink, link: "/usr/lib"}},
				{{name: "lib/libx.so", body: "x"}},
			},
			want: []string{"lib l:/usr/lib", "usr d", "usr/lib d", "usr/lib/libx.so f"},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			for _, l := range tc.layers {
				if _, err := Apply(root, mkLayer(t, l...)); err != nil {
					t.Fatal(err)
				}
			}
			got := tree(t, root)
			if strings.Join(got, "\n") != strings.Join(tc.want, "\n") {
				t.Fatalf("tree:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tc.want, "\n"))
			}
		})
	}
}

func TestApplyRefusesEscapes(t *testing.T) {
	cases := []struct {
		name   string
		layers [][]entry
		errHas string
	}{
		{"dot-dot name", [][]entry{{{name: "../evil", body: "x"}}}, "'..'"},
		{"dot-dot inside name", [][]entry{{{name: "a/../../evil", body: "x"}}}, "'..'"},
		{"absolute name", [][]entry{{{name: "/etc/evil", body: "x"}}}, "absolute"},
		{"through a relative symlink out of the root", [][]entry{
			{{name: "esc", typ: tar.TypeSymlink, link: "../../../../tmp"}},
			{{name: "esc/evil", body: "x"}},
		}, "leads out of the root"},
		{"through a symlink in the same layer", [][]entry{
			{{name: "d/", typ: tar.TypeDir}, {name: "d/up", typ: tar.TypeSymlink, link: "../.."}, {name: "d/up/evil", body: "x"}},
		}, "leads out of the root"},
		{"whiteout through a symlink out of the root", [][]entry{
			{{name: "esc", typ: tar.TypeSymlink, link: "../outside"}},
			{{name: "esc/.wh.victim"}},
		}, "leads out of the root"},
		{"hard link to a path outside", [][]entry{{{name: "h", typ: tar.TypeLink, link: "../outside/victim"}}}, "refused"},
		{"hard link through an escaping symlink", [][]entry{
			{{name: "esc", typ: tar.TypeSymlink, link: "../outside"}, {name: "h", typ: tar.TypeLink, link: "esc/victim"}},
		}, "leads out of the root"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			parent := t.TempDir()
			root := filepath.Join(parent, "root")
			outside := filepath.Join(parent, "outside")
			os.MkdirAll(root, 0o755)
			os.MkdirAll(outside, 0o755)
			os.WriteFile(filepath.Join(outside, "victim"), []byte("v"), 0o644)
			var err error
			for _, l := range tc.layers {
				if _, err = Apply(root, mkLayer(t, l...)); err != nil {
					break
				}
			}
			if err == nil || !strings.Contains(err.Error(), tc.errHas) {
				t.Fatalf("err = %v, want one containing %q", err, tc.errHas)
			}
			ents, _ := os.ReadDir(outside)
			if len(ents) != 1 || ents[0].Name() != "victim" {
				t.Fatalf("outside of the root changed: %v", ents)
			}
			if _, err := os.Stat(filepath.Join(parent, "evil")); err == nil {
				t.Fatal("a file was created next to the root")
			}
		})
	}
}

func TestApplyKeepsOwnersModesLinksDevicesXattrs(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("owners and device nodes need root")
	}
	root := t.TempDir()
	_, err := Apply(root, mkLayer(t,
		entry{name: "bin/", typ: tar.TypeDir},
		entry{name: "bin/su", body: "su", mode: 0o4755, uid: 0, gid: 0},
		entry{name: "bin/sg", body: "sg", mode: 0o2711, uid: 1000, gid: 50},
		entry{name: "bin/alias", typ: tar.TypeLink, link: "bin/su"},
		entry{name: "home/u/", typ: tar.TypeDir, uid: 1000, gid: 1000, mode: 0o700},
		entry{name: "dev/", typ: tar.TypeDir},
		entry{name: "dev/null", typ: tar.TypeChar, mode: 0o666},
		entry{name: "cap", body: "c", xattrs: map[string]string{"user.note": "hello", "trusted.t": "tv"}},
	))
	if err != nil {
		t.Fatal(err)
	}
	st := func(p string) unix.Stat_t {
		var s unix.Stat_t
		if err := unix.Lstat(filepath.Join(root, p), &s); err != nil {
			t.Fatal(err)
		}
		return s
	}
	checks := []struct {
		path     string
		mode     uint32
		uid, gid uint32
	}{
		{"bin/su", unix.S_IFREG | 0o4755, 0, 0},
		{"bin/sg", unix.S_IFREG | 0o2711, 1000, 50},
		{"home/u", unix.S_IFDIR | 0o700, 1000, 1000},
		{"dev/null", unix.S_IFCHR | 0o666, 0, 0},
	}
	for _, c := range checks {
		s := st(c.path)
		if s.Mode != c.mode || s.Uid != c.uid || s.Gid != c.gid {
			t.Errorf("%s: mode %o uid %d gid %d, want %o %d %d", c.path, s.Mode, s.Uid, s.Gid, c.mode, c.uid, c.gid)
		}
	}
	if st("bin/su").Ino != st("bin/alias").Ino {
		t.Error("bin/alias is not a hard link of bin/su")
	}
	for k, want := range map[string]string{"user.note": "hello", "trusted.t": "tv"} {
		buf := make([]byte, 64)
		n, err := unix.Lgetxattr(filepath.Join(root, "cap"), k, buf)
		if err != nil || string(buf[:n]) != want {
			t.Errorf("xattr %s = %q (%v), want %q", k, buf[:max(n, 0)], err, want)
		}
	}
}
