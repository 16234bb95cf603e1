//! The thin binding layer: a `_Server` handle and a few catalog functions.
//! No protocol logic lives here; every blocking call releases the GIL.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pyo3::exceptions::{PyOSError, PyRuntimeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyString};

use dicom_core::Tag;
use pyo3::types::PyList;

use crate::config::{Backend, ServerConfig};
use crate::events::{
    ErrorInfo, Event, EventReceiver, Events, FileStored, FileTags, GroupedTags, Level, Rejected,
};
use crate::server::{Server, StartError};
use crate::storage::s3::{S3Settings, Secret};
use crate::study::StudyCompleted;
use crate::tags::{Extraction, TagRequest};

/// Options as the facade passes them (already checked there).
#[derive(FromPyObject)]
#[pyo3(from_item_all)]
struct Options {
    host: String,
    port: u16,
    ae_title: String,
    max_pdu_length: u32,
    strict: bool,
    out_dir: Option<PathBuf>,
    storage_backend: String,
    s3: Option<S3Options>,
    store_with_file_meta: bool,
    abstract_syntax_mode: String,
    abstract_syntaxes: Vec<String>,
    transfer_syntax_mode: String,
    transfer_syntaxes: Vec<String>,
    max_associations: usize,
    acse_timeout: Option<f64>,
    dimse_timeout: Option<f64>,
    idle_timeout: Option<f64>,
    allowed_calling_ae_titles: Option<Vec<String>>,
    require_called_ae_title: bool,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_ca: Option<PathBuf>,
    verbose: bool,
    /// (tag, name, private creator, custom)
    extract: Vec<(u32, String, Option<String>, bool)>,
    grouping_strategy: String,
    custom_groups: Vec<(String, Vec<String>)>,
    study_timeout: f64,
}

/// `s3_config` as the facade passes it: every key present, environment
/// fallbacks resolved.
#[derive(FromPyObject)]
#[pyo3(from_item_all)]
struct S3Options {
    bucket: String,
    prefix: String,
    region: String,
    endpoint: Option<String>,
    access_key: String,
    secret_key: String,
    session_token: Option<String>,
    path_style: bool,
    check_on_start: bool,
    part_size: u64,
    multipart_threshold: u64,
    part_concurrency: usize,
    request_timeout: f64,
    max_retries: u32,
}

impl S3Options {
    fn into_settings(self) -> PyResult<S3Settings> {
        let request_timeout = duration("s3_config request_timeout", Some(self.request_timeout))?
            .unwrap_or(Duration::from_secs(60));
        Ok(S3Settings {
            bucket: self.bucket,
            prefix: self.prefix,
            region: self.region,
            endpoint: self.endpoint,
            access_key: self.access_key,
            secret_key: Secret::new(self.secret_key),
            session_token: self.session_token.map(Secret::new),
            path_style: self.path_style,
            check_on_start: self.check_on_start,
            part_size: self.part_size,
            multipart_threshold: self.multipart_threshold,
            part_concurrency: self.part_concurrency,
            request_timeout,
            max_retries: self.max_retries,
        })
    }
}

fn duration(name: &str, v: Option<f64>) -> PyResult<Option<Duration>> {
    match v {
        None => Ok(None),
        Some(s) if s.is_finite() && s > 0.0 && s < 1e9 => Ok(Some(Duration::from_secs_f64(s))),
        Some(s) => Err(PyValueError::new_err(format!(
            "{name} must be a positive number of seconds or None, not {s}"
        ))),
    }
}

impl Options {
    fn into_config(self) -> PyResult<ServerConfig> {
        let backend = match (self.storage_backend.as_str(), self.s3) {
            ("Filesystem", _) => Backend::Filesystem,
            ("S3", Some(s3)) => Backend::S3(Box::new(s3.into_settings()?)),
            ("S3", None) => {
                return Err(PyValueError::new_err(
                    "s3_config with a bucket is required when storage_backend is \"S3\"",
                ))
            }
            (other, _) => {
                return Err(PyValueError::new_err(format!(
                    "storage_backend {other:?} must be \"Filesystem\" or \"S3\""
                )))
            }
        };
        let study_timeout =
            duration("study_timeout", Some(self.study_timeout))?.unwrap_or(Duration::from_secs(30));
        let extract = self
            .extract
            .into_iter()
            .map(|(tag, name, private_creator, custom)| TagRequest {
                tag: Tag((tag >> 16) as u16, (tag & 0xFFFF) as u16),
                name,
                private_creator,
                custom,
            })
            .collect();
        let config = ServerConfig {
            backend,
            acse_timeout: duration("acse_timeout", self.acse_timeout)?,
            dimse_timeout: duration("dimse_timeout", self.dimse_timeout)?,
            idle_timeout: duration("idle_timeout", self.idle_timeout)?,
            host: self.host,
            port: self.port,
            ae_title: self.ae_title,
            max_pdu_length: self.max_pdu_length,
            strict: self.strict,
            out_dir: self.out_dir,
            store_with_file_meta: self.store_with_file_meta,
            abstract_syntax_mode: self.abstract_syntax_mode,
            abstract_syntaxes: self.abstract_syntaxes,
            transfer_syntax_mode: self.transfer_syntax_mode,
            transfer_syntaxes: self.transfer_syntaxes,
            max_associations: self.max_associations,
            allowed_calling_ae_titles: self.allowed_calling_ae_titles,
            require_called_ae_title: self.require_called_ae_title,
            tls_cert: self.tls_cert,
            tls_key: self.tls_key,
            tls_ca: self.tls_ca,
            verbose: self.verbose,
            extract,
            grouping_strategy: self.grouping_strategy,
            custom_groups: self.custom_groups,
            study_timeout,
        };
        config.validate().map_err(PyValueError::new_err)?;
        Ok(config)
    }
}

/// One receiver: owns its runtime, its event channel and its storage.
#[pyclass(name = "_Server", module = "dicom_storescp._core")]
struct PyServer {
    config: ServerConfig,
    server: Mutex<Option<Server>>,
    events: Events,
    rx: Mutex<EventReceiver>,
    /// The counters of the last started server (kept after stop).
    stats: Mutex<Arc<crate::stats::Stats>>,
    /// The keys of `OnFileStored.tags`, made once.
    tag_keys: PyOnceLock<TagKeys>,
}

fn start_error(e: StartError) -> PyErr {
    match e {
        StartError::Config(m) => PyValueError::new_err(m),
        StartError::Storage(m) => PyOSError::new_err(m),
        StartError::Bind { .. } | StartError::Runtime(_) => PyOSError::new_err(e.to_string()),
    }
}

/// Seconds from Python as a valid duration (0 to an hour; NaN is 0).
fn seconds(s: f64) -> f64 {
    if s.is_nan() {
        0.0
    } else {
        s.clamp(0.0, 3600.0)
    }
}

fn lock_poisoned<T>(_: T) -> PyErr {
    PyRuntimeError::new_err("internal lock poisoned")
}

#[pymethods]
impl PyServer {
    #[new]
    fn new(options: &Bound<'_, PyDict>) -> PyResult<Self> {
        let config = options.extract::<Options>()?.into_config()?;
        let (events, rx) = Events::channel(config.verbose);
        Ok(PyServer {
            config,
            server: Mutex::new(None),
            events,
            rx: Mutex::new(rx),
            stats: Mutex::new(Arc::default()),
            tag_keys: PyOnceLock::new(),
        })
    }

    /// Bind and start; returns the bound port.
    fn start(&self, py: Python<'_>) -> PyResult<u16> {
        let config = self.config.clone();
        let events = self.events.clone();
        let mut slot = self.server.lock().map_err(lock_poisoned)?;
        if let Some(s) = slot.as_ref() {
            return Ok(s.local_addr().port());
        }
        let server = py
            .detach(move || Server::start(config, events))
            .map_err(start_error)?;
        let port = server.local_addr().port();
        *self.stats.lock().map_err(lock_poisoned)? = server.stats();
        *slot = Some(server);
        Ok(port)
    }

    /// The server's counters as a dict of ints.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let stats = self.stats.lock().map_err(lock_poisoned)?.clone();
        let d = PyDict::new(py);
        for (name, value) in stats.snapshot() {
            d.set_item(name, value)?;
        }
        Ok(d)
    }

    /// Graceful stop; blocks (without the GIL) until every association ended.
    fn stop(&self, py: Python<'_>, grace: f64) -> PyResult<()> {
        let server = self.server.lock().map_err(lock_poisoned)?.take();
        if let Some(mut server) = server {
            let grace = Duration::from_secs_f64(seconds(grace));
            py.detach(move || server.stop(grace));
        }
        Ok(())
    }

    /// The least severe Python `logging` level whose records the core
    /// forwards (records below it are never built).
    fn set_log_level(&self, level: i64) {
        self.events.set_min_level(Level::from_python(level));
    }

    #[getter]
    fn port(&self) -> PyResult<Option<u16>> {
        Ok(self
            .server
            .lock()
            .map_err(lock_poisoned)?
            .as_ref()
            .map(|s| s.local_addr().port()))
    }

    /// Wait up to `timeout` seconds for events, then return every event
    /// already queued (at most `max`) as a list, in order: one GIL round trip
    /// per burst instead of one per event. An empty list means the timeout
    /// passed; `{"event": "Closed"}` is the last event of a stopped server.
    #[pyo3(signature = (timeout, max = 1024))]
    fn next_events(&self, py: Python<'_>, timeout: f64, max: usize) -> PyResult<Vec<Py<PyAny>>> {
        let timeout = Duration::from_secs_f64(seconds(timeout));
        let max = max.clamp(1, 65536);
        let batch = py.detach(|| -> PyResult<Vec<Event>> {
            let mut rx = self.rx.lock().map_err(lock_poisoned)?;
            Ok(rx.recv_batch(timeout, max))
        })?;
        batch
            .into_iter()
            .map(|e| Ok(event_to_py(py, e, &self.tag_keys)?.into_any().unbind()))
            .collect()
    }
}

fn tags_to_py<'py>(py: Python<'py>, tags: GroupedTags) -> PyResult<Bound<'py, PyDict>> {
    let out = PyDict::new(py);
    for (group, values) in tags {
        if group.is_empty() {
            for (k, v) in values {
                out.set_item(k, v)?;
            }
        } else {
            let d = PyDict::new(py);
            for (k, v) in values {
                d.set_item(k, v)?;
            }
            out.set_item(group, d)?;
        }
    }
    Ok(out)
}

/// The names and group names of a server's extracted tags as Python strings,
/// made once instead of once per event.
struct TagKeys {
    names: Vec<Py<PyString>>,
    groups: Vec<Py<PyString>>,
}

impl TagKeys {
    fn new(py: Python<'_>, extraction: &Extraction) -> Self {
        let made = |s: &str| PyString::new(py, s).unbind();
        TagKeys {
            names: extraction.names().map(made).collect(),
            groups: extraction.file_groups().iter().map(|g| made(g)).collect(),
        }
    }

    /// Whether these keys were made from an extraction of this shape (one
    /// server has one extraction; this guards the cache all the same).
    fn fits(&self, extraction: &Extraction) -> bool {
        self.names.len() == extraction.names().count()
            && self.groups.len() == extraction.file_groups().len()
    }
}

/// `OnFileStored.tags`, built from the values and the cached keys.
fn file_tags_to_py<'py>(
    py: Python<'py>,
    tags: &FileTags,
    cache: &PyOnceLock<TagKeys>,
) -> PyResult<Bound<'py, PyDict>> {
    let ex = &*tags.extraction;
    let out = PyDict::new(py);
    if tags.values.is_empty() && ex.file_groups().is_empty() {
        return Ok(out);
    }
    let cached = cache.get_or_init(py, || TagKeys::new(py, ex));
    let own;
    let keys = if cached.fits(ex) {
        cached
    } else {
        own = TagKeys::new(py, ex);
        &own
    };
    let groups = keys
        .groups
        .iter()
        .map(|name| {
            let d = PyDict::new(py);
            out.set_item(name.bind(py), &d)?;
            Ok(d)
        })
        .collect::<PyResult<Vec<_>>>()?;
    for (index, value) in tags.values.iter() {
        let (Some((_, group)), Some(key)) =
            (ex.file_slot(*index), keys.names.get(usize::from(*index)))
        else {
            continue;
        };
        let target = if groups.is_empty() {
            &out
        } else {
            match groups.get(group) {
                Some(d) => d,
                None => continue,
            }
        };
        target.set_item(key.bind(py), &**value)?;
    }
    Ok(out)
}

fn event_to_py<'py>(
    py: Python<'py>,
    event: Event,
    tag_keys: &PyOnceLock<TagKeys>,
) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    match event {
        Event::ServerStarted {
            port,
            ae_title,
            host,
        } => {
            d.set_item("event", "OnServerStarted")?;
            d.set_item("port", port)?;
            d.set_item("ae_title", ae_title)?;
            d.set_item("host", host)?;
        }
        Event::FileStored(f) => {
            let FileStored {
                file,
                uri,
                sop_instance_uid,
                sop_class_uid,
                transfer_syntax_uid,
                study_instance_uid,
                series_instance_uid,
                calling_ae_title,
                peer,
                size,
                tags,
            } = *f;
            d.set_item(intern!(py, "event"), intern!(py, "OnFileStored"))?;
            d.set_item(intern!(py, "file"), &*file)?;
            d.set_item(intern!(py, "uri"), &*uri)?;
            d.set_item(intern!(py, "sop_instance_uid"), &*sop_instance_uid)?;
            d.set_item(intern!(py, "sop_class_uid"), &*sop_class_uid)?;
            d.set_item(intern!(py, "transfer_syntax_uid"), &*transfer_syntax_uid)?;
            d.set_item(intern!(py, "study_instance_uid"), &*study_instance_uid)?;
            d.set_item(intern!(py, "series_instance_uid"), &*series_instance_uid)?;
            d.set_item(intern!(py, "tags"), file_tags_to_py(py, &tags, tag_keys)?)?;
            d.set_item(intern!(py, "calling_ae_title"), &*calling_ae_title)?;
            d.set_item(intern!(py, "peer"), &*peer)?;
            d.set_item(intern!(py, "size"), size)?;
        }
        Event::StudyCompleted(study) => {
            let StudyCompleted {
                study_instance_uid,
                tags,
                series,
            } = *study;
            d.set_item("event", "OnStudyCompleted")?;
            d.set_item("study_instance_uid", &*study_instance_uid)?;
            d.set_item("tags", tags_to_py(py, tags)?)?;
            let series_list = PyList::empty(py);
            for s in series {
                let sd = PyDict::new(py);
                sd.set_item("series_instance_uid", &*s.series_instance_uid)?;
                sd.set_item("tags", tags_to_py(py, s.tags)?)?;
                let instances = PyList::empty(py);
                for i in s.instances {
                    let id = PyDict::new(py);
                    id.set_item("sop_instance_uid", &*i.sop_instance_uid)?;
                    id.set_item("sop_class_uid", &*i.sop_class_uid)?;
                    id.set_item("transfer_syntax_uid", &*i.transfer_syntax_uid)?;
                    id.set_item("file", &*i.file)?;
                    id.set_item("uri", &*i.uri)?;
                    id.set_item("tags", tags_to_py(py, i.tags)?)?;
                    instances.append(id)?;
                }
                sd.set_item("instances", instances)?;
                series_list.append(sd)?;
            }
            d.set_item("series", series_list)?;
        }
        Event::Error(e) => {
            let ErrorInfo {
                message,
                sop_instance_uid,
                calling_ae_title,
                peer,
                status,
            } = *e;
            d.set_item("event", "OnError")?;
            d.set_item("message", message)?;
            d.set_item("sop_instance_uid", sop_instance_uid)?;
            d.set_item("calling_ae_title", calling_ae_title)?;
            d.set_item("peer", peer)?;
            d.set_item("status", status)?;
        }
        Event::AssociationRejected(r) => {
            let Rejected {
                peer,
                calling_ae_title,
                called_ae_title,
                reason,
                result,
            } = *r;
            d.set_item("event", "OnAssociationRejected")?;
            d.set_item("peer", peer)?;
            d.set_item("calling_ae_title", calling_ae_title)?;
            d.set_item("called_ae_title", called_ae_title)?;
            d.set_item("reason", reason)?;
            d.set_item("result", result)?;
        }
        Event::Log {
            level,
            target,
            message,
        } => {
            d.set_item("event", "_Log")?;
            d.set_item("level", level as i32)?;
            d.set_item("target", target)?;
            d.set_item("message", message)?;
        }
        Event::Closed => {
            d.set_item("event", "Closed")?;
        }
    }
    Ok(d)
}

/// UIDs of every Storage SOP class of the standard.
#[pyfunction]
fn storage_sop_class_uids() -> Vec<&'static str> {
    let mut v: Vec<_> = crate::negotiation::storage_sop_classes()
        .iter()
        .copied()
        .collect();
    v.sort_unstable();
    v
}

/// UIDs of every transfer syntax the receiver can store.
#[pyfunction]
fn storable_transfer_syntax_uids() -> Vec<String> {
    let mut v: Vec<_> = crate::negotiation::storable_transfer_syntaxes()
        .into_iter()
        .collect();
    v.sort_unstable();
    v
}

/// The UID of a standard SOP class (`kind="sop_class"`) or transfer syntax
/// (`kind="transfer_syntax"`) keyword, if any; `kind="any"` searches both.
#[pyfunction]
#[pyo3(signature = (keyword, kind = "any"))]
fn uid_for_keyword(keyword: &str, kind: &str) -> PyResult<Option<&'static str>> {
    use crate::uid_tables::{SOP_CLASSES, TRANSFER_SYNTAXES};
    let tables: Vec<&[crate::uid_tables::UidEntry]> = match kind {
        "any" => vec![SOP_CLASSES, TRANSFER_SYNTAXES],
        "sop_class" => vec![SOP_CLASSES],
        "transfer_syntax" => vec![TRANSFER_SYNTAXES],
        other => {
            return Err(PyValueError::new_err(format!(
                "kind must be \"any\", \"sop_class\" or \"transfer_syntax\", not {other:?}"
            )))
        }
    };
    Ok(tables
        .into_iter()
        .flatten()
        .find(|e| e.keyword == keyword)
        .map(|e| e.uid))
}

/// The keyword of a standard SOP class or transfer syntax UID, if any.
#[pyfunction]
fn keyword_for_uid(uid: &str) -> Option<&'static str> {
    let tables = crate::uid_tables::SOP_CLASSES.iter();
    tables
        .chain(crate::uid_tables::TRANSFER_SYNTAXES)
        .find(|e| e.uid == uid)
        .map(|e| e.keyword)
}

fn tag_from_u32(tag: u32) -> Tag {
    Tag((tag >> 16) as u16, (tag & 0xFFFF) as u16)
}

/// `(tag, vr)` of a standard attribute keyword (the full PS3.6 dictionary).
#[pyfunction]
fn tag_for_keyword(keyword: &str) -> Option<(u32, String)> {
    crate::tags::tag_for_keyword(keyword).map(|(t, vr)| {
        (
            (u32::from(t.group()) << 16) | u32::from(t.element()),
            String::from(vr.to_string()),
        )
    })
}

/// `(keyword, vr)` of a standard tag.
#[pyfunction]
fn keyword_for_tag(tag: u32) -> Option<(String, String)> {
    crate::tags::keyword_for_tag(tag_from_u32(tag))
        .map(|(k, vr)| (k.to_string(), String::from(vr.to_string())))
}

/// Information-model level of a tag: "patient", "study", "series" or "instance".
#[pyfunction]
fn attribute_level(tag: u32) -> &'static str {
    crate::tags::level_of(tag_from_u32(tag)).name()
}

/// Every (tag, keyword, level) of the patient, study and series levels.
#[pyfunction]
fn attribute_levels() -> Vec<(u32, &'static str, &'static str)> {
    crate::attribute_levels::ATTRIBUTE_LEVELS
        .iter()
        .map(|(t, k, l)| (*t, *k, l.name()))
        .collect()
}

#[pymodule]
#[pyo3(name = "_core")]
fn core_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add(
        "IMPLEMENTATION_CLASS_UID",
        crate::negotiation::IMPLEMENTATION_CLASS_UID,
    )?;
    m.add(
        "IMPLEMENTATION_VERSION_NAME",
        crate::negotiation::IMPLEMENTATION_VERSION_NAME,
    )?;
    m.add_class::<PyServer>()?;
    m.add_function(wrap_pyfunction!(storage_sop_class_uids, m)?)?;
    m.add_function(wrap_pyfunction!(storable_transfer_syntax_uids, m)?)?;
    m.add_function(wrap_pyfunction!(uid_for_keyword, m)?)?;
    m.add_function(wrap_pyfunction!(keyword_for_uid, m)?)?;
    m.add_function(wrap_pyfunction!(tag_for_keyword, m)?)?;
    m.add_function(wrap_pyfunction!(keyword_for_tag, m)?)?;
    m.add_function(wrap_pyfunction!(attribute_level, m)?)?;
    m.add_function(wrap_pyfunction!(attribute_levels, m)?)?;
    Ok(())
}
