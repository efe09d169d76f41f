//go:build cgo

// Built only into the cgo variant of go_db_app (tests/trace.rs): C
// thread-local data in the executable shares its TLS block with Go's
// goroutine slot, which then is not at Go's usual -8 from the thread pointer.
package main

/*
__thread long kspan_c_tls[4];
static long kspan_c_get(void) { return kspan_c_tls[1]; }
*/
import "C"

func init() { _ = C.kspan_c_get() }
