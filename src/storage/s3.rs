//! S3 backend: objects go to `{prefix}{study}/{series}/{sop}.dcm` in one
//! bucket of AWS S3 or any S3-compatible store (MinIO, Ceph, ...).
//!
//! Objects reach [`S3Storage::commit`] complete, spooled in memory (small
//! ones) or in a spool file. Up to `multipart_threshold` bytes they go up in a
//! single PUT; larger ones as a multipart upload read part by part from the
//! spool file, with at most `part_concurrency` parts in flight per upload and
//! a server-wide budget of buffered part bytes, so memory stays bounded
//! whatever the object size and the number of associations.
//!
//! Every request has a timeout. Transient failures (connection errors,
//! timeouts, HTTP 5xx, throttling) are retried with exponential backoff and
//! jitter; anything else (refused credentials, missing bucket) fails at once.
//! A multipart upload that fails is aborted. The spool file is removed in
//! every case (it is dropped, see [`SpoolFile`]).
//!
//! Error messages are built here from the status, the S3 error code and its
//! message, never from raw response bodies (a `SignatureDoesNotMatch` body
//! echoes the canonical request, which can carry a session token), and
//! credentials are held in [`Secret`]s that do not print.

use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use s3::creds::Credentials;
use s3::error::S3Error;
use s3::serde_types::Part;
use s3::{Bucket, Region};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::{BoxFuture, ObjectKey, SpoolFile, Spooled, Storage, StorageError, Stored};

pub const MIB: u64 = 1024 * 1024;
/// S3's smallest part (except the last one).
pub const MIN_PART_SIZE: u64 = 5 * MIB;
/// Our largest part and single PUT: each is held in memory while it is sent.
pub const MAX_PART_SIZE: u64 = 512 * MIB;
/// S3's largest number of parts per upload.
pub const MAX_PARTS: u64 = 10_000;
/// S3's largest part.
const S3_MAX_PART_SIZE: u64 = 5 * 1024 * MIB;
/// Part buffers of all uploads of one server together (at least; raised to
/// fit one upload at full concurrency).
const BUFFER_BUDGET: u64 = 256 * MIB;
/// The HTTP layer copies each request body once more.
const BODY_COPIES: u64 = 2;
/// Longest wait for one attempt of the start check.
const CHECK_TIMEOUT: Duration = Duration::from_secs(15);
/// Name of the spool directory inside `out_dir` (as for the filesystem backend).
pub const SPOOL_DIR_NAME: &str = super::fs::SPOOL_DIR_NAME;

/// A credential: kept out of `Debug` output, logs and error messages.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Everything the S3 backend needs (the facade resolved environment
/// fallbacks already).
#[derive(Debug, Clone)]
pub struct S3Settings {
    pub bucket: String,
    /// Prepended verbatim to `{study}/{series}/{sop}.dcm`.
    pub prefix: String,
    pub region: String,
    /// `http(s)://host[:port]`; `None` = AWS (`https://s3.{region}.amazonaws.com`).
    pub endpoint: Option<String>,
    pub access_key: String,
    pub secret_key: Secret,
    pub session_token: Option<Secret>,
    /// `https://endpoint/bucket/key` instead of `https://bucket.endpoint/key`.
    pub path_style: bool,
    /// Check at start that the bucket answers to these credentials.
    pub check_on_start: bool,
    pub part_size: u64,
    pub multipart_threshold: u64,
    pub part_concurrency: usize,
    pub request_timeout: Duration,
    pub max_retries: u32,
}

impl Default for S3Settings {
    fn default() -> Self {
        S3Settings {
            bucket: String::new(),
            prefix: String::new(),
            region: "us-east-1".into(),
            endpoint: None,
            access_key: String::new(),
            secret_key: Secret::default(),
            session_token: None,
            path_style: false,
            check_on_start: true,
            part_size: 8 * MIB,
            multipart_threshold: 8 * MIB,
            part_concurrency: 4,
            request_timeout: Duration::from_secs(60),
            max_retries: 3,
        }
    }
}

fn is_bucket_name(name: &str) -> bool {
    // AWS rules are stricter (3-63 lowercase characters); S3-compatible
    // stores accept more. Refuse only what cannot name a bucket anywhere.
    !name.is_empty()
        && name.len() <= 255
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

/// Key prefixes are kept to the characters that every store signs and
/// encodes alike: S3-compatible servers disagree on the signature of keys
/// with `+ ! * ( ) ' =` (moto refuses them even from the AWS SDK).
fn is_prefix(prefix: &str) -> bool {
    !prefix.starts_with('/')
        && prefix.len() <= 512
        && prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'.' | b'-' | b'_'))
}

impl S3Settings {
    /// Check every setting; errors name the `s3_config` key. Never echoes a
    /// credential.
    pub fn validate(&self) -> Result<(), String> {
        if !is_bucket_name(&self.bucket) {
            return Err(format!(
                "s3_config bucket {:?} is not a bucket name (letters, digits, '.', '-', '_')",
                self.bucket
            ));
        }
        if !is_prefix(&self.prefix) {
            return Err(format!(
                "s3_config prefix {:?} may only contain letters, digits, '/', '.', '-' and '_', \
                 must not start with '/' and is at most 512 bytes",
                self.prefix
            ));
        }
        if self.region.is_empty()
            || !self
                .region
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
        {
            return Err(format!(
                "s3_config region {:?} is not a region name",
                self.region
            ));
        }
        if let Some(endpoint) = &self.endpoint {
            check_endpoint(endpoint)?;
        }
        if self.access_key.is_empty() || self.access_key.chars().any(char::is_control) {
            return Err("s3_config access_key must be a non-empty string".into());
        }
        if self.secret_key.is_empty() || self.secret_key.expose().chars().any(char::is_control) {
            return Err("s3_config secret_key must be a non-empty string".into());
        }
        if let Some(token) = &self.session_token {
            if token.is_empty() || token.expose().chars().any(char::is_control) {
                return Err("s3_config session_token must be a non-empty string".into());
            }
        }
        for (name, value) in [
            ("part_size", self.part_size),
            ("multipart_threshold", self.multipart_threshold),
        ] {
            if !(MIN_PART_SIZE..=MAX_PART_SIZE).contains(&value) {
                return Err(format!(
                    "s3_config {name} {value} must be between {MIN_PART_SIZE} (5 MiB) and \
                     {MAX_PART_SIZE} (512 MiB) bytes"
                ));
            }
        }
        if !(1..=64).contains(&self.part_concurrency) {
            return Err(format!(
                "s3_config part_concurrency {} must be from 1 to 64",
                self.part_concurrency
            ));
        }
        if self.request_timeout.is_zero() {
            return Err("s3_config request_timeout must be positive".into());
        }
        if self.max_retries > 20 {
            return Err(format!(
                "s3_config max_retries {} must be from 0 to 20",
                self.max_retries
            ));
        }
        Ok(())
    }

    /// The endpoint requests go to.
    pub fn endpoint_url(&self) -> String {
        match &self.endpoint {
            Some(e) => e.trim_end_matches('/').to_string(),
            None => format!("https://s3.{}.amazonaws.com", self.region),
        }
    }
}

/// `http(s)://host[:port][/]`: no credentials, path, query or fragment.
fn check_endpoint(endpoint: &str) -> Result<(), String> {
    let rest = endpoint
        .strip_prefix("https://")
        .or_else(|| endpoint.strip_prefix("http://"))
        .ok_or("s3_config endpoint must start with http:// or https://")?;
    let host = rest.strip_suffix('/').unwrap_or(rest);
    if host.contains('@') {
        // user:password@host: never echo it
        return Err("s3_config endpoint must not contain credentials".into());
    }
    if host.is_empty()
        || host
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '/' | '?' | '#'))
    {
        return Err(format!(
            "s3_config endpoint {endpoint:?} must be http(s)://host[:port] without a path"
        ));
    }
    Ok(())
}

/// How requests are retried.
#[derive(Debug, Clone, Copy)]
struct RetryPolicy {
    max_retries: u32,
    timeout: Duration,
    base_delay: Duration,
    max_delay: Duration,
}

impl RetryPolicy {
    /// Delay before retry number `attempt` (1-based): exponential, capped,
    /// with full jitter in its upper half.
    fn delay(&self, attempt: u32) -> Duration {
        let exp = self
            .base_delay
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
        let capped = exp.min(self.max_delay);
        let half = capped / 2;
        half + half.mul_f64(jitter())
    }
}

/// A number in [0, 1) that differs from call to call (no need for a real RNG).
fn jitter() -> f64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let mut x = u64::from(nanos) ^ COUNTER.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
    // splitmix64 finaliser
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^= x >> 31;
    (x >> 11) as f64 / (1u64 << 53) as f64
}

/// Why a request failed, in words safe to show.
#[derive(Debug, Clone)]
struct Failure {
    message: String,
    transient: bool,
    /// The S3 error code, when the store sent one.
    code: Option<String>,
}

impl Failure {
    fn permanent(message: impl Into<String>) -> Self {
        Failure {
            message: message.into(),
            transient: false,
            code: None,
        }
    }
}

/// The text of the first `<tag>...</tag>` in an XML error body.
fn xml_field<'a>(body: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = body.find(&open)? + open.len();
    let len = body.get(start..)?.find(&close)?;
    body.get(start..start + len)
}

/// Keep a store-provided text short and printable.
fn clean(text: &str, max: usize) -> String {
    let mut out: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(max)
        .collect();
    if text.chars().count() > max {
        out.push('…');
    }
    out.trim().to_string()
}

fn http_failure(status: u16, body: &str) -> Failure {
    let code = xml_field(body, "Code").map(|c| clean(c, 64));
    // Only Code and Message are shown: other fields of some errors
    // (StringToSign, CanonicalRequest) may carry credentials.
    let message = xml_field(body, "Message").map(|m| clean(m, 300));
    let transient = status >= 500
        || status == 408
        || status == 429
        || matches!(
            code.as_deref(),
            Some(
                "RequestTimeout"
                    | "SlowDown"
                    | "InternalError"
                    | "ServiceUnavailable"
                    | "RequestTimeTooSkewed"
            )
        );
    let hint = match status {
        301 | 307 => " (wrong region or addressing style?)",
        400 if code.is_none() => " (bad request)",
        403 if code.is_none() => " (access denied: credentials refused or not allowed)",
        404 if code.is_none() => " (not found: no such bucket?)",
        _ => "",
    };
    let text = match (&code, &message) {
        (Some(c), Some(m)) if !m.is_empty() => format!("HTTP {status} {c}: {m}"),
        (Some(c), _) => format!("HTTP {status} {c}"),
        (None, _) => format!("HTTP {status}{hint}"),
    };
    Failure {
        message: text,
        transient,
        code,
    }
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

fn describe(e: &S3Error, endpoint: &str, timeout: Duration) -> Failure {
    match e {
        S3Error::HttpFailWithBody(status, body) => http_failure(*status, body),
        S3Error::HttpFail => Failure {
            message: "the store answered with an error status".into(),
            transient: true,
            code: None,
        },
        S3Error::Reqwest(re) if re.is_builder() => {
            Failure::permanent(format!("cannot build a request: {}", root_cause(re)))
        }
        S3Error::Reqwest(re) => {
            let message = if re.is_timeout() {
                format!(
                    "no complete answer from {endpoint} within the request timeout ({:.3}s)",
                    timeout.as_secs_f64()
                )
            } else if re.is_connect() {
                format!("cannot connect to {endpoint}: {}", root_cause(re))
            } else {
                format!("request to {endpoint} failed: {}", root_cause(re))
            };
            Failure {
                message,
                transient: true,
                code: None,
            }
        }
        S3Error::Io(io) => Failure {
            message: format!("I/O error: {io}"),
            transient: true,
            code: None,
        },
        S3Error::SerdeXml(_) | S3Error::Utf8(_) | S3Error::FromUtf8(_) => Failure {
            message: format!("unexpected answer from {endpoint} (not S3 XML)"),
            transient: true,
            code: None,
        },
        // Signing, header and credential errors: local and permanent. Their
        // messages name a problem, not a value.
        other => Failure::permanent(other.to_string()),
    }
}

/// Run `op` until it succeeds, fails permanently or runs out of retries.
/// Each attempt is bounded by the request timeout (also enforced by the
/// HTTP client; this one covers signing and credential locks too).
async fn retrying<T, F, Fut>(
    policy: RetryPolicy,
    endpoint: &str,
    mut op: F,
) -> Result<T, (Failure, u32)>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, S3Error>>,
{
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let failure =
            match tokio::time::timeout(policy.timeout + Duration::from_secs(1), op()).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) => describe(&e, endpoint, policy.timeout),
                Err(_) => Failure {
                    message: format!(
                        "no complete answer from {endpoint} within the request timeout ({:.3}s)",
                        policy.timeout.as_secs_f64()
                    ),
                    transient: true,
                    code: None,
                },
            };
        if !failure.transient || attempt > policy.max_retries {
            return Err((failure, attempt));
        }
        tokio::time::sleep(policy.delay(attempt)).await;
    }
}

fn attempts_note(attempts: u32) -> String {
    if attempts > 1 {
        format!(" (after {attempts} attempts)")
    } else {
        String::new()
    }
}

/// The spool directory: inside `out_dir`, or a private temporary directory
/// removed with the storage.
#[derive(Debug)]
enum SpoolDir {
    Given(PathBuf),
    Temporary(PathBuf),
}

impl SpoolDir {
    fn path(&self) -> &Path {
        match self {
            SpoolDir::Given(p) | SpoolDir::Temporary(p) => p,
        }
    }

    fn create(out_dir: Option<&Path>) -> Result<SpoolDir, StorageError> {
        match out_dir {
            Some(dir) => {
                let (_, spool) = super::create_out_dir(dir, SPOOL_DIR_NAME)?;
                Ok(SpoolDir::Given(spool))
            }
            None => {
                static N: AtomicU64 = AtomicU64::new(0);
                let base = std::env::temp_dir();
                loop {
                    let path = base.join(format!(
                        "dicom-storescp-spool-{}-{}",
                        std::process::id(),
                        N.fetch_add(1, Ordering::Relaxed)
                    ));
                    let mut builder = std::fs::DirBuilder::new();
                    #[cfg(unix)]
                    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
                    match builder.create(&path) {
                        Ok(()) => return Ok(SpoolDir::Temporary(path)),
                        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                        Err(e) => {
                            return Err(StorageError::io(
                                format!(
                                    "cannot create a spool directory in {} (set out_dir)",
                                    base.display()
                                ),
                                e,
                            ))
                        }
                    }
                }
            }
        }
    }
}

impl Drop for SpoolDir {
    fn drop(&mut self) {
        if let SpoolDir::Temporary(path) = self {
            let _ = std::fs::remove_dir_all(path);
        }
    }
}

/// Aborts a multipart upload if dropped while armed (the commit future was
/// cancelled, e.g. at the end of a stop's grace period).
struct AbortOnDrop {
    bucket: Arc<Bucket>,
    key: String,
    upload_id: Option<String>,
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(upload_id) = self.upload_id.take() {
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                let bucket = self.bucket.clone();
                let key = std::mem::take(&mut self.key);
                handle.spawn(async move {
                    let _ = bucket.abort_upload(&key, &upload_id).await;
                });
            }
        }
    }
}

/// Part size for an object of `size` bytes: the configured one, raised so
/// that the upload needs at most [`MAX_PARTS`] parts.
fn part_size_for(size: u64, configured: u64) -> Result<u64, String> {
    let needed = size.div_ceil(MAX_PARTS).next_multiple_of(MIB);
    let part = configured.max(needed);
    if part > S3_MAX_PART_SIZE || part > MAX_PART_SIZE {
        return Err(format!(
            "object of {size} bytes is too large for a multipart upload"
        ));
    }
    Ok(part)
}

pub struct S3Storage {
    bucket: Arc<Bucket>,
    bucket_name: String,
    prefix: String,
    endpoint: String,
    region: String,
    content_type: &'static str,
    spool: SpoolDir,
    /// Spool files are `O_TMPFILE`s (never visible, gone even if the
    /// process is killed): the upload reads them through the handle.
    anonymous: bool,
    policy: RetryPolicy,
    part_size: u64,
    multipart_threshold: u64,
    part_concurrency: usize,
    buffers: Arc<Semaphore>,
    buffer_permits: u32,
}

impl fmt::Debug for S3Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The bucket handle holds the credentials: leave it out.
        f.debug_struct("S3Storage")
            .field("bucket", &self.bucket_name)
            .field("prefix", &self.prefix)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("spool", &self.spool)
            .finish_non_exhaustive()
    }
}

/// Permits of the buffer semaphore are MiB.
fn permits_for(bytes: u64, total: u32) -> u32 {
    let mib = (bytes * BODY_COPIES).div_ceil(MIB).max(1);
    u32::try_from(mib).unwrap_or(u32::MAX).min(total)
}

impl S3Storage {
    /// Set up the client and the spool directory (blocking: creates it).
    /// `store_with_file_meta` decides the content type (`application/dicom`
    /// for Part-10 files, `application/octet-stream` for bare data sets).
    pub fn new(
        settings: &S3Settings,
        out_dir: Option<&Path>,
        store_with_file_meta: bool,
    ) -> Result<S3Storage, StorageError> {
        settings.validate().map_err(|m| StorageError::Remote {
            context: "invalid S3 configuration".into(),
            message: m,
        })?;
        // rust-s3 retries every failed request once after a second,
        // permanent failures included; retries are ours (below).
        s3::set_retries(0);
        let endpoint = settings.endpoint_url();
        let region = Region::Custom {
            region: settings.region.clone(),
            endpoint: endpoint.clone(),
        };
        let setup_error = |message: String| StorageError::Remote {
            context: format!(
                "cannot set up the S3 client for bucket {:?}",
                settings.bucket
            ),
            message,
        };
        let credentials = Credentials::new(
            Some(&settings.access_key),
            Some(settings.secret_key.expose()),
            None,
            settings.session_token.as_ref().map(Secret::expose),
            None,
        )
        .map_err(|_| setup_error("credentials rejected".into()))?;
        let mut bucket = Bucket::new(&settings.bucket, region, credentials)
            .map_err(|e| setup_error(describe(&e, &endpoint, settings.request_timeout).message))?
            .with_request_timeout(settings.request_timeout)
            .map_err(|e| setup_error(describe(&e, &endpoint, settings.request_timeout).message))?;
        if settings.path_style {
            bucket.set_path_style();
        } else {
            bucket.set_subdomain_style();
        }
        let spool = SpoolDir::create(out_dir)?;
        let anonymous = SpoolFile::create_anonymous(spool.path())
            .map(|f| !f.is_named())
            .unwrap_or(false);
        let part_concurrency = settings.part_concurrency.max(1);
        let budget = BUFFER_BUDGET
            .max(settings.multipart_threshold * BODY_COPIES)
            .max(settings.part_size * BODY_COPIES * part_concurrency as u64);
        let buffer_permits = u32::try_from(budget / MIB).unwrap_or(u32::MAX);
        Ok(S3Storage {
            bucket: Arc::new(*bucket),
            bucket_name: settings.bucket.clone(),
            prefix: settings.prefix.clone(),
            endpoint,
            region: settings.region.clone(),
            content_type: if store_with_file_meta {
                "application/dicom"
            } else {
                "application/octet-stream"
            },
            spool,
            anonymous,
            policy: RetryPolicy {
                max_retries: settings.max_retries,
                timeout: settings.request_timeout,
                base_delay: Duration::from_millis(200),
                max_delay: Duration::from_secs(5),
            },
            part_size: settings.part_size,
            multipart_threshold: settings.multipart_threshold,
            part_concurrency,
            buffers: Arc::new(Semaphore::new(buffer_permits as usize)),
            buffer_permits,
        })
    }

    pub fn bucket_name(&self) -> &str {
        &self.bucket_name
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The object key for `key`.
    pub fn object_key(&self, key: &ObjectKey) -> String {
        format!("{}{}", self.prefix, key.relative_path())
    }

    /// List at most one key of the bucket: proves that the endpoint
    /// answers, the bucket exists and the credentials are accepted (needs
    /// `s3:ListBucket`). Without a prefix: stores disagree on how a `/` in
    /// a query parameter is signed. Bounded for a prompt answer at start:
    /// at most [`CHECK_TIMEOUT`] per attempt and two retries.
    pub async fn check(&self) -> Result<(), StorageError> {
        let bucket = &self.bucket;
        let policy = RetryPolicy {
            max_retries: self.policy.max_retries.min(2),
            timeout: self.policy.timeout.min(CHECK_TIMEOUT),
            ..self.policy
        };
        retrying(policy, &self.endpoint, || {
            bucket.list_page(String::new(), None, None, None, Some(1))
        })
        .await
        .map(|_| ())
        .map_err(|(f, attempts)| StorageError::Remote {
            context: format!(
                "S3 bucket {:?} at {} (region {}) cannot be used",
                self.bucket_name, self.endpoint, self.region
            ),
            message: format!("{}{}", f.message, attempts_note(attempts)),
        })
    }

    async fn upload(&self, object: Spooled, key: &str) -> Result<(), String> {
        let size = object.len();
        match object {
            Spooled::Memory(bytes) => self.put_single(key, &bytes).await,
            Spooled::File(spool) if size <= self.multipart_threshold => {
                let permits = permits_for(size, self.buffer_permits);
                let _permit = self
                    .buffers
                    .acquire_many(permits)
                    .await
                    .map_err(|_| "server is stopping".to_string())?;
                let spool = Arc::new(spool);
                let bytes = read_range(spool.clone(), 0, size).await?;
                drop(spool);
                self.put_single(key, &bytes).await
            }
            Spooled::File(spool) => self.put_multipart(key, spool, size).await,
        }
    }

    async fn put_single(&self, key: &str, bytes: &[u8]) -> Result<(), String> {
        let bucket = &self.bucket;
        retrying(self.policy, &self.endpoint, || {
            bucket.put_object_with_content_type(key, bytes, self.content_type)
        })
        .await
        .map(|_| ())
        .map_err(|(f, attempts)| format!("{}{}", f.message, attempts_note(attempts)))
    }

    async fn put_multipart(&self, key: &str, spool: SpoolFile, size: u64) -> Result<(), String> {
        let part_size = part_size_for(size, self.part_size)?;
        let bucket = &self.bucket;
        let init = retrying(self.policy, &self.endpoint, || {
            bucket.initiate_multipart_upload(key, self.content_type)
        })
        .await
        .map_err(|(f, attempts)| {
            format!(
                "cannot start a multipart upload: {}{}",
                f.message,
                attempts_note(attempts)
            )
        })?;
        let mut guard = AbortOnDrop {
            bucket: self.bucket.clone(),
            key: key.to_string(),
            upload_id: Some(init.upload_id.clone()),
        };
        let upload_id = init.upload_id;
        let result = match self
            .upload_parts(key, &upload_id, spool, size, part_size)
            .await
        {
            Ok(parts) => self.complete(key, &upload_id, parts, size).await,
            Err(e) => Err(e),
        };
        guard.upload_id = None;
        match result {
            Ok(()) => Ok(()),
            Err(message) => {
                let abort = retrying(
                    RetryPolicy {
                        max_retries: self.policy.max_retries.min(2),
                        ..self.policy
                    },
                    &self.endpoint,
                    || bucket.abort_upload(key, &upload_id),
                )
                .await;
                match abort {
                    Ok(()) => Err(format!("{message}; the multipart upload was aborted")),
                    Err((f, _)) => Err(format!(
                        "{message}; aborting the multipart upload failed too: {}",
                        f.message
                    )),
                }
            }
        }
    }

    /// Upload every part, at most `part_concurrency` at a time and within
    /// the server's buffer budget. Stops at the first part that fails (the
    /// others are cancelled when the task set is dropped).
    async fn upload_parts(
        &self,
        key: &str,
        upload_id: &str,
        spool: SpoolFile,
        size: u64,
        part_size: u64,
    ) -> Result<Vec<Part>, String> {
        let spool = Arc::new(spool);
        let count = size.div_ceil(part_size);
        let mut parts = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
        let mut tasks: JoinSet<Result<Part, String>> = JoinSet::new();
        let mut next = 0u64;
        loop {
            while tasks.len() < self.part_concurrency && next < count {
                let offset = next * part_size;
                let len = part_size.min(size - offset);
                let permit = self
                    .buffers
                    .clone()
                    .acquire_many_owned(permits_for(len, self.buffer_permits))
                    .await
                    .map_err(|_| "server is stopping".to_string())?;
                let number = u32::try_from(next + 1).map_err(|_| "too many parts".to_string())?;
                let bucket = self.bucket.clone();
                let spool = spool.clone();
                let key = key.to_string();
                let upload_id = upload_id.to_string();
                let endpoint = self.endpoint.clone();
                let policy = self.policy;
                let content_type = self.content_type;
                tasks.spawn(async move {
                    let _permit = permit;
                    // The part is read again for every attempt rather than
                    // kept for retries: one copy less in memory.
                    retrying(policy, &endpoint, || {
                        let spool = spool.clone();
                        let (bucket, key, upload_id) = (&bucket, &key, &upload_id);
                        async move {
                            let data = read_range(spool, offset, len)
                                .await
                                .map_err(|m| S3Error::Io(std::io::Error::other(m)))?;
                            bucket
                                .put_multipart_chunk(data, key, number, upload_id, content_type)
                                .await
                        }
                    })
                    .await
                    .map_err(|(f, attempts)| {
                        format!(
                            "part {number} failed: {}{}",
                            f.message,
                            attempts_note(attempts)
                        )
                    })
                });
                next += 1;
            }
            match tasks.join_next().await {
                None => break,
                Some(Ok(Ok(part))) => parts.push(part),
                Some(Ok(Err(message))) => return Err(message),
                Some(Err(e)) => return Err(format!("part upload task failed: {e}")),
            }
        }
        parts.sort_by_key(|p| p.part_number);
        Ok(parts)
    }

    async fn complete(
        &self,
        key: &str,
        upload_id: &str,
        parts: Vec<Part>,
        size: u64,
    ) -> Result<(), String> {
        let bucket = &self.bucket;
        let result = retrying(self.policy, &self.endpoint, || {
            let parts = parts.clone();
            async move {
                let response = bucket
                    .complete_multipart_upload(key, upload_id, parts)
                    .await?;
                // S3 may answer 200 and put an error in the body.
                let body = response.as_str().unwrap_or_default();
                if body.contains("<Error>") {
                    return Err(S3Error::HttpFailWithBody(
                        response.status_code(),
                        body.to_string(),
                    ));
                }
                Ok(())
            }
        })
        .await;
        match result {
            Ok(()) => Ok(()),
            // An earlier attempt completed the upload but its answer was
            // lost: the object is there in full.
            Err((f, attempts))
                if attempts > 1
                    && f.code.as_deref() == Some("NoSuchUpload")
                    && self.object_size(key).await == Some(size) =>
            {
                Ok(())
            }
            Err((f, attempts)) => Err(format!(
                "completing the multipart upload failed: {}{}",
                f.message,
                attempts_note(attempts)
            )),
        }
    }

    async fn object_size(&self, key: &str) -> Option<u64> {
        let (head, _) = self.bucket.head_object(key).await.ok()?;
        head.content_length.and_then(|n| u64::try_from(n).ok())
    }
}

/// Read `len` bytes at `offset` of a spool file, off the async threads.
async fn read_range(spool: Arc<SpoolFile>, offset: u64, len: u64) -> Result<Vec<u8>, String> {
    tokio::task::spawn_blocking(move || -> std::io::Result<Vec<u8>> {
        let len = usize::try_from(len).map_err(std::io::Error::other)?;
        let mut buf = vec![0u8; len];
        #[cfg(unix)]
        {
            use std::os::unix::fs::FileExt;
            spool.file.read_exact_at(&mut buf, offset)?;
        }
        #[cfg(not(unix))]
        {
            use std::io::{Read, Seek, SeekFrom};
            let mut f = spool.file.try_clone()?;
            f.seek(SeekFrom::Start(offset))?;
            f.read_exact(&mut buf)?;
        }
        Ok(buf)
    })
    .await
    .map_err(|e| format!("spool read task failed: {e}"))?
    .map_err(|e| format!("cannot read the spool file: {e}"))
}

impl Storage for S3Storage {
    fn spool_dir(&self) -> &Path {
        self.spool.path()
    }

    fn anonymous_spool(&self) -> bool {
        self.anonymous
    }

    fn commit(
        &self,
        object: Spooled,
        key: ObjectKey,
    ) -> BoxFuture<'_, Result<Stored, StorageError>> {
        Box::pin(async move {
            let object_key = self.object_key(&key);
            let size = object.len();
            let uri = format!("s3://{}/{}", self.bucket_name, object_key);
            match self.upload(object, &object_key).await {
                Ok(()) => Ok(Stored {
                    location: object_key,
                    uri,
                    size,
                }),
                Err(message) => Err(StorageError::Remote {
                    context: format!("S3 upload of {uri} failed"),
                    message,
                }),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> S3Settings {
        S3Settings {
            bucket: "dicom".into(),
            access_key: "AKIDEXAMPLE".into(),
            secret_key: Secret::new("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"),
            session_token: Some(Secret::new("TOKEN-SECRET-VALUE")),
            endpoint: Some("http://127.0.0.1:9".into()),
            path_style: true,
            ..S3Settings::default()
        }
    }

    #[test]
    fn debug_output_hides_secrets() {
        let s = settings();
        let text = format!("{s:?}");
        assert!(!text.contains("wJalrXUtnFEMI"), "{text}");
        assert!(!text.contains("TOKEN-SECRET-VALUE"), "{text}");
        let storage = S3Storage::new(&s, None, false).unwrap();
        let text = format!("{storage:?}");
        assert!(!text.contains("wJalrXUtnFEMI"), "{text}");
        assert!(text.contains("dicom"));
    }

    #[test]
    fn validation_names_the_key_and_never_echoes_secrets() {
        let check = |f: fn(&mut S3Settings), name: &str| {
            let mut s = settings();
            f(&mut s);
            let err = s.validate().unwrap_err();
            assert!(err.contains(name), "{err}");
            assert!(!err.contains("wJalrXUtnFEMI"), "{err}");
        };
        check(|s| s.bucket = String::new(), "bucket");
        check(|s| s.bucket = "a/b".into(), "bucket");
        check(|s| s.prefix = "/abs".into(), "prefix");
        check(|s| s.prefix = "a+b/".into(), "prefix");
        check(|s| s.prefix = "a b/".into(), "prefix");
        check(|s| s.region = "us east".into(), "region");
        check(|s| s.endpoint = Some("ftp://x".into()), "endpoint");
        check(|s| s.endpoint = Some("http://h:1/path".into()), "endpoint");
        check(|s| s.access_key = String::new(), "access_key");
        check(|s| s.secret_key = Secret::new(""), "secret_key");
        check(|s| s.part_size = MIB, "part_size");
        check(
            |s| s.multipart_threshold = 1024 * MIB,
            "multipart_threshold",
        );
        check(|s| s.part_concurrency = 0, "part_concurrency");
        check(|s| s.max_retries = 99, "max_retries");
        let mut s = settings();
        s.endpoint = Some("http://user:wJalrXUtnFEMI@host".into());
        let err = s.validate().unwrap_err();
        assert!(!err.contains("wJalrXUtnFEMI"), "{err}");
        settings().validate().unwrap();
    }

    #[test]
    fn addressing_style_is_selectable() {
        let mut s = settings();
        s.endpoint = Some("http://minio.local:9000".into());
        let path = S3Storage::new(&s, None, false).unwrap();
        assert_eq!(path.bucket.url(), "http://minio.local:9000/dicom");
        s.path_style = false;
        let host = S3Storage::new(&s, None, false).unwrap();
        assert_eq!(host.bucket.url(), "http://dicom.minio.local:9000");
        s.endpoint = None;
        s.region = "eu-west-1".into();
        let aws = S3Storage::new(&s, None, false).unwrap();
        assert_eq!(aws.bucket.url(), "https://dicom.s3.eu-west-1.amazonaws.com");
        assert_eq!(aws.bucket.region().to_string(), "eu-west-1");
    }

    #[test]
    fn endpoint_defaults_to_the_region() {
        let mut s = settings();
        s.endpoint = None;
        s.region = "eu-central-1".into();
        assert_eq!(s.endpoint_url(), "https://s3.eu-central-1.amazonaws.com");
        s.endpoint = Some("http://minio:9000/".into());
        assert_eq!(s.endpoint_url(), "http://minio:9000");
    }

    #[test]
    fn error_bodies_are_reduced_to_code_and_message() {
        let body = "<?xml version=\"1.0\"?><Error><Code>SignatureDoesNotMatch</Code>\
            <Message>The request signature we calculated does not match</Message>\
            <StringToSign>AWS4-HMAC-SHA256 secret-ish</StringToSign>\
            <CanonicalRequest>x-amz-security-token:TOKEN-SECRET-VALUE</CanonicalRequest></Error>";
        let f = http_failure(403, body);
        assert!(!f.transient);
        assert_eq!(f.code.as_deref(), Some("SignatureDoesNotMatch"));
        assert!(f
            .message
            .starts_with("HTTP 403 SignatureDoesNotMatch: The request"));
        assert!(!f.message.contains("TOKEN-SECRET-VALUE"));
        assert!(!f.message.contains("StringToSign"));

        assert!(http_failure(503, "").transient);
        assert!(http_failure(500, "<Error><Code>InternalError</Code></Error>").transient);
        assert!(http_failure(400, "<Error><Code>RequestTimeout</Code></Error>").transient);
        assert!(!http_failure(404, "<Error><Code>NoSuchBucket</Code></Error>").transient);
        assert!(http_failure(403, "").message.contains("access denied"));
    }

    #[test]
    fn part_sizes_respect_the_part_limit() {
        assert_eq!(part_size_for(30 * MIB, 8 * MIB).unwrap(), 8 * MIB);
        // 100 GB needs parts of more than 8 MiB
        let size = 100 * 1024 * MIB;
        let part = part_size_for(size, 8 * MIB).unwrap();
        assert!(size.div_ceil(part) <= MAX_PARTS);
        assert_eq!(part % MIB, 0);
        assert!(part_size_for(10 * 1024 * 1024 * MIB, 8 * MIB).is_err());
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = RetryPolicy {
            max_retries: 5,
            timeout: Duration::from_secs(1),
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(5),
        };
        for attempt in 1..40 {
            let d = p.delay(attempt);
            let full = Duration::from_millis(200)
                .saturating_mul(1 << (attempt - 1).min(16))
                .min(Duration::from_secs(5));
            assert!(d >= full / 2 && d <= full, "{attempt}: {d:?}");
        }
    }

    #[test]
    fn permits_are_bounded() {
        assert_eq!(permits_for(1, 256), 1);
        assert_eq!(permits_for(8 * MIB, 256), 16);
        assert_eq!(permits_for(600 * MIB, 256), 256);
    }

    #[test]
    fn temporary_spool_dir_is_removed_on_drop() {
        let s = settings();
        let storage = S3Storage::new(&s, None, false).unwrap();
        let dir = storage.spool_dir().to_path_buf();
        assert!(dir.is_dir());
        #[cfg(target_os = "linux")]
        assert!(
            storage.anonymous_spool(),
            "O_TMPFILE expected in the temp dir"
        );
        drop(storage);
        assert!(!dir.exists());

        let out = tempfile::tempdir().unwrap();
        let storage = S3Storage::new(&s, Some(out.path()), false).unwrap();
        let dir = storage.spool_dir().to_path_buf();
        assert_eq!(dir, out.path().join(SPOOL_DIR_NAME));
        drop(storage);
        assert!(dir.is_dir(), "a spool dir in out_dir stays");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unreachable_endpoint_fails_fast_and_removes_the_spool_file() {
        // nothing listens on port 9 (discard) of 127.0.0.1 here
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let mut s = settings();
        s.endpoint = Some(format!("http://127.0.0.1:{port}"));
        s.max_retries = 1;
        s.request_timeout = Duration::from_secs(2);
        let storage = S3Storage::new(&s, None, false).unwrap();
        let err = storage.check().await.unwrap_err().to_string();
        assert!(err.contains("cannot connect"), "{err}");
        assert!(err.contains("after 2 attempts"), "{err}");

        let mut spool = SpoolFile::create_anonymous(storage.spool_dir()).unwrap();
        std::io::Write::write_all(&mut spool.file, &[0u8; 4096]).unwrap();
        spool.len = 4096;
        let key = ObjectKey {
            study_instance_uid: "1.2".into(),
            series_instance_uid: "1.2.3".into(),
            sop_instance_uid: "1.2.3.4".into(),
        };
        let err = storage
            .commit(Spooled::File(spool), key)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("s3://dicom/1.2/1.2.3/1.2.3.4.dcm"), "{err}");
        assert_eq!(std::fs::read_dir(storage.spool_dir()).unwrap().count(), 0);
        assert!(!err.contains("wJalrXUtnFEMI"));
    }
}
