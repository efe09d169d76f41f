//! Capture stage: loads and attaches the eBPF programs, keeps the kernel-side
//! process selection in sync, and drains the ring buffer.
//!
//! Guarantees:
//! - Start-up fails with a precise [`CaptureError`] (missing privilege, no
//!   BTF, no tracefs, a program the kernel rejects), never half-attached.
//! - Ring buffer records are handed out in kernel order and decoded totally
//!   ([`decode`]); kernel-side losses are readable via [`Capture::kernel_counters`].
//! - TLS plaintext comes from uprobes on OpenSSL and GnuTLS, attached per library file
//!   as selected processes are found to map it ([`tls`]), and on Go's
//!   `crypto/tls` in Go executables ([`go_tls`]); failures there are
//!   counted, never fatal.
//! - In Go programs ([`go_proc`]) each data event names the goroutine that
//!   made the call, when the kernel could read it.
//! - Wake-ups are batched: each CPU wakes the agent once it has written its
//!   share of `wakeup_bytes`, and [`Capture::poll`] also drains on a timer.
//! - Capture can be paused (every program detached) and resumed, starting
//!   from fresh kernel connection state ([`Capture::set_paused`]).

pub mod decode;

#[cfg(feature = "runtime")]
mod attach;
#[cfg(feature = "runtime")]
pub mod btf;
#[cfg(feature = "runtime")]
pub mod census;
#[cfg(feature = "runtime")]
pub mod go_dwarf;
#[cfg(feature = "runtime")]
pub mod go_proc;
#[cfg(feature = "runtime")]
pub mod go_tls;
pub mod gopclntab;
#[cfg(feature = "runtime")]
mod loader;
#[cfg(feature = "runtime")]
pub mod sys;
#[cfg(feature = "runtime")]
pub mod tls;
#[cfg(feature = "runtime")]
pub mod tls_entry;
#[cfg(feature = "runtime")]
pub mod tls_lib;

#[cfg(feature = "runtime")]
pub use loader::*;
