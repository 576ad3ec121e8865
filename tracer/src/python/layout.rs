//! Where CPython keeps what tracer reads, by version.
//!
//! 3.8 to 3.12 have no description of their own layout: the offsets below were read from the
//! debug information of release builds of each version (x86-64, GIL build). From 3.13 the
//! interpreter starts `_PyRuntime` with a table of offsets meant for out-of-process tools,
//! `_Py_DebugOffsets`, which [`Layout::from_debug_offsets`] reads; 3.14 extended that table.

use std::fmt;

use super::{Error, Result};

/// A CPython version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    pub major: u8,
    pub minor: u8,
    pub micro: u8,
}

impl Version {
    pub const fn new(major: u8, minor: u8, micro: u8) -> Self {
        Self {
            major,
            minor,
            micro,
        }
    }

    /// From `PY_VERSION_HEX` (`0x030b02f0` is 3.11.2 final).
    pub fn from_hex(hex: u64) -> Self {
        Self::new((hex >> 24) as u8, (hex >> 16) as u8, (hex >> 8) as u8)
    }

    /// From a file name such as `libpython3.10.so.1.0` or `python3.9`.
    pub fn from_file_name(name: &str) -> Option<Self> {
        let (_, rest) = name.rsplit_once("python")?;
        let (major, rest) = rest.split_once('.')?;
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        Some(Self::new(
            major.parse().ok()?,
            rest[..digits].parse().ok()?,
            0,
        ))
    }

    pub const fn at_least(self, major: u8, minor: u8) -> bool {
        self.major > major || (self.major == major && self.minor >= minor)
    }

    /// Whether tracer knows this version's layout.
    pub const fn supported(self) -> bool {
        self.major == 3 && self.minor >= 8 && self.minor <= 15
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)?;
        if self.micro > 0 {
            write!(f, ".{}", self.micro)?;
        }
        Ok(())
    }
}

/// `PyObject.ob_type`.
pub const OB_TYPE: u64 = 8;
/// `PyTypeObject` fields, the same in every supported version.
pub const TP_NAME: u64 = 24;
pub const TP_BASICSIZE: u64 = 32;
pub const TP_FLAGS: u64 = 168;
pub const TP_DICTOFFSET: u64 = 288;
/// `PySetObject.used`, `mask`, `table`, and the size of a `setentry` (key, hash): the same
/// in every supported version with a GIL.
pub const SET_USED: u64 = 24;
pub const SET_MASK: u64 = 32;
pub const SET_TABLE: u64 = 40;
pub const SET_ENTRY_SIZE: u64 = 16;
/// `PyWeakReference.wr_object`.
pub const WR_OBJECT: u64 = 16;
/// `PyModuleObject.md_dict`.
pub const MD_DICT: u64 = 16;
/// `PyDictObject.ma_keys`, `ma_values`.
pub const MA_KEYS: u64 = 32;
pub const MA_VALUES: u64 = 40;
/// `PyHeapTypeObject.ht_cached_keys` lies this far after the `PyTypeObject` it starts with:
/// the async, number, mapping, sequence and buffer slot tables (55 pointers) and
/// `ht_name`, `ht_slots`, `ht_qualname`.
pub const HT_CACHED_KEYS_AFTER_TYPE: u64 = 58 * 8;
/// `sizeof(struct _gil_runtime_state)` (3.8 to 3.14, GIL builds).
pub const GIL_STATE_SIZE: u64 = 208;

/// Type flags (`Py_TPFLAGS_*`).
pub mod flags {
    pub const INLINE_VALUES: u64 = 1 << 2;
    pub const MANAGED_DICT: u64 = 1 << 4;
    pub const HEAPTYPE: u64 = 1 << 9;
    pub const LONG_SUBCLASS: u64 = 1 << 24;
    pub const UNICODE_SUBCLASS: u64 = 1 << 28;
    pub const DICT_SUBCLASS: u64 = 1 << 29;
}

/// How a dict's keys object is laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keys {
    /// 3.8 to 3.10: `dk_size` (a count), `dk_lookup`, `dk_usable`, `dk_nentries`, indices
    /// sized by `dk_size`, then 24-byte entries (hash, key, value).
    Sized,
    /// 3.11 on: `dk_log2_size`, `dk_log2_index_bytes`, `dk_kind` bytes, then entries of
    /// 24 bytes (general) or 16 (string keys: key, value).
    Log2,
}

/// How an object's attributes are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Instances {
    /// Up to 3.10: a dict at `tp_dictoffset`.
    DictOffset,
    /// 3.11: with `Py_TPFLAGS_MANAGED_DICT`, a dict pointer 3 words and a values pointer 4
    /// words before the object.
    Managed311,
    /// 3.12: one word 3 words before the object, a dict pointer or (tagged with bit 0) a
    /// values pointer minus one.
    Managed312,
    /// 3.13 on: a dict pointer 3 words before the object; with `Py_TPFLAGS_INLINE_VALUES`
    /// the values follow the object (`tp_basicsize`), after an 8-byte header.
    Inline313,
}

/// How `int` stores its size and sign.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Long {
    /// Up to 3.11: `ob_size` is the signed digit count.
    SignedSize,
    /// 3.12 on: `lv_tag` is the digit count shifted left by 3, with the sign in bits 0-1.
    Tagged,
}

/// Offsets and encodings of one CPython version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub version: Version,
    /// `_PyRuntimeState.interpreters.head`; `interpreters.main` is the next word.
    pub runtime_interpreters_head: u64,
    /// `_PyRuntimeState.ceval.gil`, the GIL, up to 3.11.
    pub runtime_gil: Option<u64>,
    /// `PyInterpreterState.next`.
    pub interp_next: u64,
    /// `PyInterpreterState.tstate_head` / `threads.head`.
    pub interp_threads_head: u64,
    /// `PyInterpreterState.modules` / `imports.modules` (`sys.modules`).
    pub interp_modules: u64,
    /// `PyInterpreterState.ceval.gil`, a pointer to the interpreter's GIL, from 3.12.
    pub interp_gil_pointer: Option<u64>,
    /// `PyThreadState.next`.
    pub tstate_next: u64,
    /// `PyThreadState.thread_id` (`pthread_self()`, `threading.get_ident()`).
    pub tstate_thread_id: u64,
    /// `PyThreadState.native_thread_id` (the kernel tid), from 3.11.
    pub tstate_native_thread_id: Option<u64>,
    /// `PyASCIIObject.length`, `.state`, `sizeof(PyASCIIObject)`,
    /// `sizeof(PyCompactUnicodeObject)`.
    pub unicode_length: u64,
    pub unicode_state: u64,
    pub unicode_ascii_size: u64,
    pub unicode_compact_size: u64,
    pub keys: Keys,
    /// Where a split dict's values start in its `PyDictValues`.
    pub dict_values_start: u64,
    pub instances: Instances,
    pub long: Long,
    /// `sizeof(PyTypeObject)`.
    pub type_size: u64,
}

impl Layout {
    /// The layout of 3.8 to 3.12.
    pub fn builtin(version: Version) -> Result<Self> {
        let unsupported = || Error::Unsupported(format!("Python {version}"));
        if version.major != 3 {
            return Err(unsupported());
        }
        let legacy_unicode = (48, 72);
        let (head, gil, next, threads, modules, gil_ptr, thread_id, native, unicode, type_size) =
            match version.minor {
                8 => (
                    32,
                    Some(1152),
                    0,
                    8,
                    56,
                    None,
                    176,
                    None,
                    legacy_unicode,
                    416,
                ),
                9 | 10 => (
                    32,
                    Some(352),
                    0,
                    8,
                    856,
                    None,
                    176,
                    None,
                    legacy_unicode,
                    408,
                ),
                11 => (
                    40,
                    Some(360),
                    0,
                    16,
                    888,
                    None,
                    152,
                    Some(160),
                    legacy_unicode,
                    408,
                ),
                12 => (
                    40,
                    None,
                    0,
                    72,
                    944,
                    Some(384),
                    136,
                    Some(144),
                    (40, 56),
                    416,
                ),
                _ => return Err(unsupported()),
            };
        let minor = version.minor;
        Ok(Self {
            version,
            runtime_interpreters_head: head,
            runtime_gil: gil,
            interp_next: next,
            interp_threads_head: threads,
            interp_modules: modules,
            interp_gil_pointer: gil_ptr,
            tstate_next: 8,
            tstate_thread_id: thread_id,
            tstate_native_thread_id: native,
            unicode_length: 16,
            unicode_state: 32,
            unicode_ascii_size: unicode.0,
            unicode_compact_size: unicode.1,
            keys: if minor >= 11 { Keys::Log2 } else { Keys::Sized },
            dict_values_start: 0,
            instances: match minor {
                11 => Instances::Managed311,
                12 => Instances::Managed312,
                _ => Instances::DictOffset,
            },
            long: if minor >= 12 {
                Long::Tagged
            } else {
                Long::SignedSize
            },
            type_size,
        })
    }

    /// The layout described by a `_Py_DebugOffsets` table (3.13 and 3.14), given its first
    /// bytes (at least [`DEBUG_OFFSETS_LEN`]).
    pub fn from_debug_offsets(table: &[u8]) -> Result<Self> {
        let bad = |what: &str| Error::Invalid(format!("_Py_DebugOffsets: {what}"));
        if table.len() < DEBUG_OFFSETS_LEN || table[..8] != *DEBUG_COOKIE {
            return Err(bad("no `xdebugpy` cookie"));
        }
        let words: Vec<u64> = table
            .chunks_exact(8)
            .map(|w| u64::from_le_bytes(w.try_into().expect("8 bytes")))
            .collect();
        let version = Version::from_hex(words[1]);
        if !version.supported() || !version.at_least(3, 13) {
            return Err(Error::Unsupported(format!(
                "Python {version} (from its debug offsets)"
            )));
        }
        if words[2] != 0 {
            return Err(Error::Unsupported(format!(
                "free-threaded Python {version}"
            )));
        }
        // runtime_state: size, finalizing, interpreters_head.
        let head = words[5];
        // interpreter_state starts at word 6; 3.14 added `threads_main` after `threads_head`.
        let interp = |i: usize| words[6 + i];
        let threads_main = usize::from(version.at_least(3, 14));
        let interp_size = interp(0);
        let next = interp(2);
        let threads_head = interp(3);
        let modules = interp(5 + threads_main);
        let ceval_gil = interp(8 + threads_main);
        // thread_state: size, prev, next, interp, current_frame, thread_id, native_thread_id.
        // It follows interpreter_state, whose fields after those read here differ between
        // versions (13 in 3.13, 16 in 3.14): it is found by its first offsets, `prev`, `next`
        // and `interp`, which start every `PyThreadState`.
        let ts_start = (6 + 13..6 + 24)
            .find(|&i| words[i] >= 64 && words[i + 1..i + 4] == [0, 8, 16])
            .ok_or_else(|| bad("no thread state section"))?;
        let ts = |i: usize| words[ts_start + i];
        let ts_size = ts(0);
        let (thread_id, native) = thread_ids(version, &words[ts_start..])?;
        let ts_next = ts(2);
        for (name, offset, size) in [
            ("interpreter next", next, interp_size),
            ("threads head", threads_head, interp_size),
            ("modules", modules, interp_size),
            ("ceval.gil", ceval_gil, interp_size),
            ("thread next", ts_next, ts_size),
            ("thread id", thread_id, ts_size),
            ("native thread id", native, ts_size),
        ] {
            if offset.saturating_add(8) > size || size > 1 << 20 {
                return Err(bad(&format!("{name} at {offset} of {size}")));
            }
        }
        if head.saturating_add(16) > words[3] {
            return Err(bad("interpreters head outside the runtime"));
        }
        // The rest is found by content, which does not depend on the sections in between:
        // pyobject {16, 8} then type_object {size, tp_name 24, tp_repr 88, tp_flags 168}.
        let type_size = find(&words, |w| {
            w.len() >= 6 && w[0] == 16 && w[1] == 8 && w[3] == 24 && w[4] == 88 && w[5] == 168
        })
        .map(|i| words[i + 2])
        .filter(|&size| (400..=1024).contains(&size))
        .ok_or_else(|| bad("no PyTypeObject section"))?;
        // long_object {size, lv_tag 16, ob_digit 24}, bytes_object {size, ob_size 16,
        // ob_sval 32}, unicode_object {size, state, length, asciiobject_size}.
        let unicode = find(&words, |w| {
            w.len() >= 10 && w[1] == 16 && w[2] == 24 && w[4] == 16 && w[5] == 32
        })
        .map(|i| (words[i + 7], words[i + 8], words[i + 9]))
        .filter(|&(state, length, ascii)| {
            state < ascii && length < ascii && (32..=64).contains(&ascii)
        })
        .ok_or_else(|| bad("no unicode section"))?;
        Ok(Self {
            version,
            runtime_interpreters_head: head,
            runtime_gil: None,
            interp_next: next,
            interp_threads_head: threads_head,
            interp_modules: modules,
            interp_gil_pointer: Some(ceval_gil),
            tstate_next: ts_next,
            tstate_thread_id: thread_id,
            tstate_native_thread_id: Some(native),
            unicode_length: unicode.1,
            unicode_state: unicode.0,
            unicode_ascii_size: unicode.2,
            // PyCompactUnicodeObject adds utf8_length and utf8.
            unicode_compact_size: unicode.2 + 16,
            keys: Keys::Log2,
            dict_values_start: 8,
            instances: Instances::Inline313,
            long: Long::Tagged,
            type_size,
        })
    }

    /// `PyHeapTypeObject.ht_cached_keys`.
    pub fn ht_cached_keys(&self) -> u64 {
        self.type_size + HT_CACHED_KEYS_AFTER_TYPE
    }
}

/// The first bytes of `_PyRuntime` from 3.13: `_Py_DebugOffsets.cookie`.
pub const DEBUG_COOKIE: &[u8; 8] = b"xdebugpy";
/// How much of `_Py_DebugOffsets` is read: more than the 3.13 and 3.14 tables hold before
/// the sections found by content.
pub const DEBUG_OFFSETS_LEN: usize = 1024;

/// `thread_id` and `native_thread_id` of a `_Py_DebugOffsets.thread_state` section (`ts`
/// starts at its `size`).
///
/// In 3.13 and 3.14 they follow `current_frame` (fields 5 and 6). 3.15 put `base_frame`,
/// `last_profiled_frame` and more fields before them, and its pre-releases differ among
/// themselves; what does not change is that both are `unsigned long`s, one after the
/// other, after `current_frame`, `base_frame` and `last_profiled_frame` (fields 4 to 6).
/// They are the first such pair from field 7, and must lie inside the thread state.
/// Each native id read is then checked to be a thread of the process.
fn thread_ids(version: Version, ts: &[u64]) -> Result<(u64, u64)> {
    let bad = |what: String| Error::Invalid(format!("_Py_DebugOffsets thread state: {what}"));
    let size = ts[0];
    if !version.at_least(3, 15) {
        return Ok((ts[5], ts[6]));
    }
    // 3.15: the frame pointers are 8 bytes apart after current_frame.
    if ts[5] != ts[4] + 8 || ts[6] != ts[5] + 8 {
        return Err(bad(format!(
            "current_frame {}, base_frame {}, last_profiled_frame {} are not consecutive",
            ts[4], ts[5], ts[6]
        )));
    }
    (7..ts.len().min(7 + 16) - 1)
        .find(|&i| ts[i] > ts[6] && ts[i + 1] == ts[i] + 8 && ts[i + 1] + 8 <= size)
        .map(|i| (ts[i], ts[i + 1]))
        .ok_or_else(|| bad("no thread_id and native_thread_id pair after the frames".into()))
}

/// The first word index where `matches` holds for the words from there on.
fn find(words: &[u64], matches: impl Fn(&[u64]) -> bool) -> Option<usize> {
    (0..words.len()).find(|&i| matches(&words[i..]))
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// A `_Py_DebugOffsets` table as CPython 3.13.0 (x86-64, GIL build) writes it.
    pub fn debug_offsets_3_13() -> Vec<u8> {
        let words: &[u64] = &[
            0x030d00f0, 0, // version, free_threaded
            283320, 608, 632, // runtime_state: size, finalizing, interpreters_head
            // interpreter_state: size, id, next, threads_head, gc, imports_modules,
            // sysdict, builtins, ceval_gil, gil_runtime_state, enabled, locked, holder
            194968, 7272, 7264, 7344, 7400, 7656, 7640, 7648, 16, 7752, 0, 7768, 7760,
            // thread_state: size, prev, next, interp, current_frame, thread_id,
            // native_thread_id, datastack_chunk, status
            304, 0, 8, 16, 72, 152, 160, 232, 32,
            // interpreter_frame (6), code_object (10)
            80, 8, 0, 56, 72, 70, 208, 112, 120, 128, 136, 68, 52, 96, 104, 200, 16,
            8, // pyobject
            416, 24, 88, 168, // type_object
            32, 24, 16, // tuple
            40, 24, 16, // list
            48, 32, 40, // dict
            24, 16, // float
            32, 16, 24, // long
            40, 16, 32, // bytes
            64, 32, 16, 40, // unicode
            240, 200, // gc
        ];
        let mut table = DEBUG_COOKIE.to_vec();
        for w in words {
            table.extend(w.to_le_bytes());
        }
        table.resize(DEBUG_OFFSETS_LEN, 0);
        table
    }

    #[test]
    fn versions_from_hex_and_file_names() {
        assert_eq!(Version::from_hex(0x030b02f0), Version::new(3, 11, 2));
        assert_eq!(
            Version::from_file_name("libpython3.10.so.1.0"),
            Some(Version::new(3, 10, 0))
        );
        assert_eq!(
            Version::from_file_name("python3.9"),
            Some(Version::new(3, 9, 0))
        );
        assert_eq!(
            Version::from_file_name("libpython3.7m.so"),
            Some(Version::new(3, 7, 0))
        );
        assert_eq!(Version::from_file_name("python3"), None);
        assert_eq!(Version::from_file_name("thread-workload"), None);
        assert!(Version::new(3, 14, 0).supported() && !Version::new(3, 7, 0).supported());
        assert_eq!(Version::new(3, 12, 1).to_string(), "3.12.1");
    }

    #[test]
    fn builtin_layouts_cover_3_8_to_3_12() {
        for minor in 8..=12 {
            let layout = Layout::builtin(Version::new(3, minor, 0)).unwrap();
            assert_eq!(layout.runtime_gil.is_some(), minor <= 11);
            assert_eq!(layout.tstate_native_thread_id.is_some(), minor >= 11);
        }
        assert_eq!(
            Layout::builtin(Version::new(3, 11, 0))
                .unwrap()
                .ht_cached_keys(),
            872
        );
        assert_eq!(
            Layout::builtin(Version::new(3, 12, 0))
                .unwrap()
                .ht_cached_keys(),
            880
        );
        assert!(Layout::builtin(Version::new(3, 13, 0)).is_err());
        assert!(Layout::builtin(Version::new(2, 7, 0)).is_err());
    }

    #[test]
    fn debug_offsets_of_3_13() {
        let layout = Layout::from_debug_offsets(&debug_offsets_3_13()).unwrap();
        assert_eq!(layout.version, Version::new(3, 13, 0));
        assert_eq!(layout.runtime_interpreters_head, 632);
        assert_eq!(layout.interp_threads_head, 7344);
        assert_eq!(layout.interp_modules, 7656);
        assert_eq!(layout.interp_gil_pointer, Some(16));
        assert_eq!(layout.tstate_native_thread_id, Some(160));
        assert_eq!(layout.tstate_thread_id, 152);
        assert_eq!(layout.type_size, 416);
        assert_eq!(layout.ht_cached_keys(), 880);
        assert_eq!(
            (
                layout.unicode_state,
                layout.unicode_length,
                layout.unicode_ascii_size
            ),
            (32, 16, 40)
        );
        assert_eq!(layout.unicode_compact_size, 56);
    }

    /// 3.14's table: `threads_main` after `threads_head`, two more interpreter fields, and
    /// more sections before the object ones (found by content).
    #[test]
    fn debug_offsets_of_3_14() {
        let words: &[u64] = &[
            0x030e00f0, 0, // version, free_threaded
            0x50000, 0x4a8, 640, // runtime_state
            // interpreter_state: size, id, next, threads_head, threads_main, gc,
            // imports_modules, sysdict, builtins, ceval_gil, gil_runtime_state, enabled,
            // locked, holder, code_object_generation, tlbc_generation
            0x20000, 8000, 7990, 8100, 8108, 8200, 8500, 8400, 8408, 24, 8600, 0, 8616, 8608, 9000,
            0, // thread_state
            400, 0, 8, 16, 72, 152, 160, 208, 32,
            // interpreter_frame (8), code_object (11)
            80, 0, 0, 8, 72, 58, 64, 0, 208, 96, 104, 112, 128, 80, 88, 96, 104, 200, 0, 16,
            8, // pyobject
            416, 24, 88, 168, // type_object
            32, 24, 16, // tuple
            40, 24, 16, // list
            200, 16, 24, 32, // set
            48, 32, 40, // dict
            24, 16, // float
            32, 16, 24, // long
            40, 16, 32, // bytes
            80, 32, 16, 40, // unicode
        ];
        let mut table = DEBUG_COOKIE.to_vec();
        for w in words {
            table.extend(w.to_le_bytes());
        }
        table.resize(DEBUG_OFFSETS_LEN, 0);
        let layout = Layout::from_debug_offsets(&table).unwrap();
        assert_eq!(layout.version, Version::new(3, 14, 0));
        assert_eq!(layout.runtime_interpreters_head, 640);
        assert_eq!(layout.interp_threads_head, 8100);
        assert_eq!(layout.interp_modules, 8500);
        assert_eq!(layout.interp_gil_pointer, Some(24));
        assert_eq!(layout.interp_next, 7990);
        assert_eq!(layout.tstate_native_thread_id, Some(160));
        assert_eq!(layout.type_size, 416);
        assert_eq!(layout.unicode_ascii_size, 40);
    }

    /// The start of the table of Debian's CPython 3.15.2 (x86-64, GIL build), as read from
    /// its `_PyRuntime`: the thread state section has `base_frame`, `last_profiled_frame`
    /// and another field before `thread_id` (176) and `native_thread_id` (184).
    pub fn debug_offsets_3_15() -> Vec<u8> {
        let words: &[u64] = &[
            0x030f02f0, 0, 346568, 912, 936, // header, runtime_state
            226240, 7272, 7264, 7336, 7352, 7400, 7592, 7576, 7584, 16, 7736, 0, 7752, 7744, 7944,
            0, // interpreter_state
            888, 0, 8, 16, 72, 80, 88, 96, 176, 184, 256, 32, 36, 40, 136,
            288, // thread_state
            0, 88, 8, 0, 56, 80, 74, 64, 0, 216, 112, 120, 128, 136, 68, 52, 96, 104, 208, 0, 16,
            8, // pyobject
            424, 24, 88, 168, 32, 288, 944, 888, // type_object
            40, 32, 16, 40, 24, 16, 200, 24, 40, 32, 48, 32, 40, 24, 16, // tuple .. float
            32, 16, 24, // long
            40, 16, 32, // bytes
            64, 32, 16, 40, 56, // unicode
        ];
        let mut table = DEBUG_COOKIE.to_vec();
        for w in words {
            table.extend(w.to_le_bytes());
        }
        table.resize(DEBUG_OFFSETS_LEN, 0);
        table
    }

    #[test]
    fn debug_offsets_of_3_15() {
        let layout = Layout::from_debug_offsets(&debug_offsets_3_15()).unwrap();
        assert_eq!(layout.version, Version::new(3, 15, 2));
        assert_eq!(layout.runtime_interpreters_head, 936);
        assert_eq!(layout.interp_threads_head, 7336);
        assert_eq!(layout.interp_modules, 7592);
        assert_eq!(layout.interp_gil_pointer, Some(16));
        assert_eq!(layout.tstate_next, 8);
        assert_eq!(layout.tstate_thread_id, 176);
        assert_eq!(layout.tstate_native_thread_id, Some(184));
        assert_eq!(layout.type_size, 424);
        assert_eq!(layout.ht_cached_keys(), 888);
        assert_eq!(
            (
                layout.unicode_state,
                layout.unicode_length,
                layout.unicode_ascii_size
            ),
            (32, 16, 40)
        );
    }

    /// Reading 3.15's table as 3.14's would take `base_frame` for `thread_id`: a 3.15
    /// table whose thread state section is not laid out as expected is refused, not read.
    #[test]
    fn a_3_15_thread_state_section_not_as_expected_is_refused() {
        let table = debug_offsets_3_15();
        let word = |i: usize| 8 + 8 * i; // the cookie, then word i of the table
        // base_frame not right after current_frame.
        let mut moved = table.clone();
        moved[word(26)..word(27)].copy_from_slice(&120u64.to_le_bytes());
        let err = Layout::from_debug_offsets(&moved).unwrap_err();
        assert!(err.to_string().contains("not consecutive"), "{err}");
        // No adjacent pair of ids inside the thread state.
        let mut no_pair = table.clone();
        no_pair[word(21)..word(22)].copy_from_slice(&180u64.to_le_bytes());
        let err = Layout::from_debug_offsets(&no_pair).unwrap_err();
        assert!(err.to_string().contains("native_thread_id"), "{err}");
    }

    /// A 3.14 table without the last two interpreter fields: the thread state section is
    /// still found.
    #[test]
    fn debug_offsets_with_fewer_interpreter_fields() {
        let words: &[u64] = &[
            0x030e00f0, 0, 0x50000, 0x4a8, 640, // header, runtime_state
            0x20000, 8000, 7990, 8100, 8108, 8200, 8500, 8400, 8408, 24, 8600, 0, 8616, 8608, 400,
            0, 8, 16, 72, 152, 168, 208, 32, // thread_state
            16, 8, 416, 24, 88, 168, // pyobject, type_object
            32, 16, 24, 40, 16, 32, 80, 32, 16, 40, // long, bytes, unicode
        ];
        let mut table = DEBUG_COOKIE.to_vec();
        for w in words {
            table.extend(w.to_le_bytes());
        }
        table.resize(DEBUG_OFFSETS_LEN, 0);
        let layout = Layout::from_debug_offsets(&table).unwrap();
        assert_eq!(layout.tstate_native_thread_id, Some(168));
        assert_eq!(layout.interp_modules, 8500);
    }

    #[test]
    fn bad_debug_offsets_are_refused() {
        let good = debug_offsets_3_13();
        let mut no_cookie = good.clone();
        no_cookie[0] = b'y';
        assert!(Layout::from_debug_offsets(&no_cookie).is_err());
        let mut free_threaded = good.clone();
        free_threaded[16] = 1;
        let err = Layout::from_debug_offsets(&free_threaded).unwrap_err();
        assert!(err.to_string().contains("free-threaded"), "{err}");
        let mut future = good.clone();
        future[8..16].copy_from_slice(&0x031000f0u64.to_le_bytes());
        assert!(Layout::from_debug_offsets(&future).is_err());
        // An offset outside its struct.
        let mut outside = good.clone();
        outside[8 * 9..8 * 10].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(Layout::from_debug_offsets(&outside).is_err());
        assert!(Layout::from_debug_offsets(&good[..100]).is_err());
        // Every single-word corruption is handled without panicking.
        for word in 0..good.len() / 8 {
            let mut t = good.clone();
            t[word * 8..word * 8 + 8].copy_from_slice(&u64::MAX.to_le_bytes());
            let _ = Layout::from_debug_offsets(&t);
        }
    }
}
