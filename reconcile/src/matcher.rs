//! The matcher and classifier: aligns gateway usage with provider usage at the
//! provider's granularity (bucket, account, model), computes the differences in requests,
//! tokens by kind and money, and attributes each difference to a cause with its evidence.
//! What no rule explains is reported as `unexplained`, never dropped. Pure: takes the
//! aggregated inputs and returns a [`Reconciliation`]; must not query or store anything.
//!
//! Rules, applied per cell (account × model × bucket) in this order:
//! 1. provider rows under a key/project no gateway upstream owns → `bypass_traffic`;
//! 2. provider model names that are aliases or dated snapshots of a gateway model are
//!    mapped onto it → `model_alias` (informational: the figures then match);
//! 3. a difference in one bucket cancelled exactly by the next bucket → `bucket_skew`;
//! 4. equal input but a different cached/cache-write split → `cached_token_reporting`;
//! 5. extra provider output, where the gateway saw aborted streams →
//!    `aborted_stream_billed` (with an input difference no larger than the gateway's
//!    estimate for streams cancelled before their final usage);
//! 6. extra provider tokens (and at most as many extra requests as failed attempts),
//!    where gateway attempts failed or timed out → `retries`;
//! 7. extra provider requests and tokens where the gateway recorded no event for at least
//!    `gap_minutes` → `missing_gateway_events`;
//! 8. the rest → `unexplained` (flagged when over tolerance).
//!
//! Money is compared per day and model: the provider's cost lines against the gateway's
//! tokens priced with tally's price table (whole-day sums, exact in pico-dollars). Credit
//! and refund lines → `provider_credit`; the money of billable token causes is attributed
//! to them; a remainder on a day whose tokens all match → `stale_price_table`; anything
//! else → `unexplained`. Findings' money is rounded to µ$ and the unexplained line takes
//! the exact remainder, so the attribution always sums to the difference.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};
use tally_enforcer::pricing::PriceTable;
use tally_events::Timestamp;

use crate::config::ReconcileConfig;
use crate::figures::{Figures, pico_to_micros};
use crate::model::{ProviderCostRow, ProviderUsageRow};

const DAY_MICROS: i64 = 86_400_000_000;
const MINUTE_MICROS: i64 = 60_000_000;

/// The account of traffic that bypassed the gateway.
pub const BYPASS: &str = "(bypass)";
/// The account used when no accounts are configured for a provider.
pub const ANY_ACCOUNT: &str = "*";

/// Gateway usage of one bucket, account (upstream) and model: what the gateway recorded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GatewayBucket {
    pub upstream: Option<String>,
    pub model: String,
    /// Bucket start, µs since the epoch (aligned to the bucket width, UTC).
    pub bucket_start: i64,
    /// `requests` counts attempts the provider answered successfully (2xx); tokens count
    /// every forwarded attempt.
    pub figures: Figures,
    /// Sum of `cost_micros` as recorded per request.
    pub recorded_cost_micros: i64,
    /// Attempts ended by the client going away mid-stream.
    pub aborted: i64,
    /// Attempts that failed upstream or timed out.
    pub failed: i64,
    /// Attempts that were retries of an earlier one.
    pub retries: i64,
    /// Input tokens of client-aborted streams whose usage the gateway estimated (the
    /// stream was cancelled before the provider's final usage arrived).
    pub aborted_estimated_input: i64,
}

/// Gateway events per minute and upstream (for gap evidence).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GatewayMinute {
    pub upstream: Option<String>,
    /// Minute start, µs since the epoch.
    pub minute: i64,
    pub events: i64,
}

/// Everything one reconciliation looks at.
#[derive(Clone, Debug, Default)]
pub struct Inputs {
    /// `openai`, `anthropic` or `gemini`.
    pub provider: String,
    /// Period start (inclusive) and end (exclusive), µs.
    pub start: i64,
    pub end: i64,
    pub gateway: Vec<GatewayBucket>,
    pub minutes: Vec<GatewayMinute>,
    pub provider_usage: Vec<ProviderUsageRow>,
    pub provider_costs: Vec<ProviderCostRow>,
}

/// Why a difference exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    MissingGatewayEvents,
    AbortedStreamBilled,
    Retries,
    CachedTokenReporting,
    StalePriceTable,
    ModelAlias,
    BucketSkew,
    BypassTraffic,
    ProviderCredit,
    Unexplained,
}

impl Cause {
    /// Every cause, in report order.
    pub const ALL: [Cause; 10] = [
        Cause::MissingGatewayEvents,
        Cause::AbortedStreamBilled,
        Cause::Retries,
        Cause::CachedTokenReporting,
        Cause::StalePriceTable,
        Cause::ModelAlias,
        Cause::BucketSkew,
        Cause::BypassTraffic,
        Cause::ProviderCredit,
        Cause::Unexplained,
    ];

    /// Stable snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::MissingGatewayEvents => "missing_gateway_events",
            Cause::AbortedStreamBilled => "aborted_stream_billed",
            Cause::Retries => "retries",
            Cause::CachedTokenReporting => "cached_token_reporting",
            Cause::StalePriceTable => "stale_price_table",
            Cause::ModelAlias => "model_alias",
            Cause::BucketSkew => "bucket_skew",
            Cause::BypassTraffic => "bypass_traffic",
            Cause::ProviderCredit => "provider_credit",
            Cause::Unexplained => "unexplained",
        }
    }

    /// Token differences of this cause change what the provider bills.
    fn billable(self) -> bool {
        matches!(
            self,
            Cause::MissingGatewayEvents
                | Cause::AbortedStreamBilled
                | Cause::Retries
                | Cause::BucketSkew
                | Cause::BypassTraffic
        )
    }
}

/// One attributed difference (provider minus gateway).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    pub cause: Cause,
    pub account: String,
    pub model: Option<String>,
    pub bucket_start: Timestamp,
    pub bucket_end: Timestamp,
    /// Provider minus gateway (requests and tokens).
    pub difference: Figures,
    /// Money of the difference, µ$ (provider minus gateway).
    pub money_micros: i64,
    /// What shows it: counts, windows, names.
    pub evidence: String,
    /// For `unexplained`: the difference is within the configured tolerance.
    pub within_tolerance: bool,
}

/// Totals of one side.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub figures: Figures,
    pub money_micros: i64,
}

/// The result of one reconciliation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Reconciliation {
    pub provider: String,
    pub start: Timestamp,
    pub end: Timestamp,
    pub bucket_seconds: i64,
    /// Gateway: figures of matched traffic; money = its tokens priced per day and model.
    pub gateway: Totals,
    /// What the gateway recorded per request (`cost_micros` sums); differs from
    /// `gateway.money_micros` by per-request rounding only.
    pub gateway_recorded_micros: i64,
    /// Provider: usage report figures (requests where reported); money = cost lines
    /// (credits included).
    pub provider_totals: Totals,
    /// Provider money minus gateway money.
    pub money_difference_micros: i64,
    pub findings: Vec<Finding>,
    /// Unexplained findings over tolerance (non-zero → the run fails).
    pub unexplained_over_tolerance: usize,
    /// Cells compared.
    pub cells: usize,
}

impl Reconciliation {
    /// Sum of findings' money per cause, µ$.
    pub fn money_by_cause(&self) -> BTreeMap<Cause, i64> {
        let mut m = BTreeMap::new();
        for f in &self.findings {
            *m.entry(f.cause).or_insert(0) += f.money_micros;
        }
        m
    }

    /// Findings of one cause.
    pub fn of(&self, cause: Cause) -> impl Iterator<Item = &Finding> {
        self.findings.iter().filter(move |f| f.cause == cause)
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct GatewayEvidence {
    aborted: i64,
    aborted_estimated_input: i64,
    failed: i64,
    retries: i64,
}

#[derive(Clone, Debug, Default)]
struct Cell {
    gateway: Figures,
    provider: Figures,
    /// Whether the provider reported request counts for this cell.
    provider_requests_known: bool,
    /// Whether the provider reported anything for this cell.
    provider_rows: bool,
    evidence: GatewayEvidence,
}

type CellKey = (String, String, i64); // account, model, bucket start

/// Reconcile `inputs` under `config`, pricing the gateway's tokens with `prices`.
pub fn reconcile(inputs: &Inputs, config: &ReconcileConfig, prices: &PriceTable) -> Reconciliation {
    let width = config.bucket_seconds.max(1) * 1_000_000;
    let accounts: Vec<_> = config
        .accounts
        .iter()
        .filter(|a| a.provider == inputs.provider)
        .collect();
    let gateway_account = |upstream: &Option<String>| -> String {
        if accounts.is_empty() {
            ANY_ACCOUNT.to_owned()
        } else {
            upstream.clone().unwrap_or_else(|| "(none)".to_owned())
        }
    };
    let provider_account = |row: &ProviderUsageRow| -> String {
        if accounts.is_empty() {
            return ANY_ACCOUNT.to_owned();
        }
        accounts
            .iter()
            .find(|a| {
                row.api_key_id
                    .as_ref()
                    .is_some_and(|k| a.api_key_ids.contains(k))
                    || row
                        .project_id
                        .as_ref()
                        .is_some_and(|p| a.project_ids.contains(p))
            })
            .map_or_else(|| BYPASS.to_owned(), |a| a.upstream.clone())
    };

    let mut findings = Vec::new();
    let mut cells: BTreeMap<CellKey, Cell> = BTreeMap::new();
    let gateway_models: BTreeSet<String> = inputs.gateway.iter().map(|g| g.model.clone()).collect();
    let mut gateway_recorded = 0i64;
    for g in &inputs.gateway {
        let key = (
            gateway_account(&g.upstream),
            g.model.clone(),
            align(g.bucket_start, width),
        );
        let c = cells.entry(key).or_default();
        c.gateway += g.figures;
        c.evidence.aborted += g.aborted;
        c.evidence.aborted_estimated_input += g.aborted_estimated_input;
        c.evidence.failed += g.failed;
        c.evidence.retries += g.retries;
        gateway_recorded += g.recorded_cost_micros;
    }

    // Provider usage: bypass rows become findings at once; the rest are aliased onto
    // gateway models and placed in cells.
    let mut aliases: BTreeMap<(String, String), (usize, i64, i64)> = BTreeMap::new();
    let mut provider_figures = Figures::default();
    for row in &inputs.provider_usage {
        let figures = usage_figures(row);
        provider_figures += figures;
        let account = provider_account(row);
        let reported = row.model.clone().unwrap_or_default();
        let model = canonical_model(&reported, &config.model_aliases, &gateway_models);
        if account == BYPASS {
            let money = figures.cost_pico(prices, &model).map_or(0, pico_to_micros);
            findings.push(Finding {
                cause: Cause::BypassTraffic,
                account: BYPASS.to_owned(),
                model: Some(model),
                bucket_start: row.bucket_start,
                bucket_end: row.bucket_end,
                difference: figures,
                money_micros: money,
                evidence: format!(
                    "provider key {} / project {} is not a gateway credential",
                    row.api_key_id.as_deref().unwrap_or("-"),
                    row.project_id.as_deref().unwrap_or("-")
                ),
                within_tolerance: false,
            });
            continue;
        }
        if model != reported && !reported.is_empty() {
            let e =
                aliases
                    .entry((reported.clone(), model.clone()))
                    .or_insert((0, i64::MAX, i64::MIN));
            e.0 += 1;
            e.1 = e.1.min(row.bucket_start.as_micros());
            e.2 = e.2.max(row.bucket_end.as_micros());
        }
        let c = cells
            .entry((account, model, align(row.bucket_start.as_micros(), width)))
            .or_default();
        c.provider += figures;
        c.provider_requests_known |= row.requests.is_some();
        c.provider_rows = true;
    }
    for ((reported, model), (buckets, first, last)) in &aliases {
        findings.push(Finding {
            cause: Cause::ModelAlias,
            account: String::new(),
            model: Some(model.clone()),
            bucket_start: Timestamp::from_micros(*first),
            bucket_end: Timestamp::from_micros(*last),
            difference: Figures::default(),
            money_micros: 0,
            evidence: format!(
                "provider reports `{reported}` for gateway model `{model}` in {buckets} bucket(s); matched as the same model"
            ),
            within_tolerance: true,
        });
    }

    // Differences per cell, then the token rules.
    let minutes = gap_index(inputs, &gateway_account);
    let mut diffs: BTreeMap<CellKey, Figures> = BTreeMap::new();
    // A provider whose report counts requests (OpenAI) counted none where it has no row;
    // one that never reports requests (Anthropic) says nothing about them.
    let provider_counts_requests = inputs.provider_usage.iter().any(|r| r.requests.is_some());
    for (k, c) in &cells {
        let mut d = c.provider - c.gateway;
        if !c.provider_requests_known && (c.provider_rows || !provider_counts_requests) {
            d.requests = 0;
        }
        if !d.is_zero() {
            diffs.insert(k.clone(), d);
        }
    }
    let bucket_end = |start: i64| Timestamp::from_micros(start + width);
    let finding = |cause, k: &CellKey, d: Figures, evidence: String| Finding {
        cause,
        account: k.0.clone(),
        model: Some(k.1.clone()),
        bucket_start: Timestamp::from_micros(k.2),
        bucket_end: bucket_end(k.2),
        difference: d,
        money_micros: 0,
        evidence,
        within_tolerance: false,
    };

    // Rule 3: bucket skew (a difference cancelled by the adjacent bucket).
    let keys: Vec<CellKey> = diffs.keys().cloned().collect();
    for k in &keys {
        let Some(d) = diffs.get(k).copied() else {
            continue;
        };
        let next = (k.0.clone(), k.1.clone(), k.2 + width);
        if let Some(n) = diffs.get(&next).copied()
            && n == -d
        {
            let moved = d.max_abs_tokens();
            findings.push(finding(
                Cause::BucketSkew,
                k,
                d,
                format!(
                    "{} request(s) / {moved} token(s) counted in the adjacent bucket {} by the other side; the two buckets sum to the same figures",
                    d.requests.abs(),
                    Timestamp::from_micros(next.2).to_datetime().format("%Y-%m-%dT%H:%MZ")
                ),
            ));
            findings.push(finding(
                Cause::BucketSkew,
                &next,
                n,
                format!(
                    "counterpart of the skew at {}",
                    Timestamp::from_micros(k.2)
                        .to_datetime()
                        .format("%Y-%m-%dT%H:%MZ")
                ),
            ));
            diffs.remove(k);
            diffs.remove(&next);
        }
    }

    for (k, d) in diffs.iter_mut() {
        let ev = cells.get(k).map(|c| c.evidence).unwrap_or_default();
        let cell_provider = cells.get(k).map(|c| c.provider).unwrap_or_default();
        // Rule 4: cached split differs, input equal.
        if d.input == 0 && (d.cached != 0 || d.cache_write != 0) {
            let part = Figures {
                cached: d.cached,
                cache_write: d.cache_write,
                ..Figures::default()
            };
            findings.push(finding(
                Cause::CachedTokenReporting,
                k,
                part,
                format!(
                    "same input tokens on both sides, but the provider reports {} cached and {} cache-write tokens ({:+} / {:+} vs the gateway)",
                    cell_provider.cached, cell_provider.cache_write, d.cached, d.cache_write
                ),
            ));
            d.cached = 0;
            d.cache_write = 0;
        }
        // Rule 5: extra output only, aborted streams seen. A stream cancelled before the
        // provider's final usage carries the gateway's estimate of its input, so an input
        // difference no larger than those estimates goes with it.
        let estimate_gap = d.input != 0 && d.input.abs() <= ev.aborted_estimated_input;
        if ev.aborted > 0
            && d.output > 0
            && d.requests == 0
            && (d.input == 0 || estimate_gap)
            && d.cached == 0
            && d.cache_write == 0
        {
            let part = Figures {
                input: d.input,
                output: d.output,
                audio_output: d.audio_output,
                ..Figures::default()
            };
            let input_note = if d.input != 0 {
                format!(
                    "; its input differs by {:+} from the gateway's estimate of {} token(s) (usage estimated when the stream was cancelled)",
                    d.input, ev.aborted_estimated_input
                )
            } else {
                String::new()
            };
            findings.push(finding(
                Cause::AbortedStreamBilled,
                k,
                part,
                format!(
                    "{} stream(s) aborted by the client in this bucket; the provider bills {} more output tokens than were delivered{input_note}",
                    ev.aborted, d.output
                ),
            ));
            d.input = 0;
            d.output = 0;
            d.audio_output = 0;
        }
        // Rule 6: failed attempts the provider completed and billed.
        if ev.failed > 0
            && !d.is_zero()
            && d.tokens_non_negative()
            && d.requests >= 0
            && d.requests <= ev.failed
            && (d.input > 0 || d.output > 0)
        {
            findings.push(finding(
                Cause::Retries,
                k,
                *d,
                format!(
                    "{} attempt(s) failed or timed out at the gateway ({} retried); the provider counted {} of them as served",
                    ev.failed, ev.retries, d.requests
                ),
            ));
            *d = Figures::default();
        }
        // Rule 7: whole requests missing where the gateway went silent.
        if !d.is_zero() && d.tokens_non_negative() && d.requests >= 0 && d.input > 0 {
            let account_gap = minutes.longest_gap(&k.0, k.2, k.2 + width);
            if let Some((from, len)) = account_gap.filter(|(_, len)| *len >= config.gap_minutes) {
                findings.push(finding(
                    Cause::MissingGatewayEvents,
                    k,
                    *d,
                    format!(
                        "the gateway recorded no event for {len} minute(s) from {} while the provider counted {} request(s) in this bucket",
                        Timestamp::from_micros(from).to_datetime().format("%Y-%m-%dT%H:%MZ"),
                        cell_provider.requests
                    ),
                ));
                *d = Figures::default();
            }
        }
        // Rule 8: what is left.
        if !d.is_zero() {
            let reference = cell_provider;
            let ok = config.tolerance.requests_ok(d.requests, reference.requests)
                && d.token_kinds()
                    .iter()
                    .zip(reference.token_kinds().iter())
                    .all(|((_, dv), (_, rv))| config.tolerance.tokens_ok(*dv, *rv));
            let mut f = finding(
                Cause::Unexplained,
                k,
                *d,
                format!(
                    "no rule explains this difference (gateway evidence: {} aborted, {} failed, {} retries)",
                    ev.aborted, ev.failed, ev.retries
                ),
            );
            f.within_tolerance = ok;
            findings.push(f);
        }
    }

    // Money per day and model.
    let money = money_findings(
        inputs,
        &cells,
        &mut findings,
        config,
        prices,
        &gateway_models,
    );

    let gateway_figures = cells
        .values()
        .fold(Figures::default(), |a, c| a + c.gateway);
    findings.sort_by(|a, b| {
        (a.bucket_start, a.cause, &a.account, &a.model).cmp(&(
            b.bucket_start,
            b.cause,
            &b.account,
            &b.model,
        ))
    });
    let unexplained_over_tolerance = findings
        .iter()
        .filter(|f| f.cause == Cause::Unexplained && !f.within_tolerance)
        .count();
    Reconciliation {
        provider: inputs.provider.clone(),
        start: Timestamp::from_micros(inputs.start),
        end: Timestamp::from_micros(inputs.end),
        bucket_seconds: config.bucket_seconds,
        gateway: Totals {
            figures: gateway_figures,
            money_micros: money.gateway_micros,
        },
        gateway_recorded_micros: gateway_recorded,
        provider_totals: Totals {
            figures: provider_figures,
            money_micros: money.provider_micros,
        },
        money_difference_micros: money.provider_micros - money.gateway_micros,
        findings,
        unexplained_over_tolerance,
        cells: cells.len(),
    }
}

struct MoneyTotals {
    gateway_micros: i64,
    provider_micros: i64,
}

fn money_findings(
    inputs: &Inputs,
    cells: &BTreeMap<CellKey, Cell>,
    findings: &mut Vec<Finding>,
    config: &ReconcileConfig,
    prices: &PriceTable,
    gateway_models: &BTreeSet<String>,
) -> MoneyTotals {
    let day = |t: i64| t.div_euclid(DAY_MICROS) * DAY_MICROS;
    // Gateway tokens per (day, model), priced exactly.
    let mut gateway_tokens: BTreeMap<(i64, String), Figures> = BTreeMap::new();
    for ((_, model, bucket), c) in cells {
        *gateway_tokens
            .entry((day(*bucket), model.clone()))
            .or_default() += c.gateway;
    }
    let mut provider_money: BTreeMap<(i64, String), i64> = BTreeMap::new();
    // Cost lines per (day, model): the provider rounds each line to its unit, so each may
    // be up to half a µ$ away from exact prices.
    let mut lines: HashMap<(i64, String), u64> = HashMap::new();
    let mut provider_total = 0i64;
    for row in &inputs.provider_costs {
        provider_total += row.amount_micros;
        let credit = row.amount_micros < 0
            || row.cost_type.as_deref().is_some_and(|t| {
                matches!(
                    t,
                    "credit" | "credits" | "refund" | "discount" | "promotion"
                )
            });
        if credit {
            findings.push(Finding {
                cause: Cause::ProviderCredit,
                account: row.project_id.clone().unwrap_or_default(),
                model: row.model.clone(),
                bucket_start: row.bucket_start,
                bucket_end: row.bucket_end,
                difference: Figures::default(),
                money_micros: row.amount_micros,
                evidence: format!(
                    "cost line `{}` ({})",
                    row.line_item.as_deref().unwrap_or("-"),
                    row.cost_type.as_deref().unwrap_or("credit")
                ),
                within_tolerance: true,
            });
            continue;
        }
        let model = row
            .model
            .as_deref()
            .map(|m| canonical_model(m, &config.model_aliases, gateway_models))
            .unwrap_or_default();
        let k = (day(row.bucket_start.as_micros()), model);
        *lines.entry(k.clone()).or_default() += 1;
        *provider_money.entry(k).or_default() += row.amount_micros;
    }
    let mut gateway_total = 0i64;
    let mut keys: BTreeSet<(i64, String)> = gateway_tokens.keys().cloned().collect();
    if inputs.provider_costs.is_empty() {
        // Without a cost report there is nothing to compare money against; the gateway
        // side is still priced for the totals.
        for k in &keys {
            let g = gateway_tokens.get(k).copied().unwrap_or_default();
            gateway_total += g.cost_pico(prices, &k.1).map_or(0, pico_to_micros);
        }
        return MoneyTotals {
            gateway_micros: gateway_total,
            provider_micros: 0,
        };
    }
    keys.extend(provider_money.keys().cloned());
    // Token findings per (day, model), to attribute money.
    let mut by_day: HashMap<(i64, String), Vec<usize>> = HashMap::new();
    for (i, f) in findings.iter().enumerate() {
        if let Some(m) = &f.model {
            by_day
                .entry((day(f.bucket_start.as_micros()), m.clone()))
                .or_default()
                .push(i);
        }
    }
    let mut extra = Vec::new();
    for k in keys {
        let g = gateway_tokens.get(&k).copied().unwrap_or_default();
        let expected_pico = g.cost_pico(prices, &k.1).unwrap_or(0);
        let expected = pico_to_micros(expected_pico);
        gateway_total += expected;
        let Some(&provider) = provider_money.get(&k) else {
            // No cost line for a model the gateway used: the cost report has nothing to
            // say about it (e.g. billed under another line); reported as unexplained.
            if expected != 0 {
                extra.push(money_finding(
                    Cause::Unexplained,
                    &k,
                    -expected,
                    "the provider's cost report has no line for this model and day".to_owned(),
                    config.tolerance.money_ok(-expected, 0),
                ));
            }
            continue;
        };
        // Exact in pico-dollars; each finding shows its money rounded to µ$ and the
        // remainder line takes whatever makes the µ$ figures sum to the difference.
        let diff_pico = i128::from(provider) * 1_000_000 - expected_pico;
        let mut attributed_pico = 0i128;
        let mut attributed = 0i64;
        let mut tokens_unexplained = false;
        for &i in by_day.get(&k).map(Vec::as_slice).unwrap_or(&[]) {
            let f = &mut findings[i];
            if f.cause == Cause::Unexplained && !f.difference.tokens_only().is_zero() {
                tokens_unexplained = true;
            }
            if f.cause.billable() || f.cause == Cause::Unexplained {
                let pico = f
                    .difference
                    .tokens_only()
                    .cost_pico(prices, &k.1)
                    .unwrap_or(0);
                f.money_micros = pico_to_micros(pico);
                attributed_pico += pico;
                attributed += f.money_micros;
            }
        }
        let rest_pico = diff_pico - attributed_pico;
        let rest = provider - expected - attributed;
        if rest != 0 || rest_pico.abs() >= 1_000_000 {
            let rounding = lines.get(&k).copied().unwrap_or(0).div_ceil(2) + 1;
            let exact = pico_to_micros(rest_pico);
            let ok = exact.unsigned_abs() <= rounding || config.tolerance.money_ok(exact, provider);
            let cause = if !tokens_unexplained && !ok {
                Cause::StalePriceTable
            } else {
                Cause::Unexplained
            };
            let evidence = if cause == Cause::StalePriceTable {
                // What tally's table gives for the provider's tokens: the gateway's plus
                // the differences the token causes explain.
                let tally_pico = expected_pico + attributed_pico;
                let ratio = if tally_pico != 0 {
                    format!(
                        "; the provider charged {:.4}× tally's prices",
                        (i128::from(provider) * 1_000_000) as f64 / tally_pico as f64
                    )
                } else {
                    String::new()
                };
                format!(
                    "tokens match, money does not: provider {provider} µ$, tally's price table {} gives {} µ$ for the same tokens{ratio}",
                    prices.version(),
                    pico_to_micros(tally_pico)
                )
            } else if ok {
                format!("rounding: {rest} µ$ left after the token causes, within tolerance")
            } else {
                format!("money difference of {rest} µ$ left after the token causes")
            };
            extra.push(money_finding(cause, &k, rest, evidence, ok));
        }
    }
    findings.extend(extra);
    MoneyTotals {
        gateway_micros: gateway_total,
        provider_micros: provider_total,
    }
}

fn money_finding(
    cause: Cause,
    k: &(i64, String),
    micros: i64,
    evidence: String,
    ok: bool,
) -> Finding {
    Finding {
        cause,
        account: String::new(),
        model: Some(k.1.clone()),
        bucket_start: Timestamp::from_micros(k.0),
        bucket_end: Timestamp::from_micros(k.0 + DAY_MICROS),
        difference: Figures::default(),
        money_micros: micros,
        evidence,
        within_tolerance: ok,
    }
}

fn align(t: i64, width: i64) -> i64 {
    t.div_euclid(width) * width
}

fn usage_figures(row: &ProviderUsageRow) -> Figures {
    let i = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    Figures {
        requests: row.requests.map_or(0, i),
        input: i(row.input_tokens),
        cached: i(row.cached_input_tokens),
        cache_write: i(row.cache_write_tokens),
        output: i(row.output_tokens),
        audio_input: i(row.audio_input_tokens),
        audio_output: i(row.audio_output_tokens),
    }
}

/// The gateway model a provider model name stands for: a configured alias, else the
/// gateway model it is a dated snapshot of (or that is a dated snapshot of it), else
/// itself.
fn canonical_model(
    reported: &str,
    aliases: &BTreeMap<String, String>,
    gateway_models: &BTreeSet<String>,
) -> String {
    if let Some(m) = aliases.get(reported) {
        return m.clone();
    }
    let bare = reported.strip_prefix("models/").unwrap_or(reported);
    if gateway_models.contains(bare) {
        return bare.to_owned();
    }
    let snapshot_of = |long: &str, short: &str| {
        long.len() > short.len() + 1
            && long.starts_with(short)
            && long.as_bytes().get(short.len()) == Some(&b'-')
            && long[short.len() + 1..].starts_with(|c: char| c.is_ascii_digit())
    };
    gateway_models
        .iter()
        .filter(|g| snapshot_of(bare, g) || snapshot_of(g, bare))
        .max_by_key(|g| g.len())
        .cloned()
        .unwrap_or_else(|| bare.to_owned())
}

/// Minutes with gateway events, per account.
struct GapIndex {
    minutes: HashMap<String, BTreeSet<i64>>,
}

impl GapIndex {
    /// The longest run of minutes without events in `[from, to)`: (start, minutes).
    fn longest_gap(&self, account: &str, from: i64, to: i64) -> Option<(i64, i64)> {
        let empty = BTreeSet::new();
        let active = self.minutes.get(account).unwrap_or(&empty);
        let mut best: Option<(i64, i64)> = None;
        let mut run_start: Option<i64> = None;
        let mut m = from;
        while m < to {
            if active.contains(&m) {
                run_start = None;
            } else {
                let s = *run_start.get_or_insert(m);
                let len = (m - s) / MINUTE_MICROS + 1;
                if best.is_none_or(|(_, l)| len > l) {
                    best = Some((s, len));
                }
            }
            m += MINUTE_MICROS;
        }
        best
    }
}

fn gap_index(inputs: &Inputs, account_of: &dyn Fn(&Option<String>) -> String) -> GapIndex {
    let mut minutes: HashMap<String, BTreeSet<i64>> = HashMap::new();
    for m in &inputs.minutes {
        if m.events > 0 {
            minutes
                .entry(account_of(&m.upstream))
                .or_default()
                .insert(align(m.minute, MINUTE_MICROS));
        }
    }
    GapIndex { minutes }
}
