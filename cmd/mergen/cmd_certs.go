package main

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/mergenhq/mergen/internal/certs"
)

// newCertsCmd is `mergen certs`: TLS material for the forwarder.
func newCertsCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "certs",
		Short: "Make TLS certificates for mergen-forwarder",
	}
	var (
		domain, out, keyType string
		days                 int
		force                bool
	)
	wildcard := &cobra.Command{
		Use:   "wildcard --domain DOMAIN --out DIR",
		Short: "Write a self-signed wildcard certificate and key for *.DOMAIN and DOMAIN",
		Long: "Writes DIR/wildcard.DOMAIN.crt and DIR/wildcard.DOMAIN.key (mode 0600), " +
			"the files FWD_TLS_CERT_FILE and FWD_TLS_KEY_FILE point to. A running forwarder picks up replaced files without a restart.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if domain == "" {
				return fmt.Errorf("--domain is required (e.g. vm.example.com)")
			}
			if out == "" {
				return fmt.Errorf("--out is required (a directory)")
			}
			if days <= 0 {
				return fmt.Errorf("--days must be positive, got %d", days)
			}
			pair, err := certs.Wildcard(certs.Options{Domain: domain, KeyType: keyType, Valid: time.Duration(days) * 24 * time.Hour})
			if err != nil {
				return err
			}
			certPath, keyPath, err := certs.WriteFiles(out, domain, pair, force)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "certificate: %s\nkey:         %s\n", certPath, keyPath)
			return nil
		},
	}
	wildcard.Flags().StringVar(&domain, "domain", "", "domain the VM labels live under, e.g. vm.example.com")
	wildcard.Flags().StringVar(&out, "out", "", "directory for the certificate and key")
	wildcard.Flags().IntVar(&days, "days", 365, "validity in days")
	wildcard.Flags().StringVar(&keyType, "key-type", certs.KeyECDSAP256, "key algorithm: ecdsa-p256 or rsa-2048")
	wildcard.Flags().BoolVar(&force, "force", false, "replace existing files")
	cmd.AddCommand(wildcard)
	return cmd
}
