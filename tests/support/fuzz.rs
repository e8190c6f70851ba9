//! Strategies shared by the bounded fuzz tests (`tests/fuzz_*.rs`).

use proptest::prelude::*;
use serde_json::{json, Value};

/// A JSON value of any shape: nested at most `depth` deep, about `size` nodes, collections of
/// fewer than `width` items.
pub fn json_value(depth: u32, size: u32, width: usize) -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        "[ -~]{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(depth, size, width as u32, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..width).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,10}", inner, 0..width)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}
