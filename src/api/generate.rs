//! One chat-shaped generation, whatever protocol asked for it: chat
//! completions, the Responses API and Anthropic's Messages API each parse
//! their own wire format down to a `ChatJob` (template messages, tool plan,
//! grammar, validated parameters) and start it here, so admission, grammar
//! compilation, the chat template, tokenization, the context window, the
//! token-limit charge and engine submission are written once.

use std::sync::Arc;

use serde_json::Value;

use super::admit::{admit, blocking, charge_tokens, codec_error, submit_all, PromptJob};
use super::auth::Caller;
use super::error::ApiError;
use super::events::Running;
use super::reqlog::RequestRecord;
use super::structured::{compile, compile_tools};
use super::tools::grammar::tool_grammar;
use super::tools::prompt::render_prompt;
use super::tools::{CallReading, ToolChoice, ToolFormat, ToolPlan};
use super::validate::{fit_context, ValidParams};
use super::AppState;
use crate::structured::GrammarSpec;

/// A generation request in the chat template's terms.
pub struct ChatJob {
    /// Messages as the chat template receives them (`messages::template_messages`).
    pub messages: Vec<Value>,
    pub plan: Option<ToolPlan>,
    /// The grammar to generate under and the parameter its errors name.
    pub grammar: Option<(GrammarSpec, &'static str)>,
    pub params: ValidParams,
    /// The parameter a too-long prompt is blamed on ("messages", "input").
    pub prompt_param: &'static str,
}

/// A submitted generation.
pub struct Started {
    pub running: Running,
    /// How to read the output for tool calls, when tools are active.
    pub tools: Option<CallReading>,
    /// Prompt length in tokens.
    pub prompt_len: usize,
}

/// The grammar a request generates under: its response format, else forced
/// (or lazily constrained) tool calls. `format_param` names the format's
/// parameter ("response_format", "text.format").
pub fn grammar_for(
    state: &AppState,
    format: Option<GrammarSpec>,
    format_param: &'static str,
    plan: Option<&ToolPlan>,
) -> Result<Option<(GrammarSpec, &'static str)>, ApiError> {
    let forced = plan.is_some_and(|p| matches!(p.choice, ToolChoice::Required | ToolChoice::Named(_)));
    if format.is_some() && forced {
        let msg = format!("{format_param} cannot be combined with tool_choice required or a named function");
        return Err(ApiError::invalid(msg, format_param));
    }
    if let Some(f) = format {
        return Ok(Some((f, format_param)));
    }
    let Some(plan) = plan else { return Ok(None) };
    // The format's marker as one control token ([TOOL_CALLS], <|python_tag|>).
    let marker = (plan.format != ToolFormat::Hermes)
        .then(|| plan.format.marker())
        .flatten()
        .and_then(|m| state.codec.encode(m, false).ok())
        .filter(|ids| ids.len() == 1)
        .map(|ids| ids[0]);
    Ok(tool_grammar(plan, marker).map(|g| (g, "tools")))
}

/// The prompt's token ids: messages through the chat template (or the
/// generic tool prompt), tokenized on the blocking pool.
pub async fn prompt_ids(state: &AppState, messages: Vec<Value>, plan: Option<ToolPlan>, param: &'static str) -> Result<Vec<u32>, ApiError> {
    let codec = state.codec.clone();
    blocking(move || {
        let text = render_prompt(codec.as_ref(), messages, plan.as_ref(), true).map_err(|e| codec_error(e, param))?;
        codec.encode(&text, false).map_err(|e| codec_error(e, param))
    })
    .await
}

/// Admits, compiles, templates, tokenizes, charges and submits `job` as
/// request `id`.
pub async fn start_chat(
    state: &Arc<AppState>,
    caller: &Caller,
    record: &RequestRecord,
    id: &str,
    job: ChatJob,
) -> Result<Started, ApiError> {
    let ChatJob { messages, plan, grammar, params, prompt_param } = job;
    // Compiled (and checked against llguidance's limits) before admission:
    // a grammar kiln cannot run is a 400 that takes no place in the queue.
    let grammar = match (grammar, plan.as_ref()) {
        (Some((spec, "tools")), Some(p)) => Some(compile_tools(state, spec, p).await?),
        (Some((spec, param)), _) => Some(compile(state, spec, param).await?),
        (None, _) => None,
    };
    let pending = admit(state, caller, record)?;
    let ids = prompt_ids(state, messages, plan.clone(), prompt_param).await?;
    let max_tokens = fit_context(ids.len(), params.max_tokens, state.model.max_model_len, prompt_param)?;
    charge_tokens(caller, record, ids.len() + max_tokens * params.n)?;
    record.add_prompt_tokens(ids.len());
    let prompt_len = ids.len();
    let jobs = vec![PromptJob { prompt_ids: ids, max_tokens, grammar }];
    let rxs = submit_all(state, id, jobs, &params.sampling, &params.stop, params.n)?;
    let running = Running::new(rxs, params.n, vec![prompt_len], pending, record.clone(), state.clone());
    let tools = plan.as_ref().and_then(ToolPlan::reading);
    Ok(Started { running, tools, prompt_len })
}
