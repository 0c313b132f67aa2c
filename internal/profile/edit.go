package profile

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"golang.org/x/term"
)

// Asker asks the operator for one field; nil means "do not ask" (no
// terminal), and a missing field is then an error naming it.
type Asker func(field string, secret bool) (string, error)

// TerminalAsker prompts on out and reads from in when in is a terminal;
// otherwise it returns nil. Secrets are read without echo.
func TerminalAsker(in io.Reader, out io.Writer) Asker {
	f, ok := in.(*os.File)
	if !ok || !term.IsTerminal(int(f.Fd())) {
		return nil
	}
	rd := bufio.NewReader(in)
	return func(field string, secret bool) (string, error) {
		fmt.Fprintf(out, "%s: ", field)
		if secret {
			b, err := term.ReadPassword(int(f.Fd()))
			fmt.Fprintln(out)
			return strings.TrimSpace(string(b)), err
		}
		s, err := rd.ReadString('\n')
		if err != nil && !(errors.Is(err, io.EOF) && s != "") {
			return "", err
		}
		return strings.TrimSpace(s), nil
	}
}

// Init creates or updates profile name from given (flags), asking for the
// bucket when it is missing, and stores it. Stored credentials are kept
// unless given ones replace them.
func Init(path, name string, given Profile, ask Asker) (Profile, error) {
	fail := func(err error) (Profile, error) {
		return Profile{}, fmt.Errorf("config init --registry %s: %w", name, err)
	}
	if err := ValidName(name); err != nil {
		return fail(err)
	}
	c, err := Load(path)
	if err != nil {
		return fail(err)
	}
	p := c.Profiles[name]
	merge(&p, given)
	if p.Bucket == "" && ask != nil {
		if p.Bucket, err = ask("bucket", false); err != nil {
			return fail(err)
		}
		if p.Endpoint == "" {
			if p.Endpoint, err = ask("endpoint (empty for AWS)", false); err != nil {
				return fail(err)
			}
		}
	}
	if p.Region == "" {
		p.Region = DefaultRegion
	}
	if p.Prefix == "" {
		p.Prefix = DefaultPrefix
	}
	if p.Bucket == "" {
		return fail(errors.New("bucket: required (give --bucket or MGR_CONFIG_S3_BUCKET)"))
	}
	if err := p.Validate(); err != nil {
		return fail(err)
	}
	c.Profiles[name] = p
	if err := Save(path, c); err != nil {
		return fail(err)
	}
	return p, nil
}

// Login stores credentials in an existing profile, asking for what is
// missing when it can.
func Login(path, name string, given Profile, ask Asker) (Profile, error) {
	fail := func(err error) (Profile, error) {
		return Profile{}, fmt.Errorf("config login --registry %s: %w", name, err)
	}
	if err := ValidName(name); err != nil {
		return fail(err)
	}
	c, err := Load(path)
	if err != nil {
		return fail(err)
	}
	p, ok := c.Profiles[name]
	if !ok {
		return fail(fmt.Errorf("unknown profile; run `config init --registry %s` first", name))
	}
	if ask != nil {
		if given.AccessKeyID == "" {
			if given.AccessKeyID, err = ask("access key id", false); err != nil {
				return fail(err)
			}
		}
		if given.SecretAccessKey == "" {
			if given.SecretAccessKey, err = ask("secret access key", true); err != nil {
				return fail(err)
			}
		}
	}
	switch {
	case given.AccessKeyID == "":
		return fail(errors.New("access key id: required (give --access-key-id or MGR_CONFIG_S3_ACCESS_KEY_ID)"))
	case given.SecretAccessKey == "":
		return fail(errors.New("secret access key: required (give --secret-access-key-stdin or MGR_CONFIG_S3_SECRET_ACCESS_KEY)"))
	}
	p.AccessKeyID, p.SecretAccessKey, p.SessionToken = given.AccessKeyID, given.SecretAccessKey, given.SessionToken
	if given.Username != "" {
		p.Username = given.Username
	}
	c.Profiles[name] = p
	if err := Save(path, c); err != nil {
		return fail(err)
	}
	return p, nil
}

func merge(p *Profile, g Profile) {
	for dst, src := range map[*string]string{&p.Endpoint: g.Endpoint, &p.Region: g.Region, &p.Bucket: g.Bucket, &p.Prefix: g.Prefix,
		&p.AccessKeyID: g.AccessKeyID, &p.SecretAccessKey: g.SecretAccessKey, &p.SessionToken: g.SessionToken, &p.Username: g.Username} {
		if src != "" {
			*dst = src
		}
	}
	if g.PathStyle {
		p.PathStyle = true
	}
}

// FromEnv is the profile the MGR_CONFIG_S3_* variables describe (no
// defaults applied), for commands that take their input from there.
func FromEnv(env Env) Profile {
	var p Profile
	_ = ApplyEnv(&p, env)
	if env["MGR_CONFIG_S3_REGION"] == "" {
		p.Region = ""
	}
	if env["MGR_CONFIG_S3_PREFIX"] == "" {
		p.Prefix = ""
	}
	return p
}
