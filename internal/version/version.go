// Package version holds the build version, set by the linker
// (-X github.com/mergenhq/mergen/internal/version.Version=...).
package version

// Version is "dev" for builds that did not go through the Makefile.
var Version = "dev"
