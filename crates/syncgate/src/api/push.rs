//! The push registration API: a device (with its user's JWT) or a backend (API key, naming
//! the user with `user_id`) registers, lists and removes push addresses.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{Extensions, HeaderMap};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa::{IntoParams, ToSchema};

use super::error::ApiResult;
use super::extract::{JsonBody, OfflineCaller, Query};
use crate::error::Error;
use crate::node::Node;
use crate::push::{Provider, Registration, Subscription, MAX_ADDRESS_BYTES};

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterBody {
    /// The device (the same client id it connects with).
    pub client_id: String,
    pub provider: Provider,
    /// FCM registration token or APNs device token (hex).
    pub token: Option<String>,
    /// Web Push: the browser's `PushSubscription.toJSON()`.
    pub subscription: Option<Subscription>,
    /// With an API key: the user the device belongs to (read before the body is parsed).
    #[allow(dead_code)]
    pub user_id: Option<String>,
}

#[derive(Deserialize, IntoParams)]
pub struct UserQuery {
    /// With an API key: the user.
    pub user_id: Option<String>,
}

fn public(r: &Registration) -> Value {
    json!({
        "client_id": r.client_id,
        "provider": r.provider,
        "token": r.token,
        "subscription": r.subscription.as_ref().map(|s| json!({"endpoint": s.endpoint})),
        "updated_at": r.updated_at,
    })
}

#[utoipa::path(post, path = "/api/v1/push/devices", tag = "push", request_body = RegisterBody,
    responses((status = 200, description = "{\"ok\":true,\"client_id\",\"provider\",\"replaced\":[client ids dropped to stay within push.max_devices_per_user]}", body = super::schemas::RegisteredAnswer),
        (status = 400), (status = 401), (status = 403), (status = 429), (status = 503)))]
pub async fn register(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    ext: Extensions,
    Query(q): Query<UserQuery>,
    body: JsonBody<Value>,
) -> ApiResult<Json<Value>> {
    let named = body.value.get("user_id").and_then(Value::as_str).map(str::to_string).or(q.user_id);
    let caller = OfflineCaller::authenticate(&node, &headers, &ext, named)?;
    let b: RegisterBody =
        serde_json::from_value(body.value).map_err(|e| Error::invalid(format!("invalid JSON body: {e}")))?;
    node.check_name("client_id", &b.client_id)?;
    caller.check_client(&b.client_id)?;
    if !node.push.has_provider(b.provider) {
        return Err(Error::invalid(format!(
            "push provider {} is not configured on this server (push.providers)",
            b.provider.as_str()
        ))
        .into());
    }
    let reg = Registration {
        client_id: b.client_id,
        provider: b.provider,
        token: b.token,
        subscription: b.subscription,
        updated_at: crate::node::now_ms(),
    };
    reg.validate(MAX_ADDRESS_BYTES, node.push.allow_hosts())?;
    let max = node.push.cfg.max_devices_per_user;
    let replaced = node.push.devices.put(&caller.user, reg.clone(), max).await?;
    node.push.metrics.replaced.inc_by(replaced.len() as u64);
    Ok(Json(json!({"ok": true, "client_id": reg.client_id, "provider": reg.provider, "replaced": replaced})))
}

#[utoipa::path(get, path = "/api/v1/push/devices", tag = "push", params(UserQuery),
    responses((status = 200, description = "{\"devices\":[{\"client_id\",\"provider\",\"token\",\"subscription\":{\"endpoint\"},\"updated_at\"}]}", body = super::schemas::DevicesAnswer),
        (status = 400), (status = 401), (status = 403), (status = 429)))]
pub async fn list(State(node): State<Arc<Node>>, caller: OfflineCaller) -> ApiResult<Json<Value>> {
    let regs = node.push.devices.list(&caller.user).await?;
    let regs: Vec<Value> = regs.iter().filter(|r| caller.check_client(&r.client_id).is_ok()).map(public).collect();
    Ok(Json(json!({"devices": regs})))
}

#[utoipa::path(delete, path = "/api/v1/push/devices/{client_id}", tag = "push",
    params(("client_id" = String, Path), UserQuery),
    responses((status = 200, description = "{\"ok\":true}", body = super::schemas::OkAnswer), (status = 401), (status = 403), (status = 404)))]
pub async fn unregister(
    State(node): State<Arc<Node>>,
    caller: OfflineCaller,
    Path(client_id): Path<String>,
) -> ApiResult<Json<Value>> {
    node.check_name("client_id", &client_id)?;
    caller.check_client(&client_id)?;
    if !node.push.devices.remove(&caller.user, &client_id).await? {
        return Err(Error::not_found(format!("no push registration for client_id {client_id:?}")).into());
    }
    Ok(Json(json!({"ok": true})))
}
