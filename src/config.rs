//! Validated server configuration (the Python facade validates first and
//! gives friendlier messages; this is the core's own line of defence).

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use crate::negotiation::{storable_transfer_syntaxes, AbstractSyntaxPolicy, NegotiationPolicy};
use crate::storage::s3::S3Settings;
use crate::tags::{Extraction, Grouping, TagRequest};

/// Smallest and largest `max_pdu_length` accepted.
pub const MIN_PDU_LENGTH: u32 = 4096;
pub const MAX_PDU_LENGTH: u32 = crate::pdu::NON_STRICT_PDU_CEILING;

/// Where objects go.
#[derive(Debug, Clone, Default)]
pub enum Backend {
    /// `{out_dir}/{study}/{series}/{sop}.dcm`
    #[default]
    Filesystem,
    /// `{prefix}{study}/{series}/{sop}.dcm` in a bucket.
    S3(Box<S3Settings>),
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub host: String,
    pub port: u16,
    pub ae_title: String,
    pub max_pdu_length: u32,
    pub strict: bool,
    /// Required for the filesystem backend; with S3, where spool files go
    /// (a temporary directory when `None`).
    pub out_dir: Option<PathBuf>,
    pub backend: Backend,
    pub store_with_file_meta: bool,
    pub abstract_syntax_mode: String,
    pub abstract_syntaxes: Vec<String>,
    pub transfer_syntax_mode: String,
    pub transfer_syntaxes: Vec<String>,
    pub max_associations: usize,
    pub acse_timeout: Option<Duration>,
    pub dimse_timeout: Option<Duration>,
    pub idle_timeout: Option<Duration>,
    pub allowed_calling_ae_titles: Option<Vec<String>>,
    pub require_called_ae_title: bool,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub tls_ca: Option<PathBuf>,
    pub verbose: bool,
    pub extract: Vec<TagRequest>,
    pub grouping_strategy: String,
    pub custom_groups: Vec<(String, Vec<String>)>,
    pub study_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            host: "0.0.0.0".into(),
            port: 0,
            ae_title: "STORE-SCP".into(),
            max_pdu_length: 16384,
            strict: false,
            out_dir: Some(PathBuf::from("./dicom-storage")),
            backend: Backend::Filesystem,
            store_with_file_meta: false,
            abstract_syntax_mode: "AllStorage".into(),
            abstract_syntaxes: Vec::new(),
            transfer_syntax_mode: "All".into(),
            transfer_syntaxes: Vec::new(),
            max_associations: 100,
            acse_timeout: Some(Duration::from_secs(30)),
            dimse_timeout: Some(Duration::from_secs(60)),
            idle_timeout: Some(Duration::from_secs(300)),
            allowed_calling_ae_titles: None,
            require_called_ae_title: false,
            tls_cert: None,
            tls_key: None,
            tls_ca: None,
            verbose: false,
            extract: Vec::new(),
            grouping_strategy: "ByScope".into(),
            custom_groups: Vec::new(),
            study_timeout: Duration::from_secs(30),
        }
    }
}

/// An AE title: 1 to 16 printable ASCII characters, not only spaces, no backslash.
pub fn is_valid_ae_title(ae: &str) -> bool {
    !ae.trim().is_empty()
        && ae.len() <= 16
        && ae.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b'\\')
}

impl ServerConfig {
    /// Check every option; the error names the option.
    pub fn validate(&self) -> Result<(), String> {
        if !is_valid_ae_title(&self.ae_title) {
            return Err(format!(
                "ae_title {:?} must be 1 to 16 printable ASCII characters",
                self.ae_title
            ));
        }
        if !(MIN_PDU_LENGTH..=MAX_PDU_LENGTH).contains(&self.max_pdu_length) {
            return Err(format!(
                "max_pdu_length {} must be between {MIN_PDU_LENGTH} and {MAX_PDU_LENGTH}",
                self.max_pdu_length
            ));
        }
        match &self.backend {
            Backend::Filesystem if self.out_dir.is_none() => {
                return Err("out_dir is required when storage_backend is \"Filesystem\"".into())
            }
            Backend::Filesystem => {}
            Backend::S3(s3) => s3.validate()?,
        }
        if self.max_associations == 0 {
            return Err("max_associations must be at least 1".into());
        }
        if let Some(list) = &self.allowed_calling_ae_titles {
            if let Some(bad) = list.iter().find(|a| !is_valid_ae_title(a)) {
                return Err(format!(
                    "allowed_calling_ae_titles: {bad:?} is not an AE title"
                ));
            }
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => return Err("tls_key is required with tls_cert".into()),
            (None, Some(_)) => return Err("tls_cert is required with tls_key".into()),
            (None, None) if self.tls_ca.is_some() => {
                return Err("tls_ca needs tls_cert and tls_key (TLS must be on)".into())
            }
            _ => {}
        }
        if self.study_timeout.is_zero() {
            return Err("study_timeout must be a positive number of seconds".into());
        }
        self.extraction()?;
        self.policy().map(|_| ())
    }

    /// The TLS configuration, when TLS is on (reads the PEM files).
    pub fn tls(&self) -> Result<Option<std::sync::Arc<rustls::ServerConfig>>, String> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => {
                crate::tls::server_config(cert, key, self.tls_ca.as_deref()).map(Some)
            }
            _ => Ok(None),
        }
    }

    /// The tag extraction and grouping these options describe.
    pub fn extraction(&self) -> Result<Extraction, String> {
        Extraction::new(
            &self.extract,
            Grouping::parse(&self.grouping_strategy)?,
            &self.custom_groups,
        )
    }

    /// The negotiation policy these options describe.
    pub fn policy(&self) -> Result<NegotiationPolicy, String> {
        let abstract_syntaxes = match self.abstract_syntax_mode.as_str() {
            "AllStorage" => AbstractSyntaxPolicy::AllStorage,
            "All" => AbstractSyntaxPolicy::All,
            "Custom" => {
                if self.abstract_syntaxes.is_empty() {
                    return Err(
                        "abstract_syntaxes must not be empty when abstract_syntax_mode is \"Custom\""
                            .into(),
                    );
                }
                AbstractSyntaxPolicy::Custom(self.abstract_syntaxes.iter().cloned().collect())
            }
            other => {
                return Err(format!(
                    "abstract_syntax_mode {other:?} must be \"AllStorage\", \"All\" or \"Custom\""
                ))
            }
        };
        let storable = storable_transfer_syntaxes();
        let transfer_syntaxes: HashSet<String> = match self.transfer_syntax_mode.as_str() {
            "All" => storable,
            "UncompressedOnly" => [
                crate::negotiation::IMPLICIT_VR_LE,
                crate::negotiation::EXPLICIT_VR_LE,
                crate::negotiation::EXPLICIT_VR_BE,
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
            "Custom" => {
                if self.transfer_syntaxes.is_empty() {
                    return Err(
                        "transfer_syntaxes must not be empty when transfer_syntax_mode is \"Custom\""
                            .into(),
                    );
                }
                if let Some(bad) = self.transfer_syntaxes.iter().find(|t| !storable.contains(*t)) {
                    return Err(format!(
                        "transfer_syntaxes: {bad:?} is not a transfer syntax this receiver can store"
                    ));
                }
                self.transfer_syntaxes.iter().cloned().collect()
            }
            other => {
                return Err(format!(
                    "transfer_syntax_mode {other:?} must be \"All\", \"UncompressedOnly\" or \"Custom\""
                ))
            }
        };
        Ok(NegotiationPolicy {
            ae_title: self.ae_title.clone(),
            max_pdu_length: self.max_pdu_length,
            abstract_syntaxes,
            transfer_syntaxes,
            allowed_calling_ae_titles: self
                .allowed_calling_ae_titles
                .as_ref()
                .map(|v| v.iter().map(|s| s.trim().to_string()).collect()),
            require_called_ae_title: self.require_called_ae_title,
        })
    }

    /// Largest PDU body accepted from peers.
    pub fn pdu_limit(&self) -> u32 {
        if self.strict {
            self.max_pdu_length
        } else {
            crate::pdu::NON_STRICT_PDU_CEILING.max(self.max_pdu_length)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        ServerConfig::default().validate().unwrap();
    }

    #[test]
    fn errors_name_the_option() {
        let bad = |f: fn(&mut ServerConfig), name: &str| {
            let mut c = ServerConfig::default();
            f(&mut c);
            let err = c.validate().unwrap_err();
            assert!(err.contains(name), "{err}");
        };
        bad(|c| c.ae_title = String::new(), "ae_title");
        bad(|c| c.ae_title = "X".repeat(17), "ae_title");
        bad(|c| c.max_pdu_length = 10, "max_pdu_length");
        bad(|c| c.out_dir = None, "out_dir");
        bad(
            |c| c.backend = Backend::S3(Box::default()),
            "s3_config bucket",
        );
        bad(
            |c| c.abstract_syntax_mode = "Custom".into(),
            "abstract_syntaxes",
        );
        bad(
            |c| c.transfer_syntax_mode = "Nope".into(),
            "transfer_syntax_mode",
        );
        bad(|c| c.grouping_strategy = "Nope".into(), "grouping_strategy");
        bad(|c| c.study_timeout = Duration::ZERO, "study_timeout");
        bad(
            |c| c.custom_groups = vec![("g".into(), vec![])],
            "custom_groups",
        );
        bad(
            |c| {
                c.transfer_syntax_mode = "Custom".into();
                c.transfer_syntaxes = vec!["1.2.3".into()];
            },
            "transfer_syntaxes",
        );
    }
}
