//! Reading a whole BPF hash map with `BPF_MAP_LOOKUP_BATCH` (Linux 5.6): one system call per
//! chunk of entries instead of two per entry, which is most of a large scrape's cost.

use std::{io, os::fd::RawFd};

/// `BPF_MAP_LOOKUP_BATCH` in `enum bpf_cmd`.
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Calls `f` with every entry of the hash map `fd` (keys `u32`, values `V`), reading `chunk`
/// entries per call. Fails if the kernel cannot do batch lookups.
///
/// `V` must be plain data that any bit pattern is a valid value of.
pub fn for_each<V: Copy>(fd: RawFd, chunk: usize, mut f: impl FnMut(u32, &V)) -> io::Result<()> {
    let mut keys = vec![0u32; chunk];
    // SAFETY: the caller promises `V` is plain data, valid when zeroed.
    let mut values: Vec<V> = vec![unsafe { std::mem::zeroed() }; chunk];
    // Hash maps use a bucket index as the position token; 8 bytes leaves room to spare.
    let mut position = 0u64;
    let mut next = 0u64;
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first {
                0
            } else {
                (&raw const position) as u64
            },
            out_batch: (&raw mut next) as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: chunk as u32,
            map_fd: fd as u32,
            ..BatchAttr::default()
        };
        // SAFETY: bpf(2) with a batch attribute whose buffers hold `chunk` keys and values.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &raw mut attr,
                size_of::<BatchAttr>() as u32,
            )
        };
        let error = (rc < 0).then(io::Error::last_os_error);
        let filled = (attr.count as usize).min(chunk);
        for (key, value) in keys.iter().zip(&values).take(filled) {
            f(*key, value);
        }
        match error {
            None => {}
            // The end of the map; the last chunk may have come with it.
            Some(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
            Some(e) => return Err(e),
        }
        position = next;
        first = false;
    }
}
