//! The app manifest, `fnhost.toml`: several functions and their settings
//! in one file.
//!
//! ```toml
//! manifest_version = 1
//!
//! [host]                 # optional: host-wide settings, and defaults
//! listen = "127.0.0.1:8080"
//! timeout = "10s"        # for every function
//!
//! [[function]]
//! name = "hello"
//! component = "hello.wasm"
//! route = "/hello/..."
//!
//! [[function]]
//! name = "orders"
//! component = "orders.wasm"
//! queue = "orders"
//! max_memory = "64MiB"
//! ```
//!
//! The keys are the long flags of `fnhost serve` with `-` written `_`, and
//! their values are read by the same parsers as the flags, so `"64MiB"` or
//! `"2s"` mean the same in both places (sizes also take a bare integer of
//! bytes, durations one of seconds). Paths are relative to the manifest's
//! folder.
//!
//! The format is strict and versioned: an unknown key, a value of the wrong
//! type or out of range, or a `manifest_version` other than 1 is an error,
//! so a typo never silently falls back to a default. Every error is one
//! line naming the file, the line and the key, in the user's own words
//! ([`ManifestError`]).
//!
//! The file is read into toml's spanned document ([`DeTable`]) and walked
//! by hand rather than deserialized with serde: every key and value keeps
//! its position, so a wrong type or a bad value is reported at its line and
//! under its key, which serde's messages cannot name.

use super::route::Overlap;
use super::{FunctionEntry, FunctionSettings, HostSettings, Route, Router, check_function_name};
use crate::config::parse::{
    format_size, parse_dir_grant, parse_duration, parse_env_pair, parse_on_off, parse_origin,
    parse_size,
};
use crate::config::{MAX_THREADS, Mode, ThreadCount};
use crate::queue::QueueSpec;
use crate::supervisor::WorkerCount;
use std::fmt;
use std::io::Read;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// The default manifest file name.
pub const MANIFEST_FILE: &str = "fnhost.toml";

/// The only `manifest_version` this host reads.
const MANIFEST_VERSION: i128 = 1;

/// Largest manifest read: 1 MiB. A real one is a few KiB; anything near
/// this is the wrong file (a component passed by mistake, say).
const MAX_MANIFEST_BYTES: u64 = 1 << 20;

/// Most messages the sync lane's queue may hold (`queue_depth`), as for
/// `--queue-depth`.
const MAX_QUEUE_DEPTH: u64 = 1_000_000;

/// Least `yield_fuel`, as for `--yield-fuel`.
const MIN_YIELD_FUEL: u64 = 1_000;

/// The keys only `[host]` takes, to point there when one is found
/// elsewhere.
const HOST_KEYS: &[&str] = &[
    "listen",
    "admin",
    "workers",
    "scale_cooldown",
    "data_dir",
    "cache_dir",
    "grace",
    "max_body",
    "header_timeout",
    "write_timeout",
    "max_component_size",
    "worker_memory",
];

/// A parsed, validated manifest.
#[derive(Clone, Debug, PartialEq)]
pub struct Manifest {
    /// The manifest file as given.
    pub path: PathBuf,
    /// The `[host]` table (all unset when there is none).
    pub host: HostSettings,
    /// The `[[function]]` tables, in the order written; at least one.
    pub functions: Vec<FunctionEntry>,
}

/// Why a manifest was refused: one line, ``FILE:LINE: key `KEY`: what is
/// wrong``, with the line and the key when they are known (e.g.
/// ``fnhost.toml:7: key `timeout`: `5x` has an unknown unit `x` (use ms, s, m or h)``).
/// The text never spans lines: control characters, say from a value
/// quoted in the message, are escaped.
#[derive(Debug, thiserror::Error)]
#[error("{}", self.render())]
pub struct ManifestError {
    /// The manifest file as given.
    path: PathBuf,
    /// 1-based line of the fault, if known.
    line: Option<usize>,
    /// The key at fault, if any.
    key: Option<String>,
    /// What is wrong.
    message: String,
}

impl ManifestError {
    fn new(path: &Path, line: Option<usize>, key: Option<&str>, message: String) -> Self {
        Self {
            path: path.to_path_buf(),
            line,
            key: key.map(str::to_string),
            message,
        }
    }

    fn render(&self) -> String {
        let mut text = self.path.display().to_string();
        if let Some(line) = self.line {
            text.push_str(&format!(":{line}"));
        }
        if let Some(key) = &self.key {
            text.push_str(&format!(": key `{key}`"));
        }
        text.push_str(": ");
        text.push_str(&self.message);
        one_line(&text)
    }
}

/// `text` with control characters (newlines above all) escaped.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// Whether a path names a manifest (ends in `.toml`) rather than a component.
pub fn is_manifest(path: &Path) -> bool {
    path.extension()
        .is_some_and(|extension| extension.eq_ignore_ascii_case("toml"))
}

/// Reads the manifest at `path` (at most 1 MiB of UTF-8) and [`parse`]s it.
pub fn load(path: &Path) -> Result<Manifest, ManifestError> {
    let fail = |line, message| ManifestError::new(path, line, None, message);
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|file| file.take(MAX_MANIFEST_BYTES + 1).read_to_end(&mut bytes))
        .map_err(|error| fail(None, format!("cannot read the manifest: {error}")))?;
    if bytes.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(fail(
            None,
            format!(
                "is larger than {}, the most a manifest may be (is it the right file?)",
                format_size(MAX_MANIFEST_BYTES)
            ),
        ));
    }
    let text = String::from_utf8(bytes).map_err(|error| {
        let valid = error.utf8_error().valid_up_to();
        let line = line_at(error.as_bytes(), valid);
        fail(Some(line), "is not UTF-8 text".to_string())
    })?;
    parse(path, &text)
}

/// Parses and validates the text of a manifest. `path` names the file in
/// messages, and relative paths in it are resolved against its folder.
/// Besides the format, it checks that every component file exists, that
/// no two functions share a name or overlapping routes, and that at most
/// one function has a queue.
pub fn parse(path: &Path, text: &str) -> Result<Manifest, ManifestError> {
    let doc = Doc {
        path,
        text,
        base: path.parent().unwrap_or(Path::new("")).to_path_buf(),
    };
    let root = DeTable::parse(text).map_err(|error| doc.toml_error(&error))?;
    let entries = in_order(root.get_ref());
    // The version first: a manifest for another version may well have keys
    // this one does not know, and the version is the better message.
    match entries.iter().find(|entry| entry.key == "manifest_version") {
        None => {
            return Err(ManifestError::new(
                path,
                None,
                Some("manifest_version"),
                "is missing (write `manifest_version = 1` at the top)".to_string(),
            ));
        }
        Some(entry) => {
            let version = integer(entry.value).map_err(|bad| doc.bad(entry.key, bad))?;
            if version != MANIFEST_VERSION {
                return Err(doc.fail(
                    entry.value,
                    entry.key,
                    format!(
                        "this fnhost reads version {MANIFEST_VERSION} manifests, not version {version}"
                    ),
                ));
            }
        }
    }
    let mut host = HostSettings::default();
    let mut functions = None;
    for entry in &entries {
        match entry.key {
            "manifest_version" => {}
            "host" => host = host_settings(&doc, entry)?,
            "function" => functions = Some(entry),
            _ => return Err(doc.unknown(entry, "at the top level")),
        }
    }
    let no_function = || {
        ManifestError::new(
            path,
            None,
            Some("function"),
            "no function: add a [[function]] table with a name, a component and a route or a queue"
                .to_string(),
        )
    };
    let tables = match functions {
        None => return Err(no_function()),
        Some(entry) => match entry.value.get_ref() {
            DeValue::Array(tables) if !tables.is_empty() => tables,
            DeValue::Array(_) => return Err(no_function()),
            other => {
                return Err(doc.fail(
                    entry.value,
                    entry.key,
                    format!(
                        "is {}; functions are an array of tables, each headed [[function]]",
                        kind(other)
                    ),
                ));
            }
        },
    };
    let mut placed = Vec::with_capacity(tables.len());
    for table in tables.iter() {
        placed.push(function(&doc, table)?);
    }
    check_app(&doc, &placed)?;
    Ok(Manifest {
        path: path.to_path_buf(),
        host,
        functions: placed.into_iter().map(|placed| placed.entry).collect(),
    })
}

/// The manifest being parsed: what messages and relative paths need.
struct Doc<'a> {
    /// The file as given.
    path: &'a Path,
    /// Its text, to turn byte offsets into lines.
    text: &'a str,
    /// Its folder, which relative paths are relative to.
    base: PathBuf,
}

/// What is wrong with a value: where, and the message.
struct Bad {
    /// Byte range of the value at fault (an array's element, say).
    span: Range<usize>,
    /// What is wrong.
    message: String,
}

/// A bad `value`, for `message`.
fn bad(value: &Spanned<DeValue<'_>>, message: impl Into<String>) -> Bad {
    Bad {
        span: value.span(),
        message: message.into(),
    }
}

/// One `key = value` of a table.
struct Entry<'t, 'i> {
    key: &'t str,
    key_span: Range<usize>,
    value: &'t Spanned<DeValue<'i>>,
}

/// The entries of `table` in the order written (toml keeps them sorted by
/// key), so the first unknown key reported is the first in the file.
fn in_order<'t, 'i>(table: &'t DeTable<'i>) -> Vec<Entry<'t, 'i>> {
    let mut entries: Vec<_> = table
        .iter()
        .map(|(key, value)| Entry {
            key: key.get_ref().as_ref(),
            key_span: key.span(),
            value,
        })
        .collect();
    entries.sort_by_key(|entry| entry.key_span.start);
    entries
}

impl Doc<'_> {
    /// The 1-based line of byte `offset`.
    fn line(&self, offset: usize) -> usize {
        line_at(self.text.as_bytes(), offset)
    }

    /// `message` about `key`, at `value`'s line.
    fn fail(&self, value: &Spanned<DeValue<'_>>, key: &str, message: String) -> ManifestError {
        ManifestError::new(
            self.path,
            Some(self.line(value.span().start)),
            Some(key),
            message,
        )
    }

    /// A converter's complaint about `key`.
    fn bad(&self, key: &str, bad: Bad) -> ManifestError {
        ManifestError::new(
            self.path,
            Some(self.line(bad.span.start)),
            Some(key),
            bad.message,
        )
    }

    /// `entry`'s value through `convert`, with errors under its key.
    fn get<'t, 'i, T>(
        &self,
        entry: &Entry<'t, 'i>,
        convert: impl FnOnce(&'t Spanned<DeValue<'i>>) -> Result<T, Bad>,
    ) -> Result<T, ManifestError> {
        convert(entry.value).map_err(|bad| self.bad(entry.key, bad))
    }

    /// `entry`'s key is not one `place` takes.
    fn unknown(&self, entry: &Entry<'_, '_>, place: &str) -> ManifestError {
        let hint = if HOST_KEYS.contains(&entry.key) {
            " (it is a [host] setting)"
        } else {
            ""
        };
        ManifestError::new(
            self.path,
            Some(self.line(entry.key_span.start)),
            Some(entry.key),
            format!("unknown key {place}{hint}"),
        )
    }

    /// A syntax error, as toml's one-line message (its `Display` draws the
    /// line and a caret over several lines).
    fn toml_error(&self, error: &toml::de::Error) -> ManifestError {
        let message = error.message().trim();
        let span = error.span();
        let line = span.clone().map(|span| self.line(span.start));
        // toml's "duplicate key" does not say which; its span does.
        let key = span
            .filter(|_| message.starts_with("duplicate key"))
            .and_then(|span| self.text.get(span))
            .map(str::trim)
            .filter(|key| !key.is_empty() && !key.contains('\n'));
        ManifestError::new(self.path, line, key, format!("not valid TOML: {message}"))
    }

    /// A path from the manifest, made absolute against its folder.
    fn resolve(&self, relative: &Path) -> PathBuf {
        let joined = self.base.join(relative);
        std::path::absolute(&joined).unwrap_or(joined)
    }
}

/// The 1-based line of byte `offset` in `text`.
fn line_at(text: &[u8], offset: usize) -> usize {
    let end = offset.min(text.len());
    text[..end].iter().filter(|&&byte| byte == b'\n').count() + 1
}

/// The `[host]` table.
fn host_settings(doc: &Doc<'_>, host: &Entry<'_, '_>) -> Result<HostSettings, ManifestError> {
    let table = doc.get(host, |value| table(value, "a table ([host])"))?;
    let mut settings = HostSettings::default();
    for entry in in_order(table) {
        match entry.key {
            "listen" => settings.listen = Some(doc.get(&entry, address)?),
            "admin" => settings.admin = Some(doc.get(&entry, address)?),
            "workers" => settings.workers = Some(doc.get(&entry, workers)?),
            "scale_cooldown" => settings.scale_cooldown = Some(doc.get(&entry, duration)?),
            "data_dir" => settings.data_dir = Some(doc.get(&entry, |v| path(doc, v))?),
            "cache_dir" => settings.cache_dir = Some(doc.get(&entry, |v| path(doc, v))?),
            "grace" => settings.grace = Some(doc.get(&entry, duration)?),
            "max_body" => settings.max_body = Some(doc.get(&entry, size)?),
            "header_timeout" => settings.header_timeout = Some(doc.get(&entry, duration)?),
            "write_timeout" => settings.write_timeout = Some(doc.get(&entry, duration)?),
            "max_component_size" => settings.max_component_size = Some(doc.get(&entry, size)?),
            "worker_memory" => settings.worker_memory = Some(doc.get(&entry, size)?),
            _ => {
                if !function_setting(doc, &mut settings.functions, &entry)? {
                    return Err(doc.unknown(&entry, "in [host]"));
                }
            }
        }
    }
    Ok(settings)
}

/// A `[[function]]`, with the positions the checks across functions report.
struct Placed {
    entry: FunctionEntry,
    /// Line of its `name`.
    name_line: usize,
    /// Line of its `route` (0 when it has none).
    route_line: usize,
    /// Line of its `queue` (0 when it has none).
    queue_line: usize,
}

/// One `[[function]]` table.
fn function(doc: &Doc<'_>, value: &Spanned<DeValue<'_>>) -> Result<Placed, ManifestError> {
    let table = table(value, "a table ([[function]])").map_err(|bad| doc.bad("function", bad))?;
    let table_line = doc.line(value.span().start);
    let mut name = None;
    let mut component = None;
    let (mut route, mut route_line) = (None, 0);
    let (mut queue, mut queue_line) = (None, 0);
    let mut settings = FunctionSettings::default();
    for entry in in_order(table) {
        let line = doc.line(entry.value.span().start);
        match entry.key {
            "name" => {
                let text = doc.get(&entry, string)?;
                check_function_name(text)
                    .map_err(|message| doc.fail(entry.value, "name", message))?;
                name = Some((text, line));
            }
            "component" => component = Some(doc.get(&entry, |v| component_file(doc, v))?),
            "route" => {
                route = Some(doc.get(&entry, |v| parsed(v, Route::parse))?);
                route_line = line;
            }
            "queue" => {
                let spec = |text: &str| QueueSpec::parse(text).map_err(|e| e.to_string());
                queue = Some(doc.get(&entry, |v| parsed(v, spec))?);
                queue_line = line;
            }
            _ => {
                if !function_setting(doc, &mut settings, &entry)? {
                    return Err(doc.unknown(&entry, "in [[function]]"));
                }
            }
        }
    }
    let missing = |key: &str, what: &str| {
        ManifestError::new(
            doc.path,
            Some(table_line),
            Some(key),
            format!("is missing: every [[function]] needs {what}"),
        )
    };
    let Some((name, name_line)) = name else {
        return Err(missing("name", "a name"));
    };
    let Some(component) = component else {
        return Err(missing("component", "a component file"));
    };
    if route.is_none() && queue.is_none() {
        return Err(ManifestError::new(
            doc.path,
            Some(table_line),
            None,
            format!(
                "function `{name}` has neither a `route` nor a `queue` (give it route = \"/path\" or queue = \"NAME\")"
            ),
        ));
    }
    Ok(Placed {
        entry: FunctionEntry {
            name: name.to_string(),
            component,
            route,
            queue,
            settings,
        },
        name_line,
        route_line,
        queue_line,
    })
}

/// Sets the per-function setting `entry` names; `false` when it names none.
fn function_setting(
    doc: &Doc<'_>,
    settings: &mut FunctionSettings,
    entry: &Entry<'_, '_>,
) -> Result<bool, ManifestError> {
    match entry.key {
        "mode" => settings.mode = Some(doc.get(entry, |v| parsed(v, str::parse::<Mode>))?),
        "timeout" => settings.timeout = Some(doc.get(entry, duration)?),
        "max_memory" => settings.max_memory = Some(doc.get(entry, size)?),
        "max_fuel" => settings.max_fuel = Some(doc.get(entry, |v| bounded(v, 1, u64::MAX))?),
        "yield_fuel" => {
            settings.yield_fuel = Some(doc.get(entry, |v| bounded(v, MIN_YIELD_FUEL, u64::MAX))?);
        }
        "threads" => settings.threads = Some(doc.get(entry, threads)?),
        "queue_depth" => {
            let depth = doc.get(entry, |v| bounded(v, 1, MAX_QUEUE_DEPTH))?;
            settings.queue_depth = Some(depth as usize);
        }
        "queue_timeout" => settings.queue_timeout = Some(doc.get(entry, nonzero_duration)?),
        "instance_reuse" => settings.instance_reuse = Some(doc.get(entry, positive_u32)?),
        "max_concurrent_reuse" => {
            settings.max_concurrent_reuse = Some(doc.get(entry, positive_u32)?);
        }
        "max_guest_output" => settings.max_guest_output = Some(doc.get(entry, size)?),
        "load_shedding" => settings.load_shedding = Some(doc.get(entry, on_off)?),
        "env" => settings.env = Some(doc.get(entry, env)?),
        "dir" => {
            let grant = |text: &str| {
                parse_dir_grant(text).map(|mut grant| {
                    grant.host = doc.resolve(&grant.host);
                    grant
                })
            };
            settings.dir = Some(doc.get(entry, |v| list(v, grant))?);
        }
        "allow_outbound" => {
            settings.allow_outbound = Some(doc.get(entry, |v| list(v, parse_origin))?)
        }
        "max_concurrent" => {
            let cap = doc.get(entry, |v| bounded(v, 1, u64::MAX))?;
            settings.max_concurrent = Some(usize::try_from(cap).unwrap_or(usize::MAX));
        }
        _ => return Ok(false),
    }
    Ok(true)
}

/// The checks across functions: unique names, routes that do not overlap,
/// at most one queue.
fn check_app(doc: &Doc<'_>, functions: &[Placed]) -> Result<(), ManifestError> {
    let at = |line: usize, key: &str, message: String| {
        ManifestError::new(doc.path, Some(line), Some(key), message)
    };
    for (later, function) in functions.iter().enumerate() {
        let name = &function.entry.name;
        if let Some(first) = functions[..later].iter().find(|f| f.entry.name == *name) {
            return Err(at(
                function.name_line,
                "name",
                format!(
                    "function `{name}` is defined twice (first on line {}); names must be unique",
                    first.name_line
                ),
            ));
        }
    }
    let routes: Vec<(Route, usize)> = functions
        .iter()
        .enumerate()
        .filter_map(|(index, f)| f.entry.route.clone().map(|route| (route, index)))
        .collect();
    if let Err(Overlap { first, second }) = Router::new(&routes) {
        let (first, second) = (&functions[first], &functions[second]);
        let route = |f: &Placed| {
            f.entry
                .route
                .as_ref()
                .map(Route::to_string)
                .unwrap_or_default()
        };
        return Err(at(
            second.route_line,
            "route",
            format!(
                "`{}` of function `{}` overlaps `{}` of function `{}` (line {}): a path may match one route only",
                route(second),
                second.entry.name,
                route(first),
                first.entry.name,
                first.route_line
            ),
        ));
    }
    let mut queued = functions.iter().filter(|f| f.entry.queue.is_some());
    if let (Some(first), Some(second)) = (queued.next(), queued.next()) {
        return Err(at(
            second.queue_line,
            "queue",
            format!(
                "function `{}` has a queue, and so has function `{}` (line {}): one queue trigger per app in this version",
                second.entry.name, first.entry.name, first.queue_line
            ),
        ));
    }
    Ok(())
}

// Converters: each reads one value, and on failure says what is wrong in
// the words of the flag's own parser.

/// "a string", "an integer", ...: what the user wrote, for messages.
fn kind(value: &DeValue<'_>) -> &'static str {
    match value {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date-time",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

/// "expected X, found Y".
fn wrong_type(value: &Spanned<DeValue<'_>>, expected: &str) -> Bad {
    bad(
        value,
        format!("expected {expected}, found {}", kind(value.get_ref())),
    )
}

fn table<'t, 'i>(value: &'t Spanned<DeValue<'i>>, expected: &str) -> Result<&'t DeTable<'i>, Bad> {
    match value.get_ref() {
        DeValue::Table(table) => Ok(table),
        _ => Err(wrong_type(value, expected)),
    }
}

fn string<'t>(value: &'t Spanned<DeValue<'_>>) -> Result<&'t str, Bad> {
    match value.get_ref() {
        DeValue::String(text) => Ok(text),
        _ => Err(wrong_type(value, "a string")),
    }
}

/// A string, through a flag's parser.
fn parsed<T, E: fmt::Display>(
    value: &Spanned<DeValue<'_>>,
    parse: impl FnOnce(&str) -> Result<T, E>,
) -> Result<T, Bad> {
    parse(string(value)?).map_err(|error| bad(value, error.to_string()))
}

/// Any TOML integer (`0x`, `0o`, `0b` and `_` included).
fn integer(value: &Spanned<DeValue<'_>>) -> Result<i128, Bad> {
    match value.get_ref() {
        DeValue::Integer(integer) => i128::from_str_radix(integer.as_str(), integer.radix())
            .map_err(|_| bad(value, format!("`{integer}` is too large"))),
        _ => Err(wrong_type(value, "an integer")),
    }
}

/// An integer from `min` to `max` (`u64::MAX`: no upper bound).
fn bounded(value: &Spanned<DeValue<'_>>, min: u64, max: u64) -> Result<u64, Bad> {
    let number = integer(value)?;
    if (i128::from(min)..=i128::from(max)).contains(&number) {
        return Ok(number as u64);
    }
    let allowed = if max == u64::MAX {
        format!("at least {min}")
    } else {
        format!("from {min} to {max}")
    };
    Err(bad(
        value,
        format!("`{number}` is out of range: it must be {allowed}"),
    ))
}

fn positive_u32(value: &Spanned<DeValue<'_>>) -> Result<u32, Bad> {
    Ok(bounded(value, 1, u32::MAX.into())? as u32)
}

/// A string through `parse`, or a bare non-negative integer (as `u64`)
/// through `from_integer`; `expected` describes both for messages.
fn text_or_number<T>(
    value: &Spanned<DeValue<'_>>,
    expected: &str,
    parse: impl FnOnce(&str) -> Result<T, String>,
    from_integer: impl FnOnce(u64) -> T,
) -> Result<T, Bad> {
    match value.get_ref() {
        DeValue::String(text) => parse(text).map_err(|message| bad(value, message)),
        DeValue::Integer(_) => match u64::try_from(integer(value)?) {
            Ok(n) => Ok(from_integer(n)),
            Err(_) => Err(bad(
                value,
                format!("expected {expected}, found a negative number"),
            )),
        },
        _ => Err(wrong_type(value, expected)),
    }
}

fn size(value: &Spanned<DeValue<'_>>) -> Result<u64, Bad> {
    text_or_number(
        value,
        "a size (\"64MiB\", or an integer of bytes)",
        parse_size,
        |n| n,
    )
}

fn duration(value: &Spanned<DeValue<'_>>) -> Result<Duration, Bad> {
    text_or_number(
        value,
        "a duration (\"30s\", \"500ms\", or an integer of seconds)",
        parse_duration,
        Duration::from_secs,
    )
}

/// A duration of more than zero (a zero wait would refuse every call).
fn nonzero_duration(value: &Spanned<DeValue<'_>>) -> Result<Duration, Bad> {
    match duration(value)? {
        zero if zero.is_zero() => Err(bad(value, "must be more than zero")),
        duration => Ok(duration),
    }
}

/// `N` or `"MIN..MAX"`, as `--workers` reads it.
fn workers(value: &Spanned<DeValue<'_>>) -> Result<WorkerCount, Bad> {
    match value.get_ref() {
        DeValue::Integer(_) => {
            let count = integer(value)?.to_string();
            WorkerCount::parse(&count).map_err(|message| bad(value, message))
        }
        _ => parsed(value, WorkerCount::parse),
    }
}

/// 1 to [`MAX_THREADS`], or `"auto"`, as `--threads` reads it.
fn threads(value: &Spanned<DeValue<'_>>) -> Result<ThreadCount, Bad> {
    match value.get_ref() {
        DeValue::String(text) if text == "auto" => Ok(ThreadCount::Auto),
        DeValue::Integer(_) => Ok(ThreadCount::Fixed(
            bounded(value, 1, MAX_THREADS as u64)? as usize
        )),
        _ => Err(wrong_type(
            value,
            &format!("a thread count from 1 to {MAX_THREADS}, or \"auto\""),
        )),
    }
}

/// `"on"` or `"off"`, as the flags read them, or a boolean.
fn on_off(value: &Spanned<DeValue<'_>>) -> Result<bool, Bad> {
    match value.get_ref() {
        DeValue::Boolean(on) => Ok(*on),
        DeValue::String(_) => parsed(value, parse_on_off),
        _ => Err(wrong_type(value, "\"on\" or \"off\"")),
    }
}

fn address(value: &Spanned<DeValue<'_>>) -> Result<std::net::SocketAddr, Bad> {
    parsed(value, |text| {
        text.parse::<std::net::SocketAddr>()
            .map_err(|_| format!("`{text}` is not an address (try 127.0.0.1:8080)"))
    })
}

/// A path, relative to the manifest's folder.
fn path(doc: &Doc<'_>, value: &Spanned<DeValue<'_>>) -> Result<PathBuf, Bad> {
    match string(value)? {
        "" => Err(bad(value, "is empty (write a path)")),
        text => Ok(doc.resolve(Path::new(text))),
    }
}

/// The component: a path that must name an existing file.
fn component_file(doc: &Doc<'_>, value: &Spanned<DeValue<'_>>) -> Result<PathBuf, Bad> {
    let path = path(doc, value)?;
    match std::fs::metadata(&path) {
        Ok(metadata) if metadata.is_dir() => Err(bad(
            value,
            format!("`{}` is a directory, not a component file", path.display()),
        )),
        Ok(_) => Ok(path),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            Err(bad(value, format!("`{}` does not exist", path.display())))
        }
        Err(error) => Err(bad(value, format!("`{}`: {error}", path.display()))),
    }
}

/// An array of strings, each through `parse`; errors point at the element.
fn list<T, E: fmt::Display>(
    value: &Spanned<DeValue<'_>>,
    parse: impl Fn(&str) -> Result<T, E>,
) -> Result<Vec<T>, Bad> {
    let DeValue::Array(items) = value.get_ref() else {
        return Err(wrong_type(value, "an array of strings"));
    };
    items.iter().map(|item| parsed(item, &parse)).collect()
}

/// A table of variables: `{ NAME = "value" }`, in the order written.
fn env(value: &Spanned<DeValue<'_>>) -> Result<Vec<(String, String)>, Bad> {
    let vars = table(value, "a table of strings ({ NAME = \"value\" })")?;
    in_order(vars)
        .into_iter()
        .map(|var| {
            let text = string(var.value)?;
            // The same rules as `--env NAME=VALUE`: whatever comes before
            // the first `=` there is the name, so a name has no `=`.
            match parse_env_pair(&format!("{}={text}", var.key)) {
                Ok((name, value)) if name == var.key => Ok((name, value)),
                Ok(_) => Err(Bad {
                    span: var.key_span,
                    message: format!("`{}` is not a variable name (it has a `=`)", var.key),
                }),
                Err(message) => Err(Bad {
                    span: var.key_span,
                    message,
                }),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A fresh folder holding empty component files `hello.wasm`,
    /// `sleep.wasm`, `a.wasm`, `b.wasm`.
    fn folder() -> PathBuf {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "fnhost-manifest-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for file in ["hello.wasm", "sleep.wasm", "a.wasm", "b.wasm"] {
            std::fs::write(dir.join(file), b"").unwrap();
        }
        dir
    }

    fn parse_in(dir: &Path, text: &str) -> Result<Manifest, ManifestError> {
        parse(&dir.join(MANIFEST_FILE), text)
    }

    /// The one-line message for `text`, which must be refused, without
    /// the temporary folder before `fnhost.toml`.
    fn refused(text: &str) -> String {
        let dir = folder();
        let message = parse_in(&dir, text).unwrap_err().to_string();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(!message.contains('\n'), "multi-line message: {message:?}");
        let folder = format!("{}/", dir.display());
        match message.strip_prefix(&folder) {
            Some(rest) => rest.to_string(),
            None => panic!("{message:?} does not start with the manifest's path"),
        }
    }

    /// Asserts that `message` is about `key` on `line`, and says `says`.
    #[track_caller]
    fn assert_at(message: &str, line: usize, key: &str, says: &str) {
        let at = format!("{MANIFEST_FILE}:{line}: key `{key}`: ");
        assert!(
            message.starts_with(&at) || message.contains(&format!("/{at}")),
            "expected {at:?} in {message:?}"
        );
        assert!(message.contains(says), "expected {says:?} in {message:?}");
    }

    const MINIMAL: &str = r#"manifest_version = 1

[[function]]
name = "hello"
component = "hello.wasm"
route = "/hello/..."

[[function]]
name = "slow"
component = "sleep.wasm"
route = "/slow"
timeout = "2s"
"#;

    /// MINIMAL with `extra` added to the end of the last function.
    fn minimal_with(extra: &str) -> String {
        format!("{MINIMAL}{extra}\n")
    }

    #[test]
    fn a_minimal_manifest_parses() {
        let dir = folder();
        let manifest = parse_in(&dir, MINIMAL).unwrap();
        assert_eq!(manifest.path, dir.join(MANIFEST_FILE));
        assert_eq!(manifest.host, HostSettings::default());
        let [hello, slow] = &manifest.functions[..] else {
            panic!("expected two functions: {manifest:?}");
        };
        assert_eq!(hello.name, "hello");
        assert_eq!(hello.component, dir.join("hello.wasm"));
        assert_eq!(hello.route, Some(Route::Prefix("/hello".to_string())));
        assert_eq!(hello.queue, None);
        assert_eq!(hello.settings, FunctionSettings::default());
        assert_eq!(slow.name, "slow");
        assert_eq!(slow.component, dir.join("sleep.wasm"));
        assert_eq!(slow.route, Some(Route::Exact("/slow".to_string())));
        assert_eq!(slow.settings.timeout, Some(Duration::from_secs(2)));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn every_setting_is_read_with_the_flags_parsers() {
        let dir = folder();
        let text = r#"manifest_version = 1

[host]
listen = "127.0.0.1:8080"
admin = "127.0.0.1:9090"
workers = "1..4"
scale_cooldown = "60s"
data_dir = "data"
cache_dir = "cache"
grace = 30
max_body = "100MiB"
header_timeout = "10s"
write_timeout = "30s"
max_component_size = 1024
worker_memory = "1GiB"
timeout = "10s"
max_memory = "64MiB"

[[function]]
name = "hello"
component = "./hello.wasm"
route = "/hello/..."
mode = "sync"
timeout = 2
max_fuel = 1_000_000
yield_fuel = 0x1000
threads = "auto"
queue_depth = 64
queue_timeout = "1s"
instance_reuse = 1000
max_concurrent_reuse = 16
max_guest_output = "1MiB"
load_shedding = "on"
env = { ZED = "last", GREETING = "hi" }
dir = ["data::/data", "/srv/static"]
allow_outbound = ["http://127.0.0.1:9000"]
max_concurrent = 10

[[function]]
name = "orders"
component = "a.wasm"
queue = "redis://127.0.0.1:6379/orders"
threads = 4
load_shedding = false
"#;
        let manifest = parse_in(&dir, text).unwrap();
        let host = &manifest.host;
        assert_eq!(host.listen, Some("127.0.0.1:8080".parse().unwrap()));
        assert_eq!(host.admin, Some("127.0.0.1:9090".parse().unwrap()));
        assert_eq!(host.workers, Some(WorkerCount { min: 1, max: 4 }));
        assert_eq!(host.scale_cooldown, Some(Duration::from_secs(60)));
        assert_eq!(host.data_dir, Some(dir.join("data")));
        assert_eq!(host.cache_dir, Some(dir.join("cache")));
        assert_eq!(host.grace, Some(Duration::from_secs(30)));
        assert_eq!(host.max_body, Some(100 << 20));
        assert_eq!(host.header_timeout, Some(Duration::from_secs(10)));
        assert_eq!(host.write_timeout, Some(Duration::from_secs(30)));
        assert_eq!(host.max_component_size, Some(1024));
        assert_eq!(host.worker_memory, Some(1 << 30));
        let hello = &manifest.functions[0];
        assert_eq!(hello.component, dir.join("hello.wasm"));
        let s = &hello.settings;
        assert_eq!(s.mode, Some(Mode::Sync));
        assert_eq!(s.timeout, Some(Duration::from_secs(2)));
        assert_eq!(s.max_memory, None, "[host] defaults stay in [host]");
        assert_eq!(s.max_fuel, Some(1_000_000));
        assert_eq!(s.yield_fuel, Some(4096));
        assert_eq!(s.threads, Some(ThreadCount::Auto));
        assert_eq!(s.queue_depth, Some(64));
        assert_eq!(s.queue_timeout, Some(Duration::from_secs(1)));
        assert_eq!(s.instance_reuse, Some(1000));
        assert_eq!(s.max_concurrent_reuse, Some(16));
        assert_eq!(s.max_guest_output, Some(1 << 20));
        assert_eq!(s.load_shedding, Some(true));
        let env = [("ZED", "last"), ("GREETING", "hi")].map(|(k, v)| (k.into(), v.into()));
        assert_eq!(s.env, Some(env.to_vec()), "kept in the order written");
        let dirs = s.dir.as_ref().unwrap();
        assert_eq!(dirs[0].host, dir.join("data"));
        assert_eq!(dirs[0].guest, "/data");
        assert_eq!(dirs[1].host, PathBuf::from("/srv/static"));
        assert_eq!(dirs[1].guest, "/srv/static");
        assert_eq!(s.allow_outbound.as_ref().unwrap()[0].port, 9000);
        assert_eq!(s.max_concurrent, Some(10));
        let orders = &manifest.functions[1];
        assert_eq!(orders.route, None);
        assert_eq!(
            orders.queue,
            Some(QueueSpec::Redis {
                url: "redis://127.0.0.1:6379".into(),
                stream: "orders".into()
            })
        );
        assert_eq!(orders.settings.threads, Some(ThreadCount::Fixed(4)));
        assert_eq!(orders.settings.load_shedding, Some(false));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn host_defaults_land_in_host_settings_functions() {
        let dir = folder();
        let text = MINIMAL.replace(
            "manifest_version = 1\n",
            "manifest_version = 1\n[host]\ntimeout = \"5s\"\nmax_memory = \"64MiB\"\nenv = { A = \"1\" }\n",
        );
        let manifest = parse_in(&dir, &text).unwrap();
        let defaults = &manifest.host.functions;
        assert_eq!(defaults.timeout, Some(Duration::from_secs(5)));
        assert_eq!(defaults.max_memory, Some(64 << 20));
        assert_eq!(defaults.env, Some(vec![("A".into(), "1".into())]));
        assert_eq!(manifest.functions[0].settings, FunctionSettings::default());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn paths_of_a_manifest_in_the_working_folder_are_made_absolute() {
        let dir = folder();
        let component = dir.join("hello.wasm");
        let text = format!(
            "manifest_version = 1\n[host]\ndata_dir = \"data\"\n[[function]]\nname = \"a\"\ncomponent = \"{}\"\nroute = \"/\"\n",
            component.display()
        );
        let manifest = parse(Path::new(MANIFEST_FILE), &text).unwrap();
        let here = std::env::current_dir().unwrap();
        assert_eq!(manifest.host.data_dir, Some(here.join("data")));
        assert_eq!(manifest.functions[0].component, component);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unknown_keys_are_refused_where_they_stand() {
        let top = refused(&MINIMAL.replace(
            "manifest_version = 1\n",
            "manifest_version = 1\nlisten = \"x\"\n",
        ));
        assert_at(&top, 2, "listen", "unknown key at the top level");
        let host = MINIMAL.replace(
            "manifest_version = 1\n",
            "manifest_version = 1\n[host]\ngrace = \"1s\"\nlisten_addr = 1\n",
        );
        assert_at(&refused(&host), 4, "listen_addr", "unknown key in [host]");
        let function = refused(&minimal_with("timout = \"1s\""));
        assert_at(&function, 13, "timout", "unknown key in [[function]]");
        let nested = refused(&minimal_with("[function.extra]\nx = 1"));
        assert_at(&nested, 13, "extra", "unknown key in [[function]]");
        let misplaced = refused(&minimal_with("workers = 2"));
        assert_at(
            &misplaced,
            13,
            "workers",
            "unknown key in [[function]] (it is a [host] setting)",
        );
    }

    #[test]
    fn the_version_is_required_and_must_be_1() {
        let missing = refused(&MINIMAL.replace("manifest_version = 1\n", "\n"));
        assert!(
            missing.starts_with("fnhost.toml: key `manifest_version`: is missing"),
            "{missing}"
        );
        let two = refused(&MINIMAL.replace("manifest_version = 1", "manifest_version = 2"));
        assert_at(
            &two,
            1,
            "manifest_version",
            "reads version 1 manifests, not version 2",
        );
        let text = refused(&MINIMAL.replace("manifest_version = 1", "manifest_version = \"1\""));
        assert_at(
            &text,
            1,
            "manifest_version",
            "expected an integer, found a string",
        );
    }

    #[test]
    fn a_missing_component_file_is_named_with_its_path() {
        let dir = folder();
        let text = MINIMAL.replace("sleep.wasm", "nothing-here.wasm");
        let message = parse_in(&dir, &text).unwrap_err().to_string();
        let path = dir.join("nothing-here.wasm");
        assert_at(
            &message,
            10,
            "component",
            &format!("`{}` does not exist", path.display()),
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn overlapping_routes_name_both_functions() {
        let message = refused(&MINIMAL.replace("\"/slow\"", "\"/hello/x\""));
        assert_at(
            &message,
            11,
            "route",
            "`/hello/x` of function `slow` overlaps `/hello/...` of function `hello` (line 6)",
        );
    }

    #[test]
    fn bad_sizes_and_durations_say_what_is_wrong() {
        let memory = refused(&minimal_with("max_memory = \"12QB\""));
        assert_at(&memory, 13, "max_memory", "`12QB` has an unknown unit `qb`");
        let timeout = refused(&MINIMAL.replace("\"2s\"", "\"5x\""));
        assert_at(
            &timeout,
            12,
            "timeout",
            "`5x` has an unknown unit `x` (use ms, s, m or h)",
        );
        let float = refused(&MINIMAL.replace("\"2s\"", "2.5"));
        assert_at(&float, 12, "timeout", "expected a duration");
        assert!(float.contains("found a float"), "{float}");
        let zero = refused(&minimal_with("queue_timeout = 0"));
        assert_at(&zero, 13, "queue_timeout", "must be more than zero");
    }

    #[test]
    fn integers_out_of_range_or_of_the_wrong_type_name_the_key() {
        let cases = [
            (
                "yield_fuel = 999",
                "yield_fuel",
                "`999` is out of range: it must be at least 1000",
            ),
            (
                "max_fuel = 0",
                "max_fuel",
                "`0` is out of range: it must be at least 1",
            ),
            (
                "queue_depth = 1_000_001",
                "queue_depth",
                "`1000001` is out of range: it must be from 1 to 1000000",
            ),
            (
                "threads = 0",
                "threads",
                "`0` is out of range: it must be from 1 to 1024",
            ),
            ("threads = \"8\"", "threads", "found a string"),
            (
                "load_shedding = \"yes\"",
                "load_shedding",
                "`yes` is neither on nor off",
            ),
            (
                "instance_reuse = 4294967296",
                "instance_reuse",
                "it must be from 1 to 4294967295",
            ),
            (
                "max_concurrent = \"10\"",
                "max_concurrent",
                "expected an integer, found a string",
            ),
            ("max_memory = -1", "max_memory", "found a negative number"),
            (
                "dir = \"data\"",
                "dir",
                "expected an array of strings, found a string",
            ),
            (
                "env = { A = 1 }",
                "env",
                "expected a string, found an integer",
            ),
        ];
        for (line, key, says) in cases {
            assert_at(&refused(&minimal_with(line)), 13, key, says);
        }
    }

    #[test]
    fn list_errors_point_at_the_element() {
        let text = minimal_with("allow_outbound = [\n  \"http://a\",\n  \"ftp://b\",\n]");
        let message = refused(&text);
        assert_at(
            &message,
            15,
            "allow_outbound",
            "scheme `ftp` is not http or https",
        );
    }

    #[test]
    fn duplicate_names_are_refused_at_the_second() {
        let message = refused(&MINIMAL.replace("\"slow\"", "\"hello\""));
        assert_at(
            &message,
            9,
            "name",
            "function `hello` is defined twice (first on line 4)",
        );
    }

    #[test]
    fn a_function_needs_a_route_or_a_queue() {
        let message = refused(&MINIMAL.replace("route = \"/slow\"\n", ""));
        assert!(
            message
                .starts_with("fnhost.toml:8: function `slow` has neither a `route` nor a `queue`"),
            "{message}"
        );
    }

    #[test]
    fn one_queue_trigger_per_app() {
        let text = MINIMAL
            .replace("route = \"/hello/...\"", "queue = \"first\"")
            .replace("route = \"/slow\"", "queue = \"second\"");
        let message = refused(&text);
        assert_at(
            &message,
            11,
            "queue",
            "function `slow` has a queue, and so has function `hello` (line 6): one queue trigger per app in this version",
        );
    }

    #[test]
    fn toml_syntax_errors_are_one_line_with_their_line() {
        let message = refused(&MINIMAL.replace("route = \"/slow\"", "route = \"/slow"));
        assert!(
            message.starts_with("fnhost.toml:11: not valid TOML: "),
            "{message}"
        );
        let duplicate = refused(&minimal_with("timeout = \"3s\""));
        assert_eq!(
            duplicate,
            "fnhost.toml:13: key `timeout`: not valid TOML: duplicate key"
        );
    }

    #[test]
    fn functions_are_required_as_an_array_of_tables() {
        let none = refused("manifest_version = 1\n[host]\n");
        assert!(
            none.starts_with("fnhost.toml: key `function`: no function"),
            "{none}"
        );
        let single = refused("manifest_version = 1\n[function]\nname = \"a\"\n");
        assert_at(
            &single,
            2,
            "function",
            "is a table; functions are an array of tables",
        );
        let nameless =
            refused("manifest_version = 1\n[[function]]\ncomponent = \"a.wasm\"\nroute = \"/\"\n");
        assert_at(&nameless, 2, "name", "is missing");
        let bad_name = refused("manifest_version = 1\n[[function]]\nname = \"9 lives\"\n");
        assert_at(&bad_name, 3, "name", "`9 lives` is not a function name");
    }

    #[test]
    fn no_message_spans_lines() {
        let message = refused(&MINIMAL.replace("\"slow\"", "\"two\\nlines\""));
        assert_at(&message, 9, "name", "`two\\nlines` is not a function name");
        for text in [
            "",
            "[",
            "manifest_version = 1\n[[function]]\nname = \"a\"\n\n\n",
        ] {
            refused(text);
        }
    }

    #[test]
    fn load_reads_the_file_and_refuses_large_or_missing_ones() {
        let dir = folder();
        let path = dir.join(MANIFEST_FILE);
        std::fs::write(&path, MINIMAL).unwrap();
        assert_eq!(load(&path).unwrap().functions.len(), 2);
        std::fs::write(&path, " ".repeat((MAX_MANIFEST_BYTES + 1) as usize)).unwrap();
        let large = load(&path).unwrap_err().to_string();
        assert!(
            large.ends_with(
                "is larger than 1MiB, the most a manifest may be (is it the right file?)"
            ),
            "{large}"
        );
        std::fs::write(&path, b"manifest_version = 1\n\xff\n").unwrap();
        let binary = load(&path).unwrap_err().to_string();
        assert!(
            binary.ends_with("fnhost.toml:2: is not UTF-8 text"),
            "{binary}"
        );
        let missing = load(&dir.join("none.toml")).unwrap_err().to_string();
        assert!(
            missing.contains("none.toml: cannot read the manifest: "),
            "{missing}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn manifests_are_told_from_components_by_extension() {
        assert!(is_manifest(Path::new("fnhost.toml")));
        assert!(is_manifest(Path::new("apps/shop.TOML")));
        assert!(!is_manifest(Path::new("hello.wasm")));
        assert!(!is_manifest(Path::new("toml")));
    }
}
