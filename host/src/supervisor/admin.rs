//! The admin endpoint (`--admin ADDR`): health, readiness, workers,
//! functions, metrics, redeploy and drain, for operators, load balancers and Prometheus.
//!
//! | request | answer |
//! |---|---|
//! | `GET /health` | 200 `ok`, or 503 with the reason once the crash-loop breaker tripped |
//! | `GET /ready` | 200 when serving with a ready worker and not draining, else 503 |
//! | `GET /workers` | JSON array of [`WorkerStatus`](super::WorkerStatus) |
//! | `GET /functions` | JSON array of [`FunctionStatus`](super::FunctionStatus): each function's version, route, lane, settings and counts |
//! | `GET /metrics` | Prometheus text format ([`crate::metrics`]) |
//! | `POST /reload` | redeploy: 200 `reloaded: app version N`, or 422 with why the running version stays |
//! | `POST /drain` | 202; stop accepting, finish in-flight work, exit 0 |
//! | `POST /queues/{q}/messages` | 201 with the new message's id; the request body is the message |
//! | `GET /queues/{q}` | JSON: length, oldest_age_seconds, in_flight, poison |
//!
//! `{q}` is the bound queue or another queue in the same store (its
//! `-poison` queue, say); without `--queue` these answer 404.
//!
//! Bind it to loopback or a private network: it has no authentication.

use super::Supervisor;
use bytes::Bytes;
use http::{Method, Response, StatusCode, header};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use tokio::net::TcpListener;

/// Serves the admin endpoint on `listener` for as long as the host runs.
pub async fn serve(supervisor: Arc<Supervisor>, listener: TcpListener) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                tracing::warn!("admin endpoint: accept failed: {error}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let supervisor = supervisor.clone();
        let service = hyper::service::service_fn(move |request| {
            let supervisor = supervisor.clone();
            async move {
                let response = if request.uri().path().starts_with("/queues/") {
                    queue_route(&supervisor, request).await
                } else if request.uri().path() == "/reload" {
                    reload_route(&supervisor, request.method()).await
                } else {
                    // What the workers counted on handed connections first.
                    supervisor.flush_reports().await;
                    route(&supervisor, request.method(), request.uri().path())
                };
                Ok::<_, std::convert::Infallible>(response)
            }
        });
        tokio::spawn(async move {
            if let Err(error) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!("admin connection ended: {error}");
            }
        });
    }
}

fn route(supervisor: &Supervisor, method: &Method, path: &str) -> Response<Full<Bytes>> {
    let allowed = match path {
        "/health" | "/ready" | "/workers" | "/functions" | "/metrics" => Method::GET,
        "/drain" => Method::POST,
        _ => return text(StatusCode::NOT_FOUND, format!("no admin resource {path}\n")),
    };
    if *method != allowed {
        return method_not_allowed(path, &allowed);
    }
    match path {
        "/health" => match supervisor.unhealthy_reason() {
            None => text(StatusCode::OK, "ok\n".to_string()),
            Some(reason) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")),
        },
        "/ready" => {
            if supervisor.is_ready() {
                text(StatusCode::OK, "ready\n".to_string())
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not ready (starting, draining or no worker)\n".to_string(),
                )
            }
        }
        "/workers" => {
            let body = serde_json::to_vec_pretty(&supervisor.worker_status())
                .expect("worker rows serialize");
            with_type(
                Response::new(Full::new(Bytes::from(body))),
                "application/json",
            )
        }
        "/functions" => {
            let body = serde_json::to_vec_pretty(&supervisor.function_status())
                .expect("function rows serialize");
            with_type(
                Response::new(Full::new(Bytes::from(body))),
                "application/json",
            )
        }
        "/metrics" => with_type(
            Response::new(Full::new(Bytes::from(supervisor.metrics_text()))),
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ),
        _ => {
            supervisor.request_drain();
            text(StatusCode::ACCEPTED, "draining\n".to_string())
        }
    }
}

/// `POST /reload`: redeploys; 200 with the new app version, or 422 with
/// the one line saying why the running version stays.
async fn reload_route(supervisor: &Arc<Supervisor>, method: &Method) -> Response<Full<Bytes>> {
    if *method != Method::POST {
        return method_not_allowed("/reload", &Method::POST);
    }
    match supervisor.reload().await {
        Ok(version) => text(StatusCode::OK, format!("reloaded: app version {version}\n")),
        Err(message) => text(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("not reloaded: {message}\n"),
        ),
    }
}

/// Largest message accepted on `POST /queues/{q}/messages`.
const MAX_MESSAGE_BYTES: usize = 1 << 20;

async fn queue_route(
    supervisor: &Supervisor,
    request: http::Request<hyper::body::Incoming>,
) -> Response<Full<Bytes>> {
    use http_body_util::BodyExt;
    let path = request.uri().path().to_string();
    let Some(queue) = supervisor.queue() else {
        return text(
            StatusCode::NOT_FOUND,
            "this host has no queue trigger (--queue)\n".to_string(),
        );
    };
    let rest = &path["/queues/".len()..];
    let (name, messages) = match rest.strip_suffix("/messages") {
        Some(name) => (name, true),
        None => (rest, false),
    };
    if crate::queue::QueueSpec::parse(name).is_err() || name.contains('/') {
        return text(StatusCode::NOT_FOUND, format!("no admin resource {path}\n"));
    }
    let queue = queue.sibling(name);
    let allowed = if messages { Method::POST } else { Method::GET };
    if *request.method() != allowed {
        return method_not_allowed(&path, &allowed);
    }
    if !messages {
        return match queue.stats().await {
            Ok(stats) => with_type(
                Response::new(Full::new(Bytes::from(stats.to_json().to_string()))),
                "application/json",
            ),
            Err(error) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{error}\n")),
        };
    }
    let limited = http_body_util::Limited::new(request.into_body(), MAX_MESSAGE_BYTES);
    let body = match limited.collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => {
            return text(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("a message may have at most {MAX_MESSAGE_BYTES} bytes\n"),
            );
        }
    };
    match queue.send(body, Vec::new()).await {
        Ok(id) => {
            let mut response = with_type(
                Response::new(Full::new(Bytes::from(
                    serde_json::json!({ "id": id }).to_string(),
                ))),
                "application/json",
            );
            *response.status_mut() = StatusCode::CREATED;
            response
        }
        Err(error) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{error}\n")),
    }
}

/// 405 with `Allow`, for `path`, which takes only `allowed`.
fn method_not_allowed(path: &str, allowed: &Method) -> Response<Full<Bytes>> {
    let mut response = text(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{path} takes {allowed}\n"),
    );
    response.headers_mut().insert(
        header::ALLOW,
        header::HeaderValue::from_str(allowed.as_str()).expect("a method is a header value"),
    );
    response
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = with_type(
        Response::new(Full::new(Bytes::from(body))),
        "text/plain; charset=utf-8",
    );
    *response.status_mut() = status;
    response
}

fn with_type(
    mut response: Response<Full<Bytes>>,
    content_type: &'static str,
) -> Response<Full<Bytes>> {
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}
