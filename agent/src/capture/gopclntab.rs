//! Function addresses from Go's own function table (`.gopclntab`), which Go
//! executables keep when their symbol table is stripped (`-ldflags=-s`, as
//! most container images build them).
//!
//! Guarantees:
//! - Reads the Go 1.18+ table of 64-bit little-endian executables (magic
//!   `0xfffffff0`, or `0xfffffff1` from Go 1.20, whose changes do not touch
//!   what is read here); anything else gives `None`.
//! - Every offset is bounds-checked: a malformed table gives `None`, never a
//!   panic or a read past the section.
//! - A function's size runs to the next function's entry (the table is
//!   sorted by address and ends with the end of the last function).

/// Magic numbers of the Go 1.18 and 1.20 tables.
const MAGICS: [u32; 2] = [0xffff_fff0, 0xffff_fff1];
/// Header: magic, 2 pad bytes, min instruction size, pointer size, then
/// eight pointer-sized words (nfunc, nfiles, textStart, funcnameOffset,
/// cuOffset, filetabOffset, pctabOffset, pclnOffset).
const HEADER: usize = 8 + 8 * 8;

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at.checked_add(4)?)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at.checked_add(8)?)?.try_into().ok()?))
}

fn word(b: &[u8], index: usize) -> Option<usize> {
    usize::try_from(u64_at(b, 8 + 8 * index)?).ok()
}

/// Address and size of the function called `name` in the table `tab`.
pub fn find_function(tab: &[u8], name: &str) -> Option<(u64, u64)> {
    if tab.len() < HEADER || !MAGICS.contains(&u32_at(tab, 0)?) || tab[7] != 8 {
        return None;
    }
    let (nfunc, text) = (word(tab, 0)?, u64_at(tab, 8 + 8 * 2)?);
    let (names, pcln) = (tab.get(word(tab, 3)?..)?, tab.get(word(tab, 7)?..)?);
    // functab: nfunc + 1 pairs (entry offset from textStart, _func offset
    // from pcln), both u32.
    if nfunc.checked_add(1)?.checked_mul(8)? > pcln.len() {
        return None;
    }
    for i in 0..nfunc {
        let func = usize::try_from(u32_at(pcln, 8 * i + 4)?).ok()?;
        // _func: entryOff u32, nameOff i32, ...
        let name_off = usize::try_from(u32_at(pcln, func.checked_add(4)?)?).ok()?;
        let rest = names.get(name_off..)?;
        let end = rest.iter().position(|b| *b == 0)?;
        if &rest[..end] != name.as_bytes() {
            continue;
        }
        let (entry, next) = (u32_at(pcln, 8 * i)?, u32_at(pcln, 8 * (i + 1))?);
        let size = next.checked_sub(entry).filter(|s| *s > 0)?;
        let addr = text.checked_add(u64::from(entry))?;
        addr.checked_add(u64::from(size))?;
        return Some((addr, u64::from(size)));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A table with two functions, `a` at text+0x10 (0x20 bytes) and
    /// `main.b` at text+0x30 (0x08 bytes).
    fn table() -> Vec<u8> {
        let mut t = vec![0xf0, 0xff, 0xff, 0xff, 0, 0, 1, 8];
        let names_at = HEADER as u64;
        let names = b"a\0main.b\0";
        let pcln_at = names_at + names.len() as u64;
        for w in [2, 0, 0x40_1000, names_at, 0, 0, 0, pcln_at] {
            t.extend_from_slice(&u64::to_le_bytes(w));
        }
        t.extend_from_slice(names);
        // functab (3 pairs), then two _func records of 8 bytes.
        for (entry, func) in [(0x10u32, 24u32), (0x30, 32), (0x38, 0)] {
            t.extend_from_slice(&entry.to_le_bytes());
            t.extend_from_slice(&func.to_le_bytes());
        }
        for (entry, name) in [(0x10u32, 0u32), (0x30, 2)] {
            t.extend_from_slice(&entry.to_le_bytes());
            t.extend_from_slice(&name.to_le_bytes());
        }
        t
    }

    #[test]
    fn functions_are_found_by_exact_name() {
        let t = table();
        assert_eq!(find_function(&t, "a"), Some((0x40_1010, 0x20)));
        assert_eq!(find_function(&t, "main.b"), Some((0x40_1030, 0x08)));
        assert_eq!(find_function(&t, "main"), None);
        assert_eq!(find_function(&t, "b"), None);
    }

    #[test]
    fn malformed_tables_give_none_at_every_length() {
        let t = table();
        for n in 0..t.len() {
            // A cut table may still hold `a` whole; it must never panic.
            let _ = find_function(&t[..n], "main.b");
        }
        assert_eq!(find_function(&t[..t.len() - 1], "main.b"), None);
        let mut bad = t.clone();
        bad[0] = 0xfa; // Go 1.16 magic
        assert_eq!(find_function(&bad, "a"), None);
        let mut huge = t.clone();
        huge[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(find_function(&huge, "a"), None);
        let mut far = t;
        far[8 + 8 * 3..8 + 8 * 4].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(find_function(&far, "a"), None);
    }
}
