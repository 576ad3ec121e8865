//! Reading a `_Py_DebugOffsets` table (3.13 on) into a [`Layout`].
//!
//! The table's sections up to the thread state are read by position; the object sections
//! after it are found by their content, which does not depend on the sections in between
//! (they differ between versions). A free-threaded build (`free_threaded` 1) publishes the
//! same sections with the offsets of its 32-byte object header; the table is checked to
//! say so. From 3.15 the type and string sections also give `tp_basicsize`,
//! `tp_dictoffset`, `sizeof(PyHeapTypeObject)`, `ht_cached_keys` and
//! `sizeof(PyCompactUnicodeObject)`, which are read from it and checked.

use super::*;

/// Why a table is refused.
fn bad(what: &str) -> Error {
    Error::Invalid(format!("_Py_DebugOffsets: {what}"))
}

/// The object header of a build: (`sizeof(PyObject)`, `ob_type`).
fn header(free_threaded: bool) -> (u64, u64) {
    if free_threaded {
        (FT_OBJECT_HEADER, FT_OB_TYPE)
    } else {
        (OBJECT_HEADER, OB_TYPE)
    }
}

/// What the type object section says.
struct TypeSection {
    size: u64,
    tp_name: u64,
    tp_basicsize: u64,
    tp_flags: u64,
    tp_dictoffset: u64,
    ht_cached_keys: u64,
}

/// The `pyobject` and `type_object` sections: `{sizeof(PyObject), ob_type}`, then
/// `{size, tp_name, tp_repr, tp_flags}` (and from 3.15 `tp_basicsize`, `tp_dictoffset`,
/// `sizeof(PyHeapTypeObject)`, `ht_cached_keys`), with `tp_name` right after the
/// `PyObject_VAR_HEAD`. The header must be the one of the build the table says it is.
fn type_section(words: &[u64], version: Version, free_threaded: bool) -> Result<TypeSection> {
    let i = find(words, |w| {
        w.len() >= 10
            && matches!(w[0], OBJECT_HEADER | FT_OBJECT_HEADER)
            && w[3] == w[0] + 8 + TP_NAME_AFTER_HEAD
            && w[4] == w[0] + 8 + TP_REPR_AFTER_HEAD
            && w[5] == w[0] + 8 + TP_FLAGS_AFTER_HEAD
    })
    .ok_or_else(|| bad("no PyTypeObject section"))?;
    let w = &words[i..];
    let (h, ob_type) = header(free_threaded);
    if (w[0], w[1]) != (h, ob_type) {
        let build = if free_threaded {
            "a free-threaded"
        } else {
            "a GIL"
        };
        return Err(bad(&format!(
            "PyObject of {} bytes with ob_type at {}, not {h} and {ob_type} as in {build} build",
            w[0], w[1]
        )));
    }
    let size = w[2];
    if !(400..=1024).contains(&size) {
        return Err(bad(&format!("PyTypeObject of {size} bytes")));
    }
    let head = h + 8;
    let mut section = TypeSection {
        size,
        tp_name: w[3],
        tp_basicsize: head + TP_BASICSIZE_AFTER_HEAD,
        tp_flags: w[5],
        tp_dictoffset: head + TP_DICTOFFSET_AFTER_HEAD,
        ht_cached_keys: size + HT_CACHED_KEYS_AFTER_TYPE,
    };
    if version.at_least(3, 15) {
        let (basicsize, dictoffset, heap_size, cached_keys) = (w[6], w[7], w[8], w[9]);
        let aligned = |v: u64| v.is_multiple_of(8);
        if !(aligned(basicsize)
            && aligned(dictoffset)
            && section.tp_name < basicsize
            && basicsize < section.tp_flags
            && section.tp_flags < dictoffset
            && dictoffset + 8 <= size)
        {
            return Err(bad(&format!(
                "tp_basicsize at {basicsize}, tp_dictoffset at {dictoffset}: not between \
                 tp_name ({}), tp_flags ({}) and the end of PyTypeObject ({size})",
                section.tp_name, section.tp_flags
            )));
        }
        if !(aligned(cached_keys)
            && size <= cached_keys
            && cached_keys + 8 <= heap_size
            && heap_size <= 4096)
        {
            return Err(bad(&format!(
                "ht_cached_keys at {cached_keys} of a PyHeapTypeObject of {heap_size} bytes \
                 (PyTypeObject: {size})"
            )));
        }
        section.tp_basicsize = basicsize;
        section.tp_dictoffset = dictoffset;
        section.ht_cached_keys = cached_keys;
    }
    Ok(section)
}

/// What the dict, int and string sections say.
struct ObjectSections {
    ma_keys: u64,
    ma_values: u64,
    lv_tag: u64,
    ob_digit: u64,
    /// `state`, `length`, `sizeof(PyASCIIObject)`, `sizeof(PyCompactUnicodeObject)`.
    unicode: (u64, u64, u64, u64),
}

/// The `dict_object`, `float_object`, `long_object`, `bytes_object` and `unicode_object`
/// sections, one after the other: `{size, ma_keys, ma_values}`, `{size, ob_fval}`,
/// `{size, lv_tag, ob_digit}`, `{size, ob_size, ob_sval}`, `{size, state, length,
/// asciiobject_size}` (and from 3.15 `sizeof(PyCompactUnicodeObject)`), for an object
/// header of `h` bytes.
fn object_sections(words: &[u64], version: Version, h: u64) -> Result<ObjectSections> {
    let i = find(words, |w| {
        w.len() >= 11 && w[1] == h && w[2] == h + 8 && w[4] == h && w[5] == h + 16
    })
    .filter(|&i| i >= 5)
    .ok_or_else(|| bad("no int and bytes sections"))?;
    let (dict, float, long, unicode) = (
        &words[i - 5..i - 2],
        &words[i - 2..i],
        &words[i..i + 3],
        &words[i + 6..i + 11],
    );
    if float != [h + 8, h] {
        return Err(bad("no dict and float sections before the int one"));
    }
    let (dict_size, ma_keys, ma_values) = (dict[0], dict[1], dict[2]);
    if ma_keys < h || ma_values != ma_keys + 8 || ma_values + 8 > dict_size || dict_size > 256 {
        return Err(bad(&format!(
            "dict: ma_keys at {ma_keys}, ma_values at {ma_values} of {dict_size} bytes"
        )));
    }
    let (state, length, ascii) = (unicode[1], unicode[2], unicode[3]);
    if state < h || length < h || state + 4 > ascii || length + 8 > ascii || ascii > h + 48 {
        return Err(bad(&format!(
            "str: state at {state}, length at {length} of a PyASCIIObject of {ascii} bytes"
        )));
    }
    // PyCompactUnicodeObject adds utf8_length and utf8; 3.15 says its size.
    let compact = if version.at_least(3, 15) {
        let compact = unicode[4];
        if compact <= ascii || compact > ascii + 64 || !compact.is_multiple_of(8) {
            return Err(bad(&format!(
                "str: a PyCompactUnicodeObject of {compact} bytes after a PyASCIIObject of \
                 {ascii}"
            )));
        }
        compact
    } else {
        ascii + 16
    };
    Ok(ObjectSections {
        ma_keys,
        ma_values,
        lv_tag: long[1],
        ob_digit: long[2],
        unicode: (state, length, ascii, compact),
    })
}

impl Layout {
    /// The layout described by a `_Py_DebugOffsets` table (3.13 to 3.15, with a GIL or
    /// free-threaded), given its first bytes (at least [`DEBUG_OFFSETS_LEN`]).
    pub fn from_debug_offsets(table: &[u8]) -> Result<Self> {
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
        let free_threaded = match words[2] {
            0 => false,
            1 => true,
            other => return Err(bad(&format!("free_threaded is {other}"))),
        };
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
        let (h, ob_type) = header(free_threaded);
        let ty = type_section(&words, version, free_threaded)?;
        let objects = object_sections(&words, version, h)?;
        let (state, length, ascii, compact) = objects.unicode;
        Ok(Self {
            version,
            free_threaded,
            runtime_interpreters_head: head,
            runtime_gil: None,
            interp_next: next,
            interp_threads_head: threads_head,
            interp_modules: modules,
            // A free-threaded build has no GIL to wait for.
            interp_gil_pointer: (!free_threaded).then_some(ceval_gil),
            tstate_next: ts_next,
            tstate_thread_id: thread_id,
            tstate_native_thread_id: Some(native),
            object_header: h,
            ob_type,
            tp_name: ty.tp_name,
            tp_basicsize: ty.tp_basicsize,
            tp_flags: ty.tp_flags,
            tp_dictoffset: ty.tp_dictoffset,
            ht_cached_keys: ty.ht_cached_keys,
            ma_keys: objects.ma_keys,
            ma_values: objects.ma_values,
            long_size: objects.lv_tag,
            long_digits: objects.ob_digit,
            unicode_length: length,
            unicode_state: state,
            unicode_ascii_size: ascii,
            unicode_compact_size: compact,
            // 3.14 made `interned` a byte of its own in free-threaded builds.
            string_state: if free_threaded && version.at_least(3, 14) {
                StringState::INTERNED_BYTE
            } else {
                StringState::BITS
            },
            keys: Keys::Log2,
            dict_values_start: 8,
            instances: Instances::Inline313,
            managed_dict_before: if free_threaded {
                FT_MANAGED_DICT_BEFORE
            } else {
                MANAGED_DICT_BEFORE
            },
            long: Long::Tagged,
            type_size: ty.size,
        })
    }
}

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

    /// A table from `words` (after the cookie), padded as the interpreter's is.
    fn table(words: &[u64]) -> Vec<u8> {
        let mut table = DEBUG_COOKIE.to_vec();
        for w in words {
            table.extend(w.to_le_bytes());
        }
        table.resize(DEBUG_OFFSETS_LEN, 0);
        table
    }

    /// A table of a free-threaded 3.13 (3.13t): 3.13's, with the object sections of a
    /// 32-byte `PyObject` (`ob_type` at 24) as `Include/object.h` lays it out under
    /// `Py_GIL_DISABLED`, so every field after the header 16 bytes further on.
    pub fn debug_offsets_3_13t() -> Vec<u8> {
        table(&[
            0x030d00f0, 1, // version, free_threaded
            283320, 608, 632, // runtime_state
            // interpreter_state (gil_runtime_state_enabled is set in this build)
            194968, 7272, 7264, 7344, 7400, 7656, 7640, 7648, 16, 7752, 7756, 7768, 7760, 304, 0, 8,
            16, 72, 152, 160, 232, 32, // thread_state
            // interpreter_frame (6), code_object (10)
            80, 8, 0, 56, 72, 70, 224, 128, 136, 144, 152, 84, 68, 112, 120, 216, 32,
            24, // pyobject
            432, 40, 104, 184, // type_object
            48, 48, 32, // tuple
            56, 40, 32, // list
            64, 48, 56, // dict
            40, 32, // float
            48, 32, 40, // long
            56, 32, 48, // bytes
            80, 48, 32, 56, // unicode
            240, 200, // gc
        ])
    }

    /// A table of a free-threaded 3.14 (3.14t), laid out as 3.14's.
    pub fn debug_offsets_3_14t() -> Vec<u8> {
        table(&[
            0x030e00f0, 1, // version, free_threaded
            0x50000, 0x4a8, 640, // runtime_state
            0x20000, 8000, 7990, 8100, 8108, 8200, 8500, 8400, 8408, 24, 8600, 8604, 8616, 8608,
            9000, 0, // interpreter_state
            400, 0, 8, 16, 72, 152, 160, 208, 32, // thread_state
            // interpreter_frame (8), code_object (11)
            80, 0, 0, 8, 72, 58, 64, 0, 224, 112, 120, 128, 144, 96, 104, 112, 120, 216, 0, 32,
            24, // pyobject
            432, 40, 104, 184, // type_object
            48, 40, 32, // tuple
            56, 40, 32, // list
            216, 40, 56, 48, // set
            64, 48, 56, // dict
            40, 32, // float
            48, 32, 40, // long
            56, 32, 48, // bytes
            96, 48, 32, 56, // unicode
        ])
    }

    /// A table of a free-threaded 3.15 (3.15t): 3.15.2's, with the object sections and
    /// the sizes 3.15 publishes as a 32-byte `PyObject` makes them.
    pub fn debug_offsets_3_15t() -> Vec<u8> {
        table(&[
            0x030f02f0, 1, 346568, 912, 936, // header, runtime_state
            226240, 7272, 7264, 7336, 7352, 7400, 7592, 7576, 7584, 16, 7736, 7740, 7752, 7744,
            7944, 0, // interpreter_state
            888, 0, 8, 16, 72, 80, 88, 96, 176, 184, 256, 32, 36, 40, 136,
            288, // thread_state
            0, 88, 8, 0, 56, 80, 74, 64, 0, 232, 128, 136, 144, 152, 84, 68, 112, 120, 224, 0, 32,
            24, // pyobject
            // type_object: size, tp_name, tp_repr, tp_flags, tp_basicsize, tp_dictoffset,
            // sizeof(PyHeapTypeObject), ht_cached_keys
            440, 40, 104, 184, 48, 304, 960, 904, 56, 48, 32, 56, 40, 32, 216, 40, 56, 48, 64, 48,
            56, 40, 32, // tuple .. float
            48, 32, 40, // long
            56, 32, 48, // bytes
            80, 48, 32, 56, 72, // unicode: .., sizeof(PyCompactUnicodeObject)
        ])
    }

    /// Each free-threaded table: its object header, dict and string offsets, the state
    /// bits of its version, the managed dict one word before an object, and no GIL.
    #[test]
    fn free_threaded_tables_of_3_13_to_3_15() {
        for (table, minor, state) in [
            (debug_offsets_3_13t(), 13, StringState::BITS),
            (debug_offsets_3_14t(), 14, StringState::INTERNED_BYTE),
            (debug_offsets_3_15t(), 15, StringState::INTERNED_BYTE),
        ] {
            let l = Layout::from_debug_offsets(&table).unwrap();
            assert_eq!(l.version.minor, minor);
            assert!(l.free_threaded);
            assert_eq!((l.object_header, l.ob_type), (32, 24));
            assert_eq!((l.tp_name, l.tp_basicsize, l.tp_flags), (40, 48, 184));
            assert_eq!(l.tp_dictoffset, 304);
            assert_eq!(l.ht_cached_keys(), l.type_size + HT_CACHED_KEYS_AFTER_TYPE);
            assert_eq!((l.ma_keys, l.ma_values), (48, 56));
            assert_eq!((l.long_size, l.long_digits), (32, 40));
            assert_eq!((l.unicode_length, l.unicode_state), (32, 48));
            assert_eq!((l.unicode_ascii_size, l.unicode_compact_size), (56, 72));
            assert_eq!(l.string_state, state);
            assert_eq!(l.managed_dict_before, 8);
            assert_eq!((l.runtime_gil, l.interp_gil_pointer), (None, None));
            assert_eq!(l.set_fields(), (40, 48, 56));
            assert_eq!(l.first_field(), 32);
        }
    }

    /// A table whose `free_threaded` byte and object header disagree, or whose flag is
    /// neither 0 nor 1, is refused, saying which.
    #[test]
    fn a_damaged_free_threaded_table_is_refused() {
        let word = |i: usize| 8 + 8 * (i - 1); // word i of the table, the version being 1
        // A free-threaded build's flag on a GIL table.
        let mut flag_only = debug_offsets_3_14t();
        flag_only[word(2)..word(3)].copy_from_slice(&0u64.to_le_bytes());
        let err = Layout::from_debug_offsets(&flag_only).unwrap_err();
        assert!(
            err.to_string().contains(
                "PyObject of 32 bytes with ob_type at 24, not 16 and 8 as in a GIL build"
            ),
            "{err}"
        );
        for table in [
            debug_offsets_3_13t(),
            debug_offsets_3_14t(),
            debug_offsets_3_15t(),
        ] {
            let mut odd = table.clone();
            odd[word(2)..word(3)].copy_from_slice(&7u64.to_le_bytes());
            let err = Layout::from_debug_offsets(&odd).unwrap_err();
            assert!(err.to_string().contains("free_threaded is 7"), "{err}");
            // ob_type moved: no longer the free-threaded header.
            let words = words_of(&table);
            let pyobject = (0..words.len() - 3)
                .find(|&i| words[i..i + 3] == [32, 24, words[i + 2]] && words[i + 3] == 40)
                .unwrap();
            let mut moved = table.clone();
            let at = 8 * (pyobject + 1);
            moved[at..at + 8].copy_from_slice(&8u64.to_le_bytes());
            let err = Layout::from_debug_offsets(&moved).unwrap_err();
            assert!(err.to_string().contains("free-threaded build"), "{err}");
            // The dict section of a GIL build in a free-threaded table.
            let dict = (0..words.len() - 5)
                .find(|&i| words[i..i + 5] == [64, 48, 56, 40, 32])
                .unwrap();
            let mut dict_moved = table.clone();
            dict_moved[8 * (dict + 1)..8 * (dict + 2)].copy_from_slice(&32u64.to_le_bytes());
            let err = Layout::from_debug_offsets(&dict_moved).unwrap_err();
            assert!(err.to_string().contains("dict: ma_keys at 32"), "{err}");
            // Every single-word corruption is handled without panicking.
            for w in 0..table.len() / 8 {
                let mut t = table.clone();
                t[w * 8..w * 8 + 8].copy_from_slice(&u64::MAX.to_le_bytes());
                let _ = Layout::from_debug_offsets(&t);
            }
        }
    }

    /// The words of a table, the cookie being word 0.
    fn words_of(table: &[u8]) -> Vec<u64> {
        table
            .chunks_exact(8)
            .map(|w| u64::from_le_bytes(w.try_into().unwrap()))
            .collect()
    }

    /// 3.15 publishes `tp_basicsize`, `tp_dictoffset`, `ht_cached_keys` and the compact
    /// string size: they are what is read, not the constants of earlier versions.
    #[test]
    fn published_sizes_of_3_15_are_read() {
        let mut table = debug_offsets_3_15();
        let words = words_of(&table);
        let ty = (0..words.len() - 8)
            .find(|&i| words[i..i + 8] == [424, 24, 88, 168, 32, 288, 944, 888])
            .unwrap();
        // A type object two words longer before tp_dictoffset and ht_cached_keys.
        for (i, value) in [(ty, 440), (ty + 5, 304), (ty + 6, 960), (ty + 7, 904)] {
            table[8 * i..8 * i + 8].copy_from_slice(&u64::to_le_bytes(value));
        }
        let unicode = (0..words.len() - 5)
            .find(|&i| words[i..i + 5] == [64, 32, 16, 40, 56])
            .unwrap();
        table[8 * (unicode + 4)..8 * (unicode + 5)].copy_from_slice(&64u64.to_le_bytes());
        let l = Layout::from_debug_offsets(&table).unwrap();
        assert!(!l.free_threaded);
        assert_eq!(
            (l.type_size, l.tp_basicsize, l.tp_dictoffset),
            (440, 32, 304)
        );
        assert_eq!(l.ht_cached_keys(), 904);
        assert_eq!(l.unicode_compact_size, 64);
        assert_eq!(l.interp_gil_pointer, Some(16));
    }

    /// A published size out of its struct, or out of order, is refused with the sizes.
    #[test]
    fn a_damaged_published_size_is_refused() {
        let table = debug_offsets_3_15();
        let words = words_of(&table);
        let ty = (0..words.len() - 8)
            .find(|&i| words[i..i + 8] == [424, 24, 88, 168, 32, 288, 944, 888])
            .unwrap();
        let set = |i: usize, value: u64| {
            let mut t = table.clone();
            t[8 * i..8 * i + 8].copy_from_slice(&value.to_le_bytes());
            Layout::from_debug_offsets(&t).unwrap_err().to_string()
        };
        let err = set(ty + 5, 424);
        assert!(err.contains("tp_dictoffset at 424"), "{err}");
        let err = set(ty + 4, 200);
        assert!(err.contains("tp_basicsize at 200"), "{err}");
        let err = set(ty + 7, 944);
        assert!(
            err.contains("ht_cached_keys at 944 of a PyHeapTypeObject of 944 bytes"),
            "{err}"
        );
        let unicode = (0..words.len() - 5)
            .find(|&i| words[i..i + 5] == [64, 32, 16, 40, 56])
            .unwrap();
        let err = set(unicode + 4, 40);
        assert!(err.contains("PyCompactUnicodeObject of 40 bytes"), "{err}");
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
            16, 8, 416, 24, 88, 168, 48, 32, 40, 24, 16, // pyobject .. float
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
