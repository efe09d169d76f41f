//! Field offsets of Go structs, read from an executable's DWARF, for the
//! probes that read a library's own structs (grpc-go's server transport:
//! `go_proc`), whose layout changes between the library's releases.
//!
//! Guarantees:
//! - An offset comes only from a `DW_TAG_member` of the named
//!   `DW_TAG_structure_type` (Go names types with their full package path),
//!   never from a guess: no DWARF (`-ldflags=-w`, or stripped), no such type
//!   or no such member is a precise [`DwarfError`].
//! - Compressed sections (Go compresses its DWARF with zlib since 1.12) are
//!   inflated up to [`MAX_SECTION`] bytes each; a larger one is refused, so
//!   a hostile file cannot make kspan allocate without bound.
//! - Total: malformed DWARF is an error, never a panic.

use std::borrow::Cow;
use std::io::Read as _;

use gimli::{EndianSlice, LittleEndian, SectionId};
use object::{Object, ObjectSection};

/// Largest DWARF section inflated.
pub const MAX_SECTION: u64 = 256 << 20;

/// Why an offset could not be read.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum DwarfError {
    #[error("no DWARF (built with -ldflags=-w, or stripped)")]
    Missing,
    #[error("DWARF section {0}: {1}")]
    Section(&'static str, String),
    #[error("DWARF: {0}")]
    Parse(String),
    #[error("no struct {0} in the DWARF")]
    NoType(String),
    #[error("struct {0} has no field {1}")]
    NoMember(String, String),
}

/// A section's bytes, inflated if compressed (empty when absent).
fn section<'d, R: object::ReadRef<'d>>(obj: &object::File<'d, R>, id: SectionId) -> Result<Cow<'d, [u8]>, DwarfError> {
    let name = id.name();
    let Some(s) = obj.section_by_name(name) else { return Ok(Cow::Borrowed(&[])) };
    let fail = |e: String| DwarfError::Section(name, e);
    let c = s.compressed_data().map_err(|e| fail(e.to_string()))?;
    match c.format {
        object::CompressionFormat::None => Ok(Cow::Borrowed(c.data)),
        object::CompressionFormat::Zlib => {
            if c.uncompressed_size > MAX_SECTION {
                return Err(fail(format!("{} bytes inflated, more than {MAX_SECTION}", c.uncompressed_size)));
            }
            let mut out = Vec::with_capacity(c.uncompressed_size as usize);
            flate2::read::ZlibDecoder::new(c.data)
                .take(c.uncompressed_size)
                .read_to_end(&mut out)
                .map_err(|e| fail(e.to_string()))?;
            Ok(Cow::Owned(out))
        }
        other => Err(fail(format!("{other:?} compression"))),
    }
}

/// The DWARF sections of one executable, inflated once for any number of
/// lookups.
pub struct GoDwarf<'d> {
    sections: gimli::DwarfSections<Cow<'d, [u8]>>,
}

impl<'d> GoDwarf<'d> {
    /// Reads the DWARF of `obj`.
    pub fn load<R: object::ReadRef<'d>>(obj: &object::File<'d, R>) -> Result<Self, DwarfError> {
        if obj.section_by_name(".debug_info").is_none() {
            return Err(DwarfError::Missing);
        }
        Ok(Self { sections: gimli::DwarfSections::load(|id| section(obj, id))? })
    }

    /// Byte offset of field `member` in the Go struct `type_name` (e.g.
    /// `google.golang.org/grpc/internal/transport.http2Server`).
    pub fn member_offset(&self, type_name: &str, member: &str) -> Result<u64, DwarfError> {
        let dwarf = self.sections.borrow(|s| EndianSlice::new(s, LittleEndian));
        let parse = |e: gimli::Error| DwarfError::Parse(e.to_string());
        let name_of = |unit: &gimli::Unit<_>, e: &gimli::DebuggingInformationEntry<_>| -> Option<Vec<u8>> {
            let v = e.attr_value(gimli::DW_AT_name).ok()??;
            Some(dwarf.attr_string(unit, v).ok()?.slice().to_vec())
        };
        let mut units = dwarf.units();
        while let Some(header) = units.next().map_err(parse)? {
            let unit = dwarf.unit(header).map_err(parse)?;
            let mut entries = unit.entries();
            // Depth of the struct found, while its members are read.
            let mut inside: Option<isize> = None;
            let mut depth = 0isize;
            while let Some((delta, e)) = entries.next_dfs().map_err(parse)? {
                depth += delta;
                if let Some(d) = inside {
                    if depth <= d {
                        break;
                    }
                    if depth == d + 1
                        && e.tag() == gimli::DW_TAG_member
                        && name_of(&unit, e).as_deref() == Some(member.as_bytes())
                    {
                        let at = e.attr(gimli::DW_AT_data_member_location).map_err(parse)?;
                        return at
                            .and_then(|a| a.udata_value())
                            .ok_or_else(|| DwarfError::Parse(format!("{type_name}.{member}: no constant location")));
                    }
                    continue;
                }
                if e.tag() == gimli::DW_TAG_structure_type && name_of(&unit, e).as_deref() == Some(type_name.as_bytes())
                {
                    inside = Some(depth);
                }
            }
            if inside.is_some() {
                return Err(DwarfError::NoMember(type_name.into(), member.into()));
            }
        }
        Err(DwarfError::NoType(type_name.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::super::go_tls::tests::go_build_source;
    use super::*;

    const SOURCE: &str = "package main\nimport (\"context\"; \"fmt\"; \"net\")\n\
        type probed struct { a int64; ctx context.Context; done chan struct{}; conn net.Conn }\n\
        var keep = &probed{}\nfunc main() { fmt.Println(keep) }\n";

    /// A Go program built here gives the offsets its compiler laid out;
    /// without DWARF, or for a type or field it does not have, a precise
    /// error.
    #[test]
    fn go_struct_fields_are_found_in_dwarf() {
        let dir = tempfile::tempdir().expect("tempdir");
        let source = dir.path().join("probed.go");
        std::fs::write(&source, SOURCE).expect("write");
        if !go_build_source(dir.path(), "full", &source, &[], false) {
            eprintln!("skipping: no Go toolchain");
            return;
        }
        assert!(go_build_source(dir.path(), "nodwarf", &source, &["-ldflags=-w"], false));
        let read = |name: &str| std::fs::read(dir.path().join(name)).expect("read");
        let full = read("full");
        let obj = object::File::parse(&*full).expect("ELF");
        let dwarf = GoDwarf::load(&obj).expect("DWARF");
        // int64, an interface (two words), a channel, then `conn`.
        assert_eq!(dwarf.member_offset("main.probed", "conn"), Ok(32));
        assert_eq!(dwarf.member_offset("main.probed", "ctx"), Ok(8));
        assert_eq!(
            dwarf.member_offset("main.probed", "nope"),
            Err(DwarfError::NoMember("main.probed".into(), "nope".into()))
        );
        assert_eq!(dwarf.member_offset("main.absent", "conn"), Err(DwarfError::NoType("main.absent".into())));
        let bare = read("nodwarf");
        assert!(matches!(GoDwarf::load(&object::File::parse(&*bare).expect("ELF")), Err(DwarfError::Missing)));
    }
}
