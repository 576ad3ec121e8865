//! Reading another process's memory. What comes back is untrusted input: every caller
//! bounds what it asks for, and a read either fills the whole buffer or fails.

use std::io;

use super::{Error, Result};

/// The most bytes one read may ask for; larger requests are refused as corrupt.
pub const MAX_READ: usize = 16 << 20;

/// A source of another address space's bytes.
pub trait Memory {
    /// Fills `buf` with the bytes at `addr`, all of them or none.
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<()>;

    fn bytes(&self, addr: u64, len: usize) -> Result<Vec<u8>> {
        if len > MAX_READ {
            return Err(Error::Invalid(format!(
                "refusing to read {len} bytes at {addr:#x}"
            )));
        }
        let mut buf = vec![0; len];
        self.read(addr, &mut buf)?;
        Ok(buf)
    }

    fn u8(&self, addr: u64) -> Result<u8> {
        let mut b = [0; 1];
        self.read(addr, &mut b)?;
        Ok(b[0])
    }

    fn u32(&self, addr: u64) -> Result<u32> {
        let mut b = [0; 4];
        self.read(addr, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    fn u64(&self, addr: u64) -> Result<u64> {
        let mut b = [0; 8];
        self.read(addr, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// A pointer-sized word.
    fn ptr(&self, addr: u64) -> Result<u64> {
        self.u64(addr)
    }
}

/// `addr + offset`, failing instead of wrapping around.
pub fn at(addr: u64, offset: u64) -> Result<u64> {
    addr.checked_add(offset)
        .ok_or_else(|| Error::Invalid(format!("address {addr:#x} + {offset:#x} overflows")))
}

/// `addr - offset`, failing instead of wrapping around.
pub fn before(addr: u64, offset: u64) -> Result<u64> {
    addr.checked_sub(offset)
        .ok_or_else(|| Error::Invalid(format!("address {addr:#x} - {offset:#x} underflows")))
}

/// The memory of a live process, read with `process_vm_readv` (which needs the same
/// permission as attaching a debugger: root, or the same user under Yama's default).
#[derive(Debug, Clone, Copy)]
pub struct ProcessMemory {
    pid: u32,
}

impl ProcessMemory {
    pub fn new(pid: u32) -> Self {
        Self { pid }
    }
}

impl Memory for ProcessMemory {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        if addr < 4096 {
            return Err(Error::Invalid(format!("null pointer {addr:#x}")));
        }
        if buf.len() > MAX_READ || addr.checked_add(buf.len() as u64).is_none() {
            return Err(Error::Invalid(format!(
                "refusing to read {} bytes at {addr:#x}",
                buf.len()
            )));
        }
        let local = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        let remote = libc::iovec {
            iov_base: addr as *mut libc::c_void,
            iov_len: buf.len(),
        };
        // SAFETY: `local` describes `buf`, which is writable for its whole length; the
        // remote range is only read by the kernel, in the other process.
        let n =
            unsafe { libc::process_vm_readv(self.pid as libc::pid_t, &local, 1, &remote, 1, 0) };
        if n < 0 {
            return Err(Error::Read {
                addr,
                len: buf.len(),
                source: io::Error::last_os_error(),
            });
        }
        if n as usize != buf.len() {
            return Err(Error::Read {
                addr,
                len: buf.len(),
                source: io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("only {n} bytes readable"),
                ),
            });
        }
        Ok(())
    }
}

/// Synthetic address spaces for tests: regions of bytes at given addresses.
#[cfg(test)]
pub mod fake {
    use std::{cell::Cell, collections::BTreeMap};

    use super::*;

    #[derive(Debug, Default)]
    pub struct FakeMemory {
        regions: BTreeMap<u64, Vec<u8>>,
        pub reads: Cell<usize>,
    }

    impl FakeMemory {
        pub fn new() -> Self {
            Self::default()
        }

        /// Maps `bytes` at `addr` (regions must not overlap).
        pub fn map(&mut self, addr: u64, bytes: Vec<u8>) {
            self.regions.insert(addr, bytes);
        }

        /// Overwrites bytes inside an existing region.
        pub fn write(&mut self, addr: u64, bytes: &[u8]) {
            let (&start, region) = self
                .regions
                .range_mut(..=addr)
                .next_back()
                .expect("write into a mapped region");
            let from = (addr - start) as usize;
            region[from..from + bytes.len()].copy_from_slice(bytes);
        }

        pub fn write_u64(&mut self, addr: u64, value: u64) {
            self.write(addr, &value.to_le_bytes());
        }
    }

    impl Memory for FakeMemory {
        fn read(&self, addr: u64, buf: &mut [u8]) -> Result<()> {
            self.reads.set(self.reads.get() + 1);
            let fault = || Error::Read {
                addr,
                len: buf.len(),
                source: io::Error::from_raw_os_error(libc::EFAULT),
            };
            let (&start, region) = self.regions.range(..=addr).next_back().ok_or_else(fault)?;
            let from = (addr - start) as usize;
            let to = from.checked_add(buf.len()).ok_or_else(fault)?;
            let bytes = region.get(from..to).ok_or_else(fault)?;
            buf.copy_from_slice(bytes);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{fake::FakeMemory, *};

    #[test]
    fn reads_are_whole_or_fail() {
        let mut mem = FakeMemory::new();
        mem.map(0x1000, (0u8..32).collect());
        assert_eq!(mem.u32(0x1004).unwrap(), u32::from_le_bytes([4, 5, 6, 7]));
        assert!(mem.u64(0x101c).is_err(), "crosses the end of the region");
        assert!(mem.u8(0x0fff).is_err());
        assert!(mem.bytes(0x1000, MAX_READ + 1).is_err());
        assert!(at(u64::MAX, 1).is_err());
        assert!(before(0, 1).is_err());
    }

    #[test]
    fn this_process_can_be_read_and_bad_addresses_fail() {
        let value: u64 = 0x1122_3344_5566_7788;
        let mem = ProcessMemory::new(std::process::id());
        assert_eq!(mem.u64(&raw const value as u64).unwrap(), value);
        assert!(mem.u64(8).is_err());
        assert!(mem.u64(0xffff_ffff_ffff_0000).is_err());
    }
}
