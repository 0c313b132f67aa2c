package kubenode

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
	corev1 "k8s.io/api/core/v1"
)

// pullKeychain is the registry credentials of a pod's imagePullSecrets
// (kubernetes.io/dockerconfigjson or the older kubernetes.io/dockercfg),
// for the converter: the first secret that has an entry for the image's
// registry answers, as the kubelet does; a registry none names is pulled
// anonymously (the host's own docker config is not consulted for pods).
type pullKeychain []map[string]dockerAuth

type dockerAuth struct {
	Username string `json:"username"`
	Password string `json:"password"`
	Auth     string `json:"auth"`
	// IdentityToken and RegistryToken are OAuth tokens some registries
	// hand out instead of a password.
	IdentityToken string `json:"identitytoken"`
	RegistryToken string `json:"registrytoken"`
}

// Keychain reads the pull secrets. A secret of another type, or one that
// does not parse, is an error naming it.
func Keychain(secrets []*corev1.Secret) (authn.Keychain, error) {
	var kc pullKeychain
	for _, s := range secrets {
		var auths map[string]dockerAuth
		switch s.Type {
		case corev1.SecretTypeDockerConfigJson:
			var cfg struct {
				Auths map[string]dockerAuth `json:"auths"`
			}
			if err := json.Unmarshal(s.Data[corev1.DockerConfigJsonKey], &cfg); err != nil {
				return nil, fmt.Errorf("imagePullSecrets %s: %s is not a docker config: %v", s.Name, corev1.DockerConfigJsonKey, err)
			}
			auths = cfg.Auths
		case corev1.SecretTypeDockercfg:
			if err := json.Unmarshal(s.Data[corev1.DockerConfigKey], &auths); err != nil {
				return nil, fmt.Errorf("imagePullSecrets %s: %s is not a docker config: %v", s.Name, corev1.DockerConfigKey, err)
			}
		default:
			return nil, fmt.Errorf("imagePullSecrets %s: type %s is not %s", s.Name, s.Type, corev1.SecretTypeDockerConfigJson)
		}
		norm := map[string]dockerAuth{}
		for k, v := range auths {
			norm[registryHost(k)] = v
		}
		kc = append(kc, norm)
	}
	return kc, nil
}

// Resolve implements authn.Keychain.
func (kc pullKeychain) Resolve(r authn.Resource) (authn.Authenticator, error) {
	host := registryHost(r.RegistryStr())
	for _, auths := range kc {
		a, ok := auths[host]
		if !ok {
			continue
		}
		cfg := authn.AuthConfig{Username: a.Username, Password: a.Password, IdentityToken: a.IdentityToken, RegistryToken: a.RegistryToken}
		if a.Auth != "" && cfg.Username == "" {
			raw, err := base64.StdEncoding.DecodeString(a.Auth)
			if err != nil {
				return nil, fmt.Errorf("pull secret for %s: auth is not base64", host)
			}
			user, pass, ok := strings.Cut(string(raw), ":")
			if !ok {
				return nil, fmt.Errorf("pull secret for %s: auth is not user:password", host)
			}
			cfg.Username, cfg.Password = user, pass
		}
		return authn.FromConfig(cfg), nil
	}
	return authn.Anonymous, nil
}

// registryHost is the registry a docker config key names: keys may be a
// bare host, a URL, or Docker Hub's historical index URL.
func registryHost(key string) string {
	k := strings.TrimPrefix(strings.TrimPrefix(key, "https://"), "http://")
	k, _, _ = strings.Cut(k, "/")
	switch k {
	case "index.docker.io", "registry-1.docker.io", "docker.io":
		return "index.docker.io"
	}
	return k
}
