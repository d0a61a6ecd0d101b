//! The repository's documentation stays true to the code and to itself:
//! every relative link in its Markdown resolves inside the repository (to a
//! file a clone has, and to a heading that exists); `docs/api.md` names
//! every path and method of the OpenAPI document, every parameter and
//! schema field, every payment status, event type and error code the
//! gateway can answer; `docs/bank.md` every route, error code and chaos
//! setting of the mock bank; `docs/test-cards.md` every seeded card; and
//! `docs/payment-lifecycle.md` embeds the generated state diagram.
//!
//! None of this needs a database: the OpenAPI documents are built in
//! process, as the services serve them, and the code the gateway answers
//! with is read from its source.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use utoipa::OpenApi;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the gateway crate sits in the workspace")
        .to_path_buf()
}

fn read(relative: &str) -> String {
    let path = root().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

// ---------------------------------------------------------------------------
// Links
// ---------------------------------------------------------------------------

/// The files a clone would have, relative to the root: what git tracks,
/// plus files not yet added that git does not ignore (so a new page can be
/// checked before its commit). Without git (a source archive), every file
/// outside `target/` and hidden directories.
fn repository_files() -> BTreeSet<PathBuf> {
    let root = root();
    let listed = Command::new("git")
        .args([
            "ls-files",
            "-z",
            "--cached",
            "--others",
            "--exclude-standard",
        ])
        .current_dir(&root)
        .output()
        .ok()
        .filter(|out| out.status.success());
    match listed {
        Some(out) => out
            .stdout
            .split(|b| *b == 0)
            .filter(|name| !name.is_empty())
            .map(|name| PathBuf::from(String::from_utf8_lossy(name).into_owned()))
            .filter(|name| root.join(name).exists())
            .collect(),
        None => {
            let mut files = BTreeSet::new();
            walk(&root, &root, &mut files);
            files
        }
    }
}

fn walk(root: &Path, dir: &Path, files: &mut BTreeSet<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || name == "target" {
            continue;
        }
        if path.is_dir() {
            walk(root, &path, files);
        } else if let Ok(relative) = path.strip_prefix(root) {
            files.insert(relative.to_path_buf());
        }
    }
}

/// Markdown with its fenced code blocks and inline code spans blanked out
/// (line structure kept), so that examples are not taken for links.
fn without_code(markdown: &str) -> String {
    let mut out = String::with_capacity(markdown.len());
    let mut fenced = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            out.push('\n');
            continue;
        }
        if fenced {
            out.push('\n');
            continue;
        }
        let mut in_code = false;
        for c in line.chars() {
            if c == '`' {
                in_code = !in_code;
                out.push(' ');
            } else if in_code {
                out.push(' ');
            } else {
                out.push(c);
            }
        }
        out.push('\n');
    }
    out
}

/// The destinations of a Markdown page's links: inline `[text](dest)` and
/// `![alt](dest)`, and reference definitions `[name]: dest`, outside code.
fn link_destinations(markdown: &str) -> Vec<String> {
    let text = without_code(markdown);
    let mut found = Vec::new();
    for line in text.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with('[')
            && let Some(end) = trimmed.find("]:")
        {
            let dest = trimmed[end + 2..].split_whitespace().next().unwrap_or("");
            if !dest.is_empty() {
                found.push(dest.trim_matches(['<', '>']).to_owned());
            }
        }
    }
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(offset) = text[i..].find("](") {
        let start = i + offset + 2;
        let mut depth = 1;
        let mut end = start;
        while end < bytes.len() && bytes[end] != b'\n' {
            match bytes[end] {
                b'(' => depth += 1,
                b')' => {
                    depth -= 1;
                    if depth == 0 {
                        break;
                    }
                }
                _ => {}
            }
            end += 1;
        }
        if depth == 0 {
            let inside = text[start..end].trim();
            let dest = inside.split_whitespace().next().unwrap_or("");
            found.push(dest.trim_matches(['<', '>']).to_owned());
        }
        i = end.max(start);
    }
    found
}

/// GitHub's anchor for a heading's text: lowercase, inline markup dropped,
/// every character but letters, digits, `_`, `-` and spaces removed,
/// spaces made `-`.
fn github_slug(heading: &str) -> String {
    let mut text = String::new();
    // `[text](dest)` renders as `text`.
    let mut rest = heading;
    while let Some(open) = rest.find('[') {
        let Some(mid) = rest[open..].find("](") else {
            break;
        };
        let Some(close) = rest[open + mid..].find(')') else {
            break;
        };
        text.push_str(&rest[..open]);
        text.push_str(&rest[open + 1..open + mid]);
        rest = &rest[open + mid + close + 1..];
    }
    text.push_str(rest);
    text.to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | ' '))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// Every anchor a Markdown page's headings give, with GitHub's `-1`, `-2`
/// for repeated ones.
fn anchors(markdown: &str) -> BTreeSet<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut anchors = BTreeSet::new();
    let mut fenced = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        let hashes = line.chars().take_while(|c| *c == '#').count();
        if !(1..=6).contains(&hashes) || !line[hashes..].starts_with(' ') {
            continue;
        }
        let slug = github_slug(line[hashes..].trim().trim_end_matches('#').trim());
        let count = seen.entry(slug.clone()).or_insert(0);
        anchors.insert(if *count == 0 {
            slug.clone()
        } else {
            format!("{slug}-{count}")
        });
        *count += 1;
    }
    anchors
}

/// `dir/../x` as `x`, without touching the file system; `None` when it
/// climbs out of the repository.
fn normalize(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::Normal(name) => out.push(name),
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// What is wrong with each relative link of the page `from` (a path
/// relative to the root), given the repository's files.
fn broken_links(from: &Path, markdown: &str, files: &BTreeSet<PathBuf>) -> Vec<String> {
    let mut broken = Vec::new();
    for dest in link_destinations(markdown) {
        let external = dest.contains("://")
            || dest.starts_with("mailto:")
            || dest.starts_with("//")
            || dest.is_empty();
        if external {
            continue;
        }
        let (path, anchor) = match dest.split_once('#') {
            Some((path, anchor)) => (path, Some(anchor)),
            None => (dest.as_str(), None),
        };
        let target = if path.is_empty() {
            Some(from.to_path_buf())
        } else if path.starts_with('/') {
            normalize(Path::new(path.trim_start_matches('/')))
        } else {
            normalize(&from.parent().unwrap_or(Path::new("")).join(path))
        };
        let Some(target) = target else {
            broken.push(format!("{dest}: points outside the repository"));
            continue;
        };
        let is_file = files.contains(&target);
        let is_dir = files.iter().any(|f| f.starts_with(&target) && *f != target);
        if !is_file && !is_dir {
            broken.push(format!("{dest}: no such file in the repository"));
            continue;
        }
        let markdown_target = target.extension().is_some_and(|e| e == "md");
        if let (Some(anchor), true, true) = (anchor, is_file, markdown_target) {
            let page = std::fs::read_to_string(root().join(&target)).unwrap_or_default();
            if !anchors(&page).contains(anchor) {
                broken.push(format!(
                    "{dest}: {} has no heading with the anchor #{anchor}",
                    target.display()
                ));
            }
        }
    }
    broken
}

#[test]
fn every_relative_link_in_the_markdown_resolves_in_a_clone() {
    let files = repository_files();
    let pages: Vec<&PathBuf> = files
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "md"))
        .collect();
    for required in ["README.md", "TRADEOFFS.md", "docs/README.md", "docs/api.md"] {
        assert!(
            pages.iter().any(|p| p.as_path() == Path::new(required)),
            "{required} is not among the repository's Markdown files: {pages:?}"
        );
    }
    let mut broken = Vec::new();
    let mut checked = 0;
    for page in &pages {
        let markdown = read(&page.to_string_lossy());
        checked += link_destinations(&markdown).len();
        for problem in broken_links(page, &markdown, &files) {
            broken.push(format!("{}: {problem}", page.display()));
        }
    }
    assert!(
        checked > 20,
        "only {checked} links found: is the parser blind?"
    );
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn the_link_checker_catches_what_it_should() {
    let files: BTreeSet<PathBuf> = ["README.md", "docs/api.md", "gateway/src/lib.rs"]
        .into_iter()
        .map(PathBuf::from)
        .collect();
    let page = Path::new("docs/guide.md");
    let ok = "[a](api.md) [b](../README.md) [c](../gateway) [d](https://x.test/y) \
              `[e](nowhere.md)`\n```\n[f](nowhere.md)\n```\n[g]: api.md\n";
    assert_eq!(broken_links(page, ok, &files), Vec::<String>::new());
    let dead = "[a](../../shared/gateway-api.md) [b](nowhere.md) [c](../gateway/src/nope.rs)\n\
                [d]: missing.md\n";
    assert_eq!(broken_links(page, dead, &files).len(), 4);
    assert_eq!(github_slug("`POST /v1/payments`"), "post-v1payments");
    assert_eq!(
        github_slug("Keys, limits and rate limits"),
        "keys-limits-and-rate-limits"
    );
    assert_eq!(
        github_slug("The [bank](bank.md)'s contract"),
        "the-banks-contract"
    );
    let twice = anchors("# A\n## Errors\n```\n# Not\n```\n### Errors\n");
    assert_eq!(
        twice,
        ["a", "errors", "errors-1"]
            .into_iter()
            .map(String::from)
            .collect()
    );
}

// ---------------------------------------------------------------------------
// docs/api.md against the gateway
// ---------------------------------------------------------------------------

fn openapi(doc: utoipa::openapi::OpenApi) -> Value {
    serde_json::to_value(doc).expect("the OpenAPI document serializes")
}

const METHODS: [&str; 7] = ["get", "post", "put", "delete", "patch", "head", "options"];

/// (METHOD, path) of every operation in an OpenAPI document.
fn operations(doc: &Value) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in METHODS {
            if item.get(method).is_some() {
                found.push((method.to_uppercase(), path.clone()));
            }
        }
    }
    found
}

/// The lines of `markdown` under the heading `title` (any level), up to
/// the next heading of the same or a higher level.
fn section<'a>(markdown: &'a str, title: &str) -> Vec<&'a str> {
    let mut lines = markdown.lines();
    let level = loop {
        let Some(line) = lines.next() else {
            panic!("no heading {title:?}");
        };
        let hashes = line.chars().take_while(|c| *c == '#').count();
        if hashes > 0 && line[hashes..].trim() == title {
            break hashes;
        }
    };
    lines
        .take_while(|line| {
            let hashes = line.chars().take_while(|c| *c == '#').count();
            hashes == 0 || hashes > level || !line[hashes..].starts_with(' ')
        })
        .collect()
}

/// The first cell of every table row of a section, code marks removed.
fn first_cells(lines: &[&str]) -> BTreeSet<String> {
    lines
        .iter()
        .filter(|line| line.starts_with('|'))
        .filter_map(|line| line.split('|').nth(1))
        .map(|cell| cell.trim().trim_matches('`').to_owned())
        .collect()
}

/// A name documented as a field: `` `name` ``, or the end of a path such
/// as `` `card.name` `` or `` `history[].name` ``.
fn names_field(markdown: &str, name: &str) -> bool {
    markdown.contains(&format!("`{name}`")) || markdown.contains(&format!(".{name}`"))
}

#[test]
fn the_api_reference_has_every_path_and_method_of_the_openapi_document() {
    let api = read("docs/api.md");
    let doc = openapi(gateway::api::ApiDoc::openapi());
    let mut missing = Vec::new();
    let served = operations(&doc);
    assert!(served.len() >= 18, "{served:?}");
    for (method, path) in served {
        let named = format!("`{method} {path}`");
        if !api.contains(&named) {
            missing.push(named);
        }
    }
    // Served beside the document's operations, on either listener.
    for named in [
        "`GET /ready`",
        "`GET /metrics`",
        "`GET /openapi.json`",
        "`GET /docs`",
    ] {
        if !api.contains(named) {
            missing.push(named.to_owned());
        }
    }
    assert!(missing.is_empty(), "docs/api.md lacks {missing:?}");
}

#[test]
fn the_api_reference_has_every_parameter_and_schema_field() {
    let api = read("docs/api.md");
    let doc = openapi(gateway::api::ApiDoc::openapi());
    let mut missing = BTreeSet::new();
    for item in doc["paths"].as_object().expect("paths").values() {
        for method in METHODS {
            let parameters = item[method]["parameters"].as_array().cloned();
            for parameter in parameters.unwrap_or_default() {
                let name = parameter["name"].as_str().expect("a parameter's name");
                if !names_field(&api, name) {
                    missing.insert(format!("parameter {name}"));
                }
            }
        }
    }
    let schemas = doc["components"]["schemas"].as_object().expect("schemas");
    assert!(schemas.contains_key("PaymentView"), "{:?}", schemas.keys());
    for (schema, body) in schemas {
        let properties = body["properties"].as_object().cloned().unwrap_or_default();
        for name in properties.keys() {
            if !names_field(&api, name) {
                missing.insert(format!("{schema}.{name}"));
            }
        }
    }
    assert!(missing.is_empty(), "docs/api.md lacks {missing:?}");
}

#[test]
fn the_api_reference_has_every_payment_status_and_event_type() {
    let api = read("docs/api.md");
    let statuses = first_cells(&section(&api, "Payment statuses"));
    for status in gateway::domain::PaymentStatus::ALL {
        assert!(
            statuses.contains(status.as_str()),
            "docs/api.md's \"Payment statuses\" table lacks {status}"
        );
    }
    let types = first_cells(&section(&api, "Event types"));
    for kind in gateway::domain::EventType::ALL {
        assert!(
            types.contains(kind.as_str()),
            "docs/api.md's \"Event types\" table lacks {kind}"
        );
    }
}

/// The text of the call that starts at `open` (just after its `(`), up to
/// its closing parenthesis, split at its top-level commas.
fn call_arguments(source: &str, open: usize) -> Vec<String> {
    let mut args = vec![String::new()];
    let mut depth = 0;
    let mut in_string = false;
    let mut escaped = false;
    for c in source[open..].chars() {
        if in_string {
            args.last_mut().expect("one").push(c);
            match (escaped, c) {
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => escaped = false,
            }
            continue;
        }
        match c {
            '"' => in_string = true,
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' if depth == 0 => break,
            ')' | ']' | '}' => depth -= 1,
            ',' if depth == 0 => {
                args.push(String::new());
                continue;
            }
            _ => {}
        }
        args.last_mut().expect("one").push(c);
    }
    args.into_iter().map(|a| a.trim().to_owned()).collect()
}

/// The string an expression is, when it is a plain string literal.
fn literal(expression: &str) -> Option<String> {
    let inner = expression.strip_prefix('"')?.strip_suffix('"')?;
    (!inner.contains('"')).then(|| inner.to_owned())
}

/// Every string literal in the body of each `fn {name}(` in `source`.
fn literals_of_fns(source: &str, name: &str) -> Vec<String> {
    let mut found = Vec::new();
    for (at, _) in source.match_indices(&format!("fn {name}(")) {
        let body_start = at + source[at..].find('{').expect("a body");
        let mut depth = 0;
        let mut body_end = body_start;
        for (i, c) in source[body_start..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        body_end = body_start + i;
                        break;
                    }
                }
                _ => {}
            }
        }
        let body = &source[body_start..body_end];
        found.extend(body.split('"').skip(1).step_by(2).map(str::to_owned));
    }
    found
}

fn rust_sources(dir: &Path, out: &mut Vec<(PathBuf, String)>) {
    for entry in std::fs::read_dir(dir)
        .expect("a source directory")
        .flatten()
    {
        let path = entry.path();
        if path.is_dir() {
            rust_sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).expect("a source file");
            out.push((path, text));
        }
    }
}

/// Every error `type` and `code` the gateway can put in an error object,
/// read from its source: the literal arguments of `ErrorBody::new`, the
/// `code: "…"` of its refusals, the bodies of its `fn code`s (the domain's
/// and the state machine's), the code of an abandoned authorization, and
/// the bank's refusals it passes on as declines.
fn gateway_error_codes() -> (BTreeSet<String>, BTreeSet<String>) {
    let mut sources = Vec::new();
    rust_sources(&root().join("gateway/src"), &mut sources);
    let mut types = BTreeSet::new();
    let mut codes = BTreeSet::new();
    for (path, source) in &sources {
        if path.components().any(|c| c.as_os_str() == "faults") {
            continue;
        }
        for (at, call) in source.match_indices("ErrorBody::new(") {
            let args = call_arguments(source, at + call.len());
            types.extend(args.first().and_then(|a| literal(a)));
            codes.extend(args.get(1).and_then(|a| literal(a)));
        }
        for (at, _) in source.match_indices("code: \"") {
            let rest = &source[at + "code: \"".len()..];
            codes.insert(rest[..rest.find('"').expect("a closed literal")].to_owned());
        }
        let is_domain = path.ends_with("domain/error.rs") || path.ends_with("domain/status.rs");
        if is_domain {
            codes.extend(literals_of_fns(source, "code"));
        }
        if path.ends_with("api/error.rs") {
            // The error object given to a bare answer, by its status: the
            // codes it names (its other literals are types, a fallback
            // reason and a separator, dropped below), and the two made
            // from a status that a client meets most.
            codes.extend(literals_of_fns(source, "bare_error_body"));
            codes.extend(["bad_request".to_owned(), "method_not_allowed".to_owned()]);
        }
    }
    codes.insert(gateway::payments::ABANDONED.to_owned());
    codes.extend(decline_codes());
    types.retain(|t| t.ends_with("_error"));
    codes.retain(|c| {
        !types.contains(c)
            && c.contains('_')
            && !c.starts_with('_')
            && c.chars().all(|ch| ch.is_ascii_lowercase() || ch == '_')
    });
    (types, codes)
}

/// The bank's codes the gateway answers as a decline (402 `card_error`):
/// the refusals `meaning` maps to `Declined`, named as the bank's wire
/// names them.
fn decline_codes() -> Vec<String> {
    let bank_call = read("gateway/src/payments/bank_call.rs");
    let start = bank_call.find("fn meaning(").expect("fn meaning");
    let end = start
        + bank_call[start..]
            .find("=> M::Declined")
            .expect("a Declined arm");
    let variants: Vec<&str> = bank_call[start..end]
        .split("C::")
        .skip(1)
        .map(|rest| {
            rest.split(|c: char| !c.is_alphanumeric())
                .next()
                .unwrap_or("")
        })
        .collect();
    let wire = read("gateway/src/bank/wire.rs");
    let codes: Vec<String> = variants
        .iter()
        .map(|variant| {
            let arm = format!("BankErrorCode::{variant} => \"");
            let at = wire.find(&arm).unwrap_or_else(|| panic!("{arm}")) + arm.len();
            wire[at..at + wire[at..].find('"').expect("closed")].to_owned()
        })
        .collect();
    assert_eq!(codes.len(), 4, "{codes:?}");
    codes
}

#[test]
fn the_api_reference_has_every_error_type_and_code_the_gateway_answers() {
    let api = read("docs/api.md");
    let (types, codes) = gateway_error_codes();
    // The scan itself must still see what it is meant to.
    for expected in [
        "parameter_invalid",
        "amount_too_small",
        "invalid_state",
        "authorization_expired",
        "idempotency_key_reused",
        "bank_error",
        "insufficient_funds",
        "resource_missing",
        "endpoint_limit_reached",
        "invalid_json",
    ] {
        assert!(
            codes.contains(expected),
            "the scan missed {expected}: {codes:?}"
        );
    }
    assert_eq!(types.len(), 6, "{types:?}");
    let table = first_cells(&section(&api, "Error codes"));
    let undocumented: Vec<&String> = codes.iter().filter(|c| !table.contains(*c)).collect();
    assert!(
        undocumented.is_empty(),
        "docs/api.md's \"Error codes\" table lacks {undocumented:?}"
    );
    let errors = section(&api, "Errors").join("\n");
    let untyped: Vec<&String> = types
        .iter()
        .filter(|t| !errors.contains(&format!("`{t}`")))
        .collect();
    assert!(
        untyped.is_empty(),
        "docs/api.md's \"Errors\" lacks {untyped:?}"
    );
}

// ---------------------------------------------------------------------------
// The other pages
// ---------------------------------------------------------------------------

#[test]
fn the_bank_page_has_every_route_error_code_and_chaos_setting() {
    let bank = read("docs/bank.md");
    let doc = openapi(mock_bank::api::ApiDoc::openapi());
    let mut missing = Vec::new();
    let mut routes = operations(&doc);
    // Served but left out of the bank's own document.
    routes.push(("POST".into(), "/api/v1/authorizations/resolve".into()));
    for (method, path) in routes {
        let named = format!("`{method} {path}`");
        if !bank.contains(&named) {
            missing.push(named);
        }
    }
    let source = read("mock-bank/src/api/error.rs");
    let codes = literals_of_fns(&source, "code");
    assert!(codes.len() >= 19, "{codes:?}");
    let table = first_cells(&section(&bank, "Errors"));
    for code in codes {
        if !table.contains(&code) {
            missing.push(format!("error code {code}"));
        }
    }
    let chaos = serde_json::to_value(mock_bank::chaos::ChaosConfig::calm(0)).expect("json");
    let settings = first_cells(&section(&bank, "Chaos"));
    for field in chaos.as_object().expect("an object").keys() {
        if !settings.contains(field) {
            missing.push(format!("chaos setting {field}"));
        }
    }
    assert!(missing.is_empty(), "docs/bank.md lacks {missing:?}");
}

#[test]
fn the_test_card_table_has_every_seeded_card() {
    let cards = read("docs/test-cards.md");
    for (number, cvv, month, year, balance) in mock_bank::operations::TEST_CARDS {
        let row = cards
            .lines()
            .find(|line| line.starts_with(&format!("| `{number}` |")))
            .unwrap_or_else(|| panic!("docs/test-cards.md has no row for {number}"));
        let dollars = balance / 100;
        let separated = dollars
            .to_string()
            .as_bytes()
            .rchunks(3)
            .rev()
            .map(|chunk| std::str::from_utf8(chunk).expect("digits"))
            .collect::<Vec<_>>()
            .join(",");
        for expected in [
            format!("`{cvv}`"),
            format!("{month:02}/{year}"),
            format!("${separated}"),
        ] {
            assert!(row.contains(&expected), "{number}: {expected} not in {row}");
        }
    }
}

#[test]
fn the_lifecycle_page_embeds_the_generated_state_diagram() {
    let page = read("docs/payment-lifecycle.md");
    let diagram = gateway::domain::mermaid_state_diagram();
    let embedded = page
        .split("```mermaid\n")
        .skip(1)
        .filter_map(|rest| rest.split("```").next())
        .find(|block| block.starts_with("stateDiagram-v2"))
        .expect("a ```mermaid stateDiagram-v2 block in docs/payment-lifecycle.md");
    assert_eq!(
        embedded, diagram,
        "regenerate it with `cargo run -p gateway -- state-diagram`"
    );
}
