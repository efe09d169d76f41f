#![no_main]
//! Any byte string read as Go's function table: never a panic, and a found
//! function lies inside the address space the table describes.

use kspan::capture::gopclntab::find_function;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for name in ["a", "crypto/tls.(*Conn).Read", "crypto/tls.(*Conn).Write"] {
        if let Some((addr, size)) = find_function(data, name) {
            assert!(size > 0 && addr.checked_add(size).is_some(), "{name}: {addr:#x}+{size:#x}");
        }
    }
});
