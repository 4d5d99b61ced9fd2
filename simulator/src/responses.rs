//! OpenAI Responses API wire format (`POST /v1/responses`, streaming and not); it must
//! not implement transport, faults or token counting itself.
//!
//! Streaming sends named events (`event:` + `data:`), each with a `sequence_number`:
//! `response.created`, `response.in_progress`, (reasoning models:
//! `response.output_item.added`/`.done` for a `reasoning` item), then for the message
//! `response.output_item.added`, `response.content_part.added`,
//! `response.output_text.delta`…, `response.output_text.done`,
//! `response.content_part.done`, `response.output_item.done`, and finally
//! `response.completed` — or `response.incomplete` (status `incomplete`,
//! `incomplete_details.reason = "max_output_tokens"`) when the limit cut the output.
//! Usage is only in the final event's `response.usage`.

use axum::response::Response;
use http::StatusCode;
use serde_json::{Value, json};

use crate::generate::{self, Finish, Output, OutputSpec};
use crate::openai::{content_steps, reasoning_max, reasoning_on_last};
use crate::prompt::{self, InputUsage, Pieces};
use crate::server::{Ctx, RecordUsage, tri, unix_secs};
use crate::sse::{Framing, Step};
use crate::tokens::encoding_for_model;

fn usage(input: &InputUsage, out: &Output) -> Value {
    let output = out.total_tokens();
    json!({
        "input_tokens": input.total,
        "input_tokens_details": {"cached_tokens": input.cached, "cache_write_tokens": 0},
        "output_tokens": output,
        "output_tokens_details": {"reasoning_tokens": out.reasoning_tokens},
        "total_tokens": input.total + output
    })
}

struct Shape<'a> {
    id: String,
    created: u64,
    served: &'a str,
    req: &'a Value,
}

impl Shape<'_> {
    fn response(&self, status: &str, output: Value, usage: Value) -> Value {
        let get = |k: &str| self.req.get(k).cloned().unwrap_or(Value::Null);
        json!({
            "id": self.id,
            "object": "response",
            "created_at": self.created,
            "status": status,
            "background": false,
            "error": null,
            "incomplete_details": if status == "incomplete" { json!({"reason": "max_output_tokens"}) } else { Value::Null },
            "instructions": get("instructions"),
            "max_output_tokens": get("max_output_tokens"),
            "max_tool_calls": null,
            "model": self.served,
            "output": output,
            "parallel_tool_calls": true,
            "previous_response_id": get("previous_response_id"),
            "reasoning": {"effort": self.req.pointer("/reasoning/effort").cloned().unwrap_or(Value::Null), "summary": null},
            "service_tier": "default",
            "store": self.req.get("store").and_then(Value::as_bool).unwrap_or(true),
            "temperature": 1.0,
            "text": {"format": {"type": "text"}, "verbosity": "medium"},
            "tool_choice": "auto",
            "tools": self.req.get("tools").cloned().unwrap_or_else(|| json!([])),
            "top_logprobs": 0,
            "top_p": 1.0,
            "truncation": "disabled",
            "usage": usage,
            "user": null,
            "metadata": self.req.get("metadata").cloned().unwrap_or_else(|| json!({}))
        })
    }
}

/// `POST /v1/responses`.
pub(crate) async fn create(mut ctx: Ctx, body: &[u8]) -> Response {
    let req = tri!(ctx.parse(body));
    let Some(model) = req.get("model").and_then(Value::as_str) else {
        return ctx.error(
            StatusCode::BAD_REQUEST,
            "Missing required parameter: 'model'.",
        );
    };
    let served = tri!(ctx.model(model));
    tri!(ctx.injected_failure());
    let enc = encoding_for_model(model);
    let mut pieces = Pieces::default();
    if let Some(tools) = req.get("tools").filter(|t| !t.is_null()) {
        pieces.push_json(tools);
    }
    if let Some(i) = req.get("instructions") {
        pieces.collect(i);
    }
    if let Some(i) = req.get("input") {
        pieces.collect(i);
    }
    let input = prompt::openai_input(enc, &ctx.shared.cache, &served, &pieces);
    let stream = req.get("stream").and_then(Value::as_bool) == Some(true);
    let effort = req.pointer("/reasoning/effort").and_then(Value::as_str);
    let reasoning = reasoning_max(model, effort);
    let out = generate::plan_output(
        &mut ctx.rng(),
        OutputSpec {
            encoding: enc,
            max_tokens: req.get("max_output_tokens").and_then(Value::as_u64),
            forced: ctx.faults.output_tokens,
            reasoning_max: reasoning,
            visible_reasoning: false,
            chunk_tokens: ctx.chunk_tokens(),
        },
    );
    ctx.set_usage(
        RecordUsage {
            input: input.total,
            cached: input.cached,
            cache_write: 0,
            output: out.total_tokens(),
            reasoning: out.reasoning_tokens,
        },
        stream,
    );
    let shape = Shape {
        id: ctx.id("resp_"),
        created: unix_secs(),
        served: &served,
        req: &req,
    };
    let status = match out.finish {
        Finish::Stop => "completed",
        Finish::Length => "incomplete",
    };
    let rs_id = ctx.id("rs_");
    let msg_id = ctx.id("msg_");
    let reasoning_item = json!({"id": rs_id, "type": "reasoning", "summary": []});
    let text_part = |text: &str| json!({"type": "output_text", "annotations": [], "logprobs": [], "text": text});
    let message = |status: &str, content: Value| json!({"id": msg_id, "type": "message", "status": status, "content": content, "role": "assistant"});
    let has_reasoning = reasoning > 0;
    let final_message = message(status, json!([text_part(&out.answer.text)]));
    let mut output = Vec::new();
    if has_reasoning {
        output.push(reasoning_item.clone());
    }
    output.push(final_message.clone());
    let final_response = shape.response(status, Value::Array(output), usage(&input, &out));
    if !stream {
        return ctx.json(&final_response).await;
    }

    let mut seq = 0u64;
    let mut event = |name: &'static str, mut data: Value| -> Step {
        data["type"] = json!(name);
        data["sequence_number"] = json!(seq);
        seq += 1;
        Step::control(name, data.to_string())
    };
    let pending = shape.response("in_progress", json!([]), Value::Null);
    let mut steps = vec![
        event("response.created", json!({"response": pending})),
        event("response.in_progress", json!({"response": pending})),
    ];
    let msg_index = usize::from(has_reasoning);
    if has_reasoning {
        steps.push(event(
            "response.output_item.added",
            json!({"output_index": 0, "item": reasoning_item}),
        ));
        steps.push(event(
            "response.output_item.done",
            json!({"output_index": 0, "item": reasoning_item}),
        ));
    }
    steps.push(event(
        "response.output_item.added",
        json!({"output_index": msg_index, "item": message("in_progress", json!([]))}),
    ));
    steps.push(event(
        "response.content_part.added",
        json!({"item_id": msg_id, "output_index": msg_index, "content_index": 0, "part": text_part("")}),
    ));
    let content = content_steps(&out, "response.output_text.delta", |_| String::new());
    let had_content = !content.is_empty();
    for (step, (text, _)) in content.into_iter().zip(out.answer.chunk_texts()) {
        let mut e = event(
            "response.output_text.delta",
            json!({"item_id": msg_id, "output_index": msg_index, "content_index": 0, "delta": text, "logprobs": []}),
        );
        e.tokens = step.tokens;
        e.content = true;
        steps.push(e);
    }
    steps.push(event(
        "response.output_text.done",
        json!({"item_id": msg_id, "output_index": msg_index, "content_index": 0, "text": out.answer.text, "logprobs": []}),
    ));
    steps.push(event(
        "response.content_part.done",
        json!({"item_id": msg_id, "output_index": msg_index, "content_index": 0, "part": text_part(&out.answer.text)}),
    ));
    steps.push(event(
        "response.output_item.done",
        json!({"output_index": msg_index, "item": final_message}),
    ));
    let last_name = if status == "completed" {
        "response.completed"
    } else {
        "response.incomplete"
    };
    steps.push(event(last_name, json!({"response": final_response})));
    reasoning_on_last(&mut steps, &out, had_content);
    ctx.stream(steps, Framing::Named)
}
