//! Tags filters: the `tf` tree of a subscribe request, checked and compiled once, and its verdict
//! on the tags of each publication.
//!
//! The semantics are the reference server's (centrifugal/centrifuge `internal/filter`):
//!
//! - A leaf (`op` "") compares the tag `key` by `cmp`. `eq`, `sw`, `ew`, `ct` and the numeric
//!   comparisons need the tag to be present; `neq` holds when it is absent; `ex`/`nex` test
//!   presence; `in`/`nin` look the value up in `vals`, an absent tag reading as "".
//! - `lt`, `lte`, `gt`, `gte` compare decimal numbers exactly (`[+-]digits[.digits]`, at most 19
//!   fractional digits, at most 200 characters). When either side is not such a number the
//!   comparison is false, never an error.
//! - `and`/`or` take one or more nodes, `not` exactly one.
//! - `eq`, `neq`, `sw`, `ew`, `ct` and the numeric comparisons take a non-empty `val` and no
//!   `vals`; `in`/`nin` a non-empty `vals` and no `val`; `ex`/`nex` neither. Every leaf but
//!   `ex`/`nex` names a key.
//!
//! Herald is stricter in two ways, both answered 107 like any invalid filter: a node may not
//! carry fields its kind ignores (a leaf with `nodes`, a logical node with `key`, `cmp`, `val` or
//! `vals`), and a filter is bounded: [`MAX_NODES`] nodes, [`MAX_DEPTH`] levels and
//! [`MAX_VALUES`] `vals` in all, so that evaluating one costs little and predictably.
//!
//! Equal filters are interned: every subscription that sends the same tree (the same Protobuf
//! encoding, whichever format it came in) holds the same [`TagsFilter`] and its [`id`], which is
//! what lets a publication be judged once per distinct filter ([`super::Prepared::passes`]).
//!
//! [`id`]: TagsFilter::id

use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, LazyLock, Weak};

use parking_lot::Mutex;
use prost::Message as _;

use crate::protocol::proto::FilterNode;

/// Most nodes (leaves and logical nodes) in one filter.
pub const MAX_NODES: usize = 128;
/// Most levels in one filter: a single leaf is one level, `not` over a leaf two.
pub const MAX_DEPTH: usize = 16;
/// Most `vals` entries over all the `in`/`nin` leaves of one filter.
pub const MAX_VALUES: usize = 1024;

/// The reference's bounds on a decimal number (udecimal: 200 characters, 19 fractional digits).
const MAX_NUMBER_LEN: usize = 200;
const MAX_FRACTION_DIGITS: usize = 19;

/// Why a filter was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    #[error("unknown op {0:?}")]
    UnknownOp(String),
    #[error("a leaf needs cmp")]
    MissingCmp,
    #[error("unknown cmp {0:?}")]
    UnknownCmp(String),
    #[error("{0} takes a non-empty val and no vals")]
    NeedsVal(&'static str),
    #[error("{0} takes a non-empty vals and no val")]
    NeedsVals(&'static str),
    #[error("{0} takes neither val nor vals")]
    TakesNoValue(&'static str),
    #[error("a leaf needs a key")]
    MissingKey,
    #[error("a leaf has no nodes")]
    LeafWithNodes,
    #[error("{0} takes no key, cmp, val or vals")]
    LogicalWithLeafFields(&'static str),
    #[error("{0} needs at least one node")]
    NoNodes(&'static str),
    #[error("not takes exactly one node")]
    NotArity,
    #[error("more than {MAX_DEPTH} levels")]
    TooDeep,
    #[error("more than {MAX_NODES} nodes")]
    TooManyNodes,
    #[error("more than {MAX_VALUES} vals")]
    TooManyValues,
}

/// A checked, compiled tags filter, shared by every subscription that sent the same tree.
pub struct TagsFilter {
    id: u64,
    root: Node,
    /// The Protobuf encoding of the tree: the key it is interned under.
    encoding: Box<[u8]>,
}

impl std::fmt::Debug for TagsFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TagsFilter")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Live filters by encoding. Entries are weak: the last subscription holding a filter drops it,
/// and its `Drop` removes the entry.
type Interned = HashMap<Box<[u8]>, Weak<TagsFilter>>;
static INTERNED: LazyLock<Mutex<Interned>> = LazyLock::new(Default::default);
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl TagsFilter {
    /// Checks `tree` and returns the filter it denotes, the same `Arc` for equal trees.
    pub fn intern(tree: &FilterNode) -> Result<Arc<Self>, FilterError> {
        let mut budget = Budget::default();
        let root = Node::compile(tree, 1, &mut budget)?;
        let encoding: Box<[u8]> = tree.encode_to_vec().into();
        let mut interned = INTERNED.lock();
        if let Some(existing) = interned.get(&encoding).and_then(Weak::upgrade) {
            return Ok(existing);
        }
        let filter = Arc::new(Self {
            id: NEXT_ID.fetch_add(1, AtomicOrdering::Relaxed),
            root,
            encoding: encoding.clone(),
        });
        interned.insert(encoding, Arc::downgrade(&filter));
        Ok(filter)
    }

    /// Names the filter among live ones: equal trees share an id; ids are never reused.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Whether a publication with these tags passes the filter.
    pub fn matches(&self, tags: &HashMap<String, String>) -> bool {
        self.root.matches(tags)
    }
}

impl Drop for TagsFilter {
    fn drop(&mut self) {
        let mut interned = INTERNED.lock();
        // An intern racing with this drop may already have put a new filter under the same key.
        if interned.get(&self.encoding).is_some_and(|w| w.strong_count() == 0) {
            interned.remove(&self.encoding);
        }
    }
}

/// What is left of a filter's bounds while it is compiled.
#[derive(Default)]
struct Budget {
    nodes: usize,
    values: usize,
}

enum Node {
    And(Box<[Node]>),
    Or(Box<[Node]>),
    Not(Box<Node>),
    Leaf { key: Box<str>, test: Test },
}

enum Test {
    Eq(Box<str>),
    Neq(Box<str>),
    /// Sorted, for a binary search.
    In(Box<[Box<str>]>),
    NotIn(Box<[Box<str>]>),
    Exists,
    NotExists,
    StartsWith(Box<str>),
    EndsWith(Box<str>),
    Contains(Box<str>),
    /// Holds when the tag compares to `val` as one of `accept`; `val` is `None` when the
    /// filter's value is not a number, which no tag then satisfies.
    Compare {
        val: Option<OwnedNumber>,
        accept: &'static [Ordering],
    },
}

/// The shape of a leaf's value a comparison takes.
#[derive(Clone, Copy)]
enum Operand {
    Val,
    Vals,
    Nothing,
}

impl Node {
    fn compile(tree: &FilterNode, depth: usize, budget: &mut Budget) -> Result<Self, FilterError> {
        if depth > MAX_DEPTH {
            return Err(FilterError::TooDeep);
        }
        budget.nodes += 1;
        if budget.nodes > MAX_NODES {
            return Err(FilterError::TooManyNodes);
        }
        let op = match tree.op.as_str() {
            "" => return Self::compile_leaf(tree, budget),
            "and" => "and",
            "or" => "or",
            "not" => "not",
            other => return Err(FilterError::UnknownOp(other.to_owned())),
        };
        if !(tree.key.is_empty() && tree.cmp.is_empty() && tree.val.is_empty() && tree.vals.is_empty()) {
            return Err(FilterError::LogicalWithLeafFields(op));
        }
        let mut nodes = tree
            .nodes
            .iter()
            .map(|child| Self::compile(child, depth + 1, budget))
            .collect::<Result<Vec<Node>, _>>()?;
        match op {
            "and" | "or" if nodes.is_empty() => Err(FilterError::NoNodes(op)),
            "and" => Ok(Self::And(nodes.into())),
            "or" => Ok(Self::Or(nodes.into())),
            _ if nodes.len() == 1 => Ok(Self::Not(Box::new(nodes.remove(0)))),
            _ => Err(FilterError::NotArity),
        }
    }

    fn compile_leaf(tree: &FilterNode, budget: &mut Budget) -> Result<Self, FilterError> {
        if !tree.nodes.is_empty() {
            return Err(FilterError::LeafWithNodes);
        }
        let (cmp, operand): (&'static str, Operand) = match tree.cmp.as_str() {
            "" => return Err(FilterError::MissingCmp),
            "eq" => ("eq", Operand::Val),
            "neq" => ("neq", Operand::Val),
            "sw" => ("sw", Operand::Val),
            "ew" => ("ew", Operand::Val),
            "ct" => ("ct", Operand::Val),
            "lt" => ("lt", Operand::Val),
            "lte" => ("lte", Operand::Val),
            "gt" => ("gt", Operand::Val),
            "gte" => ("gte", Operand::Val),
            "in" => ("in", Operand::Vals),
            "nin" => ("nin", Operand::Vals),
            "ex" => ("ex", Operand::Nothing),
            "nex" => ("nex", Operand::Nothing),
            other => return Err(FilterError::UnknownCmp(other.to_owned())),
        };
        let (has_val, has_vals) = (!tree.val.is_empty(), !tree.vals.is_empty());
        match operand {
            Operand::Val if !has_val || has_vals => return Err(FilterError::NeedsVal(cmp)),
            Operand::Vals if !has_vals || has_val => return Err(FilterError::NeedsVals(cmp)),
            Operand::Nothing if has_val || has_vals => return Err(FilterError::TakesNoValue(cmp)),
            _ => {}
        }
        if tree.key.is_empty() && !matches!(operand, Operand::Nothing) {
            return Err(FilterError::MissingKey);
        }
        budget.values += tree.vals.len();
        if budget.values > MAX_VALUES {
            return Err(FilterError::TooManyValues);
        }
        let val = || Box::<str>::from(tree.val.as_str());
        let vals = || {
            let mut vals: Vec<Box<str>> = tree.vals.iter().map(|v| Box::from(v.as_str())).collect();
            vals.sort_unstable();
            vals.dedup();
            vals.into_boxed_slice()
        };
        let compare = |accept: &'static [Ordering]| Test::Compare {
            val: Number::parse(&tree.val).map(|n| n.to_owned()),
            accept,
        };
        let test = match cmp {
            "eq" => Test::Eq(val()),
            "neq" => Test::Neq(val()),
            "in" => Test::In(vals()),
            "nin" => Test::NotIn(vals()),
            "ex" => Test::Exists,
            "nex" => Test::NotExists,
            "sw" => Test::StartsWith(val()),
            "ew" => Test::EndsWith(val()),
            "ct" => Test::Contains(val()),
            "lt" => compare(&[Ordering::Less]),
            "lte" => compare(&[Ordering::Less, Ordering::Equal]),
            "gt" => compare(&[Ordering::Greater]),
            _ => compare(&[Ordering::Greater, Ordering::Equal]),
        };
        Ok(Self::Leaf {
            key: tree.key.as_str().into(),
            test,
        })
    }

    fn matches(&self, tags: &HashMap<String, String>) -> bool {
        match self {
            Self::And(nodes) => nodes.iter().all(|n| n.matches(tags)),
            Self::Or(nodes) => nodes.iter().any(|n| n.matches(tags)),
            Self::Not(node) => !node.matches(tags),
            Self::Leaf { key, test } => {
                let tag = tags.get(&**key).map(String::as_str);
                match test {
                    Test::Eq(val) => tag == Some(&**val),
                    Test::Neq(val) => tag != Some(&**val),
                    Test::In(vals) => vals.binary_search_by(|v| (**v).cmp(tag.unwrap_or(""))).is_ok(),
                    Test::NotIn(vals) => vals.binary_search_by(|v| (**v).cmp(tag.unwrap_or(""))).is_err(),
                    Test::Exists => tag.is_some(),
                    Test::NotExists => tag.is_none(),
                    Test::StartsWith(val) => tag.is_some_and(|t| t.starts_with(&**val)),
                    Test::EndsWith(val) => tag.is_some_and(|t| t.ends_with(&**val)),
                    Test::Contains(val) => tag.is_some_and(|t| t.contains(&**val)),
                    Test::Compare { val, accept } => match (tag.and_then(Number::parse), val) {
                        (Some(tag), Some(val)) => accept.contains(&tag.cmp(&val.as_number())),
                        _ => false,
                    },
                }
            }
        }
    }
}

/// A decimal number as written, normalised so that equal values compare equal: the integer
/// digits without leading zeros, the fractional digits without trailing zeros.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Number<'a> {
    negative: bool,
    integer: &'a str,
    fraction: &'a str,
}

/// A [`Number`] the filter keeps (its `val`).
struct OwnedNumber {
    negative: bool,
    integer: Box<str>,
    fraction: Box<str>,
}

impl<'a> Number<'a> {
    /// `[+-]digits[.digits]`, as the reference accepts it; `None` otherwise.
    fn parse(text: &'a str) -> Option<Self> {
        if text.len() > MAX_NUMBER_LEN {
            return None;
        }
        let (negative, unsigned) = match text.as_bytes().first()? {
            b'-' => (true, &text[1..]),
            b'+' => (false, &text[1..]),
            _ => (false, text),
        };
        let (integer, fraction) = match unsigned.split_once('.') {
            Some((integer, fraction)) => (integer, Some(fraction)),
            None => (unsigned, None),
        };
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(integer) || fraction.is_some_and(|f| !digits(f) || f.len() > MAX_FRACTION_DIGITS) {
            return None;
        }
        let integer = integer.trim_start_matches('0');
        let fraction = fraction.unwrap_or("").trim_end_matches('0');
        Some(Self {
            // -0 is 0.
            negative: negative && !(integer.is_empty() && fraction.is_empty()),
            integer,
            fraction,
        })
    }

    fn to_owned(self) -> OwnedNumber {
        OwnedNumber {
            negative: self.negative,
            integer: self.integer.into(),
            fraction: self.fraction.into(),
        }
    }

    /// Compares absolute values: more integer digits is larger, then digit by digit.
    fn cmp_magnitude(&self, other: &Self) -> Ordering {
        self.integer
            .len()
            .cmp(&other.integer.len())
            .then_with(|| self.integer.cmp(other.integer))
            .then_with(|| self.fraction.cmp(other.fraction))
    }
}

impl Ord for Number<'_> {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self.negative, other.negative) {
            (false, true) => Ordering::Greater,
            (true, false) => Ordering::Less,
            (false, false) => self.cmp_magnitude(other),
            (true, true) => other.cmp_magnitude(self),
        }
    }
}

impl PartialOrd for Number<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl OwnedNumber {
    fn as_number(&self) -> Number<'_> {
        Number {
            negative: self.negative,
            integer: &self.integer,
            fraction: &self.fraction,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(key: &str, cmp: &str, val: &str) -> FilterNode {
        FilterNode {
            key: key.into(),
            cmp: cmp.into(),
            val: val.into(),
            ..Default::default()
        }
    }

    fn set(key: &str, cmp: &str, vals: &[&str]) -> FilterNode {
        FilterNode {
            key: key.into(),
            cmp: cmp.into(),
            vals: vals.iter().map(|v| v.to_string()).collect(),
            ..Default::default()
        }
    }

    fn logical(op: &str, nodes: Vec<FilterNode>) -> FilterNode {
        FilterNode {
            op: op.into(),
            nodes,
            ..Default::default()
        }
    }

    fn tags(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    /// Whether `tree` lets a publication with `pairs` through.
    fn passes(tree: FilterNode, pairs: &[(&str, &str)]) -> bool {
        TagsFilter::intern(&tree).expect("a valid filter").matches(&tags(pairs))
    }

    #[test]
    fn eq_and_neq() {
        assert!(passes(leaf("env", "eq", "prod"), &[("env", "prod")]));
        assert!(!passes(leaf("env", "eq", "prod"), &[("env", "dev")]));
        assert!(!passes(leaf("env", "eq", "prod"), &[]), "eq needs the tag");
        assert!(passes(leaf("env", "neq", "prod"), &[("env", "dev")]));
        assert!(!passes(leaf("env", "neq", "prod"), &[("env", "prod")]));
        assert!(passes(leaf("env", "neq", "prod"), &[]), "neq holds for a missing tag");
    }

    #[test]
    fn in_and_nin() {
        let regions = ["us", "eu"];
        assert!(passes(set("region", "in", &regions), &[("region", "eu")]));
        assert!(!passes(set("region", "in", &regions), &[("region", "asia")]));
        assert!(!passes(set("region", "in", &regions), &[]));
        assert!(passes(set("region", "nin", &regions), &[("region", "asia")]));
        assert!(!passes(set("region", "nin", &regions), &[("region", "us")]));
        assert!(passes(set("region", "nin", &regions), &[]));
        // As the reference: a missing tag reads as "".
        assert!(passes(set("region", "in", &["", "us"]), &[]));
        assert!(!passes(set("region", "nin", &["", "us"]), &[]));
    }

    #[test]
    fn ex_and_nex() {
        let ex = || FilterNode {
            key: "vip".into(),
            cmp: "ex".into(),
            ..Default::default()
        };
        assert!(passes(ex(), &[("vip", "")]));
        assert!(!passes(ex(), &[("other", "1")]));
        let nex = FilterNode {
            cmp: "nex".into(),
            ..ex()
        };
        assert!(passes(nex.clone(), &[("other", "1")]));
        assert!(!passes(nex, &[("vip", "yes")]));
    }

    #[test]
    fn sw_ew_ct() {
        assert!(passes(leaf("sym", "sw", "BT"), &[("sym", "BTCUSD")]));
        assert!(!passes(leaf("sym", "sw", "ET"), &[("sym", "BTCUSD")]));
        assert!(passes(leaf("sym", "ew", "USD"), &[("sym", "BTCUSD")]));
        assert!(!passes(leaf("sym", "ew", "EUR"), &[("sym", "BTCUSD")]));
        assert!(passes(leaf("sym", "ct", "CU"), &[("sym", "BTCUSD")]));
        assert!(!passes(leaf("sym", "ct", "XX"), &[("sym", "BTCUSD")]));
        for cmp in ["sw", "ew", "ct"] {
            assert!(!passes(leaf("sym", cmp, "B"), &[]), "{cmp} needs the tag");
        }
    }

    #[test]
    fn numeric_comparisons() {
        let check = |cmp: &str, val: &str, tag: &str| passes(leaf("price", cmp, val), &[("price", tag)]);
        assert!(check("lt", "100", "99.5"));
        assert!(!check("lt", "100", "100"));
        assert!(check("lte", "100", "100.000"));
        assert!(!check("lte", "100", "100.01"));
        assert!(check("gt", "100", "1000"), "numeric, not lexicographic");
        assert!(!check("gt", "100", "20"));
        assert!(check("gte", "-1.5", "-1.50"));
        assert!(!check("gte", "-1.5", "-2"));
        assert!(check("gt", "-0", "0.1"));
        assert!(check("lte", "0", "-0"), "-0 is 0");
        assert!(check("gt", "0.45", "0.5"));
        assert!(check("gt", "007", "+8"), "leading zeros and a plus sign");
        let huge = "1".repeat(60);
        assert!(check("gt", &huge[1..], &huge), "beyond 128 bits, still exact");
        // Not a number on either side, or a missing tag: false, never an error.
        assert!(!check("gt", "100", "lots"));
        assert!(!check("lt", "100", "1e3"));
        assert!(!check("lt", "100", ".5"));
        assert!(!check("lt", "100", "5."));
        assert!(!check("lt", "100", "-"));
        assert!(
            !check("lt", "100", "0.12345678901234567890"),
            "more than 19 fractional digits"
        );
        assert!(!check("lt", &"9".repeat(201), "1"), "longer than 200 characters");
        assert!(!check("gt", "many", "100"));
        assert!(!check("lt", "many", "100"));
        assert!(!passes(leaf("price", "gt", "1"), &[]));
    }

    #[test]
    fn and_or_not() {
        let both = || logical("and", vec![leaf("a", "eq", "1"), leaf("b", "eq", "2")]);
        assert!(passes(both(), &[("a", "1"), ("b", "2")]));
        assert!(!passes(both(), &[("a", "1"), ("b", "3")]));
        let either = || logical("or", vec![leaf("a", "eq", "1"), leaf("b", "eq", "2")]);
        assert!(passes(either(), &[("b", "2")]));
        assert!(!passes(either(), &[("a", "2"), ("b", "1")]));
        assert!(passes(logical("not", vec![both()]), &[("a", "1")]));
        assert!(!passes(logical("not", vec![both()]), &[("a", "1"), ("b", "2")]));
    }

    #[test]
    fn invalid_filters_are_refused() {
        let refused = |tree: FilterNode| TagsFilter::intern(&tree).unwrap_err();
        assert_eq!(refused(leaf("a", "", "1")), FilterError::MissingCmp);
        assert_eq!(refused(leaf("a", "like", "1")), FilterError::UnknownCmp("like".into()));
        assert_eq!(
            refused(logical("xor", vec![leaf("a", "eq", "1")])),
            FilterError::UnknownOp("xor".into())
        );
        assert_eq!(refused(leaf("a", "eq", "")), FilterError::NeedsVal("eq"));
        assert_eq!(refused(set("a", "gt", &["1"])), FilterError::NeedsVal("gt"));
        assert_eq!(refused(set("a", "in", &[])), FilterError::NeedsVals("in"));
        let both = FilterNode {
            val: "x".into(),
            ..set("a", "nin", &["1"])
        };
        assert_eq!(refused(both), FilterError::NeedsVals("nin"));
        assert_eq!(refused(leaf("a", "ex", "1")), FilterError::TakesNoValue("ex"));
        assert_eq!(refused(leaf("", "eq", "1")), FilterError::MissingKey);
        assert_eq!(refused(logical("and", vec![])), FilterError::NoNodes("and"));
        assert_eq!(refused(logical("or", vec![])), FilterError::NoNodes("or"));
        assert_eq!(refused(logical("not", vec![])), FilterError::NotArity);
        assert_eq!(
            refused(logical("not", vec![leaf("a", "eq", "1"), leaf("b", "eq", "1")])),
            FilterError::NotArity
        );
        let leaf_with_nodes = FilterNode {
            nodes: vec![leaf("b", "eq", "1")],
            ..leaf("a", "eq", "1")
        };
        assert_eq!(refused(leaf_with_nodes), FilterError::LeafWithNodes);
        let and_with_key = FilterNode {
            key: "a".into(),
            ..logical("and", vec![leaf("a", "eq", "1")])
        };
        assert_eq!(refused(and_with_key), FilterError::LogicalWithLeafFields("and"));
        // An invalid node deep inside spoils the whole filter.
        assert_eq!(
            refused(logical(
                "and",
                vec![leaf("a", "eq", "1"), logical("or", vec![leaf("b", "??", "1")])]
            )),
            FilterError::UnknownCmp("??".into())
        );
    }

    #[test]
    fn filters_are_bounded() {
        let mut deep = leaf("a", "eq", "1");
        for _ in 1..MAX_DEPTH {
            deep = logical("not", vec![deep]);
        }
        assert!(TagsFilter::intern(&deep).is_ok(), "{MAX_DEPTH} levels are allowed");
        assert_eq!(
            TagsFilter::intern(&logical("not", vec![deep])).unwrap_err(),
            FilterError::TooDeep
        );

        let wide = |leaves: usize| logical("or", (0..leaves).map(|i| leaf("a", "eq", &i.to_string())).collect());
        assert!(TagsFilter::intern(&wide(MAX_NODES - 1)).is_ok());
        assert_eq!(
            TagsFilter::intern(&wide(MAX_NODES)).unwrap_err(),
            FilterError::TooManyNodes
        );

        let values: Vec<String> = (0..MAX_VALUES).map(|i| i.to_string()).collect();
        let values: Vec<&str> = values.iter().map(String::as_str).collect();
        let half = values.len() / 2;
        let split = logical(
            "or",
            vec![set("a", "in", &values[..half]), set("b", "nin", &values[half..])],
        );
        assert!(TagsFilter::intern(&split).is_ok());
        let over = logical("or", vec![set("a", "in", &values), set("b", "in", &["x"])]);
        assert_eq!(TagsFilter::intern(&over).unwrap_err(), FilterError::TooManyValues);
    }

    /// Equal trees share one filter and id while one is alive; a new filter after the last one
    /// is gone gets a new id.
    #[test]
    fn equal_filters_are_interned() {
        let tree = || leaf("interned-test", "eq", "1");
        let first = TagsFilter::intern(&tree()).unwrap();
        let second = TagsFilter::intern(&tree()).unwrap();
        assert!(Arc::ptr_eq(&first, &second));
        let other = TagsFilter::intern(&leaf("interned-test", "eq", "2")).unwrap();
        assert_ne!(other.id(), first.id());
        let id = first.id();
        drop((first, second));
        assert!(
            !INTERNED.lock().contains_key(&*tree().encode_to_vec()),
            "the entry went with the filter"
        );
        assert_ne!(TagsFilter::intern(&tree()).unwrap().id(), id);
    }
}
