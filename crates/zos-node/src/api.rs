//! The HTTP/JSON API (see `zos_types::api` for the table of endpoints). Handlers check who
//! calls, then hand the work to the engine on a blocking thread.

use crate::engine::{Engine, EngineError as ApiError};
use crate::streams::{ActiveWriters, StreamSlots};
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use zos_types::api::ErrorBody;
use zos_types::{Deployment, PublicKey, RequestAuth};

/// How far a signed request's clock may be from the node's.
const MAX_SKEW_SECS: u64 = 60;

/// Request signatures seen lately, with their timestamps.
#[derive(Default)]
struct Seen {
    signatures: HashMap<[u8; 64], u64>,
    /// The second of the last pruning.
    pruned_at: u64,
}

/// What the handlers share.
#[derive(Clone)]
pub struct Api {
    engine: Arc<Engine>,
    /// Becomes true when the node stops: streams end then.
    stopping: watch::Receiver<bool>,
    /// Signatures of requests seen within the skew window: a request is good once.
    seen: Arc<Mutex<Seen>>,
    /// Each owner's open streams, under the config's cap.
    streams: Arc<StreamSlots>,
    /// Whether followed logs' VMs still run, asked once for all their followers.
    writers: Arc<ActiveWriters>,
}

/// The one place engine errors become HTTP statuses.
impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            ApiError::Invalid(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::NoCapacity(_) | ApiError::OverLimit(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Internal(e) => {
                tracing::error!(error = %format!("{e:#}"), "internal error");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        (
            status,
            Json(ErrorBody {
                error: self.to_string(),
            }),
        )
            .into_response()
    }
}

/// The router over `engine`; each owner may hold `max_streams_per_owner` streams open.
pub fn router(
    engine: Arc<Engine>,
    stopping: watch::Receiver<bool>,
    max_streams_per_owner: usize,
) -> Router {
    let api = Api {
        engine,
        stopping,
        seen: Arc::default(),
        streams: StreamSlots::new(max_streams_per_owner),
        writers: Arc::default(),
    };
    Router::new()
        .route("/v1/node", get(node_info))
        .route("/v1/node/id", get(node_identity))
        .route("/v1/deployments", get(list).post(deploy))
        .route(
            "/v1/deployments/{name}",
            get(get_one).put(update).delete(remove),
        )
        .route("/v1/deployments/{name}/logs/{workload}", get(logs))
        .route(
            "/v1/deployments/{name}/networks/{network}/wireguard",
            get(wireguard_end),
        )
        .route(
            "/v1/deployments/{name}/exec/{workload}",
            axum::routing::post(exec),
        )
        .route(
            "/v1/deployments/{name}/copy/{workload}",
            axum::routing::post(copy),
        )
        .route("/v1/events", get(events))
        .with_state(api)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Api {
    /// The caller's key, from a signed, fresh, never-seen request.
    fn caller(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<PublicKey, ApiError> {
        let header = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| ApiError::Unauthorized("this request is not signed: send an Authorization: zos key=…,node=…,ts=…,nonce=…,sig=… header (the zos CLI does)".into()))?;
        let auth =
            RequestAuth::from_header(header).map_err(|e| ApiError::Unauthorized(e.to_string()))?;
        let path = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
        let now = unix_now();
        auth.verify(
            &self.engine.node_id(),
            method.as_str(),
            path,
            body,
            now,
            MAX_SKEW_SECS,
        )
        .map_err(|e| ApiError::Unauthorized(e.to_string()))?;
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        // Expired signatures go once a second, not on every request: at a thousand
        // requests a second the map holds a couple of minutes of them.
        if seen.pruned_at != now {
            seen.pruned_at = now;
            seen.signatures
                .retain(|_, ts| ts.abs_diff(now) <= 2 * MAX_SKEW_SECS);
        }
        if seen
            .signatures
            .insert(auth.signature.0, auth.timestamp)
            .is_some()
        {
            return Err(ApiError::Unauthorized(
                "this signed request was already used: sign each request anew".into(),
            ));
        }
        drop(seen);
        self.engine.throttle(&auth.key)?;
        Ok(auth.key)
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::from(anyhow::anyhow!("a worker failed: {e}")))?
}

fn parse_deployment(body: &[u8]) -> Result<Deployment, ApiError> {
    let text = std::str::from_utf8(body)
        .map_err(|_| ApiError::Invalid("the body is not UTF-8 JSON".into()))?;
    Deployment::from_json_str(text).map_err(|e| ApiError::Invalid(format!("deployment: {e}")))
}

/// Unsigned: a client needs the node's key before it can sign anything for it.
async fn node_identity(State(api): State<Api>) -> Json<zos_types::api::NodeIdentity> {
    Json(zos_types::api::NodeIdentity {
        node_id: api.engine.node_id(),
        version: env!("CARGO_PKG_VERSION").to_string(),
    })
}

async fn node_info(
    State(api): State<Api>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Json<zos_types::api::NodeInfo>, ApiError> {
    api.caller(&method, &uri, &headers, b"")?;
    Ok(Json(api.engine.info()))
}

async fn deploy(
    State(api): State<Api>,
    body: Bytes,
) -> Result<(StatusCode, Json<Deployment>), ApiError> {
    let d = parse_deployment(&body)?;
    let engine = api.engine.clone();
    let stored = blocking(move || engine.deploy(d)).await?;
    Ok((StatusCode::CREATED, Json(stored)))
}

async fn update(
    State(api): State<Api>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<Deployment>, ApiError> {
    let d = parse_deployment(&body)?;
    let engine = api.engine.clone();
    Ok(Json(blocking(move || engine.update(&name, d)).await?))
}

async fn list(
    State(api): State<Api>,
    Query(query): Query<HashMap<String, String>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Json<Vec<Deployment>>, ApiError> {
    let owner = api.caller(&method, &uri, &headers, b"")?;
    let all = query.get("all").is_some_and(|v| v == "true");
    let engine = api.engine.clone();
    Ok(Json(blocking(move || engine.list(&owner, all)).await?))
}

async fn get_one(
    State(api): State<Api>,
    Path(name): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Json<Deployment>, ApiError> {
    let caller = api.caller(&method, &uri, &headers, b"")?;
    let owner = owner_of(&query)?;
    let engine = api.engine.clone();
    let d = blocking(move || engine.read(&caller, owner.as_ref(), &name)).await?;
    Ok(Json(d))
}

/// The `owner` a co-owner may name (`?owner=KEY`), when several of its deployments share
/// a name.
fn owner_of(query: &HashMap<String, String>) -> Result<Option<PublicKey>, ApiError> {
    query
        .get("owner")
        .map(|k| {
            k.parse()
                .map_err(|e| ApiError::Invalid(format!("owner {k:?}: {e}")))
        })
        .transpose()
}

async fn remove(
    State(api): State<Api>,
    Path(name): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Json<Deployment>, ApiError> {
    one(api, name, method, uri, headers, |e, owner, name| {
        e.delete(owner, name)
    })
    .await
}

/// A signed request about one of the caller's deployments, answered with it.
async fn one(
    api: Api,
    name: String,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    f: fn(&Engine, &PublicKey, &str) -> Result<Deployment, ApiError>,
) -> Result<Json<Deployment>, ApiError> {
    let owner = api.caller(&method, &uri, &headers, b"")?;
    let engine = api.engine.clone();
    Ok(Json(blocking(move || f(&engine, &owner, &name)).await?))
}

/// This node's end of the caller's network's WireGuard link, whether or not it is deployed
/// yet: what its peers need to be written.
async fn wireguard_end(
    State(api): State<Api>,
    Path((name, network)): Path<(String, String)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Json<zos_types::WireGuardEnd>, ApiError> {
    let owner = api.caller(&method, &uri, &headers, b"")?;
    Ok(Json(api.engine.wireguard_end(&owner, &name, &network)?))
}

async fn logs(
    State(api): State<Api>,
    Path((name, workload)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let caller = api.caller(&method, &uri, &headers, b"")?;
    let follow = query.get("follow").is_some_and(|v| v == "true" || v == "1");
    let owner = owner_of(&query)?;
    // Only a followed log is a stream: a plain one ends once read. The reader holds it.
    let slot = match follow.then(|| api.streams.take(&caller)).transpose() {
        Ok(slot) => slot,
        Err(why) => return Ok(too_many(why)),
    };
    let engine = api.engine.clone();
    let log = blocking(move || {
        let owner = engine.resolve(&caller, owner.as_ref(), &name)?;
        engine.console(&owner, &name, &workload)
    })
    .await?;
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(16);
    tokio::spawn(crate::streams::follow_log(
        api.engine.clone(),
        api.writers.clone(),
        log,
        follow,
        tx,
        api.stopping.clone(),
        slot,
    ));
    Ok(streamed(rx, "text/plain; charset=utf-8"))
}

async fn exec(
    State(api): State<Api>,
    Path((name, workload)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    request: axum::extract::Request,
) -> Result<Response, ApiError> {
    open_session(api, name, workload, query, request, |body| {
        let r = serde_json::from_slice(body)
            .map_err(|e| ApiError::Invalid(format!("exec request: {e}")))?;
        crate::sessions::exec_open(r).map_err(ApiError::Invalid)
    })
    .await
}

async fn copy(
    State(api): State<Api>,
    Path((name, workload)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    request: axum::extract::Request,
) -> Result<Response, ApiError> {
    open_session(api, name, workload, query, request, |body| {
        serde_json::from_slice(body)
            .map(crate::sessions::copy_open)
            .map_err(|e| ApiError::Invalid(format!("copy request: {e}")))
    })
    .await
}

/// Checks a session request (upgrade asked, signed by the caller, under the stream cap),
/// opens the guest session `open` makes of its body, and relays it on the upgraded
/// connection once the 101 answer is out.
async fn open_session(
    api: Api,
    name: String,
    workload: String,
    query: HashMap<String, String>,
    mut request: axum::extract::Request,
    open: impl FnOnce(&[u8]) -> Result<zos_init::Open, ApiError>,
) -> Result<Response, ApiError> {
    crate::sessions::asks_upgrade(request.headers()).map_err(ApiError::Invalid)?;
    let upgrade = hyper::upgrade::on(&mut request);
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, 64 * 1024)
        .await
        .map_err(|e| ApiError::Invalid(format!("reading the request: {e}")))?;
    let caller = api.caller(&parts.method, &parts.uri, &parts.headers, &body)?;
    let owner = owner_of(&query)?;
    let open = open(&body)?;
    let slot = match api.streams.take(&caller) {
        Ok(slot) => slot,
        Err(why) => return Ok(too_many(why)),
    };
    let engine = api.engine.clone();
    let session = blocking(move || {
        let owner = engine.resolve(&caller, owner.as_ref(), &name)?;
        engine.session(&owner, &name, &workload, open)
    })
    .await?;
    let stopping = api.stopping.clone();
    tokio::spawn(async move {
        // The session is dropped (its process killed) if the client never takes the 101.
        if let Ok(upgraded) = upgrade.await {
            crate::sessions::relay(upgraded, session, stopping, slot).await;
        }
    });
    Ok(crate::sessions::switching())
}

async fn events(
    State(api): State<Api>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let caller = api.caller(&method, &uri, &headers, b"")?;
    let slot = match api.streams.take(&caller) {
        Ok(slot) => slot,
        Err(why) => return Ok(too_many(why)),
    };
    let engine = api.engine.clone();
    let mut events = api.engine.subscribe();
    let mut stopping = api.stopping.clone();
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(64);
    tokio::spawn(async move {
        let _slot = slot;
        loop {
            // A client that leaves while no events come must not keep this task; a stopping
            // node ends the stream (dropping `tx` ends the body cleanly).
            let next = tokio::select! {
                next = events.recv() => next,
                () = tx.closed() => return,
                _ = stopping.wait_for(|stop| *stop) => return,
            };
            let (who, event) = match next {
                Ok(e) => e,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(_) => return,
            };
            if !engine.may_read(&caller, &who, &event.deployment) {
                continue;
            }
            let Ok(mut line) = serde_json::to_vec(&event) else {
                continue;
            };
            line.push(b'\n');
            if tx.send(Ok(Bytes::from(line))).await.is_err() {
                return;
            }
        }
    });
    Ok(streamed(rx, "application/x-ndjson"))
}

/// 429 with `why` (which names the limit).
fn too_many(why: String) -> Response {
    (
        StatusCode::TOO_MANY_REQUESTS,
        Json(ErrorBody { error: why }),
    )
        .into_response()
}

/// A response whose body is what arrives on `rx`.
fn streamed(
    rx: mpsc::Receiver<Result<Bytes, std::io::Error>>,
    content_type: &'static str,
) -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, content_type)],
        Body::from_stream(ReceiverStream::new(rx)),
    )
        .into_response()
}
