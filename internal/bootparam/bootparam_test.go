package bootparam

import (
	"encoding/base64"
	"slices"
	"strings"
	"testing"
)

// What the daemon encodes, the guest decodes as it was: values with spaces,
// quotes, equals signs and non-ASCII, and an argv whose arguments would
// split an unquoted kernel parameter. Nothing encoded holds a character
// that ends or splits a kernel parameter.
func TestWhatIsEncodedIsDecodedAsItWas(t *testing.T) {
	env := map[string]string{"MODE": "prod", "GREETING": `say "hi" there`, "DSN": "a=b c=d", "NAME": "Zoë", "EMPTY": ""}
	enc := EncodeEnv(env)
	if strings.ContainsAny(enc, " \"'=\n") {
		t.Fatalf("mergen.env=%s holds a character that ends or splits a kernel parameter", enc)
	}
	got, err := DecodeEnv(enc)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"DSN=a=b c=d", "EMPTY=", `GREETING=say "hi" there`, "MODE=prod", "NAME=Zoë"}
	if !slices.Equal(got, want) {
		t.Fatalf("decoded %q; want %q", got, want)
	}

	argv := []string{"/bin/app", "--flag=two words", `it's "quoted"`}
	encArgv := EncodeArgv(argv)
	if strings.ContainsAny(encArgv, " \"'=\n") {
		t.Fatalf("mergen.argv=%s holds a character that ends or splits a kernel parameter", encArgv)
	}
	if got, err := DecodeArgv(encArgv); err != nil || !slices.Equal(got, argv) {
		t.Fatalf("decoded %q, %v; want %q", got, err, argv)
	}

	if EncodeEnv(nil) != "" || EncodeArgv(nil) != "" {
		t.Fatal("nothing to carry must encode to nothing")
	}
}

// A value written by hand with base64's padding is read too.
func TestPaddedValuesAreRead(t *testing.T) {
	padded := base64.URLEncoding.EncodeToString([]byte(`{"AB":"1"}`))
	if !strings.HasSuffix(padded, "=") {
		t.Fatalf("test value %q is not padded", padded)
	}
	if got, err := DecodeEnv(padded); err != nil || !slices.Equal(got, []string{"AB=1"}) {
		t.Fatalf("decoded %q, %v; want [AB=1]", got, err)
	}
}

// What the guest could not run safely is refused, saying why.
func TestDecodingRefusesWhatTheGuestCannotCarry(t *testing.T) {
	b64 := func(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }
	for _, c := range []struct {
		name, value, want string
		decode            func(string) ([]string, error)
	}{
		{"env not base64", "!!", "not base64url", DecodeEnv},
		{"env not an object", b64(`["A"]`), "not a JSON object", DecodeEnv},
		{"env name not a shell name", b64(`{"A-B":"1"}`), `"A-B" is not a shell name`, DecodeEnv},
		{"env value with NUL", b64(`{"A":"x\u0000y"}`), "value of A contains NUL", DecodeEnv},
		{"argv not base64", "!!", "not base64url", DecodeArgv},
		{"argv not an array", b64(`{"A":"1"}`), "not a JSON array", DecodeArgv},
		{"argv empty", b64(`[]`), "program to run is empty", DecodeArgv},
		{"argv empty program", b64(`[""]`), "program to run is empty", DecodeArgv},
		{"argv with NUL", b64(`["/bin/app","a\u0000b"]`), "argument 1 contains NUL", DecodeArgv},
	} {
		if got, err := c.decode(c.value); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %q, %v; want an error saying %q", c.name, got, err, c.want)
		}
	}
}

// An environment that fits the command line goes there; a larger one is
// left to the agent channel, and the command line says so.
func TestAnEnvironmentTooLargeForTheCommandLineIsLeftToTheAgent(t *testing.T) {
	small := map[string]string{"MODE": "prod"}
	if got, want := EnvArg(small), EnvParam+"="+EncodeEnv(small); got != want || EnvFromAgent(small) {
		t.Fatalf("EnvArg = %q, from agent %v; want %q", got, EnvFromAgent(small), want)
	}
	large := map[string]string{"CONFIG": strings.Repeat("x", MaxEnv)}
	if got := EnvArg(large); got != "mergen.env_from=agent" || !EnvFromAgent(large) {
		t.Fatalf("EnvArg = %q, from agent %v; want mergen.env_from=agent", got, EnvFromAgent(large))
	}
	if EnvArg(nil) != "" || EnvFromAgent(nil) {
		t.Fatal("no variables must give no argument")
	}
	if n := EnvSize(large); n != MaxEnv+len(`{"CONFIG":""}`) {
		t.Fatalf("EnvSize = %d; want the JSON's length", n)
	}
}
