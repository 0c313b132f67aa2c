package kubenode

import (
	"encoding/base64"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func secret(name string, typ corev1.SecretType, key, data string) *corev1.Secret {
	return &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name}, Type: typ, Data: map[string][]byte{key: []byte(data)}}
}

func TestKeychainAnswersForTheRegistriesItsSecretsName(t *testing.T) {
	auth := base64.StdEncoding.EncodeToString([]byte("bob:s3cret"))
	kc, err := Keychain([]*corev1.Secret{
		secret("a", corev1.SecretTypeDockerConfigJson, corev1.DockerConfigJsonKey, `{"auths":{"https://registry.test:5000/v1/":{"auth":"`+auth+`"}}}`),
		secret("b", corev1.SecretTypeDockercfg, corev1.DockerConfigKey, `{"https://index.docker.io/v1/":{"username":"alice","password":"pw"}}`),
	})
	if err != nil {
		t.Fatal(err)
	}
	resolve := func(ref string) *authn.AuthConfig {
		t.Helper()
		r, err := name.ParseReference(ref)
		if err != nil {
			t.Fatal(err)
		}
		a, err := kc.Resolve(r.Context())
		if err != nil {
			t.Fatal(err)
		}
		cfg, err := a.Authorization()
		if err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	if c := resolve("registry.test:5000/app:1"); c.Username != "bob" || c.Password != "s3cret" {
		t.Fatalf("registry.test: %+v", c)
	}
	if c := resolve("nginx:alpine"); c.Username != "alice" || c.Password != "pw" {
		t.Fatalf("docker hub: %+v", c)
	}
	if c := resolve("other.test/app"); c.Username != "" || c.Password != "" {
		t.Fatalf("a registry no secret names is anonymous: %+v", c)
	}
}

func TestKeychainRefusesASecretOfAnotherTypeNamingIt(t *testing.T) {
	_, err := Keychain([]*corev1.Secret{secret("plain", corev1.SecretTypeOpaque, "x", "y")})
	if err == nil || !strings.Contains(err.Error(), "imagePullSecrets plain") {
		t.Fatalf("error %v", err)
	}
	_, err = Keychain([]*corev1.Secret{secret("broken", corev1.SecretTypeDockerConfigJson, corev1.DockerConfigJsonKey, "{")})
	if err == nil || !strings.Contains(err.Error(), "imagePullSecrets broken") {
		t.Fatalf("error %v", err)
	}
}
