package artifact

import (
	"context"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/mergenhq/mergen/internal/profile"
	"github.com/mergenhq/mergen/internal/testenv"
)

const (
	testAccess = "mergen-test-access"
	testSecret = "mergen-test-secret-key"
	testBucket = "artifacts"
)

// s3Server is the test's real S3 server with testBucket in it.
type s3Server struct{ *testenv.S3 }

// startS3 starts versitygw for the test and creates testBucket.
func startS3(t testing.TB) *s3Server {
	t.Helper()
	srv := &s3Server{testenv.StartS3(t, testAccess, testSecret)}
	c := srv.client(t, srv.Profile())
	if _, err := c.s3.CreateBucket(context.Background(), &s3.CreateBucketInput{Bucket: aws.String(testBucket)}); err != nil {
		t.Fatalf("create bucket: %v", err)
	}
	return srv
}

func (s *s3Server) Profile() profile.Profile {
	return profile.Profile{Endpoint: s.Endpoint, Region: "us-east-1", Bucket: testBucket, Prefix: "team", PathStyle: true, AccessKeyID: testAccess, SecretAccessKey: testSecret}
}

func (s *s3Server) client(t testing.TB, p profile.Profile) *Client {
	t.Helper()
	// Small parts so that the test files exercise multipart uploads and
	// ranged downloads.
	c, err := New(p, Options{PartSize: 5 << 20, Concurrency: 3, Attempts: 2, MaxBackoff: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// object is the backing file of key in the test bucket.
func (s *s3Server) object(key string) string {
	return filepath.Join(s.Root, testBucket, filepath.FromSlash(key))
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// freePort is a loopback address nothing listens on.
func freePort(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}
