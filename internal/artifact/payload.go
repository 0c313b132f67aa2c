package artifact

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"regexp"
	"strings"
	"time"
)

// An image reference becomes part of the object key and of the local path
// under the images root, so it is held to a strict shape (its length
// checked apart from the expression, as for versionRE).
var refRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._/:@+-]*$`)

func checkRef(ref string) error {
	if len(ref) > 255 || !refRE.MatchString(ref) {
		return fmt.Errorf("image %q: not an image reference (at most 255 letters, digits and . _ / : @ + -)", ref)
	}
	for _, el := range strings.Split(ref, "/") {
		if el == "" || el == "." || el == ".." {
			return fmt.Errorf("image %q: empty, '.' or '..' path element", ref)
		}
	}
	return nil
}

func (c *Client) payloadKey(ref string) string { return c.key("payloads", ref) }

// PushPayload uploads the converted image in dir (payload-rootfs.ext4 and
// its metadata) as ref. Pushing the same ref again replaces it; the
// manifest, written last, is what a pull trusts.
func (c *Client) PushPayload(ctx context.Context, dir, ref string) (Manifest, error) {
	fail := func(err error) (Manifest, error) { return Manifest{}, fmt.Errorf("push image %s: %w", ref, err) }
	if err := checkRef(ref); err != nil {
		return fail(err)
	}
	files, err := locate(dir, PayloadPairs())
	if err != nil {
		return fail(fmt.Errorf("image dir %s: %w", dir, err))
	}
	if err := c.check(ctx); err != nil {
		return fail(err)
	}
	m, err := c.upload(ctx, dir, c.payloadKey(ref), Manifest{Kind: "payload", Image: ref, CreatedAt: time.Now().UTC(), Files: files})
	if err != nil {
		return fail(err)
	}
	return m, nil
}

// PullPayload installs image ref into imagesRoot/<ref>.
func (c *Client) PullPayload(ctx context.Context, imagesRoot, ref string) (PullResult, error) {
	fail := func(err error) (PullResult, error) { return PullResult{}, fmt.Errorf("pull image %s: %w", ref, err) }
	if err := checkRef(ref); err != nil {
		return fail(err)
	}
	if err := c.check(ctx); err != nil {
		return fail(err)
	}
	keyDir := c.payloadKey(ref)
	m, err := c.getManifest(ctx, keyDir+"/"+ManifestName)
	if err != nil {
		if errors.Is(err, ErrNotFound) {
			return fail(fmt.Errorf("image %s: %w", ref, ErrNotFound))
		}
		return fail(err)
	}
	if m.Kind != "payload" {
		return fail(fmt.Errorf("manifest: kind %q, want \"payload\"", m.Kind))
	}
	dir := filepath.Join(imagesRoot, filepath.FromSlash(ref))
	fetched, err := c.install(ctx, keyDir, dir, m)
	if err != nil {
		return fail(err)
	}
	if err := writeLocalManifest(dir, m); err != nil {
		return fail(err)
	}
	return PullResult{Manifest: m, Fetched: fetched}, nil
}
