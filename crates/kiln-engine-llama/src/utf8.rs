/// Collects token bytes and releases only complete UTF-8 text, so a character split across two
/// tokens is emitted whole with the second one.
#[derive(Debug, Default)]
pub struct Utf8Buffer {
    pending: Vec<u8>,
}

impl Utf8Buffer {
    /// Appends `bytes` and returns the longest complete UTF-8 prefix of what is buffered.
    /// Bytes that can never become valid UTF-8 are replaced with U+FFFD.
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut text = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(valid) => {
                    text.push_str(valid);
                    self.pending.clear();
                    return text;
                }
                Err(err) => {
                    let valid_up_to = err.valid_up_to();
                    let valid = std::str::from_utf8(&self.pending[..valid_up_to])
                        .expect("from_utf8 reported this prefix as valid");
                    text.push_str(valid);
                    match err.error_len() {
                        // An incomplete character at the end: wait for the next token.
                        None => {
                            self.pending.drain(..valid_up_to);
                            return text;
                        }
                        Some(invalid) => {
                            text.push(char::REPLACEMENT_CHARACTER);
                            self.pending.drain(..valid_up_to + invalid);
                        }
                    }
                }
            }
        }
    }

    /// Returns what is left at the end of generation, with an incomplete character replaced.
    pub fn finish(&mut self) -> String {
        let rest = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        rest
    }
}

#[cfg(test)]
mod tests {
    use super::Utf8Buffer;

    #[test]
    fn split_character_waits_for_rest() {
        let euro = "€".as_bytes();
        let mut buffer = Utf8Buffer::default();
        assert_eq!(buffer.push(&[b'a', euro[0]]), "a");
        assert_eq!(buffer.push(&euro[1..2]), "");
        assert_eq!(buffer.push(&euro[2..]), "€");
        assert_eq!(buffer.finish(), "");
    }

    #[test]
    fn invalid_bytes_become_replacement() {
        let mut buffer = Utf8Buffer::default();
        assert_eq!(buffer.push(&[b'x', 0xff, b'y']), "x\u{fffd}y");
    }

    #[test]
    fn unfinished_character_at_end_is_replaced() {
        let mut buffer = Utf8Buffer::default();
        assert_eq!(buffer.push(&"é".as_bytes()[..1]), "");
        assert_eq!(buffer.finish(), "\u{fffd}");
    }
}
