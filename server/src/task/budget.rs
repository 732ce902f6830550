//! Budgets: limits per usage dimension that the server enforces over a task's whole
//! subtree, and the arithmetic over the usage reported against them.
//!
//! Usage is reported as increments and added to the task (`Task::usage`) and to the
//! `subtree_usage` of the task and every ancestor (detached descendants included: a
//! detached child outlives its parent but still spends its money), in one store
//! transaction. A task whose `subtree_usage` reaches any limit of its own `budget` is
//! soft-cancelled with its subtree ([`Exhausted::reason`]); a child cannot be started
//! under an exhausted ancestor. A usage keeps at most [`MAX_DIMENSIONS`] dimensions (see
//! [`add`]). Pure functions only; the store adds, the engine enforces.

use std::collections::BTreeMap;

use super::TaskId;

/// Amounts per dimension (`input_tokens`, `cost_usd`, …): a budget, a usage, an increment.
pub type Usage = BTreeMap<String, f64>;

/// The deepest a task tree may be, in levels: a task has at most `MAX_DEPTH - 1`
/// ancestors. Every usage report writes to each of them in one transaction, so the chain
/// is bounded.
pub const MAX_DEPTH: usize = 32;

/// The most dimensions a budget (or one usage report) may name.
pub const MAX_DIMENSIONS: usize = 16;

/// The longest dimension name: `[a-z][a-z0-9_]{0,62}`.
pub const MAX_DIMENSION_CHARS: usize = 63;

/// Whether `name` is a valid dimension name (`[a-z][a-z0-9_]{0,62}`).
pub fn is_dimension_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && name.len() <= MAX_DIMENSION_CHARS
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// What is wrong with a budget (limits finite and > 0), as `(dimension, why)`; names must
/// be [`is_dimension_name`]s, at most [`MAX_DIMENSIONS`] of them.
pub fn budget_problems(budget: &Usage) -> Vec<(Option<String>, String)> {
    amount_problems(
        budget,
        |limit| limit.is_finite() && limit > 0.0,
        "finite and > 0",
    )
}

/// What is wrong with a usage increment (amounts finite and ≥ 0), as for budgets.
pub fn increment_problems(increment: &Usage) -> Vec<(Option<String>, String)> {
    amount_problems(
        increment,
        |amount| amount.is_finite() && amount >= 0.0,
        "finite and >= 0",
    )
}

fn amount_problems(
    amounts: &Usage,
    valid: impl Fn(f64) -> bool,
    rule: &str,
) -> Vec<(Option<String>, String)> {
    let mut problems = Vec::new();
    if amounts.len() > MAX_DIMENSIONS {
        problems.push((
            None,
            format!("at most {MAX_DIMENSIONS} dimensions, got {}", amounts.len()),
        ));
    }
    for (dimension, &amount) in amounts {
        if !is_dimension_name(dimension) {
            problems.push((
                Some(dimension.clone()),
                "a dimension name must match [a-z][a-z0-9_]{0,62}".to_owned(),
            ));
        } else if !valid(amount) {
            problems.push((
                Some(dimension.clone()),
                format!("must be {rule}, got {amount}"),
            ));
        }
    }
    problems
}

/// Adds `increment` to `usage`, dimension by dimension. A usage keeps at most
/// [`MAX_DIMENSIONS`] dimensions (a budget's are there from the start): amounts in further
/// ones are not counted, so a record stays bounded. Returns whether all were counted.
pub fn add(usage: &mut Usage, increment: &Usage) -> bool {
    let mut all = true;
    for (dimension, amount) in increment {
        let room = usage.len() < MAX_DIMENSIONS;
        match usage.get_mut(dimension) {
            Some(total) => *total += amount,
            None if room => {
                usage.insert(dimension.clone(), *amount);
            }
            None => all = false,
        }
    }
    all
}

/// The usage a task with `budget` starts with: zero in each of its dimensions, so they
/// are counted whatever else is reported.
pub fn zero_usage(budget: &Usage) -> Usage {
    budget
        .keys()
        .map(|dimension| (dimension.clone(), 0.0))
        .collect()
}

/// One task of a chain (a task and its ancestors) as a usage report left it: its budget
/// and its subtree's usage in the budget's dimensions just before and just after the
/// report was added.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Spending {
    pub task: TaskId,
    pub budget: Usage,
    pub before: Usage,
    pub after: Usage,
}

impl Spending {
    /// The spending of a task with `budget` whose subtree had used `before` and now `after`
    /// (in any dimensions; only the budget's are kept).
    pub fn new(task: TaskId, budget: &Usage, before: &Usage, after: &Usage) -> Spending {
        let within = |used: &Usage| {
            budget
                .keys()
                .map(|d| (d.clone(), used.get(d).copied().unwrap_or(0.0)))
                .collect()
        };
        Spending {
            task,
            budget: budget.clone(),
            before: within(before),
            after: within(after),
        }
    }
}

/// A limit of a budget that has been reached.
#[derive(Clone, Debug, PartialEq)]
pub struct Exhausted {
    pub dimension: String,
    pub used: f64,
    pub limit: f64,
}

impl Exhausted {
    /// The cancel reason, e.g. `budget exhausted: output_tokens 10000 of 10000`.
    pub fn reason(&self) -> String {
        format!(
            "budget exhausted: {} {} of {}",
            self.dimension, self.used, self.limit
        )
    }
}

/// The first limit (in dimension order) of `budget` that `used` has reached.
pub fn exhausted(budget: &Usage, used: &Usage) -> Option<Exhausted> {
    budget.iter().find_map(|(dimension, &limit)| {
        let used = used.get(dimension).copied().unwrap_or(0.0);
        (used >= limit).then(|| Exhausted {
            dimension: dimension.clone(),
            used,
            limit,
        })
    })
}

impl Spending {
    /// The limit this report made the task reach, if it had not reached one before: the
    /// moment to cancel its subtree (exactly one report crosses, however many race).
    pub fn crossed(&self) -> Option<Exhausted> {
        if exhausted(&self.budget, &self.before).is_some() {
            return None;
        }
        exhausted(&self.budget, &self.after)
    }

    /// The limit the task had reached before this report, if any.
    pub fn exhausted_before(&self) -> Option<Exhausted> {
        exhausted(&self.budget, &self.before)
    }
}

/// What is left to spend under every budget of a chain: per dimension, the tightest
/// remaining amount over the task and its ancestors (never below zero).
pub fn remaining<'a>(chain: impl IntoIterator<Item = (&'a Usage, &'a Usage)>) -> Usage {
    let mut left = Usage::new();
    for (budget, used) in chain {
        for (dimension, &limit) in budget {
            let rest = (limit - used.get(dimension).copied().unwrap_or(0.0)).max(0.0);
            left.entry(dimension.clone())
                .and_modify(|tightest| *tightest = f64::min(*tightest, rest))
                .or_insert(rest);
        }
    }
    left
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn usage(pairs: &[(&str, f64)]) -> Usage {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
    }

    #[test]
    fn dimension_names() {
        assert!(is_dimension_name("output_tokens"));
        assert!(is_dimension_name("a"));
        assert!(is_dimension_name(&format!("a{}", "b".repeat(62))));
        assert!(!is_dimension_name(&format!("a{}", "b".repeat(63))));
        for bad in ["", "Tokens", "1x", "_x", "cost-usd", "é"] {
            assert!(!is_dimension_name(bad), "{bad}");
        }
    }

    #[test]
    fn budgets_and_increments_are_checked() {
        assert!(budget_problems(&usage(&[("tokens", 1.0), ("cost_usd", 0.5)])).is_empty());
        assert_eq!(budget_problems(&usage(&[("tokens", 0.0)])).len(), 1);
        assert_eq!(
            budget_problems(&usage(&[("tokens", f64::INFINITY)])).len(),
            1
        );
        assert_eq!(
            budget_problems(&usage(&[("Bad", 1.0)]))[0].0.as_deref(),
            Some("Bad")
        );
        let many: Usage = (0..17).map(|i| (format!("d{i}"), 1.0)).collect();
        assert_eq!(budget_problems(&many)[0].0, None);
        assert!(increment_problems(&usage(&[("tokens", 0.0)])).is_empty());
        assert_eq!(increment_problems(&usage(&[("tokens", -1.0)])).len(), 1);
        assert_eq!(increment_problems(&usage(&[("tokens", f64::NAN)])).len(), 1);
    }

    #[test]
    fn a_usage_keeps_at_most_sixteen_dimensions() {
        let mut used = zero_usage(&usage(&[("tokens", 10.0)]));
        let others: Usage = (0..20).map(|i| (format!("d{i:02}"), 1.0)).collect();
        assert!(!add(&mut used, &others));
        assert_eq!(used.len(), MAX_DIMENSIONS);
        assert!(
            add(&mut used, &usage(&[("tokens", 2.0)])),
            "a budget's dimension always counts"
        );
        assert_eq!(used["tokens"], 2.0);
    }

    #[test]
    fn exhausted_at_the_limit_not_below() {
        let budget = usage(&[("output_tokens", 10000.0), ("cost_usd", 0.5)]);
        assert_eq!(
            exhausted(&budget, &usage(&[("output_tokens", 9999.0)])),
            None
        );
        let reached = exhausted(&budget, &usage(&[("output_tokens", 10000.0)])).unwrap();
        assert_eq!(
            reached.reason(),
            "budget exhausted: output_tokens 10000 of 10000"
        );
        // Dimensions without a limit never exhaust anything.
        assert_eq!(exhausted(&budget, &usage(&[("steps", 1e9)])), None);
    }

    #[test]
    fn only_the_crossing_report_crosses() {
        let budget = usage(&[("steps", 3.0)]);
        let at = |before: f64, after: f64| Spending {
            budget: budget.clone(),
            before: usage(&[("steps", before)]),
            after: usage(&[("steps", after)]),
            ..Spending::default()
        };
        assert!(at(1.0, 2.0).crossed().is_none());
        assert_eq!(at(2.0, 3.0).crossed().unwrap().used, 3.0);
        assert!(at(3.0, 4.0).crossed().is_none());
        assert!(at(3.0, 4.0).exhausted_before().is_some());
    }

    #[test]
    fn remaining_is_the_tightest_over_the_chain() {
        let own = (usage(&[("tokens", 100.0)]), usage(&[("tokens", 10.0)]));
        let parent = (
            usage(&[("tokens", 50.0), ("cost_usd", 1.0)]),
            usage(&[("tokens", 45.0), ("cost_usd", 2.0)]),
        );
        let left = remaining([(&own.0, &own.1), (&parent.0, &parent.1)]);
        assert_eq!(left, usage(&[("tokens", 5.0), ("cost_usd", 0.0)]));
        assert!(remaining([]).is_empty());
    }

    proptest! {
        /// However increments are split, adding them sums to their total, and exactly one
        /// of the successive reports crosses a limit the total reaches.
        #[test]
        fn one_report_crosses(increments in prop::collection::vec(0u32..100, 1..50), limit in 1u32..2000) {
            let budget = usage(&[("steps", f64::from(limit))]);
            let mut used = Usage::new();
            let mut crossings = 0;
            for inc in &increments {
                let before = used.clone();
                add(&mut used, &usage(&[("steps", f64::from(*inc))]));
                let spending = Spending { budget: budget.clone(), before, after: used.clone(), ..Spending::default() };
                crossings += usize::from(spending.crossed().is_some());
            }
            let total: u32 = increments.iter().sum();
            prop_assert_eq!(used["steps"], f64::from(total));
            prop_assert_eq!(crossings, usize::from(total >= limit));
        }
    }
}
