//! The Stripe format: billing meter events (`event_name`, `payload.stripe_customer_id`,
//! `payload.value` as a string, `identifier`, `timestamp`), pre-aggregated per customer
//! and meter per UTC hour or day, one JSON object per line. Applies Stripe's limits:
//! usage older than its 35-day timestamp window, and the difference made by corrections
//! that arrived past its 24-hour cancel window, are not sent as meter events but
//! returned as adjustment lines to bill otherwise. Must not read tables.

use std::collections::BTreeMap;

use serde::Serialize;

use super::ExportError;
use super::id::stable_id;
use super::lines::{
    AdjustmentReason, Figures, LineItem, aggregate, bucket_lines, diff_lines, part_lines,
};
use super::period::{Granularity, Period};
use super::pricing::Pricing;
use super::read::Cell;

/// Stripe accepts meter event timestamps up to 35 days in the past.
pub const WINDOW_DAYS: i64 = 35;
/// Margin kept inside that window, for the time between export and sending.
pub const WINDOW_MARGIN_HOURS: i64 = 1;
const HOUR_MICROS: i64 = 3_600_000_000;

/// `payload` of a meter event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Payload {
    pub stripe_customer_id: String,
    /// The meter value, a whole number as a string.
    pub value: String,
}

/// One Stripe meter event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MeterEvent {
    pub event_name: String,
    pub payload: Payload,
    /// Deterministic per meter, customer, granularity and bucket: re-sending is a no-op.
    pub identifier: String,
    /// Bucket start, Unix seconds.
    pub timestamp: i64,
}

/// Meter events plus what they cannot carry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StripeExport {
    pub events: Vec<MeterEvent>,
    /// Usage past the 35-day window and late corrections: bill as invoice items.
    pub adjustments: Vec<LineItem>,
}

/// The earliest bucket start Stripe takes at `now` (µs).
pub fn window_start(now_micros: i64) -> i64 {
    now_micros - WINDOW_DAYS * 24 * HOUR_MICROS + WINDOW_MARGIN_HOURS * HOUR_MICROS
}

/// Build the meter events of the period's `cells` at `now`.
pub(crate) fn build(
    pricing: &Pricing,
    period: &Period,
    granularity: Granularity,
    cells: &[Cell],
    now_micros: i64,
) -> Result<StripeExport, ExportError> {
    let cutoff = window_start(now_micros);
    let in_window = |c: &Cell| granularity.bucket_start(c.hour) >= cutoff;
    // Sent: the corrected figures, except where the correction came past the cancel
    // window (the original was already metered).
    let metered = |c: &Cell| -> Option<Figures> {
        in_window(c).then_some(if c.late { c.raw } else { c.corrected })
    };
    let buckets = bucket_lines(pricing, granularity, cells, metered);

    let mut missing: Vec<&str> = buckets
        .iter()
        .map(|b| b.key.tenant.as_str())
        .filter(|t| pricing.stripe_customer_id(t).is_none())
        .collect();
    missing.dedup();
    if !missing.is_empty() {
        return Err(ExportError::Format(format!(
            "no stripe_customer_id for tenant(s) {}; add `tenants.<tenant>.stripe_customer_id` to the pricing file (--pricing)",
            missing.join(", ")
        )));
    }

    let mut per_customer: BTreeMap<(String, i64), (Figures, i64)> = BTreeMap::new();
    for b in &buckets {
        let e = per_customer
            .entry((b.key.tenant.clone(), b.bucket_start))
            .or_default();
        e.0 = e.0.plus(&b.figures);
        e.1 = e.1.saturating_add(b.billed_micros);
    }
    let mut events = Vec::new();
    for ((tenant, start), (figures, billed)) in &per_customer {
        let customer = pricing.stripe_customer_id(tenant).unwrap_or_default();
        for m in &pricing.stripe.meters {
            let value = m.value.of(figures, *billed);
            if value == 0 {
                continue;
            }
            let start_s = start.to_string();
            events.push(MeterEvent {
                event_name: m.event_name.clone(),
                payload: Payload {
                    stripe_customer_id: customer.to_owned(),
                    value: value.to_string(),
                },
                identifier: stable_id(&[
                    "stripe",
                    "usage",
                    &m.event_name,
                    tenant,
                    granularity.name(),
                    &start_s,
                ]),
                timestamp: start.div_euclid(1_000_000),
            });
        }
    }

    let old = aggregate(cells, |c| (!in_window(c)).then_some(c.corrected));
    let mut adjustments = part_lines(pricing, period, AdjustmentReason::StripeWindow, &old);
    let late_raw = aggregate(cells, |c| (in_window(c) && c.late).then_some(c.raw));
    let late_corrected = aggregate(cells, |c| (in_window(c) && c.late).then_some(c.corrected));
    adjustments.extend(diff_lines(
        pricing,
        period,
        AdjustmentReason::LateCorrection,
        &late_raw,
        &late_corrected,
        &[],
    ));
    Ok(StripeExport {
        events,
        adjustments,
    })
}

/// One meter event per line.
pub fn encode(events: &[MeterEvent]) -> Result<Vec<u8>, ExportError> {
    let mut out = Vec::new();
    for e in events {
        serde_json::to_writer(&mut out, e)
            .map_err(|e| ExportError::Format(format!("encoding a meter event: {e}")))?;
        out.push(b'\n');
    }
    Ok(out)
}
