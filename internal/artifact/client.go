package artifact

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"path"
	"regexp"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/smithy-go"

	"github.com/mergenhq/mergen/internal/profile"
	"github.com/mergenhq/mergen/internal/progress"
)

// Options tune transfers; zero values take the defaults.
type Options struct {
	PartSize    int64 // multipart upload part and download range size (default 16 MiB)
	Concurrency int   // parts in flight per file (default 4)
	Attempts    int   // attempts per request, with exponential backoff (default 4)
	MaxBackoff  time.Duration
	Progress    *progress.Tracker // may be nil
}

// Client talks to one S3 profile.
type Client struct {
	s3       *s3.Client
	bucket   string
	prefix   string
	endpoint string
	opt      Options
	// bufferedWrites makes pulls write through the page cache only, as
	// they do on a file system without O_DIRECT (see target); tests set
	// it to cover that path on any file system.
	bufferedWrites bool
}

// New builds a client for p. It does not touch the network.
func New(p profile.Profile, opt Options) (*Client, error) {
	if err := p.Validate(); err != nil {
		return nil, fmt.Errorf("s3 client: %w", err)
	}
	if opt.PartSize <= 0 {
		opt.PartSize = 16 << 20
	}
	if opt.Concurrency <= 0 {
		opt.Concurrency = 4
	}
	if opt.Attempts <= 0 {
		opt.Attempts = 4
	}
	if opt.MaxBackoff <= 0 {
		opt.MaxBackoff = 2 * time.Second
	}
	var creds aws.CredentialsProvider = aws.AnonymousCredentials{}
	if p.AccessKeyID != "" {
		creds = credentials.NewStaticCredentialsProvider(p.AccessKeyID, p.SecretAccessKey, p.SessionToken)
	}
	cfg := aws.Config{
		Region:      p.Region,
		Credentials: creds,
		// The standard retryer backs off exponentially with jitter and
		// retries throttling, 5xx and connection errors, at most Attempts
		// times: an unreachable endpoint fails in bounded time.
		Retryer: func() aws.Retryer {
			return retry.NewStandard(func(o *retry.StandardOptions) {
				o.MaxAttempts = opt.Attempts
				o.MaxBackoff = opt.MaxBackoff
			})
		},
		// Integrity is ours (SHA-256 per file in the manifest); the SDK's
		// default trailing checksums are not understood by every
		// S3-compatible server.
		RequestChecksumCalculation: aws.RequestChecksumCalculationWhenRequired,
		ResponseChecksumValidation: aws.ResponseChecksumValidationWhenRequired,
	}
	cl := s3.NewFromConfig(cfg, func(o *s3.Options) {
		if p.Endpoint != "" {
			o.BaseEndpoint = aws.String(p.Endpoint)
		}
		o.UsePathStyle = p.PathStyle
	})
	ep := p.Endpoint
	if ep == "" {
		ep = "AWS S3 (" + p.Region + ")"
	}
	return &Client{s3: cl, bucket: p.Bucket, prefix: strings.Trim(p.Prefix, "/"), endpoint: ep, opt: opt}, nil
}

// key joins the profile prefix and parts.
func (c *Client) key(parts ...string) string {
	all := append([]string{c.prefix, "mergen"}, parts...)
	return strings.TrimPrefix(path.Join(all...), "/")
}

// check answers whether the bucket exists and the credentials are accepted,
// before anything is moved, so the error says which.
func (c *Client) check(ctx context.Context) error {
	_, err := c.s3.HeadBucket(ctx, &s3.HeadBucketInput{Bucket: aws.String(c.bucket)})
	if err == nil {
		return nil
	}
	var ne *net.OpError
	if !errors.As(err, &ne) {
		// A HEAD answer has no body, hence no error code: some servers say
		// 404 for an unknown key. A one-key listing returns the real code.
		_, lerr := c.s3.ListObjectsV2(ctx, &s3.ListObjectsV2Input{Bucket: aws.String(c.bucket), MaxKeys: aws.Int32(1)})
		if lerr != nil {
			err = lerr
		}
	}
	return c.explain(err, "bucket "+c.bucket)
}

// explain turns SDK errors into what an operator can act on.
func (c *Client) explain(err error, what string) error {
	if err == nil {
		return nil
	}
	var ne *net.OpError
	if errors.As(err, &ne) {
		// The count is the retryer's own, so the message proves the retries
		// happened rather than restating the setting.
		var me *retry.MaxAttemptsError
		if errors.As(err, &me) {
			return fmt.Errorf("%s: endpoint %s unreachable after %d attempts: %w", what, c.endpoint, me.Attempt, ne)
		}
		return fmt.Errorf("%s: endpoint %s unreachable: %w", what, c.endpoint, ne)
	}
	var ae smithy.APIError
	code, msg := "", ""
	if errors.As(err, &ae) {
		code, msg = ae.ErrorCode(), strings.ToLower(ae.ErrorMessage())
	}
	// Servers name a refused key differently (versitygw: XAdminUserNotFound).
	badKey := code == "InvalidAccessKeyId" || code == "SignatureDoesNotMatch" || code == "AccessDenied" ||
		code == "InvalidToken" || code == "ExpiredToken" || strings.Contains(msg, "access key")
	status := 0
	var re *awshttp.ResponseError
	if errors.As(err, &re) {
		status = re.HTTPStatusCode()
	}
	switch {
	case badKey || status == 403:
		return fmt.Errorf("%s: credentials rejected by %s (%s): check accessKeyId/secretAccessKey with `config login`", what, c.endpoint, firstNonEmpty(code, "403 Forbidden"))
	case code == "NoSuchBucket" || (strings.HasPrefix(what, "bucket ") && status == 404):
		return fmt.Errorf("bucket %q does not exist at %s", c.bucket, c.endpoint)
	case code == "NoSuchKey" || code == "NotFound" || status == 404:
		return fmt.Errorf("%s: %w", what, ErrNotFound)
	}
	return fmt.Errorf("%s: %w", what, err)
}

// ErrNotFound marks a missing remote object (version, image or file).
var ErrNotFound = errors.New("not found in the registry")

func firstNonEmpty(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

func (c *Client) putSmall(ctx context.Context, key string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	_, err = c.s3.PutObject(ctx, &s3.PutObjectInput{Bucket: aws.String(c.bucket), Key: aws.String(key), Body: bytes.NewReader(b), ContentType: aws.String("application/json")})
	return c.explain(err, key)
}

func (c *Client) getManifest(ctx context.Context, key string) (Manifest, error) {
	out, err := c.s3.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(c.bucket), Key: aws.String(key)})
	if err != nil {
		return Manifest{}, c.explain(err, key)
	}
	defer out.Body.Close()
	m, err := decodeManifest(out.Body)
	if err != nil {
		return m, fmt.Errorf("%s: %w", key, err)
	}
	return m, nil
}

func (c *Client) exists(ctx context.Context, key string) (bool, error) {
	_, err := c.s3.HeadObject(ctx, &s3.HeadObjectInput{Bucket: aws.String(c.bucket), Key: aws.String(key)})
	if err == nil {
		return true, nil
	}
	err = c.explain(err, key)
	if errors.Is(err, ErrNotFound) {
		return false, nil
	}
	return false, err
}

// versionRE is the shape of a key segment; its length is checked apart
// (a repetition bounded in the expression compiles into a program as long
// as the bound, kept in the daemon's memory for its lifetime).
var versionRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._+-]*$`)

// checkSegment validates a value that becomes one element of an object key.
func checkSegment(field, v string) error {
	if len(v) > 128 || !versionRE.MatchString(v) || v == "latest" && field != "version" {
		return fmt.Errorf("%s %q: must be 1-128 letters, digits, '.', '_', '+' or '-'", field, v)
	}
	return nil
}

// readAll is io.ReadAll bounded for small control objects.
func readAll(r io.Reader) ([]byte, error) { return io.ReadAll(io.LimitReader(r, 1<<20)) }
