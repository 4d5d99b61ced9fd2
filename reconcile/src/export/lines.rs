//! Line items: the period's usage aggregated per customer (tenant), provider and model —
//! requests, tokens by kind, gateway cost — priced with the pricing file; adjustment
//! lines (the difference between two readings of a closed period, or usage a billing
//! target cannot take); and per-bucket lines for the event formats. Must not read tables
//! or encode output.

use std::collections::BTreeMap;

use serde::Serialize;

use super::id::stable_id;
use super::period::{Granularity, Period, rfc3339};
use super::pricing::Pricing;
use super::read::Cell;

/// Figures of a line. Signed: adjustment lines can be negative.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Figures {
    pub requests: i64,
    pub input_tokens: i64,
    pub cached_input_tokens: i64,
    pub cache_write_tokens: i64,
    pub output_tokens: i64,
    pub reasoning_tokens: i64,
    pub audio_input_tokens: i64,
    pub audio_output_tokens: i64,
    pub cost_micros: i64,
}

impl Figures {
    /// Input tokens neither read from nor written to the cache.
    pub fn uncached_input_tokens(&self) -> i64 {
        self.input_tokens - self.cached_input_tokens - self.cache_write_tokens
    }

    fn zip(&self, o: &Figures, f: impl Fn(i64, i64) -> i64) -> Figures {
        Figures {
            requests: f(self.requests, o.requests),
            input_tokens: f(self.input_tokens, o.input_tokens),
            cached_input_tokens: f(self.cached_input_tokens, o.cached_input_tokens),
            cache_write_tokens: f(self.cache_write_tokens, o.cache_write_tokens),
            output_tokens: f(self.output_tokens, o.output_tokens),
            reasoning_tokens: f(self.reasoning_tokens, o.reasoning_tokens),
            audio_input_tokens: f(self.audio_input_tokens, o.audio_input_tokens),
            audio_output_tokens: f(self.audio_output_tokens, o.audio_output_tokens),
            cost_micros: f(self.cost_micros, o.cost_micros),
        }
    }

    /// Kind-by-kind sum.
    pub fn plus(&self, o: &Figures) -> Figures {
        self.zip(o, i64::saturating_add)
    }

    /// Kind-by-kind difference.
    pub fn minus(&self, o: &Figures) -> Figures {
        self.zip(o, i64::saturating_sub)
    }

    /// Every figure is zero.
    pub fn is_zero(&self) -> bool {
        *self == Figures::default()
    }
}

/// Customer, provider and model: what a line is about.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LineKey {
    pub tenant: String,
    pub provider: String,
    pub model: String,
}

impl LineKey {
    pub(crate) fn of(c: &Cell) -> Self {
        Self {
            tenant: c.tenant.clone(),
            provider: c.provider.clone(),
            model: c.model.clone(),
        }
    }
}

/// `usage` (what the period consumed) or `adjustment` (a change to a closed period, or
/// usage a billing target cannot take, billed separately).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LineKind {
    Usage,
    Adjustment,
}

impl LineKind {
    /// `usage` or `adjustment`.
    pub fn name(self) -> &'static str {
        match self {
            LineKind::Usage => "usage",
            LineKind::Adjustment => "adjustment",
        }
    }
}

/// Why an adjustment line exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AdjustmentReason {
    /// Events or corrections committed after the period was closed.
    LateEvents,
    /// A correction arrived more than 24 hours after the usage it corrects: past
    /// Stripe's cancel window, so the meter event keeps the original figures.
    LateCorrection,
    /// The usage is older than Stripe's 35-day meter event window.
    StripeWindow,
}

impl AdjustmentReason {
    /// `late_events`, `late_correction` or `stripe_window`.
    pub fn name(self) -> &'static str {
        match self {
            AdjustmentReason::LateEvents => "late_events",
            AdjustmentReason::LateCorrection => "late_correction",
            AdjustmentReason::StripeWindow => "stripe_window",
        }
    }
}

/// One line of an invoice: a customer's usage of one provider's model in the period (or
/// an adjustment of it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LineItem {
    /// Deterministic: the same line of the same period always has the same id.
    pub id: String,
    pub kind: LineKind,
    /// Adjustments only.
    pub reason: Option<AdjustmentReason>,
    /// The period the line bills (for an adjustment: the closed period it amends).
    pub period: String,
    pub period_start: String,
    pub period_end: String,
    pub tenant: String,
    pub customer: String,
    pub stripe_customer_id: Option<String>,
    pub provider: String,
    pub model: String,
    #[serde(flatten)]
    pub figures: Figures,
    /// Amount billed to the customer, µ$ (rounded once, half away from zero).
    pub billed_micros: i64,
    /// `billed_micros` in dollars, exact (6 decimals).
    pub billed_usd: String,
    /// How it was priced: `markup 20%` or `prices`.
    pub pricing: String,
}

/// µ$ as an exact dollar string: `1234567` → `1.234567`, `-5` → `-0.000005`.
pub fn usd(micros: i64) -> String {
    let sign = if micros < 0 { "-" } else { "" };
    let a = micros.unsigned_abs();
    format!("{sign}{}.{:06}", a / 1_000_000, a % 1_000_000)
}

/// Figures per line key, summed over cells with `pick`.
pub(crate) fn aggregate(
    cells: &[Cell],
    pick: impl Fn(&Cell) -> Option<Figures>,
) -> BTreeMap<LineKey, Figures> {
    let mut out: BTreeMap<LineKey, Figures> = BTreeMap::new();
    for c in cells {
        if let Some(f) = pick(c) {
            let e = out.entry(LineKey::of(c)).or_default();
            *e = e.plus(&f);
        }
    }
    out
}

fn line(
    pricing: &Pricing,
    period: &Period,
    reason: Option<AdjustmentReason>,
    key: &LineKey,
    figures: Figures,
    billed: (i64, String),
    id_extra: &[&str],
) -> LineItem {
    let kind = if reason.is_some() {
        LineKind::Adjustment
    } else {
        LineKind::Usage
    };
    let start = period.start_micros().to_string();
    let end = period.end_micros().to_string();
    let mut parts = vec![
        "line",
        kind.name(),
        reason.map_or("", AdjustmentReason::name),
        &start,
        &end,
        &key.tenant,
        &key.provider,
        &key.model,
    ];
    parts.extend_from_slice(id_extra);
    LineItem {
        id: stable_id(&parts),
        kind,
        reason,
        period: period.label.clone(),
        period_start: rfc3339(period.start_micros()),
        period_end: rfc3339(period.end_micros()),
        tenant: key.tenant.clone(),
        customer: pricing.customer_name(&key.tenant),
        stripe_customer_id: pricing.stripe_customer_id(&key.tenant).map(str::to_owned),
        provider: key.provider.clone(),
        model: key.model.clone(),
        figures,
        billed_micros: billed.0,
        billed_usd: usd(billed.0),
        pricing: billed.1,
    }
}

/// The period's usage lines, one per tenant, provider and model, in that order.
pub(crate) fn usage_lines(
    pricing: &Pricing,
    period: &Period,
    totals: &BTreeMap<LineKey, Figures>,
) -> Vec<LineItem> {
    totals
        .iter()
        .map(|(k, f)| {
            let b = pricing.bill(&k.tenant, &k.model, f);
            line(pricing, period, None, k, *f, (b.micros, b.basis), &[])
        })
        .collect()
}

/// Adjustment lines taking `before` to `after`: per key the difference of the figures and
/// of the billed amounts (so the lines billed before plus these equal `after` billed).
/// Keys with no difference produce no line. `id_extra` tells readings apart (e.g. the
/// table versions compared).
pub(crate) fn diff_lines(
    pricing: &Pricing,
    period: &Period,
    reason: AdjustmentReason,
    before: &BTreeMap<LineKey, Figures>,
    after: &BTreeMap<LineKey, Figures>,
    id_extra: &[&str],
) -> Vec<LineItem> {
    let mut keys: Vec<&LineKey> = before.keys().chain(after.keys()).collect();
    keys.sort();
    keys.dedup();
    let zero = Figures::default();
    let mut out = Vec::new();
    for k in keys {
        let b = before.get(k).unwrap_or(&zero);
        let a = after.get(k).unwrap_or(&zero);
        let bb = pricing.bill(&k.tenant, &k.model, b);
        let ba = pricing.bill(&k.tenant, &k.model, a);
        let figures = a.minus(b);
        let billed = ba.micros.saturating_sub(bb.micros);
        if figures.is_zero() && billed == 0 {
            continue;
        }
        out.push(line(
            pricing,
            period,
            Some(reason),
            k,
            figures,
            (billed, ba.basis),
            id_extra,
        ));
    }
    out
}

/// Adjustment lines billing `part` on its own (usage a target cannot take as events).
pub(crate) fn part_lines(
    pricing: &Pricing,
    period: &Period,
    reason: AdjustmentReason,
    part: &BTreeMap<LineKey, Figures>,
) -> Vec<LineItem> {
    diff_lines(pricing, period, reason, &BTreeMap::new(), part, &[])
}

/// One bucket of one line: the unit of the event formats.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct BucketLine {
    pub(crate) key: LineKey,
    pub(crate) bucket_start: i64,
    pub(crate) bucket_end: i64,
    pub(crate) figures: Figures,
    pub(crate) billed_micros: i64,
}

/// Cells summed per key and bucket (with `pick`), each priced (rounded per bucket line).
pub(crate) fn bucket_lines(
    pricing: &Pricing,
    granularity: Granularity,
    cells: &[Cell],
    pick: impl Fn(&Cell) -> Option<Figures>,
) -> Vec<BucketLine> {
    let mut sums: BTreeMap<(LineKey, i64), Figures> = BTreeMap::new();
    for c in cells {
        if let Some(f) = pick(c) {
            let e = sums
                .entry((LineKey::of(c), granularity.bucket_start(c.hour)))
                .or_default();
            *e = e.plus(&f);
        }
    }
    sums.into_iter()
        .map(|((key, start), figures)| BucketLine {
            billed_micros: pricing.bill(&key.tenant, &key.model, &figures).micros,
            bucket_end: granularity.bucket_end(start),
            key,
            bucket_start: start,
            figures,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dollars_are_exact() {
        assert_eq!(usd(1_234_567), "1.234567");
        assert_eq!(usd(-5), "-0.000005");
        assert_eq!(usd(0), "0.000000");
    }
}
