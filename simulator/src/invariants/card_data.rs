//! Card data: nowhere at rest or in the open, in any form.

use std::collections::BTreeSet;

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{Check, InvariantResult, Observations};
use crate::driver::Answer;

/// The card-data check's material: the secrets the run sent, and
/// everything it captured from the gateway besides its answers (which are
/// in the flows and receipts).
#[derive(Debug, Clone, Default)]
pub struct CardData {
    /// Every card number the run used: its fresh cards, and the invalid and
    /// unknown numbers it sent.
    pub numbers: Vec<String>,
    /// Every CVV it sent.
    pub cvvs: Vec<String>,
    /// Every request it sent: (path, body as sent).
    pub requests: Vec<(String, String)>,
    /// The gateway's database, one `(table, row_to_json(row))` per row.
    pub dump: Vec<(String, String)>,
    /// The gateway replicas' log files: `(path, contents)`.
    pub logs: Vec<(String, String)>,
    /// What could not be collected (the dump failed, a log was unreadable).
    pub problems: Vec<String>,
}

/// The plain digests (hex) that a careless fingerprint would store, for
/// each request: of method, path and canonical body (as the gateway once
/// did), of the canonical body, and of the body as sent.
fn digests(requests: &[(String, String)]) -> std::collections::HashMap<String, String> {
    let mut out = std::collections::HashMap::new();
    for (path, body) in requests {
        let Ok(value) = serde_json::from_str::<Value>(body) else {
            continue;
        };
        let canonical = service_kit::json::canonical(&value).to_string();
        for (preimage, what) in [
            (
                format!("POST\n{path}\n{canonical}"),
                "a request (method, path, body)",
            ),
            (canonical.clone(), "a request body (canonical)"),
            (body.clone(), "a request body (as sent)"),
        ] {
            out.insert(
                hex::encode(Sha256::digest(preimage.as_bytes())),
                what.to_owned(),
            );
        }
    }
    out
}

/// 12: no card number the run used appears anywhere the gateway wrote or
/// said: a row of its database, a line of its logs, an answer, a receipt;
/// no CVV either, as the value of a `cvv`/`cvc` key anywhere, or (in the
/// database) as a whole string value. `bytea` values (e.g. stored response
/// bodies) are decoded and scanned too. Nor is any plain digest of a
/// request the run sent stored: with the brand, the last four digits, the
/// expiry and the amount beside it, one would give the card away to a
/// brute force in seconds.
pub fn card_data(obs: &Observations) -> InvariantResult {
    let mut c = Check::new(obs, 12);
    let data = &obs.card_data;
    let secrets = Secrets::new(data);
    for problem in &data.problems {
        c.other("card data".into(), format!("not scanned: {problem}"));
    }
    let digests = digests(&data.requests);
    for (table, row) in &data.dump {
        c.checked += 1;
        for leak in secrets.in_row(row) {
            c.other(format!("table {table}"), leak);
        }
        for what in hex_words(row).filter_map(|word| digests.get(&word)) {
            c.other(
                format!("table {table}"),
                format!("the plain SHA-256 of {what} is stored: anyone with the dump can test card numbers against it"),
            );
        }
    }
    for (path, text) in &data.logs {
        for (n, line) in text.lines().enumerate() {
            c.checked += 1;
            for leak in secrets.in_text(line) {
                c.other(format!("{path} line {}", n + 1), leak);
            }
        }
    }
    for (i, flow) in obs.flows.iter().enumerate() {
        for exchange in &flow.exchanges {
            if let Answer::Http { body, .. } = &exchange.answer {
                c.checked += 1;
                for leak in secrets.in_text(body) {
                    c.flow(
                        i,
                        format!("{} answer {}: {leak}", exchange.op, exchange.key),
                    );
                }
            }
        }
    }
    for (i, flow) in obs.flows.iter().enumerate() {
        for read in &flow.reads {
            if let Answer::Http { body, .. } = &read.answer {
                c.checked += 1;
                for leak in secrets.in_text(body) {
                    c.flow(i, format!("{}: {leak}", read.describe()));
                }
            }
        }
    }
    for (i, receipts) in obs.receipts.iter().enumerate() {
        for receipt in receipts {
            c.checked += 1;
            for leak in secrets.in_text(&receipt.to_string()) {
                c.flow(i, format!("the receipt: {leak}"));
            }
        }
    }
    c.done()
}

/// Every 64-hex-digit window of the row's runs of hex digits, lowercased:
/// where a SHA-256 would be (a `bytea` is `\\x` and hex in a dump).
fn hex_words(row: &str) -> impl Iterator<Item = String> + '_ {
    const DIGEST_HEX_LEN: usize = 64;
    row.split(|c: char| !c.is_ascii_hexdigit())
        .filter(|run| run.len() >= DIGEST_HEX_LEN)
        .flat_map(|run| {
            (0..=run.len() - DIGEST_HEX_LEN)
                .map(move |at| run[at..at + DIGEST_HEX_LEN].to_ascii_lowercase())
        })
}

/// The card numbers and CVVs to look for.
struct Secrets<'a> {
    numbers: BTreeSet<&'a str>,
    lengths: BTreeSet<usize>,
    cvvs: BTreeSet<&'a str>,
}

impl<'a> Secrets<'a> {
    fn new(data: &'a CardData) -> Self {
        let numbers: BTreeSet<&str> = data
            .numbers
            .iter()
            .map(String::as_str)
            .filter(|n| n.len() >= 8)
            .collect();
        Self {
            lengths: numbers.iter().map(|n| n.len()).collect(),
            numbers,
            cvvs: data
                .cvvs
                .iter()
                .map(String::as_str)
                .filter(|c| !c.is_empty())
                .collect(),
        }
    }

    /// Leaks in free text (a log line, an answer): card numbers anywhere in
    /// a run of digits, CVVs as the value of a `cvv`/`cvc` key.
    fn in_text(&self, text: &str) -> Vec<String> {
        let mut found: Vec<String> = self
            .numbers_in(text)
            .into_iter()
            .map(|n| format!("card number {} appears", masked(n)))
            .collect();
        if self.cvv_by_key(text) {
            found.push("a CVV appears as the value of a cvv key".into());
        }
        found
    }

    /// Leaks in a row: as in text, in the row and in each decoded `bytea`;
    /// and CVVs as whole string values.
    fn in_row(&self, row: &str) -> Vec<String> {
        let mut found = self.in_text(row);
        let mut strings = Vec::new();
        if let Ok(value) = serde_json::from_str::<Value>(row) {
            collect_strings(&value, &mut strings);
        }
        let mut i = 0;
        while i < strings.len() {
            if let Some(decoded) = decode_bytea(&strings[i]) {
                found.extend(
                    self.in_text(&decoded)
                        .into_iter()
                        .map(|leak| format!("{leak} (in a bytea value)")),
                );
                if let Ok(value) = serde_json::from_str::<Value>(&decoded) {
                    collect_strings(&value, &mut strings);
                }
            }
            i += 1;
        }
        if strings.iter().any(|s| self.cvvs.contains(s.as_str())) {
            found.push("a CVV appears as a string value".into());
        }
        found.sort();
        found.dedup();
        found
    }

    /// The numbers found in `text`'s runs of digits.
    fn numbers_in(&self, text: &str) -> BTreeSet<&'a str> {
        let mut found = BTreeSet::new();
        let Some(&shortest) = self.lengths.first() else {
            return found;
        };
        let bytes = text.as_bytes();
        let mut start = 0;
        while start < bytes.len() {
            if !bytes[start].is_ascii_digit() {
                start += 1;
                continue;
            }
            let end = bytes[start..]
                .iter()
                .position(|b| !b.is_ascii_digit())
                .map_or(bytes.len(), |n| start + n);
            if end - start >= shortest {
                let run = &text[start..end];
                for &len in self.lengths.iter().filter(|&&len| len <= run.len()) {
                    for at in 0..=run.len() - len {
                        if let Some(&number) = self.numbers.get(&run[at..at + len]) {
                            found.insert(number);
                        }
                    }
                }
            }
            start = end;
        }
        found
    }

    /// Whether a `cvv` or `cvc` key (any case, quoted or not, `:` or `=`)
    /// is followed by one of the CVVs: `"cvv":"123"`, `\"cvv\": \"123\"`,
    /// `cvv=123`. Not `invalid_cvv` and the like: no digits follow.
    fn cvv_by_key(&self, text: &str) -> bool {
        let bytes = text.as_bytes();
        (0..bytes.len().saturating_sub(2)).any(|i| {
            let key = &bytes[i..i + 3];
            if !(key.eq_ignore_ascii_case(b"cvv") || key.eq_ignore_ascii_case(b"cvc")) {
                return false;
            }
            let rest = &bytes[i + 3..];
            let skipped = rest
                .iter()
                .take(8)
                .take_while(|b| matches!(b, b'"' | b'\\' | b':' | b'=' | b' ' | b'\''))
                .count();
            let digits: Vec<u8> = rest[skipped..]
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .copied()
                .collect();
            skipped > 0 && std::str::from_utf8(&digits).is_ok_and(|d| self.cvvs.contains(d))
        })
    }
}

/// `…1111`: never the whole number in a report.
fn masked(number: &str) -> String {
    format!("…{}", &number[number.len().saturating_sub(4)..])
}

fn collect_strings(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::String(s) => out.push(s.clone()),
        Value::Array(items) => items.iter().for_each(|v| collect_strings(v, out)),
        Value::Object(fields) => fields.values().for_each(|v| collect_strings(v, out)),
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// A `bytea` as `row_to_json` writes it (`\x` and hex), decoded as text.
fn decode_bytea(value: &str) -> Option<String> {
    let hex = value.strip_prefix("\\x")?;
    if hex.len() % 2 != 0 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .filter_map(|i| u8::from_str_radix(&hex[i..i + 2], 16).ok())
        .collect();
    Some(String::from_utf8_lossy(&bytes).into_owned())
}
