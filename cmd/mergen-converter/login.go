package main

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/spf13/cobra"

	"github.com/mergenhq/mergen/internal/config"
	"github.com/mergenhq/mergen/internal/converter"
)

func newLoginCmd(getenv config.Source) *cobra.Command {
	var user, pass string
	var passStdin, insecure bool
	cmd := &cobra.Command{
		Use:   "login [flags] REGISTRY",
		Short: "Check credentials against a registry and store them in the Docker config",
		Long: `Stores credentials where Docker keeps them ($DOCKER_CONFIG/config.json,
default ~/.docker/config.json), after the registry has accepted them; pulls
use them from there like docker does.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := config.CLIFromEnv(getenv)
			if err != nil {
				return err
			}
			if passStdin {
				b, err := io.ReadAll(bufio.NewReader(cmd.InOrStdin()))
				if err != nil {
					return fmt.Errorf("login %s: read password: %w", args[0], err)
				}
				pass = strings.TrimRight(string(b), "\r\n")
			}
			if user == "" || pass == "" {
				return fmt.Errorf("login %s: --username and --password (or --password-stdin) are required", args[0])
			}
			var opts []name.Option
			if insecure {
				opts = append(opts, name.Insecure)
			}
			reg, err := name.NewRegistry(args[0], opts...)
			if err != nil {
				return fmt.Errorf("login %s: %w", args[0], err)
			}
			auth := authn.FromConfig(authn.AuthConfig{Username: user, Password: pass})
			// An authenticated GET of /v2/ proves the credentials without
			// naming a repository (token registries exchange them first).
			tr, err := transport.NewWithContext(cmd.Context(), reg, auth, http.DefaultTransport, []string{reg.Scope(transport.PullScope)})
			if err != nil {
				return fmt.Errorf("login %s: %w", args[0], err)
			}
			req, err := http.NewRequestWithContext(cmd.Context(), http.MethodGet, reg.Scheme()+"://"+reg.RegistryStr()+"/v2/", nil)
			if err != nil {
				return fmt.Errorf("login %s: %w", args[0], err)
			}
			resp, err := (&http.Client{Transport: tr}).Do(req)
			if err != nil {
				return fmt.Errorf("login %s: %w", args[0], err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				return fmt.Errorf("login %s: registry refused the credentials: %s", args[0], resp.Status)
			}
			path, err := converter.SaveDockerAuth(cfg.DockerConfig, reg.RegistryStr(), user, pass)
			if err != nil {
				return fmt.Errorf("login %s: %w", args[0], err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Login succeeded; credentials stored in %s\n", path)
			return nil
		},
	}
	cmd.Flags().StringVarP(&user, "username", "u", "", "user name")
	cmd.Flags().StringVarP(&pass, "password", "p", "", "password or token (prefer --password-stdin)")
	cmd.Flags().BoolVar(&passStdin, "password-stdin", false, "read the password from stdin")
	cmd.Flags().BoolVar(&insecure, "insecure", false, "plain HTTP registry")
	return cmd
}
