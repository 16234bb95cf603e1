//! Study completion bookkeeping, one tracker per server.
//!
//! The pending studies live behind a mutex: Study Instance UID → the
//! instances received since the study was last reported, and a deadline.
//! Recording a stored instance is a short, synchronous insert, so that it
//! can be done from whichever thread finished the object (an association's
//! own thread, or a worker of the server's runtime) without waking anything:
//! every new instance pushes the study's deadline to `now + study_timeout`.
//! A timer task sleeps until the earliest deadline; since every deadline is
//! `now + timeout`, a new instance never moves the earliest one earlier, so
//! the timer is only woken when the first pending study appears. When a deadline passes, the
//! study is reported once (`OnStudyCompleted`) with every instance of that
//! quiet period and forgotten; instances arriving later start a new period.
//! `flush` reports every pending study at once (used by `stop()`).
//!
//! Per pending instance only its UIDs, file location and extracted values
//! are kept.

use std::sync::atomic::Ordering;

use crate::stats::Stats;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::events::{target, Event, Events, GroupedTags, Level};
use crate::tags::{Extracted, Extraction, StudyTarget};

/// One stored instance, as the tracker keeps it.
#[derive(Debug, Clone)]
pub struct InstanceRecord {
    pub study_instance_uid: Arc<str>,
    pub series_instance_uid: Arc<str>,
    pub sop_instance_uid: Arc<str>,
    pub sop_class_uid: Arc<str>,
    pub transfer_syntax_uid: Arc<str>,
    pub file: Arc<str>,
    pub uri: Arc<str>,
    /// Shared with the object's `OnFileStored` event.
    pub tags: Arc<Extracted>,
}

#[derive(Debug, Clone)]
pub struct InstanceCompleted {
    pub sop_instance_uid: Arc<str>,
    pub sop_class_uid: Arc<str>,
    pub transfer_syntax_uid: Arc<str>,
    pub file: Arc<str>,
    pub uri: Arc<str>,
    pub tags: GroupedTags,
}

#[derive(Debug, Clone)]
pub struct SeriesCompleted {
    pub series_instance_uid: Arc<str>,
    pub tags: GroupedTags,
    pub instances: Vec<InstanceCompleted>,
}

#[derive(Debug, Clone)]
pub struct StudyCompleted {
    pub study_instance_uid: Arc<str>,
    pub tags: GroupedTags,
    pub series: Vec<SeriesCompleted>,
}

/// The associations' handle on the tracker.
#[derive(Clone)]
pub struct StudyTracker {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    /// Wakes the timer task when the first pending study appears.
    first: Notify,
    timeout: Duration,
    extraction: Arc<Extraction>,
    events: Events,
    stats: Arc<Stats>,
    /// False outside a runtime: no timer, records are dropped.
    active: bool,
}

#[derive(Default)]
struct State {
    pending: HashMap<Arc<str>, Pending>,
    deadlines: BTreeMap<(Instant, u64), Arc<str>>,
    seq: u64,
}

struct PendingSeries {
    uid: Arc<str>,
    /// In arrival order; `None` where an instance was re-sent later.
    instances: Vec<Option<InstanceRecord>>,
}

struct Pending {
    key: (Instant, u64),
    series: Vec<PendingSeries>,
    /// SOP Instance UID → (series index, position), to replace a re-sent
    /// instance in constant time.
    index: HashMap<Arc<str>, (usize, usize)>,
}

impl Pending {
    fn add(&mut self, record: InstanceRecord) {
        if let Some(&(si, pos)) = self.index.get(&record.sop_instance_uid) {
            // Re-sent (the file was replaced): drop the earlier record. A
            // series left empty stays in place and is skipped when reported.
            if let Some(slot) = self
                .series
                .get_mut(si)
                .and_then(|s| s.instances.get_mut(pos))
            {
                *slot = None;
            }
        }
        let si = match self
            .series
            .iter()
            .rposition(|s| s.uid == record.series_instance_uid)
        {
            Some(i) => i,
            None => {
                self.series.push(PendingSeries {
                    uid: record.series_instance_uid.clone(),
                    instances: Vec::new(),
                });
                self.series.len() - 1
            }
        };
        if let Some(series) = self.series.get_mut(si) {
            self.index.insert(
                record.sop_instance_uid.clone(),
                (si, series.instances.len()),
            );
            series.instances.push(Some(record));
        }
    }
}

impl State {
    fn add(&mut self, record: InstanceRecord, deadline: Instant) {
        self.seq += 1;
        let key = (deadline, self.seq);
        let study = record.study_instance_uid.clone();
        let entry = self
            .pending
            .entry(study.clone())
            .or_insert_with(|| Pending {
                key,
                series: Vec::new(),
                index: HashMap::new(),
            });
        self.deadlines.remove(&entry.key);
        entry.key = key;
        self.deadlines.insert(key, study);
        entry.add(record);
    }

    /// Take the studies whose deadline is at or before `now` (all of them
    /// with `None`), earliest first.
    fn take_due(&mut self, now: Option<Instant>) -> Vec<(Arc<str>, Pending)> {
        let mut due = Vec::new();
        while let Some(entry) = self.deadlines.first_entry() {
            if now.is_some_and(|now| entry.key().0 > now) {
                break;
            }
            let study = entry.remove();
            if let Some(p) = self.pending.remove(&study) {
                due.push((study, p));
            }
        }
        due
    }
}

impl StudyTracker {
    /// Start the tracker's timer task on the current runtime. Outside a
    /// runtime (harnesses that never run a server) the tracker is inert:
    /// every record is dropped at once.
    pub fn spawn(
        timeout: Duration,
        extraction: Arc<Extraction>,
        events: Events,
        stats: Arc<Stats>,
    ) -> StudyTracker {
        let handle = tokio::runtime::Handle::try_current().ok();
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            first: Notify::new(),
            timeout,
            extraction,
            events: events.with_target(target::STUDY),
            stats,
            active: handle.is_some(),
        });
        if let Some(handle) = handle {
            handle.spawn(run(shared.clone()));
        }
        StudyTracker { shared }
    }

    /// Record a stored instance. Never waits for more than the insert.
    pub fn stored(&self, record: InstanceRecord) {
        let shared = &*self.shared;
        if !shared.active {
            return;
        }
        let deadline = Instant::now() + shared.timeout;
        let was_idle = {
            let mut state = shared.lock();
            let was_idle = state.deadlines.is_empty();
            state.add(record, deadline);
            shared.count(&state);
            was_idle
        };
        if was_idle {
            shared.first.notify_one();
        }
    }

    /// Report every pending study now; returns once they are emitted.
    pub async fn flush(&self) {
        let due = {
            let mut state = self.shared.lock();
            let due = state.take_due(None);
            self.shared.count(&state);
            due
        };
        self.shared.report(due).await;
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps half-updated
        // in a way that matters more than losing the tracker: go on.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn count(&self, state: &State) {
        self.stats
            .studies_pending
            .store(state.pending.len() as u64, Ordering::Relaxed);
    }

    async fn report(&self, due: Vec<(Arc<str>, Pending)>) {
        for (study, p) in due {
            complete(&study, p, &self.extraction, &self.events).await;
            crate::stats::bump(&self.stats.studies_completed);
        }
    }
}

/// The timer: sleep until the earliest deadline (or until a first study is
/// pending), report what is due, again. Ends with the server's runtime.
async fn run(shared: Arc<Shared>) {
    loop {
        let next = shared.lock().deadlines.keys().next().map(|k| k.0);
        match next {
            // `stored` notifies after inserting; a permit stored before we
            // wait is not lost (Notify keeps one).
            None => shared.first.notified().await,
            Some(t) => {
                tokio::time::sleep_until(t).await;
                let due = {
                    let mut state = shared.lock();
                    let due = state.take_due(Some(Instant::now()));
                    shared.count(&state);
                    due
                };
                shared.report(due).await;
            }
        }
    }
}

async fn complete(study: &str, pending: Pending, ex: &Extraction, events: &Events) {
    let event = build(study, pending, ex);
    let instances: usize = event.series.iter().map(|s| s.instances.len()).sum();
    events.log(Level::Info, || {
        format!(
            "study {study} completed: {} series, {instances} instance(s)",
            event.series.len()
        )
    });
    events.emit(Event::StudyCompleted(Box::new(event))).await;
}

/// Split each instance's values into study, series and instance tags (the
/// first value met for a study or series tag wins).
pub fn build_parts(
    records: &[(&str, &[InstanceRecord])],
    ex: &Extraction,
) -> (Extracted, Vec<Extracted>, Vec<Vec<Extracted>>) {
    let mut study: Extracted = Vec::new();
    let mut series_tags = Vec::new();
    let mut instance_tags = Vec::new();
    for (_, instances) in records {
        let mut series: Extracted = Vec::new();
        let mut per_instance = Vec::new();
        for r in instances.iter() {
            let mut own: Extracted = Vec::new();
            for (i, v) in r.tags.iter() {
                match ex.study_target(*i) {
                    StudyTarget::Study => {
                        if !study.iter().any(|(j, _)| j == i) {
                            study.push((*i, v.clone()));
                        }
                    }
                    StudyTarget::Series => {
                        if !series.iter().any(|(j, _)| j == i) {
                            series.push((*i, v.clone()));
                        }
                    }
                    StudyTarget::Instance => own.push((*i, v.clone())),
                }
            }
            per_instance.push(own);
        }
        series.sort_by_key(|(i, _)| *i);
        series_tags.push(series);
        instance_tags.push(per_instance);
    }
    study.sort_by_key(|(i, _)| *i);
    (study, series_tags, instance_tags)
}

/// A series of a study being reported: the instances still current.
struct KeptSeries {
    uid: Arc<str>,
    instances: Vec<InstanceRecord>,
}

fn build(study: &str, pending: Pending, ex: &Extraction) -> StudyCompleted {
    let kept: Vec<KeptSeries> = pending
        .series
        .into_iter()
        .map(|s| KeptSeries {
            uid: s.uid,
            instances: s.instances.into_iter().flatten().collect(),
        })
        .filter(|s| !s.instances.is_empty())
        .collect();
    let records: Vec<(&str, &[InstanceRecord])> = kept
        .iter()
        .map(|s| (&*s.uid, s.instances.as_slice()))
        .collect();
    let (study_tags, series_tags, instance_tags) = build_parts(&records, ex);
    let series = kept
        .iter()
        .zip(series_tags.iter().zip(instance_tags.iter()))
        .map(|(s, (stags, itags))| SeriesCompleted {
            series_instance_uid: s.uid.clone(),
            tags: ex.flat_tags(stags),
            instances: s
                .instances
                .iter()
                .zip(itags.iter())
                .map(|(r, t)| InstanceCompleted {
                    sop_instance_uid: r.sop_instance_uid.clone(),
                    sop_class_uid: r.sop_class_uid.clone(),
                    transfer_syntax_uid: r.transfer_syntax_uid.clone(),
                    file: r.file.clone(),
                    uri: r.uri.clone(),
                    tags: ex.instance_tags(t),
                })
                .collect(),
        })
        .collect();
    StudyCompleted {
        study_instance_uid: study.into(),
        tags: ex.flat_tags(&study_tags),
        series,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::EventReceiver;
    use crate::tags::{tag_for_keyword, Grouping, TagRequest};

    fn record(study: &str, series: &str, sop: &str, tags: Extracted) -> InstanceRecord {
        InstanceRecord {
            study_instance_uid: study.into(),
            series_instance_uid: series.into(),
            sop_instance_uid: sop.into(),
            sop_class_uid: "1.2.840.10008.5.1.4.1.1.2".into(),
            transfer_syntax_uid: "1.2.840.10008.1.2.1".into(),
            file: format!("/x/{sop}.dcm").into(),
            uri: format!("file:///x/{sop}.dcm").into(),
            tags: Arc::new(tags),
        }
    }

    fn studies(rx: &mut EventReceiver) -> Vec<StudyCompleted> {
        rx.try_iter()
            .filter_map(|e| match e {
                Event::StudyCompleted(s) => Some(*s),
                _ => None,
            })
            .collect()
    }

    fn extraction(grouping: Grouping) -> Arc<Extraction> {
        let reqs: Vec<_> = ["PatientName", "Modality", "InstanceNumber"]
            .iter()
            .map(|k| TagRequest {
                tag: tag_for_keyword(k).unwrap().0,
                name: k.to_string(),
                private_creator: None,
                custom: false,
            })
            .collect();
        Arc::new(Extraction::new(&reqs, grouping, &[]).unwrap())
    }

    /// A tracker on the current runtime, and its event queue.
    fn tracker(timeout: Duration, grouping: Grouping) -> (StudyTracker, EventReceiver) {
        let (events, rx) = Events::channel(false);
        let t = StudyTracker::spawn(timeout, extraction(grouping), events, Default::default());
        (t, rx)
    }

    #[tokio::test(start_paused = true)]
    async fn every_instance_resets_the_timer() {
        let (t, mut rx) = tracker(Duration::from_secs(10), Grouping::ByScope);
        let tags =
            |n: &str| -> Extracted { vec![(0, "DOE".into()), (1, "CT".into()), (2, n.into())] };
        t.stored(record("1.1", "1.1.1", "1.1.1.1", tags("1")));
        tokio::time::sleep(Duration::from_secs(8)).await;
        t.stored(record("1.1", "1.1.2", "1.1.2.1", tags("2")));
        t.stored(record("2.2", "2.2.1", "2.2.1.1", tags("1")));
        tokio::time::sleep(Duration::from_secs(8)).await;
        assert!(
            studies(&mut rx).is_empty(),
            "completed before the quiet period"
        );
        // re-sent instance replaces the earlier record
        t.stored(record("1.1", "1.1.2", "1.1.2.1", tags("2")));
        tokio::time::sleep(Duration::from_secs(5)).await;
        let done = studies(&mut rx);
        assert_eq!(done.len(), 1);
        assert_eq!(&*done[0].study_instance_uid, "2.2");
        tokio::time::sleep(Duration::from_secs(6)).await;
        let done = studies(&mut rx);
        assert_eq!(done.len(), 1);
        let s = &done[0];
        assert_eq!(&*s.study_instance_uid, "1.1");
        assert_eq!(s.series.len(), 2);
        assert_eq!(s.series[0].instances.len(), 1);
        assert_eq!(s.series[1].instances.len(), 1);
        assert_eq!(
            s.tags,
            vec![(String::new(), vec![("PatientName".into(), "DOE".into())])]
        );
        assert_eq!(
            s.series[0].tags,
            vec![(String::new(), vec![("Modality".into(), "CT".into())])]
        );
        assert_eq!(
            s.series[1].instances[0].tags,
            vec![(String::new(), vec![("InstanceNumber".into(), "2".into())])]
        );

        // a later instance starts a new period; flush reports it at once
        t.stored(record("1.1", "1.1.3", "1.1.3.1", tags("3")));
        t.flush().await;
        let done = studies(&mut rx);
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].series.len(), 1);
        t.flush().await;
        assert!(studies(&mut rx).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn flat_puts_everything_on_instances() {
        let (t, mut rx) = tracker(Duration::from_secs(1), Grouping::Flat);
        t.stored(record(
            "1",
            "1.1",
            "1.1.1",
            vec![(0, "DOE".into()), (2, "7".into())],
        ));
        tokio::time::sleep(Duration::from_secs(2)).await;
        let done = studies(&mut rx);
        assert_eq!(done[0].tags, vec![(String::new(), vec![])]);
        assert_eq!(done[0].series[0].instances[0].tags[0].1.len(), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn records_from_another_thread_wake_the_timer() {
        let (t, mut rx) = tracker(Duration::from_millis(100), Grouping::Flat);
        // Idle long enough for the timer task to be waiting.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let from_thread = t.clone();
        std::thread::spawn(move || {
            from_thread.stored(record("9", "9.1", "9.1.1", Vec::new()));
        })
        .join()
        .unwrap();
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let done = studies(&mut rx);
            if !done.is_empty() {
                assert_eq!(&*done[0].study_instance_uid, "9");
                return;
            }
        }
        panic!("study never reported");
    }

    #[tokio::test(start_paused = true)]
    async fn a_re_sent_instance_is_reported_once_where_it_last_came() {
        let (t, mut rx) = tracker(Duration::from_secs(1), Grouping::Flat);
        for sop in ["1.1.1", "1.1.2", "1.1.3", "1.1.2", "1.1.2"] {
            t.stored(record("1", "1.1", sop, Vec::new()));
        }
        t.flush().await;
        let done = studies(&mut rx);
        let sops: Vec<&str> = done[0].series[0]
            .instances
            .iter()
            .map(|i| &*i.sop_instance_uid)
            .collect();
        assert_eq!(sops, ["1.1.1", "1.1.3", "1.1.2"]);
    }
}
