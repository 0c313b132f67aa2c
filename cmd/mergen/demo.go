package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/mergenhq/mergen/internal/demo"
)

func newDemoCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "The bundled demo image (no registry or network needed)",
	}
	var out, busybox string
	image := &cobra.Command{
		Use:   "image --out DIR",
		Short: "Write the demo web server image as an OCI image layout (run it with `mergen run oci:DIR`)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if out == "" {
				return fmt.Errorf("--out: required")
			}
			if err := demo.Build(out, busybox); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "demo image %s written to %s (serves HTTP on port %d)\n", demo.Ref, out, demo.Port)
			return nil
		},
	}
	image.Flags().StringVar(&out, "out", "", "directory for the OCI image layout (replaced)")
	image.Flags().StringVar(&busybox, "busybox", "/bin/busybox", "static busybox binary to build the image from (Debian: busybox-static)")
	cmd.AddCommand(image)
	return cmd
}
