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

/// The sections a member lookup reads: the entries, their abbreviations
/// and the strings their names may be in. Line tables, locations and
/// ranges (most of Go's DWARF) are never inflated.
const READ: [SectionId; 3] = [SectionId::DebugInfo, SectionId::DebugAbbrev, SectionId::DebugStr];

/// A section's bytes, inflated if compressed (empty when absent, or not
/// one of [`READ`]).
fn section<'d, R: object::ReadRef<'d>>(obj: &object::File<'d, R>, id: SectionId) -> Result<Cow<'d, [u8]>, DwarfError> {
    let name = id.name();
    let Some(s) = obj.section_by_name(name).filter(|_| READ.contains(&id)) else { return Ok(Cow::Borrowed(&[])) };
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
        let [found] = self.member_offsets([(type_name, member)])?;
        found
    }

    /// [`member_offset`](Self::member_offset) of each (struct, field) pair,
    /// in one pass over the entries. The outer error is DWARF that cannot be
    /// read; each pair has its own answer.
    pub fn member_offsets<const N: usize>(
        &self,
        wanted: [(&str, &str); N],
    ) -> Result<[Result<u64, DwarfError>; N], DwarfError> {
        let dwarf = self.sections.borrow(|s| EndianSlice::new(s, LittleEndian));
        let parse = |e: gimli::Error| DwarfError::Parse(e.to_string());
        // Go writes names inline; a `.debug_str` reference is read too.
        let name_of = |e: &gimli::DebuggingInformationEntry<_>| -> Option<Vec<u8>> {
            let name = match e.attr_value(gimli::DW_AT_name).ok()?? {
                gimli::AttributeValue::String(s) => s,
                gimli::AttributeValue::DebugStrRef(o) => dwarf.debug_str.get_str(o).ok()?,
                _ => return None,
            };
            Some(name.slice().to_vec())
        };
        // Per pair: its struct was seen; its answer once found.
        let mut seen = [false; N];
        let mut found: [Option<Result<u64, DwarfError>>; N] = std::array::from_fn(|_| None);
        let mut units = dwarf.units();
        while let Some(header) = units.next().map_err(parse)? {
            if found.iter().all(Option::is_some) {
                break;
            }
            // The entries alone (a whole `Unit` would read line tables too).
            let abbrevs = dwarf.abbreviations(&header).map_err(parse)?;
            let mut entries = header.entries(&abbrevs);
            // The struct whose members are being read, and its depth.
            let mut inside: Option<(isize, Vec<u8>)> = None;
            let mut depth = 0isize;
            while let Some((delta, e)) = entries.next_dfs().map_err(parse)? {
                depth += delta;
                if inside.as_ref().is_some_and(|(d, _)| depth <= *d) {
                    inside = None;
                }
                if let Some((d, type_name)) = &inside {
                    if depth != d + 1 || e.tag() != gimli::DW_TAG_member {
                        continue;
                    }
                    let Some(member) = name_of(e) else { continue };
                    for (i, (t, m)) in wanted.iter().enumerate() {
                        if found[i].is_none() && t.as_bytes() == type_name.as_slice() && m.as_bytes() == member {
                            let at = e.attr(gimli::DW_AT_data_member_location).map_err(parse)?;
                            found[i] = Some(
                                at.and_then(|a| a.udata_value())
                                    .ok_or_else(|| DwarfError::Parse(format!("{t}.{m}: no constant location"))),
                            );
                        }
                    }
                    continue;
                }
                if e.tag() == gimli::DW_TAG_structure_type
                    && let Some(name) = name_of(e)
                    && wanted.iter().any(|(t, _)| t.as_bytes() == name)
                {
                    for (i, (t, _)) in wanted.iter().enumerate() {
                        seen[i] |= t.as_bytes() == name;
                    }
                    inside = Some((depth, name));
                }
            }
        }
        Ok(std::array::from_fn(|i| {
            let (t, m) = wanted[i];
            match found[i].take() {
                Some(answer) => answer,
                None if seen[i] => Err(DwarfError::NoMember(t.into(), m.into())),
                None => Err(DwarfError::NoType(t.into())),
            }
        }))
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
        // Several at once, each with its own answer.
        assert_eq!(
            dwarf.member_offsets([("main.probed", "done"), ("main.probed", "nope"), ("main.absent", "a")]),
            Ok([
                Ok(24),
                Err(DwarfError::NoMember("main.probed".into(), "nope".into())),
                Err(DwarfError::NoType("main.absent".into()))
            ])
        );
        let bare = read("nodwarf");
        assert!(matches!(GoDwarf::load(&object::File::parse(&*bare).expect("ELF")), Err(DwarfError::Missing)));
    }
}
