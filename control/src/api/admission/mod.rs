//! Admission plugins that are not one kind's own rules, as kube-apiserver's
//! `--enable-admission-plugins` chain them: each mutating plugin sees a create or update after
//! defaulting and before validation, and says which resources it handles. A kind's own
//! admission (allocations) stays in its strategy.

pub mod serviceaccount;

use serde_json::Value;

use super::{ApiState, error::ApiError};
use crate::{registry::ResourceInfo, store::Store};

/// Runs the mutating plugins on `obj` (`old` on updates).
pub async fn mutate<S: Store>(
    state: &ApiState<S>,
    info: &ResourceInfo,
    obj: &mut Value,
    old: Option<&Value>,
) -> Result<(), ApiError> {
    if serviceaccount::handles(info) && old.is_none() {
        serviceaccount::admit_create(state, obj).await?;
    }
    Ok(())
}
