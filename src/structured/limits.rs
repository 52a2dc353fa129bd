//! A check, before a grammar is admitted, for the one llguidance limit that
//! otherwise only shows during generation: the Earley parser refuses a step
//! whose row holds more than `max_items_in_row` items (2000 by default;
//! "Current row has N items; max is 2000"). A JSON schema choice with that
//! many alternatives that are not plain constants (an `anyOf`/`oneOf` of
//! objects, say) compiles fine and fails only once the output reaches it.
//!
//! The row the parser builds when it predicts a nonterminal holds at least
//! every rule in that nonterminal's prediction closure (its rules, the rules
//! of the symbols they start with, through nullable prefixes). Every
//! reachable nonterminal is predicted for some output, so a closure over the
//! limit means some output the grammar allows cannot be generated: the
//! request is refused. The check is a lower bound (a row may also gather
//! items from several predictions), so passing it does not promise that no
//! row overflows; failing it means one will.

use std::collections::HashSet;

use llguidance::earley::{CGrammar, CSymIdx};

/// Rule visits the whole check may spend; past this it gives up (passes),
/// so a huge grammar costs bounded time at admission.
const WORK_BUDGET: usize = 20_000_000;

/// The largest prediction closure over `limit` among the nonterminals
/// reachable from the start symbol, with that symbol's name, or None when
/// every closure fits (or the work budget ran out first).
pub fn oversized_prediction(g: &CGrammar, limit: usize) -> Option<(usize, String)> {
    let mut work = 0usize;
    let mut seen: HashSet<CSymIdx> = HashSet::new();
    let mut stack = vec![g.start()];
    seen.insert(g.start());
    while let Some(sym) = stack.pop() {
        for &rule in g.rules_of(sym) {
            let (rhs, _, _) = g.rule_rhs(rule);
            for &s in rhs {
                if s != CSymIdx::NULL && seen.insert(s) {
                    stack.push(s);
                }
            }
        }
        let n = closure_size(g, sym, limit, &mut work)?;
        if n > limit {
            return Some((n, g.sym_data(sym).name.clone()));
        }
    }
    None
}

/// How many distinct rules predicting `sym` adds, counted up to `limit + 1`;
/// None when the work budget is spent.
fn closure_size(g: &CGrammar, sym: CSymIdx, limit: usize, work: &mut usize) -> Option<usize> {
    let mut rules = HashSet::new();
    let mut predicted = HashSet::from([sym]);
    let mut stack = vec![sym];
    while let Some(s) = stack.pop() {
        for &rule in g.rules_of(s) {
            *work += 1;
            if *work > WORK_BUDGET {
                return None;
            }
            rules.insert(rule);
            if rules.len() > limit {
                return Some(rules.len());
            }
            let (rhs, _, _) = g.rule_rhs(rule);
            for &next in rhs {
                if predicted.insert(next) {
                    stack.push(next);
                }
                if !g.sym_data(next).is_nullable {
                    break;
                }
            }
        }
    }
    Some(rules.len())
}
