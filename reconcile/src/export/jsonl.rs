//! The JSONL format: one line item per line as a JSON object (fields as in the CSV
//! header; `reason` and `stripe_customer_id` null when absent). Must not compute
//! anything.

use super::ExportError;
use super::lines::LineItem;

/// The JSONL text of `lines`.
pub fn encode(lines: &[LineItem]) -> Result<Vec<u8>, ExportError> {
    let mut out = Vec::new();
    for l in lines {
        serde_json::to_writer(&mut out, l)
            .map_err(|e| ExportError::Format(format!("encoding a line item: {e}")))?;
        out.push(b'\n');
    }
    Ok(out)
}
