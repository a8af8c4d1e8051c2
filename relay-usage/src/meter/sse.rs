//! Splitting a server-sent event stream into lines without holding it back.

/// Keeps only the current partial line between chunks.
#[derive(Debug, Default)]
pub(crate) struct LineSplitter {
    partial: Vec<u8>,
    /// Set while skipping the rest of a line longer than [`super::MAX_LINE`].
    skipping: bool,
    overflowed: bool,
}

impl LineSplitter {
    /// Feed a chunk; `on_line` gets every complete line (without its line ending).
    pub(crate) fn feed(&mut self, mut chunk: &[u8], mut on_line: impl FnMut(&[u8])) {
        self.overflowed = false;
        while let Some(pos) = chunk.iter().position(|&b| b == b'\n') {
            let (head, rest) = chunk.split_at(pos);
            chunk = &rest[1..];
            if self.skipping {
                self.skipping = false;
                self.partial.clear();
                continue;
            }
            if self.partial.is_empty() {
                on_line(trim_cr(head));
            } else {
                self.partial.extend_from_slice(head);
                on_line(trim_cr(&self.partial));
                self.partial.clear();
            }
        }
        if self.skipping {
            return;
        }
        if self.partial.len() + chunk.len() > super::MAX_LINE {
            self.partial.clear();
            self.skipping = true;
            self.overflowed = true;
        } else {
            self.partial.extend_from_slice(chunk);
        }
    }

    /// The stream ended: a last line without a newline is still a line.
    pub(crate) fn finish(&mut self, mut on_line: impl FnMut(&[u8])) {
        if !self.skipping && !self.partial.is_empty() {
            on_line(trim_cr(&self.partial));
        }
        self.partial.clear();
    }

    /// Bytes held.
    pub(crate) fn buffered(&self) -> usize {
        self.partial.len()
    }

    /// Whether the last chunk started skipping an over-long line.
    pub(crate) fn overflowed(&self) -> bool {
        self.overflowed
    }
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// The payload of a `data:` line.
pub(crate) fn data(line: &[u8]) -> Option<&[u8]> {
    let rest = line.strip_prefix(b"data:")?;
    Some(rest.strip_prefix(b" ").unwrap_or(rest))
}
