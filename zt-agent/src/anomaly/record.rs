//! Live traces for `zt-agent model record`: the syscall batches of the
//! identities being recorded, kept per thread and written one trace per
//! thread (`<tgid>-<tid>.txt`; a single-threaded process is one file).
//!
//! - [`Recordings`]: the recordings in progress, shared by the pipeline
//!   (which adds batches) and the control socket (which starts and ends them).
//! - [`Recording`]: one identity's threads and calls, bounded by
//!   [`MAX_CALLS`] (calls beyond it are counted, not kept). Batches of one
//!   thread come from the CPUs it ran on in any order: each carries the
//!   time of its first call, and a thread's batches are put in that order
//!   when it is written.
//! - [`TelemetrySwitch`]: turning an identity's syscall telemetry on and
//!   off in the kernel (implemented by `bpf`), and reading the calls still
//!   waiting in the kernel's per-CPU batches.
//! - [`Recorder::record`]: one recording from start to files.
use std::{
    collections::{BTreeMap, HashMap},
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use serde::{Deserialize, Serialize};

use super::trace;
use crate::fsutil::FsError;

/// Calls one recording keeps at most (4 bytes each).
pub const MAX_CALLS: u64 = 20_000_000;

/// One thread's batches as (time of the first call, calls): a thread's
/// batches come from the CPUs it ran on in any order.
pub type Batches = Vec<(u64, Vec<u16>)>;

/// Puts a thread's batches in the order of their first calls and returns
/// its calls.
pub fn in_order(batches: &mut Batches) -> Vec<u32> {
    batches.sort_by_key(|(time, _)| *time);
    batches.iter().flat_map(|(_, calls)| calls.iter().map(|&c| u32::from(c))).collect()
}

#[derive(Debug, Default)]
pub struct Recording {
    /// (tgid, tid) -> its batches.
    threads: BTreeMap<(u32, u32), Batches>,
    kept: u64,
    beyond: u64,
}

/// What a finished recording wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordSummary {
    pub traces: usize,
    pub calls: u64,
    /// Calls not kept: the recording was full.
    pub calls_beyond_limit: u64,
}

impl Recording {
    pub fn add(&mut self, tgid: u32, tid: u32, time_ns: u64, calls: &[u16]) {
        let room = MAX_CALLS.saturating_sub(self.kept).min(calls.len() as u64) as usize;
        if room > 0 {
            self.threads.entry((tgid, tid)).or_default().push((time_ns, calls[..room].to_vec()));
        }
        self.kept += room as u64;
        self.beyond += (calls.len() - room) as u64;
    }

    /// Writes one trace per thread into `dir` (created if missing).
    pub fn write(&mut self, dir: &Path) -> Result<RecordSummary, FsError> {
        std::fs::create_dir_all(dir).map_err(crate::fsutil::at("creating", dir))?;
        for ((tgid, tid), batches) in &mut self.threads {
            trace::write(&dir.join(format!("{tgid}-{tid}.txt")), &in_order(batches))?;
        }
        Ok(RecordSummary { traces: self.threads.len(), calls: self.kept, calls_beyond_limit: self.beyond })
    }
}

/// Recordings in progress, by identity id.
#[derive(Debug, Clone, Default)]
pub struct Recordings(Arc<Mutex<HashMap<u32, Recording>>>);

impl Recordings {
    /// Starts recording `identity`; false if a recording of it runs already.
    pub fn start(&self, identity: u32) -> bool {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if m.contains_key(&identity) {
            return false;
        }
        m.insert(identity, Recording::default());
        true
    }

    /// Ends the recording of `identity` and hands it over.
    pub fn finish(&self, identity: u32) -> Option<Recording> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).remove(&identity)
    }

    /// Whether any identity is being recorded (the pipeline's fast check).
    pub fn any(&self) -> bool {
        !self.0.lock().unwrap_or_else(|e| e.into_inner()).is_empty()
    }

    /// Adds a batch of `identity`'s thread `tid` (its first call at
    /// `time_ns`), if the identity is being recorded.
    pub fn add(&self, identity: u32, tgid: u32, tid: u32, time_ns: u64, calls: &[u16]) {
        if let Some(r) = self.0.lock().unwrap_or_else(|e| e.into_inner()).get_mut(&identity) {
            r.add(tgid, tid, time_ns, calls);
        }
    }
}

/// Who wants an identity's syscalls: telemetry stays on while either does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TelemetryUser {
    /// `model record`.
    Recording,
    /// The live anomaly detector.
    Detector,
}

/// The kernel side of recording and detection.
pub trait TelemetrySwitch: Send + Sync {
    /// Sends `identity`'s syscalls for `user` (`on`) or stops; the
    /// programs run only while some identity is on for someone.
    fn set(&self, identity: u32, user: TelemetryUser, on: bool) -> Result<(), String>;
    /// Calls of `identity` still in the kernel's per-CPU batches, as
    /// (tgid, tid, time of the first call, calls).
    fn unsent(&self, identity: u32) -> Vec<(u32, u32, u64, Vec<u16>)>;
    /// What runs now, for `status`.
    fn state(&self) -> String {
        String::new()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("identity {0} is being recorded already")]
    Busy(String),
    #[error("turning syscall telemetry on or off: {0}")]
    Kernel(String),
    #[error(transparent)]
    Fs(#[from] FsError),
}

/// What `model record` needs in the daemon.
#[derive(Clone)]
pub struct Recorder {
    pub switch: Arc<dyn TelemetrySwitch>,
    pub recordings: Recordings,
}

/// After telemetry goes off: time for the pipeline to read what the ring
/// holds (it polls every few ms) before the kernel's unsent batches are
/// read and the recording is written.
const DRAIN: Duration = Duration::from_millis(300);

impl Recorder {
    /// Records `identity` (`name` in messages) for `duration`, then writes
    /// its traces into `dir`. Telemetry goes off however this ends (the
    /// future dropped included).
    pub async fn record(&self, identity: u32, name: &str, dir: &Path, duration: Duration) -> Result<RecordSummary, RecordError> {
        if !self.recordings.start(identity) {
            return Err(RecordError::Busy(name.into()));
        }
        // Telemetry off and the recording dropped however this ends early.
        let _running = Running { recorder: self, identity };
        self.switch.set(identity, TelemetryUser::Recording, true).map_err(RecordError::Kernel)?;
        tokio::time::sleep(duration).await;
        self.switch.set(identity, TelemetryUser::Recording, false).map_err(RecordError::Kernel)?;
        tokio::time::sleep(DRAIN).await;
        for (tgid, tid, time_ns, calls) in self.switch.unsent(identity) {
            self.recordings.add(identity, tgid, tid, time_ns, &calls);
        }
        let mut recording = self.recordings.finish(identity).unwrap_or_default();
        Ok(recording.write(dir)?)
    }
}

/// Turns telemetry off and drops what is left of the recording (nothing
/// after a complete [`Recorder::record`]).
struct Running<'a> {
    recorder: &'a Recorder,
    identity: u32,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        let _ = self.recorder.switch.set(self.identity, TelemetryUser::Recording, false);
        self.recorder.recordings.finish(self.identity);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_are_traces_and_the_limit_is_counted() {
        let rec = Recordings::default();
        assert!(rec.start(3));
        assert!(!rec.start(3), "one recording per identity");
        rec.add(3, 10, 10, 200, &[3]);
        rec.add(4, 11, 11, 100, &[9]);
        rec.add(3, 10, 12, 100, &[5]);
        rec.add(3, 10, 10, 100, &[0, 1, 2]);
        let mut r = rec.finish(3).unwrap();
        assert!(!rec.any());
        let d = tempfile::tempdir().unwrap();
        let s = r.write(&d.path().join("out")).unwrap();
        assert_eq!(s, RecordSummary { traces: 2, calls: 5, calls_beyond_limit: 0 });
        let traces = trace::read_dir(&d.path().join("out")).unwrap();
        assert_eq!(traces.iter().map(|t| t.calls.clone()).collect::<Vec<_>>(), [vec![0, 1, 2, 3], vec![5]]);
        let mut full = Recording { kept: MAX_CALLS - 1, ..Default::default() };
        full.add(1, 1, 0, &[7, 8, 9]);
        assert_eq!((full.kept, full.beyond), (MAX_CALLS, 2));
    }

    /// Records what the daemon asks of the kernel, and holds calls unsent.
    #[derive(Default)]
    struct Switch(Mutex<Vec<(u32, bool)>>);

    impl TelemetrySwitch for Switch {
        fn set(&self, identity: u32, _: TelemetryUser, on: bool) -> Result<(), String> {
            self.0.lock().unwrap().push((identity, on));
            Ok(())
        }
        fn unsent(&self, identity: u32) -> Vec<(u32, u32, u64, Vec<u16>)> {
            vec![(identity * 10, identity * 10, 1, vec![60, 231])]
        }
    }

    #[tokio::test]
    async fn a_recording_ends_with_telemetry_off_even_when_abandoned() {
        let switch = Arc::new(Switch::default());
        let recorder = Recorder { switch: switch.clone(), recordings: Recordings::default() };
        let d = tempfile::tempdir().unwrap();
        recorder.recordings.start(5);
        let busy = recorder.record(5, "a", d.path(), Duration::ZERO).await.unwrap_err();
        assert_eq!(busy.to_string(), "identity a is being recorded already");
        recorder.recordings.finish(5);
        let s = recorder.record(5, "a", d.path(), Duration::ZERO).await.unwrap();
        assert_eq!(s.traces, 1, "the calls still in the kernel's batches");
        assert_eq!(trace::read_dir(d.path()).unwrap()[0].calls, [60, 231]);
        assert_eq!(switch.0.lock().unwrap().first(), Some(&(5, true)));
        assert_eq!(switch.0.lock().unwrap().last(), Some(&(5, false)));
        // The client goes away mid-recording: the future is dropped.
        let r = recorder.clone();
        let path = d.path().to_path_buf();
        let task = tokio::spawn(async move { r.record(6, "b", &path, Duration::from_secs(60)).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(recorder.recordings.any());
        task.abort();
        let _ = task.await;
        assert!(!recorder.recordings.any(), "the abandoned recording is dropped");
        assert_eq!(switch.0.lock().unwrap().last(), Some(&(6, false)), "and its telemetry is off");
    }
}
