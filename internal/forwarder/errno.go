package forwarder

import "syscall"

// syscallEMFILE is the "too many open files" accept error, worth a retry.
var syscallEMFILE = syscall.EMFILE
