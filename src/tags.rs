//! Tag extraction and grouping: which attributes are read from each object,
//! under which names, and how they are grouped in `OnFileStored` and
//! `OnStudyCompleted` (SPEC §3).

use std::collections::HashSet;

use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry};
use dicom_core::{Tag, VR};
use dicom_dictionary_std::StandardDataDictionary;

use crate::attribute_levels::ATTRIBUTE_LEVELS;
use crate::events::GroupedTags;
use crate::header::{Header, HeaderPlan, PrivateRequest, IDENTIFYING_TAGS, PIXEL_DATA_START};

/// The level of the DICOM information model an attribute belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    Patient,
    Study,
    Series,
    Instance,
}

impl Level {
    pub fn name(self) -> &'static str {
        match self {
            Level::Patient => "patient",
            Level::Study => "study",
            Level::Series => "series",
            Level::Instance => "instance",
        }
    }
}

fn tag_u32(tag: Tag) -> u32 {
    (u32::from(tag.group()) << 16) | u32::from(tag.element())
}

/// The level of a standard attribute (see `docs/attribute-levels.md`);
/// private and unknown attributes are instance level.
pub fn level_of(tag: Tag) -> Level {
    if tag.group() % 2 == 1 {
        return Level::Instance;
    }
    let key = tag_u32(tag);
    ATTRIBUTE_LEVELS
        .binary_search_by_key(&key, |e| e.0)
        .ok()
        .and_then(|i| ATTRIBUTE_LEVELS.get(i))
        .map_or(Level::Instance, |e| e.2)
}

/// The tag and VR of a standard keyword (the full PS3.6 dictionary). For
/// repeating groups (`OverlayData`, 60xx) the first group is returned.
pub fn tag_for_keyword(keyword: &str) -> Option<(Tag, VR)> {
    let entry = StandardDataDictionary.by_name(keyword)?;
    Some((entry.tag(), entry.vr().relaxed()))
}

/// The keyword and VR of a standard tag.
pub fn keyword_for_tag(tag: Tag) -> Option<(&'static str, VR)> {
    let entry = StandardDataDictionary.by_tag(tag)?;
    Some((entry.alias, entry.vr().relaxed()))
}

/// One attribute to extract, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagRequest {
    pub tag: Tag,
    /// The key in event dicts.
    pub name: String,
    /// For a private attribute addressed through its creator: the creator;
    /// the block byte of `tag.element()` is then ignored.
    pub private_creator: Option<String>,
    /// From `extract_custom_tags`: always instance level.
    pub custom: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grouping {
    ByScope,
    Flat,
    StudyLevel,
    Custom,
}

impl Grouping {
    pub fn parse(s: &str) -> Result<Self, String> {
        Ok(match s {
            "ByScope" => Grouping::ByScope,
            "Flat" => Grouping::Flat,
            "StudyLevel" => Grouping::StudyLevel,
            "Custom" => Grouping::Custom,
            other => {
                return Err(format!(
                    "grouping_strategy {other:?} must be \"ByScope\", \"Flat\", \"StudyLevel\" or \"Custom\""
                ))
            }
        })
    }
}

/// Where a tag goes in `OnStudyCompleted`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StudyTarget {
    Study,
    Series,
    Instance,
}

#[derive(Debug, Clone)]
struct Spec {
    name: String,
    tag: Tag,
    level: Level,
    /// Index into the plan's private requests.
    private: Option<usize>,
    /// Custom grouping: index of the group (None: "other").
    group: Option<usize>,
    /// Position of its group in `Extraction::file_groups`.
    file_group: usize,
    /// Its value may be moved out of the header (no other spec and no later
    /// step reads that tag) instead of copied.
    take: bool,
}

/// Extracted values of one object: (spec index, value), in spec order.
pub type Extracted = Vec<(u16, Box<str>)>;

/// The name of the catch-all group of the Custom strategy.
pub const OTHER_GROUP: &str = "other";

/// The validated extraction configuration of a server.
#[derive(Debug, Clone)]
pub struct Extraction {
    specs: Vec<Spec>,
    grouping: Grouping,
    groups: Vec<String>,
    /// The groups of `OnFileStored.tags`, in order (empty: Flat).
    file_groups: Vec<String>,
    plan: HeaderPlan,
}

impl Default for Extraction {
    fn default() -> Self {
        Extraction {
            specs: Vec::new(),
            grouping: Grouping::ByScope,
            groups: Vec::new(),
            file_groups: Vec::new(),
            plan: HeaderPlan::identifying(),
        }
    }
}

impl Extraction {
    /// Check and compile the options; errors name the option.
    pub fn new(
        requests: &[TagRequest],
        grouping: Grouping,
        custom_groups: &[(String, Vec<String>)],
    ) -> Result<Self, String> {
        if requests.len() > u16::MAX as usize {
            return Err("extract_tags: too many tags".into());
        }
        let mut names = HashSet::new();
        let mut fixed = Vec::new();
        let mut private = Vec::new();
        let mut specs = Vec::new();
        for r in requests {
            let option = if r.custom {
                "extract_custom_tags"
            } else {
                "extract_tags"
            };
            if r.name.is_empty() {
                return Err(format!("{option}: empty name for {}", fmt_tag(r.tag)));
            }
            if !names.insert(r.name.as_str()) {
                return Err(format!("{option}: name {:?} is used twice", r.name));
            }
            if r.tag >= PIXEL_DATA_START || r.tag.group() <= 0x0002 || r.tag.group() == 0xFFFE {
                return Err(format!(
                    "{option}: {} cannot be extracted (only data set attributes before Pixel Data)",
                    fmt_tag(r.tag)
                ));
            }
            let private_index = match &r.private_creator {
                Some(creator) => {
                    if r.tag.group() % 2 == 0 || r.tag.element() < 0x1000 {
                        return Err(format!(
                            "{option}: {} with a private creator must be a private data element (odd group, element xx10-xxFF)",
                            fmt_tag(r.tag)
                        ));
                    }
                    if creator.trim().is_empty() || creator.len() > 64 {
                        return Err(format!(
                            "{option}: private creator {creator:?} must be 1 to 64 characters"
                        ));
                    }
                    private.push(PrivateRequest {
                        group: r.tag.group(),
                        creator: creator.trim().to_string(),
                        element: (r.tag.element() & 0xFF) as u8,
                    });
                    Some(private.len() - 1)
                }
                None => {
                    fixed.push(r.tag);
                    None
                }
            };
            let level = if r.custom {
                Level::Instance
            } else {
                level_of(r.tag)
            };
            specs.push(Spec {
                name: r.name.clone(),
                tag: r.tag,
                level,
                private: private_index,
                group: None,
                file_group: 0,
                take: false,
            });
        }
        let mut groups = Vec::new();
        if grouping == Grouping::Custom {
            for (gi, (group, members)) in custom_groups.iter().enumerate() {
                if group.is_empty() || group == OTHER_GROUP {
                    return Err(format!(
                        "custom_groups: group name {group:?} is reserved or empty"
                    ));
                }
                if groups.contains(group) {
                    return Err(format!("custom_groups: group {group:?} appears twice"));
                }
                groups.push(group.clone());
                for m in members {
                    let spec = specs.iter_mut().find(|s| &s.name == m).ok_or_else(|| {
                        format!("custom_groups: {m:?} in group {group:?} is not an extracted tag")
                    })?;
                    if let Some(prev) = spec.group {
                        let prev = custom_groups.get(prev).map_or("?", |g| g.0.as_str());
                        return Err(format!(
                            "custom_groups: {m:?} is in both {prev:?} and {group:?}"
                        ));
                    }
                    spec.group = Some(gi);
                }
            }
        } else if !custom_groups.is_empty() {
            return Err("custom_groups is only used with grouping_strategy \"Custom\"".into());
        }
        const SCOPES: [Level; 4] = [Level::Patient, Level::Study, Level::Series, Level::Instance];
        let file_groups: Vec<String> = match grouping {
            Grouping::Flat => Vec::new(),
            Grouping::ByScope => SCOPES.iter().map(|l| l.name().to_string()).collect(),
            Grouping::StudyLevel => vec!["study_level".into(), "instance_level".into()],
            Grouping::Custom => groups
                .iter()
                .cloned()
                .chain([OTHER_GROUP.to_string()])
                .collect(),
        };
        let once = |tag: Tag| {
            specs
                .iter()
                .filter(|s| s.private.is_none() && s.tag == tag)
                .count()
                == 1
        };
        // A private element (odd group) may also be what a request by
        // private creator resolves to, per object: never moved.
        let takes: Vec<bool> = specs
            .iter()
            .map(|s| {
                s.private.is_none()
                    && s.tag.group() % 2 == 0
                    && !IDENTIFYING_TAGS.contains(&s.tag)
                    && once(s.tag)
            })
            .collect();
        for (spec, take) in specs.iter_mut().zip(takes) {
            spec.take = take;
            spec.file_group = match grouping {
                Grouping::Flat => 0,
                Grouping::ByScope => SCOPES.iter().position(|l| *l == spec.level).unwrap_or(3),
                Grouping::StudyLevel => usize::from(spec.level > Level::Study),
                Grouping::Custom => spec.group.unwrap_or(groups.len()),
            };
        }
        Ok(Extraction {
            specs,
            grouping,
            groups,
            file_groups,
            plan: HeaderPlan::new(fixed, private),
        })
    }

    pub fn plan(&self) -> &HeaderPlan {
        &self.plan
    }

    pub fn grouping(&self) -> Grouping {
        self.grouping
    }

    /// The configured values found in a header. Values no one else reads
    /// (neither another spec nor the identifying tags) are moved out of it.
    pub fn extract(&self, header: &mut Header) -> Extracted {
        let mut out = Vec::with_capacity(self.specs.len());
        for (i, spec) in self.specs.iter().enumerate() {
            let value = match spec.private {
                Some(p) => header
                    .private_tags
                    .get(p)
                    .copied()
                    .flatten()
                    .and_then(|t| header.get(t))
                    .map(Box::from),
                None if spec.take => header.take(spec.tag).map(String::into_boxed_str),
                None => header.get(spec.tag).map(Box::from),
            };
            if let Some(value) = value {
                out.push((i as u16, value));
            }
        }
        out
    }

    fn spec(&self, index: u16) -> Option<&Spec> {
        self.specs.get(usize::from(index))
    }

    fn pairs<'a>(
        &'a self,
        values: impl Iterator<Item = &'a (u16, Box<str>)>,
    ) -> Vec<(String, String)> {
        values
            .filter_map(|(i, v)| self.spec(*i).map(|s| (s.name.clone(), v.to_string())))
            .collect()
    }

    /// The names of the extracted values, by index (the keys of the tag
    /// dicts, for a binding to convert once).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.specs.iter().map(|s| s.name.as_str())
    }

    /// The groups of `OnFileStored.tags` in order, each present even when
    /// empty; none for the Flat strategy (the values are at the top level).
    pub fn file_groups(&self) -> &[String] {
        &self.file_groups
    }

    /// The name of extracted value `index` and the position of its group in
    /// [`Self::file_groups`].
    pub fn file_slot(&self, index: u16) -> Option<(&str, usize)> {
        self.spec(index).map(|s| (s.name.as_str(), s.file_group))
    }

    /// `OnFileStored.tags` per the grouping strategy, as plain data: the
    /// layout the binding builds from [`Self::file_groups`] and
    /// [`Self::file_slot`], for the tests to check.
    #[cfg(test)]
    pub fn file_tags(&self, values: &Extracted) -> GroupedTags {
        if self.file_groups.is_empty() {
            return vec![(String::new(), self.pairs(values.iter()))];
        }
        let mut out: GroupedTags = self
            .file_groups
            .iter()
            .map(|g| (g.clone(), Vec::new()))
            .collect();
        for (i, v) in values {
            let Some((name, group)) = self.file_slot(*i) else {
                continue;
            };
            if let Some((_, pairs)) = out.get_mut(group) {
                pairs.push((name.to_string(), v.to_string()));
            }
        }
        out
    }

    fn custom_tags<'a>(
        &'a self,
        values: impl Iterator<Item = &'a (u16, Box<str>)> + Clone,
    ) -> GroupedTags {
        let group = |i: &u16| self.spec(*i).and_then(|s| s.group);
        let mut out: GroupedTags = self
            .groups
            .iter()
            .enumerate()
            .map(|(gi, name)| {
                (
                    name.clone(),
                    self.pairs(values.clone().filter(|(i, _)| group(i) == Some(gi))),
                )
            })
            .collect();
        out.push((
            OTHER_GROUP.to_string(),
            self.pairs(values.filter(|(i, _)| group(i).is_none())),
        ));
        out
    }

    /// Where a value goes in `OnStudyCompleted`: ByScope puts patient and
    /// study tags on the study, series tags on the series; StudyLevel
    /// splits study / instance; Flat and Custom put everything on the
    /// instances.
    pub fn study_target(&self, index: u16) -> StudyTarget {
        let level = self.spec(index).map_or(Level::Instance, |s| s.level);
        match (self.grouping, level) {
            (Grouping::ByScope | Grouping::StudyLevel, Level::Patient | Level::Study) => {
                StudyTarget::Study
            }
            (Grouping::ByScope, Level::Series) => StudyTarget::Series,
            _ => StudyTarget::Instance,
        }
    }

    /// `tags` of one instance in `OnStudyCompleted`, from the values whose
    /// target is the instance: flat, or grouped for the Custom strategy.
    pub fn instance_tags(&self, values: &[(u16, Box<str>)]) -> GroupedTags {
        match self.grouping {
            Grouping::Custom => self.custom_tags(values.iter()),
            _ => vec![(String::new(), self.pairs(values.iter()))],
        }
    }

    /// Flat `tags` of a study or series in `OnStudyCompleted`.
    pub fn flat_tags(&self, values: &[(u16, Box<str>)]) -> GroupedTags {
        vec![(String::new(), self.pairs(values.iter()))]
    }
}

fn fmt_tag(tag: Tag) -> String {
    format!("{:04X}{:04X}", tag.group(), tag.element())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::header::read_header;

    fn req(keyword: &str) -> TagRequest {
        let (tag, _) = tag_for_keyword(keyword).unwrap();
        TagRequest {
            tag,
            name: keyword.into(),
            private_creator: None,
            custom: false,
        }
    }

    #[test]
    fn level_table_is_sorted_and_sane() {
        assert!(ATTRIBUTE_LEVELS.windows(2).all(|w| w[0].0 < w[1].0));
        assert!(ATTRIBUTE_LEVELS.len() >= 300);
        for (tag, kw, _) in ATTRIBUTE_LEVELS {
            let (t, _) = tag_for_keyword(kw).unwrap_or_else(|| panic!("{kw}"));
            assert_eq!(tag_u32(t), *tag, "{kw}");
        }
        let level = |kw: &str| level_of(tag_for_keyword(kw).unwrap().0);
        assert_eq!(level("PatientName"), Level::Patient);
        assert_eq!(level("PatientBirthDate"), Level::Patient);
        assert_eq!(level("StudyDate"), Level::Study);
        assert_eq!(level("AccessionNumber"), Level::Study);
        assert_eq!(level("PatientAge"), Level::Study);
        assert_eq!(level("Modality"), Level::Series);
        assert_eq!(level("Manufacturer"), Level::Series);
        assert_eq!(level("FrameOfReferenceUID"), Level::Series);
        assert_eq!(level("InstanceNumber"), Level::Instance);
        assert_eq!(level("SliceThickness"), Level::Instance);
        assert_eq!(level("SpecificCharacterSet"), Level::Instance);
        assert_eq!(level_of(Tag(0x0009, 0x1001)), Level::Instance);
    }

    #[test]
    fn keywords_resolve_through_the_full_dictionary() {
        assert_eq!(
            tag_for_keyword("PatientName"),
            Some((Tag(0x0010, 0x0010), VR::PN))
        );
        assert!(tag_for_keyword("ReferencedImageSequence").unwrap().1 == VR::SQ);
        // an attribute far from the common ones
        assert!(tag_for_keyword("CTDIvol").is_some());
        assert!(tag_for_keyword("NoSuchKeyword").is_none());
        assert_eq!(keyword_for_tag(Tag(0x0008, 0x0060)).unwrap().0, "Modality");
    }

    fn extracted(ex: &Extraction, pairs: &[(Tag, &str)]) -> Extracted {
        let mut h = Header::default();
        h.private_tags = vec![None; ex.plan().private_requests().len()];
        for (t, v) in pairs {
            h.set(*t, v.to_string());
        }
        ex.extract(&mut h)
    }

    /// A value read by one spec only moves out of the header; one that
    /// another spec or the receiver itself reads is copied.
    #[test]
    fn extraction_moves_only_values_no_one_else_reads() {
        let reqs = vec![
            req("PatientName"),
            TagRequest {
                name: "AlsoName".into(),
                ..req("PatientName")
            },
            req("SOPClassUID"),
            req("Modality"),
        ];
        let ex = Extraction::new(&reqs, Grouping::Flat, &[]).unwrap();
        let mut h = Header::default();
        for (t, v) in [
            (Tag(0x0010, 0x0010), "DOE^J"),
            (Tag(0x0008, 0x0016), "1.2.3"),
            (Tag(0x0008, 0x0060), "CT"),
        ] {
            h.set(t, v.to_string());
        }
        let got = ex.extract(&mut h);
        let want: Extracted = vec![
            (0, "DOE^J".into()),
            (1, "DOE^J".into()),
            (2, "1.2.3".into()),
            (3, "CT".into()),
        ];
        assert_eq!(got, want);
        assert_eq!(h.get(Tag(0x0008, 0x0016)), Some("1.2.3"));
        assert_eq!(h.get(Tag(0x0010, 0x0010)), Some("DOE^J"));
        assert_eq!(h.get(Tag(0x0008, 0x0060)), None);
    }

    #[test]
    fn grouping_strategies() {
        let reqs: Vec<_> = ["PatientName", "StudyDate", "Modality", "InstanceNumber"]
            .iter()
            .map(|k| req(k))
            .chain([TagRequest {
                tag: Tag(0x0009, 0x1001),
                name: "Custom".into(),
                private_creator: None,
                custom: true,
            }])
            .collect();
        let values = [
            (Tag(0x0010, 0x0010), "DOE^J"),
            (Tag(0x0008, 0x0020), "20240101"),
            (Tag(0x0008, 0x0060), "CT"),
            (Tag(0x0009, 0x1001), "x"),
        ];
        let names = |g: &GroupedTags, group: &str| -> Vec<String> {
            g.iter()
                .find(|(n, _)| n == group)
                .map(|(_, v)| v.iter().map(|(k, _)| k.clone()).collect())
                .unwrap_or_default()
        };

        let groups_of =
            |t: &GroupedTags| -> Vec<String> { t.iter().map(|g| g.0.clone()).collect() };

        let ex = Extraction::new(&reqs, Grouping::ByScope, &[]).unwrap();
        let t = ex.file_tags(&extracted(&ex, &values));
        assert_eq!(groups_of(&t), ["patient", "study", "series", "instance"]);
        assert_eq!(groups_of(&t), ex.file_groups());
        assert_eq!(names(&t, "patient"), ["PatientName"]);
        assert_eq!(names(&t, "study"), ["StudyDate"]);
        assert_eq!(names(&t, "series"), ["Modality"]);
        assert_eq!(names(&t, "instance"), ["Custom"]);

        let ex = Extraction::new(&reqs, Grouping::Flat, &[]).unwrap();
        let t = ex.file_tags(&extracted(&ex, &values));
        assert_eq!(t.len(), 1);
        assert_eq!(names(&t, "").len(), 4);
        assert!(ex.file_groups().is_empty());

        let ex = Extraction::new(&reqs, Grouping::StudyLevel, &[]).unwrap();
        let t = ex.file_tags(&extracted(&ex, &values));
        assert_eq!(names(&t, "study_level"), ["PatientName", "StudyDate"]);
        assert_eq!(names(&t, "instance_level"), ["Modality", "Custom"]);
        assert_eq!(groups_of(&t), ["study_level", "instance_level"]);

        let groups = vec![(
            "who".to_string(),
            vec!["PatientName".to_string(), "Custom".to_string()],
        )];
        let ex = Extraction::new(&reqs, Grouping::Custom, &groups).unwrap();
        let t = ex.file_tags(&extracted(&ex, &values));
        assert_eq!(names(&t, "who"), ["PatientName", "Custom"]);
        assert_eq!(names(&t, "other"), ["StudyDate", "Modality"]);
        assert_eq!(groups_of(&t), ["who", "other"]);
        assert_eq!(ex.file_slot(4), Some(("Custom", 0)));
        assert_eq!(ex.file_slot(1), Some(("StudyDate", 1)));
        assert_eq!(ex.file_slot(5), None);
        assert_eq!(ex.names().collect::<Vec<_>>()[3], "InstanceNumber");
        assert_eq!(ex.study_target(0), StudyTarget::Instance);
    }

    #[test]
    fn bad_configurations_name_the_option() {
        let err = |reqs: &[TagRequest], g: Grouping, groups: &[(String, Vec<String>)]| {
            Extraction::new(reqs, g, groups).unwrap_err()
        };
        let pn = req("PatientName");
        assert!(err(&[pn.clone(), pn.clone()], Grouping::Flat, &[]).contains("extract_tags"));
        let pixel = TagRequest {
            tag: Tag(0x7FE0, 0x0010),
            ..pn.clone()
        };
        assert!(err(&[pixel], Grouping::Flat, &[]).contains("extract_tags"));
        let groups = vec![("a".to_string(), vec!["Nope".to_string()])];
        assert!(err(std::slice::from_ref(&pn), Grouping::Custom, &groups).contains("custom_groups"));
        assert!(err(std::slice::from_ref(&pn), Grouping::Flat, &groups).contains("custom_groups"));
        let bad_private = TagRequest {
            tag: Tag(0x0010, 0x1001),
            name: "X".into(),
            private_creator: Some("ACME".into()),
            custom: true,
        };
        assert!(err(&[bad_private], Grouping::Flat, &[]).contains("extract_custom_tags"));
    }

    /// A private element asked for both as an exact tag and through its
    /// private creator (which resolves to the same element): both get it.
    #[test]
    fn exact_and_creator_requests_for_one_private_element_both_get_it() {
        let exact = TagRequest {
            tag: Tag(0x0009, 0x1001),
            name: "Exact".into(),
            private_creator: None,
            custom: true,
        };
        let by_creator = TagRequest {
            name: "ByCreator".into(),
            private_creator: Some("ACME".into()),
            ..exact.clone()
        };
        let ex = Extraction::new(&[exact, by_creator], Grouping::Flat, &[]).unwrap();
        let mut h = Header::default();
        h.private_tags = vec![Some(Tag(0x0009, 0x1001))];
        h.set(Tag(0x0009, 0x1001), "v".to_string());
        let got = ex.extract(&mut h);
        let want: Extracted = vec![(0, "v".into()), (1, "v".into())];
        assert_eq!(got, want);
    }

    #[test]
    fn private_creator_resolution_end_to_end() {
        let reqs = vec![TagRequest {
            tag: Tag(0x0029, 0x1008),
            name: "CsaType".into(),
            private_creator: Some("SIEMENS CSA HEADER".into()),
            custom: true,
        }];
        let ex = Extraction::new(&reqs, Grouping::Flat, &[]).unwrap();
        let mut ds = Vec::new();
        for (e, v) in [
            (0x0010u16, &b"OTHER CREATOR "[..]),
            (0x0011, b"SIEMENS CSA HEADER"),
        ] {
            ds.extend_from_slice(&0x0029u16.to_le_bytes());
            ds.extend_from_slice(&e.to_le_bytes());
            ds.extend_from_slice(b"LO");
            ds.extend_from_slice(&(v.len() as u16).to_le_bytes());
            ds.extend_from_slice(v);
        }
        for (e, v) in [(0x1008u16, &b"WRONG "[..]), (0x1108, b"IMAGE NUM 4 ")] {
            ds.extend_from_slice(&0x0029u16.to_le_bytes());
            ds.extend_from_slice(&e.to_le_bytes());
            ds.extend_from_slice(b"CS");
            ds.extend_from_slice(&(v.len() as u16).to_le_bytes());
            ds.extend_from_slice(v);
        }
        let mut h = read_header(&ds[..], "1.2.840.10008.1.2.1", ex.plan()).unwrap();
        let got = ex.extract(&mut h);
        assert_eq!(got, vec![(0u16, "IMAGE NUM 4".into())]);
    }
}
