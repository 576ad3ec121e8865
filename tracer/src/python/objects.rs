//! Python objects read out of another process: strings, small ints, dicts, and the
//! attributes of instances. Every count read from memory is bounded before it is used, and
//! every object's type is checked by its flags before it is decoded.

use std::collections::HashMap;

use super::{
    Error, Result,
    layout::{self, Instances, Keys, Layout, Long, flags},
    memory::{Memory, at, before},
};

/// How much of a type's name is read to compare it.
const TYPE_NAME_PREFIX: usize = 32;

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
    /// The keys of split tables already read (every instance of a class shares them).
    split_keys: HashMap<u64, Vec<u64>>,
    /// The start of `tp_name` of the types looked at by name.
    type_names: HashMap<u64, Vec<u8>>,
}

/// The most entries read from one set.
pub const MAX_SET_ENTRIES: u64 = 1 << 20;

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

fn word(bytes: &[u8], at: u64) -> u64 {
    let at = at as usize;
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

/// How many bytes past a `str` header are read with it: short strings come in one read.
const STRING_PREFETCH: u64 = 64;

impl<'a, M: Memory> Reader<'a, M> {
    pub fn new(mem: &'a M, layout: &'a Layout, types: &'a mut HashMap<u64, TypeInfo>) -> Self {
        Self {
            mem,
            layout,
            types,
            strings: HashMap::new(),
            split_keys: HashMap::new(),
            type_names: HashMap::new(),
        }
    }

    /// What tracer needs of the type object at `ty`.
    fn type_info(&mut self, ty: u64) -> Result<TypeInfo> {
        if let Some(info) = self.types.get(&ty) {
            return Ok(*info);
        }
        let l = self.layout;
        let span = l.tp_flags.max(l.tp_basicsize).max(l.tp_dictoffset) + 8;
        let bytes = self.mem.bytes(ty, span as usize)?;
        let info = TypeInfo {
            flags: word(&bytes, l.tp_flags),
            basicsize: word(&bytes, l.tp_basicsize),
            dictoffset: word(&bytes, l.tp_dictoffset) as i64,
        };
        // Bounded so that garbage read as types does not grow the cache without end.
        if self.types.len() < 4096 {
            self.types.insert(ty, info);
        }
        Ok(info)
    }

    /// The type of `obj`.
    pub fn type_of(&mut self, obj: u64) -> Result<(u64, TypeInfo)> {
        let ty = self.mem.ptr(at(obj, self.layout.ob_type)?)?;
        Ok((ty, self.type_info(ty)?))
    }

    pub fn is_dict(&mut self, obj: u64) -> Result<bool> {
        Ok(self.type_of(obj)?.1.flags & flags::DICT_SUBCLASS != 0)
    }

    /// A `str` object's header and, if they follow it closely, its characters: (length in
    /// code points, kind, data address, the bytes read from the data address on).
    fn string_header(&mut self, obj: u64) -> Result<(u64, u8, u64, Vec<u8>)> {
        let l = self.layout;
        let header = l.unicode_compact_size;
        // The characters of a short string come with its header; near the end of a mapping
        // only the header every string has (`PyASCIIObject`) is read.
        let bytes = self
            .mem
            .bytes(obj, (header + STRING_PREFETCH) as usize)
            .or_else(|_| self.mem.bytes(obj, l.unicode_ascii_size as usize))?;
        let ty = word(&bytes, l.ob_type);
        if self.type_info(ty)?.flags & flags::UNICODE_SUBCLASS == 0 {
            return Err(invalid(format!("{obj:#x} is not a str")));
        }
        let length = word(&bytes, l.unicode_length);
        let state = u32::from_le_bytes(
            bytes[l.unicode_state as usize..l.unicode_state as usize + 4]
                .try_into()
                .expect("4 bytes"),
        );
        let (kind, compact, ascii) = l.string_state.decode(state);
        if length > MAX_STRING_CHARS {
            return Err(invalid(format!("string of {length} code points")));
        }
        if ascii && kind != 1 {
            return Err(invalid(format!("ASCII string of kind {kind}")));
        }
        let (data, inline) = match (compact, ascii) {
            (true, true) => (at(obj, l.unicode_ascii_size)?, l.unicode_ascii_size),
            (true, false) => (at(obj, header)?, header),
            // A legacy string: its data has its own allocation (`data.any`).
            (false, _) => (self.mem.ptr(at(obj, header)?)?, u64::MAX),
        };
        let prefetched = bytes
            .get(inline as usize..)
            .map(<[u8]>::to_vec)
            .unwrap_or_default();
        Ok((length, kind, data, prefetched))
    }

    /// A `str` object's text, whole.
    pub fn string(&mut self, obj: u64) -> Result<String> {
        let (length, kind, data, prefetched) = self.string_header(obj)?;
        let size = (length * u64::from(kind)) as usize;
        match prefetched.get(..size) {
            Some(bytes) => decode_unicode(kind, bytes),
            None => decode_unicode(kind, &self.mem.bytes(data, size)?),
        }
    }

    /// Whether `obj` is a `str` equal to `text`, reading its text only when its length
    /// matches.
    pub fn string_is(&mut self, obj: u64, text: &str) -> Result<bool> {
        if let Some(known) = self.strings.get(&obj) {
            return Ok(known == text);
        }
        let (length, kind, data, prefetched) = self.string_header(obj)?;
        if length != text.chars().count() as u64 {
            return Ok(false);
        }
        let size = (length * u64::from(kind)) as usize;
        let string = match prefetched.get(..size) {
            Some(bytes) => decode_unicode(kind, bytes)?,
            None => decode_unicode(kind, &self.mem.bytes(data, size)?)?,
        };
        let same = string == text;
        if self.strings.len() < 4096 {
            self.strings.insert(obj, string);
        }
        Ok(same)
    }

    /// The value of an `int` object that fits in 60 bits; `None` for other objects
    /// (`None`, or anything else).
    pub fn small_int(&mut self, obj: u64) -> Result<Option<i64>> {
        // The header, the size word and two digits: what any int holds (an int object
        // takes at least that much).
        let l = self.layout;
        let end = l.ob_type.max(l.long_size).max(l.long_digits) + 8;
        let bytes = self.mem.bytes(obj, end as usize)?;
        if self.type_info(word(&bytes, l.ob_type))?.flags & flags::LONG_SUBCLASS == 0 {
            return Ok(None);
        }
        let size = word(&bytes, l.long_size);
        let digits = l.long_digits as usize;
        let digit = |i: usize| {
            u32::from_le_bytes(
                bytes[digits + 4 * i..digits + 4 + 4 * i]
                    .try_into()
                    .expect("4"),
            )
        };
        Ok(decode_long(self.layout.long, size, [digit(0), digit(1)]))
    }

    /// The (key, value) pairs of a dict object.
    pub fn dict_items(&mut self, dict: u64) -> Result<Vec<(u64, u64)>> {
        let l = self.layout;
        let end = l.ob_type.max(l.ma_keys).max(l.ma_values) + 8;
        let bytes = self.mem.bytes(dict, end as usize)?;
        if self.type_info(word(&bytes, l.ob_type))?.flags & flags::DICT_SUBCLASS == 0 {
            return Err(invalid(format!("{dict:#x} is not a dict")));
        }
        let keys = word(&bytes, l.ma_keys);
        let values = word(&bytes, l.ma_values);
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

    /// The entries of a keys object, in order, as (key, value) with zeros where an entry is
    /// empty or deleted (a split table's entries have no value).
    fn entries(&mut self, keys: u64) -> Result<Vec<(u64, u64)>> {
        let mem = self.mem;
        let (entries, count, entry_size, key_at, value_at) = match self.layout.keys {
            Keys::Sized => {
                let header = mem.bytes(keys, 40)?;
                let (size, nentries) = (word(&header, 8), word(&header, 32));
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
                let header = mem.bytes(keys, 32)?;
                let (log2_size, log2_index_bytes, kind) = (header[8], header[9], header[10]);
                let nentries = word(&header, 24);
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
        let mut out = Vec::with_capacity(count as usize);
        let mut first = 0;
        while first < count {
            let n = CHUNK.min(count - first);
            let chunk = mem.bytes(at(entries, first * entry_size)?, (n * entry_size) as usize)?;
            for entry in chunk.chunks_exact(entry_size as usize) {
                out.push((word(entry, key_at), word(entry, value_at)));
            }
            first += n;
        }
        Ok(out)
    }

    /// The pairs of a keys object; with `values` (a `PyDictValues`), a split table whose
    /// values live there, in entry order.
    pub fn keys_items(&mut self, keys: u64, values: Option<u64>) -> Result<Vec<(u64, u64)>> {
        let Some(values) = values else {
            return Ok(self
                .entries(keys)?
                .into_iter()
                .filter(|&(k, v)| k != 0 && v != 0)
                .collect());
        };
        // Split keys are shared by every instance of a class: read once per reading.
        let shared = match self.split_keys.get(&keys) {
            Some(shared) => shared.clone(),
            None => {
                let shared: Vec<u64> = self.entries(keys)?.into_iter().map(|(k, _)| k).collect();
                if self.split_keys.len() < 256 {
                    self.split_keys.insert(keys, shared.clone());
                }
                shared
            }
        };
        let mut count = shared.len() as u64;
        if self.layout.dict_values_start > 0 {
            // 3.13 on: the values header starts with their capacity.
            count = count.min(u64::from(self.mem.u8(values)?));
        }
        let raw = self.mem.bytes(
            at(values, self.layout.dict_values_start)?,
            count as usize * 8,
        )?;
        Ok(shared
            .iter()
            .zip(raw.chunks_exact(8))
            .map(|(&k, v)| (k, u64::from_le_bytes(v.try_into().expect("8 bytes"))))
            .filter(|&(k, v)| k != 0 && v != 0)
            .collect())
    }

    /// The attributes of an instance of a Python class, as (name object, value) pairs.
    pub fn instance_items(&mut self, obj: u64) -> Result<Vec<(u64, u64)>> {
        // The words before the object up to its managed dict pointer (where 3.11 on keep
        // the dict or values of instances with a managed dict) and its header, in one
        // read; the word before that is 3.11's values pointer.
        let l = self.layout;
        let lead = if l.instances == Instances::Managed311 {
            l.managed_dict_before + 8
        } else {
            l.managed_dict_before
        };
        let header = l.ob_type + 8;
        let bytes = self
            .mem
            .bytes(before(obj, lead)?, (lead + header) as usize)
            .or_else(|_| {
                // An object at the start of a mapping has nothing readable before it (an
                // instance without a managed dict).
                let mut b = vec![0; lead as usize];
                b.extend(self.mem.bytes(obj, header as usize)?);
                Ok::<_, Error>(b)
            })?;
        let ty = word(&bytes, lead + l.ob_type);
        let dict_before = l.managed_dict_before;
        let info = self.type_info(ty)?;
        let before_obj = |n: u64| word(&bytes, lead - n);
        let managed = info.flags & flags::MANAGED_DICT != 0;
        match self.layout.instances {
            Instances::Managed311 if managed => {
                let dict = before_obj(dict_before);
                if dict != 0 {
                    return self.dict_items(dict);
                }
                let values = before_obj(dict_before + 8);
                if values == 0 {
                    return Ok(Vec::new());
                }
                let keys = self.cached_keys(ty, info)?;
                self.keys_items(keys, Some(values))
            }
            Instances::Managed312 if managed => {
                let word = before_obj(dict_before);
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
                let dict = before_obj(dict_before);
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
                if self.mem.u8(at(values, 3)?)? == 0 {
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
                let dict = self.mem.ptr(at(obj, info.dictoffset as u64)?)?;
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

    /// Whether the type of `obj` has one of `names` as its `tp_name`.
    fn type_named(&mut self, obj: u64, names: &[&str]) -> Result<bool> {
        let ty = self.mem.ptr(at(obj, self.layout.ob_type)?)?;
        if !self.type_names.contains_key(&ty) {
            let name = self.mem.ptr(at(ty, self.layout.tp_name)?)?;
            // Not past its page: the name may end just before unmapped memory. A name that
            // cannot be read is no name looked for.
            let len = TYPE_NAME_PREFIX.min(4096 - (name % 4096) as usize);
            let mut bytes = self.mem.bytes(name, len).unwrap_or_default();
            if let Some(end) = bytes.iter().position(|&b| b == 0) {
                bytes.truncate(end);
            }
            if self.type_names.len() < 4096 {
                self.type_names.insert(ty, bytes.clone());
            }
            return Ok(names.iter().any(|n| n.as_bytes() == bytes));
        }
        Ok(names.iter().any(|n| n.as_bytes() == self.type_names[&ty]))
    }

    /// The items of a `set` object: the keys in its hash table, less the dummies of
    /// deleted entries.
    pub fn set_items(&mut self, set: u64) -> Result<Vec<u64>> {
        if !self.type_named(set, &["set"])? {
            return Err(invalid(format!("{set:#x} is not a set")));
        }
        let (used_at, mask_at, table_at) = self.layout.set_fields();
        let header = self.mem.bytes(set, (table_at + 8) as usize)?;
        let (used, mask) = (word(&header, used_at), word(&header, mask_at));
        let size = mask.wrapping_add(1);
        if !size.is_power_of_two() || size > MAX_SET_ENTRIES || used > size {
            return Err(invalid(format!(
                "set {set:#x}: {used} used of {size} entries"
            )));
        }
        let table = word(&header, table_at);
        let mut keys = Vec::with_capacity(used as usize);
        for start in (0..size).step_by(CHUNK as usize) {
            let n = CHUNK.min(size - start);
            let bytes = self.mem.bytes(
                at(table, start * layout::SET_ENTRY_SIZE)?,
                (n * layout::SET_ENTRY_SIZE) as usize,
            )?;
            keys.extend(
                bytes
                    .chunks_exact(layout::SET_ENTRY_SIZE as usize)
                    .map(|entry| word(entry, 0))
                    .filter(|&key| key != 0),
            );
        }
        // A deleted entry's key is the set dummy, of a type of its own.
        let mut items = Vec::with_capacity(keys.len());
        for key in keys {
            if !self.type_named(key, &["<dummy key> type"]).unwrap_or(true) {
                items.push(key);
            }
        }
        Ok(items)
    }

    /// The object a `weakref.ref` refers to; None when it is dead (or `obj` is no weak
    /// reference).
    pub fn weakref_target(&mut self, obj: u64) -> Result<Option<u64>> {
        // `weakref` up to 3.8, `weakref.ReferenceType` from 3.9.
        if !self.type_named(obj, &["weakref", "weakref.ReferenceType"])? {
            return Ok(None);
        }
        let target = self.mem.ptr(at(obj, self.layout.first_field())?)?;
        // A dead reference points at `None`, whose type is `NoneType`.
        if target == 0 || self.type_named(target, &["NoneType"])? {
            return Ok(None);
        }
        Ok(Some(target))
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
