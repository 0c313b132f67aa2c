package guest

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestLookupUser(t *testing.T) {
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	os.WriteFile(filepath.Join(root, "etc/passwd"), []byte(
		"root:x:0:0:root:/root:/bin/sh\n# comment\nnginx:x:101:101:nginx:/var/cache/nginx:/sbin/nologin\nbroken:x:abc:1::/:\napp:x:1000:1000::/home/app:/bin/sh\n"), 0o644)
	os.WriteFile(filepath.Join(root, "etc/group"), []byte(
		"root:x:0:\nnginx:x:101:\napp:x:1000:\nwww:x:33:nginx,app\naudio:x:29:app\n"), 0o644)
	cases := []struct {
		spec    string
		want    Cred
		wantErr string
	}{
		{"", Cred{UID: 0, GID: 0, Home: "/root"}, ""},
		{"nginx", Cred{UID: 101, GID: 101, Groups: []uint32{33}, Home: "/var/cache/nginx"}, ""},
		{"app", Cred{UID: 1000, GID: 1000, Groups: []uint32{33, 29}, Home: "/home/app"}, ""},
		{"1000", Cred{UID: 1000, GID: 1000, Groups: []uint32{33, 29}, Home: "/home/app"}, ""},
		{"4242", Cred{UID: 4242, GID: 0, Home: "/"}, ""},
		{"4242:4343", Cred{UID: 4242, GID: 4343, Home: "/"}, ""},
		{"nginx:www", Cred{UID: 101, GID: 33, Home: "/var/cache/nginx"}, ""},
		{"app:29", Cred{UID: 1000, GID: 29, Home: "/home/app"}, ""},
		{"ghost", Cred{}, `user "ghost" does not exist in the image's /etc/passwd`},
		{"app:ghosts", Cred{}, `group "ghosts" does not exist in the image's /etc/group`},
		{"broken", Cred{}, `user "broken": malformed /etc/passwd entry`},
		{":1", Cred{}, "empty user name"},
	}
	for _, c := range cases {
		t.Run(c.spec, func(t *testing.T) {
			got, err := LookupUser(root, c.spec)
			if c.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), c.wantErr) {
					t.Fatalf("error = %v, want one containing %q", err, c.wantErr)
				}
				return
			}
			if err != nil || !reflect.DeepEqual(got, c.want) {
				t.Fatalf("got %+v, %v; want %+v", got, err, c.want)
			}
		})
	}
}

func TestLookupUserNamedUserNeedsPasswd(t *testing.T) {
	root := t.TempDir() // an image without /etc/passwd
	if _, err := LookupUser(root, "app"); err == nil || !strings.Contains(err.Error(), "no readable /etc/passwd") {
		t.Fatalf("error = %v", err)
	}
	if c, err := LookupUser(root, "1234:5678"); err != nil || c.UID != 1234 || c.GID != 5678 {
		t.Fatalf("numeric ids without passwd: %+v, %v", c, err)
	}
}
