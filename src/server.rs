//! The listener: its own tokio runtime per server, the accept loop, the
//! association limit, and graceful shutdown.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;

use crate::association::{self, ServerContext};
use crate::config::{Backend, ServerConfig};
use crate::events::{target, Event, Events, Level};
use crate::storage::fs::FilesystemStorage;
use crate::storage::s3::S3Storage;
use crate::storage::Storage;
use crate::study::StudyTracker;
use crate::writer::Placement;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Storage(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
}

/// A running server.
pub struct Server {
    runtime: Option<tokio::runtime::Runtime>,
    shutdown: watch::Sender<bool>,
    accept_task: Option<tokio::task::JoinHandle<()>>,
    local_addr: SocketAddr,
    events: Events,
    studies: StudyTracker,
    stats: Arc<crate::stats::Stats>,
}

fn resolve(host: &str, port: u16) -> Result<SocketAddr, StartError> {
    (host, port)
        .to_socket_addrs()
        .map_err(|e| StartError::Bind {
            addr: format!("{host}:{port}"),
            source: e,
        })?
        .next()
        .ok_or_else(|| StartError::Config(format!("host {host:?} does not resolve")))
}

impl Server {
    /// Bind and start serving; returns once the port is bound.
    pub fn start(config: ServerConfig, events: Events) -> Result<Server, StartError> {
        config.validate().map_err(StartError::Config)?;
        let tls = config.tls().map_err(StartError::Config)?;
        crate::memory::limit_arenas();
        let workers = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
            .clamp(2, 8);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .thread_name("dicom-storescp")
            // File work runs on the blocking pool; bound it so that many
            // associations queue their writes instead of each growing a
            // thread (and a malloc arena) of its own.
            .max_blocking_threads(64)
            .thread_keep_alive(crate::memory::THREAD_KEEP_ALIVE)
            .enable_all()
            .build()
            .map_err(StartError::Runtime)?;
        let storage = open_storage(&config, &runtime, &events)?;
        let addr = resolve(&config.host, config.port)?;
        let std_listener = std::net::TcpListener::bind(addr).map_err(|e| StartError::Bind {
            addr: addr.to_string(),
            source: e,
        })?;
        std_listener
            .set_nonblocking(true)
            .map_err(StartError::Runtime)?;
        let local_addr = std_listener.local_addr().map_err(StartError::Runtime)?;
        let listener = {
            let _guard = runtime.enter();
            TcpListener::from_std(std_listener).map_err(StartError::Runtime)?
        };

        let ctx = Arc::new({
            // The study tracker is spawned on this server's runtime.
            let _guard = runtime.enter();
            ServerContext::new(
                config.clone(),
                storage,
                events.with_target(target::ASSOCIATION),
            )
            .map_err(StartError::Config)?
        });
        let studies = ctx.studies.clone();
        let stats = ctx.stats.clone();
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let tls = tls.map(tokio_rustls::TlsAcceptor::from);
        // Give freed heap back once the server is quiet (see memory.rs).
        runtime.spawn(crate::memory::trim_when_quiet(
            stats.clone(),
            crate::memory::QUIET_PERIOD,
            crate::memory::LATE_TRIM,
            shutdown_rx.clone(),
        ));
        let accept_task = runtime.spawn(accept_loop(listener, ctx, tls, shutdown_rx));

        events.emit_blocking(Event::ServerStarted {
            port: local_addr.port(),
            ae_title: config.ae_title.clone(),
            host: config.host.clone(),
        });
        events.log(Level::Info, || {
            format!("listening on {local_addr} as {:?}", config.ae_title)
        });
        Ok(Server {
            runtime: Some(runtime),
            shutdown: shutdown_tx,
            accept_task: Some(accept_task),
            local_addr,
            events,
            studies,
            stats,
        })
    }

    /// The server's live counters.
    pub fn stats(&self) -> Arc<crate::stats::Stats> {
        self.stats.clone()
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stop accepting, let objects in flight finish (up to `grace`), then
    /// close every association, report the pending studies, and close the
    /// runtime. Blocks.
    pub fn stop(&mut self, grace: Duration) {
        self.shut_down(grace, true);
    }

    /// `stop`; `wait_for_room`: wait for room in the event queue for the
    /// final `Closed` (false when nobody may be draining it any more).
    fn shut_down(&mut self, grace: Duration, wait_for_room: bool) {
        let _ = self.shutdown.send(true);
        if let (Some(rt), Some(task)) = (self.runtime.as_ref(), self.accept_task.take()) {
            rt.block_on(async move {
                let _ = tokio::time::timeout(grace + Duration::from_secs(1), task).await;
            });
        }
        if let Some(rt) = self.runtime.as_ref() {
            let studies = self.studies.clone();
            rt.block_on(async move {
                let _ = tokio::time::timeout(Duration::from_secs(10), studies.flush()).await;
            });
        }
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(2));
        }
        self.events
            .log(Level::Info, || "server stopped".to_string());
        if wait_for_room {
            self.events.emit_blocking(Event::Closed);
        } else {
            self.events.try_emit(Event::Closed);
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.runtime.is_some() {
            // The owner is going away: nobody may drain the queue any more.
            self.shut_down(Duration::from_secs(5), false);
        }
    }
}

/// The configured backend, ready (S3: the bucket answered, unless the
/// check is switched off).
fn open_storage(
    config: &ServerConfig,
    runtime: &tokio::runtime::Runtime,
    events: &Events,
) -> Result<Arc<dyn Storage>, StartError> {
    let storage_error = |e: crate::storage::StorageError| StartError::Storage(e.to_string());
    match &config.backend {
        Backend::Filesystem => {
            let out_dir = config.out_dir.as_deref().ok_or_else(|| {
                StartError::Config(
                    "out_dir is required when storage_backend is \"Filesystem\"".into(),
                )
            })?;
            Ok(Arc::new(
                FilesystemStorage::new(out_dir).map_err(storage_error)?,
            ))
        }
        Backend::S3(settings) => {
            let storage = {
                // the HTTP client is built inside the runtime
                let _guard = runtime.enter();
                S3Storage::new(
                    settings,
                    config.out_dir.as_deref(),
                    config.store_with_file_meta,
                )
                .map_err(storage_error)?
            };
            if settings.check_on_start {
                runtime.block_on(storage.check()).map_err(storage_error)?;
            }
            events.log_to(target::S3, Level::Info, || {
                format!(
                    "storing to s3://{}/{} at {} (spool: {})",
                    storage.bucket_name(),
                    settings.prefix,
                    storage.endpoint(),
                    storage.spool_dir().display()
                )
            });
            Ok(Arc::new(storage))
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    ctx: Arc<ServerContext>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    mut shutdown: watch::Receiver<bool>,
) {
    let active = Arc::new(AtomicUsize::new(0));
    let mut tasks = JoinSet::new();
    // Plain TCP to a backend that stores with file operations only: each
    // association gets a thread to itself (see `serve_on_own_thread`).
    let own_threads = ctx.storage.blocking_publisher().is_some();
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shutdown.changed() => break,
            // reap finished associations as they end, so that an idle
            // server holds none of their memory
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
            r = listener.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                ctx.events.log_to(target::SERVER, Level::Warning, || {
                    format!("accept failed: {e}")
                });
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let peer = peer.to_string();
        let busy = active.load(Ordering::Acquire) >= ctx.config.max_associations;
        let guard = (!busy).then(|| {
            active.fetch_add(1, Ordering::AcqRel);
            ActiveGuard(active.clone())
        });
        let ctx = ctx.clone();
        let shutdown = shutdown.clone();
        let tls = tls.clone();
        tasks.spawn(async move {
            let _guard = guard;
            match tls {
                None if busy => association::reject_busy(stream, ctx, peer).await,
                None if own_threads => serve_on_own_thread(stream, peer, ctx, shutdown).await,
                None => {
                    association::serve_tcp(stream, peer, ctx, shutdown, Placement::OwnThread).await
                }
                Some(acceptor) => {
                    let handshake = tokio::time::timeout(
                        ctx.config.acse_timeout.unwrap_or(Duration::from_secs(3600)),
                        acceptor.accept(stream),
                    )
                    .await;
                    match handshake {
                        Ok(Ok(tls_stream)) if busy => {
                            association::reject_busy(tls_stream, ctx, peer).await
                        }
                        Ok(Ok(tls_stream)) => {
                            association::serve(tls_stream, peer, ctx, shutdown).await
                        }
                        Ok(Err(e)) => tls_refused(&ctx, peer, e.to_string()).await,
                        Err(_) => tls_refused(&ctx, peer, "handshake timed out".into()).await,
                    }
                }
            }
        });
    }
    drop(listener);
    // Associations see the shutdown flag: idle ones abort now, busy ones
    // after the object in flight.
    while tasks.join_next().await.is_some() {}
}

/// Serve a plain TCP association on a thread of its own, with a
/// single-threaded runtime of its own, that also does the association's file
/// work (`Placement::Inline`).
///
/// This is how dcmtk's `storescp --fork` spends its time, and why it wins
/// when one sender waits for each response: an object's bytes are read,
/// written and answered by one thread, with no hand-off between threads on
/// the way (two wake-ups fewer per object, and no idle core woken for each).
/// The network I/O stays asynchronous (timeouts, shutdown, the low-water
/// mark); blocking file calls on this runtime hold up only the association
/// that is waiting for them anyway. The task that awaits the thread stands
/// for it in the server's set of associations: when the server's runtime
/// drops that task (stop after the grace period), the association is
/// cancelled at its next await, as tasks on the server's runtime are.
async fn serve_on_own_thread(
    stream: TcpStream,
    peer: String,
    ctx: Arc<ServerContext>,
    shutdown: watch::Receiver<bool>,
) {
    let stream = match stream.into_std() {
        Ok(s) => s,
        Err(e) => {
            ctx.events.log_to(target::SERVER, Level::Warning, || {
                format!("{peer}: cannot hand the connection to its thread: {e}")
            });
            return;
        }
    };
    let (cancel, cancelled) = oneshot::channel::<()>();
    let (ended, end) = oneshot::channel::<()>();
    let events = ctx.events.clone();
    let who = peer.clone();
    let thread = std::thread::Builder::new()
        .name("storescp-assoc".into())
        .spawn(move || {
            let _ended = ended;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .enable_time()
                .thread_keep_alive(crate::memory::THREAD_KEEP_ALIVE)
                .build();
            let runtime = match runtime {
                Ok(rt) => rt,
                Err(e) => {
                    ctx.events.log_to(target::SERVER, Level::Warning, || {
                        format!("{peer}: cannot start the association's runtime: {e}")
                    });
                    return;
                }
            };
            runtime.block_on(async move {
                let stream = match TcpStream::from_std(stream) {
                    Ok(s) => s,
                    Err(e) => {
                        ctx.events.log_to(target::SERVER, Level::Warning, || {
                            format!("{peer}: cannot register the connection: {e}")
                        });
                        return;
                    }
                };
                let serve = association::serve_tcp(stream, peer, ctx, shutdown, Placement::Inline);
                tokio::select! {
                    () = serve => {}
                    _ = cancelled => {}
                }
            });
        });
    match thread {
        Ok(_) => {
            let _ = end.await;
        }
        Err(e) => events.log_to(target::SERVER, Level::Warning, || {
            format!("{who}: cannot start a thread for the association: {e}")
        }),
    }
    drop(cancel);
}

/// A TLS handshake that failed (untrusted or missing client certificate,
/// plain DICOM on a TLS port, ...): the peer never got an association.
async fn tls_refused(ctx: &ServerContext, peer: String, reason: String) {
    ctx.rejected(crate::events::Rejected {
        peer,
        reason: format!("TLS handshake failed: {reason}"),
        result: "permanent",
        ..Default::default()
    })
    .await;
}

struct ActiveGuard(Arc<AtomicUsize>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}
