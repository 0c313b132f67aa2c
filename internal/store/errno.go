package store

import "syscall"

// errNotEmpty is what rename(2) returns when the target directory exists.
var errNotEmpty error = syscall.ENOTEMPTY
