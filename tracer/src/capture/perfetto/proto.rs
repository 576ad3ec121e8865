//! A small protobuf encoder: varints, fixed-width and length-delimited fields, nested
//! messages. Fields are appended in the order they are written, as protobuf allows.

/// Wire types (the low three bits of a field's key).
const VARINT: u32 = 0;
const FIXED64: u32 = 1;
const LENGTH_DELIMITED: u32 = 2;

/// Appends `value` as a base-128 varint.
pub fn put_varint(buf: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        buf.push((value as u8) | 0x80);
        value >>= 7;
    }
    buf.push(value as u8);
}

/// A message under construction.
#[derive(Clone, Debug, Default)]
pub struct Message {
    buf: Vec<u8>,
}

impl Message {
    pub fn new() -> Self {
        Self::default()
    }

    /// The encoded fields so far.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Empties the message, keeping its allocation.
    pub fn clear(&mut self) {
        self.buf.clear();
    }

    fn key(&mut self, field: u32, wire_type: u32) {
        put_varint(&mut self.buf, u64::from(field << 3 | wire_type));
    }

    /// A `uint32`, `uint64` or enum field.
    pub fn uint(&mut self, field: u32, value: u64) -> &mut Self {
        self.key(field, VARINT);
        put_varint(&mut self.buf, value);
        self
    }

    /// An `int32` or `int64` field: negative values take ten bytes, as protobuf encodes them.
    pub fn int(&mut self, field: u32, value: i64) -> &mut Self {
        self.uint(field, value as u64)
    }

    pub fn bool(&mut self, field: u32, value: bool) -> &mut Self {
        self.uint(field, u64::from(value))
    }

    /// A `fixed64` field.
    pub fn fixed64(&mut self, field: u32, value: u64) -> &mut Self {
        self.key(field, FIXED64);
        self.buf.extend_from_slice(&value.to_le_bytes());
        self
    }

    /// A `bytes` field.
    pub fn bytes(&mut self, field: u32, value: &[u8]) -> &mut Self {
        self.key(field, LENGTH_DELIMITED);
        put_varint(&mut self.buf, value.len() as u64);
        self.buf.extend_from_slice(value);
        self
    }

    /// A `string` field.
    pub fn string(&mut self, field: u32, value: &str) -> &mut Self {
        self.bytes(field, value.as_bytes())
    }

    /// A nested message field, written by `fill`.
    pub fn message(&mut self, field: u32, fill: impl FnOnce(&mut Self)) -> &mut Self {
        self.key(field, LENGTH_DELIMITED);
        let start = self.buf.len();
        fill(self);
        let mut length = Vec::with_capacity(10);
        put_varint(&mut length, (self.buf.len() - start) as u64);
        self.buf.splice(start..start, length);
        self
    }

    /// Bytes that are already encoded fields of this message (a run of repeated fields
    /// built elsewhere).
    pub fn raw(&mut self, fields: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(fields);
        self
    }
}

/// The bytes of `message` framed as field `field` of an enclosing message: key, length, body.
/// Writing these back to back is how a `Trace` is streamed, one `TracePacket` at a time.
pub fn frame(field: u32, message: &Message) -> ([u8; 15], usize) {
    let mut head = Vec::with_capacity(15);
    put_varint(&mut head, u64::from(field << 3 | LENGTH_DELIMITED));
    put_varint(&mut head, message.len() as u64);
    let mut out = [0u8; 15];
    out[..head.len()].copy_from_slice(&head);
    (out, head.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_are_little_endian_base_128() {
        let mut buf = Vec::new();
        for value in [0, 1, 127, 128, 300, u64::MAX] {
            put_varint(&mut buf, value);
        }
        assert_eq!(
            buf,
            [
                0x00, 0x01, 0x7f, 0x80, 0x01, 0xac, 0x02, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                0xff, 0xff, 0x01
            ]
        );
    }

    #[test]
    fn fields_carry_their_number_and_wire_type() {
        let mut m = Message::new();
        m.uint(1, 150)
            .string(2, "testing")
            .int(3, -2)
            .fixed64(47, 5);
        let mut want = vec![0x08, 0x96, 0x01, 0x12, 0x07];
        want.extend_from_slice(b"testing");
        want.extend_from_slice(&[
            0x18, 0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
        ]);
        // Field 47, wire type 1: key 377 as a varint.
        want.extend_from_slice(&[0xf9, 0x02, 5, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(m.as_bytes(), want);
    }

    #[test]
    fn nested_messages_are_length_prefixed() {
        let mut m = Message::new();
        m.message(3, |inner| {
            inner.uint(1, 150);
        });
        assert_eq!(m.as_bytes(), [0x1a, 0x03, 0x08, 0x96, 0x01]);
        // A body of 200 bytes needs a two-byte length.
        let mut big = Message::new();
        big.message(1, |inner| {
            inner.bytes(2, &[7; 197]);
        });
        assert_eq!(&big.as_bytes()[..5], [0x0a, 0xc8, 0x01, 0x12, 0xc5]);
        assert_eq!(big.len(), 3 + 200);
        let mut empty = Message::new();
        empty.message(4, |_| {});
        assert_eq!(empty.as_bytes(), [0x22, 0x00]);
    }

    #[test]
    fn frames_are_key_and_length() {
        let mut m = Message::new();
        m.bytes(1, &[0; 300]);
        let (head, n) = frame(1, &m);
        assert_eq!(&head[..n], [0x0a, 0xaf, 0x02]);
    }
}
