//! Which build of the program this is: a remote worker must be the pool's own program (a task
//! names its function by its place in the binary), so both sides compare this at the handshake.
//!
//! The GNU build-id note the linker writes (`gnu:` and its hex, as `readelf -n` and `file`
//! show it); without one, a hash of the whole executable (`hash:`).

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::sync::OnceLock;

/// This program's build, computed once.
pub(crate) fn this_build() -> &'static str {
    static BUILD: OnceLock<String> = OnceLock::new();
    BUILD.get_or_init(|| {
        let path = "/proc/self/exe";
        match File::open(path) {
            Ok(file) => gnu_build_id(&file).unwrap_or_else(|| content_hash(file)),
            Err(e) => format!("unknown ({path}: {e})"),
        }
    })
}

/// This program's path, for errors.
pub(crate) fn this_program() -> String {
    std::env::current_exe().map_or_else(|_| "?".into(), |p| p.display().to_string())
}

/// The `NT_GNU_BUILD_ID` note of an ELF64 little-endian file, read from its `PT_NOTE`
/// segments.
fn gnu_build_id(file: &File) -> Option<String> {
    let mut header = [0u8; 64];
    file.read_exact_at(&mut header, 0).ok()?;
    if &header[..4] != b"\x7fELF" || header[4] != 2 || header[5] != 1 {
        return None; // not ELF64 little-endian
    }
    let u16_at = |b: &[u8], at: usize| u16::from_le_bytes([b[at], b[at + 1]]);
    let u32_at = |b: &[u8], at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap_or_default());
    let u64_at = |b: &[u8], at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or_default());
    let (phoff, phentsize, phnum) = (u64_at(&header, 0x20), u16_at(&header, 0x36), u16_at(&header, 0x38));
    if phentsize < 56 || phnum > 256 {
        return None;
    }
    let mut table = vec![0u8; usize::from(phentsize) * usize::from(phnum)];
    file.read_exact_at(&mut table, phoff).ok()?;
    for ph in table.chunks_exact(usize::from(phentsize)) {
        const PT_NOTE: u32 = 4;
        let (offset, size) = (u64_at(ph, 8), u64_at(ph, 0x20));
        if u32_at(ph, 0) != PT_NOTE || size > 1 << 16 {
            continue;
        }
        let mut notes = vec![0u8; size as usize];
        file.read_exact_at(&mut notes, offset).ok()?;
        let mut at = 0;
        while at + 12 <= notes.len() {
            let (namesz, descsz, kind) =
                (u32_at(&notes, at) as usize, u32_at(&notes, at + 4) as usize, u32_at(&notes, at + 8));
            let name_at = at + 12;
            let desc_at = name_at + namesz.next_multiple_of(4);
            let end = desc_at + descsz.next_multiple_of(4);
            if end > notes.len() + 3 || desc_at + descsz > notes.len() {
                break;
            }
            const NT_GNU_BUILD_ID: u32 = 3;
            if kind == NT_GNU_BUILD_ID && &notes[name_at..name_at + namesz] == b"GNU\0" {
                let hex: String =
                    notes[desc_at..desc_at + descsz].iter().map(|b| format!("{b:02x}")).collect();
                return Some(format!("gnu:{hex}"));
            }
            at = end;
        }
    }
    None
}

/// A hash of the whole file (FNV-1a, 64 bits): slower, for a binary without a build-id.
fn content_hash(mut file: File) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                for &b in &buf[..n] {
                    hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
                }
            }
            Err(e) => return format!("unknown (reading /proc/self/exe: {e})"),
        }
    }
    format!("hash:{hash:016x}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn this_build_is_the_linkers_build_id() {
        let build = super::this_build();
        // Every toolchain this repository builds with writes the note (`readelf -n` shows it).
        assert!(build.starts_with("gnu:") && build.len() > 20, "{build}");
        assert_eq!(super::this_build(), build);
    }
}
