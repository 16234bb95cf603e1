//! dicom-storescp core: a DICOM C-STORE SCP.
//!
//! Module map (one concern each):
//! - [`pdu`]: PDU framing with hard size limits, P-DATA splitting
//! - [`negotiation`]: presentation context policy, A-ASSOCIATE-AC/RJ
//! - [`dimse`]: command sets (C-ECHO, C-STORE) in and out
//! - [`association`]: one association's state machine and timeouts
//! - [`spin`]: polling the socket of a quick peer instead of sleeping
//! - [`file_meta`]: the Part-10 prefix (preamble, file meta group)
//! - [`receive`]: gathering an object's fragments, checking it, storing it
//! - [`writer`]: an association's blocking file work, on a thread of its own
//! - [`prepare`]: spool files made ready off the association's thread (tmpfs)
//! - [`storage`]: storage backends behind one trait
//! - [`header`]: reading UIDs and tags from the head of a data set
//! - [`charset`]: decoding text per Specific Character Set
//! - [`tags`]: which tags are extracted, their levels and grouping
//! - [`study`]: per-server study completion bookkeeping
//! - [`events`]: the per-server event channel
//! - [`server`]: listener, runtime, limits, graceful stop
//! - [`memory`]: handing freed heap back to the system when quiet
//! - [`tls`]: DICOM TLS configuration (rustls)
//! - `python`: the pyo3 binding layer

pub mod association;
pub mod attribute_levels;
pub mod charset;
pub mod completion;
pub mod config;
pub mod dimse;
pub mod events;
pub mod file_meta;
pub mod header;
pub mod memory;
pub mod negotiation;
pub mod pdu;
pub mod prepare;
pub mod receive;
pub mod server;
pub mod spin;
pub mod stats;
pub mod storage;
pub mod study;
pub mod tags;
pub mod tls;
pub mod uid_tables;
pub mod writer;

#[cfg(feature = "python")]
mod python;
