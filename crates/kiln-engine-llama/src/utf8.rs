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

    /// Discards an incomplete character left at the end of generation, as happens when
    /// `max_tokens` cuts a multi-byte character between its tokens. Returns nothing, because
    /// `push` already released every complete character.
    pub fn finish(&mut self) -> String {
        self.pending.clear();
        String::new()
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
    fn unfinished_character_at_end_is_dropped() {
        let mut buffer = Utf8Buffer::default();
        assert_eq!(buffer.push(&"aé".as_bytes()[..2]), "a");
        assert_eq!(buffer.finish(), "");
    }
}
