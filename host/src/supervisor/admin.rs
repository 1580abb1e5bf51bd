//! The admin endpoint (`--admin ADDR`): health, readiness, workers,
//! metrics and drain, for operators, load balancers and Prometheus.
//!
//! | request | answer |
//! |---|---|
//! | `GET /health` | 200 `ok`, or 503 with the reason once the crash-loop breaker tripped |
//! | `GET /ready` | 200 when serving with a ready worker and not draining, else 503 |
//! | `GET /workers` | JSON array of [`WorkerStatus`](super::WorkerStatus) |
//! | `GET /metrics` | Prometheus text format ([`crate::metrics`]) |
//! | `POST /drain` | 202; stop accepting, finish in-flight work, exit 0 |
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
            let response = route(&supervisor, request.method(), request.uri().path());
            async move { Ok::<_, std::convert::Infallible>(response) }
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
        "/health" | "/ready" | "/workers" | "/metrics" => Method::GET,
        "/drain" => Method::POST,
        _ => return text(StatusCode::NOT_FOUND, format!("no admin resource {path}\n")),
    };
    if method != allowed {
        let mut response = text(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{path} takes {allowed}\n"),
        );
        response.headers_mut().insert(
            header::ALLOW,
            header::HeaderValue::from_str(allowed.as_str()).expect("a method is a header value"),
        );
        return response;
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
