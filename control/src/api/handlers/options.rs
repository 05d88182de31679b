//! The typed options of each verb, from the query (and, for delete, the body), validated as
//! kube-apiserver validates them (k8s.io/apimachinery pkg/apis/meta/v1/validation
//! ValidateCreateOptions, ValidateUpdateOptions, ValidatePatchOptions, ValidateDeleteOptions).

use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;
use serde_json::json;

use super::Params;
use crate::api::{
    error::{ApiError, Cause},
    selectors::{FieldSelector, LabelSelector},
};

/// GET-collection (and watch) options: selectors, paging and the revision to read.
#[derive(Debug, Default)]
pub struct ListOptions {
    pub label_selector: LabelSelector,
    pub field_selector: FieldSelector,
    /// `limit`: at most this many items per page; 0 for all.
    pub limit: usize,
    /// `continue`: the token of the next page.
    pub continue_token: Option<String>,
    /// `resourceVersion` as given ("" when unset).
    pub resource_version: String,
    /// `resourceVersionMatch` as given ("" when unset).
    pub resource_version_match: String,
}

impl ListOptions {
    pub fn parse(params: &Params) -> Result<Self, ApiError> {
        let get = |k: &str| params.get(k).map(String::as_str).unwrap_or_default();
        Ok(Self {
            label_selector: LabelSelector::parse(get("labelSelector"))?,
            field_selector: FieldSelector::parse(get("fieldSelector"))?,
            limit: get("limit").parse::<usize>().unwrap_or(0),
            continue_token: params.get("continue").filter(|c| !c.is_empty()).cloned(),
            resource_version: get("resourceVersion").to_string(),
            resource_version_match: get("resourceVersionMatch").to_string(),
        })
    }
}

/// `fieldValidation`: what a write does with fields the kind's schema does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FieldValidation {
    /// Drop them silently.
    Ignore,
    /// Drop them and say so in a `Warning` header (the default).
    #[default]
    Warn,
    /// Refuse the request (400).
    Strict,
}

/// The options every write shares (CreateOptions, UpdateOptions, PatchOptions).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteOptions {
    /// `dryRun=All`: run every stage but the write.
    pub dry_run: bool,
    /// `fieldManager`: who makes the change (required for server-side apply).
    pub field_manager: Option<String>,
    pub field_validation: FieldValidation,
}

/// `POST` options.
pub type CreateOptions = WriteOptions;
/// `PUT` options.
pub type UpdateOptions = WriteOptions;

/// `PATCH` options.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PatchOptions {
    pub write: WriteOptions,
    /// `force`: server-side apply takes fields other managers own.
    pub force: bool,
}

/// The values `dryRun` may take.
const DRY_RUN_VALUES: &[&str] = &["All"];

fn invalid_options(kind: &str, causes: Vec<Cause>) -> ApiError {
    ApiError::Invalid {
        kind: kind.into(),
        group: "meta.k8s.io".into(),
        name: String::new(),
        causes,
    }
}

/// `dryRun` from the query or a DeleteOptions body: each value must be `All`.
fn dry_run(values: &[String], causes: &mut Vec<Cause>) -> bool {
    let unsupported: Vec<&String> = values
        .iter()
        .filter(|v| !DRY_RUN_VALUES.contains(&v.as_str()))
        .collect();
    if !unsupported.is_empty() {
        causes.push(Cause::not_supported(
            "dryRun",
            &json!(values),
            DRY_RUN_VALUES,
        ));
    }
    values.iter().any(|v| v == "All")
}

impl WriteOptions {
    /// Parses the options of a write of `kind` (`CreateOptions`, `UpdateOptions`,
    /// `PatchOptions`, named in the error).
    pub fn parse(params: &Params, kind: &str) -> Result<Self, ApiError> {
        let mut causes = Vec::new();
        let dry_run = dry_run(
            &params
                .get("dryRun")
                .cloned()
                .into_iter()
                .collect::<Vec<_>>(),
            &mut causes,
        );
        let field_validation = match params.get("fieldValidation").map(String::as_str) {
            None | Some("" | "Warn") => FieldValidation::Warn,
            Some("Ignore") => FieldValidation::Ignore,
            Some("Strict") => FieldValidation::Strict,
            Some(other) => {
                causes.push(Cause::not_supported(
                    "fieldValidation",
                    &json!(other),
                    &["", "Ignore", "Strict", "Warn"],
                ));
                FieldValidation::Warn
            }
        };
        let field_manager = params
            .get("fieldManager")
            .filter(|m| !m.is_empty())
            .cloned();
        if let Some(m) = &field_manager
            && m.len() > 128
        {
            causes.push(Cause::invalid(
                "fieldManager",
                &json!(m),
                "must be less than 128 characters",
            ));
        }
        if !causes.is_empty() {
            return Err(invalid_options(kind, causes));
        }
        Ok(Self {
            dry_run,
            field_manager,
            field_validation,
        })
    }
}

impl PatchOptions {
    pub fn parse(params: &Params) -> Result<Self, ApiError> {
        Ok(Self {
            write: WriteOptions::parse(params, "PatchOptions")?,
            force: params.get("force").is_some_and(|v| v == "true"),
        })
    }
}

/// `propagationPolicy`: what happens to the object's dependents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Propagation {
    /// The garbage collector deletes them after the owner is gone (the default here, as for
    /// most kinds in kube-apiserver).
    #[default]
    Background,
    /// The owner stays (with the `foregroundDeletion` finalizer) until they are gone.
    Foreground,
    /// They are kept, their owner references removed (the `orphan` finalizer).
    Orphan,
}

impl Propagation {
    /// The finalizer a delete with this policy puts on the object.
    pub fn finalizer(self) -> Option<&'static str> {
        match self {
            Self::Background => None,
            Self::Foreground => Some("foregroundDeletion"),
            Self::Orphan => Some("orphan"),
        }
    }
}

/// DELETE options: the `meta/v1` DeleteOptions body (k8s-openapi's type) with the query's
/// values taking precedence, as kube-apiserver's delete handler merges them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeleteOptions {
    pub grace_period_seconds: Option<i64>,
    pub propagation: Propagation,
    /// `preconditions.uid`.
    pub uid: Option<String>,
    /// `preconditions.resourceVersion`.
    pub resource_version: Option<String>,
    pub dry_run: bool,
}

impl DeleteOptions {
    pub fn parse(params: &Params, body: &[u8]) -> Result<Self, ApiError> {
        let from_body: meta::DeleteOptions = if body.is_empty() {
            meta::DeleteOptions::default()
        } else {
            serde_json::from_slice(body)
                .map_err(|e| ApiError::BadRequest(format!("invalid DeleteOptions: {e}")))?
        };
        let mut causes = Vec::new();
        let grace_period_seconds = match params.get("gracePeriodSeconds") {
            Some(v) => Some(v.parse::<i64>().map_err(|_| {
                ApiError::BadRequest(format!(
                    "invalid value for gracePeriodSeconds: \"{v}\": must be an integer"
                ))
            })?),
            None => from_body.grace_period_seconds,
        };
        let policy = params
            .get("propagationPolicy")
            .cloned()
            .or(from_body.propagation_policy);
        let orphan = params
            .get("orphanDependents")
            .map(|v| v == "true")
            .or(from_body.orphan_dependents);
        if policy.is_some() && orphan.is_some() {
            causes.push(Cause::invalid(
                "propagationPolicy",
                &json!(policy),
                "orphanDependents and deletionPropagation cannot be both set",
            ));
        }
        let propagation = match policy.as_deref() {
            None => match orphan {
                Some(true) => Propagation::Orphan,
                _ => Propagation::Background,
            },
            Some("Background") => Propagation::Background,
            Some("Foreground") => Propagation::Foreground,
            Some("Orphan") => Propagation::Orphan,
            Some(other) => {
                causes.push(Cause::not_supported(
                    "propagationPolicy",
                    &json!(other),
                    &["Background", "Foreground", "Orphan", "nil"],
                ));
                Propagation::Background
            }
        };
        let mut dry_values: Vec<String> = params.get("dryRun").cloned().into_iter().collect();
        dry_values.extend(from_body.dry_run.unwrap_or_default());
        let dry_run = dry_run(&dry_values, &mut causes);
        if !causes.is_empty() {
            return Err(invalid_options("DeleteOptions", causes));
        }
        let preconditions = from_body.preconditions.unwrap_or_default();
        Ok(Self {
            grace_period_seconds,
            propagation,
            uid: preconditions.uid,
            resource_version: preconditions.resource_version,
            dry_run,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Params {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect()
    }

    #[test]
    fn api_options_write_and_delete_parse() {
        let o = WriteOptions::parse(
            &params(&[("dryRun", "All"), ("fieldValidation", "Strict")]),
            "CreateOptions",
        )
        .expect("valid");
        assert!(o.dry_run);
        assert_eq!(o.field_validation, FieldValidation::Strict);
        let err = WriteOptions::parse(&params(&[("dryRun", "Some")]), "CreateOptions")
            .expect_err("unsupported dryRun");
        assert!(matches!(err, ApiError::Invalid { ref kind, .. } if kind == "CreateOptions"));

        let d = DeleteOptions::parse(
            &params(&[("gracePeriodSeconds", "0")]),
            br#"{"kind":"DeleteOptions","apiVersion":"v1","propagationPolicy":"Foreground","gracePeriodSeconds":30,"preconditions":{"uid":"u1"}}"#,
        )
        .expect("valid");
        assert_eq!(d.grace_period_seconds, Some(0));
        assert_eq!(d.propagation, Propagation::Foreground);
        assert_eq!(d.uid.as_deref(), Some("u1"));
        assert!(DeleteOptions::parse(&params(&[("propagationPolicy", "Later")]), b"").is_err());
        assert_eq!(
            DeleteOptions::parse(&Params::new(), br#"{"orphanDependents":true}"#)
                .expect("valid")
                .propagation,
            Propagation::Orphan
        );
    }
}
