//! One destination's delivery thread: security records from the audit log
//! from its cursor on, then (if asked for) telemetry, to one receiver.
//!
//! - **Cursor**: the index of the first record the receiver may not have.
//!   Over TCP and TLS a record counts as delivered once the receiver's TCP
//!   acknowledged its last byte ([`Conn::acked`]); over UDP once a later
//!   send or an idle check saw no ICMP error. The cursor is saved to
//!   `STATE/siem/NAME.cursor` (atomically, at most once a second and at
//!   stop) with the log's origin: a cursor of another log restarts at 0.
//! - **Outage**: a failed connect or send keeps the cursor where it is;
//!   the thread reconnects with jittered exponential backoff (0.5 s to
//!   30 s) and sends again from the cursor: at least once, the duplicates
//!   bounded by what was unacknowledged when the connection broke (the
//!   SIEM de-duplicates by origin and index). Enforcement never waits on
//!   this thread.
//! - **Order**: security records go first; telemetry only when the log has
//!   nothing more (a bounded queue, dropped and counted when full).
//! - **Stop**: drains what the log holds (at most [`DRAIN_LIMIT`]), closes
//!   cleanly (TLS `close_notify`) and saves the cursor.
use std::{
    collections::VecDeque,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
        mpsc::{Receiver, RecvTimeoutError, TryRecvError},
    },
    time::{Duration, Instant, SystemTime},
};

use serde::{Deserialize, Serialize};

use super::{
    cef,
    config::{Destination, Format, Scheme},
    ocsf,
    record::Record,
    rfc5424::{Message, SdElement, frame},
    transport::{Conn, Transport},
};
use crate::{audit::tail::Tail, host::WallTime, pipeline::event::Event};

/// Records or events per send.
const BATCH: usize = 256;
/// How often an idle destination looks at the log.
const POLL: Duration = Duration::from_millis(50);
/// Longest wait at stop for what the log still holds to go out.
pub const DRAIN_LIMIT: Duration = Duration::from_secs(5);
const SAVE_EVERY: Duration = Duration::from_secs(1);
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// What every destination shares.
pub struct Context {
    pub audit_dir: PathBuf,
    /// Where cursors are kept (`STATE/siem`).
    pub cursor_dir: PathBuf,
    /// The audit log's origin.
    pub origin: String,
    pub node: String,
    pub version: &'static str,
    /// Where each destination is, for the log's retention.
    pub readers: crate::audit::log::Readers,
}

/// A destination as `status` shows it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Status {
    pub name: String,
    pub url: String,
    pub connected: bool,
    /// Index of the first audit record the receiver may not have.
    pub delivered_below: u64,
    /// Audit records not yet delivered (filled in by `status`).
    pub backlog: u64,
    /// When it last had every record of the log (its lag is the time since,
    /// while `backlog` is not 0).
    pub caught_up_at: Option<String>,
    /// Records sent (again, after a broken connection, included).
    pub records_sent: u64,
    /// Records sent again after a connection broke.
    pub records_resent: u64,
    /// Records this destination's filter left out.
    pub records_skipped: u64,
    pub telemetry_sent: u64,
    pub telemetry_dropped: u64,
    pub reconnects: u64,
    pub last_error: Option<String>,
    pub last_error_at: Option<String>,
    /// Audit records deleted (by retention) before this destination had
    /// them: `[from, to)`.
    pub undelivered: Vec<(u64, u64)>,
}

#[derive(Serialize, Deserialize)]
struct Cursor {
    origin: String,
    next: u64,
}

fn cursor_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.cursor"))
}

fn load_cursor(ctx: &Context, name: &str) -> u64 {
    let path = cursor_path(&ctx.cursor_dir, name);
    match std::fs::read(&path).map(|b| serde_json::from_slice::<Cursor>(&b)) {
        Ok(Ok(c)) if c.origin == ctx.origin => c.next,
        Ok(Ok(c)) => {
            tracing::warn!("siem {name}: {} is for log {:?}, not {:?}: delivering from the start", path.display(), c.origin, ctx.origin);
            0
        }
        Ok(Err(e)) => {
            tracing::warn!("siem {name}: {} is unreadable ({e}): delivering from the start", path.display());
            0
        }
        Err(_) => 0,
    }
}

fn save_cursor(ctx: &Context, name: &str, next: u64) {
    let c = Cursor { origin: ctx.origin.clone(), next };
    let bytes = serde_json::to_vec(&c).expect("a cursor serialises");
    if let Err(e) = std::fs::create_dir_all(&ctx.cursor_dir)
        .map_err(|e| e.to_string())
        .and_then(|()| crate::fsutil::write_atomic(&cursor_path(&ctx.cursor_dir, name), &bytes).map_err(|e| e.to_string()))
    {
        tracing::warn!("siem {name}: saving the cursor: {e}");
    }
}

/// A uniformly random fraction in [0.5, 1.5) of `d` (ring's system RNG).
fn jitter(d: Duration) -> Duration {
    let mut b = [0u8; 4];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    d.mul_f64(0.5 + u32::from_le_bytes(b) as f64 / (u32::MAX as f64 + 1.0))
}

struct Batch {
    framed: Vec<u8>,
    datagrams: Vec<Vec<u8>>,
    records: u64,
    telemetry: u64,
}

impl Batch {
    fn new() -> Self {
        Batch { framed: Vec::new(), datagrams: Vec::new(), records: 0, telemetry: 0 }
    }
    fn clear(&mut self) {
        self.framed.clear();
        self.datagrams.clear();
        (self.records, self.telemetry) = (0, 0);
    }
    fn is_empty(&self) -> bool {
        self.records + self.telemetry == 0
    }
}

/// Renders one record as a syslog message onto the batch.
fn render(r: Record, d: &Destination, ctx: &Context, procid: &str, out: &mut Batch) {
    let mut params: Vec<(&'static str, String)> = match &r.place {
        Some(p) => vec![("origin", p.origin.clone()), ("index", p.index.to_string()), ("leaf", p.leaf.clone())],
        None => vec![("origin", ctx.origin.clone()), ("telemetry", "true".into())],
    };
    let time = humantime::parse_rfc3339_weak(&r.time).unwrap_or_else(|_| SystemTime::now());
    let (severity, kind) = (r.severity(), r.kind.clone());
    let body = match d.format {
        Format::Ocsf => ocsf::event(&r, &ocsf::Context { product_version: ctx.version, node: &ctx.node }),
        Format::Cef => cef::event(&r, ctx.version),
        Format::Json => r.payload.to_string(),
    };
    let mut msg = Vec::with_capacity(body.len() + 256);
    let write = |params: Vec<(&'static str, String)>, msg: &mut Vec<u8>| {
        let sd = [SdElement { id: d.sd_id.clone(), params }];
        msg.clear();
        Message {
            facility: d.facility,
            severity,
            time: WallTime(time),
            hostname: &ctx.node,
            app_name: "zt-agent",
            procid,
            msgid: &kind,
            structured_data: &sd,
            body: &body,
        }
        .write(msg, d.max_message)
    };
    if write(params.clone(), &mut msg) {
        params.push(("truncated", "true".into()));
        write(params, &mut msg);
    }
    if d.scheme == Scheme::Udp {
        out.datagrams.push(msg);
    } else {
        frame(&msg, &mut out.framed);
    }
}

/// Datagrams go out in small groups, at most `rate` per second: UDP has no
/// flow control, and a backlog sent at once overflows the receiver's
/// buffer. A stream gets the whole batch in one write.
fn send(c: &mut Conn, batch: &Batch, rate: u32, next: &mut Instant) -> std::io::Result<()> {
    const GROUP: usize = 8;
    if batch.datagrams.is_empty() {
        return c.send(&batch.framed, &[]);
    }
    for group in batch.datagrams.chunks(GROUP) {
        let now = Instant::now();
        if *next > now {
            std::thread::sleep(*next - now);
        }
        *next = (*next).max(now) + Duration::from_secs_f64(group.len() as f64 / rate as f64);
        c.send(&[], group)?;
    }
    Ok(())
}

/// The thread's body: runs until `stop` is set and the log is drained.
pub fn run(
    d: Destination,
    transport: Transport,
    ctx: Arc<Context>,
    status: Arc<Mutex<Status>>,
    telemetry: Receiver<Arc<Event>>,
    stop: Arc<AtomicBool>,
) {
    let lock = || status.lock().expect("poisoned");
    let fail = |what: String| {
        let mut s = status.lock().expect("poisoned");
        if s.last_error.as_deref() != Some(&what) {
            tracing::warn!("siem {}: {what}", d.name);
        }
        s.connected = false;
        s.last_error = Some(what);
        s.last_error_at = Some(humantime::format_rfc3339_seconds(SystemTime::now()).to_string());
    };
    let procid = std::process::id().to_string();
    let mut confirmed = load_cursor(&ctx, &d.name);
    let open = |from: u64| -> Option<Tail> {
        match Tail::open(&ctx.audit_dir, from) {
            Ok((tail, gap)) => {
                if let Some((from, to)) = gap {
                    tracing::error!("siem {}: audit records {from}..{to} were deleted by retention before delivery", d.name);
                    status.lock().expect("poisoned").undelivered.push((from, to));
                }
                Some(tail)
            }
            Err(e) => {
                fail(format!("reading the audit log: {}", crate::error::chain(&e)));
                None
            }
        }
    };
    let mut tail = None;
    let mut conn: Option<Conn> = None;
    let mut ever_connected = false;
    let (mut backoff, mut next_try) = (Duration::ZERO, Instant::now());
    // (bytes written when a batch was out, the record index after it)
    let mut inflight: VecDeque<(u64, u64)> = VecDeque::new();
    let mut held: VecDeque<Arc<Event>> = VecDeque::new();
    let mut raw = Vec::new();
    let mut batch = Batch::new();
    let (mut last_save, mut saved) = (Instant::now(), confirmed);
    let mut stopping: Option<Instant> = None;
    // Records below this were sent at least once by this run.
    let mut high = confirmed;
    let mut last_send = Instant::now();
    let mut udp_next = Instant::now();
    let mut last_caught_up = Instant::now() - SAVE_EVERY;
    lock().delivered_below = confirmed;
    ctx.readers.set(&d.name, confirmed);
    loop {
        if stopping.is_none() && stop.load(Ordering::Relaxed) {
            stopping = Some(Instant::now());
        }
        if stopping.is_some_and(|t| t.elapsed() > DRAIN_LIMIT) {
            break;
        }
        // A fresh tail at the cursor after a start or a broken connection.
        if tail.is_none() {
            tail = open(confirmed);
            if tail.is_none() {
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        }
        let Some(t) = tail.as_mut() else { continue };
        if conn.is_none() {
            if Instant::now() < next_try {
                std::thread::sleep((next_try - Instant::now()).min(POLL));
                continue;
            }
            match Conn::connect(&transport, &d.address) {
                Ok(c) => {
                    // `last_error` stays, with its time: what went wrong last.
                    let mut s = lock();
                    s.connected = true;
                    if ever_connected {
                        s.reconnects += 1;
                    }
                    drop(s);
                    tracing::info!("siem {}: connected to {} ({})", d.name, c.peer, d.url);
                    ever_connected = true;
                    backoff = Duration::ZERO;
                    inflight.clear();
                    conn = Some(c);
                }
                Err(e) => {
                    fail(e.to_string());
                    backoff = (backoff * 2).clamp(BACKOFF_MIN, BACKOFF_MAX);
                    next_try = Instant::now() + jitter(backoff);
                    continue;
                }
            }
        }
        let c = conn.as_mut().expect("connected above");

        // Security records first.
        batch.clear();
        raw.clear();
        let before = t.next_index();
        if let Err(e) = t.read(BATCH, &mut raw) {
            fail(format!("reading the audit log: {}", crate::error::chain(&e)));
            std::thread::sleep(Duration::from_secs(1));
            continue;
        }
        let mut skipped = 0;
        for (index, bytes) in &raw {
            match Record::from_log(bytes) {
                Ok(r) if d.wants(&r.kind, r.severity()) => {
                    render(r, &d, &ctx, &procid, &mut batch);
                    batch.records += 1;
                }
                Ok(_) => skipped += 1,
                Err(e) => {
                    tracing::warn!("siem {}: audit record {index} is not readable ({e}); not sent", d.name);
                    skipped += 1;
                }
            }
        }
        // Then telemetry, when the log has nothing more.
        if raw.is_empty() && d.telemetry {
            while (batch.telemetry as usize) < BATCH {
                let ev = match held.pop_front() {
                    Some(ev) => ev,
                    None => match telemetry.try_recv() {
                        Ok(ev) => ev,
                        Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                    },
                };
                let r = Record::telemetry(serde_json::to_value(&*ev).unwrap_or_default());
                if d.wants(&r.kind, r.severity()) {
                    render(r, &d, &ctx, &procid, &mut batch);
                    batch.telemetry += 1;
                }
            }
        }
        let resent = high.saturating_sub(before).min(raw.len() as u64);
        if !batch.is_empty()
            && let Err(e) = send(c, &batch, d.rate, &mut udp_next).and_then(|()| c.check())
        {
            fail(format!("sending to {}: {e}", c.peer));
            lock().telemetry_dropped += batch.telemetry;
            conn = None;
            // Everything not acknowledged goes again.
            tail = None;
            next_try = Instant::now() + jitter(BACKOFF_MIN);
            continue;
        }
        {
            let mut s = lock();
            s.records_sent += batch.records;
            s.records_resent += resent;
            s.records_skipped += skipped;
            s.telemetry_sent += batch.telemetry;
        }
        if !batch.is_empty() {
            last_send = Instant::now();
        }
        high = high.max(t.next_index());
        inflight.push_back((c.written(), t.next_index()));
        // What the receiver has.
        if c.is_datagram() {
            // No acknowledgements: a batch counts once the next send (or
            // an idle check) got no ICMP error back.
            while inflight.len() > 1 {
                confirmed = inflight.pop_front().expect("non-empty").1;
            }
        } else if let Some(acked) = c.acked() {
            while inflight.front().is_some_and(|(end, _)| *end <= acked) {
                confirmed = inflight.pop_front().expect("non-empty").1;
            }
        }
        let idle = raw.is_empty() && batch.telemetry == 0;
        if idle {
            if let Err(e) = c.check() {
                fail(format!("{}: {e}", c.peer));
                conn = None;
                tail = None;
                continue;
            }
            // An ICMP error for the last datagrams has had time to come back.
            if c.is_datagram() && last_send.elapsed() >= POLL {
                confirmed = t.next_index();
                inflight.clear();
            }
        }
        if confirmed != saved && (last_save.elapsed() >= SAVE_EVERY || stopping.is_some()) {
            save_cursor(&ctx, &d.name, confirmed);
            (saved, last_save) = (confirmed, Instant::now());
        }
        ctx.readers.set(&d.name, confirmed);
        {
            let mut s = lock();
            s.delivered_below = confirmed;
            if idle && confirmed == t.next_index() && last_caught_up.elapsed() >= SAVE_EVERY {
                s.caught_up_at = Some(humantime::format_rfc3339_seconds(SystemTime::now()).to_string());
                last_caught_up = Instant::now();
            }
        }
        if idle {
            if stopping.is_some() {
                break;
            }
            if d.telemetry {
                match telemetry.recv_timeout(POLL) {
                    Ok(ev) => held.push_back(ev),
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => std::thread::sleep(POLL),
                }
            } else {
                std::thread::sleep(POLL);
            }
        }
    }
    if let Some(c) = conn.take()
        && let Some(t) = &tail
        && c.close()
    {
        confirmed = t.next_index();
    }
    save_cursor(&ctx, &d.name, confirmed);
    let mut s = lock();
    (s.delivered_below, s.connected) = (confirmed, false);
}
