//! Tests of the readers on synthetic memory (every layout), and on live interpreters of
//! each CPython installed here.

use std::collections::HashMap;

use super::{
    layout::{Instances, Keys, Layout, Long, Version, flags},
    memory::{Memory, fake::FakeMemory},
    objects::{self, MAX_STRING_CHARS, Reader, TypeInfo, decode_long, decode_unicode},
    *,
};

/// Builds CPython objects of one layout in a synthetic address space.
struct Heap {
    mem: FakeMemory,
    layout: Layout,
    next: u64,
    str_type: u64,
    int_type: u64,
    dict_type: u64,
}

impl Heap {
    fn new(layout: Layout) -> Self {
        let mut heap = Self {
            mem: FakeMemory::new(),
            layout,
            next: 0x10_0000,
            str_type: 0,
            int_type: 0,
            dict_type: 0,
        };
        heap.str_type = heap.type_object(flags::UNICODE_SUBCLASS, 0, 0, 0);
        heap.int_type = heap.type_object(flags::LONG_SUBCLASS, 0, 0, 0);
        heap.dict_type = heap.type_object(flags::DICT_SUBCLASS, 0, 0, 0);
        heap
    }

    /// Maps `bytes` somewhere new, with `before` bytes in front of the returned address.
    fn alloc(&mut self, before: usize, bytes: Vec<u8>) -> u64 {
        let start = self.next;
        let len = before + bytes.len();
        let mut region = vec![0u8; before];
        region.extend(bytes);
        self.mem.map(start, region);
        self.next += (len as u64 + 0x1000) & !0xfff;
        start + before as u64
    }

    fn type_object(&mut self, flags: u64, basicsize: u64, dictoffset: i64, keys: u64) -> u64 {
        let mut t = vec![0u8; (self.layout.ht_cached_keys() + 8) as usize];
        put(&mut t, self.layout.tp_basicsize, basicsize);
        put(&mut t, self.layout.tp_flags, flags);
        put(&mut t, self.layout.tp_dictoffset, dictoffset as u64);
        put(&mut t, self.layout.ht_cached_keys(), keys);
        self.alloc(0, t)
    }

    fn str(&mut self, text: &str) -> u64 {
        let max = text.chars().map(u32::from).max().unwrap_or(0);
        let l = self.layout;
        let (kind, ascii) = match max {
            0..=0x7f => (1u32, true),
            0x80..=0xff => (1, false),
            0x100..=0xffff => (2, false),
            _ => (4, false),
        };
        let header = if ascii {
            l.unicode_ascii_size
        } else {
            l.unicode_compact_size
        };
        let mut b = vec![0u8; header as usize];
        put(&mut b, l.ob_type, self.str_type);
        put(&mut b, l.unicode_length, text.chars().count() as u64);
        // Interned (1, immortal) too, as the names of threads often are.
        let interned = if l.string_state.kind_shift == 8 { 1 } else { 2 };
        let state = l.string_state.encode(kind, ascii) | interned;
        b[l.unicode_state as usize..l.unicode_state as usize + 4]
            .copy_from_slice(&state.to_le_bytes());
        for c in text.chars() {
            let c = u32::from(c);
            b.extend(&c.to_le_bytes()[..kind as usize]);
        }
        b.extend(vec![0u8; kind as usize]);
        self.alloc(0, b)
    }

    fn int(&mut self, value: u64) -> u64 {
        let digits = [(value & 0x3fff_ffff) as u32, (value >> 30) as u32];
        let n: u64 = match value {
            0 => 0,
            v if v < 1 << 30 => 1,
            _ => 2,
        };
        let size_word = match self.layout.long {
            Long::SignedSize => n,
            Long::Tagged if value == 0 => 1,
            Long::Tagged => n << 3,
        };
        let l = self.layout;
        let d = l.long_digits as usize;
        let mut b = vec![0u8; d + 8];
        put(&mut b, l.ob_type, self.int_type);
        put(&mut b, l.long_size, size_word);
        b[d..d + 4].copy_from_slice(&digits[0].to_le_bytes());
        b[d + 4..d + 8].copy_from_slice(&digits[1].to_le_bytes());
        self.alloc(0, b)
    }

    /// A keys object with `entries` (value 0 for a split table's entries).
    fn keys(&mut self, entries: &[(u64, u64)], string_keys: bool) -> u64 {
        let n = entries.len() as u64;
        let mut size = 8u64;
        while n * 3 > size * 2 {
            size *= 2;
        }
        let mut b;
        match self.layout.keys {
            Keys::Sized => {
                b = vec![0u8; 40];
                put(&mut b, 0, 1);
                put(&mut b, 8, size);
                put(&mut b, 24, size * 2 / 3 - n);
                put(&mut b, 32, n);
                b.extend(vec![0xffu8; size as usize]);
                for &(k, v) in entries {
                    b.extend(0xdead_u64.to_le_bytes());
                    b.extend(k.to_le_bytes());
                    b.extend(v.to_le_bytes());
                }
            }
            Keys::Log2 => {
                b = vec![0u8; 32];
                put(&mut b, 0, 1);
                let log2 = size.trailing_zeros() as u8;
                b[8] = log2;
                b[9] = log2;
                b[10] = u8::from(string_keys);
                put(&mut b, 16, size * 2 / 3 - n);
                put(&mut b, 24, n);
                b.extend(vec![0xffu8; size as usize]);
                for &(k, v) in entries {
                    if !string_keys {
                        b.extend(0xdead_u64.to_le_bytes());
                    }
                    b.extend(k.to_le_bytes());
                    b.extend(v.to_le_bytes());
                }
            }
        }
        self.alloc(0, b)
    }

    fn dict(&mut self, entries: &[(u64, u64)], string_keys: bool) -> u64 {
        let keys = self.keys(entries, string_keys);
        self.dict_object(keys, 0)
    }

    fn dict_object(&mut self, keys: u64, values: u64) -> u64 {
        let l = self.layout;
        let mut b = vec![0u8; (l.ma_values + 8) as usize];
        put(&mut b, 0, 1);
        put(&mut b, l.ob_type, self.dict_type);
        put(&mut b, l.ma_keys, keys);
        put(&mut b, l.ma_values, values);
        self.alloc(0, b)
    }

    /// A values array for a split table (3.13's with its header).
    fn values(&mut self, values: &[u64]) -> u64 {
        let mut b = Vec::new();
        if self.layout.dict_values_start > 0 {
            b.extend([values.len() as u8, values.len() as u8, 0, 1, 0, 0, 0, 0]);
        }
        for v in values {
            b.extend(v.to_le_bytes());
        }
        self.alloc(0, b)
    }

    /// An instance of a Python class with attributes `attrs`, stored the way the layout's
    /// version stores them (shared keys where it can).
    fn instance(&mut self, attrs: &[(&str, u64)]) -> u64 {
        let keys: Vec<u64> = attrs.iter().map(|(k, _)| self.str(k)).collect();
        let values: Vec<u64> = attrs.iter().map(|&(_, v)| v).collect();
        let shared = self.keys(&keys.iter().map(|&k| (k, 0)).collect::<Vec<_>>(), true);
        match self.layout.instances {
            Instances::DictOffset => {
                let array = self.values(&values);
                let dict = self.dict_object(shared, array);
                let ty = self.type_object(flags::HEAPTYPE, 32, 16, 0);
                let mut b = vec![0u8; 32];
                put(&mut b, self.layout.ob_type, ty);
                put(&mut b, 16, dict);
                self.alloc(0, b)
            }
            Instances::Managed311 => {
                let array = self.values(&values);
                let ty = self.type_object(flags::HEAPTYPE | flags::MANAGED_DICT, 16, -1, shared);
                let mut b = vec![0u8; 32 + 16];
                put(&mut b, 0, array); // values pointer, 4 words before the object
                put(&mut b, 8, 0); // dict pointer, 3 words before
                put(&mut b, 32 + self.layout.ob_type, ty);
                self.alloc(0, b) + 32
            }
            Instances::Managed312 => {
                let array = self.values(&values);
                let ty = self.type_object(flags::HEAPTYPE | flags::MANAGED_DICT, 16, -1, shared);
                let mut b = vec![0u8; 24 + 16];
                put(&mut b, 0, array - 1); // tagged values pointer, 3 words before
                put(&mut b, 24 + self.layout.ob_type, ty);
                self.alloc(0, b) + 24
            }
            Instances::Inline313 => {
                // The managed dict pointer (null) before the object, the header, then the
                // inline values at `tp_basicsize`.
                let l = self.layout;
                let lead = l.managed_dict_before;
                let ty = self.type_object(
                    flags::HEAPTYPE | flags::MANAGED_DICT | flags::INLINE_VALUES,
                    l.object_header,
                    -1,
                    shared,
                );
                let mut b = vec![0u8; (lead + l.object_header) as usize];
                put(&mut b, lead + l.ob_type, ty);
                b.extend([values.len() as u8, values.len() as u8, 1, 1, 0, 0, 0, 0]);
                for v in &values {
                    b.extend(v.to_le_bytes());
                }
                self.alloc(0, b) + lead
            }
        }
    }
}

fn put(b: &mut [u8], at: u64, value: u64) {
    b[at as usize..at as usize + 8].copy_from_slice(&value.to_le_bytes());
}

fn layouts() -> Vec<Layout> {
    let mut all: Vec<Layout> = (8..=12)
        .map(|minor| Layout::builtin(Version::new(3, minor, 0)).unwrap())
        .collect();
    all.push(Layout::from_debug_offsets(&layout::tests::debug_offsets_3_13()).unwrap());
    all.push(Layout::from_debug_offsets(&layout::tests::debug_offsets_3_15()).unwrap());
    all.extend(free_threaded_layouts());
    all
}

/// The layouts of free-threaded 3.13t, 3.14t and 3.15t.
fn free_threaded_layouts() -> Vec<Layout> {
    [
        layout::tests::debug_offsets_3_13t(),
        layout::tests::debug_offsets_3_14t(),
        layout::tests::debug_offsets_3_15t(),
    ]
    .iter()
    .map(|table| Layout::from_debug_offsets(table).unwrap())
    .collect()
}

#[test]
fn unicode_of_every_kind_decodes_whole() {
    assert_eq!(decode_unicode(1, b"MainThread").unwrap(), "MainThread");
    assert_eq!(
        decode_unicode(1, &[0x63, 0x61, 0x66, 0xe9]).unwrap(),
        "café"
    );
    let ucs2: Vec<u8> = "名前".encode_utf16().flat_map(u16::to_le_bytes).collect();
    assert_eq!(decode_unicode(2, &ucs2).unwrap(), "名前");
    let ucs4: Vec<u8> = "a🧵"
        .chars()
        .flat_map(|c| u32::from(c).to_le_bytes())
        .collect();
    assert_eq!(decode_unicode(4, &ucs4).unwrap(), "a🧵");
    // A lone surrogate (valid in a Python str) is shown as U+FFFD.
    assert_eq!(decode_unicode(2, &[0x00, 0xd8]).unwrap(), "\u{fffd}");
    assert_eq!(
        decode_unicode(4, &0x11_0000u32.to_le_bytes()).unwrap(),
        "\u{fffd}"
    );
    assert!(decode_unicode(3, b"abc").is_err());
}

#[test]
fn ints_decode_in_both_encodings() {
    assert_eq!(decode_long(Long::SignedSize, 1, [4242, 0]), Some(4242));
    assert_eq!(
        decode_long(Long::SignedSize, (-1i64) as u64, [7, 0]),
        Some(-7)
    );
    assert_eq!(decode_long(Long::SignedSize, 0, [9, 9]), Some(0));
    assert_eq!(
        decode_long(Long::SignedSize, 2, [1, 1]),
        Some((1 << 30) + 1)
    );
    assert_eq!(decode_long(Long::SignedSize, 3, [1, 1]), None);
    assert_eq!(decode_long(Long::Tagged, 1 << 3, [4242, 0]), Some(4242));
    assert_eq!(decode_long(Long::Tagged, (1 << 3) | 2, [7, 0]), Some(-7));
    assert_eq!(decode_long(Long::Tagged, 1, [0, 0]), Some(0));
    assert_eq!(decode_long(Long::Tagged, 3 << 3, [1, 1]), None);
}

#[test]
fn strings_of_every_kind_read_back_on_every_layout() {
    for layout in layouts() {
        let mut heap = Heap::new(layout);
        let texts = [
            "MainThread",
            "a-python-thread-name-longer-than-fifteen-bytes",
            "café-crème",
            "名前-スレッド",
            "emoji-🧵-thread",
            "",
        ];
        let addrs: Vec<u64> = texts.iter().map(|t| heap.str(t)).collect();
        let mut types = HashMap::new();
        let mut reader = Reader::new(&heap.mem, &layout, &mut types);
        for (text, addr) in texts.iter().zip(&addrs) {
            assert_eq!(reader.string(*addr).unwrap(), *text, "{:?}", layout.version);
            assert!(reader.string_is(*addr, text).unwrap());
            assert!(!reader.string_is(*addr, "other").unwrap());
        }
        // An int is not a str.
        let int = heap.int(5);
        let mut reader = Reader::new(&heap.mem, &layout, &mut types);
        assert!(reader.string(int).is_err());
        assert_eq!(reader.small_int(int).unwrap(), Some(5));
        assert_eq!(reader.small_int(addrs[0]).unwrap(), None);
    }
}

#[test]
fn overlong_and_unreadable_strings_are_errors() {
    let layout = layouts()[3];
    let mut heap = Heap::new(layout);
    let s = heap.str("abc");
    heap.mem
        .write_u64(s + layout.unicode_length, MAX_STRING_CHARS + 1);
    let t = heap.str("abcdef");
    // Claims more characters than are mapped.
    heap.mem.write_u64(t + layout.unicode_length, 5000);
    let mut types = HashMap::new();
    let mut reader = Reader::new(&heap.mem, &layout, &mut types);
    assert!(reader.string(s).is_err());
    assert!(reader.string(t).is_err());
    assert!(reader.string(0x10).is_err());
}

#[test]
fn dicts_walk_on_every_layout() {
    for layout in layouts() {
        let mut heap = Heap::new(layout);
        let mut entries = Vec::new();
        for i in 0..40u64 {
            let k = heap.str(&format!("module_{i}"));
            let v = heap.int(i);
            entries.push((k, v));
        }
        let threading = heap.str("threading");
        let module = heap.int(999);
        entries.push((threading, module));
        let dict = heap.dict(&entries, true);
        let mut types = HashMap::new();
        let mut reader = Reader::new(&heap.mem, &layout, &mut types);
        assert_eq!(reader.dict_items(dict).unwrap().len(), 41);
        assert_eq!(reader.dict_get(dict, "threading").unwrap(), Some(module));
        assert_eq!(reader.dict_get(dict, "nothing").unwrap(), None);

        // Int keys (`threading._active` is keyed by thread ident): a general table.
        let (k1, k2, v) = (heap.int(140_000_000_001), heap.int(2), heap.str("x"));
        let general = heap.dict(&[(k1, v), (k2, v), (0, 0)], false);
        let mut reader = Reader::new(&heap.mem, &layout, &mut types);
        let items = reader.dict_items(general).unwrap();
        assert_eq!(items, [(k1, v), (k2, v)], "deleted entries are skipped");
        assert_eq!(reader.small_int(k1).unwrap(), Some(140_000_000_001));
        // Not a dict.
        assert!(reader.dict_items(k1).is_err());
    }
}

#[test]
fn corrupt_dicts_are_errors_not_panics() {
    for layout in layouts() {
        let mut heap = Heap::new(layout);
        let k = heap.str("k");
        let dict = heap.dict(&[(k, k)], true);
        let keys = heap.mem.u64(dict + layout.ma_keys).unwrap();
        let mut types = HashMap::new();
        // Every byte of the keys header set to 0xff in turn.
        for at in 0..40 {
            let mut heap2 = Heap::new(layout);
            std::mem::swap(&mut heap2.mem, &mut heap.mem);
            let original = heap2.mem.u8(keys + at).unwrap();
            heap2.mem.write(keys + at, &[0xff]);
            let mut reader = Reader::new(&heap2.mem, &layout, &mut types);
            let _ = reader.dict_items(dict);
            heap2.mem.write(keys + at, &[original]);
            std::mem::swap(&mut heap2.mem, &mut heap.mem);
        }
        // A huge entry count is refused before anything is read.
        match layout.keys {
            Keys::Sized => {
                heap.mem.write_u64(keys + 8, 1 << 40);
                heap.mem.write_u64(keys + 32, 1 << 40);
            }
            Keys::Log2 => {
                heap.mem.write(keys + 8, &[31, 33, 1]);
                heap.mem.write_u64(keys + 24, 1 << 31);
            }
        }
        let reads = heap.mem.reads.get();
        let mut reader = Reader::new(&heap.mem, &layout, &mut types);
        assert!(reader.dict_items(dict).is_err());
        assert!(heap.mem.reads.get() - reads < 10);
    }
}

#[test]
fn instance_attributes_on_every_layout() {
    for layout in layouts() {
        let mut heap = Heap::new(layout);
        let (name, native) = (heap.str("pool_0"), heap.int(4243));
        let thread = heap.instance(&[
            ("_target", 0x1),
            ("_name", name),
            ("_args", 0x2),
            ("_native_id", native),
        ]);
        let mut types = HashMap::new();
        let mut reader = Reader::new(&heap.mem, &layout, &mut types);
        let [n, id, missing] = reader
            .attributes(thread, ["_name", "_native_id", "_nothing"])
            .unwrap();
        assert_eq!(n, Some(name), "{:?}", layout.version);
        assert_eq!(id, Some(native));
        assert_eq!(missing, None);
        assert_eq!(reader.string(n.unwrap()).unwrap(), "pool_0");
        assert_eq!(reader.small_int(id.unwrap()).unwrap(), Some(4243));
    }
}

#[test]
fn materialized_instance_dicts_are_read_too() {
    // From 3.11 an instance's dict may exist (after `vars(t)`): it then holds the values.
    for layout in layouts().into_iter().filter(|l| l.version.at_least(3, 11)) {
        let mut heap = Heap::new(layout);
        let (key, name) = (heap.str("_name"), heap.str("renamed"));
        let dict = heap.dict(&[(key, name)], true);
        let ty = heap.type_object(
            flags::HEAPTYPE | flags::MANAGED_DICT,
            layout.object_header,
            -1,
            0,
        );
        // The dict pointer 3 words before the object (1 in a free-threaded build).
        let mut b = vec![0u8; (32 + layout.object_header) as usize];
        put(&mut b, 32 - layout.managed_dict_before, dict);
        put(&mut b, 32 + layout.ob_type, ty);
        let obj = heap.alloc(0, b) + 32;
        let mut types = HashMap::new();
        let mut reader = Reader::new(&heap.mem, &layout, &mut types);
        let [n] = reader.attributes(obj, ["_name"]).unwrap();
        assert_eq!(n, Some(name), "{:?}", layout.version);
    }
}

#[test]
fn linked_lists_stop_at_cycles_and_caps() {
    let mut mem = FakeMemory::new();
    // Three nodes, `next` at offset 8: a -> b -> c -> a.
    let (a, b, c) = (0x1000u64, 0x2000u64, 0x3000u64);
    for (node, next) in [(a, b), (b, c), (c, 0)] {
        let mut bytes = vec![0u8; 16];
        bytes[8..16].copy_from_slice(&next.to_le_bytes());
        mem.map(node, bytes);
    }
    assert_eq!(walk(&mem, a, 8, 10).unwrap(), [a, b, c]);
    assert!(walk(&mem, a, 8, 2).is_err());
    mem.write_u64(c + 8, a);
    assert!(walk(&mem, a, 8, 10).is_err());
    mem.write_u64(c + 8, 0x9999_0000);
    assert!(walk(&mem, a, 8, 10).is_err(), "unmapped next");
}

#[test]
fn type_info_is_cached() {
    let layout = layouts()[5];
    let mut heap = Heap::new(layout);
    let s = heap.str("x");
    let mut types: HashMap<u64, TypeInfo> = HashMap::new();
    let mut reader = Reader::new(&heap.mem, &layout, &mut types);
    reader.string(s).unwrap();
    let reads = heap.mem.reads.get();
    let mut reader = Reader::new(&heap.mem, &layout, &mut types);
    reader.type_of(s).unwrap();
    assert_eq!(
        heap.mem.reads.get() - reads,
        1,
        "only ob_type is read again"
    );
    let _ = objects::MAX_DICT_ENTRIES;
}

/// Live interpreters: each CPython found here runs a script with named threads, and what
/// tracer reads of it is compared with what the script says.
mod live {
    use std::{
        io::{BufRead as _, BufReader, Write as _},
        path::PathBuf,
        process::{Command, Stdio},
    };

    use super::*;

    /// Every CPython 3.8 or later on this machine: Debian's and pyenv's.
    pub fn pythons() -> Vec<PathBuf> {
        let mut found: Vec<PathBuf> = ["/usr/bin/python3"].iter().map(PathBuf::from).collect();
        let root = std::env::var_os("PYENV_ROOT")
            .map_or_else(|| PathBuf::from("/root/.pyenv"), PathBuf::from);
        if let Ok(dir) = std::fs::read_dir(root.join("versions")) {
            let mut versions: Vec<PathBuf> = dir
                .filter_map(|e| e.ok())
                .map(|e| e.path().join("bin/python3"))
                .filter(|p| p.exists())
                .collect();
            versions.sort();
            found.extend(versions);
        }
        found
            .into_iter()
            .filter(|p| {
                Command::new(p)
                    .args(["-c", "import sys; sys.exit(sys.version_info < (3, 8))"])
                    .status()
                    .is_ok_and(|s| s.success())
            })
            .collect()
    }

    const SCRIPT: &str = r#"
import _thread, json, sys, threading
from concurrent.futures import ThreadPoolExecutor
stop = threading.Event()
def park():
    stop.wait()
names = ["a-python-thread-name-longer-than-fifteen-bytes", "café-crème",
         "名前-スレッド", "emoji-🧵-thread", "before-rename"]
threads = [threading.Thread(target=park, name=n, daemon=True) for n in names]
for t in threads:
    t.start()
threads[-1].name = "after-rename"
pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="pool")
barrier = threading.Barrier(3)
for _ in range(2):
    pool.submit(barrier.wait)
barrier.wait()
dummy = {}
ready = threading.Event()
def raw(named):
    if named:
        dummy["named"] = (threading.get_native_id(), threading.current_thread().name)
    else:
        dummy["raw"] = threading.get_native_id()
    if len(dummy) == 2:
        ready.set()
    stop.wait()
_thread.start_new_thread(raw, (True,))
_thread.start_new_thread(raw, (False,))
ready.wait()
expected = {str(t.native_id): t.name for t in threading.enumerate()}
print(json.dumps({"names": expected, "raw": dummy["raw"]}), flush=True)
sys.stdin.readline()
"#;

    #[test]
    fn names_of_every_python_here() {
        let pythons = pythons();
        assert!(!pythons.is_empty(), "no CPython 3.8+ found");
        for python in pythons {
            let mut child = Command::new(&python)
                .args(["-c", SCRIPT])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            let mut line = String::new();
            BufReader::new(child.stdout.as_mut().unwrap())
                .read_line(&mut line)
                .unwrap();
            let told: serde_json::Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("{}: {e}: {line:?}", python.display()));
            let pid = child.id();
            let result = (|| {
                let mut interpreter = Interpreter::attach(pid)?.expect("a Python process");
                let snapshot = interpreter.snapshot()?;
                Ok::<_, Error>((interpreter.version(), snapshot))
            })();
            child.stdin.as_mut().unwrap().write_all(b"\n").unwrap();
            child.wait().unwrap();
            let (version, snapshot) =
                result.unwrap_or_else(|e| panic!("{}: {e}", python.display()));
            let expected: HashMap<u32, String> = told["names"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.parse().unwrap(), v.as_str().unwrap().to_owned()))
                .collect();
            eprintln!("{} ({version}): {:?}", python.display(), snapshot.names);
            assert_eq!(snapshot.names, expected, "{} ({version})", python.display());
            assert!(snapshot.names.values().any(|n| n == "MainThread"));
            assert!(snapshot.names.values().any(|n| n == "pool_1"));
            assert!(snapshot.names.values().any(|n| n.starts_with("Dummy-")));
            let raw = told["raw"].as_u64().unwrap() as u32;
            assert!(!snapshot.names.contains_key(&raw));
            // Every thread is a Python thread, the unnamed one too where thread states
            // tell (all versions on x86-64 glibc).
            assert!(
                snapshot.python_tids.contains(&raw),
                "{version}: {snapshot:?}"
            );
            let gil = snapshot.gil.expect("GIL found");
            assert_eq!(gil.end - gil.start, layout::GIL_STATE_SIZE);
            assert_eq!(snapshot.failures, 0);
        }
    }

    #[test]
    fn a_process_without_python_is_not_an_interpreter() {
        let mut child = Command::new("sleep").arg("5").spawn().unwrap();
        let found = Interpreter::attach(child.id());
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(found.unwrap().is_none());
        // Nor is this test binary.
        assert!(Interpreter::attach(std::process::id()).unwrap().is_none());
    }
}

impl Heap {
    /// A type object whose `tp_name` is `name`.
    fn named_type(&mut self, name: &str) -> u64 {
        // Real memory is mapped by whole pages: the name's page goes on after it.
        let mut text = name.as_bytes().to_vec();
        text.resize(text.len().max(64), 0);
        let name = self.alloc(0, text);
        let mut t = vec![0u8; (self.layout.tp_dictoffset + 8) as usize];
        put(&mut t, self.layout.tp_name, name);
        self.alloc(0, t)
    }

    /// An object of type `ty` whose words after the header are `words`.
    fn object(&mut self, ty: u64, words: &[u64]) -> u64 {
        let h = self.layout.object_header;
        let mut b = vec![0u8; (h + 8 * words.len() as u64) as usize];
        put(&mut b, self.layout.ob_type, ty);
        for (i, &w) in words.iter().enumerate() {
            put(&mut b, h + 8 * i as u64, w);
        }
        self.alloc(0, b)
    }

    /// A `set` whose hash table of `size` entries holds `keys` (and empty slots after).
    fn set(&mut self, keys: &[u64], size: u64) -> u64 {
        let mut table = vec![0u8; (size * layout::SET_ENTRY_SIZE) as usize];
        for (i, &key) in keys.iter().enumerate() {
            put(&mut table, i as u64 * layout::SET_ENTRY_SIZE, key);
        }
        let table = self.alloc(0, table);
        let set_type = self.named_type("set");
        // fill, used, mask, table
        let used = keys.len() as u64;
        self.object(set_type, &[used, used, size - 1, table])
    }
}

#[test]
fn weak_sets_give_their_live_referents_only() {
    for layout in layouts() {
        let mut heap = Heap::new(layout);
        let weakref = heap.named_type("weakref.ReferenceType");
        let none_type = heap.named_type("NoneType");
        let none = heap.object(none_type, &[]);
        let dummy_type = heap.named_type("<dummy key> type");
        let dummy = heap.object(dummy_type, &[]);
        let thread = heap.str("a Thread stands in here");
        let live = heap.object(weakref, &[thread]);
        let dead = heap.object(weakref, &[none]);
        let set = heap.set(&[live, dummy, dead], 8);
        let not_a_set = heap.object(weakref, &[set]);
        let mut types = HashMap::new();
        let mut reader = Reader::new(&heap.mem, &layout, &mut types);
        let items = reader.set_items(set).unwrap();
        assert_eq!(items, [live, dead], "{:?}", layout.version);
        let targets: Vec<Option<u64>> = items
            .iter()
            .map(|&i| reader.weakref_target(i).unwrap())
            .collect();
        assert_eq!(targets, [Some(thread), None]);
        // Not a weak reference: no target; not a set, or a table out of bounds: an error.
        assert_eq!(reader.weakref_target(thread).unwrap(), None);
        assert!(reader.set_items(not_a_set).is_err());
        let set_type = heap.named_type("set");
        let huge = heap.object(set_type, &[1, 1, (1 << 40) - 1, 0x1000]);
        let mut types = HashMap::new();
        let mut reader = Reader::new(&heap.mem, &layout, &mut types);
        assert!(reader.set_items(huge).is_err());
    }
}

/// The names of Python threads as a free-threaded build keeps them: ASCII, Latin-1, UCS-2
/// and UCS-4 compact strings and names longer than one read.
const FREE_THREADED_NAMES: [&str; 5] = [
    "MainThread",
    "café-worker",
    "名前-pool_3",
    "🧵 spinner",
    "a name longer than what is read with its header, repeated: \
     a name longer than what is read with its header",
];

/// Every free-threaded layout (3.13t, 3.14t, 3.15t): each `threading._active` entry gives
/// its kernel thread and its name, read through the 32-byte object header, the managed
/// dict one word before the object, the inline values and the version's string state bits.
#[test]
fn free_threaded_builds_read_thread_names() {
    for layout in free_threaded_layouts() {
        let mut heap = Heap::new(layout);
        let mut active = Vec::new();
        for (i, text) in FREE_THREADED_NAMES.iter().enumerate() {
            let tid = 5000 + i as u64;
            let (name, native) = (heap.str(text), heap.int(tid));
            let thread = heap.instance(&[("_name", name), ("_native_id", native)]);
            active.push((heap.int(0x7f00_0000 + i as u64), thread));
        }
        let active = heap.dict(&active, false);
        let tasks = Tasks::same_ids((5000..5010).collect());
        let mut types = HashMap::new();
        let mut reader = Reader::new(&heap.mem, &layout, &mut types);
        let mut names = Vec::new();
        for (key, thread) in reader.dict_items(active).unwrap() {
            let found = thread_name(&mut reader, key, thread, &HashMap::new(), &tasks);
            names.push(found.unwrap().unwrap());
        }
        let expected: Vec<(u32, String)> = FREE_THREADED_NAMES
            .iter()
            .enumerate()
            .map(|(i, n)| (5000 + i as u32, n.to_string()))
            .collect();
        assert_eq!(names, expected, "{:?}", layout.version);
    }
}

/// A string read with the other state bits of its build (3.14t's read as 3.13t's, and
/// the reverse) is refused or read as another kind, never as the name: the bits matter.
#[test]
fn free_threaded_string_state_bits_differ_by_version() {
    let layouts = free_threaded_layouts();
    let (ft13, ft14) = (layouts[0], layouts[1]);
    assert_eq!(ft13.string_state, layout::StringState::BITS);
    assert_eq!(ft14.string_state, layout::StringState::INTERNED_BYTE);
    let mut heap = Heap::new(ft14);
    let s = heap.str("名前");
    let mut types = HashMap::new();
    let mut reader = Reader::new(&heap.mem, &ft14, &mut types);
    assert_eq!(reader.string(s).unwrap(), "名前");
    let mut types = HashMap::new();
    let mut reader = Reader::new(&heap.mem, &ft13, &mut types);
    assert_ne!(reader.string(s).ok().as_deref(), Some("名前"));
}

/// A free-threaded build has no GIL: none is found even where a GIL build of the same
/// version keeps its pointer, so no futex wait is counted as a GIL wait.
#[test]
fn free_threaded_builds_have_no_gil() {
    let gil_build = Layout::from_debug_offsets(&layout::tests::debug_offsets_3_13()).unwrap();
    let free = free_threaded_layouts();
    // 3.13t's table has 3.13's runtime and interpreter offsets.
    assert_eq!(
        (
            free[0].runtime_interpreters_head,
            gil_build.interp_gil_pointer
        ),
        (gil_build.runtime_interpreters_head, Some(16))
    );
    let mut mem = FakeMemory::new();
    let (runtime, interp, gil) = (0x10_0000u64, 0x20_0000u64, 0x30_0000u64);
    let mut r = vec![0u8; 4096];
    put(&mut r, gil_build.runtime_interpreters_head + 8, interp); // interpreters.main
    mem.map(runtime, r);
    let mut i = vec![0u8; 4096];
    put(&mut i, 16, gil); // ceval.gil
    mem.map(interp, i);
    assert_eq!(
        gil_state(&mem, &gil_build, runtime).unwrap(),
        Some(gil..gil + layout::GIL_STATE_SIZE)
    );
    for layout in free {
        assert_eq!(gil_state(&mem, &layout, runtime).unwrap(), None);
    }
}
