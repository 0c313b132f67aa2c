package profile

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mergenhq/mergen/internal/config"
)

func TestSaveIsPrivateAndRoundTrips(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "config.json")
	c := Config{Profiles: map[string]Profile{"default": {Endpoint: "http://127.0.0.1:9000", Region: "eu-west-1", Bucket: "b", Prefix: "p", PathStyle: true, AccessKeyID: "AKIAEXAMPLEKEY", SecretAccessKey: "verysecretvalue"}}}
	if err := Save(path, c); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v, want 0600", st.Mode().Perm())
	}
	got, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if got.Profiles["default"] != c.Profiles["default"] {
		t.Fatalf("round trip: got %+v", got.Profiles["default"])
	}
}

func TestStringNeverShowsSecrets(t *testing.T) {
	p := Profile{Bucket: "b", Region: "r", AccessKeyID: "AKIAEXAMPLEKEY", SecretAccessKey: "verysecretvalue", SessionToken: "tok"}
	s := p.String()
	for _, secret := range []string{"verysecretvalue", "AKIAEXAMPLEKEY", "tok"} {
		if strings.Contains(s, secret) {
			t.Fatalf("String() = %q reveals %q", s, secret)
		}
	}
}

func TestResolve(t *testing.T) {
	stored := Config{Profiles: map[string]Profile{
		"default": {Region: "eu-west-1", Bucket: "stored", AccessKeyID: "a", SecretAccessKey: "s"},
		"nobkt":   {Region: "eu-west-1"},
	}}
	cases := []struct {
		name    string
		reg     string
		env     map[string]string
		want    Profile
		wantErr string
	}{
		{name: "stored with defaults", reg: "default", want: Profile{Region: "eu-west-1", Bucket: "stored", Prefix: DefaultPrefix, AccessKeyID: "a", SecretAccessKey: "s"}},
		{name: "env overrides", reg: "default", env: map[string]string{"MGR_CONFIG_S3_BUCKET": "envb", "MGR_CONFIG_S3_USE_PATH_STYLE": "true", "MGR_CONFIG_S3_ENDPOINT": "http://127.0.0.1:1"},
			want: Profile{Endpoint: "http://127.0.0.1:1", Region: "eu-west-1", Bucket: "envb", Prefix: DefaultPrefix, PathStyle: true, AccessKeyID: "a", SecretAccessKey: "s"}},
		{name: "env alone", reg: "ci", env: map[string]string{"MGR_CONFIG_S3_BUCKET": "envb"}, want: Profile{Region: DefaultRegion, Bucket: "envb", Prefix: DefaultPrefix}},
		{name: "unknown profile", reg: "nope", wantErr: `registry "nope": unknown profile (known: default, nobkt)`},
		{name: "bad name", reg: "../x", wantErr: "registry \"../x\": must be"},
		{name: "missing bucket", reg: "nobkt", wantErr: "bucket: required"},
		{name: "bad bool", reg: "default", env: map[string]string{"MGR_CONFIG_S3_USE_PATH_STYLE": "maybe"}, wantErr: "MGR_CONFIG_S3_USE_PATH_STYLE=\"maybe\": not a boolean"},
		{name: "half credentials", reg: "default", env: map[string]string{"MGR_CONFIG_S3_BUCKET": "x"}, want: Profile{Region: "eu-west-1", Bucket: "x", Prefix: DefaultPrefix, AccessKeyID: "a", SecretAccessKey: "s"}},
		{name: "endpoint without scheme", reg: "default", env: map[string]string{"MGR_CONFIG_S3_ENDPOINT": "127.0.0.1:9000"}, wantErr: "endpoint \"127.0.0.1:9000\": must start with http://"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Resolve(stored, tc.reg, tc.env)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Fatalf("got %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

// The overrides come from the one reader of the environment.
func TestResolveTakesTheOverridesConfigReads(t *testing.T) {
	src := func(k string) string {
		return map[string]string{"MGR_CONFIG_S3_BUCKET": " envb ", "MGR_CONFIG_S3_ENDPOINT": "http://127.0.0.1:9000"}[k]
	}
	got, err := Resolve(Config{}, "ci", config.Profile(src))
	if err != nil {
		t.Fatal(err)
	}
	if want := (Profile{Endpoint: "http://127.0.0.1:9000", Region: DefaultRegion, Bucket: "envb", Prefix: DefaultPrefix}); got != want {
		t.Fatalf("got %+v, want %+v", got, want)
	}
}

// Profile names: 1 to 64 letters, digits, '.', '_' or '-', not starting
// with a punctuation mark.
func TestProfileNamesAreBoundedInLength(t *testing.T) {
	for name, ok := range map[string]bool{
		"a" + strings.Repeat(".", 63): true, strings.Repeat("a", 65): false,
		"": false, ".a": false, "prod_1-x": true,
	} {
		if err := ValidName(name); (err == nil) != ok {
			t.Errorf("ValidName(%q) = %v, want ok %v", name, err, ok)
		}
	}
}
