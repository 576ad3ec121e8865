//! What a capture collects: decoded events, the table of threads, and its outputs.

pub mod blocked;
pub mod events;
pub mod jsonl;
pub mod perfetto;
pub mod summary;
pub mod table;
pub mod threads;

/// Writes out what `out` buffers and syncs the file, so that everything written is on disk
/// when an output is finished.
pub fn flush_and_sync(out: &mut std::io::BufWriter<std::fs::File>) -> std::io::Result<()> {
    std::io::Write::flush(out)?;
    out.get_ref().sync_all()
}

/// A kernel task name from its fixed-size, NUL-padded bytes. Names are untrusted input:
/// invalid UTF-8 is replaced, nothing is dropped.
pub fn comm_to_string(comm: &[u8]) -> String {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    String::from_utf8_lossy(&comm[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::comm_to_string;

    #[test]
    fn comm_stops_at_nul_and_keeps_invalid_bytes_visible() {
        assert_eq!(comm_to_string(b"worker-1\0\0\0\0\0\0\0\0"), "worker-1");
        assert_eq!(comm_to_string(b"0123456789abcdef"), "0123456789abcdef");
        assert_eq!(comm_to_string(b"bad\xffname\0"), "bad\u{fffd}name");
    }
}
