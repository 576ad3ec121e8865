//! Python objects read out of another process: strings, small ints, dicts, and the
//! attributes of instances. Every count read from memory is bounded before it is used, and
//! every object's type is checked by its flags before it is decoded.

use std::collections::HashMap;

use super::{
    Error, Result,
    layout::{self, Instances, Keys, Layout, Long, flags},
    memory::{Memory, at, before},
};

/// The most entries read from one dict.
pub const MAX_DICT_ENTRIES: u64 = 1 << 20;
/// The longest string decoded, in code points; longer ones are refused, not cut.
pub const MAX_STRING_CHARS: u64 = 1 << 16;
/// Entries read per chunk.
const CHUNK: u64 = 4096;

/// What tracer needs of a type object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TypeInfo {
    pub flags: u64,
    pub basicsize: u64,
    pub dictoffset: i64,
}

/// Reads objects of one process with one layout, remembering the types it has seen.
pub struct Reader<'a, M: Memory> {
    pub mem: &'a M,
    pub layout: &'a Layout,
    types: &'a mut HashMap<u64, TypeInfo>,
    /// Short strings already read (dict keys repeat: every `Thread` has the same ones).
    strings: HashMap<u64, String>,
}

fn invalid(what: String) -> Error {
    Error::Invalid(what)
}

/// Decodes the code points of a string of `kind` (1, 2 or 4 bytes each). Code points that
/// are not Unicode scalar values (lone surrogates) become U+FFFD.
pub fn decode_unicode(kind: u8, bytes: &[u8]) -> Result<String> {
    let units: Box<dyn Iterator<Item = u32> + '_> = match kind {
        1 => Box::new(bytes.iter().map(|&b| u32::from(b))),
        2 => Box::new(
            bytes
                .chunks_exact(2)
                .map(|c| u32::from(u16::from_le_bytes([c[0], c[1]]))),
        ),
        4 => Box::new(
            bytes
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        ),
        _ => return Err(invalid(format!("string of kind {kind}"))),
    };
    Ok(units
        .map(|u| char::from_u32(u).unwrap_or(char::REPLACEMENT_CHARACTER))
        .collect())
}

/// The value of an `int` from its size word and first two 30-bit digits; `None` when it
/// does not fit in 60 bits.
pub fn decode_long(long: Long, size_word: u64, digits: [u32; 2]) -> Option<i64> {
    let (ndigits, negative) = match long {
        Long::SignedSize => {
            let size = size_word as i64;
            (size.unsigned_abs(), size < 0)
        }
        Long::Tagged => {
            let sign = size_word & 3;
            if sign == 1 {
                return Some(0);
            }
            (size_word >> 3, sign == 2)
        }
    };
    if ndigits > 2 {
        return None;
    }
    let mask = (1u32 << 30) - 1;
    let mut value = 0i64;
    for (i, digit) in digits.iter().take(ndigits as usize).enumerate() {
        value |= i64::from(digit & mask) << (30 * i);
    }
    Some(if negative { -value } else { value })
}

impl<'a, M: Memory> Reader<'a, M> {
    pub fn new(mem: &'a M, layout: &'a Layout, types: &'a mut HashMap<u64, TypeInfo>) -> Self {
        Self {
            mem,
            layout,
            types,
            strings: HashMap::new(),
        }
    }

    /// The type of `obj`.
    pub fn type_of(&mut self, obj: u64) -> Result<(u64, TypeInfo)> {
        let ty = self.mem.ptr(at(obj, layout::OB_TYPE)?)?;
        if let Some(info) = self.types.get(&ty) {
            return Ok((ty, *info));
        }
        let info = TypeInfo {
            flags: self.mem.u64(at(ty, layout::TP_FLAGS)?)?,
            basicsize: self.mem.u64(at(ty, layout::TP_BASICSIZE)?)?,
            dictoffset: self.mem.i64(at(ty, layout::TP_DICTOFFSET)?)?,
        };
        // Bounded so that garbage read as types does not grow the cache without end.
        if self.types.len() < 4096 {
            self.types.insert(ty, info);
        }
        Ok((ty, info))
    }

    fn has_flag(&mut self, obj: u64, flag: u64) -> Result<bool> {
        Ok(self.type_of(obj)?.1.flags & flag != 0)
    }

    pub fn is_dict(&mut self, obj: u64) -> Result<bool> {
        self.has_flag(obj, flags::DICT_SUBCLASS)
    }

    /// The header of a `str`: (length in code points, kind, data address).
    fn string_header(&mut self, obj: u64) -> Result<(u64, u8, u64)> {
        if !self.has_flag(obj, flags::UNICODE_SUBCLASS)? {
            return Err(invalid(format!("{obj:#x} is not a str")));
        }
        let l = self.layout;
        let length = self.mem.u64(at(obj, l.unicode_length)?)?;
        let state = self.mem.u32(at(obj, l.unicode_state)?)?;
        let kind = ((state >> 2) & 7) as u8;
        let compact = (state >> 5) & 1 != 0;
        let ascii = (state >> 6) & 1 != 0;
        if length > MAX_STRING_CHARS {
            return Err(invalid(format!("string of {length} code points")));
        }
        let data = match (compact, ascii) {
            (true, true) => at(obj, l.unicode_ascii_size)?,
            (true, false) => at(obj, l.unicode_compact_size)?,
            // A legacy string: its data has its own allocation (`data.any`).
            (false, _) => self.mem.ptr(at(obj, l.unicode_compact_size)?)?,
        };
        if ascii && kind != 1 {
            return Err(invalid(format!("ASCII string of kind {kind}")));
        }
        Ok((length, kind, data))
    }

    /// A `str` object's text, whole.
    pub fn string(&mut self, obj: u64) -> Result<String> {
        let (length, kind, data) = self.string_header(obj)?;
        let bytes = self.mem.bytes(data, (length * u64::from(kind)) as usize)?;
        decode_unicode(kind, &bytes)
    }

    /// Whether `obj` is a `str` equal to `text`, reading its text only when its length
    /// matches.
    pub fn string_is(&mut self, obj: u64, text: &str) -> Result<bool> {
        if let Some(known) = self.strings.get(&obj) {
            return Ok(known == text);
        }
        let (length, _, _) = self.string_header(obj)?;
        if length != text.chars().count() as u64 {
            return Ok(false);
        }
        let string = self.string(obj)?;
        let same = string == text;
        if self.strings.len() < 4096 {
            self.strings.insert(obj, string);
        }
        Ok(same)
    }

    /// The value of an `int` object that fits in 60 bits; `None` for other objects
    /// (`None`, or anything else).
    pub fn small_int(&mut self, obj: u64) -> Result<Option<i64>> {
        if !self.has_flag(obj, flags::LONG_SUBCLASS)? {
            return Ok(None);
        }
        let size = self.mem.u64(at(obj, 16)?)?;
        let mut digits = [0u32; 2];
        // Read only the digits the object has (a one-digit int has no second one).
        let ndigits = match self.layout.long {
            Long::SignedSize => (size as i64).unsigned_abs(),
            Long::Tagged => size >> 3,
        };
        for (i, d) in digits.iter_mut().enumerate().take(ndigits.min(2) as usize) {
            *d = self.mem.u32(at(obj, 24 + 4 * i as u64)?)?;
        }
        Ok(decode_long(self.layout.long, size, digits))
    }

    /// The (key, value) pairs of a dict object.
    pub fn dict_items(&mut self, dict: u64) -> Result<Vec<(u64, u64)>> {
        if !self.is_dict(dict)? {
            return Err(invalid(format!("{dict:#x} is not a dict")));
        }
        let keys = self.mem.ptr(at(dict, layout::MA_KEYS)?)?;
        let values = self.mem.ptr(at(dict, layout::MA_VALUES)?)?;
        self.keys_items(keys, (values != 0).then_some(values))
    }

    /// The value for string key `key` in a dict object.
    pub fn dict_get(&mut self, dict: u64, key: &str) -> Result<Option<u64>> {
        for (k, v) in self.dict_items(dict)? {
            // Keys of other types (or unreadable ones) are not the one looked for.
            if self.string_is(k, key).unwrap_or(false) {
                return Ok(Some(v));
            }
        }
        Ok(None)
    }

    /// The pairs of a keys object; with `values` (a `PyDictValues`), a split table whose
    /// values live there, in entry order.
    pub fn keys_items(&mut self, keys: u64, values: Option<u64>) -> Result<Vec<(u64, u64)>> {
        let mem = self.mem;
        let (entries, count, entry_size, key_at, value_at) = match self.layout.keys {
            Keys::Sized => {
                let size = mem.u64(at(keys, 8)?)?;
                let nentries = mem.u64(at(keys, 32)?)?;
                if !size.is_power_of_two() || size > 1 << 32 || nentries > size {
                    return Err(invalid(format!(
                        "dict keys of size {size} with {nentries} entries"
                    )));
                }
                let index_size = match size {
                    0..=0xff => 1,
                    0x100..=0xffff => 2,
                    _ => 4,
                };
                (at(keys, 40 + size * index_size)?, nentries, 24, 8, 16)
            }
            Keys::Log2 => {
                let header = mem.bytes(at(keys, 8)?, 24)?;
                let (log2_size, log2_index_bytes, kind) = (header[0], header[1], header[2]);
                let nentries = u64::from_le_bytes(header[16..24].try_into().expect("8 bytes"));
                if log2_size > 32
                    || log2_index_bytes < log2_size
                    || log2_index_bytes > log2_size + 3
                    || kind > 2
                    || nentries > 1 << log2_size
                {
                    return Err(invalid(format!(
                        "dict keys of log2 size {log2_size}, index bytes {log2_index_bytes}, \
                         kind {kind}, {nentries} entries"
                    )));
                }
                let entries = at(keys, 32 + (1u64 << log2_index_bytes))?;
                if kind == 0 {
                    (entries, nentries, 24, 8, 16)
                } else {
                    (entries, nentries, 16, 0, 8)
                }
            }
        };
        if count > MAX_DICT_ENTRIES {
            return Err(invalid(format!("dict of {count} entries")));
        }
        let split_values = match values {
            None => None,
            Some(values) => {
                let mut count = count;
                if self.layout.dict_values_start > 0 {
                    // 3.13 on: the values header starts with their capacity.
                    count = count.min(u64::from(mem.u8(values)?));
                }
                let raw = mem.bytes(
                    at(values, self.layout.dict_values_start)?,
                    count as usize * 8,
                )?;
                Some(
                    raw.chunks_exact(8)
                        .map(|w| u64::from_le_bytes(w.try_into().expect("8 bytes")))
                        .collect::<Vec<_>>(),
                )
            }
        };
        let mut items = Vec::new();
        let mut first = 0;
        while first < count {
            let n = CHUNK.min(count - first);
            let chunk = mem.bytes(at(entries, first * entry_size)?, (n * entry_size) as usize)?;
            for (i, entry) in chunk.chunks_exact(entry_size as usize).enumerate() {
                let word = |offset: usize| {
                    u64::from_le_bytes(entry[offset..offset + 8].try_into().expect("8 bytes"))
                };
                let key = word(key_at);
                let value = match &split_values {
                    Some(values) => values.get(first as usize + i).copied().unwrap_or(0),
                    None => word(value_at),
                };
                if key != 0 && value != 0 {
                    items.push((key, value));
                }
            }
            first += n;
        }
        Ok(items)
    }

    /// The attributes of an instance of a Python class, as (name object, value) pairs.
    pub fn instance_items(&mut self, obj: u64) -> Result<Vec<(u64, u64)>> {
        let (ty, info) = self.type_of(obj)?;
        let managed = info.flags & flags::MANAGED_DICT != 0;
        let mem = self.mem;
        match self.layout.instances {
            Instances::Managed311 if managed => {
                let dict = mem.ptr(before(obj, 24)?)?;
                if dict != 0 {
                    return self.dict_items(dict);
                }
                let values = mem.ptr(before(obj, 32)?)?;
                if values == 0 {
                    return Ok(Vec::new());
                }
                let keys = self.cached_keys(ty, info)?;
                self.keys_items(keys, Some(values))
            }
            Instances::Managed312 if managed => {
                let word = mem.ptr(before(obj, 24)?)?;
                if word & 1 != 0 {
                    let keys = self.cached_keys(ty, info)?;
                    self.keys_items(keys, Some(word + 1))
                } else if word != 0 {
                    self.dict_items(word)
                } else {
                    Ok(Vec::new())
                }
            }
            Instances::Inline313 if managed || info.flags & flags::INLINE_VALUES != 0 => {
                let dict = mem.ptr(before(obj, 24)?)?;
                if dict != 0 {
                    return self.dict_items(dict);
                }
                if info.flags & flags::INLINE_VALUES == 0 {
                    return Ok(Vec::new());
                }
                if info.basicsize > 1 << 16 {
                    return Err(invalid(format!("type of basic size {}", info.basicsize)));
                }
                let values = at(obj, info.basicsize)?;
                // `valid` is the fourth byte of the values header.
                if mem.u8(at(values, 3)?)? == 0 {
                    return Ok(Vec::new());
                }
                let keys = self.cached_keys(ty, info)?;
                self.keys_items(keys, Some(values))
            }
            _ => {
                if info.dictoffset <= 0 || info.dictoffset > 1 << 16 {
                    return Err(invalid(format!(
                        "instance dict at offset {}",
                        info.dictoffset
                    )));
                }
                let dict = mem.ptr(at(obj, info.dictoffset as u64)?)?;
                if dict == 0 {
                    return Ok(Vec::new());
                }
                self.dict_items(dict)
            }
        }
    }

    /// The shared keys of the instances of a class (`ht_cached_keys`).
    fn cached_keys(&mut self, ty: u64, info: TypeInfo) -> Result<u64> {
        if info.flags & flags::HEAPTYPE == 0 {
            return Err(invalid(format!("{ty:#x} is not a heap type")));
        }
        let keys = self.mem.ptr(at(ty, self.layout.ht_cached_keys())?)?;
        if keys == 0 {
            return Err(invalid(format!("type {ty:#x} has no cached keys")));
        }
        Ok(keys)
    }

    /// The values of the named attributes of an instance, in the order of `names`.
    pub fn attributes<const N: usize>(
        &mut self,
        obj: u64,
        names: [&str; N],
    ) -> Result<[Option<u64>; N]> {
        let mut found = [None; N];
        for (key, value) in self.instance_items(obj)? {
            for (slot, name) in found.iter_mut().zip(names) {
                if slot.is_none() && self.string_is(key, name).unwrap_or(false) {
                    *slot = Some(value);
                    break;
                }
            }
            if found.iter().all(Option::is_some) {
                break;
            }
        }
        Ok(found)
    }
}
