//! Model catalogue: alias → dated snapshot, which models reason, which are known; it must
//! not count tokens or shape responses.

use crate::config::SimConfig;

/// Built-in aliases and the dated snapshot the provider reports in `model`.
const ALIASES: &[(&str, &str)] = &[
    // OpenAI
    ("gpt-4o-mini", "gpt-4o-mini-2024-07-18"),
    ("gpt-4o", "gpt-4o-2024-08-06"),
    ("chatgpt-4o-latest", "chatgpt-4o-latest"),
    ("gpt-4.1", "gpt-4.1-2025-04-14"),
    ("gpt-4.1-mini", "gpt-4.1-mini-2025-04-14"),
    ("gpt-4.1-nano", "gpt-4.1-nano-2025-04-14"),
    ("gpt-5", "gpt-5-2025-08-07"),
    ("gpt-5-mini", "gpt-5-mini-2025-08-07"),
    ("gpt-5-nano", "gpt-5-nano-2025-08-07"),
    ("gpt-4-turbo", "gpt-4-turbo-2024-04-09"),
    ("gpt-4", "gpt-4-0613"),
    ("gpt-3.5-turbo", "gpt-3.5-turbo-0125"),
    ("gpt-3.5-turbo-instruct", "gpt-3.5-turbo-instruct"),
    ("o1", "o1-2024-12-17"),
    ("o3", "o3-2025-04-16"),
    ("o3-mini", "o3-mini-2025-01-31"),
    ("o4-mini", "o4-mini-2025-04-16"),
    ("text-embedding-3-small", "text-embedding-3-small"),
    ("text-embedding-3-large", "text-embedding-3-large"),
    ("text-embedding-ada-002", "text-embedding-ada-002"),
    // Anthropic
    ("claude-sonnet-4-5", "claude-sonnet-4-5-20250929"),
    ("claude-haiku-4-5", "claude-haiku-4-5-20251001"),
    ("claude-opus-4-1", "claude-opus-4-1-20250805"),
    ("claude-opus-4-0", "claude-opus-4-20250514"),
    ("claude-sonnet-4-0", "claude-sonnet-4-20250514"),
    ("claude-3-7-sonnet-latest", "claude-3-7-sonnet-20250219"),
    ("claude-3-5-haiku-latest", "claude-3-5-haiku-20241022"),
    // Gemini (modelVersion)
    ("gemini-2.5-pro", "gemini-2.5-pro"),
    ("gemini-2.5-flash", "gemini-2.5-flash"),
    ("gemini-2.5-flash-lite", "gemini-2.5-flash-lite"),
    ("gemini-2.0-flash", "gemini-2.0-flash-001"),
    ("gemini-2.0-flash-lite", "gemini-2.0-flash-lite-001"),
];

/// The model name the response reports for a requested model: the configured alias,
/// else the built-in snapshot, else the name as requested.
pub(crate) fn served_model(config: &SimConfig, requested: &str) -> String {
    if let Some(s) = config.model_aliases.get(requested) {
        return s.clone();
    }
    ALIASES
        .iter()
        .find(|(alias, _)| *alias == requested)
        .map_or_else(|| requested.to_owned(), |(_, snap)| (*snap).to_owned())
}

/// Whether `model` is an alias or a snapshot the simulator knows (built-in or
/// configured).
pub(crate) fn is_known(config: &SimConfig, model: &str) -> bool {
    config
        .model_aliases
        .iter()
        .any(|(a, s)| a == model || s == model)
        || ALIASES.iter().any(|(a, s)| *a == model || *s == model)
}

/// Names listed by the model-list endpoints for a provider prefix.
pub(crate) fn listed(prefixes: &[&str]) -> Vec<&'static str> {
    ALIASES
        .iter()
        .map(|(a, _)| *a)
        .filter(|a| prefixes.iter().any(|p| a.starts_with(p)))
        .collect()
}

/// OpenAI reasoning models: the o-series and gpt-5 (except the non-reasoning
/// `gpt-5-chat*`).
pub(crate) fn openai_reasoning(model: &str) -> bool {
    let b = model.as_bytes();
    let o_series = b.len() >= 2 && b[0] == b'o' && b[1].is_ascii_digit();
    o_series || (model.starts_with("gpt-5") && !model.starts_with("gpt-5-chat"))
}

/// Gemini models that think by default (2.5 and later).
pub(crate) fn gemini_thinking(model: &str) -> bool {
    model.starts_with("gemini-2.5") || model.starts_with("gemini-3")
}

/// Whether a Gemini model can turn thinking off with `thinkingBudget: 0` (Pro cannot).
pub(crate) fn gemini_thinking_optional(model: &str) -> bool {
    !model.contains("-pro")
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn snapshots() {
        let cfg = SimConfig::default();
        assert_eq!(served_model(&cfg, "gpt-4o-mini"), "gpt-4o-mini-2024-07-18");
        assert_eq!(
            served_model(&cfg, "claude-sonnet-4-5"),
            "claude-sonnet-4-5-20250929"
        );
        assert_eq!(served_model(&cfg, "my-local-model"), "my-local-model");
        assert!(is_known(&cfg, "gpt-4o-mini-2024-07-18"));
        assert!(!is_known(&cfg, "my-local-model"));
        let mut cfg = SimConfig::default();
        cfg.model_aliases
            .insert("my-local-model".into(), "my-local-model-v2".into());
        assert_eq!(served_model(&cfg, "my-local-model"), "my-local-model-v2");
        assert!(is_known(&cfg, "my-local-model-v2"));
    }

    #[test]
    fn reasoning() {
        assert!(openai_reasoning("o3-mini"));
        assert!(openai_reasoning("gpt-5-mini"));
        assert!(!openai_reasoning("gpt-5-chat-latest"));
        assert!(!openai_reasoning("gpt-4o"));
        assert!(gemini_thinking("gemini-2.5-flash"));
        assert!(!gemini_thinking("gemini-2.0-flash"));
    }
}
