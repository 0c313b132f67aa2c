package artifact

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
)

// Base names one version of base assets in the registry.
type Base struct {
	Platform string // e.g. linux-amd64
	Flavor   string // e.g. buildroot
	Version  string // e.g. v0.0.1; "latest" only for pulls
}

func (b Base) validate(pull bool) error {
	if err := checkSegment("platform", b.Platform); err != nil {
		return err
	}
	if err := checkSegment("flavor", b.Flavor); err != nil {
		return err
	}
	if b.Version == "latest" && !pull {
		return fmt.Errorf("version %q: reserved for the alias; push a concrete version", b.Version)
	}
	return checkSegment("version", b.Version)
}

func (b Base) String() string { return b.Platform + "/" + b.Flavor + "/" + b.Version }

// latestPointer is the object the `latest` alias is made of: one small
// object replaced in a single PUT after a complete upload.
type latestPointer struct {
	Version   string    `json:"version"`
	UpdatedAt time.Time `json:"updatedAt"`
}

// PushBase uploads the base assets of dir as version b and then moves
// `latest` to it. An existing version is never overwritten.
func (c *Client) PushBase(ctx context.Context, dir string, b Base) (Manifest, error) {
	fail := func(err error) (Manifest, error) { return Manifest{}, fmt.Errorf("push base %s: %w", b, err) }
	if err := b.validate(false); err != nil {
		return fail(err)
	}
	files, err := locate(dir, BasePairs(b.Flavor))
	if err != nil {
		return fail(fmt.Errorf("base dir %s: %w", dir, err))
	}
	if err := c.check(ctx); err != nil {
		return fail(err)
	}
	keyDir := c.key(b.Platform, b.Flavor, b.Version)
	if ok, err := c.exists(ctx, keyDir+"/"+ManifestName); err != nil {
		return fail(err)
	} else if ok {
		return fail(fmt.Errorf("version %s already exists; versions are immutable, push a new one", b.Version))
	}
	m, err := c.upload(ctx, dir, keyDir, Manifest{Kind: "base", Platform: b.Platform, Flavor: b.Flavor, Version: b.Version, CreatedAt: time.Now().UTC(), Files: files})
	if err != nil {
		return fail(err)
	}
	if err := c.putSmall(ctx, c.key(b.Platform, b.Flavor, "latest"), latestPointer{Version: b.Version, UpdatedAt: time.Now().UTC()}); err != nil {
		return fail(fmt.Errorf("move latest: %w", err))
	}
	return m, nil
}

// ResolveBase turns "latest" into the version it points at.
func (c *Client) ResolveBase(ctx context.Context, b Base) (Base, error) {
	if b.Version != "latest" {
		return b, nil
	}
	key := c.key(b.Platform, b.Flavor, "latest")
	out, err := c.s3.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(c.bucket), Key: aws.String(key)})
	if err != nil {
		err = c.explain(err, key)
		if errors.Is(err, ErrNotFound) {
			return b, fmt.Errorf("no version of %s/%s has been pushed (no latest alias)", b.Platform, b.Flavor)
		}
		return b, err
	}
	defer out.Body.Close()
	raw, err := readAll(out.Body)
	if err != nil {
		return b, fmt.Errorf("%s: %w", key, err)
	}
	var p latestPointer
	if err := json.Unmarshal(raw, &p); err != nil {
		return b, fmt.Errorf("%s: not valid JSON: %w", key, err)
	}
	if err := checkSegment("version", p.Version); err != nil || p.Version == "latest" {
		return b, fmt.Errorf("%s: bad version %q", key, p.Version)
	}
	b.Version = p.Version
	return b, nil
}

// PullResult says what a pull did.
type PullResult struct {
	Manifest Manifest
	Fetched  []string // local names downloaded; the rest already matched
}

// PullBase installs version b (or latest) into dir.
func (c *Client) PullBase(ctx context.Context, dir string, b Base) (PullResult, error) {
	fail := func(err error) (PullResult, error) { return PullResult{}, fmt.Errorf("pull base %s: %w", b, err) }
	if err := b.validate(true); err != nil {
		return fail(err)
	}
	if err := c.check(ctx); err != nil {
		return fail(err)
	}
	rb, err := c.ResolveBase(ctx, b)
	if err != nil {
		return fail(err)
	}
	b = rb
	keyDir := c.key(b.Platform, b.Flavor, b.Version)
	m, err := c.getManifest(ctx, keyDir+"/"+ManifestName)
	if err != nil {
		if errors.Is(err, ErrNotFound) {
			return fail(fmt.Errorf("version %s: %w", b.Version, ErrNotFound))
		}
		return fail(err)
	}
	if m.Kind != "base" {
		return fail(fmt.Errorf("manifest: kind %q, want \"base\"", m.Kind))
	}
	fetched, err := c.install(ctx, keyDir, dir, m)
	if err != nil {
		return fail(err)
	}
	if err := writeLocalManifest(dir, m); err != nil {
		return fail(err)
	}
	return PullResult{Manifest: m, Fetched: fetched}, nil
}

// Versions lists the completely pushed versions of platform/flavor.
func (c *Client) Versions(ctx context.Context, platform, flavor string) ([]string, error) {
	prefix := c.key(platform, flavor) + "/"
	var out []string
	p := s3.NewListObjectsV2Paginator(c.s3, &s3.ListObjectsV2Input{Bucket: aws.String(c.bucket), Prefix: aws.String(prefix), Delimiter: aws.String("/")})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, fmt.Errorf("list versions %s/%s: %w", platform, flavor, c.explain(err, prefix))
		}
		for _, cp := range page.CommonPrefixes {
			// A version exists once its manifest does: a push that died
			// half-way leaves files but no manifest.
			ok, err := c.exists(ctx, aws.ToString(cp.Prefix)+ManifestName)
			if err != nil {
				return nil, fmt.Errorf("list versions %s/%s: %w", platform, flavor, err)
			}
			if ok {
				out = append(out, strings.TrimSuffix(strings.TrimPrefix(aws.ToString(cp.Prefix), prefix), "/"))
			}
		}
	}
	return out, nil
}

func jsonIndent(v any) ([]byte, error) {
	b, err := json.MarshalIndent(v, "", "  ")
	return append(b, '\n'), err
}
