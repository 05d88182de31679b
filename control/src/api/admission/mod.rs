//! Admission plugins that are not one kind's own rules, as kube-apiserver's
//! `--enable-admission-plugins` chain them: each mutating plugin sees a create or update after
//! defaulting and before validation, and says which resources it handles. A kind's own
//! admission (allocations) stays in its strategy.

pub mod noderestriction;
pub mod serviceaccount;

use serde_json::Value;

use super::{ApiState, UserInfo, error::ApiError};
use crate::{registry::ResourceInfo, store::Store};

/// Runs the plugins on `obj` (`old` on updates) written by `user` (`None`: the server).
pub async fn mutate<S: Store>(
    state: &ApiState<S>,
    user: Option<&UserInfo>,
    info: &ResourceInfo,
    obj: &mut Value,
    old: Option<&Value>,
) -> Result<(), ApiError> {
    if serviceaccount::handles(info) && old.is_none() {
        serviceaccount::admit_create(state, obj).await?;
    }
    if let Some(node) = user.and_then(crate::api::authz::node::node_of) {
        noderestriction::admit(node, info, obj)?;
    }
    Ok(())
}
