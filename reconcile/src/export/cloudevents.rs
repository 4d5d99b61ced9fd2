//! The CloudEvents format (OpenMeter-style ingestion): JSON lines of CloudEvents 1.0 in
//! structured mode — `specversion`, `id` (deterministic), `source`, `type`, `subject`
//! (the tenant), `time`, `datacontenttype`, `data`. Usage events are per tenant,
//! provider, model and hour/day bucket (`type` `tally.usage`); adjustment lines become
//! `tally.adjustment` events dated at the start of the period they amend. Consumers
//! dedupe on `source` + `id`. Must not read tables.

use serde::Serialize;

use super::ExportError;
use super::id::stable_id;
use super::lines::{BucketLine, Figures, LineItem, usd};
use super::period::{Granularity, Period, rfc3339};
use super::pricing::Pricing;

/// `type` of usage events.
pub const USAGE_TYPE: &str = "tally.usage";
/// `type` of adjustment events.
pub const ADJUSTMENT_TYPE: &str = "tally.adjustment";

/// A CloudEvent with a JSON payload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CloudEvent<T: Serialize> {
    pub specversion: &'static str,
    pub id: String,
    pub source: String,
    #[serde(rename = "type")]
    pub event_type: &'static str,
    pub subject: String,
    pub time: String,
    pub datacontenttype: &'static str,
    pub data: T,
}

/// `data` of a usage event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct UsageData {
    pub customer: String,
    pub provider: String,
    pub model: String,
    pub period: String,
    pub granularity: &'static str,
    pub bucket_start: String,
    pub bucket_end: String,
    #[serde(flatten)]
    pub figures: Figures,
    pub billed_micros: i64,
    pub billed_usd: String,
}

fn push<T: Serialize>(out: &mut Vec<u8>, e: &CloudEvent<T>) -> Result<(), ExportError> {
    serde_json::to_writer(&mut *out, e)
        .map_err(|e| ExportError::Format(format!("encoding a CloudEvent: {e}")))?;
    out.push(b'\n');
    Ok(())
}

/// Usage events of `buckets`.
pub(crate) fn encode_usage(
    pricing: &Pricing,
    period: &Period,
    granularity: Granularity,
    buckets: &[BucketLine],
) -> Result<Vec<u8>, ExportError> {
    let mut out = Vec::new();
    for b in buckets {
        let start = b.bucket_start.to_string();
        let e = CloudEvent {
            specversion: "1.0",
            id: stable_id(&[
                "cloudevents",
                "usage",
                &b.key.tenant,
                &b.key.provider,
                &b.key.model,
                granularity.name(),
                &start,
            ]),
            source: pricing.cloudevents.source.clone(),
            event_type: USAGE_TYPE,
            subject: b.key.tenant.clone(),
            time: rfc3339(b.bucket_start),
            datacontenttype: "application/json",
            data: UsageData {
                customer: pricing.customer_name(&b.key.tenant),
                provider: b.key.provider.clone(),
                model: b.key.model.clone(),
                period: period.label.clone(),
                granularity: granularity.name(),
                bucket_start: rfc3339(b.bucket_start),
                bucket_end: rfc3339(b.bucket_end),
                figures: b.figures,
                billed_micros: b.billed_micros,
                billed_usd: usd(b.billed_micros),
            },
        };
        push(&mut out, &e)?;
    }
    Ok(out)
}

/// Adjustment events of `lines` (their ids are the lines' ids).
pub(crate) fn encode_adjustments(
    pricing: &Pricing,
    lines: &[LineItem],
) -> Result<Vec<u8>, ExportError> {
    let mut out = Vec::new();
    for l in lines {
        let e = CloudEvent {
            specversion: "1.0",
            id: l.id.clone(),
            source: pricing.cloudevents.source.clone(),
            event_type: ADJUSTMENT_TYPE,
            subject: l.tenant.clone(),
            time: l.period_start.clone(),
            datacontenttype: "application/json",
            data: l,
        };
        push(&mut out, &e)?;
    }
    Ok(out)
}
