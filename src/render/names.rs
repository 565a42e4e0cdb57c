//! Load-time check that every filter, test and function a template calls
//! exists, so `{{ x | monee }}` is a rule-file error rather than a
//! `render_error` on every message.

use std::collections::BTreeSet;

use minijinja::machinery::{get_compiled_template, Instruction, Instructions};
use minijinja::{Environment, ErrorKind, Value};

use super::TemplateError;

/// Names a template defines for itself and may call: loop and block helpers,
/// and the macros and variables it stores.
const BUILT_IN_CALLABLES: [&str; 3] = ["caller", "loop", "super"];

/// Every unknown filter, test or function in the named template, each with
/// its position in the template text, in text order.
pub(super) fn unknown_names(env: &Environment<'static>, name: &str) -> Vec<TemplateError> {
    let Ok(template) = env.get_template(name) else {
        return Vec::new();
    };
    let compiled = get_compiled_template(&template);
    let source = template.source();
    let mut parts: Vec<&Instructions<'_>> = vec![&compiled.instructions];
    parts.extend(compiled.blocks.values());
    let stored: BTreeSet<&str> = parts
        .iter()
        .flat_map(|part| numbered(part))
        .filter_map(|(_, instruction)| match instruction {
            Instruction::StoreLocal(local) => Some(*local),
            _ => None,
        })
        .collect();
    let globals: BTreeSet<&str> = env.globals().map(|(n, _)| n).collect();
    let mut state = env.empty_state();
    let mut problems = Vec::new();
    for part in parts {
        for (at, instruction) in numbered(part) {
            let unknown = match instruction {
                Instruction::ApplyFilter(filter, ..) => {
                    let probe = state.apply_filter(filter, &[Value::UNDEFINED]);
                    matches!(probe, Err(e) if e.kind() == ErrorKind::UnknownFilter)
                        .then(|| format!("unknown filter `{filter}`; {}", FILTERS_HINT))
                }
                Instruction::PerformTest(test, ..) => {
                    let probe = state.perform_test(test, &[Value::UNDEFINED]);
                    matches!(probe, Err(e) if e.kind() == ErrorKind::UnknownTest)
                        .then(|| format!("unknown test `{test}` (after `is`)"))
                }
                Instruction::CallFunction(function, _) => (!globals.contains(function)
                    && !stored.contains(function)
                    && !BUILT_IN_CALLABLES.contains(function))
                .then(|| format!("unknown function `{function}`")),
                _ => None,
            };
            if let Some(message) = unknown {
                let (line, column) = match part.get_span(at) {
                    Some(span) => crate::config::line_col(source, span.start_offset as usize),
                    None => (part.get_line(at).unwrap_or(1), 1),
                };
                problems.push(TemplateError {
                    line,
                    column,
                    message,
                });
            }
        }
    }
    problems.sort_by_key(|p| (p.line, p.column));
    problems
}

/// What herald adds to minijinja's own filters, for the error's hint.
const FILTERS_HINT: &str =
    "herald's filters are money, number, plural, mask_card, mask_phone, local_time, local_date and local_datetime, beside minijinja's (upper, default, round, …)";

/// Each instruction with its index.
fn numbered<'i, 's>(
    part: &'i Instructions<'s>,
) -> impl Iterator<Item = (u32, &'i Instruction<'s>)> {
    (0u32..).map_while(move |i| part.get(i).map(|instruction| (i, instruction)))
}
