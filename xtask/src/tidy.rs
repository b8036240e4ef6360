//! Tidy checks over `crates/`: the house rules of `STYLE.md` that a machine can see.
//!
//! - Every `unsafe {}` block and `unsafe impl` has a `// SAFETY:` comment on its line or
//!   within the 3 lines above (a comment block directly above counts as one); every
//!   `unsafe fn` has a `# Safety` section in the doc comment directly above it (at most
//!   15 lines up).
//! - `allow(unsafe_code)` appears only in a file named `sys.rs` or under a `sys/` directory.
//! - Layering: each crate's `[dependencies]` name only the mproc crate directly below it
//!   (ipc < process < pool < coroutine); dev-dependencies are exempt.
//! - Every `crates/*/src/lib.rs` starts with a `//!` doc comment and says
//!   `#![deny(unsafe_code)]`.
//! - Every `crates/*/Cargo.toml` has `[lints]` with `workspace = true`.
//! - Module order: in a crate of [`MODULE_ORDER`], each module names (`crate::m...`) only
//!   modules declared before it, so the crate reads bottom-up; every module file must be in
//!   the declared order (test modules at a file's end, `#[cfg(test)] mod`, are exempt).
//!
//! The scanners read plain lines of text (no parser): each takes a path and the file's text
//! and returns [`Violation`]s, so they are tested on small inline strings below.

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Our crates' package names, bottom layer first. A crate may depend on the one just before
/// it and on no other.
const LAYERS: [&str; 4] = ["mproc-ipc", "mproc-process", "mproc-pool", "mproc-coroutine"];

/// Each crate's modules from the bottom up (`ARCHITECTURE.md` says the same order in words):
/// a module may name, through `crate::`, only modules listed before it; the crate root
/// (`lib.rs`) comes last and may name any. `a::b` lists a submodule (a file `src/a/b.rs`) on
/// its own; a file below a listed module (`src/sys/fork.rs` below `sys`) belongs to it.
const MODULE_ORDER: &[(&str, &[&str])] = &[
    (
        "crates/ipc",
        &[
            "sys",
            "error",
            "address",
            "frame",
            "codec",
            "fdpass",
            "outofline",
            "shm",
            "spin",
            "doorbell",
            "sync",
            "value",
            "barrier",
            "shared_memory",
            "carried",
            "queue",
            "wait",
            "end",
            "handshake",
            "pipe",
            "duplex",
            "listener",
            "pickle",
        ],
    ),
    (
        "crates/process",
        &[
            "sys",
            "error",
            "status",
            "global",
            "identity",
            "fnref",
            "bootstrap",
            "slot",
            "child",
            "registry",
            "process",
            "start",
            "start::fork",
            "start::spawn",
            "start::forkserver",
            "builder",
        ],
    ),
    (
        "crates/coroutine",
        &["reactor", "sync", "sys", "executor", "io", "time", "shared", "queue", "channel", "combinators"],
    ),
];

/// How far above an `unsafe` block or impl its `// SAFETY:` comment may be, in lines of
/// code (comment lines in between are free).
const SAFETY_COMMENT_REACH: usize = 3;

/// How far above an `unsafe fn` its `# Safety` doc section may be, in lines.
const SAFETY_DOC_REACH: usize = 15;

/// One broken rule, at a file and line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Violation {
    /// The file, relative to the workspace root, with `/` separators.
    pub(crate) path: String,
    /// 1-based line number.
    pub(crate) line: usize,
    /// What is wrong and what the rule wants.
    pub(crate) message: String,
}

impl Violation {
    fn new(path: &str, line: usize, message: impl Into<String>) -> Self {
        Violation { path: path.to_owned(), line, message: message.into() }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.path, self.line, self.message)
    }
}

/// Runs every check over `root/crates` and returns what they found, sorted by file and line.
pub(crate) fn check(root: &Path) -> io::Result<Vec<Violation>> {
    let mut found = Vec::new();
    let crates = root.join("crates");
    for crate_dir in sorted_entries(&crates)? {
        if !crate_dir.is_dir() {
            continue;
        }
        let manifest = crate_dir.join("Cargo.toml");
        if manifest.is_file() {
            let text = fs::read_to_string(&manifest)?;
            let path = relative(root, &manifest);
            found.extend(check_manifest_lints(&path, &text));
            found.extend(check_layering(&path, &text));
        }
        let lib = crate_dir.join("src").join("lib.rs");
        if lib.is_file() {
            found.extend(check_crate_root(&relative(root, &lib), &fs::read_to_string(&lib)?));
        }
        let mut sources = Vec::new();
        rust_files(&crate_dir, &mut sources)?;
        let order = MODULE_ORDER.iter().find(|(dir, _)| crate_dir == root.join(dir)).map(|(_, order)| *order);
        let reexports = if lib.is_file() { root_reexports(&fs::read_to_string(&lib)?) } else { Vec::new() };
        for file in sources {
            let text = fs::read_to_string(&file)?;
            let path = relative(root, &file);
            found.extend(check_unsafe_comments(&path, &text));
            found.extend(check_allow_unsafe(&path, &text));
            if let (Some(order), Ok(in_src)) = (order, file.strip_prefix(crate_dir.join("src"))) {
                let in_src = relative(Path::new(""), in_src);
                found.extend(check_module_order(&path, &in_src, &text, order, &reexports));
            }
        }
    }
    found.sort_by(|a, b| (&a.path, a.line).cmp(&(&b.path, b.line)));
    Ok(found)
}

/// The entries of `dir`, sorted by path.
fn sorted_entries(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut entries =
        fs::read_dir(dir)?.map(|entry| entry.map(|e| e.path())).collect::<io::Result<Vec<_>>>()?;
    entries.sort();
    Ok(entries)
}

/// Every `*.rs` file under `dir`, skipping `target` and hidden directories.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) -> io::Result<()> {
    for path in sorted_entries(dir)? {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if path.is_dir() {
            if name != "target" && !name.starts_with('.') {
                rust_files(&path, out)?;
            }
        } else if name.ends_with(".rs") {
            out.push(path);
        }
    }
    Ok(())
}

/// `path` relative to `root`, with `/` separators.
fn relative(root: &Path, path: &Path) -> String {
    let rel = path.strip_prefix(root).unwrap_or(path);
    rel.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/")
}

// ---------------------------------------------------------------------------------------
// Rust sources

/// What follows an `unsafe` keyword.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unsafe {
    /// `unsafe {`: needs a `// SAFETY:` comment.
    Block,
    /// `unsafe impl`: needs a `// SAFETY:` comment.
    Impl,
    /// `unsafe extern "C" {`: needs a `// SAFETY:` comment.
    ExternBlock,
    /// `unsafe fn` (also `unsafe extern "C" fn`): needs a `# Safety` doc section.
    Fn,
}

/// Whether a trimmed line is a `//` comment (plain, doc or inner doc).
fn is_comment(trimmed: &str) -> bool {
    trimmed.starts_with("//")
}

/// The code of a line, without a trailing `//` comment. Naive about `//` inside string
/// literals, which only makes it miss code, never invent it.
fn code_of(line: &str) -> &str {
    match line.find("//") {
        Some(at) => &line[..at],
        None => line,
    }
}

/// Whether `line` carries a `// SAFETY:` comment (whole-line or trailing).
fn has_safety_comment(line: &str) -> bool {
    line.find("//").is_some_and(|at| line[at..].trim_start_matches('/').trim_start().starts_with("SAFETY:"))
}

fn is_ident_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Whether `rest` starts with the keyword `word` (followed by a non-identifier character).
fn starts_with_word(rest: &str, word: &str) -> bool {
    rest.strip_prefix(word).is_some_and(|after| !after.starts_with(is_ident_char))
}

/// Every use of the `unsafe` keyword in one line of code, by kind.
fn unsafe_uses(code: &str) -> Vec<Unsafe> {
    let mut uses = Vec::new();
    let mut from = 0;
    while let Some(at) = code[from..].find("unsafe").map(|i| from + i) {
        from = at + "unsafe".len();
        let before_ok = !code[..at].ends_with(is_ident_char);
        let after = &code[from..];
        if !before_ok || after.starts_with(is_ident_char) {
            continue;
        }
        let rest = after.trim_start();
        let kind = if rest.starts_with('{') {
            Unsafe::Block
        } else if starts_with_word(rest, "impl") {
            Unsafe::Impl
        } else if starts_with_word(rest, "fn") {
            Unsafe::Fn
        } else if starts_with_word(rest, "extern") {
            let tail = rest["extern".len()..].trim_start();
            let tail = match tail.strip_prefix('"') {
                Some(abi) => abi.split_once('"').map_or("", |(_, t)| t).trim_start(),
                None => tail,
            };
            if starts_with_word(tail, "fn") { Unsafe::Fn } else { Unsafe::ExternBlock }
        } else {
            continue;
        };
        if !uses.contains(&kind) {
            uses.push(kind);
        }
    }
    uses
}

/// Whether the `unsafe` block or impl on line `idx` has its `// SAFETY:` comment: on the
/// same line, or above within [`SAFETY_COMMENT_REACH`] lines of code. A comment above an
/// earlier `unsafe` belongs to that one, so the search stops there.
fn safety_comment_above(lines: &[&str], idx: usize) -> bool {
    if has_safety_comment(lines[idx]) {
        return true;
    }
    let mut code_lines = 0;
    for line in lines[..idx].iter().rev() {
        let trimmed = line.trim();
        if is_comment(trimmed) {
            if has_safety_comment(trimmed) {
                return true;
            }
            continue;
        }
        if has_safety_comment(line) {
            return true;
        }
        if unsafe_uses(code_of(line)).iter().any(|u| *u != Unsafe::Fn) {
            return false;
        }
        code_lines += 1;
        if code_lines >= SAFETY_COMMENT_REACH {
            return false;
        }
    }
    false
}

/// Whether the `unsafe fn` on line `idx` has a `# Safety` section in the doc comment directly
/// above it (doc lines, attributes, comments and blank lines; at most [`SAFETY_DOC_REACH`]
/// lines up).
fn safety_doc_above(lines: &[&str], idx: usize) -> bool {
    for line in lines[..idx].iter().rev().take(SAFETY_DOC_REACH) {
        let trimmed = line.trim();
        if trimmed.starts_with("///") {
            if trimmed.trim_start_matches('/').trim() == "# Safety" {
                return true;
            }
        } else if !(trimmed.is_empty() || is_comment(trimmed) || trimmed.starts_with("#[")) {
            return false;
        }
    }
    false
}

/// Check (a): `// SAFETY:` comments on `unsafe` blocks and impls, `# Safety` docs on
/// `unsafe fn`s.
fn check_unsafe_comments(path: &str, text: &str) -> Vec<Violation> {
    let lines: Vec<&str> = text.lines().collect();
    let mut found = Vec::new();
    for (idx, line) in lines.iter().enumerate() {
        if is_comment(line.trim()) {
            continue;
        }
        for kind in unsafe_uses(code_of(line)) {
            let what = match kind {
                Unsafe::Block => "`unsafe` block",
                Unsafe::Impl => "`unsafe impl`",
                Unsafe::ExternBlock => "`unsafe extern` block",
                Unsafe::Fn => {
                    if !safety_doc_above(&lines, idx) {
                        found.push(Violation::new(
                            path,
                            idx + 1,
                            "`unsafe fn` without a `# Safety` section in its doc comment \
                             (say what the caller must guarantee)",
                        ));
                    }
                    continue;
                }
            };
            if !safety_comment_above(&lines, idx) {
                found.push(Violation::new(
                    path,
                    idx + 1,
                    format!(
                        "{what} without a `// SAFETY:` comment on its line or within the \
                         {SAFETY_COMMENT_REACH} lines above (name the invariant that makes it sound)"
                    ),
                ));
            }
        }
    }
    found
}

/// Whether `path` (relative, `/`-separated) may allow unsafe code: a `sys.rs` or a file under
/// a `sys/` directory.
fn is_sys_module(path: &str) -> bool {
    let mut parts: Vec<&str> = path.split('/').collect();
    let file = parts.pop().unwrap_or("");
    file == "sys.rs" || parts.contains(&"sys")
}

/// Check (b): `allow(unsafe_code)` only in `sys.rs` files and `sys/` directories.
fn check_allow_unsafe(path: &str, text: &str) -> Vec<Violation> {
    if is_sys_module(path) {
        return Vec::new();
    }
    let mut found = Vec::new();
    for (idx, line) in text.lines().enumerate() {
        let code = code_of(line).trim();
        let attr = code.starts_with("#[") || code.starts_with("#![");
        let lifts = ["allow(", "expect("].iter().any(|a| code.contains(a));
        if attr && lifts && code.contains("unsafe_code") {
            found.push(Violation::new(
                path,
                idx + 1,
                "`allow(unsafe_code)` outside a `sys.rs` or `sys/` module: unsafe code lives \
                 behind the crate's one sys door",
            ));
        }
    }
    found
}

/// The names a crate root re-exports from its own modules (`pub use error::{Error, Result};`
/// gives `("Error", "error")` and `("Result", "error")`), so that `crate::Error` counts as
/// the module it comes from.
fn root_reexports(lib: &str) -> Vec<(String, String)> {
    let mut found = Vec::new();
    let mut statement = String::new();
    for line in lib.lines() {
        let code = code_of(line).trim();
        if statement.is_empty() && !code.starts_with("pub use ") {
            continue;
        }
        statement.push_str(code);
        statement.push(' ');
        if !code.ends_with(';') {
            continue;
        }
        let body = statement.trim().trim_start_matches("pub use ").trim_end_matches(';').trim().to_owned();
        statement.clear();
        let Some((module, rest)) = body.split_once("::") else { continue };
        let names = rest.trim().trim_start_matches('{').trim_end_matches('}');
        for name in names.split(',') {
            // `A as B` exports `B`; a nested path `a::B` exports `B`.
            let name = name.split(" as ").last().unwrap_or("").trim();
            let name = name.rsplit("::").next().unwrap_or("").trim();
            if !name.is_empty() && name != "self" && name != "*" {
                found.push((name.to_owned(), module.trim().to_owned()));
            }
        }
    }
    found
}

/// The module a path in `order` resolves to: the longest listed prefix of `segments`, as its
/// index in `order`; `None` if no prefix is listed.
fn listed_module(segments: &[&str], order: &[&str]) -> Option<usize> {
    (1..=segments.len()).rev().find_map(|n| {
        let name = segments[..n].join("::");
        order.iter().position(|m| *m == name)
    })
}

/// The module path of a source file, from its path under `src/` (`sys/fork.rs` is
/// `["sys", "fork"]`, `start/mod.rs` is `["start"]`, `lib.rs` is `[]`).
fn module_path(in_src: &str) -> Vec<&str> {
    let mut parts: Vec<&str> = in_src.trim_end_matches(".rs").split('/').collect();
    if matches!(parts.last(), Some(&"mod" | &"lib" | &"main")) {
        parts.pop();
    }
    parts
}

/// The `crate::a::b` paths a piece of code names, as their segments (identifiers only; a
/// `$crate::` in a macro is not this crate's path as the macro's user sees it). A group
/// `crate::{a::X, b}` names each of its items.
fn crate_paths(code: &str) -> Vec<Vec<&str>> {
    let mut paths = Vec::new();
    let mut from = 0;
    while let Some(at) = code[from..].find("crate::") {
        let start = from + at;
        from = start + "crate::".len();
        let before = code[..start].chars().next_back();
        if before.is_some_and(|c| is_ident_char(c) || c == '$') {
            continue;
        }
        match code[from..].strip_prefix('{') {
            Some(group) => {
                let mut depth = 0;
                let mut item_start = 0;
                for (i, c) in group.char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' if depth == 0 => {
                            paths.push(path_segments(&group[item_start..i]));
                            break;
                        }
                        '}' => depth -= 1,
                        ',' if depth == 0 => {
                            paths.push(path_segments(&group[item_start..i]));
                            item_start = i + 1;
                        }
                        _ => {}
                    }
                }
            }
            None => paths.push(path_segments(&code[from..])),
        }
    }
    paths.retain(|p| !p.is_empty());
    paths
}

/// The leading `a::b::C` of `text` (after blanks), as its segments.
fn path_segments(text: &str) -> Vec<&str> {
    let mut segments = Vec::new();
    let mut rest = text.trim_start();
    loop {
        let len = rest.find(|c: char| !is_ident_char(c)).unwrap_or(rest.len());
        if len == 0 {
            break;
        }
        segments.push(&rest[..len]);
        match rest[len..].strip_prefix("::") {
            Some(after) => rest = after,
            None => break,
        }
    }
    segments
}

/// `code` with each `super::` written as the `crate::` path it names from module `me`
/// (a file's own module: `super::` inside an inline module of it is not told apart).
fn resolve_super(code: &str, me: &[&str]) -> String {
    let parent = &me[..me.len().saturating_sub(1)];
    let mut prefix = String::from("crate::");
    for segment in parent {
        prefix.push_str(segment);
        prefix.push_str("::");
    }
    let mut out = String::with_capacity(code.len());
    let mut rest = code;
    while let Some(at) = rest.find("super::") {
        let before = rest[..at].chars().next_back();
        out.push_str(&rest[..at]);
        if before.is_some_and(is_ident_char) {
            out.push_str("super::");
        } else {
            out.push_str(&prefix);
        }
        rest = &rest[at + "super::".len()..];
    }
    out.push_str(rest);
    out
}

/// Check (f): a module names only modules declared before it in its crate's `order`, and is
/// itself in `order`. `in_src` is the file's path under `src/`. Scanning stops at a test
/// module (`#[cfg(test)]` followed by `mod`), whose imports are not the crate's structure.
/// A name the crate root re-exports (`crate::Error`, from `pub use error::Error` in
/// `reexports`, see [`root_reexports`]) counts as the module it comes from; any other name of
/// the root counts as the root, the top.
fn check_module_order(
    path: &str,
    in_src: &str,
    text: &str,
    order: &[&str],
    reexports: &[(String, String)],
) -> Vec<Violation> {
    let me = module_path(in_src);
    if me.is_empty() {
        return Vec::new(); // the crate root may name any module
    }
    let Some(mine) = listed_module(&me, order) else {
        return vec![Violation::new(
            path,
            1,
            format!(
                "module `{}` is not in the declared module order: add it to MODULE_ORDER in \
                 xtask/src/tidy.rs (and ARCHITECTURE.md) where it belongs bottom-up",
                me.join("::")
            ),
        )];
    };
    let mut found = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    let mut joined_until = 0;
    for (idx, line) in lines.iter().enumerate() {
        if idx < joined_until {
            continue; // part of a statement read with an earlier line
        }
        let trimmed = line.trim();
        if trimmed.starts_with("#[cfg(test)]")
            && lines[idx + 1..].iter().map(|l| l.trim()).find(|l| !l.is_empty()).is_some_and(|next| {
                next.starts_with("mod ")
                    || next.starts_with("pub mod ")
                    || next.starts_with("pub(crate) mod ")
            })
        {
            break;
        }
        if is_comment(trimmed) {
            continue;
        }
        // A group `crate::{..}` may go on over the next lines: read it whole.
        let mut code = resolve_super(code_of(line), &me);
        let mut next = idx + 1;
        while code.contains("crate::{")
            && code.matches('{').count() > code.matches('}').count()
            && next < lines.len()
        {
            code.push(' ');
            code.push_str(code_of(lines[next]));
            next += 1;
        }
        joined_until = next;
        for segments in crate_paths(&code) {
            let target = listed_module(&segments, order).or_else(|| {
                let (_, from) = reexports.iter().find(|(name, _)| name == segments[0])?;
                order.iter().position(|m| m == from)
            });
            let upward = match target {
                Some(theirs) => theirs > mine,
                None => true, // the crate root, or a module nobody declared
            };
            if upward {
                let name = segments.join("::");
                let what = match target {
                    Some(theirs) => format!("module `{}`, declared above", order[theirs]),
                    None => "the crate root".to_string(),
                };
                found.push(Violation::new(
                    path,
                    idx + 1,
                    format!(
                        "module `{me}` reaches up to `crate::{name}` ({what}): a module names only \
                         those before it in MODULE_ORDER (move the shared piece down)",
                        me = order[mine]
                    ),
                ));
            }
        }
    }
    found
}

/// Check (d): a crate root starts with a `//!` doc comment and denies unsafe code.
fn check_crate_root(path: &str, text: &str) -> Vec<Violation> {
    let mut found = Vec::new();
    match text.lines().enumerate().find(|(_, l)| !l.trim().is_empty()) {
        Some((_, first)) if first.trim_start().starts_with("//!") => {}
        Some((idx, _)) => found.push(Violation::new(
            path,
            idx + 1,
            "crate root does not start with a `//!` doc comment (name the main types and \
             how they connect)",
        )),
        None => found.push(Violation::new(path, 1, "crate root is empty: it needs a `//!` doc comment")),
    }
    let denies = text.lines().any(|l| {
        let code = code_of(l).trim();
        code == "#![deny(unsafe_code)]" || code == "#![forbid(unsafe_code)]"
    });
    if !denies {
        found.push(Violation::new(
            path,
            1,
            "crate root lacks `#![deny(unsafe_code)]` (only the sys module may allow it)",
        ));
    }
    found
}

// ---------------------------------------------------------------------------------------
// Cargo manifests

/// Which table of dependencies a manifest section is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DepKind {
    Normal,
    Build,
    Dev,
}

impl DepKind {
    fn table(self) -> &'static str {
        match self {
            DepKind::Normal => "[dependencies]",
            DepKind::Build => "[build-dependencies]",
            DepKind::Dev => "[dev-dependencies]",
        }
    }
}

/// If `section` (a header without brackets) is a dependency table, its kind and, for the
/// `[dependencies.NAME]` form, the dependency's name.
fn dependency_section(section: &str) -> Option<(DepKind, Option<String>)> {
    const KINDS: [(&str, DepKind); 3] = [
        ("dev-dependencies", DepKind::Dev),
        ("build-dependencies", DepKind::Build),
        ("dependencies", DepKind::Normal),
    ];
    // `[target.'cfg(..)'.dependencies]`: look at what follows the target's cfg.
    let rest = match section.strip_prefix("target.") {
        Some(target) => {
            let at = KINDS.iter().filter_map(|(kw, _)| target.rfind(&format!(".{kw}"))).max()?;
            &target[at + 1..]
        }
        None => section,
    };
    for (kw, kind) in KINDS {
        if rest == kw {
            return Some((kind, None));
        }
        if let Some(name) = rest.strip_prefix(kw).and_then(|r| r.strip_prefix('.')) {
            return Some((kind, Some(unquote(name).to_owned())));
        }
    }
    None
}

/// `s` without surrounding `"` or `'` quotes.
fn unquote(s: &str) -> &str {
    let s = s.trim();
    for q in ['"', '\''] {
        if let Some(inner) = s.strip_prefix(q).and_then(|r| r.strip_suffix(q)) {
            return inner;
        }
    }
    s
}

/// The value of `key = "value"` inside an inline table such as `{ package = "x", .. }`.
fn inline_value<'a>(value: &'a str, key: &str) -> Option<&'a str> {
    let inner = value.trim().strip_prefix('{')?.strip_suffix('}')?;
    inner.split(',').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k.trim() == key).then(|| unquote(v))
    })
}

/// A dependency named in a manifest.
#[derive(Debug)]
struct Dependency {
    line: usize,
    name: String,
    kind: DepKind,
}

/// What the checks need from a `Cargo.toml`, read line by line.
#[derive(Debug, Default)]
struct Manifest {
    /// `[package] name`, with its line.
    name: Option<(usize, String)>,
    dependencies: Vec<Dependency>,
    /// The line of the `[lints]` header, if any.
    lints: Option<usize>,
    /// Whether `[lints]` says `workspace = true`.
    lints_workspace: bool,
}

fn parse_manifest(text: &str) -> Manifest {
    let mut manifest = Manifest::default();
    let mut section = String::new();
    // For `[dependencies.NAME]`: the index of that dependency, so `package = ".."` renames it.
    let mut table_dep: Option<usize> = None;
    for (idx, raw) in text.lines().enumerate() {
        let line = match raw.find('#') {
            Some(at) => &raw[..at],
            None => raw,
        }
        .trim();
        if line.is_empty() {
            continue;
        }
        if line.starts_with('[') {
            section = line.trim_matches(|c| c == '[' || c == ']').trim().to_owned();
            table_dep = None;
            if section == "lints" {
                manifest.lints = Some(idx + 1);
            }
            if let Some((kind, Some(name))) = dependency_section(&section) {
                table_dep = Some(manifest.dependencies.len());
                manifest.dependencies.push(Dependency { line: idx + 1, name, kind });
            }
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let (key, value) = (unquote(key), value.trim());
        match section.as_str() {
            "package" if key == "name" => {
                manifest.name = Some((idx + 1, unquote(value).to_owned()));
            }
            "lints" if key == "workspace" && value == "true" => manifest.lints_workspace = true,
            _ => match (dependency_section(&section), table_dep) {
                (Some((_, Some(_))), Some(dep)) if key == "package" => {
                    manifest.dependencies[dep].name = unquote(value).to_owned();
                }
                (Some((kind, None)), _) => {
                    // `name = ..`, `name.workspace = true` or `name = { package = "..", .. }`.
                    let base = unquote(key.split('.').next().unwrap_or(key));
                    let name = inline_value(value, "package").unwrap_or(base);
                    manifest.dependencies.push(Dependency { line: idx + 1, name: name.to_owned(), kind });
                }
                _ => {}
            },
        }
    }
    manifest
}

/// Check (e): the manifest inherits the workspace lints.
fn check_manifest_lints(path: &str, text: &str) -> Vec<Violation> {
    let manifest = parse_manifest(text);
    if manifest.lints_workspace {
        return Vec::new();
    }
    let line = manifest.lints.unwrap_or(1);
    vec![Violation::new(
        path,
        line,
        "missing `[lints]` with `workspace = true` (the root manifest owns the lints)",
    )]
}

/// Check (c): the crate's dependencies name only the mproc crate directly below it.
fn check_layering(path: &str, text: &str) -> Vec<Violation> {
    let manifest = parse_manifest(text);
    let Some((name_line, name)) = manifest.name else {
        return vec![Violation::new(path, 1, "no `name` in `[package]`")];
    };
    let Some(layer) = LAYERS.iter().position(|l| *l == name) else {
        return vec![Violation::new(
            path,
            name_line,
            format!(
                "crate `{name}` is not in the layer order {} (add it to LAYERS in \
                 xtask/src/tidy.rs)",
                LAYERS.join(" < ")
            ),
        )];
    };
    let below = layer.checked_sub(1).map(|i| LAYERS[i]);
    manifest
        .dependencies
        .iter()
        .filter(|dep| dep.kind != DepKind::Dev && dep.name.starts_with("mproc"))
        .filter(|dep| Some(dep.name.as_str()) != below)
        .map(|dep| {
            let rule = match below {
                Some(below) => format!("may depend only on `{below}`, the layer directly below"),
                None => "is the bottom layer and may depend on no mproc crate".to_owned(),
            };
            Violation::new(
                path,
                dep.line,
                format!(
                    "layering: `{name}` {rule}, but its {} names `{}` (dev-dependencies are \
                     exempt)",
                    dep.kind.table(),
                    dep.name
                ),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::env;

    fn lines(found: &[Violation]) -> Vec<usize> {
        found.iter().map(|v| v.line).collect()
    }

    /// The real workspace: `cargo test --workspace` fails on any broken rule.
    #[test]
    fn workspace_is_tidy() {
        let found = check(&crate::workspace_root()).expect("read the workspace");
        let report: Vec<String> = found.iter().map(ToString::to_string).collect();
        assert!(found.is_empty(), "tidy found {} problem(s):\n{}", found.len(), report.join("\n"));
    }

    /// A small untidy workspace on disk: `check` walks it and reports `file:line` for each
    /// broken rule.
    #[test]
    fn check_walks_a_workspace_and_reports_each_file() {
        let root = env::temp_dir().join(format!("xtask-tidy-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let src = root.join("crates/pool/src");
        fs::create_dir_all(&src).unwrap();
        fs::write(
            root.join("crates/pool/Cargo.toml"),
            "[package]\nname = \"mproc-pool\"\n[dependencies]\nmproc-ipc.workspace = true\n",
        )
        .unwrap();
        fs::write(src.join("lib.rs"), "//! Pool.\n#![deny(unsafe_code)]\nmod a;\n").unwrap();
        fs::write(src.join("a.rs"), "#![allow(unsafe_code)]\nfn f() {\n    unsafe { g() }\n}\n").unwrap();
        let found = check(&root).unwrap();
        fs::remove_dir_all(&root).unwrap();
        let report: Vec<String> = found.iter().map(|v| format!("{}:{}", v.path, v.line)).collect();
        assert_eq!(
            report,
            [
                "crates/pool/Cargo.toml:1",
                "crates/pool/Cargo.toml:4",
                "crates/pool/src/a.rs:1",
                "crates/pool/src/a.rs:3",
            ]
        );
    }

    #[test]
    fn an_upward_import_is_reported_and_a_downward_one_is_not() {
        let order = ["sys", "error", "child", "start", "start::fork", "builder"];
        let text = "\
use crate::error::Error;
use crate::sys::fork::fork; // down: fine
use crate::builder::Builder;
// use crate::builder::Builder; (a comment: not code)
fn f() { crate::start::fork::go(); crate::child::state(); }
/// [`x`](crate::builder)
macro_rules! m { () => { $crate::builder::x() } }
fn g() -> crate::Error { todo!() }
use crate::{
    sys::x,
    start::{a, b},
};
fn h() { super::builder::make(); }

#[cfg(test)]
mod tests {
    use crate::builder::Builder;
}
";
        let reexports =
            root_reexports("pub use error::{Error, Result};\npub use builder::{\n    Builder,\n};\n");
        assert_eq!(
            reexports,
            [("Error", "error"), ("Result", "error"), ("Builder", "builder")]
                .map(|(n, m)| (n.into(), m.into()))
        );
        let found = check_module_order("crates/p/src/child.rs", "child.rs", text, &order, &[]);
        assert_eq!(lines(&found), [3, 5, 8, 9, 13], "{found:#?}");
        assert!(found[0].message.contains("crate::builder::Builder"), "{}", found[0]);
        assert!(found[1].message.contains("crate::start::fork::go"), "{}", found[1]);
        assert!(found[2].message.contains("the crate root"), "{}", found[2]);
        // `crate::Error` re-exported from `error` (below `child`) is `error`; `crate::Builder`
        // from `builder` is still above.
        let reexported = "fn g() -> crate::Error { crate::Builder::new() }\n";
        let found = check_module_order("crates/p/src/child.rs", "child.rs", reexported, &order, &reexports);
        assert_eq!(found.len(), 1, "{found:#?}");
        assert!(found[0].message.contains("crate::Builder::new"), "{}", found[0]);
    }

    #[test]
    fn submodules_resolve_to_the_longest_listed_prefix() {
        let order = ["sys", "start", "start::fork", "start::spawn"];
        // `start/spawn.rs` may name `start::fork` (below it) and `start` (its parent's shared
        // pieces); `start/fork.rs` may not name `start::spawn`.
        let spawn = "use crate::start::fork::x;\nuse crate::start::common;\nuse crate::sys::fork::y;\n";
        assert!(check_module_order("p/src/start/spawn.rs", "start/spawn.rs", spawn, &order, &[]).is_empty());
        let fork = "use crate::start::spawn::x;\n";
        assert_eq!(
            lines(&check_module_order("p/src/start/fork.rs", "start/fork.rs", fork, &order, &[])),
            [1]
        );
        // A file below `sys` is `sys`: it may name `sys::other` (`super::other`), nothing above.
        let sys = "use crate::sys::spawn::FD;\nuse crate::start::x;\nlet p = super::spawn::X;\n";
        assert_eq!(lines(&check_module_order("p/src/sys/fork.rs", "sys/fork.rs", sys, &order, &[])), [2]);
        // The crate root names anything; a module missing from the order is reported.
        assert!(
            check_module_order("p/src/lib.rs", "lib.rs", "use crate::start::spawn;\n", &order, &[])
                .is_empty()
        );
        let missing = check_module_order("p/src/extra.rs", "extra.rs", "", &order, &[]);
        assert_eq!(lines(&missing), [1]);
        assert!(missing[0].message.contains("not in the declared module order"), "{}", missing[0]);
    }

    #[test]
    fn unsafe_block_without_safety_comment_is_reported() {
        let text = "fn f() {\n    let x = 1;\n    unsafe { g() };\n}\n";
        let found = check_unsafe_comments("crates/x/src/sys.rs", text);
        assert_eq!(lines(&found), [3]);
        assert_eq!(found[0].to_string().split(": ").next(), Some("crates/x/src/sys.rs:3"));
        assert!(found[0].message.contains("SAFETY"), "{}", found[0]);
    }

    #[test]
    fn safety_comment_above_or_on_the_line_is_accepted() {
        let text = "\
// SAFETY: g has no preconditions.
unsafe { g() };
let v = Wrap(unsafe { h() }); // SAFETY: h neither.
// SAFETY: a long reason
// that goes on
// and on
// and on.
let y = unsafe { k() };
// SAFETY: three lines up still counts.
let a = 1;
let b = 2;
unsafe { m() };
";
        assert_eq!(lines(&check_unsafe_comments("f.rs", text)), [] as [usize; 0]);
    }

    #[test]
    fn safety_comment_too_far_or_used_up_is_reported() {
        let text = "\
// SAFETY: too far away.
let a = 1;
let b = 2;
let c = 3;
unsafe { g() };
// SAFETY: belongs to the first block only.
unsafe { h() };
unsafe { k() };
";
        assert_eq!(lines(&check_unsafe_comments("f.rs", text)), [5, 8]);
    }

    #[test]
    fn unsafe_impl_and_extern_block_need_safety_comments() {
        let text = "\
unsafe impl Send for X {}
// SAFETY: X's pointer is owned.
unsafe impl Sync for X {}
unsafe extern \"C\" {
    fn abs(x: i32) -> i32;
}
";
        assert_eq!(lines(&check_unsafe_comments("f.rs", text)), [1, 4]);
    }

    #[test]
    fn unsafe_fn_needs_a_safety_doc_section() {
        let text = "\
/// Does it.
pub unsafe fn bad() {}

/// Does it.
///
/// # Safety
/// `p` must be valid.
#[inline]
pub unsafe fn good(p: *const u8) {}

/// # Safety
/// Belongs to `other`.
fn other() {}
unsafe extern \"C\" fn also_bad() {}
";
        assert_eq!(lines(&check_unsafe_comments("f.rs", text)), [2, 14]);
    }

    #[test]
    fn comments_strings_and_other_words_are_not_unsafe_code() {
        let text = "\
// unsafe { this is a comment }
/// Calls `unsafe { x }` in a doc.
#![deny(unsafe_code)]
let not_unsafe = 1; // unsafe { trailing comment }
let is_unsafe_fn = 2;
#[unsafe(no_mangle)]
";
        assert_eq!(lines(&check_unsafe_comments("f.rs", text)), [] as [usize; 0]);
    }

    #[test]
    fn allow_unsafe_code_only_in_sys_modules() {
        let text = "//! Doc.\n#![allow(unsafe_code)]\n";
        assert_eq!(lines(&check_allow_unsafe("crates/x/src/pipe.rs", text)), [2]);
        let text = "#[allow(dead_code, unsafe_code)]\nfn f() {}\n";
        assert_eq!(lines(&check_allow_unsafe("crates/x/src/a.rs", text)), [1]);
        for ok in ["crates/x/src/sys.rs", "crates/x/src/sys/fork.rs", "crates/x/tests/support/sys.rs"] {
            assert!(check_allow_unsafe(ok, "#![allow(unsafe_code)]\n").is_empty());
        }
        assert!(!is_sys_module("crates/x/src/mysys.rs"));
        assert!(!is_sys_module("crates/x/src/sysctl/a.rs"));
    }

    #[test]
    fn crate_root_needs_doc_and_deny() {
        let good = "//! The crate.\n#![deny(unsafe_code)]\nmod sys;\n";
        assert!(check_crate_root("lib.rs", good).is_empty());
        let no_doc = "#![deny(unsafe_code)]\n//! Late doc.\n";
        assert_eq!(lines(&check_crate_root("lib.rs", no_doc)), [1]);
        let no_deny = "//! The crate.\n// #![deny(unsafe_code)]\n";
        let found = check_crate_root("lib.rs", no_deny);
        assert_eq!(found.len(), 1);
        assert!(found[0].message.contains("deny(unsafe_code)"));
    }

    #[test]
    fn manifest_needs_workspace_lints() {
        let good = "[package]\nname = \"mproc-ipc\"\n\n[lints]\nworkspace = true\n";
        assert!(check_manifest_lints("Cargo.toml", good).is_empty());
        assert_eq!(lines(&check_manifest_lints("Cargo.toml", "[package]\nname = \"a\"\n")), [1]);
        let local = "[package]\nname = \"a\"\n[lints.rust]\nunsafe_code = \"deny\"\n";
        assert_eq!(check_manifest_lints("Cargo.toml", local).len(), 1);
        let other_section = "[lints]\n[features]\nworkspace = true\n";
        assert_eq!(check_manifest_lints("Cargo.toml", other_section).len(), 1);
    }

    #[test]
    fn layering_allows_only_the_layer_below() {
        let pool = "\
[package]
name = \"mproc-pool\"

[dependencies]
mproc-process.workspace = true
mproc-ipc = { path = \"../ipc\" }
serde.workspace = true

[dev-dependencies]
mproc-ipc.workspace = true
mproc-coroutine = { path = \"../coroutine\" }
";
        let found = check_layering("crates/pool/Cargo.toml", pool);
        assert_eq!(lines(&found), [6]);
        assert!(found[0].message.contains("`mproc-ipc`"), "{}", found[0]);
        assert!(found[0].message.contains("`mproc-process`"), "{}", found[0]);
    }

    #[test]
    fn layering_sees_renames_tables_targets_and_build_deps() {
        let ipc = "\
[package]
name = \"mproc-ipc\"
[dependencies]
process = { package = \"mproc-process\", path = \"../process\" }
[dependencies.up]
path = \"../pool\"
package = \"mproc-pool\"
[target.'cfg(target_os = \"linux\")'.dependencies]
mproc-coroutine = \"0.1\"
[build-dependencies]
mproc-process.workspace = true
[target.'cfg(unix)'.dev-dependencies]
mproc-pool.workspace = true
";
        let found = check_layering("crates/ipc/Cargo.toml", ipc);
        assert_eq!(lines(&found), [4, 5, 9, 11]);
        assert!(found[0].message.contains("bottom layer"), "{}", found[0]);
        assert!(found[1].message.contains("`mproc-pool`"), "{}", found[1]);
    }

    #[test]
    fn layering_reports_unknown_crates() {
        let found = check_layering("crates/x/Cargo.toml", "[package]\nname = \"mproc-x\"\n");
        assert_eq!(lines(&found), [2]);
        assert!(found[0].message.contains("LAYERS"));
        assert_eq!(lines(&check_layering("Cargo.toml", "[lints]\n")), [1]);
    }

    #[test]
    fn the_real_ipc_manifest_parses() {
        let root = crate::workspace_root();
        let text = fs::read_to_string(root.join("crates/ipc/Cargo.toml")).unwrap();
        let manifest = parse_manifest(&text);
        assert_eq!(manifest.name.map(|(_, n)| n).as_deref(), Some("mproc-ipc"));
        assert!(manifest.lints_workspace);
        assert!(manifest.dependencies.iter().any(|d| d.name == "rustix" && d.kind == DepKind::Normal));
    }
}
