//! The CSV format: one line item per row under a fixed header (RFC 4180 quoting), money
//! as integer µ$ plus an exact dollar column. Must not compute anything.

use super::lines::LineItem;

/// The header, in column order.
pub const HEADER: [&str; 23] = [
    "id",
    "kind",
    "reason",
    "period",
    "period_start",
    "period_end",
    "tenant",
    "customer",
    "stripe_customer_id",
    "provider",
    "model",
    "requests",
    "input_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "output_tokens",
    "reasoning_tokens",
    "audio_input_tokens",
    "audio_output_tokens",
    "cost_micros",
    "billed_micros",
    "billed_usd",
    "pricing",
];

fn field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

/// The CSV text of `lines` (header included, `\n` line ends).
pub fn encode(lines: &[LineItem]) -> Vec<u8> {
    let mut out = HEADER.join(",");
    out.push('\n');
    for l in lines {
        let f = &l.figures;
        let row: Vec<String> = vec![
            field(&l.id),
            l.kind.name().to_owned(),
            l.reason.map(|r| r.name()).unwrap_or_default().to_owned(),
            field(&l.period),
            l.period_start.clone(),
            l.period_end.clone(),
            field(&l.tenant),
            field(&l.customer),
            field(l.stripe_customer_id.as_deref().unwrap_or_default()),
            field(&l.provider),
            field(&l.model),
            f.requests.to_string(),
            f.input_tokens.to_string(),
            f.cached_input_tokens.to_string(),
            f.cache_write_tokens.to_string(),
            f.output_tokens.to_string(),
            f.reasoning_tokens.to_string(),
            f.audio_input_tokens.to_string(),
            f.audio_output_tokens.to_string(),
            f.cost_micros.to_string(),
            l.billed_micros.to_string(),
            l.billed_usd.clone(),
            field(&l.pricing),
        ];
        out.push_str(&row.join(","));
        out.push('\n');
    }
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_what_needs_quoting() {
        assert_eq!(field("a,b"), "\"a,b\"");
        assert_eq!(field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(field("plain"), "plain");
    }
}
