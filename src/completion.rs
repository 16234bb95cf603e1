//! What follows an object's fate: the response to the sender, counters, log
//! lines, the `OnFileStored` or `OnError` event and the study tracker's
//! record, in that order.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::association::ServerContext;
use crate::dimse::{self, status};
use crate::events::{target, ErrorInfo, Event, FileStored, FileTags, Level};
use crate::header;
use crate::pdu;
use crate::receive::{StoreFailure, StoreOutcome};
use crate::study::InstanceRecord;

/// What an association knows of itself, shared by its reports.
pub struct AssociationInfo {
    pub ctx: Arc<ServerContext>,
    pub peer: Arc<str>,
    pub calling_ae_title: Arc<str>,
    /// Objects stored on this association so far.
    pub stored: AtomicU64,
}

impl AssociationInfo {
    pub fn error_info(&self, message: String, sop: Option<&str>, status: Option<u16>) -> ErrorInfo {
        ErrorInfo {
            message,
            sop_instance_uid: sop.map(str::to_string),
            calling_ae_title: Some(self.calling_ae_title.to_string()),
            peer: Some(self.peer.to_string()),
            status,
        }
    }
}

/// One C-STORE request, from the moment its data set is complete.
#[derive(Clone)]
pub struct StoreReport {
    pub association: Arc<AssociationInfo>,
    pub context_id: u8,
    pub transfer_syntax: String,
    pub message_id: u16,
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
}

/// The event and study record of a concluded store, to be delivered.
pub struct Concluded {
    association: Arc<AssociationInfo>,
    event: Event,
    record: Option<InstanceRecord>,
}

impl StoreReport {
    fn response(&self, status: u16, comment: Option<&str>) -> Option<Vec<u8>> {
        let command = dimse::store_response(
            self.message_id,
            &self.sop_class_uid,
            &self.sop_instance_uid,
            status,
            comment,
        );
        pdu::encode_pdata(self.context_id, true, command).ok()
    }

    /// The encoded response PDU for an outcome (`None` if it cannot be
    /// encoded, which a well-formed request never causes).
    pub fn response_for(&self, outcome: &Result<StoreOutcome, StoreFailure>) -> Option<Vec<u8>> {
        match outcome {
            Ok(_) => self.response(status::SUCCESS, None),
            Err(f) => self.response(f.status, Some(f.message.as_str())),
        }
    }

    /// Count and log the outcome and make its event and study record.
    pub fn conclude(self, outcome: Result<StoreOutcome, StoreFailure>) -> Concluded {
        let a = &*self.association;
        let ctx = &a.ctx;
        let outcome = match outcome {
            Ok(outcome) => outcome,
            Err(f) => {
                crate::stats::bump(&ctx.stats.objects_failed);
                let info = a.error_info(f.message, Some(&self.sop_instance_uid), Some(f.status));
                return Concluded {
                    event: ctx.events.error_event(info),
                    record: None,
                    association: self.association,
                };
            }
        };
        a.stored.fetch_add(1, Ordering::Relaxed);
        crate::stats::bump(&ctx.stats.objects_stored);
        ctx.stats
            .bytes_stored
            .fetch_add(outcome.stored.size, Ordering::Relaxed);
        let StoreOutcome {
            stored,
            mut header,
            key,
        } = outcome;
        ctx.events.log_to(target::STORAGE, Level::Info, || {
            format!(
                "stored {} ({} bytes) from {}",
                stored.uri, stored.size, a.peer
            )
        });
        for warning in &header.warnings {
            ctx.events.log_to(target::TAGS, Level::Warning, || {
                format!("{} from {}: {warning}", key.sop_instance_uid, a.peer)
            });
        }
        let extracted = Arc::new(ctx.extraction.extract(&mut header));
        // One copy of each value, shared by the event and the study record.
        let sop_class_uid: Arc<str> = header
            .get(header::SOP_CLASS_UID)
            .unwrap_or(&self.sop_class_uid)
            .into();
        let record = InstanceRecord {
            study_instance_uid: key.study_instance_uid.into(),
            series_instance_uid: key.series_instance_uid.into(),
            sop_instance_uid: key.sop_instance_uid.into(),
            sop_class_uid,
            transfer_syntax_uid: self.transfer_syntax.into(),
            file: stored.location.into(),
            uri: stored.uri.into(),
            tags: extracted,
        };
        let file_stored = FileStored {
            file: record.file.clone(),
            uri: record.uri.clone(),
            sop_instance_uid: record.sop_instance_uid.clone(),
            sop_class_uid: record.sop_class_uid.clone(),
            transfer_syntax_uid: record.transfer_syntax_uid.clone(),
            study_instance_uid: record.study_instance_uid.clone(),
            series_instance_uid: record.series_instance_uid.clone(),
            calling_ae_title: a.calling_ae_title.clone(),
            peer: a.peer.clone(),
            size: stored.size,
            tags: FileTags {
                extraction: ctx.extraction.clone(),
                values: record.tags.clone(),
            },
        };
        Concluded {
            event: Event::FileStored(Box::new(file_stored)),
            record: Some(record),
            association: self.association,
        }
    }
}

impl Concluded {
    /// Deliver (waits while the event queue is full).
    pub async fn deliver(self) {
        let ctx = &self.association.ctx;
        ctx.events.emit(self.event).await;
        if let Some(record) = self.record {
            ctx.studies.stored(record);
        }
    }
}
