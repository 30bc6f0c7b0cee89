//! Stop sequences: generation ends when the text contains one of them, and the stop sequence
//! itself is never returned. Text that could be the start of a stop sequence is held back until
//! the next piece shows whether it is one.

#[derive(Debug, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
}

/// The outcome of adding a piece of text.
#[derive(Debug, PartialEq, Eq)]
pub enum StopOutcome {
    /// Text that is safe to send; generation goes on.
    Continue(String),
    /// A stop sequence was found: the text before it, and generation ends.
    Stopped(String),
}

impl StopMatcher {
    pub fn new(stops: Vec<String>) -> Self {
        Self {
            stops: stops.into_iter().filter(|stop| !stop.is_empty()).collect(),
            held: String::new(),
        }
    }

    pub fn push(&mut self, text: &str) -> StopOutcome {
        if self.stops.is_empty() {
            return StopOutcome::Continue(text.to_string());
        }
        self.held.push_str(text);
        let earliest = self
            .stops
            .iter()
            .filter_map(|stop| self.held.find(stop.as_str()))
            .min();
        if let Some(index) = earliest {
            let before = self.held[..index].to_string();
            self.held.clear();
            return StopOutcome::Stopped(before);
        }
        let keep = self.longest_partial_match();
        let release = self.held.len() - keep;
        let safe: String = self.held[..release].to_string();
        self.held.drain(..release);
        StopOutcome::Continue(safe)
    }

    /// Returns the held-back text at the end of generation.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    /// Length in bytes of the longest suffix of the held text that starts a stop sequence.
    fn longest_partial_match(&self) -> usize {
        let mut longest = 0;
        for stop in &self.stops {
            for (index, _) in stop.char_indices().skip(1) {
                let prefix = &stop[..index];
                if index > longest && self.held.ends_with(prefix) {
                    longest = index;
                }
            }
        }
        longest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_inside_piece_cuts_text() {
        let mut matcher = StopMatcher::new(vec!["END".into()]);
        assert_eq!(
            matcher.push("abc END def"),
            StopOutcome::Stopped("abc ".into())
        );
    }

    #[test]
    fn stop_split_across_pieces_is_held() {
        let mut matcher = StopMatcher::new(vec!["\n\nUser:".into()]);
        assert_eq!(
            matcher.push("Hello\n"),
            StopOutcome::Continue("Hello".into())
        );
        assert_eq!(matcher.push("\nUs"), StopOutcome::Continue(String::new()));
        assert_eq!(matcher.push("er: hi"), StopOutcome::Stopped(String::new()));
    }

    #[test]
    fn false_start_is_released() {
        let mut matcher = StopMatcher::new(vec!["STOP".into()]);
        assert_eq!(matcher.push("ST"), StopOutcome::Continue(String::new()));
        assert_eq!(matcher.push("AY"), StopOutcome::Continue("STAY".into()));
        assert_eq!(matcher.finish(), "");
    }

    #[test]
    fn held_text_returns_at_finish() {
        let mut matcher = StopMatcher::new(vec!["<|end|>".into()]);
        assert_eq!(
            matcher.push("done <|"),
            StopOutcome::Continue("done ".into())
        );
        assert_eq!(matcher.finish(), "<|");
    }

    #[test]
    fn no_stops_passes_text_through() {
        let mut matcher = StopMatcher::new(Vec::new());
        assert_eq!(
            matcher.push("anything"),
            StopOutcome::Continue("anything".into())
        );
    }

    #[test]
    fn multibyte_prefix_is_held() {
        let mut matcher = StopMatcher::new(vec!["é!".into()]);
        assert_eq!(matcher.push("café"), StopOutcome::Continue("caf".into()));
        assert_eq!(matcher.push("!"), StopOutcome::Stopped(String::new()));
    }
}
