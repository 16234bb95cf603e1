//! Association negotiation: which presentation contexts are accepted, in
//! which transfer syntax, and when the whole association is refused.

use std::collections::HashSet;
use std::sync::OnceLock;

use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use dicom_ul::pdu::{
    AssociationAC, AssociationRJ, AssociationRJResult, AssociationRJServiceProviderASCEReason,
    AssociationRJServiceUserReason, AssociationRJSource, AssociationRQ, PresentationContextResult,
    PresentationContextResultReason, UserVariableItem,
};

pub const VERIFICATION: &str = "1.2.840.10008.1.1";
pub const APPLICATION_CONTEXT: &str = "1.2.840.10008.3.1.1.1";
pub const IMPLICIT_VR_LE: &str = "1.2.840.10008.1.2";
pub const EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1";
pub const EXPLICIT_VR_BE: &str = "1.2.840.10008.1.2.2";
pub const DEFLATED_EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1.99";

/// This implementation's identity in A-ASSOCIATE-AC and file meta groups.
pub const IMPLEMENTATION_CLASS_UID: &str = "2.25.223977298465129305745163930148216870417";
pub const IMPLEMENTATION_VERSION_NAME: &str = concat!("STORESCP_", env!("CARGO_PKG_VERSION"));

/// Remove the padding some peers leave on UIDs.
pub fn trim_uid(uid: &str) -> &str {
    uid.trim_matches(|c: char| c == '\0' || c.is_whitespace())
}

/// Every Storage SOP class of the standard (retired ones included, since old
/// modalities still send them), from the DICOM dictionary.
pub fn storage_sop_classes() -> &'static HashSet<&'static str> {
    static SET: OnceLock<HashSet<&'static str>> = OnceLock::new();
    SET.get_or_init(|| {
        crate::uid_tables::SOP_CLASSES
            .iter()
            .filter(|e| is_storage_name(e.keyword))
            .map(|e| e.uid)
            .collect()
    })
}

fn is_storage_name(alias: &str) -> bool {
    alias.contains("Storage")
        && !alias.contains("StorageCommitment")
        && !alias.contains("StorageManagement")
}

/// Every transfer syntax whose data sets this receiver can parse (for the
/// header) and therefore store as received.
pub fn storable_transfer_syntaxes() -> HashSet<String> {
    TransferSyntaxRegistry
        .iter()
        .filter(|ts| !ts.is_unsupported())
        .map(|ts| ts.uid().to_string())
        .collect()
}

pub fn is_native_uncompressed(ts: &str) -> bool {
    matches!(ts, IMPLICIT_VR_LE | EXPLICIT_VR_LE | EXPLICIT_VR_BE)
}

#[derive(Debug, Clone)]
pub enum AbstractSyntaxPolicy {
    AllStorage,
    All,
    Custom(HashSet<String>),
}

/// What the SCP accepts and from whom.
#[derive(Debug, Clone)]
pub struct NegotiationPolicy {
    pub ae_title: String,
    pub max_pdu_length: u32,
    pub abstract_syntaxes: AbstractSyntaxPolicy,
    pub transfer_syntaxes: HashSet<String>,
    pub allowed_calling_ae_titles: Option<HashSet<String>>,
    pub require_called_ae_title: bool,
}

/// A presentation context accepted for this association.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptedContext {
    pub id: u8,
    pub abstract_syntax: String,
    pub transfer_syntax: String,
}

#[derive(Debug)]
pub struct Negotiated {
    pub ac: AssociationAC,
    pub contexts: Vec<AcceptedContext>,
    /// Refused contexts: id, abstract syntax, why.
    pub refused: Vec<(u8, String, &'static str)>,
    pub calling_ae_title: String,
    pub called_ae_title: String,
    /// Largest PDU the requestor accepts from us (0 = unlimited).
    pub peer_max_pdu_length: u32,
}

/// Why an association was refused, with the PDU to send back.
#[derive(Debug)]
pub struct Rejection {
    pub rj: AssociationRJ,
    pub reason: String,
}

fn reject(result: AssociationRJResult, source: AssociationRJSource, reason: String) -> Rejection {
    Rejection {
        rj: AssociationRJ { result, source },
        reason,
    }
}

impl NegotiationPolicy {
    fn accepts_abstract_syntax(&self, uid: &str) -> bool {
        if uid == VERIFICATION {
            return true;
        }
        match &self.abstract_syntaxes {
            AbstractSyntaxPolicy::All => !uid.is_empty(),
            AbstractSyntaxPolicy::AllStorage => storage_sop_classes().contains(uid),
            AbstractSyntaxPolicy::Custom(set) => set.contains(uid),
        }
    }

    /// Pick the transfer syntax for one context: the sender's compressed
    /// encoding (in its order of preference) when it offers one we accept, so
    /// that compressed data is stored untouched; otherwise explicit VR little
    /// endian, then implicit, then explicit big endian.
    pub fn choose_transfer_syntax(&self, proposed: &[String]) -> Option<String> {
        let acceptable: Vec<&str> = proposed
            .iter()
            .map(|ts| trim_uid(ts))
            .filter(|ts| self.transfer_syntaxes.contains(*ts))
            .collect();
        acceptable
            .iter()
            .find(|ts| !is_native_uncompressed(ts))
            .or_else(|| {
                [EXPLICIT_VR_LE, IMPLICIT_VR_LE, EXPLICIT_VR_BE]
                    .iter()
                    .find(|pref| acceptable.contains(pref))
            })
            .map(|ts| ts.to_string())
    }

    /// Negotiate an A-ASSOCIATE-RQ.
    pub fn negotiate(&self, rq: &AssociationRQ) -> Result<Negotiated, Rejection> {
        if rq.protocol_version & 1 == 0 {
            return Err(reject(
                AssociationRJResult::Permanent,
                AssociationRJSource::ServiceProviderASCE(
                    AssociationRJServiceProviderASCEReason::ProtocolVersionNotSupported,
                ),
                format!("protocol version {} not supported", rq.protocol_version),
            ));
        }
        if trim_uid(&rq.application_context_name) != APPLICATION_CONTEXT {
            return Err(reject(
                AssociationRJResult::Permanent,
                AssociationRJSource::ServiceUser(
                    AssociationRJServiceUserReason::ApplicationContextNameNotSupported,
                ),
                format!(
                    "application context {:?} not supported",
                    rq.application_context_name
                ),
            ));
        }
        let calling = rq.calling_ae_title.trim().to_string();
        let called = rq.called_ae_title.trim().to_string();
        if let Some(allowed) = &self.allowed_calling_ae_titles {
            if !allowed.contains(&calling) {
                return Err(reject(
                    AssociationRJResult::Permanent,
                    AssociationRJSource::ServiceUser(
                        AssociationRJServiceUserReason::CallingAETitleNotRecognized,
                    ),
                    format!("calling AE title {calling:?} is not allowed"),
                ));
            }
        }
        if self.require_called_ae_title && called != self.ae_title {
            return Err(reject(
                AssociationRJResult::Permanent,
                AssociationRJSource::ServiceUser(
                    AssociationRJServiceUserReason::CalledAETitleNotRecognized,
                ),
                format!("called AE title {called:?} is not {:?}", self.ae_title),
            ));
        }

        let mut results = Vec::with_capacity(rq.presentation_contexts.len());
        let mut contexts = Vec::new();
        let mut refused = Vec::new();
        for pc in &rq.presentation_contexts {
            let abstract_syntax = trim_uid(&pc.abstract_syntax).to_string();
            let (reason, ts) = if !self.accepts_abstract_syntax(&abstract_syntax) {
                (
                    PresentationContextResultReason::AbstractSyntaxNotSupported,
                    None,
                )
            } else {
                match self.choose_transfer_syntax(&pc.transfer_syntaxes) {
                    Some(ts) => (PresentationContextResultReason::Acceptance, Some(ts)),
                    None => (
                        PresentationContextResultReason::TransferSyntaxesNotSupported,
                        None,
                    ),
                }
            };
            match reason {
                PresentationContextResultReason::AbstractSyntaxNotSupported => refused.push((
                    pc.id,
                    abstract_syntax.clone(),
                    "abstract syntax not supported",
                )),
                PresentationContextResultReason::TransferSyntaxesNotSupported => refused.push((
                    pc.id,
                    abstract_syntax.clone(),
                    "transfer syntaxes not supported",
                )),
                _ => {}
            }
            if let Some(ts) = &ts {
                contexts.push(AcceptedContext {
                    id: pc.id,
                    abstract_syntax: abstract_syntax.clone(),
                    transfer_syntax: ts.clone(),
                });
            }
            results.push(PresentationContextResult {
                id: pc.id,
                reason,
                transfer_syntax: ts.unwrap_or_else(|| IMPLICIT_VR_LE.to_string()),
            });
        }
        if contexts.is_empty() {
            return Err(reject(
                AssociationRJResult::Permanent,
                AssociationRJSource::ServiceUser(AssociationRJServiceUserReason::NoReasonGiven),
                "no acceptable presentation context was proposed".to_string(),
            ));
        }
        let peer_max_pdu_length = rq
            .user_variables
            .iter()
            .find_map(|v| match v {
                UserVariableItem::MaxLength(n) => Some(*n),
                _ => None,
            })
            .unwrap_or(0);
        let ac = AssociationAC {
            protocol_version: 1,
            calling_ae_title: rq.calling_ae_title.clone(),
            called_ae_title: rq.called_ae_title.clone(),
            application_context_name: APPLICATION_CONTEXT.to_string(),
            presentation_contexts: results,
            user_variables: vec![
                UserVariableItem::MaxLength(self.max_pdu_length),
                UserVariableItem::ImplementationClassUID(IMPLEMENTATION_CLASS_UID.to_string()),
                UserVariableItem::ImplementationVersionName(
                    IMPLEMENTATION_VERSION_NAME.to_string(),
                ),
            ],
        };
        Ok(Negotiated {
            ac,
            contexts,
            refused,
            calling_ae_title: calling,
            called_ae_title: called,
            peer_max_pdu_length,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dicom_ul::pdu::PresentationContextProposed;

    fn policy() -> NegotiationPolicy {
        NegotiationPolicy {
            ae_title: "STORE-SCP".into(),
            max_pdu_length: 16384,
            abstract_syntaxes: AbstractSyntaxPolicy::AllStorage,
            transfer_syntaxes: storable_transfer_syntaxes(),
            allowed_calling_ae_titles: None,
            require_called_ae_title: false,
        }
    }

    fn rq(contexts: Vec<(u8, &str, Vec<&str>)>) -> AssociationRQ {
        AssociationRQ {
            protocol_version: 1,
            calling_ae_title: "SCU".into(),
            called_ae_title: "ANY".into(),
            application_context_name: APPLICATION_CONTEXT.into(),
            presentation_contexts: contexts
                .into_iter()
                .map(|(id, a, ts)| PresentationContextProposed {
                    id,
                    abstract_syntax: a.into(),
                    transfer_syntaxes: ts.into_iter().map(String::from).collect(),
                })
                .collect(),
            user_variables: vec![UserVariableItem::MaxLength(0)],
        }
    }

    #[test]
    fn all_storage_is_the_whole_standard() {
        let set = storage_sop_classes();
        assert!(set.len() > 100, "only {} storage classes", set.len());
        assert!(set.contains("1.2.840.10008.5.1.4.1.1.2")); // CT
        assert!(set.contains("1.2.840.10008.5.1.4.1.1.6.1")); // US
        assert!(set.contains("1.2.840.10008.5.1.4.1.1.104.1")); // encapsulated PDF
        assert!(!set.contains("1.2.840.10008.1.20.1")); // storage commitment
        assert!(!set.contains(VERIFICATION));
    }

    #[test]
    fn all_transfer_syntaxes_include_deflate_and_compressed() {
        let all = storable_transfer_syntaxes();
        for ts in [
            IMPLICIT_VR_LE,
            EXPLICIT_VR_LE,
            EXPLICIT_VR_BE,
            DEFLATED_EXPLICIT_VR_LE,
            "1.2.840.10008.1.2.4.50",
            "1.2.840.10008.1.2.4.70",
            "1.2.840.10008.1.2.4.80",
            "1.2.840.10008.1.2.4.90",
            "1.2.840.10008.1.2.5",
            "1.2.840.10008.1.2.4.100",
        ] {
            assert!(all.contains(ts), "{ts} missing");
        }
    }

    #[test]
    fn prefers_compressed_then_explicit_le() {
        let p = policy();
        let pick = |v: &[&str]| {
            p.choose_transfer_syntax(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        };
        assert_eq!(
            pick(&[IMPLICIT_VR_LE, EXPLICIT_VR_BE, EXPLICIT_VR_LE]).as_deref(),
            Some(EXPLICIT_VR_LE)
        );
        assert_eq!(
            pick(&[IMPLICIT_VR_LE, "1.2.840.10008.1.2.4.50\0"]).as_deref(),
            Some("1.2.840.10008.1.2.4.50")
        );
        assert_eq!(pick(&["1.2.3.4"]), None);
    }

    #[test]
    fn per_context_results() {
        let p = policy();
        let n = p
            .negotiate(&rq(vec![
                (1, "1.2.840.10008.5.1.4.1.1.2", vec![IMPLICIT_VR_LE]),
                (3, "1.2.3.4.5.6", vec![IMPLICIT_VR_LE]),
                (5, VERIFICATION, vec!["1.9.9"]),
            ]))
            .unwrap();
        assert_eq!(n.contexts.len(), 1);
        let reasons: Vec<_> =
            n.ac.presentation_contexts
                .iter()
                .map(|r| r.reason.clone())
                .collect();
        assert_eq!(
            reasons,
            vec![
                PresentationContextResultReason::Acceptance,
                PresentationContextResultReason::AbstractSyntaxNotSupported,
                PresentationContextResultReason::TransferSyntaxesNotSupported,
            ]
        );
    }

    #[test]
    fn rejects_when_nothing_acceptable_or_ae_refused() {
        let mut p = policy();
        assert!(p
            .negotiate(&rq(vec![(1, "1.2.3", vec![IMPLICIT_VR_LE])]))
            .is_err());
        p.require_called_ae_title = true;
        let r = p
            .negotiate(&rq(vec![(1, VERIFICATION, vec![IMPLICIT_VR_LE])]))
            .unwrap_err();
        assert!(r.reason.contains("called AE"));
        p.require_called_ae_title = false;
        p.allowed_calling_ae_titles = Some(HashSet::from(["OTHER".to_string()]));
        assert!(p
            .negotiate(&rq(vec![(1, VERIFICATION, vec![IMPLICIT_VR_LE])]))
            .is_err());
    }
}
