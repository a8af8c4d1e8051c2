//! Reading usage from upstream response bodies as the bytes stream through.
//!
//! A [`UsageParser`] is fed every chunk the client receives, in order, and never holds the
//! stream back: server-sent events are split into lines as they arrive (only a partial line
//! is kept, at most [`MAX_LINE`] bytes), and a plain JSON body is copied aside, up to
//! [`MAX_JSON`] bytes, to be parsed when it ends. Malformed, truncated or hostile bytes never
//! panic: they are counted, and the outcome says so.

mod extract;
mod sse;

use relay_core::Usage;

use crate::facts::{ApiFlavor, Framing};
use crate::sink::MeterOutcome;

pub use extract::{extract_json, Malformed};

/// Longest SSE line kept while waiting for its end.
pub const MAX_LINE: usize = 1 << 20;
/// Largest non-streamed body copied for parsing.
pub const MAX_JSON: usize = 16 << 20;

/// Incremental usage reader for one response.
#[derive(Debug)]
pub struct UsageParser {
    flavor: ApiFlavor,
    framing: Framing,
    lines: sse::LineSplitter,
    json: Vec<u8>,
    truncated: bool,
    usage: Option<Usage>,
    malformed: u32,
    /// The stream's own end marker was seen (`message_stop`, `[DONE]`,
    /// `response.completed`): the response is complete even if the client closes the
    /// connection before the transport ends.
    saw_end: bool,
}

impl UsageParser {
    /// A parser for a response of this flavor and framing.
    pub fn new(flavor: ApiFlavor, framing: Framing) -> Self {
        Self {
            flavor,
            framing,
            lines: sse::LineSplitter::default(),
            json: Vec::new(),
            truncated: false,
            usage: None,
            malformed: 0,
            saw_end: false,
        }
    }

    /// Feed the next chunk of the body.
    pub fn feed(&mut self, chunk: &[u8]) {
        match self.framing {
            Framing::Sse => {
                let (flavor, usage, malformed, saw_end) = (
                    self.flavor,
                    &mut self.usage,
                    &mut self.malformed,
                    &mut self.saw_end,
                );
                self.lines.feed(chunk, |line| {
                    if let Some(data) = sse::data(line) {
                        *saw_end |= extract::is_end_marker(data);
                        match extract::from_event(flavor, data) {
                            Ok(Some(u)) => extract::merge(flavor, usage, u),
                            Ok(None) => {}
                            Err(()) => *malformed += 1,
                        }
                    }
                });
                if self.lines.overflowed() {
                    self.malformed = self.malformed.saturating_add(1);
                }
            }
            Framing::Json | Framing::JsonArray => {
                if self.json.len() + chunk.len() > MAX_JSON {
                    self.truncated = true;
                } else if !self.truncated {
                    self.json.extend_from_slice(chunk);
                }
            }
        }
    }

    /// Whether the stream's own end marker has been seen.
    pub fn saw_end(&self) -> bool {
        self.saw_end
    }

    /// Usage known so far (for a client that leaves mid-stream).
    pub fn partial(&self) -> Option<Usage> {
        self.usage
    }

    /// The body ended: the usage it carried, and how metering ended.
    pub fn finish(&mut self) -> (Option<Usage>, MeterOutcome) {
        if matches!(self.framing, Framing::Json | Framing::JsonArray) {
            if self.truncated {
                return (None, MeterOutcome::Truncated);
            }
            match extract_json(self.flavor, &self.json) {
                Ok(u) => self.usage = u,
                Err(Malformed) => return (None, MeterOutcome::Malformed),
            }
        } else {
            self.lines.finish(|line| {
                if let Some(data) = sse::data(line) {
                    if let Ok(Some(u)) = extract::from_event(self.flavor, data) {
                        extract::merge(self.flavor, &mut self.usage, u);
                    }
                }
            });
        }
        match self.usage {
            Some(u) => (Some(u), MeterOutcome::Complete),
            None if self.malformed > 0 => (None, MeterOutcome::Malformed),
            None => (None, MeterOutcome::UsageMissing),
        }
    }

    /// Bytes of partial SSE line held.
    pub fn lines_buffered(&self) -> usize {
        self.lines.buffered()
    }

    /// Bytes of JSON body held.
    pub fn json_buffered(&self) -> usize {
        self.json.len()
    }

    /// Events that could not be parsed.
    pub fn malformed_events(&self) -> u32 {
        self.malformed
    }
}

#[cfg(test)]
mod tests;
