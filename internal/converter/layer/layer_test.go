package layer

import (
	"archive/tar"
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"sort"
	"strconv"
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

// Whiteouts whose name, once ".wh." is taken off, is empty, "." or "..",
// would name the directory holding them or its parent: each is refused,
// and nothing in the root, the root itself or beside it is removed. aufs
// metadata names (".wh..wh.*" other than the opaque marker) remove nothing.
func TestWhiteoutEdgeCasesRemoveNothingOutsideOrAbove(t *testing.T) {
	lower := []entry{
		{name: "x/", typ: tar.TypeDir}, {name: "x/keep", body: "k"},
		{name: "x/y/", typ: tar.TypeDir}, {name: "x/y/keep", body: "k"},
		{name: "top", body: "t"},
	}
	wantLower := []string{"top f", "x d", "x/keep f", "x/y d", "x/y/keep f"}
	cases := []struct {
		name   string
		entry  string
		errHas string // "" = accepted, nothing removed
	}{
		{"empty name at the root", ".wh.", "names no entry"},
		{"empty name in a directory", "x/.wh.", "names no entry"},
		{"empty name, deeper", "x/y/.wh.", "names no entry"},
		{"dot at the root", ".wh..", "names no entry"},
		{"dot in a directory", "x/.wh..", "names no entry"},
		{"dot-dot at the root", ".wh...", "names no entry"},
		{"dot-dot in a directory", "x/.wh...", "names no entry"},
		{"dot-dot, deeper", "x/y/.wh...", "names no entry"},
		{"leading ./ at the root", "./.wh.", "names no entry"},
		{"leading ./ and dot-dot", "./.wh...", "names no entry"},
		{"aufs metadata at the root", ".wh..wh.plnk", ""},
		{"aufs metadata in a directory", "x/.wh..wh.aufs", ""},
		{"opaque marker lookalike", "x/.wh..wh..opqx", ""},
		{"opaque marker lookalike at the root", ".wh..wh..opq.", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			parent := t.TempDir()
			root := filepath.Join(parent, "root")
			os.MkdirAll(root, 0o755)
			os.WriteFile(filepath.Join(parent, "beside"), []byte("b"), 0o644)
			if _, err := Apply(root, mkLayer(t, lower...)); err != nil {
				t.Fatal(err)
			}
			_, err := Apply(root, mkLayer(t, entry{name: tc.entry}))
			switch {
			case tc.errHas == "" && err != nil:
				t.Fatalf("err = %v, want none", err)
			case tc.errHas != "" && (err == nil || !strings.Contains(err.Error(), tc.errHas)):
				t.Fatalf("err = %v, want one containing %q", err, tc.errHas)
			case err != nil && !strings.Contains(err.Error(), tc.entry):
				t.Errorf("error does not name the entry %q: %v", tc.entry, err)
			}
			if got := tree(t, root); strings.Join(got, "\n") != strings.Join(wantLower, "\n") {
				t.Fatalf("root changed:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(wantLower, "\n"))
			}
			if _, err := os.Stat(filepath.Join(parent, "beside")); err != nil {
				t.Fatalf("a file beside the root is gone: %v", err)
			}
		})
	}
}

// An opaque marker at the root hides lower layers' content but leaves the
// root in place, and a whiteout of a name reached through an in-root
// symlink to "/" removes that name only.
func TestWhiteoutsAtTheRootStayBelowIt(t *testing.T) {
	parent := t.TempDir()
	root := filepath.Join(parent, "root")
	os.MkdirAll(root, 0o755)
	os.WriteFile(filepath.Join(parent, "beside"), []byte("b"), 0o644)
	for _, l := range [][]entry{
		{{name: "a", body: "a"}, {name: "b", body: "b"}, {name: "self", typ: tar.TypeSymlink, link: "/"}},
		{{name: "self/.wh.a"}},
		{{name: "c", body: "c"}, {name: ".wh..wh..opq"}},
	} {
		if _, err := Apply(root, mkLayer(t, l...)); err != nil {
			t.Fatal(err)
		}
	}
	if got := tree(t, root); strings.Join(got, " ") != "c f" {
		t.Fatalf("tree %v, want only c", got)
	}
	if _, err := os.Stat(filepath.Join(parent, "beside")); err != nil {
		t.Fatalf("a file beside the root is gone: %v", err)
	}
}

// The remover itself refuses the root and anything outside, whatever path
// reaches it: the last guard behind name checks.
func TestRemoveRefusesTheRootAndOutside(t *testing.T) {
	parent := t.TempDir()
	root := filepath.Join(parent, "root")
	os.MkdirAll(filepath.Join(root, "in"), 0o755)
	a := applier{root: root}
	for _, p := range []string{root, root + "/", root + "/.", parent, filepath.Join(root, ".."), filepath.Join(parent, "other"), "/"} {
		if err := a.remove(p); err == nil {
			t.Errorf("remove(%s) accepted", p)
		}
	}
	if err := a.remove(filepath.Join(root, "in")); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(root); err != nil {
		t.Fatal(err)
	}
}

// A layer past its size or entry limit stops with an error wrapping
// ErrLimit and naming the limit; within the limits the same layer applies.
func TestLimitsBoundALayer(t *testing.T) {
	big := entry{name: "big", body: strings.Repeat("x", 64<<10)}
	many := []entry{{name: "d/", typ: tar.TypeDir}}
	for i := 0; i < 50; i++ {
		many = append(many, entry{name: "d/f" + strings.Repeat("0", 3-len(itoa(i))) + itoa(i), body: "1"})
	}
	cases := []struct {
		name   string
		layer  []entry
		lim    Limits
		errHas string
	}{
		{"file content past MaxBytes", []entry{big}, Limits{MaxBytes: 32 << 10}, "more than 32768 bytes uncompressed"},
		{"stream past MaxBytes", many, Limits{MaxBytes: 16 << 10}, "more than 16384 bytes uncompressed"},
		{"entries past MaxEntries", many, Limits{MaxEntries: 10}, "more than 10 entries"},
		{"within the limits", append([]entry{big}, many...), Limits{MaxBytes: 200 << 10, MaxEntries: 52}, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			st, err := ApplyWith(root, mkLayer(t, tc.layer...), Options{Limits: tc.lim})
			if tc.errHas == "" {
				if err != nil {
					t.Fatal(err)
				}
				if st.Entries != len(tc.layer) {
					t.Errorf("entries %d, want %d", st.Entries, len(tc.layer))
				}
				return
			}
			if !errors.Is(err, ErrLimit) || !strings.Contains(err.Error(), tc.errHas) {
				t.Fatalf("err = %v, want ErrLimit with %q", err, tc.errHas)
			}
			if tc.lim.MaxBytes > 0 && st.Bytes > tc.lim.MaxBytes {
				t.Errorf("wrote %d bytes past the limit of %d", st.Bytes, tc.lim.MaxBytes)
			}
			if tc.lim.MaxEntries > 0 && st.Entries > tc.lim.MaxEntries {
				t.Errorf("applied %d entries past the limit of %d", st.Entries, tc.lim.MaxEntries)
			}
			if fi, err := os.Stat(filepath.Join(root, "big")); err == nil {
				t.Errorf("the oversized file was written (%d bytes)", fi.Size())
			}
		})
	}
}

func itoa(i int) string { return strconv.Itoa(i) }
