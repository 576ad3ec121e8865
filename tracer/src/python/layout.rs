//! Where CPython keeps what tracer reads, by version.
//!
//! 3.8 to 3.12 have no description of their own layout: the offsets below were read from the
//! debug information of release builds of each version (x86-64, GIL build). From 3.13 the
//! interpreter starts `_PyRuntime` with a table of offsets meant for out-of-process tools,
//! `_Py_DebugOffsets`, which [`Layout::from_debug_offsets`] reads; 3.14 extended that table,
//! and 3.15 adds the sizes of some objects. Free-threaded builds (3.13t on) publish the same
//! table with their own values; what it does not say (where a managed dict lies, how a
//! string's state bits are laid out) is taken from their headers.

mod debug_offsets;

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

/// `PyObject.ob_type` and `sizeof(PyObject)` in a build with a GIL: `ob_refcnt`, `ob_type`.
pub const OB_TYPE: u64 = 8;
pub const OBJECT_HEADER: u64 = 16;
/// The same in a free-threaded build (`Py_GIL_DISABLED`, `Include/object.h`): `ob_tid`
/// (8 bytes), `ob_flags` (2; `_padding` in 3.13), `ob_mutex` and `ob_gc_bits` (1 each),
/// `ob_ref_local` (4), `ob_ref_shared` (8), then `ob_type`.
pub const FT_OB_TYPE: u64 = 24;
pub const FT_OBJECT_HEADER: u64 = 32;
/// `PyTypeObject` fields after its `PyObject_VAR_HEAD` (the header and `ob_size`), the
/// same in every supported version: `tp_name`, `tp_basicsize`, `tp_repr`, `tp_flags`,
/// `tp_dictoffset`.
pub const TP_NAME_AFTER_HEAD: u64 = 0;
pub const TP_BASICSIZE_AFTER_HEAD: u64 = 8;
pub const TP_REPR_AFTER_HEAD: u64 = 64;
pub const TP_FLAGS_AFTER_HEAD: u64 = 144;
pub const TP_DICTOFFSET_AFTER_HEAD: u64 = 264;
/// The size of a `setentry` (key, hash).
pub const SET_ENTRY_SIZE: u64 = 16;
/// `PyHeapTypeObject.ht_cached_keys` lies this far after the `PyTypeObject` it starts with:
/// the async, number, mapping, sequence and buffer slot tables (55 pointers) and
/// `ht_name`, `ht_slots`, `ht_qualname`. Free-threaded builds add nothing before it.
pub const HT_CACHED_KEYS_AFTER_TYPE: u64 = 58 * 8;
/// `sizeof(struct _gil_runtime_state)` (3.8 to 3.15, GIL builds).
pub const GIL_STATE_SIZE: u64 = 208;
/// Where an instance's managed dict pointer lies before the object
/// (`-MANAGED_DICT_OFFSET`, `Include/internal/pycore_object.h`): past the GC header's two
/// words in a build with a GIL, the word right before it in a free-threaded build (which
/// has no GC header in front of objects).
pub const MANAGED_DICT_BEFORE: u64 = 24;
pub const FT_MANAGED_DICT_BEFORE: u64 = 8;

/// Where the bit fields of `PyASCIIObject.state` start: `interned` (2 bits in a build with
/// a GIL; a byte of its own in a free-threaded build from 3.14), then `kind` (3 bits),
/// `compact` and `ascii` (1 each).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StringState {
    /// The bit `kind` starts at; `compact` and `ascii` are the 4th and 5th bits after.
    pub kind_shift: u32,
}

impl StringState {
    /// `interned:2` first: 3.8 on with a GIL, and 3.13's free-threaded build.
    pub const BITS: Self = Self { kind_shift: 2 };
    /// `unsigned char interned` first: free-threaded builds from 3.14.
    pub const INTERNED_BYTE: Self = Self { kind_shift: 8 };

    /// (kind, compact, ascii) of a state word.
    pub fn decode(self, state: u32) -> (u8, bool, bool) {
        let s = state >> self.kind_shift;
        ((s & 7) as u8, (s >> 3) & 1 != 0, (s >> 4) & 1 != 0)
    }

    /// The state word of a string of `kind`, compact, `ascii` or not (for tests).
    #[cfg(test)]
    pub fn encode(self, kind: u32, ascii: bool) -> u32 {
        (kind | 1 << 3 | u32::from(ascii) << 4) << self.kind_shift
    }
}

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
    /// 3.13 on: a dict pointer [`Layout::managed_dict_before`] the object (3 words, 1 in a
    /// free-threaded build); with `Py_TPFLAGS_INLINE_VALUES`
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
    /// A free-threaded build (`Py_GIL_DISABLED`): no GIL, a 32-byte object header.
    pub free_threaded: bool,
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
    /// `PyInterpreterState.ceval.gil`, a pointer to the interpreter's GIL, from 3.12 (none
    /// in a free-threaded build).
    pub interp_gil_pointer: Option<u64>,
    /// `PyThreadState.next`.
    pub tstate_next: u64,
    /// `PyThreadState.thread_id` (`pthread_self()`, `threading.get_ident()`).
    pub tstate_thread_id: u64,
    /// `PyThreadState.native_thread_id` (the kernel tid), from 3.11.
    pub tstate_native_thread_id: Option<u64>,
    /// `sizeof(PyObject)` and `PyObject.ob_type`.
    pub object_header: u64,
    pub ob_type: u64,
    /// `PyTypeObject.tp_name`, `tp_basicsize`, `tp_flags`, `tp_dictoffset`.
    pub tp_name: u64,
    pub tp_basicsize: u64,
    pub tp_flags: u64,
    pub tp_dictoffset: u64,
    /// `PyHeapTypeObject.ht_cached_keys`.
    pub ht_cached_keys: u64,
    /// `PyDictObject.ma_keys`, `ma_values`.
    pub ma_keys: u64,
    pub ma_values: u64,
    /// `PyLongObject`'s size word (`ob_size`, `lv_tag`) and first digit.
    pub long_size: u64,
    pub long_digits: u64,
    /// `PyASCIIObject.length`, `.state`, `sizeof(PyASCIIObject)`,
    /// `sizeof(PyCompactUnicodeObject)`.
    pub unicode_length: u64,
    pub unicode_state: u64,
    pub unicode_ascii_size: u64,
    pub unicode_compact_size: u64,
    /// How `PyASCIIObject.state` is laid out.
    pub string_state: StringState,
    pub keys: Keys,
    /// Where a split dict's values start in its `PyDictValues`.
    pub dict_values_start: u64,
    pub instances: Instances,
    /// How far before an instance its managed dict pointer lies (3.11 on).
    pub managed_dict_before: u64,
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
        let var_head = OBJECT_HEADER + 8;
        Ok(Self {
            version,
            free_threaded: false,
            runtime_interpreters_head: head,
            runtime_gil: gil,
            interp_next: next,
            interp_threads_head: threads,
            interp_modules: modules,
            interp_gil_pointer: gil_ptr,
            tstate_next: 8,
            tstate_thread_id: thread_id,
            tstate_native_thread_id: native,
            object_header: OBJECT_HEADER,
            ob_type: OB_TYPE,
            tp_name: var_head + TP_NAME_AFTER_HEAD,
            tp_basicsize: var_head + TP_BASICSIZE_AFTER_HEAD,
            tp_flags: var_head + TP_FLAGS_AFTER_HEAD,
            tp_dictoffset: var_head + TP_DICTOFFSET_AFTER_HEAD,
            ht_cached_keys: type_size + HT_CACHED_KEYS_AFTER_TYPE,
            ma_keys: 32,
            ma_values: 40,
            long_size: 16,
            long_digits: 24,
            unicode_length: 16,
            unicode_state: 32,
            unicode_ascii_size: unicode.0,
            unicode_compact_size: unicode.1,
            string_state: StringState::BITS,
            keys: if minor >= 11 { Keys::Log2 } else { Keys::Sized },
            dict_values_start: 0,
            instances: match minor {
                11 => Instances::Managed311,
                12 => Instances::Managed312,
                _ => Instances::DictOffset,
            },
            managed_dict_before: MANAGED_DICT_BEFORE,
            long: if minor >= 12 {
                Long::Tagged
            } else {
                Long::SignedSize
            },
            type_size,
        })
    }

    /// `PyHeapTypeObject.ht_cached_keys`.
    pub fn ht_cached_keys(&self) -> u64 {
        self.ht_cached_keys
    }

    /// `PySetObject.used`, `mask` and `table`: after `fill`, which follows the header.
    pub fn set_fields(&self) -> (u64, u64, u64) {
        let h = self.object_header;
        (h + 8, h + 16, h + 24)
    }

    /// `PyWeakReference.wr_object` and `PyModuleObject.md_dict`: each the first field
    /// after the header.
    pub fn first_field(&self) -> u64 {
        self.object_header
    }
}

/// The first bytes of `_PyRuntime` from 3.13: `_Py_DebugOffsets.cookie`.
pub const DEBUG_COOKIE: &[u8; 8] = b"xdebugpy";
/// How much of `_Py_DebugOffsets` is read: more than the 3.13 to 3.15 tables hold before
/// the sections found by content.
pub const DEBUG_OFFSETS_LEN: usize = 1024;

#[cfg(test)]
pub mod tests {
    use super::*;

    pub use super::debug_offsets::tests::{
        debug_offsets_3_13, debug_offsets_3_13t, debug_offsets_3_14t, debug_offsets_3_15,
        debug_offsets_3_15t,
    };

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
}
