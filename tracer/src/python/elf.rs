//! Just enough of ELF to find a symbol's address in a mapped executable or library: the
//! file header, load segments and symbol tables of 64-bit little-endian files. Files are
//! untrusted input: every offset and count is checked against the file before use.

use std::{fs::File, io, os::unix::fs::FileExt, path::Path};

use super::{Error, Result};

const PT_LOAD: u32 = 1;
const SHT_SYMTAB: u32 = 2;
const SHT_DYNSYM: u32 = 11;
const SHN_UNDEF: u16 = 0;
const EHDR_SIZE: usize = 64;
const PHDR_SIZE: usize = 56;
const SHDR_SIZE: usize = 64;
const SYM_SIZE: usize = 24;
/// The largest string table read whole.
const MAX_STRTAB: u64 = 64 << 20;
/// The most program or section headers accepted.
const MAX_HEADERS: u64 = 1 << 16;
/// Symbols read per chunk.
const SYM_CHUNK: u64 = 4096;

/// Random access to the bytes of a file.
pub trait ReadAt {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
}

impl ReadAt for File {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(self, buf, offset)
    }
}

impl ReadAt for [u8] {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::UnexpectedEof)?;
        let end = start
            .checked_add(buf.len())
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        let bytes = self.get(start..end).ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(bytes);
        Ok(())
    }
}

impl ReadAt for Vec<u8> {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.as_slice().read_exact_at(buf, offset)
    }
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn invalid(what: impl Into<String>) -> Error {
    Error::Elf(what.into())
}

/// A loadable segment (`PT_LOAD`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub offset: u64,
    pub vaddr: u64,
    pub filesz: u64,
    pub memsz: u64,
}

#[derive(Clone, Copy, Debug)]
struct Section {
    kind: u32,
    offset: u64,
    size: u64,
    link: u32,
    entsize: u64,
}

/// A defined symbol: its link-time address and size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Symbol {
    pub value: u64,
    pub size: u64,
}

/// A parsed ELF file.
pub struct Elf<R> {
    source: R,
    segments: Vec<Segment>,
    sections: Vec<Section>,
}

impl Elf<File> {
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::Io {
            context: format!("opening {}", path.display()),
            source: e,
        })?;
        Self::parse(file)
    }
}

impl<R: ReadAt> Elf<R> {
    fn read(&self, offset: u64, len: u64) -> Result<Vec<u8>> {
        read_from(&self.source, offset, len)
    }

    /// Reads the headers of a 64-bit little-endian ELF file.
    pub fn parse(source: R) -> Result<Self> {
        let header = read_from(&source, 0, EHDR_SIZE as u64)?;
        if header[..4] != *b"\x7fELF" {
            return Err(invalid("not an ELF file"));
        }
        if header[4] != 2 || header[5] != 1 {
            return Err(invalid("not a 64-bit little-endian ELF file"));
        }
        let phoff = u64_at(&header, 32);
        let shoff = u64_at(&header, 40);
        let phentsize = u16_at(&header, 54) as u64;
        let phnum = u16_at(&header, 56) as u64;
        let shentsize = u16_at(&header, 58) as u64;
        let mut shnum = u16_at(&header, 60) as u64;

        let mut segments = Vec::new();
        if phnum > 0 {
            if phentsize < PHDR_SIZE as u64 {
                return Err(invalid("program headers too small"));
            }
            let table = read_from(&source, phoff, checked_mul(phentsize, phnum)?)?;
            for i in 0..phnum as usize {
                let ph = &table[i * phentsize as usize..];
                if u32_at(ph, 0) == PT_LOAD {
                    segments.push(Segment {
                        offset: u64_at(ph, 8),
                        vaddr: u64_at(ph, 16),
                        filesz: u64_at(ph, 32),
                        memsz: u64_at(ph, 40),
                    });
                }
            }
        }

        let mut sections = Vec::new();
        if shoff != 0 {
            if shentsize < SHDR_SIZE as u64 {
                return Err(invalid("section headers too small"));
            }
            if shnum == 0 {
                // Extended numbering: the count is in the first header's size.
                let first = read_from(&source, shoff, SHDR_SIZE as u64)?;
                shnum = u64_at(&first, 32);
            }
            if shnum > MAX_HEADERS {
                return Err(invalid(format!("{shnum} section headers")));
            }
            let table = read_from(&source, shoff, checked_mul(shentsize, shnum)?)?;
            for i in 0..shnum as usize {
                let sh = &table[i * shentsize as usize..];
                sections.push(Section {
                    kind: u32_at(sh, 4),
                    offset: u64_at(sh, 24),
                    size: u64_at(sh, 32),
                    link: u32_at(sh, 40),
                    entsize: u64_at(sh, 56),
                });
            }
        }
        Ok(Self {
            source,
            segments,
            sections,
        })
    }

    /// The loadable segments, in file order.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// The defined symbol called `name`, from the dynamic symbol table or else the full one.
    pub fn symbol(&self, name: &str) -> Result<Option<Symbol>> {
        for kind in [SHT_DYNSYM, SHT_SYMTAB] {
            for table in self.sections.iter().filter(|s| s.kind == kind) {
                if let Some(symbol) = self.find_in(table, name.as_bytes())? {
                    return Ok(Some(symbol));
                }
            }
        }
        Ok(None)
    }

    fn find_in(&self, table: &Section, name: &[u8]) -> Result<Option<Symbol>> {
        let strtab = self
            .sections
            .get(table.link as usize)
            .ok_or_else(|| invalid("symbol table without a string table"))?;
        if strtab.size > MAX_STRTAB {
            return Err(invalid(format!("string table of {} bytes", strtab.size)));
        }
        let strings = self.read(strtab.offset, strtab.size)?;
        let entsize = if table.entsize == 0 {
            SYM_SIZE as u64
        } else {
            table.entsize
        };
        if entsize < SYM_SIZE as u64 {
            return Err(invalid("symbols too small"));
        }
        let count = table.size / entsize;
        let mut first = 0;
        while first < count {
            let n = SYM_CHUNK.min(count - first);
            let chunk = self.read(table.offset + first * entsize, n * entsize)?;
            for i in 0..n as usize {
                let sym = &chunk[i * entsize as usize..];
                let shndx = u16_at(sym, 6);
                if shndx == SHN_UNDEF {
                    continue;
                }
                let start = u32_at(sym, 0) as usize;
                let Some(rest) = strings.get(start..) else {
                    continue;
                };
                if rest.len() > name.len() && rest.starts_with(name) && rest[name.len()] == 0 {
                    return Ok(Some(Symbol {
                        value: u64_at(sym, 8),
                        size: u64_at(sym, 16),
                    }));
                }
            }
            first += n;
        }
        Ok(None)
    }
}

fn checked_mul(a: u64, b: u64) -> Result<u64> {
    a.checked_mul(b).ok_or_else(|| invalid("size overflows"))
}

fn read_from<R: ReadAt + ?Sized>(source: &R, offset: u64, len: u64) -> Result<Vec<u8>> {
    if len > MAX_STRTAB {
        return Err(invalid(format!("refusing to read {len} bytes")));
    }
    let mut buf = vec![0; len as usize];
    source
        .read_exact_at(&mut buf, offset)
        .map_err(|e| invalid(format!("reading {len} bytes at offset {offset:#x}: {e}")))?;
    Ok(buf)
}

/// How far a file was moved from its link-time addresses when mapped: the mapping of file
/// offset `map_offset` at `map_start` falls in one of `segments`.
pub fn load_bias(segments: &[Segment], map_start: u64, map_offset: u64) -> Option<u64> {
    let segment = segments.iter().find(|s| {
        let page_start = s.offset & !0xfff;
        page_start <= map_offset && map_offset < s.offset.saturating_add(s.filesz.max(1))
    })?;
    // The address the link-time layout gives to file offset `map_offset`.
    let linked = segment
        .vaddr
        .checked_sub(segment.offset)?
        .checked_add(map_offset)?;
    map_start.checked_sub(linked)
}

/// Builds small ELF files for tests.
#[cfg(test)]
pub mod build {
    /// A 64-bit little-endian ELF with one load segment and the given symbols in `.dynsym`
    /// (as `(name, value, size, defined)`), and `symtab` ones in `.symtab`.
    pub fn elf(
        vaddr: u64,
        dynsym: &[(&str, u64, u64, bool)],
        symtab: &[(&str, u64, u64, bool)],
    ) -> Vec<u8> {
        let mut out = vec![0u8; 64];
        // Program header table right after the file header: one PT_LOAD.
        let phoff = out.len() as u64;
        let mut ph = vec![0u8; 56];
        ph[0..4].copy_from_slice(&1u32.to_le_bytes());
        ph[8..16].copy_from_slice(&0u64.to_le_bytes());
        ph[16..24].copy_from_slice(&vaddr.to_le_bytes());
        ph[32..40].copy_from_slice(&0x10000u64.to_le_bytes());
        ph[40..48].copy_from_slice(&0x20000u64.to_le_bytes());
        out.extend(ph);

        let mut sections: Vec<[u64; 5]> = vec![[0; 5]]; // kind, offset, size, link, entsize
        for (kind, symbols) in [(11u64, dynsym), (2u64, symtab)] {
            let mut strings = vec![0u8];
            let mut table = vec![0u8; 24]; // the null symbol
            for (name, value, size, defined) in symbols {
                let mut sym = [0u8; 24];
                sym[0..4].copy_from_slice(&(strings.len() as u32).to_le_bytes());
                sym[4] = 0x11; // GLOBAL OBJECT
                let shndx: u16 = if *defined { 5 } else { 0 };
                sym[6..8].copy_from_slice(&shndx.to_le_bytes());
                sym[8..16].copy_from_slice(&value.to_le_bytes());
                sym[16..24].copy_from_slice(&size.to_le_bytes());
                table.extend(sym);
                strings.extend(name.as_bytes());
                strings.push(0);
            }
            let str_offset = out.len() as u64;
            out.extend(&strings);
            let str_index = sections.len() as u64;
            sections.push([3, str_offset, strings.len() as u64, 0, 0]);
            let sym_offset = out.len() as u64;
            out.extend(&table);
            sections.push([kind, sym_offset, table.len() as u64, str_index, 24]);
        }
        let shoff = out.len() as u64;
        for [kind, offset, size, link, entsize] in &sections {
            let mut sh = [0u8; 64];
            sh[4..8].copy_from_slice(&(*kind as u32).to_le_bytes());
            sh[24..32].copy_from_slice(&offset.to_le_bytes());
            sh[32..40].copy_from_slice(&size.to_le_bytes());
            sh[40..44].copy_from_slice(&(*link as u32).to_le_bytes());
            sh[56..64].copy_from_slice(&entsize.to_le_bytes());
            out.extend(sh);
        }
        out[0..4].copy_from_slice(b"\x7fELF");
        out[4] = 2;
        out[5] = 1;
        out[6] = 1;
        out[16..18].copy_from_slice(&3u16.to_le_bytes()); // ET_DYN
        out[32..40].copy_from_slice(&phoff.to_le_bytes());
        out[40..48].copy_from_slice(&shoff.to_le_bytes());
        out[54..56].copy_from_slice(&56u16.to_le_bytes());
        out[56..58].copy_from_slice(&1u16.to_le_bytes());
        out[58..60].copy_from_slice(&64u16.to_le_bytes());
        out[60..62].copy_from_slice(&(sections.len() as u16).to_le_bytes());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_defined_symbols_in_either_table() {
        let bytes = build::elf(
            0,
            &[
                ("_PyRuntime_Initialize", 0x1000, 49, true),
                ("_PyRuntime", 0x5000, 0x28b20, true),
                ("Py_Undefined", 0, 0, false),
            ],
            &[("local_thing", 0x7000, 8, true)],
        );
        let elf = Elf::parse(bytes).unwrap();
        assert_eq!(
            elf.symbol("_PyRuntime").unwrap(),
            Some(Symbol {
                value: 0x5000,
                size: 0x28b20
            })
        );
        // A prefix of another name does not match it, nor does an undefined symbol.
        assert_eq!(elf.symbol("_PyRuntime_").unwrap(), None);
        assert_eq!(elf.symbol("Py_Undefined").unwrap(), None);
        assert_eq!(elf.symbol("local_thing").unwrap().unwrap().value, 0x7000);
        assert_eq!(elf.segments().len(), 1);
    }

    #[test]
    fn truncated_and_foreign_files_are_errors() {
        let bytes = build::elf(0, &[("_PyRuntime", 0x5000, 8, true)], &[]);
        for cut in [0, 10, 63, bytes.len() - 1] {
            let partial = bytes[..cut].to_vec();
            let found = Elf::parse(partial).and_then(|e| e.symbol("_PyRuntime"));
            assert!(found.is_err() || found.unwrap().is_none(), "cut at {cut}");
        }
        let mut not_elf = bytes.clone();
        not_elf[0] = b'X';
        assert!(Elf::parse(not_elf).is_err());
        let mut big_endian = bytes.clone();
        big_endian[5] = 2;
        assert!(Elf::parse(big_endian).is_err());
    }

    #[test]
    fn corrupt_tables_are_errors_not_panics() {
        let bytes = build::elf(0, &[("_PyRuntime", 0x5000, 8, true)], &[]);
        // Every single-byte corruption of the headers either parses or fails cleanly.
        for at in 0..bytes.len() {
            for value in [0x00, 0xff, 0x7f] {
                let mut b = bytes.clone();
                b[at] = value;
                if let Ok(elf) = Elf::parse(b) {
                    let _ = elf.symbol("_PyRuntime");
                }
            }
        }
    }

    #[test]
    fn load_bias_follows_the_mapping_of_a_segment() {
        let segments = [
            Segment {
                offset: 0,
                vaddr: 0,
                filesz: 0x6000,
                memsz: 0x6000,
            },
            Segment {
                offset: 0x6e30,
                vaddr: 0x7e30,
                filesz: 0x1000,
                memsz: 0x3000,
            },
        ];
        assert_eq!(
            load_bias(&segments, 0x7f00_0000_0000, 0),
            Some(0x7f00_0000_0000)
        );
        // The mapping of the second segment starts at its page.
        assert_eq!(
            load_bias(&segments, 0x7f00_0000_7000, 0x6000),
            Some(0x7f00_0000_7000 - 0x7000)
        );
        // A non-PIE executable linked at its load address has no bias.
        let exec = [Segment {
            offset: 0,
            vaddr: 0x40_0000,
            filesz: 0x1000,
            memsz: 0x1000,
        }];
        assert_eq!(load_bias(&exec, 0x40_0000, 0), Some(0));
        assert_eq!(load_bias(&exec, 0x40_0000, 0x9000), None);
    }
}
