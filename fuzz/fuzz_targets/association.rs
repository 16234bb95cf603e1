//! A whole association fed with arbitrary bytes: PDU framing, negotiation,
//! P-DATA reassembly, command sets, receiving and storing.
#![no_main]

use std::sync::{Arc, OnceLock};

use dicom_storescp::association::{serve, ServerContext};
use dicom_storescp::config::ServerConfig;
use dicom_storescp::events::Events;
use dicom_storescp::storage::fs::FilesystemStorage;
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Harness {
    runtime: tokio::runtime::Runtime,
    ctx: Arc<ServerContext>,
    _dir: tempfile::TempDir,
}

fn harness() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = ServerConfig {
            out_dir: Some(dir.path().to_path_buf()),
            acse_timeout: None,
            dimse_timeout: None,
            idle_timeout: None,
            ..ServerConfig::default()
        };
        let storage = Arc::new(FilesystemStorage::new(dir.path()).expect("storage"));
        // Nobody drains the events: dropping the receiver makes emit a no-op.
        let (events, _rx) = Events::channel(false);
        let ctx = Arc::new(ServerContext::new(config, storage, events).expect("context"));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        Harness {
            runtime,
            ctx,
            _dir: dir,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let h = harness();
    h.runtime.block_on(async {
        let (client, server) = tokio::io::duplex(1 << 16);
        let (_stop, shutdown) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(serve(server, "fuzz".into(), h.ctx.clone(), shutdown));
        let (mut r, mut w) = tokio::io::split(client);
        let writer = async {
            let _ = w.write_all(data).await;
            let _ = w.shutdown().await;
        };
        let reader = async {
            let mut sink = [0u8; 4096];
            while let Ok(n) = r.read(&mut sink).await {
                if n == 0 {
                    break;
                }
            }
        };
        tokio::join!(writer, reader);
        let _ = task.await;
    });
});
