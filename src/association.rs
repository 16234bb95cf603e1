//! One association, from A-ASSOCIATE-RQ to release or abort: negotiation,
//! the DIMSE message loop (C-ECHO, C-STORE) and the timeouts that bound it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dicom_ul::pdu::{
    AbortRQServiceProviderReason, AssociationRJ, AssociationRJResult,
    AssociationRJServiceProviderPresentationReason, AssociationRJSource, Pdu,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

use crate::completion::{AssociationInfo, StoreReport};
use crate::config::ServerConfig;
use crate::dimse::{self, status, Command};
use crate::events::{ErrorInfo, Event, Events, Level, Rejected};
use crate::negotiation::{AcceptedContext, NegotiationPolicy, VERIFICATION};
use crate::pdu::{self, PduError, PduReader};
use crate::receive::{self, Incoming};
use crate::storage::{is_valid_uid, Storage};
use crate::study::StudyTracker;
use crate::tags::Extraction;
use crate::writer::{Placement, SpoolPlace, Writer};

/// Everything an association needs from its server.
pub struct ServerContext {
    pub config: ServerConfig,
    pub policy: NegotiationPolicy,
    pub storage: Arc<dyn Storage>,
    pub events: Events,
    pub extraction: Arc<Extraction>,
    pub studies: StudyTracker,
    pub stats: Arc<crate::stats::Stats>,
    /// Prepares spool files ahead of time, where that pays (tmpfs).
    pub preparer: Option<crate::prepare::Preparer>,
}

impl ServerContext {
    pub fn new(
        config: ServerConfig,
        storage: Arc<dyn Storage>,
        events: Events,
    ) -> Result<ServerContext, String> {
        let extraction = Arc::new(config.extraction()?);
        // The tracker runs on the current runtime (inert outside one).
        let stats = Arc::new(crate::stats::Stats::default());
        let studies = StudyTracker::spawn(
            config.study_timeout,
            extraction.clone(),
            events.clone(),
            stats.clone(),
        );
        let preparer =
            crate::prepare::Preparer::for_place(&SpoolPlace::of(storage.as_ref()), stats.clone());
        Ok(ServerContext {
            policy: config.policy()?,
            preparer,
            storage,
            events,
            extraction,
            studies,
            stats,
            config,
        })
    }

    /// Report a refused association: a log line with the running count, and
    /// an `OnAssociationRejected` event.
    pub(crate) async fn rejected(&self, rejected: Rejected) {
        let n = crate::stats::bump(&self.stats.associations_rejected);
        self.events.log(Level::Warning, || {
            format!(
                "association from {:?} at {} rejected ({}): {} [{n} rejected so far]",
                rejected.calling_ae_title.as_deref().unwrap_or("?"),
                rejected.peer,
                rejected.result,
                rejected.reason
            )
        });
        self.events
            .emit(Event::AssociationRejected(Box::new(rejected)))
            .await;
    }
}

fn result_name(result: &AssociationRJResult) -> &'static str {
    match result {
        AssociationRJResult::Permanent => "permanent",
        AssociationRJResult::Transient => "transient",
    }
}

/// Any byte stream an association can run over (TCP, TLS, in-memory).
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

type Io<S> = S;

/// Why the message loop ended.
enum End {
    Released,
    PeerAborted,
    Closed,
    Shutdown,
    /// We abort: protocol violation, timeout, oversized PDU...
    Abort(AbortRQServiceProviderReason, String),
    Io(String),
}

/// A C-STORE whose data set is arriving.
struct Receiving {
    cmd: Command,
    sop_class_uid: String,
    sop_instance_uid: String,
    context: AcceptedContext,
    incoming: Incoming,
}

/// A request whose data set is read and dropped, then answered with a
/// prepared failure response.
struct Discarding {
    context_id: u8,
    response: Vec<u8>,
    error: Option<ErrorInfo>,
}

struct Session {
    ctx: Arc<ServerContext>,
    /// Peer, calling AE title and count of stored objects, shared with the
    /// reports the writer runs.
    assoc: Arc<AssociationInfo>,
    contexts: Vec<AcceptedContext>,
    command: Vec<u8>,
    command_context: Option<u8>,
    receiving: Option<Receiving>,
    discarding: Option<Discarding>,
    /// The association's writer, started with its first object.
    writer: Option<Writer>,
    /// Where the writer runs.
    placement: Placement,
    /// Objects begun on this association.
    objects: u64,
}

async fn timed<T>(limit: Option<Duration>, fut: impl std::future::Future<Output = T>) -> Option<T> {
    match limit {
        Some(d) => tokio::time::timeout(d, fut).await.ok(),
        None => Some(fut.await),
    }
}

/// How long the next read may wait, and whether running out of it only ends
/// a stretch. While a message is in progress (`busy`): the DIMSE timeout.
/// Between messages: what is left of the idle timeout (the line has been
/// quiet for `quiet`), in stretches no longer than the DIMSE timeout, so that
/// the timer never moves earlier when a message starts (tokio wakes its I/O
/// driver through an eventfd for that: a write and a spare `epoll_wait` per
/// object).
fn next_wait(
    busy: bool,
    quiet: Duration,
    idle: Option<Duration>,
    dimse: Option<Duration>,
) -> (Option<Duration>, bool) {
    if busy {
        return (dimse, false);
    }
    match (idle, dimse) {
        (idle, Some(stretch)) if stretch.is_zero() => (idle, false),
        (None, Some(stretch)) => (Some(stretch), true),
        (Some(idle), Some(stretch)) => {
            let left = idle.saturating_sub(quiet);
            if left > stretch {
                (Some(stretch), true)
            } else {
                (Some(left), false)
            }
        }
        (idle, None) => (idle, false),
    }
}

/// Refuse an association because the server is at its limit.
pub async fn reject_busy<S: Stream>(stream: S, ctx: Arc<ServerContext>, peer: String) {
    let mut io = stream;
    let mut reader = PduReader::default();
    let first = timed(
        ctx.config.acse_timeout,
        reader.read(&mut io, pdu::MAX_ASSOCIATE_PDU),
    )
    .await;
    let mut rejected = Rejected {
        peer: peer.clone(),
        reason: format!(
            "local limit of {} associations exceeded",
            ctx.config.max_associations
        ),
        ..Rejected::default()
    };
    if let Some(Ok(raw)) = first {
        if raw.pdu_type == pdu::A_ASSOCIATE_RQ {
            if let Ok(Some(Pdu::AssociationRQ(rq))) =
                dicom_ul::pdu::read_pdu(raw.bytes, pdu::MAX_ASSOCIATE_PDU, false)
            {
                rejected.calling_ae_title = Some(rq.calling_ae_title.trim().to_string());
                rejected.called_ae_title = Some(rq.called_ae_title.trim().to_string());
            }
            let rj = AssociationRJ {
                result: AssociationRJResult::Transient,
                source: AssociationRJSource::ServiceProviderPresentation(
                    AssociationRJServiceProviderPresentationReason::LocalLimitExceeded,
                ),
            };
            rejected.result = result_name(&rj.result);
            pdu::send_quietly(&mut io, &pdu::reject_pdu(rj)).await;
            ctx.rejected(rejected).await;
        }
    }
    pdu::close_after_last_pdu(&mut io).await;
}

/// Send an A-ABORT (service provider) and close the way the state machine wants.
async fn abort_and_close<S: Stream>(io: &mut Io<S>, reason: AbortRQServiceProviderReason) {
    pdu::send_quietly(io, &pdu::abort_pdu(reason)).await;
    pdu::close_after_last_pdu(io).await;
}

/// Serve one association over plain TCP to its end, with its writer where
/// `placement` says.
pub async fn serve_tcp(
    stream: tokio::net::TcpStream,
    peer: String,
    ctx: Arc<ServerContext>,
    shutdown: watch::Receiver<bool>,
    placement: Placement,
) {
    use std::os::fd::AsFd;
    let reader = match stream.as_fd().try_clone_to_owned() {
        // An association with a thread to itself may spin on its socket.
        Ok(fd) if placement == Placement::Inline => {
            PduReader::with_low_water(fd).spinning(crate::spin::Spinners::process())
        }
        Ok(fd) => PduReader::with_low_water(fd),
        Err(_) => PduReader::default(),
    };
    serve_with(stream, reader, peer, ctx, shutdown, placement).await
}

/// Serve one association to its end.
pub async fn serve<S: Stream>(
    stream: S,
    peer: String,
    ctx: Arc<ServerContext>,
    shutdown: watch::Receiver<bool>,
) {
    let reader = PduReader::default();
    serve_with(stream, reader, peer, ctx, shutdown, Placement::OwnThread).await
}

async fn serve_with<S: Stream>(
    stream: S,
    mut reader: PduReader,
    peer: String,
    ctx: Arc<ServerContext>,
    mut shutdown: watch::Receiver<bool>,
    placement: Placement,
) {
    let mut io = stream;
    let events = ctx.events.clone();

    // A-ASSOCIATE-RQ within the ACSE timeout.
    let rq = match timed(
        ctx.config.acse_timeout,
        reader.read(&mut io, pdu::MAX_ASSOCIATE_PDU),
    )
    .await
    {
        None => {
            events.log(Level::Info, || {
                format!("{peer}: no association request within the ACSE timeout")
            });
            pdu::close_after_last_pdu(&mut io).await;
            return;
        }
        Some(Err(e)) => {
            events.log(Level::Info, || {
                format!("{peer}: connection dropped before association: {e}")
            });
            if matches!(e, PduError::TooLarge { .. }) {
                pdu::send_quietly(
                    &mut io,
                    &pdu::abort_pdu(AbortRQServiceProviderReason::InvalidPduParameter),
                )
                .await;
            }
            pdu::close_after_last_pdu(&mut io).await;
            return;
        }
        Some(Ok(raw)) => {
            if raw.pdu_type != pdu::A_ASSOCIATE_RQ {
                let t = raw.pdu_type;
                events.log(Level::Warning, || {
                    format!("{peer}: expected A-ASSOCIATE-RQ, got PDU type 0x{t:02x}")
                });
                abort_and_close(&mut io, AbortRQServiceProviderReason::UnexpectedPdu).await;
                return;
            }
            match dicom_ul::pdu::read_pdu(raw.bytes, pdu::MAX_ASSOCIATE_PDU, false) {
                Ok(Some(Pdu::AssociationRQ(rq))) => rq,
                other => {
                    let why = match other {
                        Err(e) => e.to_string(),
                        _ => "incomplete A-ASSOCIATE-RQ".to_string(),
                    };
                    events.log(Level::Warning, || {
                        format!("{peer}: malformed A-ASSOCIATE-RQ: {why}")
                    });
                    abort_and_close(&mut io, AbortRQServiceProviderReason::InvalidPduParameter)
                        .await;
                    return;
                }
            }
        }
    };

    let negotiated = match ctx.policy.negotiate(&rq) {
        Ok(n) => n,
        Err(rejection) => {
            ctx.rejected(Rejected {
                peer: peer.clone(),
                calling_ae_title: Some(rq.calling_ae_title.trim().to_string()),
                called_ae_title: Some(rq.called_ae_title.trim().to_string()),
                reason: rejection.reason,
                result: result_name(&rejection.rj.result),
            })
            .await;
            pdu::send_quietly(&mut io, &pdu::reject_pdu(rejection.rj)).await;
            pdu::close_after_last_pdu(&mut io).await;
            return;
        }
    };
    match pdu::encode(&Pdu::AssociationAC(negotiated.ac)) {
        Ok(bytes) => {
            if io.write_all(&bytes).await.is_err() {
                return;
            }
        }
        Err(_) => return,
    }
    events.log(Level::Info, || {
        format!(
            "association accepted: {:?} -> {:?} from {peer}, {} presentation context(s)",
            negotiated.calling_ae_title,
            negotiated.called_ae_title,
            negotiated.contexts.len()
        )
    });

    for (id, abstract_syntax, why) in &negotiated.refused {
        events.log(Level::Info, || {
            format!("{peer}: presentation context {id} ({abstract_syntax}) refused: {why}")
        });
    }

    let _open = crate::stats::OpenAssociation::new(&ctx.stats);
    let mut session = Session {
        ctx: ctx.clone(),
        assoc: Arc::new(AssociationInfo {
            ctx: ctx.clone(),
            peer: peer.as_str().into(),
            calling_ae_title: negotiated.calling_ae_title.into(),
            stored: AtomicU64::new(0),
        }),
        contexts: negotiated.contexts,
        command: Vec::new(),
        command_context: None,
        receiving: None,
        discarding: None,
        writer: None,
        placement,
        objects: 0,
    };
    let end = session.run(&mut io, &mut reader, &mut shutdown).await;
    session.finish(&mut io, end).await;
}

impl Session {
    /// Bytes the object being received still owes by its own account.
    fn owed(&mut self) -> u64 {
        self.receiving.as_mut().map_or(0, |r| r.incoming.owed())
    }

    fn busy(&self) -> bool {
        self.receiving.is_some() || self.discarding.is_some() || !self.command.is_empty()
    }

    async fn run<S: Stream>(
        &mut self,
        io: &mut Io<S>,
        reader: &mut PduReader,
        shutdown: &mut watch::Receiver<bool>,
    ) -> End {
        let limit = self.ctx.config.pdu_limit();
        let mut quiet_since = Instant::now();
        loop {
            let busy = self.busy();
            let config = &self.ctx.config;
            let (timeout, stretch) = next_wait(
                busy,
                quiet_since.elapsed(),
                config.idle_timeout,
                config.dimse_timeout,
            );
            reader.mid_message(busy);
            let read = timed(timeout, reader.read(io, limit));
            let result = if busy {
                // An object in flight is finished even when the server stops.
                read.await
            } else {
                if *shutdown.borrow() {
                    return End::Shutdown;
                }
                tokio::select! {
                    biased;
                    _ = shutdown.changed() => return End::Shutdown,
                    r = read => r,
                }
            };
            let raw = match result {
                // idle, and the idle timeout not over yet
                None if stretch => continue,
                None => {
                    return End::Abort(
                        AbortRQServiceProviderReason::ReasonNotSpecified,
                        format!(
                            "no data from peer within the {} timeout",
                            if busy { "DIMSE" } else { "idle" }
                        ),
                    )
                }
                Some(Err(PduError::Closed)) => return End::Closed,
                Some(Err(PduError::Io(e))) => return End::Io(e.to_string()),
                Some(Err(e)) => {
                    return End::Abort(
                        AbortRQServiceProviderReason::InvalidPduParameter,
                        e.to_string(),
                    )
                }
                Some(Ok(raw)) => raw,
            };
            quiet_since = Instant::now();
            match raw.pdu_type {
                pdu::P_DATA_TF => {
                    // Handle each PDV; the reader's buffer is borrowed, so
                    // copy out the (few) PDV headers first.
                    let body = raw.body();
                    let (window, body_at) = (raw.window, raw.at + pdu::HEADER_LEN);
                    let mut items = Vec::with_capacity(2);
                    for item in pdu::pdvs(body) {
                        match item {
                            Ok(p) => items.push(p),
                            Err(e) => {
                                return End::Abort(
                                    AbortRQServiceProviderReason::InvalidPduParameter,
                                    e.to_string(),
                                )
                            }
                        }
                    }
                    for pdv in items {
                        let at = body_at + pdv.offset;
                        if let Err(end) = self.on_pdv(io, pdv, window, at).await {
                            return end;
                        }
                    }
                }
                pdu::A_RELEASE_RQ => {
                    let rp = dicom_ul::pdu::Pdu::ReleaseRP;
                    pdu::send_quietly(io, &rp).await;
                    return End::Released;
                }
                pdu::A_ABORT => return End::PeerAborted,
                pdu::A_ASSOCIATE_RQ | pdu::A_RELEASE_RP | 0x02 | 0x03 => {
                    return End::Abort(
                        AbortRQServiceProviderReason::UnexpectedPdu,
                        format!("unexpected PDU type 0x{:02x}", raw.pdu_type),
                    )
                }
                other => {
                    return End::Abort(
                        AbortRQServiceProviderReason::UnrecognizedPdu,
                        format!("unknown PDU type 0x{other:02x}"),
                    )
                }
            }
            if let Some(w) = &self.writer {
                w.quick_peer(reader.peer_quick());
            }
            reader.expect_at_least(self.owed());
            if !reader.has_pdu() {
                // About to wait for the peer: write what came meanwhile
                // (before the reader receives, or moves its bytes).
                if let Some(r) = self.receiving.as_mut() {
                    r.incoming.flush(reader.window()).await;
                }
                reader.shrink(self.ctx.config.max_pdu_length as usize + pdu::HEADER_LEN);
            }
        }
    }

    /// The association's writer, started on first use.
    fn writer(&mut self) -> std::io::Result<Writer> {
        if let Some(w) = &self.writer {
            return Ok(w.clone());
        }
        let w = Writer::start(
            SpoolPlace::of(self.ctx.storage.as_ref()),
            self.ctx.storage.clone(),
            self.placement,
            self.ctx.preparer.clone(),
        )?;
        self.writer = Some(w.clone());
        Ok(w)
    }

    fn context(&self, id: u8) -> Option<&AcceptedContext> {
        self.contexts.iter().find(|c| c.id == id)
    }

    async fn send_command<S: Stream>(
        &mut self,
        io: &mut Io<S>,
        context_id: u8,
        command: Vec<u8>,
    ) -> Result<(), End> {
        let bytes =
            pdu::encode_pdata(context_id, true, command).map_err(|e| End::Io(e.to_string()))?;
        self.answer(io, &bytes).await
    }

    /// Send a response; a peer that does not take it within the DIMSE
    /// timeout (it stopped reading) is disconnected.
    async fn answer<S: Stream>(&self, io: &mut Io<S>, bytes: &[u8]) -> Result<(), End> {
        match timed(self.ctx.config.dimse_timeout, io.write_all(bytes)).await {
            Some(Ok(())) => Ok(()),
            Some(Err(e)) => Err(End::Io(e.to_string())),
            None => Err(End::Io(
                "the peer did not take a response within the DIMSE timeout".into(),
            )),
        }
    }

    /// Handle a PDV whose value lies at `at` in `window`, the PDU reader's
    /// buffer.
    async fn on_pdv<S: Stream>(
        &mut self,
        io: &mut Io<S>,
        pdv: pdu::Pdv<'_>,
        window: &[u8],
        at: usize,
    ) -> Result<(), End> {
        let protocol =
            |msg: String| End::Abort(AbortRQServiceProviderReason::UnexpectedPduParameter, msg);
        if self.context(pdv.context_id).is_none() {
            return Err(protocol(format!(
                "PDV for presentation context {} which was not accepted",
                pdv.context_id
            )));
        }
        if pdv.is_command {
            if self.receiving.is_some() || self.discarding.is_some() {
                return Err(protocol(
                    "command received while a data set was expected".into(),
                ));
            }
            if let Some(id) = self.command_context {
                if id != pdv.context_id {
                    return Err(protocol(
                        "command fragments on different presentation contexts".into(),
                    ));
                }
            }
            if self.command.len() + pdv.data.len() > dimse::MAX_COMMAND_LEN {
                return Err(protocol("command set too large".into()));
            }
            self.command_context = Some(pdv.context_id);
            self.command.extend_from_slice(pdv.data);
            if pdv.is_last {
                let bytes = std::mem::take(&mut self.command);
                self.command_context = None;
                let cmd = dimse::parse_command(&bytes)
                    .map_err(|e| protocol(format!("bad command set: {e}")))?;
                self.on_command(io, cmd, pdv.context_id).await?;
            }
            return Ok(());
        }

        if let Some(r) = self.receiving.as_mut() {
            if r.context.id != pdv.context_id {
                return Err(protocol(
                    "data set fragment on another presentation context".into(),
                ));
            }
            r.incoming
                .push_in_place(window, at..at + pdv.data.len())
                .await;
            if pdv.is_last {
                r.incoming.settle(window).await;
                if let Some(r) = self.receiving.take() {
                    self.complete_store(io, r).await?;
                }
            }
            return Ok(());
        }
        if let Some(d) = self.discarding.as_ref() {
            if d.context_id != pdv.context_id {
                return Err(protocol(
                    "data set fragment on another presentation context".into(),
                ));
            }
            if pdv.is_last {
                if let Some(d) = self.discarding.take() {
                    if let Some(err) = d.error {
                        crate::stats::bump(&self.ctx.stats.objects_failed);
                        self.ctx.events.error(err).await;
                    }
                    self.send_command(io, d.context_id, d.response).await?;
                }
            }
            return Ok(());
        }
        Err(protocol("data set fragment without a command".into()))
    }

    fn error_info(&self, message: String, sop: Option<&str>, status: Option<u16>) -> ErrorInfo {
        self.assoc.error_info(message, sop, status)
    }

    async fn on_command<S: Stream>(
        &mut self,
        io: &mut Io<S>,
        cmd: Command,
        context_id: u8,
    ) -> Result<(), End> {
        let context = match self.context(context_id) {
            Some(c) => c.clone(),
            None => {
                return Err(End::Abort(
                    AbortRQServiceProviderReason::UnexpectedPduParameter,
                    "unknown context".into(),
                ))
            }
        };
        match cmd.command_field {
            dimse::C_ECHO_RQ if !cmd.has_dataset => {
                let class = cmd
                    .affected_sop_class_uid
                    .clone()
                    .unwrap_or_else(|| VERIFICATION.to_string());
                self.ctx
                    .events
                    .log(Level::Debug, || format!("C-ECHO from {}", self.assoc.peer));
                self.send_command(io, context_id, dimse::echo_response(cmd.message_id, &class))
                    .await
            }
            dimse::C_STORE_RQ => self.begin_store(io, cmd, context).await,
            dimse::C_CANCEL_RQ => Ok(()),
            field => {
                let class = cmd.affected_sop_class_uid.clone().unwrap_or_default();
                let response = dimse::unsupported_response(field, cmd.message_id, &class);
                self.ctx.events.log(Level::Warning, || {
                    format!(
                        "{}: unsupported DIMSE command 0x{field:04x}",
                        self.assoc.peer
                    )
                });
                if cmd.has_dataset {
                    self.discarding = Some(Discarding {
                        context_id,
                        response,
                        error: None,
                    });
                    Ok(())
                } else {
                    self.send_command(io, context_id, response).await
                }
            }
        }
    }

    async fn begin_store<S: Stream>(
        &mut self,
        io: &mut Io<S>,
        cmd: Command,
        context: AcceptedContext,
    ) -> Result<(), End> {
        let sop_class_uid = cmd.affected_sop_class_uid.clone().unwrap_or_default();
        let sop_instance_uid = cmd.affected_sop_instance_uid.clone().unwrap_or_default();
        let refuse = |status: u16, message: String| {
            (
                dimse::store_response(
                    cmd.message_id,
                    &sop_class_uid,
                    &sop_instance_uid,
                    status,
                    Some(&message),
                ),
                message,
                status,
            )
        };
        let refusal = if !cmd.has_dataset {
            Some(refuse(
                status::CANNOT_UNDERSTAND,
                "C-STORE without a data set".into(),
            ))
        } else if !is_valid_uid(&sop_instance_uid) {
            Some(refuse(
                status::CANNOT_UNDERSTAND,
                format!("Affected SOP Instance UID {sop_instance_uid:?} is not a valid UID"),
            ))
        } else if !is_valid_uid(&sop_class_uid) {
            Some(refuse(
                status::CANNOT_UNDERSTAND,
                format!("Affected SOP Class UID {sop_class_uid:?} is not a valid UID"),
            ))
        } else {
            None
        };
        if let Some((response, message, status)) = refusal {
            let info = self.error_info(message, Some(&sop_instance_uid), Some(status));
            if cmd.has_dataset {
                self.discarding = Some(Discarding {
                    context_id: context.id,
                    response,
                    error: Some(info),
                });
                return Ok(());
            }
            crate::stats::bump(&self.ctx.stats.objects_failed);
            self.ctx.events.error(info).await;
            return self.send_command(io, context.id, response).await;
        }

        let prefix = if self.ctx.config.store_with_file_meta {
            match crate::file_meta::prefix(
                &sop_class_uid,
                &sop_instance_uid,
                &context.transfer_syntax,
                &self.assoc.calling_ae_title,
            ) {
                Ok(p) => p,
                Err(e) => {
                    let (response, message, status) = refuse(status::CANNOT_UNDERSTAND, e);
                    self.discarding = Some(Discarding {
                        context_id: context.id,
                        response,
                        error: Some(self.error_info(
                            message,
                            Some(&sop_instance_uid),
                            Some(status),
                        )),
                    });
                    return Ok(());
                }
            }
        } else {
            Vec::new()
        };
        let writer = match self.writer() {
            Ok(w) => w,
            Err(e) => {
                let (response, message, status) = refuse(
                    status::OUT_OF_RESOURCES,
                    format!("cannot start a writer: {e}"),
                );
                self.discarding = Some(Discarding {
                    context_id: context.id,
                    response,
                    error: Some(self.error_info(message, Some(&sop_instance_uid), Some(status))),
                });
                return Ok(());
            }
        };
        self.objects += 1;
        let incoming = Incoming::new(
            writer,
            self.objects,
            self.ctx.storage.memory_limit(),
            prefix,
        )
        .measure(&context.transfer_syntax);
        self.receiving = Some(Receiving {
            cmd,
            sop_class_uid,
            sop_instance_uid,
            context,
            incoming,
        });
        Ok(())
    }

    async fn complete_store<S: Stream>(&mut self, io: &mut Io<S>, r: Receiving) -> Result<(), End> {
        let Receiving {
            cmd,
            sop_class_uid,
            sop_instance_uid,
            context,
            incoming,
        } = r;
        let report = StoreReport {
            association: self.assoc.clone(),
            context_id: context.id,
            transfer_syntax: context.transfer_syntax,
            message_id: cmd.message_id,
            sop_class_uid,
            sop_instance_uid,
        };
        let checked = receive::check(
            incoming,
            &report.transfer_syntax,
            &report.sop_instance_uid,
            self.ctx.extraction.clone(),
        )
        .await;
        let outcome = match checked {
            Ok(checked) => checked.store(self.ctx.storage.as_ref()).await,
            Err(failure) => Err(failure),
        };
        // Answer first, then tell Python: the sender never waits for listeners.
        let sent = match report.response_for(&outcome) {
            Some(bytes) => self.answer(io, &bytes).await,
            None => Err(End::Io("cannot encode the C-STORE response".into())),
        };
        report.conclude(outcome).deliver().await;
        sent
    }

    async fn finish<S: Stream>(mut self, io: &mut Io<S>, end: End) {
        let events = self.ctx.events.clone();
        let (what, send_abort) = match &end {
            End::Released => ("released".to_string(), None),
            End::PeerAborted => ("aborted by peer".to_string(), None),
            End::Closed => ("connection closed by peer".to_string(), None),
            End::Shutdown => (
                "aborted: server shutting down".to_string(),
                Some(AbortRQServiceProviderReason::ReasonNotSpecified),
            ),
            End::Abort(reason, msg) => (format!("aborted: {msg}"), Some(reason.clone())),
            End::Io(msg) => (format!("I/O error: {msg}"), None),
        };
        if let Some(r) = self.receiving.take() {
            crate::stats::bump(&self.ctx.stats.objects_failed);
            let received = r.incoming.len();
            drop(r.incoming);
            events
                .error(self.error_info(
                    format!("association {what} after {received} bytes of the object"),
                    Some(&r.sop_instance_uid),
                    None,
                ))
                .await;
        }
        let we_spoke_last = send_abort.is_some() || matches!(end, End::Released);
        if let Some(reason) = send_abort {
            pdu::send_quietly(io, &pdu::abort_pdu(reason)).await;
        }
        if we_spoke_last {
            pdu::close_after_last_pdu(io).await;
        } else {
            pdu::shut_down_quietly(io).await;
        }
        let level = match end {
            End::Abort(..) | End::Io(_) => Level::Warning,
            _ => Level::Info,
        };
        events.log(level, || {
            format!(
                "association with {:?} at {} {what}; {} object(s) stored",
                self.assoc.calling_ae_title,
                self.assoc.peer,
                self.assoc.stored.load(Ordering::Relaxed)
            )
        });
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::storage::fs::FilesystemStorage;
    use dicom_ul::pdu::{AssociationRQ, PresentationContextProposed, UserVariableItem};
    use tokio::io::AsyncReadExt;

    /// The waits between messages add up to the idle timeout, each no longer
    /// than the DIMSE timeout; within a message the DIMSE timeout holds.
    #[test]
    fn idle_is_waited_out_in_dimse_stretches() {
        let s = Duration::from_secs;
        let (idle, dimse) = (Some(s(300)), Some(s(60)));
        assert_eq!(next_wait(true, s(10), idle, dimse), (dimse, false));
        assert_eq!(next_wait(false, s(0), idle, dimse), (dimse, true));
        assert_eq!(next_wait(false, s(239), idle, dimse), (dimse, true));
        assert_eq!(next_wait(false, s(250), idle, dimse), (Some(s(50)), false));
        assert_eq!(next_wait(false, s(400), idle, dimse), (Some(s(0)), false));
        // an idle timeout shorter than the DIMSE one is waited at once
        assert_eq!(
            next_wait(false, s(0), Some(s(5)), dimse),
            (Some(s(5)), false)
        );
        // no idle limit: stretches for ever; no DIMSE limit: the idle one
        assert_eq!(next_wait(false, s(1000), None, dimse), (dimse, true));
        assert_eq!(next_wait(false, s(0), idle, None), (idle, false));
        assert_eq!(next_wait(false, s(0), None, None), (None, false));
        // a zero stretch would spin
        assert_eq!(next_wait(false, s(0), None, Some(s(0))), (None, false));
    }

    pub(crate) fn context(
        out_dir: &std::path::Path,
    ) -> (Arc<ServerContext>, crate::events::EventReceiver) {
        let config = ServerConfig {
            out_dir: Some(out_dir.to_path_buf()),
            ..ServerConfig::default()
        };
        let storage = Arc::new(FilesystemStorage::new(out_dir).unwrap());
        let (events, rx) = Events::channel(false);
        (
            Arc::new(ServerContext::new(config, storage, events).unwrap()),
            rx,
        )
    }

    fn associate_rq(contexts: &[(u8, &str, &str)]) -> Vec<u8> {
        pdu::encode(&Pdu::AssociationRQ(AssociationRQ {
            protocol_version: 1,
            calling_ae_title: "TEST-SCU".into(),
            called_ae_title: "STORE-SCP".into(),
            application_context_name: crate::negotiation::APPLICATION_CONTEXT.into(),
            presentation_contexts: contexts
                .iter()
                .map(|(id, a, ts)| PresentationContextProposed {
                    id: *id,
                    abstract_syntax: a.to_string(),
                    transfer_syntaxes: vec![ts.to_string()],
                })
                .collect(),
            user_variables: vec![UserVariableItem::MaxLength(16384)],
        }))
        .unwrap()
    }

    async fn read_pdu<R: tokio::io::AsyncRead + Unpin>(r: &mut R) -> (u8, Vec<u8>) {
        let mut head = [0u8; 6];
        r.read_exact(&mut head).await.unwrap();
        let len = u32::from_be_bytes(head[2..6].try_into().unwrap()) as usize;
        let mut body = vec![0u8; len];
        r.read_exact(&mut body).await.unwrap();
        (head[0], body)
    }

    /// The command set of a P-DATA-TF holding one complete command PDV.
    fn command_of(body: &[u8]) -> Vec<u8> {
        let pdv = pdu::pdvs(body).next().unwrap().unwrap();
        assert!(pdv.is_command && pdv.is_last);
        pdv.data.to_vec()
    }

    fn explicit(group: u16, elem: u16, vr: &[u8; 2], value: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&group.to_le_bytes());
        v.extend_from_slice(&elem.to_le_bytes());
        v.extend_from_slice(vr);
        v.extend_from_slice(&(value.len() as u16).to_le_bytes());
        v.extend_from_slice(value);
        v
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn echo_and_store_over_an_in_memory_stream() {
        let dir = tempfile::tempdir().unwrap();
        let (ctx, mut rx) = context(dir.path());
        let (client, server) = tokio::io::duplex(1 << 16);
        let (_stop, shutdown) = watch::channel(false);
        let task = tokio::spawn(serve(server, "mem".into(), ctx, shutdown));
        let (mut r, mut w) = tokio::io::split(client);
        let ct = "1.2.840.10008.5.1.4.1.1.7";
        w.write_all(&associate_rq(&[
            (1, VERIFICATION, "1.2.840.10008.1.2"),
            (3, ct, "1.2.840.10008.1.2.1"),
        ]))
        .await
        .unwrap();
        assert_eq!(read_pdu(&mut r).await.0, 0x02);

        // C-ECHO answered with the request's Message ID.
        w.write_all(&pdu::encode_pdata(1, true, dimse::echo_request(4242)).unwrap())
            .await
            .unwrap();
        let rsp = command_of(&read_pdu(&mut r).await.1);
        assert_eq!(dimse::command_us(&rsp, 0x0120), Some(4242));
        assert_eq!(dimse::command_us(&rsp, 0x0100), Some(dimse::C_ECHO_RSP));

        // C-STORE of a tiny data set, in two fragments.
        let mut ds = Vec::new();
        ds.extend(explicit(
            0x0008,
            0x0016,
            b"UI",
            b"1.2.840.10008.5.1.4.1.1.7\0",
        ));
        ds.extend(explicit(0x0008, 0x0018, b"UI", b"1.2.3.4\0"));
        ds.extend(explicit(0x0020, 0x000D, b"UI", b"1.2\0"));
        ds.extend(explicit(0x0020, 0x000E, b"UI", b"1.2.3\0"));
        let cmd = dimse::store_request(7, ct, "1.2.3.4");
        w.write_all(&pdu::encode_pdata(3, true, cmd).unwrap())
            .await
            .unwrap();
        let (a, b) = ds.split_at(10);
        let mut first = pdu::encode_pdata(3, false, a.to_vec()).unwrap();
        first[11] = 0x00; // not the last fragment
        w.write_all(&first).await.unwrap();
        w.write_all(&pdu::encode_pdata(3, false, b.to_vec()).unwrap())
            .await
            .unwrap();
        let rsp = command_of(&read_pdu(&mut r).await.1);
        assert_eq!(dimse::command_us(&rsp, 0x0900), Some(status::SUCCESS));
        assert_eq!(dimse::command_us(&rsp, 0x0120), Some(7));
        let stored = std::fs::read(dir.path().join("1.2/1.2.3/1.2.3.4.dcm")).unwrap();
        assert_eq!(stored, ds);

        // Release.
        w.write_all(&[0x05, 0, 0, 0, 0, 4, 0, 0, 0, 0])
            .await
            .unwrap();
        assert_eq!(read_pdu(&mut r).await.0, 0x06);
        task.await.unwrap();
        let stored_events = rx
            .try_iter()
            .filter(|e| matches!(e, Event::FileStored(_)))
            .count();
        assert_eq!(stored_events, 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn garbage_ends_the_association_quietly() {
        let dir = tempfile::tempdir().unwrap();
        let (ctx, _rx) = context(dir.path());
        for junk in [
            &b""[..],
            b"\x01\x00\xff\xff\xff\xff",
            b"\x04\x00\x00\x00\x00\x02\x00\x00",
            b"GET / HTTP/1.1\r\n\r\n",
        ] {
            let (mut client, server) = tokio::io::duplex(1 << 16);
            let (_stop, shutdown) = watch::channel(false);
            let task = tokio::spawn(serve(server, "mem".into(), ctx.clone(), shutdown));
            client.write_all(junk).await.unwrap();
            client.shutdown().await.unwrap();
            let mut sink = Vec::new();
            let _ = client.read_to_end(&mut sink).await;
            task.await.unwrap();
        }
    }
}
