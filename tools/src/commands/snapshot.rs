//! `tally-wal snapshot FILE`: one snapshot file's header, checksum verdict and, for KV
//! snapshots, the applied index, the session table and every key and value.

use std::io::Write;
use std::path::Path;

use serde_json::{json, Map, Value};
use tally_engine::kv::{read_stream, KvLimits, KvResponse, KvSnapshotContents};
use tally_engine::raft::Configuration;
use tally_wal::snapshot::{
    parse_layout, verify_bytes, SnapshotLayout, SNAPSHOT_FOOTER_BYTES, SNAPSHOT_FORMAT_VERSION,
};

use crate::decode::{configuration_json, configuration_text, hex, json_bytes, quote_bytes};
use crate::error::{Outcome, ToolError};
use crate::snapshots::map_file;

/// First bytes of the KV state machine's snapshot stream.
const KV_STREAM_MAGIC: &[u8] = b"TKVS";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapshotFormat {
    Text,
    Json,
}

/// What the file holds, as far as it could be read.
struct Findings {
    name: String,
    size_bytes: u64,
    /// Header and footer, if they parse (even when the CRC does not match).
    layout: Result<SnapshotLayout, String>,
    /// Full verification (CRC and name) verdict.
    checksum: Result<(), String>,
    /// The KV stream, when the file verifies and holds one.
    kv: Option<Result<KvSnapshotContents, String>>,
}

fn inspect(path: &Path, display: &str) -> Result<Findings, ToolError> {
    let bytes = map_file(path, display)?;
    let bytes = bytes.bytes();
    let name = path
        .file_name()
        .map_or_else(|| display.to_string(), |n| n.to_string_lossy().into_owned());
    let layout = parse_layout(&name, bytes).map_err(|e| e.to_string());
    let checksum = verify_bytes(&name, bytes)
        .map(|_| ())
        .map_err(|e| e.to_string());
    let kv = match (&layout, &checksum) {
        (Ok(layout), Ok(())) => {
            let start = layout.data_offset as usize;
            let data = &bytes[start..start + layout.data_len_bytes as usize];
            data.starts_with(KV_STREAM_MAGIC).then(|| {
                read_stream(&mut &data[..], &KvLimits::default()).map_err(|e| e.to_string())
            })
        }
        _ => None,
    };
    Ok(Findings {
        name,
        size_bytes: bytes.len() as u64,
        layout,
        checksum,
        kv,
    })
}

pub fn snapshot(
    path: &Path,
    format: SnapshotFormat,
    out: &mut dyn Write,
) -> Result<Outcome, ToolError> {
    let display = path.display().to_string();
    let findings = inspect(path, &display)?;
    match format {
        SnapshotFormat::Text => write_text(&findings, out)?,
        SnapshotFormat::Json => {
            serde_json::to_writer(&mut *out, &to_json(&findings)).map_err(std::io::Error::from)?;
            writeln!(out)?;
        }
    }
    let clean = findings.checksum.is_ok() && !matches!(findings.kv, Some(Err(_)));
    Ok(if clean {
        Outcome::Clean
    } else {
        Outcome::Problems
    })
}

fn configuration_line(raw: &[u8]) -> String {
    if raw.is_empty() {
        return "none (empty)".into();
    }
    match Configuration::decode(raw) {
        Ok(config) => configuration_text(&config),
        Err(err) => format!("<{} bytes, not a configuration: {err}>", raw.len()),
    }
}

fn reply_text(reply: &KvResponse) -> String {
    match reply {
        KvResponse::Ok => "OK".into(),
        KvResponse::Integer(n) => format!("(integer) {n}"),
        KvResponse::Bulk(None) => "(nil)".into(),
        KvResponse::Bulk(Some(bytes)) => quote_bytes(bytes),
        KvResponse::Array(items) => {
            let items: Vec<String> = items
                .iter()
                .map(|i| i.as_ref().map_or("(nil)".into(), |b| quote_bytes(b)))
                .collect();
            format!("[{}]", items.join(", "))
        }
        KvResponse::Error(err) => format!("(error) {err}"),
        other => format!("{other:?}"),
    }
}

fn write_text(findings: &Findings, out: &mut dyn Write) -> Result<(), ToolError> {
    writeln!(out, "file: {}", findings.name)?;
    writeln!(out, "size: {} bytes", findings.size_bytes)?;
    match &findings.layout {
        Ok(layout) => {
            let header = &layout.header;
            writeln!(out, "format: version {SNAPSHOT_FORMAT_VERSION}")?;
            writeln!(out, "index: {}", header.index)?;
            writeln!(out, "term: {}", header.term)?;
            writeln!(
                out,
                "configuration: {}",
                configuration_line(&header.configuration)
            )?;
            writeln!(
                out,
                "layout: header {} bytes, data {} bytes, footer {SNAPSHOT_FOOTER_BYTES} bytes",
                layout.data_offset, layout.data_len_bytes
            )?;
        }
        Err(reason) => writeln!(out, "header: unreadable: {reason}")?,
    }
    match &findings.checksum {
        Ok(()) => writeln!(out, "checksum: ok")?,
        Err(reason) => writeln!(out, "checksum: INVALID: {reason}")?,
    }
    match &findings.kv {
        None if findings.checksum.is_ok() => writeln!(
            out,
            "state machine: not a KV snapshot stream (no TKVS magic)"
        )?,
        None => writeln!(out, "state machine: not read (the file does not verify)")?,
        Some(Err(reason)) => writeln!(out, "state machine: KV snapshot, INVALID: {reason}")?,
        Some(Ok(kv)) => write_kv_text(kv, out)?,
    }
    Ok(())
}

fn write_kv_text(kv: &KvSnapshotContents, out: &mut dyn Write) -> Result<(), ToolError> {
    writeln!(out, "state machine: KV snapshot")?;
    writeln!(out, "applied index: {}", kv.applied_index)?;
    writeln!(out, "sessions: {}", kv.sessions.len())?;
    for s in &kv.sessions {
        writeln!(
            out,
            "  client {} last sequence {} at index {}: {}",
            s.client_id,
            s.last_sequence,
            s.last_index,
            reply_text(&s.reply)
        )?;
    }
    writeln!(out, "keys: {}", kv.entries.len())?;
    for (key, value) in &kv.entries {
        writeln!(out, "  {} = {}", quote_bytes(key), quote_bytes(value))?;
    }
    Ok(())
}

fn reply_json(reply: &KvResponse) -> Value {
    match reply {
        KvResponse::Ok => json!({ "type": "ok" }),
        KvResponse::Integer(n) => json!({ "type": "integer", "value": n }),
        KvResponse::Bulk(bytes) => {
            json!({ "type": "bulk", "value": bytes.as_ref().map(|b| json_bytes(b)) })
        }
        KvResponse::Array(items) => json!({
            "type": "array",
            "items": items.iter().map(|i| i.as_ref().map(|b| json_bytes(b))).collect::<Vec<_>>(),
        }),
        KvResponse::Error(err) => json!({ "type": "error", "message": err.to_string() }),
        other => json!({ "type": "other", "value": format!("{other:?}") }),
    }
}

fn kv_json(kv: &KvSnapshotContents) -> Value {
    let sessions: Vec<Value> = kv
        .sessions
        .iter()
        .map(|s| {
            json!({
                "client_id": s.client_id,
                "last_sequence": s.last_sequence,
                "last_index": s.last_index,
                "reply": reply_json(&s.reply),
            })
        })
        .collect();
    let entries: Vec<Value> = kv
        .entries
        .iter()
        .map(|(k, v)| json!({ "key": json_bytes(k), "value": json_bytes(v) }))
        .collect();
    json!({ "applied_index": kv.applied_index, "sessions": sessions, "entries": entries })
}

fn to_json(findings: &Findings) -> Value {
    let mut object = Map::new();
    object.insert("file".into(), json!(findings.name));
    object.insert("size_bytes".into(), json!(findings.size_bytes));
    match &findings.layout {
        Ok(layout) => {
            let raw = &layout.header.configuration;
            let configuration = match Configuration::decode(raw) {
                Ok(config) if !raw.is_empty() => configuration_json(&config),
                Ok(_) => Value::Null,
                Err(err) => json!({ "hex": hex(raw), "decode_error": err.to_string() }),
            };
            object.insert("format_version".into(), json!(SNAPSHOT_FORMAT_VERSION));
            object.insert("index".into(), json!(layout.header.index));
            object.insert("term".into(), json!(layout.header.term));
            object.insert("configuration".into(), configuration);
            object.insert("data_bytes".into(), json!(layout.data_len_bytes));
        }
        Err(reason) => {
            object.insert("header_error".into(), json!(reason));
        }
    }
    object.insert(
        "checksum".into(),
        match &findings.checksum {
            Ok(()) => json!("ok"),
            Err(reason) => json!({ "error": reason }),
        },
    );
    match &findings.kv {
        Some(Ok(kv)) => {
            object.insert("kv".into(), kv_json(kv));
        }
        Some(Err(reason)) => {
            object.insert("kv".into(), json!({ "error": reason }));
        }
        None => {}
    }
    Value::Object(object)
}
