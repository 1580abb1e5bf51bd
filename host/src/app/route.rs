//! HTTP routes of a function app and the router that picks a function for
//! a request path.
//!
//! A route is an exact path (`/slow`) or a prefix wildcard
//! (`/api/orders/...`, which matches `/api/orders` and everything below
//! it; `/...` matches every path). Prefixes match whole segments:
//! `/api/...` matches `/api/x` but not `/apix`. Two routes that could both
//! match one path overlap, and an app with overlapping routes does not
//! start, so the router never has to choose between two functions.

use std::fmt;

/// Longest route accepted, in bytes.
pub const MAX_ROUTE_LEN: usize = 1024;

/// One function's HTTP route.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Route {
    /// Exactly this path.
    Exact(String),
    /// This path and everything below it; `""` is every path.
    Prefix(String),
}

impl Route {
    /// The route that takes every path: one component served alone.
    pub fn everything() -> Self {
        Self::Prefix(String::new())
    }

    /// Parses `/exact/path` or `/prefix/...`.
    pub fn parse(text: &str) -> Result<Self, String> {
        if !text.starts_with('/') {
            return Err(format!("`{text}` is not a route (it must start with /)"));
        }
        if text.len() > MAX_ROUTE_LEN {
            return Err(format!("the route is longer than {MAX_ROUTE_LEN} bytes"));
        }
        if let Some(bad) = text
            .chars()
            .find(|c| matches!(c, '?' | '#' | '*' | '%') || c.is_whitespace() || c.is_control())
        {
            return Err(format!(
                "`{text}` is not a route (`{}` is not allowed; a prefix ends in /...)",
                bad.escape_default()
            ));
        }
        let (base, prefix) = match text.strip_suffix("/...") {
            Some(base) => (base, true),
            None => (text, false),
        };
        if base.contains("...") {
            return Err(format!(
                "`{text}` is not a route (`...` may only end it, as /...)"
            ));
        }
        if base.contains("//") || (base.len() > 1 && base.ends_with('/')) {
            return Err(format!(
                "`{text}` is not a route (empty segment; write /a/b or /a/b/...)"
            ));
        }
        Ok(if prefix {
            Self::Prefix(base.to_string())
        } else {
            Self::Exact(base.to_string())
        })
    }

    /// Whether a request for `path` goes to this route.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            Self::Exact(exact) => path == exact,
            Self::Prefix(base) => within(base, path),
        }
    }

    /// Whether some path would match both routes.
    pub fn overlaps(&self, other: &Route) -> bool {
        match (self, other) {
            (Self::Exact(a), Self::Exact(b)) => a == b,
            (Self::Exact(exact), prefix @ Self::Prefix(_))
            | (prefix @ Self::Prefix(_), Self::Exact(exact)) => prefix.matches(exact),
            (Self::Prefix(a), Self::Prefix(b)) => within(a, b) || within(b, a),
        }
    }
}

/// Whether `path` is `base` or lies below it, segment-wise.
fn within(base: &str, path: &str) -> bool {
    base.is_empty()
        || path
            .strip_prefix(base)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact(path) => f.write_str(path),
            Self::Prefix(base) => write!(f, "{base}/..."),
        }
    }
}

/// Picks the function whose route matches a path. Exact routes are looked
/// up by hash, prefixes in order; routes never overlap (checked by
/// [`Router::new`]), so at most one matches.
#[derive(Clone, Debug, Default)]
pub struct Router {
    exact: std::collections::HashMap<String, usize>,
    prefixes: Vec<(String, usize)>,
}

/// Two functions whose routes overlap.
#[derive(Debug, PartialEq, Eq)]
pub struct Overlap {
    /// Index of the function listed first.
    pub first: usize,
    /// Index of the one listed later.
    pub second: usize,
}

impl Router {
    /// A router over `(route, function index)` pairs; fails on the first
    /// two routes that overlap.
    pub fn new(routes: &[(Route, usize)]) -> Result<Self, Overlap> {
        for (later, (route, second)) in routes.iter().enumerate() {
            if let Some((_, first)) = routes[..later].iter().find(|(r, _)| r.overlaps(route)) {
                return Err(Overlap {
                    first: *first,
                    second: *second,
                });
            }
        }
        let mut router = Self::default();
        for (route, index) in routes {
            match route {
                Route::Exact(path) => {
                    router.exact.insert(path.clone(), *index);
                }
                Route::Prefix(base) => router.prefixes.push((base.clone(), *index)),
            }
        }
        Ok(router)
    }

    /// The function for a request to `path`, if any.
    pub fn pick(&self, path: &str) -> Option<usize> {
        if let Some(&index) = self.exact.get(path) {
            return Some(index);
        }
        self.prefixes
            .iter()
            .find(|(base, _)| within(base, path))
            .map(|&(_, index)| index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(text: &str) -> Route {
        Route::parse(text).unwrap()
    }

    #[test]
    fn exact_and_prefix_routes_match_whole_segments() {
        assert!(route("/slow").matches("/slow"));
        assert!(!route("/slow").matches("/slow/x"));
        let orders = route("/api/orders/...");
        assert!(orders.matches("/api/orders"));
        assert!(orders.matches("/api/orders/17"));
        assert!(!orders.matches("/api/ordersx"));
        assert!(!orders.matches("/api"));
        assert!(route("/...").matches("/anything/at/all"));
        assert!(route("/...").matches("/"));
        assert_eq!(route("/api/orders/...").to_string(), "/api/orders/...");
        assert_eq!(route("/...").to_string(), "/...");
    }

    #[test]
    fn bad_routes_are_refused_with_a_reason() {
        for bad in [
            "hello", "/a?b", "/a/*", "/a//b", "/a/", "/a.../b", "/a/.../b", "/a b",
        ] {
            assert!(Route::parse(bad).is_err(), "{bad} was accepted");
        }
        assert!(Route::parse("/").is_ok());
    }

    #[test]
    fn overlaps_are_found_in_either_order() {
        assert!(route("/a").overlaps(&route("/a")));
        assert!(!route("/a").overlaps(&route("/b")));
        assert!(route("/a/...").overlaps(&route("/a/b")));
        assert!(route("/a/b").overlaps(&route("/a/...")));
        assert!(route("/a/...").overlaps(&route("/a/b/...")));
        assert!(route("/...").overlaps(&route("/x")));
        assert!(!route("/a/...").overlaps(&route("/ab/...")));
        assert!(!route("/a/...").overlaps(&route("/ab")));
    }

    #[test]
    fn the_router_picks_the_one_matching_function() {
        let router = Router::new(&[
            (route("/hello/..."), 0),
            (route("/slow"), 1),
            (route("/api/orders/..."), 2),
        ])
        .unwrap();
        assert_eq!(router.pick("/hello"), Some(0));
        assert_eq!(router.pick("/hello/world"), Some(0));
        assert_eq!(router.pick("/slow"), Some(1));
        assert_eq!(router.pick("/slow/x"), None);
        assert_eq!(router.pick("/api/orders/9"), Some(2));
        assert_eq!(router.pick("/"), None);
        assert_eq!(
            Router::new(&[(route("/a/..."), 0), (route("/b"), 1), (route("/a/x"), 2)]).unwrap_err(),
            Overlap {
                first: 0,
                second: 2
            }
        );
    }
}
