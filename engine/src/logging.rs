//! Logging setup: tracing to stderr, text or JSON, with personal codes scrubbed from every line.
//!
//! Code in tilts never logs message bodies; the scrubbing writer is defence in depth for what a
//! dependency or a future change might print.
//!
//! Lines are formatted and scrubbed on the thread that logs, then written by one log thread that
//! writes whatever has accumulated in one system call. `tilts serve` logs a line per request:
//! written one `write(2)` at a time into a pipe (a log collector, journald) that cost about a
//! fifth of tilts' CPU per request and woke the reader for every line. The channel to the log
//! thread is bounded: when stderr cannot keep up, logging threads wait, lines are never dropped.
//! [`LogGuard`] flushes what is still queued when the program ends.

use std::io::{self, BufWriter, Write};
use std::sync::OnceLock;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::time::Duration;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Lines queued for the log thread before logging threads wait for it.
const QUEUED_LINES: usize = 16 * 1024;

/// How long the log thread lets lines gather after a write (under load: one wake-up and one
/// write per window instead of one per line).
const BATCH_WINDOW: Duration = Duration::from_millis(2);

/// How long [`LogGuard`] waits for the log thread to write what is queued.
const FLUSH_WAIT: Duration = Duration::from_secs(5);

/// Installs the global subscriber. The level comes from `TILTS_LOG` (default `info`). Keep the
/// guard until the program ends: dropping it writes out the lines still queued.
#[must_use = "dropping the guard at once flushes the log and leaves later lines unflushed at exit"]
pub fn init(format: LogFormat) -> LogGuard {
    let filter = EnvFilter::try_from_env("TILTS_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(RedactingStderr)
        .with_ansi(false);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    LogGuard(())
}

/// Writes out the queued log lines when dropped (at the end of `main`).
#[derive(Debug)]
pub struct LogGuard(());

impl Drop for LogGuard {
    fn drop(&mut self) {
        flush();
    }
}

/// Waits (at most [`FLUSH_WAIT`]) until every line logged so far is written to stderr.
pub fn flush() {
    let Some(sink) = SINK.get().and_then(Option::as_ref) else {
        return;
    };
    let (ack, done) = sync_channel(1);
    if sink.send(Msg::Flush(ack)).is_ok() {
        let _ = done.recv_timeout(FLUSH_WAIT);
    }
}

enum Msg {
    Line(Vec<u8>),
    Flush(SyncSender<()>),
}

/// The log thread's queue; `None` if the thread could not be started (lines are then written
/// directly).
static SINK: OnceLock<Option<SyncSender<Msg>>> = OnceLock::new();

fn sink() -> Option<&'static SyncSender<Msg>> {
    SINK.get_or_init(|| {
        let (tx, rx) = sync_channel(QUEUED_LINES);
        std::thread::Builder::new()
            .name("tilts-log".into())
            .spawn(move || write_lines(rx, io::stderr()))
            .ok()
            .map(|_| tx)
    })
    .as_ref()
}

/// The log thread: writes each batch of queued lines to `to` with one write (of up to 64 KiB).
fn write_lines(rx: Receiver<Msg>, to: impl Write) {
    let mut out = BufWriter::with_capacity(64 * 1024, to);
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(msg) = next {
            match msg {
                Msg::Line(line) => {
                    let _ = out.write_all(&line);
                }
                Msg::Flush(ack) => {
                    let _ = out.flush();
                    let _ = ack.send(());
                }
            }
            next = rx.try_recv().ok();
        }
        let _ = out.flush();
        // Let lines gather: a log thread that sleeps in `recv` is woken (a context switch)
        // for every line, which costs more than the write it saves.
        std::thread::sleep(BATCH_WINDOW);
    }
}

/// Makes writers that scrub personal codes before the line goes to stderr.
#[derive(Debug, Clone, Copy)]
pub struct RedactingStderr;

impl<'a> MakeWriter<'a> for RedactingStderr {
    type Writer = LineWriter;
    fn make_writer(&'a self) -> Self::Writer {
        LineWriter(Vec::with_capacity(256))
    }
}

/// Buffers one event, scrubs it and queues it whole on drop (tracing makes one writer per
/// event).
pub struct LineWriter(Vec<u8>);

impl Write for LineWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        let text = String::from_utf8_lossy(&self.0);
        let clean = tilts_adapters::redact::redact(&text)
            .into_owned()
            .into_bytes();
        let clean = match sink() {
            Some(sink) => match sink.send(Msg::Line(clean)) {
                Ok(()) => return,
                // The log thread is gone: write directly.
                Err(e) => match e.0 {
                    Msg::Line(line) => line,
                    Msg::Flush(_) => return,
                },
            },
            None => clean,
        };
        let _ = io::stderr().lock().write_all(&clean);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Records each write it receives.
    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<Vec<Vec<u8>>>>);

    impl Write for Recorder {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().push(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn queued_lines_are_written_together_in_order_and_flush_waits_for_them() {
        let (tx, rx) = sync_channel(QUEUED_LINES);
        let expected: Vec<u8> = (0..200)
            .flat_map(|i| format!("line {i}\n").into_bytes())
            .collect();
        for i in 0..200 {
            tx.send(Msg::Line(format!("line {i}\n").into_bytes()))
                .unwrap();
        }
        let (ack, done) = sync_channel(1);
        tx.send(Msg::Flush(ack)).unwrap();
        let out = Recorder::default();
        let writer = out.clone();
        let thread = std::thread::spawn(move || write_lines(rx, writer));
        done.recv_timeout(FLUSH_WAIT).expect("flush acknowledged");
        let writes = out.0.lock().unwrap().clone();
        assert_eq!(writes.concat(), expected, "every line, in order");
        assert_eq!(writes.len(), 1, "200 queued lines in one write: {writes:?}");
        drop(tx);
        thread.join().unwrap();
    }
}
