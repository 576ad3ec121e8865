//! A minimal reader of the kernel's BTF (`/sys/kernel/btf/vmlinux`): just enough to find the
//! byte offset of a struct member, so that the eBPF programs (which get no CO-RE relocations)
//! can read kernel structures whose layout is only known at run time, and the arguments a
//! BTF tracepoint passes.

use std::{collections::HashMap, fs, path::Path};

use crate::error::{Error, Result};

/// The kernel's own type information.
pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

const MAGIC: u16 = 0xeb9f;

mod kind {
    pub const INT: u32 = 1;
    pub const PTR: u32 = 2;
    pub const ARRAY: u32 = 3;
    pub const STRUCT: u32 = 4;
    pub const UNION: u32 = 5;
    pub const ENUM: u32 = 6;
    pub const FWD: u32 = 7;
    pub const TYPEDEF: u32 = 8;
    pub const VOLATILE: u32 = 9;
    pub const CONST: u32 = 10;
    pub const RESTRICT: u32 = 11;
    pub const FUNC_PROTO: u32 = 13;
    pub const VAR: u32 = 14;
    pub const DATASEC: u32 = 15;
    pub const DECL_TAG: u32 = 17;
    pub const TYPE_TAG: u32 = 18;
    pub const ENUM64: u32 = 19;
}

#[derive(Clone, Debug)]
struct Member {
    name: u32,
    type_id: u32,
    /// Offset in bits (bitfields are not needed here); for an array, its element count.
    bit_offset: u32,
}

#[derive(Clone, Debug)]
struct Type {
    name: u32,
    kind: u32,
    /// `size` for sized kinds, the referenced type for modifiers and typedefs.
    size_or_type: u32,
    members: Vec<Member>,
}

/// Parsed BTF types and strings.
pub struct Btf {
    types: Vec<Type>,
    strings: Vec<u8>,
    structs: HashMap<String, u32>,
    /// `btf_trace_*` typedefs: the prototypes of BTF tracepoints.
    typedefs: HashMap<String, u32>,
}

/// An argument of a BTF tracepoint, as far as the programs care.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Arg {
    /// An integer (or `bool`, or enum) of this many bytes.
    Int(u32),
    /// A pointer to a struct of this name, or to anything else (`""`).
    Pointer(String),
    /// Anything else.
    Other,
}

/// Byte offset and size of a member found by [`Btf::member`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemberLocation {
    pub offset: u32,
    pub size: u32,
}

fn u16_at(data: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(data.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(data: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(data.get(at..at + 4)?.try_into().ok()?))
}

impl Btf {
    /// Reads the running kernel's BTF.
    pub fn from_kernel() -> Result<Self> {
        Self::read(Path::new(VMLINUX))
    }

    pub fn read(path: &Path) -> Result<Self> {
        let data =
            fs::read(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        Self::parse(&data).ok_or_else(|| {
            Error::UnsupportedKernel(format!(
                "{} is not little-endian BTF this tracer can read",
                path.display()
            ))
        })
    }

    /// Parses raw BTF (little-endian); `None` if it is malformed.
    pub fn parse(data: &[u8]) -> Option<Self> {
        if u16_at(data, 0)? != MAGIC {
            return None;
        }
        let hdr_len = u32_at(data, 4)? as usize;
        let type_off = u32_at(data, 8)? as usize;
        let type_len = u32_at(data, 12)? as usize;
        let str_off = u32_at(data, 16)? as usize;
        let str_len = u32_at(data, 20)? as usize;
        let types_data = data.get(hdr_len + type_off..hdr_len + type_off + type_len)?;
        let strings = data
            .get(hdr_len + str_off..hdr_len + str_off + str_len)?
            .to_vec();

        // Type ids start at 1; id 0 is `void`.
        let mut types = vec![Type {
            name: 0,
            kind: 0,
            size_or_type: 0,
            members: Vec::new(),
        }];
        let mut at = 0;
        while at < types_data.len() {
            let name = u32_at(types_data, at)?;
            let info = u32_at(types_data, at + 4)?;
            let size_or_type = u32_at(types_data, at + 8)?;
            at += 12;
            let kind = (info >> 24) & 0x1f;
            let vlen = (info & 0xffff) as usize;
            let kind_flag = info >> 31 == 1;
            let mut members = Vec::new();
            match kind {
                kind::INT | kind::VAR | kind::DECL_TAG => at += 4,
                kind::ARRAY => {
                    // The element type and count, kept as one pseudo-member.
                    members.push(Member {
                        name: 0,
                        type_id: u32_at(types_data, at)?,
                        bit_offset: u32_at(types_data, at + 8)?,
                    });
                    at += 12;
                }
                kind::STRUCT | kind::UNION => {
                    for _ in 0..vlen {
                        let offset = u32_at(types_data, at + 8)?;
                        members.push(Member {
                            name: u32_at(types_data, at)?,
                            type_id: u32_at(types_data, at + 4)?,
                            bit_offset: if kind_flag {
                                offset & 0x00ff_ffff
                            } else {
                                offset
                            },
                        });
                        at += 12;
                    }
                }
                kind::FUNC_PROTO => {
                    for _ in 0..vlen {
                        members.push(Member {
                            name: u32_at(types_data, at)?,
                            type_id: u32_at(types_data, at + 4)?,
                            bit_offset: 0,
                        });
                        at += 8;
                    }
                }
                kind::ENUM => at += 8 * vlen,
                kind::DATASEC | kind::ENUM64 => at += 12 * vlen,
                _ => {}
            }
            types.push(Type {
                name,
                kind,
                size_or_type,
                members,
            });
        }
        let mut btf = Self {
            types,
            strings,
            structs: HashMap::new(),
            typedefs: HashMap::new(),
        };
        for (id, ty) in btf.types.iter().enumerate() {
            if ty.kind == kind::STRUCT && ty.name != 0 && !ty.members.is_empty() {
                let name = btf.string(ty.name).to_owned();
                btf.structs.entry(name).or_insert(id as u32);
            }
            if ty.kind == kind::TYPEDEF && btf.string(ty.name).starts_with("btf_trace_") {
                let name = btf.string(ty.name).to_owned();
                btf.typedefs.insert(name, id as u32);
            }
        }
        Some(btf)
    }

    fn string(&self, offset: u32) -> &str {
        let start = offset as usize;
        let rest = self.strings.get(start..).unwrap_or_default();
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or("")
    }

    /// Follows typedefs and qualifiers to the type they name.
    fn resolve(&self, mut id: u32) -> Option<&Type> {
        for _ in 0..32 {
            let ty = self.types.get(id as usize)?;
            match ty.kind {
                kind::TYPEDEF | kind::VOLATILE | kind::CONST | kind::RESTRICT | kind::TYPE_TAG => {
                    id = ty.size_or_type;
                }
                _ => return Some(ty),
            }
        }
        None
    }

    /// Size in bytes of a sized type (integers, enums, structs, unions, arrays; pointers are 8).
    fn size(&self, id: u32) -> Option<u32> {
        let ty = self.resolve(id)?;
        match ty.kind {
            kind::INT | kind::ENUM | kind::ENUM64 | kind::STRUCT | kind::UNION => {
                Some(ty.size_or_type)
            }
            kind::PTR => Some(8),
            kind::ARRAY => {
                let element = ty.members.first()?;
                self.size(element.type_id)?.checked_mul(element.bit_offset)
            }
            _ => None,
        }
    }

    /// Finds member `name` of the struct or union `ty`, looking inside anonymous members.
    fn find(&self, ty: &Type, name: &str) -> Option<(u32, u32)> {
        for m in &ty.members {
            let member_name = self.string(m.name);
            if member_name == name {
                return Some((m.bit_offset, m.type_id));
            }
            if member_name.is_empty()
                && let Some(inner) = self.resolve(m.type_id)
                && matches!(inner.kind, kind::STRUCT | kind::UNION)
                && let Some((off, id)) = self.find(inner, name)
            {
                return Some((m.bit_offset + off, id));
            }
        }
        None
    }

    /// The arguments tracepoint `name` passes to a BTF tracepoint program (its prototype
    /// without the leading `void *__data`).
    pub fn tracepoint_args(&self, name: &str) -> Result<Vec<Arg>> {
        let missing = || {
            Error::UnsupportedKernel(format!(
                "BTF has no prototype of tracepoint {name} (btf_trace_{name})"
            ))
        };
        let typedef = *self
            .typedefs
            .get(&format!("btf_trace_{name}"))
            .ok_or_else(missing)?;
        let pointer = self.resolve(typedef).ok_or_else(missing)?;
        let proto = (pointer.kind == kind::PTR)
            .then(|| self.resolve(pointer.size_or_type))
            .flatten()
            .filter(|t| t.kind == kind::FUNC_PROTO)
            .ok_or_else(missing)?;
        Ok(proto
            .members
            .iter()
            .skip(1)
            .map(|param| self.arg(param.type_id))
            .collect())
    }

    fn arg(&self, id: u32) -> Arg {
        let Some(ty) = self.resolve(id) else {
            return Arg::Other;
        };
        match ty.kind {
            kind::INT | kind::ENUM | kind::ENUM64 => Arg::Int(ty.size_or_type),
            kind::PTR => Arg::Pointer(
                self.resolve(ty.size_or_type)
                    .filter(|t| matches!(t.kind, kind::STRUCT | kind::FWD))
                    .map(|t| self.string(t.name).to_owned())
                    .unwrap_or_default(),
            ),
            _ => Arg::Other,
        }
    }

    /// Byte offset and size of `path` (members joined by `.`, e.g. `se.sum_exec_runtime`)
    /// in `struct STRUCT_NAME`.
    pub fn member(&self, struct_name: &str, path: &str) -> Result<MemberLocation> {
        let missing = |what: &str| {
            Error::UnsupportedKernel(format!(
                "BTF has no {what} (looking for {struct_name}.{path})"
            ))
        };
        let id = *self
            .structs
            .get(struct_name)
            .ok_or_else(|| missing(&format!("struct {struct_name}")))?;
        let mut ty = &self.types[id as usize];
        let mut bits = 0;
        let mut type_id = id;
        for part in path.split('.') {
            let (off, member_type) = self
                .find(ty, part)
                .ok_or_else(|| missing(&format!("member {part}")))?;
            bits += off;
            type_id = member_type;
            if let Some(inner) = self.resolve(member_type) {
                ty = inner;
            }
        }
        if bits % 8 != 0 {
            return Err(missing("byte-aligned member"));
        }
        let size = self.size(type_id).ok_or_else(|| missing("sized member"))?;
        Ok(MemberLocation {
            offset: bits / 8,
            size,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Raw BTF for `struct inner { u64 a; u64 b; }; struct outer { int x; struct { struct inner in; }; }`.
    fn sample() -> Vec<u8> {
        let strings = b"\0u64\0int\0inner\0a\0b\0outer\0x\0in\0".to_vec();
        let name = |s: &str| {
            let pos = strings
                .windows(s.len() + 1)
                .position(|w| &w[..s.len()] == s.as_bytes() && w[s.len()] == 0);
            pos.unwrap() as u32
        };
        let mut types = Vec::new();
        let mut push = |words: &[u32]| {
            words
                .iter()
                .for_each(|w| types.extend_from_slice(&w.to_le_bytes()))
        };
        // 1: u64 (INT, size 8)
        push(&[name("u64"), kind::INT << 24, 8, 64]);
        // 2: int (INT, size 4)
        push(&[name("int"), kind::INT << 24, 4, 32]);
        // 3: struct inner { a: 1 @0, b: 1 @64 }
        push(&[name("inner"), (kind::STRUCT << 24) | 2, 16]);
        push(&[name("a"), 1, 0]);
        push(&[name("b"), 1, 64]);
        // 4: anonymous struct { in: 3 @0 }
        push(&[0, (kind::STRUCT << 24) | 1, 16]);
        push(&[name("in"), 3, 0]);
        // 5: struct outer { x: 2 @0, (anon): 4 @64 }
        push(&[name("outer"), (kind::STRUCT << 24) | 2, 24]);
        push(&[name("x"), 2, 0]);
        push(&[0, 4, 64]);
        let mut data = Vec::new();
        data.extend_from_slice(&MAGIC.to_le_bytes());
        data.extend_from_slice(&[1, 0]);
        for w in [
            24u32,
            0,
            types.len() as u32,
            types.len() as u32,
            strings.len() as u32,
        ] {
            data.extend_from_slice(&w.to_le_bytes());
        }
        data.extend_from_slice(&types);
        data.extend_from_slice(&strings);
        data
    }

    #[test]
    fn members_are_found_through_anonymous_structs() {
        let btf = Btf::parse(&sample()).unwrap();
        assert_eq!(
            btf.member("outer", "x").unwrap(),
            MemberLocation { offset: 0, size: 4 }
        );
        assert_eq!(
            btf.member("outer", "in.b").unwrap(),
            MemberLocation {
                offset: 16,
                size: 8
            }
        );
        assert!(btf.member("outer", "in.c").is_err());
        assert!(btf.member("nothing", "x").is_err());
    }

    #[test]
    fn garbage_is_rejected() {
        assert!(Btf::parse(b"not btf at all, not even close").is_none());
        assert!(Btf::parse(&sample()[..30]).is_none());
    }

    #[test]
    fn finds_task_struct_counters_of_this_kernel() {
        if !Path::new(VMLINUX).exists() {
            assert!(std::env::var_os("CI").is_none(), "CI's kernel has BTF");
            eprintln!("skipped: no {VMLINUX} on this kernel");
            return;
        }
        let btf = Btf::from_kernel().unwrap();
        let nvcsw = btf.member("task_struct", "nvcsw").unwrap();
        let nivcsw = btf.member("task_struct", "nivcsw").unwrap();
        assert_eq!((nvcsw.size, nivcsw.size), (8, 8));
        assert_eq!(nivcsw.offset, nvcsw.offset + 8);
        assert_eq!(
            btf.member("task_struct", "se.sum_exec_runtime")
                .unwrap()
                .size,
            8
        );
        assert_eq!(
            btf.member("task_struct", "sched_info.run_delay")
                .unwrap()
                .size,
            8
        );
        let task = Arg::Pointer("task_struct".into());
        assert_eq!(
            btf.tracepoint_args("sched_switch").unwrap(),
            [Arg::Int(1), task.clone(), task.clone(), Arg::Int(4)]
        );
        assert_eq!(btf.tracepoint_args("sched_wakeup").unwrap(), [task]);
        assert!(btf.tracepoint_args("no_such_tracepoint").is_err());
    }
}
