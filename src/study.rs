//! Study completion bookkeeping, one tracker per server.
//!
//! A tokio task owns the pending studies: Study Instance UID → the instances
//! received since the study was last reported, and a deadline. Associations
//! feed it through a bounded channel after each stored object; every new
//! instance pushes the study's deadline to `now + study_timeout`. When a
//! deadline passes, the study is reported once (`OnStudyCompleted`) with
//! every instance of that quiet period and forgotten; instances arriving
//! later start a new period. `flush` reports every pending study at once
//! (used by `stop()`).
//!
//! Per pending instance only its UIDs, file location and extracted values
//! are kept.

use std::sync::atomic::Ordering;

use crate::stats::{bump, Stats};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::events::{target, Event, Events, GroupedTags, Level};
use crate::tags::{Extracted, Extraction, StudyTarget};

/// Messages queued at most; associations wait when the tracker lags.
const QUEUE: usize = 4096;

/// One stored instance, as the tracker keeps it.
#[derive(Debug, Clone)]
pub struct InstanceRecord {
    pub study_instance_uid: Box<str>,
    pub series_instance_uid: Box<str>,
    pub sop_instance_uid: Arc<str>,
    pub sop_class_uid: Box<str>,
    pub transfer_syntax_uid: Box<str>,
    pub file: Box<str>,
    pub uri: Box<str>,
    pub tags: Extracted,
}

#[derive(Debug, Clone)]
pub struct InstanceCompleted {
    pub sop_instance_uid: String,
    pub sop_class_uid: String,
    pub transfer_syntax_uid: String,
    pub file: String,
    pub uri: String,
    pub tags: GroupedTags,
}

#[derive(Debug, Clone)]
pub struct SeriesCompleted {
    pub series_instance_uid: String,
    pub tags: GroupedTags,
    pub instances: Vec<InstanceCompleted>,
}

#[derive(Debug, Clone)]
pub struct StudyCompleted {
    pub study_instance_uid: String,
    pub tags: GroupedTags,
    pub series: Vec<SeriesCompleted>,
}

enum Message {
    Stored(Box<InstanceRecord>),
    Flush(oneshot::Sender<()>),
}

/// The associations' handle on the tracker.
#[derive(Clone)]
pub struct StudyTracker {
    tx: mpsc::Sender<Message>,
}

struct PendingSeries {
    uid: Box<str>,
    instances: Vec<InstanceRecord>,
}

struct Pending {
    key: (Instant, u64),
    series: Vec<PendingSeries>,
    /// SOP Instance UID → series index, to replace a re-sent instance.
    index: HashMap<Arc<str>, usize>,
}

impl Pending {
    fn add(&mut self, record: InstanceRecord) {
        if let Some(&si) = self.index.get(&record.sop_instance_uid) {
            // Re-sent (the file was replaced): drop the earlier record. A
            // series left empty stays in place and is skipped when reported.
            if let Some(series) = self.series.get_mut(si) {
                series
                    .instances
                    .retain(|r| r.sop_instance_uid != record.sop_instance_uid);
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
        self.index.insert(record.sop_instance_uid.clone(), si);
        if let Some(series) = self.series.get_mut(si) {
            series.instances.push(record);
        }
    }
}

impl StudyTracker {
    /// Start the tracker task on the current runtime. Outside a runtime
    /// (harnesses that never run a server) the tracker is inert: its
    /// channel is closed and every record is dropped at once.
    pub fn spawn(
        timeout: Duration,
        extraction: Arc<Extraction>,
        events: Events,
        stats: Arc<Stats>,
    ) -> StudyTracker {
        let (tx, rx) = mpsc::channel(QUEUE);
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(run(
                rx,
                timeout,
                extraction,
                events.with_target(target::STUDY),
                stats,
            ));
        }
        StudyTracker { tx }
    }

    /// Record a stored instance (waits while the queue is full).
    pub async fn stored(&self, record: InstanceRecord) {
        // The tracker only ends with the runtime; nothing to do then.
        let _ = self.tx.send(Message::Stored(Box::new(record))).await;
    }

    /// Report every pending study now; returns once they are emitted.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Message::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }
}

async fn run(
    mut rx: mpsc::Receiver<Message>,
    timeout: Duration,
    extraction: Arc<Extraction>,
    events: Events,
    stats: Arc<Stats>,
) {
    let mut pending: HashMap<Box<str>, Pending> = HashMap::new();
    let mut deadlines: BTreeMap<(Instant, u64), Box<str>> = BTreeMap::new();
    let mut seq: u64 = 0;
    loop {
        let next = deadlines.keys().next().map(|k| k.0);
        let sleep = async {
            match next {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            message = rx.recv() => match message {
                Some(Message::Stored(record)) => {
                    seq += 1;
                    let key = (Instant::now() + timeout, seq);
                    let study = record.study_instance_uid.clone();
                    let entry = pending.entry(study.clone()).or_insert_with(|| Pending {
                        key,
                        series: Vec::new(),
                        index: HashMap::new(),
                    });
                    deadlines.remove(&entry.key);
                    entry.key = key;
                    deadlines.insert(key, study);
                    entry.add(*record);
                    stats.studies_pending.store(pending.len() as u64, Ordering::Relaxed);
                }
                Some(Message::Flush(done)) => {
                    let all: Vec<_> = std::mem::take(&mut deadlines).into_values().collect();
                    for study in all {
                        if let Some(p) = pending.remove(&study) {
                            complete(&study, p, &extraction, &events).await;
                            bump(&stats.studies_completed);
                        }
                    }
                    stats.studies_pending.store(pending.len() as u64, Ordering::Relaxed);
                    let _ = done.send(());
                }
                None => return,
            },
            _ = sleep => {
                let now = Instant::now();
                while let Some(entry) = deadlines.first_entry() {
                    if entry.key().0 > now {
                        break;
                    }
                    let study = entry.remove();
                    if let Some(p) = pending.remove(&study) {
                        complete(&study, p, &extraction, &events).await;
                        bump(&stats.studies_completed);
                    }
                }
                stats.studies_pending.store(pending.len() as u64, Ordering::Relaxed);
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
            for (i, v) in &r.tags {
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

fn build(study: &str, pending: Pending, ex: &Extraction) -> StudyCompleted {
    let kept: Vec<&PendingSeries> = pending
        .series
        .iter()
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
            series_instance_uid: s.uid.to_string(),
            tags: ex.flat_tags(stags),
            instances: s
                .instances
                .iter()
                .zip(itags.iter())
                .map(|(r, t)| InstanceCompleted {
                    sop_instance_uid: r.sop_instance_uid.to_string(),
                    sop_class_uid: r.sop_class_uid.to_string(),
                    transfer_syntax_uid: r.transfer_syntax_uid.to_string(),
                    file: r.file.to_string(),
                    uri: r.uri.to_string(),
                    tags: ex.instance_tags(t),
                })
                .collect(),
        })
        .collect();
    StudyCompleted {
        study_instance_uid: study.to_string(),
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
            tags,
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

    #[tokio::test(start_paused = true)]
    async fn every_instance_resets_the_timer() {
        let (events, mut rx) = Events::channel(false);
        let t = StudyTracker::spawn(
            Duration::from_secs(10),
            extraction(Grouping::ByScope),
            events,
            Default::default(),
        );
        let tags =
            |n: &str| -> Extracted { vec![(0, "DOE".into()), (1, "CT".into()), (2, n.into())] };
        t.stored(record("1.1", "1.1.1", "1.1.1.1", tags("1"))).await;
        tokio::time::sleep(Duration::from_secs(8)).await;
        t.stored(record("1.1", "1.1.2", "1.1.2.1", tags("2"))).await;
        t.stored(record("2.2", "2.2.1", "2.2.1.1", tags("1"))).await;
        tokio::time::sleep(Duration::from_secs(8)).await;
        assert!(
            studies(&mut rx).is_empty(),
            "completed before the quiet period"
        );
        // re-sent instance replaces the earlier record
        t.stored(record("1.1", "1.1.2", "1.1.2.1", tags("2"))).await;
        tokio::time::sleep(Duration::from_secs(5)).await;
        let done = studies(&mut rx);
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].study_instance_uid, "2.2");
        tokio::time::sleep(Duration::from_secs(6)).await;
        let done = studies(&mut rx);
        assert_eq!(done.len(), 1);
        let s = &done[0];
        assert_eq!(s.study_instance_uid, "1.1");
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
        t.stored(record("1.1", "1.1.3", "1.1.3.1", tags("3"))).await;
        t.flush().await;
        let done = studies(&mut rx);
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].series.len(), 1);
        t.flush().await;
        assert!(studies(&mut rx).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn flat_puts_everything_on_instances() {
        let (events, mut rx) = Events::channel(false);
        let t = StudyTracker::spawn(
            Duration::from_secs(1),
            extraction(Grouping::Flat),
            events,
            Default::default(),
        );
        t.stored(record(
            "1",
            "1.1",
            "1.1.1",
            vec![(0, "DOE".into()), (2, "7".into())],
        ))
        .await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let done = studies(&mut rx);
        assert_eq!(done[0].tags, vec![(String::new(), vec![])]);
        assert_eq!(done[0].series[0].instances[0].tags[0].1.len(), 2);
    }
}
