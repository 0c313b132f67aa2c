package converter

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// Source prefixes. Anything else is a registry reference.
const (
	prefixOCI    = "oci:"            // oci:DIR — an OCI image layout directory
	prefixDocker = "docker-archive:" // docker-archive:FILE — a `docker save` tarball
)

// HostPlatform is the platform images are selected for by default.
func HostPlatform() string { return "linux/" + runtime.GOARCH }

// ParsePlatform parses os/arch[/variant].
func ParsePlatform(s string) (*v1.Platform, error) {
	p, err := v1.ParsePlatform(s)
	if err != nil || p.OS == "" || p.Architecture == "" {
		return nil, fmt.Errorf("platform %q: want os/arch[/variant], e.g. linux/amd64", s)
	}
	return p, nil
}

// open resolves the source to one image for the platform. It reads only the
// manifest and config; layers are fetched later through the cache.
func open(ctx context.Context, src string, plat *v1.Platform, insecure bool, kc authn.Keychain) (v1.Image, error) {
	switch {
	case strings.HasPrefix(src, prefixOCI):
		return fromLayout(strings.TrimPrefix(src, prefixOCI), plat)
	case strings.HasPrefix(src, prefixDocker):
		return fromArchive(strings.TrimPrefix(src, prefixDocker), plat)
	}
	var opts []name.Option
	if insecure {
		opts = append(opts, name.Insecure)
	}
	ref, err := name.ParseReference(src, opts...)
	if err != nil {
		return nil, fmt.Errorf("image reference %q: %w", src, err)
	}
	img, err := remote.Image(ref, remote.WithContext(ctx), remote.WithAuthFromKeychain(kc), remote.WithPlatform(*plat))
	if err != nil {
		return nil, fmt.Errorf("pull %s: %w", src, err)
	}
	// A single-platform manifest is returned whatever was asked for.
	if err := checkPlatform(img, plat); err != nil {
		return nil, fmt.Errorf("pull %s: %w", src, err)
	}
	return img, nil
}

func fromLayout(dir string, plat *v1.Platform) (v1.Image, error) {
	idx, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		return nil, fmt.Errorf("oci layout %s: %w", dir, err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		return nil, fmt.Errorf("oci layout %s: %w", dir, err)
	}
	var seen []string
	for _, d := range im.Manifests {
		if !d.MediaType.IsImage() {
			continue
		}
		img, err := idx.Image(d.Digest)
		if err != nil {
			return nil, fmt.Errorf("oci layout %s: %w", dir, err)
		}
		if d.Platform != nil && !d.Platform.Satisfies(*plat) {
			seen = append(seen, d.Platform.String())
			continue
		}
		if err := checkPlatform(img, plat); err != nil {
			seen = append(seen, err.Error())
			continue
		}
		return img, nil
	}
	return nil, fmt.Errorf("oci layout %s: no image for platform %s (found: %s)", dir, plat, strings.Join(seen, ", "))
}

func fromArchive(file string, plat *v1.Platform) (v1.Image, error) {
	if _, err := os.Stat(file); err != nil {
		return nil, fmt.Errorf("docker archive: %w", err)
	}
	img, err := tarball.ImageFromPath(file, nil)
	if err != nil {
		return nil, fmt.Errorf("docker archive %s: %w", file, err)
	}
	if err := checkPlatform(img, plat); err != nil {
		return nil, fmt.Errorf("docker archive %s: %w", file, err)
	}
	return img, nil
}

func checkPlatform(img v1.Image, want *v1.Platform) error {
	cf, err := img.ConfigFile()
	if err != nil {
		return fmt.Errorf("image config: %w", err)
	}
	// Configs that do not say (some hand-made images) are taken as asked.
	if cf.OS == "" && cf.Architecture == "" {
		return nil
	}
	got := v1.Platform{OS: cf.OS, Architecture: cf.Architecture, Variant: cf.Variant}
	if !got.Satisfies(*want) {
		return fmt.Errorf("image is for platform %s, not %s (use --platform)", got.String(), want.String())
	}
	return nil
}
